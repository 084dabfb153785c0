import Testing
import TidemarkSystem
@testable import TidemarkTracking

/// The worked example of docs/hrl-format.md, byte for byte: if this fails,
/// the format changed (bump the version) or the document is wrong.
@Suite struct GoldenTests {
    static let header = HRLHeader(
        formatVersion: 2, generation: 1, diskSizeBytes: 10 << 20, chunkSizeBytes: 65536, state: .tracking,
        nrChunks: 160, bitmapPages: 1, createdUnixNs: 1_700_000_000_000_000_000,
        stateChangedUnixNs: 1_700_000_000_000_000_000, drainSeq: 0, clearSeq: 0, reason: .none,
        fileUUID: [0x6F, 0x1C, 0x2A, 0x9E, 0x4B, 0x3D, 0x4E, 0x0A, 0x9B, 0x7C, 0x5D, 0x2E, 0x1F, 0x00, 0xA3, 0xB4],
        diskID: "loop0", diskIdentity: "loop:/var/tmp/disk.img", reasonText: "", targetID: "",
        bootID: "01e35eed-a97d-4a56-80ce-5ddfb2711480")

    @Test func headerExample() {
        var page = [UInt8](repeating: 0, count: pageSize)
        page.withUnsafeMutableBytes { HRLFormat.encodeHeader(Self.header, into: $0) }
        #expect(hexDump(page) == """
            00000000  54 4d 48 52 4c 0d 0a 1a  02 00 00 00 00 10 00 00  |TMHRL...........|
            00000010  01 00 00 00 00 00 00 00  00 00 a0 00 00 00 00 00  |................|
            00000020  00 00 01 00 01 00 00 00  a0 00 00 00 00 00 00 00  |................|
            00000030  01 00 00 00 00 00 00 00  00 00 2a 36 fe 9c 97 17  |..........*6....|
            00000040  00 00 2a 36 fe 9c 97 17  00 00 00 00 00 00 00 00  |..*6............|
            *
            00000060  6f 1c 2a 9e 4b 3d 4e 0a  9b 7c 5d 2e 1f 00 a3 b4  |o.*.K=N..|].....|
            00000070  6c 6f 6f 70 30 00 00 00  00 00 00 00 00 00 00 00  |loop0...........|
            *
            000000b0  6c 6f 6f 70 3a 2f 76 61  72 2f 74 6d 70 2f 64 69  |loop:/var/tmp/di|
            000000c0  73 6b 2e 69 6d 67 00 00  00 00 00 00 00 00 00 00  |sk.img..........|
            *
            000003b0  30 31 65 33 35 65 65 64  2d 61 39 37 64 2d 34 61  |01e35eed-a97d-4a|
            000003c0  35 36 2d 38 30 63 65 2d  35 64 64 66 62 32 37 31  |56-80ce-5ddfb271|
            000003d0  31 34 38 30 00 00 00 00  00 00 00 00 00 00 00 00  |1480............|
            *
            00000ff0  00 00 00 00 00 00 00 00  00 00 00 00 d0 a6 ab 4b  |...............K|
            """)
        let decoded = page.withUnsafeBytes { HRLFormat.decodeHeader($0, slot: 1) }
        guard case .valid(let h) = decoded else {
            Issue.record("the example header does not decode: \(decoded)")
            return
        }
        #expect(h == Self.header)
        #expect(h.fileUUIDString == "6f1c2a9e-4b3d-4e0a-9b7c-5d2e1f00a3b4")
    }

    /// Version 1 files (no seal_nonce, reasons 0...11) are still read: the
    /// worked example as version 1 wrote it decodes to the same fields.
    @Test func version1HeaderStillDecodes() {
        var v1 = Self.header
        v1.formatVersion = 1
        var page = [UInt8](repeating: 0, count: pageSize)
        page.withUnsafeMutableBytes { HRLFormat.encodeHeader(v1, into: $0) }
        #expect(page[8] == 1 && Array(page[4092..<4096]) == [0xC4, 0xFD, 0x1D, 0xDE])
        let decoded = page.withUnsafeBytes { HRLFormat.decodeHeader($0, slot: 1) }
        guard case .valid(let h) = decoded else {
            Issue.record("the version 1 header does not decode: \(decoded)")
            return
        }
        #expect(h == v1 && !h.hasSealNonce)
        // Version 1 knows no reason 12 and no seal nonce.
        for (offset, value) in [(88, UInt8(12)), (1008, UInt8(1))] {
            var bad = page
            bad[offset] = value
            let crc = bad.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<4092])) }
            withUnsafeBytes(of: crc.littleEndian) { for k in 0..<4 { bad[4092 + k] = $0[k] } }
            guard case .invalid = bad.withUnsafeBytes({ HRLFormat.decodeHeader($0, slot: 1) }) else {
                Issue.record("version 1 with byte \(offset) = \(value) should be invalid")
                continue
            }
        }
    }

    /// Version 2's seal nonce is only valid beside state `clean`.
    @Test func sealNonceOnlyWithStateClean() {
        var h = Self.header
        h.state = .clean
        h.sealNonce = Array(1...16)
        var page = [UInt8](repeating: 0, count: pageSize)
        page.withUnsafeMutableBytes { HRLFormat.encodeHeader(h, into: $0) }
        #expect(Array(page[1008..<1024]) == Array(1...16))
        guard case .valid(let back) = page.withUnsafeBytes({ HRLFormat.decodeHeader($0, slot: 1) }) else {
            Issue.record("a clean header with a nonce does not decode")
            return
        }
        #expect(back.sealNonce == Array(1...16) && back.hasSealNonce)
        h.state = .tracking
        page.withUnsafeMutableBytes { HRLFormat.encodeHeader(h, into: $0) }
        guard case .invalid(let why) = page.withUnsafeBytes({ HRLFormat.decodeHeader($0, slot: 1) }) else {
            Issue.record("a tracking header with a nonce decodes")
            return
        }
        #expect(why.contains("seal_nonce"))
    }

    @Test func bitmapPageExample() {
        var page = [UInt8](repeating: 0, count: pageSize)
        page[0] = 0x0F  // chunks 0-3
        page[12] = 0x10  // chunk 100: word 1, bit 36
        page.withUnsafeMutableBytes {
            HRLFormat.sealBitmapPage($0, page: 0, sequence: 2, binding: HRLFormat.binding(Self.header.fileUUID))
        }
        #expect(hexDump(page) == """
            00000000  0f 00 00 00 00 00 00 00  00 00 00 00 10 00 00 00  |................|
            *
            00000fe0  54 4d 42 50 00 00 00 00  00 00 00 00 00 00 00 00  |TMBP............|
            00000ff0  02 00 00 00 00 00 00 00  6f 1c 2a 9e 66 62 bd 4c  |........o.*.fb.L|
            """)
        let ctx = HRLFormat.PageContext(binding: HRLFormat.binding(Self.header.fileUUID), wordCount: 3, nrChunks: 160)
        let r = page.withUnsafeBytes { HRLFormat.checkBitmapSlot($0, page: 0, slot: 1, ctx) }
        guard case .valid(let seq, let pop) = r else {
            Issue.record("the example page is not valid: \(r)")
            return
        }
        #expect(seq == 2 && pop == 5)
    }
}
