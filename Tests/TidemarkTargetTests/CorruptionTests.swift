import Foundation
import Testing
import TidemarkStorageTesting
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// Damaged, truncated, swapped or misplaced objects are reported as corrupt,
/// naming the object, and never used. The damage is done through the
/// store (`TamperableObjectStore`), so every store is checked alike.
@Suite struct CorruptionTests {
    func fixture(_ tag: String, _ kind: StoreKind) throws -> (TargetFixture, UInt64, UInt64) {
        let f = try TargetFixture(tag: tag, kind)
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

    @Test(arguments: StoreKind.allCases) func payloadBitFlip(_ kind: StoreKind) throws {
        let (f, s1, _) = try fixture("flip-payload", kind)
        try f.flip(f.segmentName(s1), at: f.size(f.segmentName(s1)) - 1)
        expectCorrupt(f, s1, mentions: "payload checksum mismatch")
        // Metadata reads (header only) still work; a materialize needing it fails.
        #expect(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: s1) != nil)
        let e = tidemarkError { _ = try f.materialize(f.points[2]!) }
        #expect(e?.kind == .corrupt)
    }

    @Test(arguments: StoreKind.allCases) func headerBitFlips(_ kind: StoreKind) throws {
        let (f, s1, _) = try fixture("flip-header", kind)
        let path = f.segmentPath(s1), name = f.segmentName(s1)
        // Every byte of the header is covered: flip a few at different places.
        for offset: UInt64 in [20, 40, 70, 90] {
            try f.flip(name, at: offset)
            let e = tidemarkError { _ = try f.target.readSegment(diskID: f.disk.diskID, sequence: s1) }
            #expect(e?.kind == .corrupt && e?.message.contains(path) == true, "offset \(offset): \(String(describing: e))")
            try f.flip(name, at: offset)
        }
        try f.flip(name, at: 0)
        expectCorrupt(f, s1, mentions: "bad magic")
    }

    @Test(arguments: StoreKind.allCases) func truncationAndTrailingBytes(_ kind: StoreKind) throws {
        let (f, s1, s2) = try fixture("truncate", kind)
        let n1 = f.segmentName(s1)
        try f.tamper(n1) { $0.removeLast() }
        expectCorrupt(f, s1, mentions: "truncated")
        try f.tamper(n1) { $0.removeLast($0.count - 50) }
        expectCorrupt(f, s1, mentions: "truncated")
        try f.tamper(n1) { $0.removeAll() }
        expectCorrupt(f, s1, mentions: "truncated")
        try f.tamper(f.segmentName(s2)) { $0.append(0) }
        expectCorrupt(f, s2, mentions: "trailing")
    }

    @Test(arguments: StoreKind.allCases) func swappedAndMisplacedObjects(_ kind: StoreKind) throws {
        let (f, s1, s2) = try fixture("swap", kind)
        let o1 = try f.raw(f.segmentName(s1)), o2 = try f.raw(f.segmentName(s2))
        try f.store.tamper(f.segmentName(s1), o2)
        try f.store.tamper(f.segmentName(s2), o1)
        expectCorrupt(f, s1, mentions: "holds sequence 2, expected 1")
        expectCorrupt(f, s2, mentions: "holds sequence 1, expected 2")
        #expect(tidemarkError { _ = try f.target.segmentInfo(diskID: f.disk.diskID, sequence: s1) }?.kind == .corrupt)

        // An object of another disk copied in.
        let d2 = DiskRecord(diskID: "other", ownerAgentID: "a", sizeBytes: f.disk.sizeBytes, chunkSizeBytes: 4096, keyID: 1)
        try f.target.putDisk(d2)
        let x: [UInt8] = [1, 2]
        try x.withUnsafeBytes { try f.target.putSegment(diskID: d2.diskID, sequence: 3, extents: [], point: nil, bytes: $0) }
        try f.store.tamper(f.segmentName(3), f.raw(f.target.segmentName(d2.diskID, 3)))
        expectCorrupt(f, 3, mentions: "belongs to disk 'other'")

        // A point manifest where a segment should be.
        try f.store.tamper(f.segmentName(4), f.raw(f.target.pointName(f.disk.diskID, s2)))
        expectCorrupt(f, 4, mentions: "holds a point manifest, expected a segment")
    }

    @Test(arguments: StoreKind.allCases) func damagedPointManifestAndDiskRecord(_ kind: StoreKind) throws {
        let (f, _, s2) = try fixture("manifest", kind)
        try f.flip(f.target.pointName(f.disk.diskID, s2), at: 80)
        #expect(tidemarkError { _ = try f.target.points(diskID: f.disk.diskID) }?.kind == .corrupt)
        try f.flip(f.target.diskRecordName(f.disk.diskID), at: 75)
        try f.reopen()  // an instance keeps the (immutable) disk records it has read
        #expect(tidemarkError { _ = try f.target.disk(f.disk.diskID) }?.kind == .corrupt)
    }

    @Test(arguments: StoreKind.allCases) func openMustMatchTheStoredExtents(_ kind: StoreKind) throws {
        let (f, s1, s2) = try fixture("open-mismatch", kind)
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
