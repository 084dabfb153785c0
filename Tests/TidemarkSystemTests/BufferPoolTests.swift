import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct BufferPoolTests {
    /// Buffers of 2 MiB and more are aligned to 2 MiB (a huge page each),
    /// smaller ones to what was asked; both are usable end to end.
    @Test func largeBuffersAreHugePageAligned() {
        for (count, alignment) in [(4 << 20, 4096), ((2 << 20) + 4096, 4096), ((2 << 20) - 1, 4096), (1 << 20, 512)] {
            let b = AlignedBuffer(count: count, alignment: alignment, zeroed: true)
            let expected = count >= 2 << 20 ? 2 << 20 : alignment
            #expect(b.alignment == expected && Int(bitPattern: b.pointer) % expected == 0, "count \(count)")
            #expect(b.bytes[0] == 0 && b.bytes[count - 1] == 0)
            b.bytes[count - 1] = 7
            #expect(b.bytes[count - 1] == 7)
        }
    }

    @Test func buffersAreReusedAndBounded() {
        let pool = BufferPool(keptMax: 2, roundingBytes: 1 << 16)
        var a: PooledBuffer? = pool.take(100_000)
        #expect(a!.bytes.count == 131_072, "rounded up to the rounding size")
        #expect(Int(bitPattern: a!.bytes.baseAddress) % 4096 == 0)
        let address = a!.bytes.baseAddress
        a = nil
        #expect(pool.idleCount == 1)
        let b = pool.take(70_000)
        #expect(b.bytes.baseAddress == address, "a fitting idle buffer is reused")
        let c = pool.take(200_000)
        #expect(c.bytes.count >= 200_000 && c.bytes.baseAddress != address)
        var many: [PooledBuffer] = (0..<5).map { _ in pool.take(1000) }
        many.removeAll()
        #expect(pool.idleCount == 2, "at most keptMax idle buffers are kept")
        withExtendedLifetime((b, c)) {}
    }
}
