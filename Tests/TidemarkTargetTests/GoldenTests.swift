import Foundation
import Testing
import TidemarkStorage
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// The worked example of docs/target-layout.md section 3.5, byte for byte
/// (the bytes were produced by an independent Python encoder written from
/// the document, with the `openssl mac GMAC` and `openssl enc -aes-256-ecb`
/// CLI for the payload checksum), and the version 1 example that readers
/// still take.
@Suite struct GoldenTests {
    static let exampleHex =
        "544d544152474554020002009000000007000000000000000700000000000000a0dc0256248d935412a5d54b1d6cbcca"
        + "00000000000000000000000000000000030073646227000000020000000000000000000000000001000000000000000001"
        + "000000000000000100000000000100346ae1f41cdf0aa4d837e1952848ef64d1299f36c9523bf27d29a9630496e70b"
        + "7365616c656421"

    /// The same segment in envelope version 1 (payload SHA-256).
    static let version1Hex =
        "544d5441524745540100020090000000070000000000000007000000000000007bbea178883da511e672d366223c616b"
        + "8b0ed719b51023b600640faf3d71261d030073646227000000020000000000000000000000000001000000000000000001"
        + "000000000000000100000000000100b49c7bf71c3ec14c65f6fb50499f909f978abdd6858b7780df0fadc23ba7aa49"
        + "7365616c656421"

    static func bytes(_ hex: String) -> [UInt8] {
        var out = [UInt8]()
        var it = hex.utf8.makeIterator()
        while let h = it.next(), let l = it.next() {
            out.append(UInt8(String(decoding: [h, l], as: UTF8.self), radix: 16)!)
        }
        return out
    }

    static var example: [UInt8] { bytes(exampleHex) }

    let extents = [TargetExtent(offset: 0, length: 65536, zero: false), TargetExtent(offset: 65536, length: 65536, zero: true)]

    /// Offers `text` as segment 7 of disk sdb with the example's extents.
    func put(_ target: TargetRepository, _ text: String) throws {
        try Array(text.utf8).withUnsafeBytes {
            try target.putSegment(diskID: "sdb", sequence: 7, extents: extents, point: nil, bytes: $0)
        }
    }

    @Test func encoderMatchesTheDocument() {
        let payload = Array("sealed!".utf8)
        let header = payload.withUnsafeBytes {
            Envelope.encodeHeader(kind: .segment, diskID: "sdb", sequence: 7,
                                  metadata: Metadata.encodeSegment(extents: extents, point: nil), payload: $0)
        }
        #expect((header + payload).hexString == Self.exampleHex)
        #expect(ObjectDigest.payload(payload, version: 2).hexString == "a0dc0256248d935412a5d54b1d6cbcca" + String(repeating: "0", count: 32))
        #expect(ObjectDigest.payload(payload, version: 1) == ObjectDigest.sha256(payload))
    }

    func target(_ tag: String) throws -> (TargetRepository, String) {
        let dir = try TestEnv.tempDir(tag)
        let target = try TargetRepository(localDirectory: dir + "/t")
        try target.putDisk(DiskRecord(diskID: "sdb", ownerAgentID: "a", sizeBytes: 1 << 20, chunkSizeBytes: 65536, keyID: 1))
        return (target, dir)
    }

    @Test(arguments: [2, 1]) func readerAcceptsTheDocumentsBytes(version: Int) throws {
        let (target, dir) = try target("target-golden-\(version)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let object = Self.bytes(version == 2 ? Self.exampleHex : Self.version1Hex)
        #expect(FileManager.default.createFile(atPath: target.segmentPath("sdb", 7), contents: Data(object)))
        #expect(try target.readSegment(diskID: "sdb", sequence: 7) == Array("sealed!".utf8))
        let info = try #require(try target.segmentInfo(diskID: "sdb", sequence: 7))
        #expect(info.extents == extents && info.point == nil)
        #expect(info.checksumVersion == UInt16(version))
        #expect(target.segmentPath("sdb", 7).hasSuffix("/disks/sdb/segments/00000000000000000007.seg"))
        // Offered again, the same bytes match whichever checksum it was stored with; others do not.
        #expect(throws: Never.self) {
            try put(target, "sealed!")
        }
        #expect(throws: TidemarkError.self) {
            try put(target, "sealed?")
        }
    }

    /// Version 2's reserved checksum bytes must be zero; a payload that no
    /// longer matches its checksum is refused.
    @Test func version2ChecksumDamageIsRefused() throws {
        let (target, dir) = try target("target-golden-damage")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (offset, what) in [(0x30, "reserved bytes 48-63 are not 0"), (0x90, "payload checksum mismatch")] {
            var object = Self.example
            object[offset] ^= 1
            if offset < 0x70 {  // keep the header digest right: only the check under test fails
                let digest = ObjectDigest.sha256(Array(object[0..<0x70]))
                object.replaceSubrange(0x70..<0x90, with: digest)
            }
            #expect(FileManager.default.createFile(atPath: target.segmentPath("sdb", 7), contents: Data(object)))
            let error = #expect(throws: TidemarkError.self) { _ = try target.readSegment(diskID: "sdb", sequence: 7) }
            #expect(error?.kind == .corrupt && error?.message.contains(what) == true, "\(String(describing: error))")
        }
    }

    /// A tombstone written now for a segment stored with envelope version 1
    /// keeps that segment's SHA-256 and says so: a re-sent copy still matches.
    @Test func aTombstoneKeepsTheChecksumVersionOfItsSegment() throws {
        let (target, dir) = try target("target-golden-tomb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(FileManager.default.createFile(atPath: target.segmentPath("sdb", 7), contents: Data(Self.bytes(Self.version1Hex))))
        let info = try #require(try target.segmentInfo(diskID: "sdb", sequence: 7))
        let header = Envelope.encodeHeader(kind: .tombstone, diskID: "sdb", sequence: 7,
                                           metadata: Metadata.encodeTombstone(info, prunedAtUnixMs: 1, deadAt: 9),
                                           payload: UnsafeRawBufferPointer(start: nil, count: 0))
        #expect(throws: Never.self) {
            try header.withUnsafeBytes { try target.store.put(target.tombstoneName("sdb", 7), ObjectContent($0)) }
        }
        try target.store.delete(target.segmentName("sdb", 7))
        let tomb = try #require(try target.segmentInfo(diskID: "sdb", sequence: 7))
        #expect(tomb.pruned && tomb.checksumVersion == 1 && tomb.payloadChecksum == ObjectDigest.sha256(Array("sealed!".utf8)))
        #expect(throws: Never.self) {
            try put(target, "sealed!")
        }
        #expect(throws: TidemarkError.self) {
            try put(target, "sealed?")
        }
    }
}
