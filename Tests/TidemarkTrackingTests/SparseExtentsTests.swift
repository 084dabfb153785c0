import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTracking

/// Listing extents from drained words (flat arrays or SparseWords) must give
/// exactly what a full scan of the raw bitmap gives.
@Suite struct SparseExtentsTests {
    @Test(arguments: [(1, UInt64(1)), (3, 100), (1000, 64_000), (4099, 262_000), (4099, 262_336)])
    func drainedListingEqualsFullScan(_ nrWords: Int, _ nrChunks: UInt64) throws {
        let words = try MappedWords(anonymousWordCount: nrWords)
        for seed in UInt64(1)...6 {
            var rng = SplitMix64(seed: seed)
            for i in 0..<nrWords { words.base[i] = 0 }
            // Mixed layout: runs across word boundaries, single bits, full words.
            for _ in 0..<(Int(seed) * nrWords / 4 + 1) {
                let start = rng.next() % nrChunks
                let len = [UInt64(1), 3, 64, 130][Int(rng.next() % 4)]
                for c in start..<min(nrChunks, start + len) { words.base[Int(c / 64)] |= 1 << (c % 64) }
            }
            var reference: [ChunkExtent] = []
            BitmapScan.extents(words.buffer, nrChunks: nrChunks, into: &reference)
            var drained = DrainWords(capacity: 4)
            drained.snapshot(words)
            var flat: [ChunkExtent] = []
            BitmapScan.extents(drained, nrChunks: nrChunks, into: &flat)
            #expect(flat == reference, "seed \(seed)")
            var viaSparse: [ChunkExtent] = []
            BitmapScan.extents(SparseWords(drained), nrChunks: nrChunks, into: &viaSparse)
            #expect(viaSparse == reference, "seed \(seed)")
            #expect(SparseWords(drained).popcount == BitmapScan.popcount(words.buffer))
        }
    }
}
