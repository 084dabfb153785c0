import Foundation
import Testing
import TidemarkStorage
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// `putSegments`: a batch is stored in order, durable before it returns,
/// and a failure leaves exactly the puts before it stored and committed.
@Suite struct BatchTests {
    /// Puts for sequences `from...to`, one data chunk each (chunk = sequence
    /// mod the disk's chunks), with `point` at the sequences given.
    func puts(_ f: TargetFixture, _ range: ClosedRange<UInt64>, points: Set<UInt64> = []) -> [SegmentPut] {
        range.map { seq in
            let e = f.extents([(seq % f.chunkCount, 1, false)])
            let bytes = (0..<Int(f.chunk)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seq)) }
            let point = points.contains(seq)
                ? PointRecord(id: "p\(seq)", diskID: f.disk.diskID, pointClass: "crash-consistent", timeUnixMs: 1000 + Int64(seq), sequence: seq)
                : nil
            return SegmentPut(diskID: f.disk.diskID, sequence: seq, extents: e, point: point, bytes: bytes)
        }
    }

    /// What a local store left beside the objects (nothing, after a batch).
    func leftovers(_ f: TargetFixture) throws -> [String] {
        guard f.kind == .local else { return [] }
        return try FileManager.default.contentsOfDirectory(atPath: f.target.segmentsDir(f.disk.diskID)).filter { $0.hasPrefix(".tmp-") }
    }

    @Test(arguments: StoreKind.allCases, [0, 3]) func batchStoresEverySegmentInOrder(_ kind: StoreKind, threads: Int) throws {
        let f = try TargetFixture(tag: "batch-\(threads)", kind)
        let pool = WorkerPool(threads: threads)
        defer { pool.shutdown() }
        let batch = puts(f, 1...12, points: [5, 12])
        let r = f.target.putSegments(batch, pool: pool)
        #expect(r.durable == 12)
        #expect(r.failure == nil)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 12)
        for p in batch {
            #expect(try f.target.readSegment(diskID: f.disk.diskID, sequence: p.sequence) == p.bytes)
            #expect(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: p.sequence)?.extents == p.extents)
        }
        #expect(try f.target.points(diskID: f.disk.diskID).map(\.id) == ["p5", "p12"])
        #expect(try leftovers(f).isEmpty)
        // Idempotent: the same batch again stores nothing new and succeeds.
        let again = f.target.putSegments(batch, pool: pool)
        #expect(again.durable == 12 && again.failure == nil)
    }

    @Test(arguments: StoreKind.allCases) func aFailureKeepsThePutsBeforeIt(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "batch-fail", kind)
        let pool = WorkerPool(threads: 2)
        defer { pool.shutdown() }
        var batch = puts(f, 1...6, points: [2, 5])
        batch[3].extents = [TargetExtent(offset: 100, length: 4096, zero: false)]  // not chunk-aligned
        let r = f.target.putSegments(batch, pool: pool)
        #expect(r.durable == 3)
        #expect(r.failure?.index == 3)
        #expect((r.failure?.error as? TidemarkError)?.kind == .invalidArgument)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 3)
        for seq: UInt64 in 4...6 { #expect(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: seq) == nil) }
        #expect(try f.target.points(diskID: f.disk.diskID, includeIncomplete: true).map(\.id) == ["p2"])
        #expect(try leftovers(f).isEmpty)

        // The rest, offered again correctly, completes the sequence.
        let rest = puts(f, 4...6, points: [5])
        #expect(f.target.putSegments(rest, pool: pool).durable == 3)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 6)
        #expect(try f.target.points(diskID: f.disk.diskID).map(\.id) == ["p2", "p5"])
    }

    @Test(arguments: StoreKind.allCases) func storedObjectsAreComparedNotReplaced(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "batch-existing", kind)
        let batch = puts(f, 1...5)
        #expect(f.target.putSegments(Array(batch[1...2]), pool: nil).durable == 2)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 0, "sequence 1 is missing")
        // 2 and 3 exist with the same bytes: accepted, not rewritten.
        #expect(f.target.putSegments(batch, pool: nil).durable == 5)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 5)
        // A different sequence 7 after 6: refused at 7, 6 stays.
        var more = puts(f, 6...8)
        more[1].bytes[0] ^= 0xff
        #expect(f.target.putSegments([puts(f, 7...7)[0]], pool: nil).durable == 1)
        let r = f.target.putSegments(more, pool: nil)
        #expect(r.durable == 1)
        #expect(r.failure?.index == 1)
        #expect((r.failure?.error as? TidemarkError)?.kind == .state)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 7)
        #expect(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: 8) == nil)
        #expect(try leftovers(f).isEmpty)
    }

    /// A store that fails in the middle of a batch (injected into the memory
    /// store): the puts before the failure are durable and committed, the
    /// failed one and those after it are not stored, and offered again they
    /// complete the sequence. A read that fails is reported, not taken for
    /// a missing object.
    @Test func storeFailuresStopABatchWhereTheyHappen() throws {
        let f = try TargetFixture(tag: "batch-faults", .memory)
        let memory = try #require(f.store as? InMemoryObjectStore)
        struct Injected: Error {}
        memory.failNext(.put, prefix: f.segmentName(4), with: Injected())
        let batch = puts(f, 1...6, points: [2, 5])
        let r = f.target.putSegments(batch, pool: nil)
        #expect(r.durable == 3 && r.failure?.index == 3 && r.failure?.error is Injected)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 3)
        for seq: UInt64 in 4...6 { #expect(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: seq) == nil) }
        #expect(try f.target.points(diskID: f.disk.diskID, includeIncomplete: true).map(\.id) == ["p2"])
        #expect(f.target.putSegments(Array(batch[3...]), pool: nil).durable == 3)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 6)
        #expect(try f.target.points(diskID: f.disk.diskID).map(\.id) == ["p2", "p5"])

        memory.failNext(.read, prefix: f.segmentName(2), with: Injected())
        #expect(throws: Injected.self) { _ = try f.target.readSegment(diskID: f.disk.diskID, sequence: 2) }
        #expect(try f.target.readSegment(diskID: f.disk.diskID, sequence: 2) == batch[1].bytes)
        memory.failNext(.stat, prefix: f.target.tombstoneName(f.disk.diskID, 7), with: Injected())
        #expect(throws: Injected.self) { _ = try f.target.committedSequence(diskID: f.disk.diskID) }
    }

    /// The same puts with their payloads staged (as the process server stages them at ingest).
    func staged(_ puts: [SegmentPut], _ staging: SegmentStaging) -> [SegmentPut] {
        puts.map { p in
            let s = p.bytes.withUnsafeBytes { staging.stage(diskID: p.diskID, extents: p.extents, point: p.point, payload: $0) }
            return SegmentPut(diskID: p.diskID, sequence: p.sequence, extents: p.extents, point: p.point, staged: s!)
        }
    }

    func objectFile(_ f: TargetFixture, _ seq: UInt64) throws -> [UInt8] {
        let bytes = try f.raw(f.segmentName(seq))
        if f.kind == .local {
            let path = f.target.segmentsDir(f.disk.diskID) + "/" + TargetRepository.objectName(seq, ".seg")
            #expect([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) == bytes)
        }
        return bytes
    }

    /// A staged put hands the store its aligned buffer (padded, then cut to
    /// size; a local store writes it with O_DIRECT): the object is byte for
    /// byte the one an array put writes, of any payload length, and the
    /// buffers go back.
    @Test(arguments: StoreKind.allCases, [0, 3]) func stagedPutsStoreTheSameObjects(_ kind: StoreKind, threads: Int) throws {
        let plain = try TargetFixture(tag: "batch-plain-\(threads)", kind)
        let direct = try TargetFixture(tag: "batch-staged-\(threads)", kind)
        let pool = WorkerPool(threads: threads)
        defer { pool.shutdown() }
        let staging = SegmentStaging(bytesMax: 64 << 20, idleBuffersMax: 4)
        var batch = puts(plain, 1...12, points: [5, 12])
        // Payload lengths around the 4 KiB alignment, and an empty one.
        for (i, n) in [0, 1, 4095, 4096, 4097, 8191, 100_000].enumerated() {
            batch[i].bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
        }
        #expect(plain.target.putSegments(batch, pool: pool).durable == 12)
        do {
            let stagedBatch = staged(batch, staging)
            #expect(staging.heldBytes > 0)
            let r = direct.target.putSegments(stagedBatch, pool: pool)
            #expect(r.durable == 12 && r.failure == nil)
            // Offered again (a re-upload after a lost acknowledgement): compared, not rewritten.
            #expect(direct.target.putSegments(stagedBatch, pool: pool).durable == 12)
        }
        #expect(staging.heldBytes == 0, "every staged buffer is returned once its put is gone")
        #expect(try direct.target.committedSequence(diskID: direct.disk.diskID) == 12)
        for p in batch {
            #expect(try objectFile(direct, p.sequence) == objectFile(plain, p.sequence), "sequence \(p.sequence)")
            #expect(try direct.target.readSegment(diskID: direct.disk.diskID, sequence: p.sequence) == p.bytes)
        }
        #expect(try direct.target.points(diskID: direct.disk.diskID).map(\.id) == ["p5", "p12"])
        #expect(try leftovers(direct).isEmpty)
    }

    /// Staging holds at most its budget; what a staged segment held is
    /// free again when it goes.
    @Test func stagingIsBounded() throws {
        let staging = SegmentStaging(bytesMax: 3 << 20, idleBuffersMax: 1)
        let payload = [UInt8](repeating: 7, count: 900_000)
        let extents = [TargetExtent(offset: 0, length: 1 << 20, zero: false)]
        func stage() -> StagedSegment? {
            payload.withUnsafeBytes { staging.stage(diskID: "host-a:sdb", extents: extents, point: nil, payload: $0) }
        }
        var held = [stage(), stage(), stage()]
        #expect(held.allSatisfy { $0 != nil })
        #expect(staging.heldBytes == 3 << 20)
        #expect(stage() == nil, "over the budget")
        #expect(held[0]!.payload.elementsEqual(payload))
        held.removeFirst()
        #expect(staging.heldBytes == 2 << 20)
        held.append(stage())
        #expect(held.last! != nil, "room again once one went")
        held.removeAll()
        #expect(staging.heldBytes == 0)
    }
}

