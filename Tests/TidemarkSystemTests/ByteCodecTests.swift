import Testing
import TidemarkSystem

@Suite struct ByteCodecTests {
    /// What the encoder appends, the decoder reads back, field by field, in
    /// little-endian order; `LittleEndian` sees the same bytes at fixed offsets.
    @Test func roundTripAndByteOrder() throws {
        var w = ByteWriter()
        w.u8(0xAB)
        w.u16(0x0102)
        w.u32(0x0304_0506)
        w.u64(0x0708_090A_0B0C_0D0E)
        w.i64(-2)
        w.raw([9, 8])
        w.zeros(2)
        w.raw(Array("hé".utf8))
        #expect(Array(w.bytes[0..<7]) == [0xAB, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03])
        #expect(LittleEndian.load(w.bytes, at: 3, as: UInt32.self) == 0x0304_0506)
        #expect(LittleEndian.load(w.bytes, at: 7, as: UInt64.self) == 0x0708_090A_0B0C_0D0E)
        try w.bytes.withUnsafeBytes { b in
            var r = ByteReader(b, what: "test record")
            #expect(try r.u8("a") == 0xAB)
            #expect(try r.u16("b") == 0x0102)
            #expect(try r.u32("c") == 0x0304_0506)
            #expect(try r.u64("d") == 0x0708_090A_0B0C_0D0E)
            #expect(try r.i64("e") == -2)
            #expect(try r.bytes(2, "f") == [9, 8])
            try r.skip(2, "padding")
            #expect(r.remaining == 3)
            #expect(try r.u16(at: 1, "b again") == 0x0102)
            #expect(r.offset == 27, "a read at an offset does not move the position")
            #expect(try r.string(3, "name") == "hé")
            try r.end()
        }
        var patched = w.bytes
        LittleEndian.store(UInt32(0xDEAD_BEEF), into: &patched, at: 3)
        #expect(Array(patched[3..<7]) == [0xEF, 0xBE, 0xAD, 0xDE])
    }

    /// No read passes the end: each throws `.corrupt` naming what is
    /// decoded, the field and the offset, and nothing is consumed.
    @Test func truncatedInputThrowsATypedError() throws {
        let bytes: [UInt8] = [1, 2, 3]
        try bytes.withUnsafeBytes { b in
            var r = ByteReader(b, what: "spool record", hint: "move the file aside")
            _ = try r.u8("kind")
            do throws(TidemarkError) {
                _ = try r.u32("length")
                Issue.record("a 4-byte read from 2 bytes succeeded")
            } catch {
                #expect(error.kind == .corrupt)
                #expect(error.message == "spool record is truncated: length needs 4 bytes at offset 1, 2 left")
                #expect(error.hint == "move the file aside")
            }
            #expect(r.offset == 1)
            #expect(throws: TidemarkError.self) { try r.bytes(-1, "negative") }
            #expect(throws: TidemarkError.self) { try r.u64(at: 0, "whole") }
            #expect(throws: TidemarkError.self) { try r.u16(at: Int.max, "far") }
            #expect(throws: TidemarkError.self) { try r.bytes(at: 2, 2, "tail") }
            #expect(throws: TidemarkError.self) { try r.end() }
            #expect(try r.u16("rest") == 0x0302)
            try r.end()
        }
    }

    @Test func invalidUTF8AndTrailingBytesAreCorrupt() throws {
        let bytes: [UInt8] = [0xFF, 0xFE, 0x41]
        try bytes.withUnsafeBytes { b in
            var r = ByteReader(b, what: "hello message")
            do throws(TidemarkError) {
                _ = try r.string(2, "agent id")
                Issue.record("invalid UTF-8 accepted")
            } catch {
                #expect(error.message == "hello message: agent id is not valid UTF-8")
            }
            #expect(r.offset == 0)
            _ = try r.bytes(2, "skip")
            do throws(TidemarkError) {
                try r.end()
                Issue.record("a trailing byte accepted")
            } catch {
                #expect(error.message == "hello message has 1 unexpected trailing bytes at offset 2")
            }
            #expect(r.rest() == [0x41])
            try r.end()
        }
    }
}
