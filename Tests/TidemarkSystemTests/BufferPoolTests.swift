import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct BufferPoolTests {
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
