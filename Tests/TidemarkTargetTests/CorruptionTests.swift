import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// Damaged, truncated, swapped or misplaced objects are reported as corrupt,
/// naming the object, and never used.
@Suite struct CorruptionTests {
    func fixture(_ tag: String) throws -> (TargetFixture, UInt64, UInt64) {
        let f = try TargetFixture(tag: tag)
        let s1 = try f.put([(0, 4, false), (8, 1, true)])
        let s2 = try f.put([(2, 4, false)], point: ("p", 10))
        return (f, s1, s2)
    }

    func expectCorrupt(_ f: TargetFixture, _ seq: UInt64, mentions: String, sourceLocation: SourceLocation = #_sourceLocation) {
        let e = tidemarkError { _ = try f.target.readSegment(diskID: f.disk.diskID, sequence: seq) }
        #expect(e?.kind == .corrupt, sourceLocation: sourceLocation)
        #expect(e?.message.contains(f.segmentPath(seq)) == true, "names the object: \(e?.message ?? "")", sourceLocation: sourceLocation)
        #expect(e?.message.contains(mentions) == true, "\(e?.message ?? "") mentions \(mentions)", sourceLocation: sourceLocation)
    }

    @Test func payloadBitFlip() throws {
        let (f, s1, _) = try fixture("flip-payload")
        try flipByte(f.segmentPath(s1), at: fileSize(f.segmentPath(s1)) - 1)
        expectCorrupt(f, s1, mentions: "payload checksum mismatch")
        // Metadata reads (header only) still work; a materialize needing it fails.
        #expect(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: s1) != nil)
        let e = tidemarkError { _ = try f.materialize(f.points[2]!) }
        #expect(e?.kind == .corrupt)
    }

    @Test func headerBitFlips() throws {
        let (f, s1, _) = try fixture("flip-header")
        let path = f.segmentPath(s1)
        // Every byte of the header is covered: flip a few at different places.
        for offset: UInt64 in [20, 40, 70, 90] {
            try flipByte(path, at: offset)
            let e = tidemarkError { _ = try f.target.readSegment(diskID: f.disk.diskID, sequence: s1) }
            #expect(e?.kind == .corrupt && e?.message.contains(path) == true, "offset \(offset): \(String(describing: e))")
            try flipByte(path, at: offset)
        }
        try flipByte(path, at: 0)
        expectCorrupt(f, s1, mentions: "bad magic")
    }

    @Test func truncationAndTrailingBytes() throws {
        let (f, s1, s2) = try fixture("truncate")
        let p1 = f.segmentPath(s1)
        chmod(p1, 0o644)
        #expect(truncate(p1, off_t(fileSize(p1) - 1)) == 0)
        expectCorrupt(f, s1, mentions: "truncated")
        #expect(truncate(p1, 50) == 0)
        expectCorrupt(f, s1, mentions: "truncated")
        #expect(truncate(p1, 0) == 0)
        expectCorrupt(f, s1, mentions: "truncated")
        let p2 = f.segmentPath(s2)
        chmod(p2, 0o644)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: p2))
        h.seekToEndOfFile()
        h.write(Data([0]))
        try h.close()
        expectCorrupt(f, s2, mentions: "trailing")
    }

    @Test func swappedAndMisplacedObjects() throws {
        let (f, s1, s2) = try fixture("swap")
        let p1 = f.segmentPath(s1), p2 = f.segmentPath(s2)
        try FileManager.default.moveItem(atPath: p1, toPath: p1 + ".x")
        try FileManager.default.moveItem(atPath: p2, toPath: p1)
        try FileManager.default.moveItem(atPath: p1 + ".x", toPath: p2)
        expectCorrupt(f, s1, mentions: "holds sequence 2, expected 1")
        expectCorrupt(f, s2, mentions: "holds sequence 1, expected 2")
        #expect(tidemarkError { _ = try f.target.segmentInfo(diskID: f.disk.diskID, sequence: s1) }?.kind == .corrupt)

        // An object of another disk copied in.
        let d2 = DiskRecord(diskID: "other", ownerAgentID: "a", sizeBytes: f.disk.sizeBytes, chunkSizeBytes: 4096, keyID: 1)
        try f.target.putDisk(d2)
        let x: [UInt8] = [1, 2]
        try x.withUnsafeBytes { try f.target.putSegment(diskID: d2.diskID, sequence: 3, extents: [], point: nil, bytes: $0) }
        try FileManager.default.copyItem(atPath: f.target.segmentPath(d2.diskID, 3), toPath: f.segmentPath(3))
        expectCorrupt(f, 3, mentions: "belongs to disk 'other'")

        // A point manifest where a segment should be.
        try FileManager.default.copyItem(atPath: f.target.pointPath(f.disk.diskID, s2), toPath: f.segmentPath(4))
        expectCorrupt(f, 4, mentions: "holds a point manifest, expected a segment")
    }

    @Test func damagedPointManifestAndDiskRecord() throws {
        let (f, _, s2) = try fixture("manifest")
        try flipByte(f.target.pointPath(f.disk.diskID, s2), at: 80)
        #expect(tidemarkError { _ = try f.target.points(diskID: f.disk.diskID) }?.kind == .corrupt)
        try flipByte(f.target.diskRecordPath(f.disk.diskID), at: 75)
        try f.reopen()  // an instance keeps the (immutable) disk records it has read
        #expect(tidemarkError { _ = try f.target.disk(f.disk.diskID) }?.kind == .corrupt)
    }

    @Test func openMustMatchTheStoredExtents() throws {
        let (f, s1, s2) = try fixture("open-mismatch")
        let point = f.points[s2]!
        let out = f.dir + "/out.img"
        let e = tidemarkError {
            try f.target.materialize(point: point, to: out, open: { seq, sealed in
                var r = try f.open(seq, sealed)
                if seq == s1 { r[0].offset += 4096 }
                return r
            }, progress: { _, _ in })
        }
        #expect(e?.kind == .corrupt && e?.message.contains("sequence \(s1) extent 0") == true, "\(String(describing: e))")
        let e2 = tidemarkError {
            try f.target.materialize(point: point, to: out, open: { seq, sealed in
                var r = try f.open(seq, sealed)
                if seq == s1 { r.removeLast() }
                return r
            }, progress: { _, _ in })
        }
        #expect(e2?.kind == .corrupt)
    }
}
