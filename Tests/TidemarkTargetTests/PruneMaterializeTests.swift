import Foundation
import Testing
import TidemarkStorage
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

@Suite struct MaterializeTests {
    @Test(arguments: StoreKind.allCases) func imagesEqualTheModelAtEveryPoint(_ kind: StoreKind) throws {
        // A short last chunk, zero extents over data, tag segments with and without extents.
        let f = try TargetFixture(tag: "mat", kind, sizeBytes: 40 * 4096 + 1024)
        try f.put([(0, 8, false), (39, 2, false)])
        try f.put([(4, 2, true), (10, 3, false)], point: ("p1", 1))
        try f.put([(0, 1, false), (40, 1, true)])
        try f.put([(5, 10, false)], point: ("p2", 2))
        try f.put([], point: ("p3", 3))
        for (seq, point) in f.points {
            let got = try f.materialize(point)
            #expect(got == f.pointImages[seq]!, "point \(point.id)")
        }
    }

    @Test(arguments: StoreKind.allCases) func eachSegmentIsReadOnlyIfItHasLiveData(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "mat-reads", kind)
        try f.put([(0, 4, false)])              // 1: fully overwritten by 3
        try f.put([(4, 4, false)])              // 2: live
        try f.put([(0, 4, true)])               // 3: live, zero only
        let p = try f.put([(8, 1, false)], point: ("p", 1))
        f.opened = []
        let got = try f.materialize(f.points[p]!)
        #expect(got == f.pointImages[p]!)
        #expect(f.opened.sorted() == [2, 3, 4])
        // A regular-file image leaves zeros as holes: the file is sparse.
        var st = stat()
        #expect(stat(f.dir + "/restore-\(p).img", &st) == 0)
        #expect(UInt64(st.st_size) == f.disk.sizeBytes)
        #expect(UInt64(st.st_blocks) * 512 <= 5 * 4096 + 8192, "only the data chunks are allocated (\(st.st_blocks) blocks)")
    }

    @Test(arguments: StoreKind.allCases) func missingObjectsFailClearly(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "mat-missing", kind)
        try f.put([(0, 4, false)])
        try f.put([(1, 1, false)])
        let p = try f.put([(2, 1, false)], point: ("p", 1))
        try f.store.delete(f.segmentName(2))
        // The same instance (which saw 2 before) and a fresh one both refuse.
        let e1 = tidemarkError { _ = try f.materialize(f.points[p]!) }
        #expect(e1?.kind == .notFound)
        #expect(e1?.message.contains("missing objects: sequence 2 is neither stored nor pruned") == true, "\(String(describing: e1))")
        try f.reopen()
        let e2 = tidemarkError { _ = try f.materialize(f.points[p]!) }
        #expect(e2?.message.contains("missing objects: sequence 2 is neither stored nor pruned") == true, "\(String(describing: e2))")
        // A point beyond what is stored.
        let ahead = PointRecord(id: "q", diskID: f.disk.diskID, pointClass: "x", timeUnixMs: 1, sequence: 9)
        let e3 = tidemarkError { _ = try f.materialize(ahead) }
        #expect(e3?.message.contains("sequence 2 is neither stored nor pruned") == true)
    }

    @Test(.requiresRoot) func blockDeviceDestination() throws {
        let f = try TargetFixture(tag: "mat-blk", sizeBytes: 256 * 4096)
        let loop = try LoopDevice(sizeBytes: 300 * 4096, in: f.dir, directIO: false)
        defer { loop.detach() }
        // Garbage on the device first: unwritten and zero ranges must come out zero.
        try sh("dd if=/dev/urandom of=\(loop.path) bs=4096 count=300 status=none")
        try f.put([(0, 16, false), (100, 20, false)])
        try f.put([(8, 4, true), (200, 56, false)])
        let p = try f.put([(110, 5, true)], point: ("p", 1))
        try f.target.materialize(point: f.points[p]!, to: loop.path, open: { try f.open($0, $1) }, progress: { _, _ in })
        let fd = try FileDescriptor(open: loop.path, .readOnly)
        var got = [UInt8](repeating: 0xEE, count: Int(f.disk.sizeBytes))
        _ = try got.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        #expect(got == f.pointImages[p]!)
        // A device smaller than the disk is refused.
        let small = try LoopDevice(sizeBytes: 16 * 4096, in: f.dir)
        defer { small.detach() }
        let e = tidemarkError { try f.target.materialize(point: f.points[p]!, to: small.path, open: { try f.open($0, $1) }, progress: { _, _ in }) }
        #expect(e?.kind == .invalidArgument)
    }
}

