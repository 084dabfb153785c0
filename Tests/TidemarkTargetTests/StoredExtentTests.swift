import Foundation
import Testing
import TidemarkStorage
import TidemarkStorageTesting
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// Extents read from a stored object are data from disk: ones that overflow
/// or lie beyond the disk are refused as corrupt before anything expands
/// them chunk by chunk (found by fuzz-digest-index: an out-of-memory and an
/// overflow trap in the process server's digest index catch-up).
@Suite struct StoredExtentTests {
    @Test(arguments: StoreKind.allCases, [(UInt64(4096), UInt64(0x3100_0000_0000_1000)), (0xFFFF_FFFF_FFFF_F000, 0x2000), (1 << 20, 65536), (0, 0)])
    func extentsBeyondTheDiskAreCorrupt(_ kind: StoreKind, extent: (offset: UInt64, length: UInt64)) throws {
        let (offset, length) = extent
        let dir = try TestEnv.tempDir("stored-extents")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store: any TamperableObjectStore = kind == .local ? try LocalDirectoryObjectStore(root: dir + "/t") : InMemoryObjectStore()
        let target = try TargetRepository(store: store, stateDirectory: dir + "/t")
        try target.putDisk(DiskRecord(diskID: "sdb", ownerAgentID: "a", sizeBytes: 1 << 20, chunkSizeBytes: 65536, keyID: 1))
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        try target.putSegment(diskID: "sdb", sequence: 1, extents: [TargetExtent(offset: 0, length: 65536, zero: true)], point: nil, bytes: empty)
        try target.putSegment(diskID: "sdb", sequence: 2, extents: [],
                              point: PointRecord(id: "p", diskID: "sdb", pointClass: "crash-consistent", timeUnixMs: 1, sequence: 2), bytes: empty)
        // Rewritten as someone could: the metadata changed, the keyless checksums recomputed.
        let bad = Metadata.encodeSegment(extents: [TargetExtent(offset: offset, length: length, zero: true)], point: nil)
        let header = Envelope.encodeHeader(kind: .segment, diskID: "sdb", sequence: 1, metadata: bad, payload: empty)
        try store.tamper(target.segmentName("sdb", 1), header)
        let e = #expect(throws: TidemarkError.self) { _ = try target.segmentInfo(diskID: "sdb", sequence: 1) }
        #expect(e?.kind == .corrupt, "\(String(describing: e))")
        #expect(throws: TidemarkError.self) { _ = try target.prune(diskID: "sdb", retainAfterUnixMs: 0) }
        let index = try target.digestIndex(diskID: "sdb") { _ in }
        #expect(throws: (any Error).self) { try index.catchUp(to: 2, from: target) { _, _, _ in nil } }
    }
}
