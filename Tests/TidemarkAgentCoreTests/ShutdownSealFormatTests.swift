import Testing
import TidemarkSystem
@testable import TidemarkAgentCore

/// Extents read back from the armed region are data from disk: sums that
/// overflow are refused, not trapped on (found by fuzz-shutdown-seal).
@Suite struct ShutdownSealFormatTests {
    @Test func coverageSumsThatOverflowAreRefused() {
        let overflowing = [FileExtent(logical: 0, physical: 4096, length: 0xFFFF_FFFF_FFFF_F000, flags: 0),
                           FileExtent(logical: 0xFFFF_FFFF_FFFF_F000, physical: 8192, length: 0x2000, flags: 0)]
        #expect(throws: ShutdownSeal.FormatError.self) { try ShutdownSeal.checkCoverage(overflowing) }
        let deviceOverflow = [FileExtent(logical: 0, physical: 0xFFFF_FFFF_FFFF_F000, length: 0x2000, flags: 0)]
        #expect(throws: ShutdownSeal.FormatError.self) { try ShutdownSeal.checkCoverage(deviceOverflow) }
    }
}
