import Foundation
import Testing
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

    func leftovers(_ f: TargetFixture) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: f.target.segmentsDir(f.disk.diskID)).filter { $0.hasPrefix(".tmp-") }
    }

    @Test(arguments: [0, 3]) func batchStoresEverySegmentInOrder(threads: Int) throws {
        let f = try TargetFixture(tag: "batch-\(threads)")
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

    @Test func aFailureKeepsThePutsBeforeIt() throws {
        let f = try TargetFixture(tag: "batch-fail")
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

    @Test func storedObjectsAreComparedNotReplaced() throws {
        let f = try TargetFixture(tag: "batch-existing")
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
}
