import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct ChunkSetTests {
    /// Random inserts, removals, taken runs and queries against a
    /// `Set<UInt64>` model, on sizes around word boundaries.
    @Test(arguments: [1, 63, 64, 65, 200, 1000] as [UInt64])
    func agreesWithASetModel(chunks: UInt64) {
        var rng = SplitMix64(seed: chunks)
        var set = ChunkSet(chunks: chunks)
        var model = Set<UInt64>()
        for _ in 0..<2000 {
            let first = UInt64.random(in: 0...chunks + 5, using: &rng)
            let n = UInt64.random(in: 0...130, using: &rng)
            let clipped = first >= chunks ? [] : Array(first..<min(first + n, chunks))
            switch UInt8.random(in: 0...4, using: &rng) {
            case 0:
                set.insert(first: first, count: n)
                model.formUnion(clipped)
            case 1:
                set.remove(first: first, count: n)
                model.subtract(clipped)
            case 2:
                let w = first / 64, bits = UInt64.random(in: 0...UInt64.max, using: &rng)
                set.insert(word: w, bits: bits)
                for b in 0..<64 where bits >> UInt64(b) & 1 == 1 && w * 64 + UInt64(b) < chunks { model.insert(w * 64 + UInt64(b)) }
            case 3:
                if let run = set.takeRun(maxChunks: max(n, 1)) {
                    #expect(run.count >= 1 && run.count <= max(n, 1))
                    for c in run.first..<run.first + run.count { #expect(model.remove(c) != nil, "took \(c), which was not in the set") }
                } else {
                    #expect(model.isEmpty)
                }
            default:
                let r = min(first, chunks)..<min(first + n, chunks)
                #expect(set.containsAll(r) == r.allSatisfy { model.contains($0) })
                var expected: [Range<UInt64>] = []
                var start: UInt64? = nil
                for c in r {
                    if model.contains(c) {
                        if let s = start { expected.append(s..<c); start = nil }
                    } else if start == nil { start = c }
                }
                if let s = start { expected.append(s..<r.upperBound) }
                #expect(set.missingRuns(r) == expected)
            }
            #expect(set.count == UInt64(model.count))
            #expect(set.isEmpty == model.isEmpty)
        }
        for c in 0..<chunks + 2 { #expect(set.contains(c) == model.contains(c)) }
    }

    /// Runs are taken in disk order from a rotating cursor, each at most
    /// `maxChunks` long, until the set is empty.
    @Test func takeRunRotates() {
        var set = ChunkSet(chunks: 300)
        set.insert(first: 10, count: 5)
        set.insert(first: 100, count: 150)
        #expect(set.takeRun(maxChunks: 4)! == (10, 4))
        // A chunk before the cursor waits until the cursor wraps.
        set.insert(first: 0, count: 1)
        #expect(set.takeRun(maxChunks: 100)! == (14, 1))
        #expect(set.takeRun(maxChunks: 100)! == (100, 100))
        #expect(set.takeRun(maxChunks: 100)! == (200, 50))
        #expect(set.takeRun(maxChunks: 100)! == (0, 1))
        #expect(set.takeRun(maxChunks: 100) == nil)
        set.insertAll()
        #expect(set.count == 300)
        #expect(set.containsAll(0..<300))
    }

    /// A set made from a disk's geometry maps bytes to whole chunks and
    /// back, clipping the short last chunk.
    @Test func bytesAndChunks() {
        var set = ChunkSet(sizeBytes: 10 * 4096 + 100, chunkSizeBytes: 4096)
        #expect(set.chunkCount == 11)
        #expect(set.chunks(ofBytes: 4096..<3 * 4096) == 1..<3)
        #expect(set.chunks(ofBytes: 10 * 4096..<10 * 4096 + 100) == 10..<11)
        #expect(set.chunks(ofBytes: UInt64.max - 10..<UInt64.max) == UInt64.max / 4096..<UInt64.max / 4096 + 1, "no overflow near 2^64")
        set.insert(1..<3)
        #expect(set.missingRuns(0..<11) == [0..<1, 3..<11])
        #expect(set.bytes(3..<11, diskSize: 10 * 4096 + 100) == 3 * 4096..<10 * 4096 + 100)
    }
}
