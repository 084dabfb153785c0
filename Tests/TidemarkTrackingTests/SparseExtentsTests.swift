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

    /// The listing split over threads (entry ranges listed on their own and
    /// concatenated): runs that go on across the ranges' boundaries, over
    /// many full words, ending right at a boundary, bits beyond nrChunks.
    @Test(arguments: [(64, UInt64(64 * 64)), (1000, 64_000), (4099, 262_000), (4099, 262_336)])
    func aSplitListingEqualsFullScan(_ nrWords: Int, _ nrChunks: UInt64) throws {
        let words = try MappedWords(anonymousWordCount: nrWords)
        for seed in UInt64(1)...8 {
            var rng = SplitMix64(seed: seed &+ 100)
            for i in 0..<nrWords { words.base[i] = 0 }
            switch seed {
            case 1: // one run over the whole bitmap: ranges after the first own nothing
                for i in 0..<nrWords { words.base[i] = ~0 }
            case 2: // full words with a hole every few words
                for i in 0..<nrWords where i % 7 != 3 { words.base[i] = ~0 }
            case 3: // runs ending exactly at word boundaries, next word clean or starting clean
                for i in 0..<nrWords where i % 3 == 0 { words.base[i] = 0xFFFF_0000_0000_0000 }
            default:
                for _ in 0..<(Int(seed) * nrWords / 3 + 1) {
                    let start = rng.next() % UInt64(nrWords * 64)
                    let len = [UInt64(1), 3, 64, 130, 700][Int(rng.next() % 5)]
                    for c in start..<min(UInt64(nrWords * 64), start + len) { words.base[Int(c / 64)] |= 1 << (c % 64) }
                }
            }
            // Bits at or beyond nrChunks are not listed (the full scan drops them too).
            var reference: [ChunkExtent] = []
            BitmapScan.extents(words.buffer, nrChunks: nrChunks, into: &reference)
            var drained = DrainWords(capacity: 4, parallelMinWords: 1, parallelMinEntries: 1)
            drained.snapshot(words)
            var flat = [ChunkExtent(firstChunk: 1, chunkCount: 0)] // appended after what is there
            BitmapScan.extents(drained, nrChunks: nrChunks, into: &flat)
            #expect(flat.first == ChunkExtent(firstChunk: 1, chunkCount: 0))
            #expect(Array(flat.dropFirst()) == reference, "seed \(seed), \(nrWords) words")
            #expect(drained.splitsEntries == DrainWords.canSplit)
            var serial = DrainWords(capacity: 4, parallelMinWords: .max, parallelMinEntries: .max)
            serial.snapshot(words)
            var one: [ChunkExtent] = []
            BitmapScan.extents(serial, nrChunks: nrChunks, into: &one)
            #expect(one == reference, "seed \(seed), not split")
        }
    }
}
