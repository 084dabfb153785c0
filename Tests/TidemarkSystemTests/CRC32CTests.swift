import Testing
@testable import TidemarkSystem

@Suite struct CRC32CTests {
    @Test func checkValue() {
        #expect(Array("123456789".utf8).withUnsafeBytes { crc32c($0) } == 0xE306_9283)
    }

    /// Buffers of 16 KiB and more are summed in three streams whose CRCs are
    /// combined: every length, alignment and seed gives the one-stream value,
    /// and a buffer summed in two calls (seeded with the first) equals one call.
    @Test func threeStreamsEqualOne() {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<(1 << 20) + 64).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { all in
            var lengths = [0, 1, 7, 8, 16383, 16384, 16385, 16391, 24 * 1000, 24 * 1000 + 5, 1 << 20]
            for _ in 0..<300 { lengths.append(Int.random(in: 0...(1 << 20), using: &rng)) }
            for len in lengths {
                let off = Int.random(in: 0...63, using: &rng)
                let seed = UInt32.random(in: 0...UInt32.max, using: &rng)
                let b = UnsafeRawBufferPointer(rebasing: all[off..<off + len])
                #expect(crc32c(b, seed: seed) == crc32cSingleStream(b, seed: seed), "length \(len), offset \(off)")
                let cut = len / 3
                let joined = crc32c(UnsafeRawBufferPointer(rebasing: b[cut...]),
                                    seed: crc32c(UnsafeRawBufferPointer(rebasing: b[..<cut])))
                #expect(joined == crc32cSingleStream(b), "length \(len) cut at \(cut)")
            }
        }
    }
}
