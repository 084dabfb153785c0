import Foundation
import Testing
import TidemarkStorage
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

@Suite struct ChecksumTests {
    @Test func sha256KnownAnswers() {
        #expect(ObjectDigest.sha256([]).hexString == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(ObjectDigest.sha256(Array("abc".utf8)).hexString == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(ObjectDigest.sha256(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)).hexString
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        let million = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        #expect(ObjectDigest.sha256(million).hexString == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func diskIDNamesRoundTrip() {
        for id in ["sdb", "host-a:sdb", "..", ".hidden", "a/b", "ü%20", "x_y-Z9"] {
            let name = TargetRepository.encodeDiskID(id)
            #expect(!name.hasPrefix(".") && !name.contains("/"))
            #expect(TargetRepository.decodeDiskID(name) == id)
        }
        #expect(TargetRepository.decodeDiskID("a%2") == nil)
        #expect(TargetRepository.decodeDiskID("%61") == nil, "non-canonical names are not disk directories")
    }
}

@Suite struct StoreTests {
    @Test func layoutMarkerAndForeignDirectories() throws {
        let f = try TargetFixture(tag: "layout")
        let marker = try String(contentsOfFile: f.root + "/TIDEMARK-TARGET", encoding: .utf8)
        #expect(marker == "tidemark-target layout 1\n")
        // A non-empty directory without the marker is not taken over.
        let other = f.dir + "/other"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: other + "/precious.txt", contents: Data("x".utf8))
        #expect(tidemarkError { _ = try TargetRepository(localDirectory: other) }?.kind == .invalidArgument)
        // Also when all it holds is hidden.
        let hidden = f.dir + "/hidden"
        try FileManager.default.createDirectory(atPath: hidden, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: hidden + "/.precious", contents: Data("x".utf8))
        #expect(tidemarkError { _ = try TargetRepository(localDirectory: hidden) }?.kind == .invalidArgument)
        #expect(try FileManager.default.contentsOfDirectory(atPath: hidden) == [".precious"], "nothing is added to it")
        // A later layout version is refused.
        let future = f.dir + "/future"
        try FileManager.default.createDirectory(atPath: future, withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: future + "/TIDEMARK-TARGET", contents: Data("tidemark-target layout 2\n".utf8))
        #expect(tidemarkError { _ = try TargetRepository(localDirectory: future) }?.kind == .unsupported)
        // Reopening the existing target works.
        let again = try TargetRepository(localDirectory: f.root + "/")
        #expect(try again.disk(f.disk.diskID) == f.disk)
        #expect(try again.disks() == [f.disk])
        // An empty target holds its marker and disks/ (with the disk's directories).
        let empty = f.dir + "/empty"
        _ = try TargetRepository(localDirectory: empty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: empty).sorted() == ["TIDEMARK-TARGET", "disks"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.target.diskDir(f.disk.diskID)).sorted() == ["disk", "points", "segments", "tombstones"])
    }

    /// The same rules over any store: a marker object, a store holding
    /// other objects is not taken over, another layout version is refused.
    @Test func markerInAnyStore() throws {
        let store = InMemoryObjectStore(label: "marker")
        _ = try TargetRepository(store: store, stateDirectory: nil)
        #expect(try store.get("TIDEMARK-TARGET") == Array("tidemark-target layout 1\n".utf8))
        #expect(try store.listAll(prefix: "") == ["TIDEMARK-TARGET"])
        let again = try TargetRepository(store: store, stateDirectory: nil)
        #expect(try again.disks() == [])
        let foreign = InMemoryObjectStore(label: "foreign")
        try [1].withUnsafeBytes { try foreign.put("precious/thing", ObjectContent($0)) }
        let e = tidemarkError { _ = try TargetRepository(store: foreign, stateDirectory: nil) }
        #expect(e?.kind == .invalidArgument && e?.message.contains("precious/") == true, "\(String(describing: e))")
        let future = InMemoryObjectStore(label: "future")
        try Array("tidemark-target layout 2\n".utf8).withUnsafeBytes { try future.put("TIDEMARK-TARGET", ObjectContent($0)) }
        #expect(tidemarkError { _ = try TargetRepository(store: future, stateDirectory: nil) }?.kind == .unsupported)
        let garbage = InMemoryObjectStore(label: "garbage")
        try Array("hello".utf8).withUnsafeBytes { try garbage.put("TIDEMARK-TARGET", ObjectContent($0)) }
        #expect(tidemarkError { _ = try TargetRepository(store: garbage, stateDirectory: nil) }?.kind == .corrupt)
    }

    @Test(arguments: StoreKind.allCases) func diskRecordFirstWriterWins(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "disk", kind)
        try f.target.putDisk(f.disk)
        var other = f.disk
        other.sizeBytes *= 2
        let e = tidemarkError { try f.target.putDisk(other) }
        #expect(e?.kind == .state)
        #expect(try f.target.disk(f.disk.diskID) == f.disk)
        #expect(try f.target.disk("nope") == nil)
    }

    @Test(arguments: StoreKind.allCases) func putReadRoundTrip(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "roundtrip", kind)
        let s1 = try f.put([(0, 4, false), (10, 2, true), (20, 1, false)])
        let s2 = try f.put([], point: ("p1", 1000))
        #expect(try f.target.readSegment(diskID: f.disk.diskID, sequence: s1) == f.stored[s1]!.sealed)
        let info = try #require(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: s1))
        #expect(info.extents == f.stored[s1]!.extents && info.point == nil && !info.pruned)
        #expect(info.payloadLength == UInt64(f.stored[s1]!.sealed.count))
        let tag = try #require(try f.target.segmentInfo(diskID: f.disk.diskID, sequence: s2))
        #expect(tag.point == f.points[s2])
        // A fresh instance reads the same.
        try f.reopen()
        #expect(try f.target.readSegment(diskID: f.disk.diskID, sequence: s1) == f.stored[s1]!.sealed)
        #expect(try f.target.points(diskID: f.disk.diskID) == [f.points[s2]!])
        // The object is exactly header + payload, read-only, no temporaries left.
        #expect(try f.store.listAll(prefix: f.target.segmentsPrefix(f.disk.diskID)) == [f.segmentName(1), f.segmentName(2)])
        if kind == .local {
            let names = try FileManager.default.contentsOfDirectory(atPath: f.target.segmentsDir(f.disk.diskID)).sorted()
            #expect(names == ["00000000000000000001.seg", "00000000000000000002.seg"])
        }
        let e = tidemarkError { _ = try f.target.readSegment(diskID: f.disk.diskID, sequence: 9) }
        #expect(e?.kind == .notFound)
    }

    @Test(arguments: StoreKind.allCases) func putIsIdempotentAndImmutable(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "idem", kind)
        let s = try f.put([(0, 2, false)], point: ("p", 5))
        let before = try #require(f.identity(f.segmentName(s)))
        let st = f.stored[s]!
        try st.sealed.withUnsafeBytes {
            try f.target.putSegment(diskID: f.disk.diskID, sequence: s, extents: st.extents, point: f.points[s], bytes: $0)
        }
        #expect(f.identity(f.segmentName(s)) == before, "an identical put does not rewrite")
        var changed = st.sealed
        changed[0] ^= 0xff
        let e1 = tidemarkError {
            try changed.withUnsafeBytes {
                try f.target.putSegment(diskID: f.disk.diskID, sequence: s, extents: st.extents, point: f.points[s], bytes: $0)
            }
        }
        #expect(e1?.kind == .state)
        #expect(e1?.message.contains("different bytes") == true)
        let e2 = tidemarkError {
            try st.sealed.withUnsafeBytes {
                try f.target.putSegment(diskID: f.disk.diskID, sequence: s, extents: f.extents([(0, 3, false)]), point: f.points[s], bytes: $0)
            }
        }
        #expect(e2?.message.contains("extents") == true)
        let e3 = tidemarkError {
            try st.sealed.withUnsafeBytes {
                try f.target.putSegment(diskID: f.disk.diskID, sequence: s, extents: st.extents, point: nil, bytes: $0)
            }
        }
        #expect(e3?.message.contains("point") == true)
        #expect(try f.target.readSegment(diskID: f.disk.diskID, sequence: s) == st.sealed)
        #expect(f.identity(f.segmentName(s)) == before)
    }

    @Test(arguments: StoreKind.allCases) func putValidatesExtentsAndDisk(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "validate", kind, sizeBytes: 10 * 4096 + 512)
        let bytes: [UInt8] = [1, 2, 3]
        func put(_ e: [TargetExtent], disk: String? = nil, seq: UInt64 = 1) -> TidemarkError? {
            tidemarkError {
                try bytes.withUnsafeBytes {
                    try f.target.putSegment(diskID: disk ?? f.disk.diskID, sequence: seq, extents: e, point: nil, bytes: $0)
                }
            }
        }
        #expect(put([TargetExtent(offset: 100, length: 4096, zero: false)])?.kind == .invalidArgument)
        #expect(put([TargetExtent(offset: 0, length: 100, zero: false)])?.kind == .invalidArgument)
        #expect(put([TargetExtent(offset: 0, length: 0, zero: false)])?.kind == .invalidArgument)
        #expect(put([TargetExtent(offset: 8192, length: 4096, zero: false), TargetExtent(offset: 0, length: 4096, zero: false)])?.kind == .invalidArgument)
        #expect(put([TargetExtent(offset: 10 * 4096, length: 4096, zero: false)])?.kind == .invalidArgument, "beyond the disk")
        #expect(put([], disk: "unknown")?.kind == .notFound)
        #expect(put([], seq: 0)?.kind == .invalidArgument)
        // The short last chunk of the disk is fine.
        #expect(put([TargetExtent(offset: 10 * 4096, length: 512, zero: false)]) == nil)
    }

    @Test(arguments: StoreKind.allCases) func committedSequenceWithGaps(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "committed", kind)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 0)
        #expect(try f.target.committedSequence(diskID: "never-seen") == 0)
        let plain: [UInt8] = [7]
        func put(_ s: UInt64) throws {
            try plain.withUnsafeBytes {
                try f.target.putSegment(diskID: f.disk.diskID, sequence: s, extents: [], point: nil, bytes: $0)
            }
        }
        try put(2)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 0)
        try put(1)
        try put(4)
        try put(5)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 2)
        try f.reopen()
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 2)
        try put(3)
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 5)
        try f.reopen()
        #expect(try f.target.committedSequence(diskID: f.disk.diskID) == 5)
    }

    @Test(arguments: StoreKind.allCases) func pointsAreRebuiltFromTheDirectory(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "points", kind)
        try f.put([(0, 1, false)])
        let a = try f.put([], point: ("a", 100))
        try f.put([(1, 1, false)])
        let b = try f.put([(2, 1, true)], point: ("b", 200))
        // Disk 2, with a point above a gap.
        let d2 = DiskRecord(diskID: "host-a:sdc", ownerAgentID: "agent-1", sizeBytes: 1 << 20, chunkSizeBytes: 65536, keyID: 1)
        try f.target.putDisk(d2)
        let x: [UInt8] = [1]
        let p1 = PointRecord(id: "c", diskID: d2.diskID, pointClass: "app-consistent", timeUnixMs: 50, sequence: 1)
        let p3 = PointRecord(id: "d", diskID: d2.diskID, pointClass: "unverified", timeUnixMs: 60, sequence: 3)
        try x.withUnsafeBytes {
            try f.target.putSegment(diskID: d2.diskID, sequence: 1, extents: [], point: p1, bytes: $0)
            try f.target.putSegment(diskID: d2.diskID, sequence: 3, extents: [], point: p3, bytes: $0)
        }
        try f.reopen()
        #expect(try f.target.points(diskID: f.disk.diskID) == [f.points[a]!, f.points[b]!])
        #expect(try f.target.points(diskID: nil) == [f.points[a]!, f.points[b]!, p1], "ordered by disk, then sequence; incomplete points left out")
        #expect(try f.target.points(diskID: d2.diskID, includeIncomplete: true) == [p1, p3])
        // A point must name its own segment.
        let wrong = PointRecord(id: "e", diskID: d2.diskID, pointClass: "x", timeUnixMs: 1, sequence: 9)
        #expect(tidemarkError {
            try x.withUnsafeBytes { try f.target.putSegment(diskID: d2.diskID, sequence: 4, extents: [], point: wrong, bytes: $0) }
        }?.kind == .invalidArgument)
        // A lost manifest is written again by a repeated put.
        try f.store.delete(f.target.pointName(f.disk.diskID, b))
        let st = f.stored[b]!
        try st.sealed.withUnsafeBytes {
            try f.target.putSegment(diskID: f.disk.diskID, sequence: b, extents: st.extents, point: f.points[b], bytes: $0)
        }
        #expect(try f.target.points(diskID: f.disk.diskID).map(\.id) == ["a", "b"])
    }
}
