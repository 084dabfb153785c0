import Testing
import TidemarkSurface

@Suite struct ByteCountTests {
    /// A nonzero count never reads as zero, and the unit steps at 1024.
    @Test(arguments: [
        (0, "0 bytes"), (1, "1 byte"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (655_360, "640.0 KiB"),
        (1_048_524, "1023.9 KiB"), (1_048_525, "1.0 MiB"), (1 << 20, "1.0 MiB"), (5 << 29, "2.5 GiB"),
        (16 << 40, "16.0 TiB"), (UInt64.max, "16.0 EiB"),
    ] as [(UInt64, String)])
    func text(bytes: UInt64, expected: String) {
        #expect(ByteCount.text(bytes) == expected)
    }
}
