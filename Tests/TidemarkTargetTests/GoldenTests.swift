import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// The worked example of docs/target-layout.md section 3.5, byte for byte
/// (the bytes were produced by an independent Python encoder written from
/// the document).
@Suite struct GoldenTests {
    static let exampleHex =
        "544d5441524745540100020090000000070000000000000007000000000000007bbea178883da511e672d366223c616b"
        + "8b0ed719b51023b600640faf3d71261d030073646227000000020000000000000000000000000001000000000000000001"
        + "000000000000000100000000000100b49c7bf71c3ec14c65f6fb50499f909f978abdd6858b7780df0fadc23ba7aa49"
        + "7365616c656421"

    static var example: [UInt8] {
        var out = [UInt8]()
        var it = exampleHex.utf8.makeIterator()
        while let h = it.next(), let l = it.next() {
            out.append(UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)!)
        }
        return out
    }

    let extents = [TargetExtent(offset: 0, length: 65536, zero: false), TargetExtent(offset: 65536, length: 65536, zero: true)]

    @Test func encoderMatchesTheDocument() {
        let payload = Array("sealed!".utf8)
        let header = payload.withUnsafeBytes {
            Envelope.encodeHeader(kind: .segment, diskID: "sdb", sequence: 7,
                                  metadata: Metadata.encodeSegment(extents: extents, point: nil), payload: $0)
        }
        #expect((header + payload).hexString == Self.exampleHex)
    }

    @Test func readerAcceptsTheDocumentsBytes() throws {
        let dir = try TestEnv.tempDir("target-golden")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let target = try LocalDirectoryTarget(root: dir + "/t")
        try target.putDisk(DiskRecord(diskID: "sdb", ownerAgentID: "a", sizeBytes: 1 << 20, chunkSizeBytes: 65536, keyID: 1))
        #expect(FileManager.default.createFile(atPath: target.segmentPath("sdb", 7), contents: Data(Self.example)))
        #expect(try target.readSegment(diskID: "sdb", sequence: 7) == Array("sealed!".utf8))
        let info = try #require(try target.segmentInfo(diskID: "sdb", sequence: 7))
        #expect(info.extents == extents && info.point == nil)
        #expect(target.segmentPath("sdb", 7).hasSuffix("/disks/sdb/segments/00000000000000000007.seg"))
    }
}
