import Testing
@testable import TidemarkSystem

@Suite struct UsedSpaceTests {
    /// Used space is what the filesystem did not report free, up to its end:
    /// a range it left out of its answer altogether counts as used.
    @Test func usedIsTheComplementOfFreeUpToTheEnd() {
        let free: [(offset: UInt64, length: UInt64)] = [(4096, 4096), (16384, 8192), (40960, 100_000)]
        let used = UsedSpace.used(outside: free, upTo: 65536)
        #expect(used.map { [$0.offset, $0.length] } == [[0, 4096], [8192, 8192], [24576, 16384]])
        // Nothing free: all used; all free: nothing.
        #expect(UsedSpace.used(outside: [], upTo: 100).map { [$0.offset, $0.length] } == [[0, 100]])
        #expect(UsedSpace.used(outside: [(0, 100)], upTo: 100).isEmpty)
        // Free space that starts at 0 and ends before the end.
        #expect(UsedSpace.used(outside: [(0, 10)], upTo: 30).map { [$0.offset, $0.length] } == [[10, 20]])
    }
}

@Suite struct UsedSpaceSuperblockTests {
    /// Sizes read from a superblock are checked before they are used: a
    /// block size out of range or a product that overflows reads the disk whole.
    @Test func damagedSuperblockValuesGiveNoSize() {
        #expect(UsedSpace.bytes(blocks: 1000, blockSize: 4096) == 4_096_000)
        #expect(UsedSpace.bytes(blocks: 1000, blockSize: 3000) == nil)
        #expect(UsedSpace.bytes(blocks: 1000, blockSize: 512) == nil)
        #expect(UsedSpace.bytes(blocks: 1000, blockSize: 1 << 20) == nil)
        #expect(UsedSpace.bytes(blocks: .max / 2, blockSize: 4096) == nil)
        // A free range whose end overflows ends at the filesystem's end.
        #expect(UsedSpace.used(outside: [(100, .max)], upTo: 1000).map { [$0.offset, $0.length] } == [[0, 100]])
    }
}