@Suite struct PruneTests {
    /// The worked example of docs/target-layout.md section 6.
    @Test(arguments: StoreKind.allCases) func pruneDeletesDeadSegmentsOnly(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "prune", kind, sizeBytes: 16 * 4096)
        let disk = f.disk.diskID
        try f.put([(0, 4, false)])                               // 1: dead at 5 (overwritten by 4)
        try f.put([(4, 4, false)])                               // 2: partially live (6, 7)
        try f.put([], point: ("A", 1000))                        // 3: tag of A, expires
        try f.put([(0, 4, false), (4, 2, true)])                 // 4: live
        try f.put([(8, 1, false)], point: ("B", 2000))           // 5: tag of B (oldest retained)
        try f.put([(0, 2, false)])                               // 6: above the horizon
        try f.put([(9, 7, false)], point: ("C", 3000))           // 7
        try f.put([(0, 16, false)])                              // 8: overwrites everything, above
        let above = (6...8).map { f.identity(f.segmentName(UInt64($0))) }
        let sizes = try [1, 3].map { try f.size(f.segmentName(UInt64($0))) }

        let r = try f.target.prune(diskID: disk, retainAfterUnixMs: 1500)
        #expect(r.expiredPoints.map(\.id) == ["A"])
        #expect(r.retainedPoints.map(\.id) == ["B", "C"])
        #expect(r.oldestRetainedSequence == 5)
        #expect(r.segmentsExamined == 5 && r.segmentsPruned == 2 && r.segmentsKept == 3)
        #expect(r.bytesFreed == sizes.reduce(0, +))
        #expect(try !f.hasSegment(1) && f.hasTombstone(1))
        #expect(try !f.hasSegment(3) && f.hasTombstone(3))
        for s: UInt64 in [2, 4, 5] { #expect(try f.hasSegment(s) && !f.hasTombstone(s)) }
        #expect((6...8).map { f.identity(f.segmentName(UInt64($0))) } == above, "nothing above the oldest retained point is touched")
        let info = try #require(try f.target.segmentInfo(diskID: disk, sequence: 1))
        #expect(info.pruned && info.deadAtSequence == 5 && info.extents == f.stored[1]!.extents)

        // The catalog and the committed sequence, also from a fresh instance.
        try f.reopen()
        #expect(try f.target.points(diskID: disk).map(\.id) == ["B", "C"])
        #expect(try f.target.committedSequence(diskID: disk) == 8)
        #expect(tidemarkError { _ = try f.target.readSegment(diskID: disk, sequence: 1) }?.kind == .notFound)

        // Retained points still materialize exactly; the expired one fails clearly.
        #expect(try f.materialize(f.points[5]!) == f.pointImages[5]!)
        #expect(try f.materialize(f.points[7]!) == f.pointImages[7]!)
        let e = tidemarkError { _ = try f.materialize(f.points[3]!) }
        #expect(e?.kind == .notFound && e?.message.contains("sequence 1 was pruned") == true, "\(String(describing: e))")

        // Re-sending a pruned segment is accepted without storing it again; different bytes are not.
        let s1 = f.stored[1]!
        try s1.sealed.withUnsafeBytes {
            try f.target.putSegment(diskID: disk, sequence: 1, extents: s1.extents, point: nil, bytes: $0)
        }
        #expect(try !f.hasSegment(1))
        let s3 = f.stored[3]!
        try s3.sealed.withUnsafeBytes {
            try f.target.putSegment(diskID: disk, sequence: 3, extents: s3.extents, point: f.points[3], bytes: $0)
        }
        #expect(try f.target.points(diskID: disk).map(\.id) == ["B", "C"], "an expired point stays expired")
        let bad: [UInt8] = [0]
        #expect(tidemarkError {
            try bad.withUnsafeBytes { try f.target.putSegment(diskID: disk, sequence: 1, extents: s1.extents, point: nil, bytes: $0) }
        }?.kind == .state)

        // Pruning again changes nothing; expiring everything keeps the newest point.
        let again = try f.target.prune(diskID: disk, retainAfterUnixMs: 1500)
        #expect(again.segmentsPruned == 0 && again.expiredPoints.isEmpty)
        let all = try f.target.prune(diskID: disk, retainAfterUnixMs: .max)
        #expect(all.expiredPoints.map(\.id) == ["B"] && all.retainedPoints.map(\.id) == ["C"])
        #expect(all.oldestRetainedSequence == 7)
        // At 7: 5 (tag of expired B, chunk 8) is still live, 2's chunks 6-7 too; nothing else is dead.
        #expect(try f.materialize(f.points[7]!) == f.pointImages[7]!)
        #expect(try f.hasSegment(8))
    }

    @Test(arguments: StoreKind.allCases) func pruneWithoutCompletePointsDoesNothing(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "prune-none", kind)
        try f.put([(0, 1, false)])
        try f.put([(0, 1, false)])
        let r = try f.target.prune(diskID: f.disk.diskID, retainAfterUnixMs: .max)
        #expect(r.oldestRetainedSequence == nil && r.segmentsPruned == 0)
        #expect(try f.hasSegment(1))
        #expect(tidemarkError { _ = try f.target.prune(diskID: "unknown", retainAfterUnixMs: 0) }?.kind == .notFound)
    }

    @Test(arguments: StoreKind.allCases) func interruptedPruneIsFinishedByTheNextOne(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "prune-crash", kind)
        try f.put([(0, 2, false)])
        try f.put([(0, 2, false)])
        let p = try f.put([], point: ("p", 5))
        _ = try f.target.prune(diskID: f.disk.diskID, retainAfterUnixMs: 0)
        #expect(try f.hasTombstone(1) && !f.hasSegment(1))
        // Simulate a crash after the tombstone was written but before the
        // segment was deleted: put the segment object back.
        let s1 = f.stored[1]!
        try s1.sealed.withUnsafeBytes { payload in
            let header = Envelope.encodeHeader(kind: .segment, diskID: f.disk.diskID, sequence: 1,
                                               metadata: Metadata.encodeSegment(extents: s1.extents, point: nil), payload: payload)
            try header.withUnsafeBytes { try f.store.put(f.segmentName(1), ObjectContent(head: $0, tail: payload)) }
        }
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 3)
        #expect(try f.materialize(f.points[p]!) == f.pointImages[p]!)
        let r = try f.target.prune(diskID: f.disk.diskID, retainAfterUnixMs: 0)
        #expect(r.segmentsPruned == 1)
        #expect(try !f.hasSegment(1))
    }

    /// Random histories, random prunes: every retained point materializes
    /// to the model image, nothing above the horizon is touched, and what is
    /// deleted is exactly what no retained point needs.
    @Test(arguments: StoreKind.allCases, [UInt64(1), 2, 3, 4, 5, 6])
    func randomHistories(_ kind: StoreKind, seed: UInt64) throws {
        let f = try TargetFixture(tag: "prune-rand-\(seed)", kind, sizeBytes: 48 * 4096 + 2048, seed: seed)
        var rng = SplitMix64(seed: seed &* 7919)
        var time: Int64 = 0
        for round in 0..<4 {
            for _ in 0..<(10 + rng.below(15)) {
                var runs = [(UInt64, UInt64, Bool)]()
                var c = UInt64(rng.below(8))
                while c < f.chunkCount, runs.count < 4 {
                    let n = min(UInt64(1 + rng.below(6)), f.chunkCount - c)
                    runs.append((c, n, rng.below(4) == 0))
                    c += n + UInt64(rng.below(12))
                }
                if rng.below(5) == 0 { runs = [] }
                time += Int64(1 + rng.below(100))
                let isPoint = rng.below(3) == 0
                try f.put(runs, point: isPoint ? ("r\(round)-\(f.nextSequence)", time) : nil)
            }
            let cutoff = time - Int64(rng.below(400))
            let horizonBefore = try f.target.points(diskID: f.disk.diskID)
            let r = try f.target.prune(diskID: f.disk.diskID, retainAfterUnixMs: cutoff)
            let retained = try f.target.points(diskID: f.disk.diskID)
            #expect(retained == r.retainedPoints)
            #expect(Set(horizonBefore.map(\.id)) == Set((r.retainedPoints + r.expiredPoints).map(\.id)))
            if let newest = horizonBefore.last { #expect(retained.last == newest, "the newest point is always retained") }
            for p in retained {
                #expect(p.timeUnixMs >= cutoff || p == retained.last)
                #expect(try f.materialize(p) == f.pointImages[p.sequence]!, "seed \(seed) round \(round) point \(p.id)")
            }
            // Nothing above the oldest retained point is pruned, and every
            // surviving segment at or below it still has a live chunk there.
            if let horizon = r.oldestRetainedSequence {
                for s in (horizon + 1)..<f.nextSequence {
                    #expect(try f.hasSegment(s), "sequence \(s) above the horizon \(horizon)")
                }
                var newestWriter = [UInt64: UInt64]()
                for s in 1...horizon { for e in f.stored[s]!.extents { for c in e.offset / f.chunk..<(e.end + f.chunk - 1) / f.chunk { newestWriter[c] = s } } }
                let needed = Set(newestWriter.values)
                for s in 1...horizon {
                    let kept = try f.hasSegment(s)
                    #expect(kept == (needed.contains(s) || s == horizon), "seed \(seed): sequence \(s) kept=\(kept) at horizon \(horizon)")
                }
            }
            #expect(try f.target.committedSequence(diskID: f.disk.diskID) == f.nextSequence - 1)
        }
    }
}
