import Testing
import TidemarkSystem

@Suite struct ZeroBytesTests {
    /// Every length around the 8-byte words and 4 KiB blocks, aligned and
    /// not: all-zero buffers are zero, and one set bit anywhere (first byte,
    /// a block's first and last word, the tail words, the tail bytes, the
    /// last byte) is found.
    @Test func oneSetBitAnywhereIsFound() {
        let room = 3 * 4096 + 64
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: room, alignment: 4096)
        defer { buffer.deallocate() }
        let lengths = [0, 1, 7, 8, 9, 63, 4095, 4096, 4097, 4104, 8191, 8192, 8200, 3 * 4096 + 13]
        for start in [0, 8, 1, 5] {
            for length in lengths where start + length <= room {
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                let b = UnsafeMutableRawBufferPointer(rebasing: buffer[start..<start + length])
                #expect(isAllZero(UnsafeRawBufferPointer(b)), "start \(start), length \(length)")
                var positions = Set([0, length - 1, length / 2, length - 8, length - 9])
                for block in stride(from: 0, to: length, by: 4096) { positions.formUnion([block, block + 4088, block + 4095]) }
                for pos in positions where pos >= 0 && pos < length {
                    for bit in [0, 7] {
                        b[pos] = 1 << bit
                        #expect(!isAllZero(UnsafeRawBufferPointer(b)), "start \(start), length \(length), byte \(pos) bit \(bit)")
                        b[pos] = 0
                    }
                }
            }
        }
    }
}
