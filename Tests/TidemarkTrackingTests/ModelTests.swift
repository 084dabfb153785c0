import Testing
import TidemarkTesting
@testable import TidemarkTracking

@Suite struct BitmapScanTests {
    func scan(_ words: [UInt64], first: UInt64 = 0, nr: UInt64, into out: [ChunkExtent] = []) -> [ChunkExtent] {
        var out = out
        words.withUnsafeBufferPointer { BitmapScan.extents($0, firstWordIndex: first, nrChunks: nr, into: &out) }
        return out
    }

    @Test func runsWithinAndAcrossWords() {
        #expect(scan([0b1011_0110], nr: 64) == [.init(firstChunk: 1, chunkCount: 2), .init(firstChunk: 4, chunkCount: 2),
                                                 .init(firstChunk: 7, chunkCount: 1)])
        #expect(scan([1 << 63, ~0, 0b11], nr: 192) == [.init(firstChunk: 63, chunkCount: 67)])
        #expect(scan([~0, ~0], nr: 100) == [.init(firstChunk: 0, chunkCount: 100)])  // clipped at nrChunks
        #expect(scan([0, 0, 0, 0, 0, 0, 0, 0, 0, 1 << 5], first: 10, nr: 10_000) == [.init(firstChunk: 19 * 64 + 5, chunkCount: 1)])
        #expect(scan([UInt64](repeating: 0, count: 1000), nr: 64_000) == [])
        // Continues a run left in `into` by the previous buffer.
        #expect(scan([0b1], first: 2, nr: 1000, into: [.init(firstChunk: 120, chunkCount: 8)]) == [.init(firstChunk: 120, chunkCount: 9)])
        #expect(scan([0b10], first: 2, nr: 1000, into: [.init(firstChunk: 120, chunkCount: 8)])
            == [.init(firstChunk: 120, chunkCount: 8), .init(firstChunk: 129, chunkCount: 1)])
    }

    @Test func randomWordsMatchTheObviousAnswer() {
        var rng = SplitMix64(seed: 7)
        for round in 0..<200 {
            let n = Int.random(in: 0..<40, using: &rng)
            let words: [UInt64] = (0..<n).map { _ in
                switch UInt8.random(in: 0..<4, using: &rng) {
                case 0: 0
                case 1: ~0
                case 2: rng.next() & rng.next()
                default: rng.next()
                }
            }
            let nr = UInt64.random(in: 0...UInt64(n * 64), using: &rng)
            let expected = extents(ofSorted: chunks(of: words).filter { $0 < nr })
            #expect(scan(words, nr: nr) == expected, "round \(round)")
            #expect(words.withUnsafeBufferPointer { BitmapScan.popcount($0) } == UInt64(chunks(of: words).count))
        }
    }

    @Test func mergeSortsAndJoins() {
        let m = BitmapScan.merge([.init(firstChunk: 50, chunkCount: 10), .init(firstChunk: 0, chunkCount: 5),
                                  .init(firstChunk: 5, chunkCount: 3), .init(firstChunk: 55, chunkCount: 20),
                                  .init(firstChunk: 100, chunkCount: 0), .init(firstChunk: 80, chunkCount: 1),
                                  .init(firstChunk: 52, chunkCount: 2)])
        #expect(m == [.init(firstChunk: 0, chunkCount: 8), .init(firstChunk: 50, chunkCount: 25), .init(firstChunk: 80, chunkCount: 1)])
        #expect(BitmapScan.merge([]) == [])
    }
}

/// Thousands of random updates against a `Set<UInt64>` model, reopening the
/// file now and then. A failure reproduces from the seed.
@Suite struct ModelTests {
    @Test(arguments: [UInt64(1), 0xC0FFEE])
    func randomOperationsMatchTheModel(seed: UInt64) throws {
        let dir = TempDir()
        let path = dir.file("model.hrl")
        var rng = SplitMix64(seed: seed)
        var file = try makeFile(dir, "model.hrl")
        let nr = file.header.nrChunks
        var model = Set<UInt64>()
        let operations = 2000

        func randomRun() -> (UInt64, UInt64) {
            // Biased toward page boundaries (multiples of 32_512) and the disk's end.
            let anchors: [UInt64] = [0, 32_512, 65_024, 97_536, nr]
            let anchor = anchors[Int.random(in: 0..<anchors.count, using: &rng)]
            let first = Bool.random(using: &rng)
                ? UInt64.random(in: 0..<nr, using: &rng)
                : min(nr - 1, anchor &- UInt64.random(in: 0...100, using: &rng) % max(anchor, 1))
            let count = min(nr - first, UInt64.random(in: 1...(Bool.random(using: &rng) ? 200 : 5000), using: &rng))
            return (first, count)
        }

        for op in 0..<operations {
            let kind = Int.random(in: 0..<100, using: &rng)
            var words = SparseWords()
            switch kind {
            case 0..<35:  // set a run
                let (first, count) = randomRun()
                words.appendChunks(first: first, count: count)
                try file.persistSet(words)
                model.formUnion(first..<(first + count))
            case 35..<55:  // set scattered chunks
                let cs = (0..<Int.random(in: 1...30, using: &rng)).map { _ in UInt64.random(in: 0..<nr, using: &rng) }
                words = SparseWords(chunks: cs)
                try file.persistSet(words)
                model.formUnion(cs)
            case 55..<80:  // clear a run (a committed segment)
                let (first, count) = randomRun()
                words.appendChunks(first: first, count: count)
                try file.persistClear(words)
                model.subtract(first..<(first + count))
            case 80..<97:  // clear what some extents say (the mirror loop's pattern)
                var budget = UInt64.random(in: 1...3000, using: &rng)
                try file.forEachDirtyExtent(maxChunksPerExtent: 700) { e in
                    guard budget > 0 else { return }
                    let n = min(budget, e.chunkCount)
                    words.appendChunks(first: e.firstChunk, count: n)
                    budget -= n
                }
                try file.persistClear(words)
                model.subtract(words.chunks)
            case 97..<98:
                try file.markAllDirty()
                model = Set(0..<nr)
            case 98..<99:
                try file.clearAll()
                model = []
            default:  // reopen
                file.close()
                file = try TrackingFile.open(at: path)
            }
            #expect(try file.dirtyCount() == UInt64(model.count), "seed \(seed) op \(op)")
            if op % 100 == 99 {
                let sorted = model.sorted()
                #expect(try file.dirtyWords().chunks == sorted, "seed \(seed) op \(op)")
                #expect(try allExtents(file) == extents(ofSorted: sorted), "seed \(seed) op \(op)")
            }
        }
        file.close()
        #expect(TrackingFile.verify(at: path) == [])
        let reopened = try TrackingFile.open(at: path, readOnly: true)
        #expect(chunks(of: try reopened.readAllWords()) == model.sorted())
    }
}
