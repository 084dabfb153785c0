import Dispatch
import Testing
import TidemarkTesting
@testable import TidemarkSystem


/// The non-zero words by a plain loop: what a snapshot must equal.
private func reference(_ w: MappedWords) -> [(UInt32, UInt64)] {
    (0..<w.count).compactMap { i in w.base[i] != 0 ? (UInt32(i), w.base[i]) : nil }
}

private func entries(_ d: DrainWords) -> [(UInt32, UInt64)] {
    (0..<d.count).map { (UInt32(d[$0].wordIndex), d[$0].bits) }
}

private func same(_ a: [(UInt32, UInt64)], _ b: [(UInt32, UInt64)]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
}

/// Fills `fraction` of the words with random non-zero values (some full,
/// some single bits, some random).
/// After a clear: exactly the bits added since the snapshot remain, and
/// every bit of the snapshot is gone.
private func expectOnlyAddedBitsRemain(_ w: MappedWords, snapshot: [(UInt32, UInt64)], added extra: [UInt64], round: Int) {
    var inSnapshot = [UInt64](repeating: 0, count: w.count)
    for (i, b) in snapshot { inSnapshot[Int(i)] = b }
    for i in 0..<w.count {
        #expect(w.base[i] == extra[i], "round \(round), word \(i)")
        #expect(w.base[i] & inSnapshot[i] == 0)
    }
}

private func fill(_ w: MappedWords, fraction: Double, rng: inout SplitMix64) {
    for i in 0..<w.count {
        w.base[i] = 0
        guard Double(rng.next() % 1_000_000) / 1_000_000 < fraction else { continue }
        switch rng.below(3) {
        case 0: w.base[i] = ~0
        case 1: w.base[i] = 1 << UInt64(rng.below(64))
        default: w.base[i] = rng.next() | 1 << 63
        }
    }
}

@Suite struct DrainWordsTests {
    @Test(arguments: [1, 31, 32, 33, 63, 64, 1000, 4099])
    func snapshotEqualsTheNonZeroWordsAndLeavesThemAlone(count: Int) throws {
        let w = try MappedWords(anonymousWordCount: count)
        var rng = SplitMix64(seed: UInt64(count))
        var d = DrainWords()
        for fraction in [0.0, 0.001, 0.05, 0.3, 0.5, 0.9, 1.0] {
            fill(w, fraction: fraction, rng: &rng)
            let before = reference(w)
            d.snapshot(w)
            #expect(same(entries(d), before), "count \(count), fraction \(fraction)")
            #expect(same(reference(w), before), "the snapshot modified the words")
            #expect(d.popcount == before.reduce(0) { $0 + UInt64($1.1.nonzeroBitCount) })
            d.clear(w)
            #expect(w.nextNonZero(from: 0) == w.count, "count \(count), fraction \(fraction): bits left after the clear")
        }
    }

    @Test func bitsSetAfterTheSnapshotSurviveTheClear() throws {
        let w = try MappedWords(anonymousWordCount: 5000)
        var rng = SplitMix64(seed: 7)
        for round in 0..<20 {
            fill(w, fraction: 0.2, rng: &rng)
            var d = DrainWords()
            d.snapshot(w)
            let snap = entries(d)
            // New bits between the snapshot and the clear: in words of the
            // snapshot (bits it did not have) and in words outside it.
            var extra = [UInt64](repeating: 0, count: w.count)
            for _ in 0..<500 {
                let i = rng.below(w.count)
                let bit: UInt64 = 1 << UInt64(rng.below(64))
                if w.base[i] & bit == 0 { extra[i] |= bit }
                w.base[i] |= bit
            }
            #expect(extra.contains { $0 != 0 })
            d.clear(w)
            expectOnlyAddedBitsRemain(w, snapshot: snap, added: extra, round: round)
        }
    }

    @Test func aSmallCapacityGrowsAndResumesWhereTheScanStopped() throws {
        let w = try MappedWords(anonymousWordCount: 10_007)
        var rng = SplitMix64(seed: 3)
        fill(w, fraction: 1.0, rng: &rng)
        var d = DrainWords(capacity: 1)
        #expect(d.capacity < w.count)
        d.snapshot(w)
        #expect(d.count == w.count)
        #expect(d.capacity >= w.count)
        #expect(same(entries(d), reference(w)))
    }

    @Test func theCScanResumesAtItsPosition() throws {
        let w = try MappedWords(anonymousWordCount: 3000)
        var rng = SplitMix64(seed: 11)
        fill(w, fraction: 0.6, rng: &rng)
        let cap = 40
        var idx = [UInt32](repeating: 0, count: cap), bits = [UInt64](repeating: 0, count: cap)
        var got: [(UInt32, UInt64)] = []
        var pos = 0, calls = 0
        while pos < w.count {
            let n = DrainWords.snapshotNonzero(w.base, w.count, &pos, &idx, &bits, cap)
            #expect(n <= cap)
            for k in 0..<n { got.append((idx[k], bits[k])) }
            calls += 1
            #expect(calls < 10_000, "no progress")
            if calls >= 10_000 { break }
        }
        #expect(calls > 1)
        #expect(same(got, reference(w)))
        // Fewer than 32 free entries: no progress, nothing written.
        var p0 = 0
        #expect(DrainWords.snapshotNonzero(w.base, w.count, &p0, &idx, &bits, 31) == 0)
        #expect(p0 == 0)
    }

    @Test func anEmptyBitmapAndAReusedBuffer() throws {
        let w = try MappedWords(anonymousWordCount: 4096)
        var d = DrainWords()
        d.snapshot(w)
        #expect(d.isEmpty && d.count == 0 && d.popcount == 0)
        d.clear(w)
        #expect(w.nextNonZero(from: 0) == w.count)
        w.base[100] = 5
        d.snapshot(w)
        #expect(d.count == 1)
        d.clear(w)
        d.snapshot(w) // the previous contents do not linger
        #expect(d.isEmpty)
    }

    @Test(arguments: [1, 2, 31, 32, 33, 64, 4099])
    func theLastWord(count: Int) throws {
        let w = try MappedWords(anonymousWordCount: count)
        w.base[count - 1] = 1 << 63
        var d = DrainWords()
        d.snapshot(w)
        #expect(same(entries(d), [(UInt32(count - 1), 1 << 63)]))
        w.base[0] |= 1
        d.clear(w)
        #expect(w.base[count - 1] & (1 << 63) == 0)
        #expect(w.base[0] == 1) // set after the snapshot (or beside its bit in a one-word map)
    }

    @Test func aLargeSnapshotDoesNotPinItsMemory() throws {
        let w = try MappedWords(anonymousWordCount: 200_000)
        var rng = SplitMix64(seed: 5)
        fill(w, fraction: 1.0, rng: &rng)
        var d = DrainWords()
        d.snapshot(w)
        d.clear(w)
        #expect(d.capacity >= 200_000)
        w.base[10] = 1
        d.snapshot(w) // sizes down from the previous count...
        d.snapshot(w) // ...and from this one
        #expect(d.capacity < 200_000 / 8)
        #expect(same(entries(d), [(10, 1)]))
    }

    /// A writer ORs bits (atomically, as the BPF program does) while the
    /// drain snapshots and clears over and over: every bit it set is in some
    /// snapshot or still in the map; none is lost, none invented.
    @Test func nothingIsLostToAConcurrentWriter() throws {
        let w = try MappedWords(anonymousWordCount: 2048)
        final class Box: @unchecked Sendable { var everSet: [UInt64] = [] }
        let box = Box()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) {
            var rng = SplitMix64(seed: 99)
            var ever = [UInt64](repeating: 0, count: w.count)
            for _ in 0..<2_000_000 {
                // Mostly a small hot region, so the writer and the clear
                // meet on the same words.
                let i = rng.below(8) == 0 ? rng.below(w.count) : rng.below(64)
                let bit: UInt64 = 1 << UInt64(rng.below(64))
                w.set(i, bit)
                ever[i] |= bit
            }
            box.everSet = ever
        }
        var drainedUnion = [UInt64](repeating: 0, count: w.count)
        var d = DrainWords()
        var drains = 0
        func drainOnce() {
            d.snapshot(w)
            for k in 0..<d.count {
                let e = d[k]
                drainedUnion[Int(e.wordIndex)] |= e.bits
            }
            d.clear(w)
            drains += 1
        }
        while group.wait(timeout: .now()) == .timedOut { drainOnce() }
        let remaining = (0..<w.count).map { w.base[$0] }
        drainOnce()
        #expect(drains > 10)
        for i in 0..<w.count {
            #expect(drainedUnion[i] | remaining[i] == box.everSet[i], "word \(i)")
        }
        #expect(w.nextNonZero(from: 0) == w.count)
    }
}

/// The split drain (several threads, `DrainWords.parts` parts), forced on
/// small bitmaps by lowering the thresholds.
@Suite struct SplitDrainWordsTests {
    static func split(capacity: Int = 4) -> DrainWords {
        DrainWords(capacity: capacity, parallelMinWords: 1, parallelMinEntries: 1)
    }

    @Test(arguments: [128, 129, 1000, 4099, 10_007])
    func aSplitSnapshotEqualsTheNonZeroWords(count: Int) throws {
        let w = try MappedWords(anonymousWordCount: count)
        var rng = SplitMix64(seed: UInt64(count) &* 3)
        var d = Self.split()
        let bounds = DrainWords.splits(wordCount: count)
        #expect(bounds.count == DrainWords.parts + 1 && bounds.first == 0 && bounds.last == count)
        #expect(zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 })
        for fraction in [0.0, 0.001, 0.05, 0.5, 1.0] {
            fill(w, fraction: fraction, rng: &rng)
            // The words on both sides of every cut are dirty.
            for b in bounds.dropFirst().dropLast() { w.base[b - 1] |= 1 << 63; w.base[b] |= 1 }
            let before = reference(w)
            d.snapshot(w)
            #expect(d.lastSnapshotParts == (DrainWords.canSplit ? DrainWords.parts : 1))
            #expect(same(entries(d), before), "count \(count), fraction \(fraction)")
            #expect(same(reference(w), before), "the snapshot modified the words")
            d.clear(w)
            #expect(w.nextNonZero(from: 0) == w.count, "count \(count), fraction \(fraction): bits left after the clear")
        }
    }

    /// All the dirty words in one part: its region overflows and every part
    /// is scanned again into larger regions; then the dirt moves elsewhere.
    @Test func aPartThatOverflowsItsRegion() throws {
        let n = 40_000
        let w = try MappedWords(anonymousWordCount: n)
        let bounds = DrainWords.splits(wordCount: n)
        var d = Self.split()
        for r in [DrainWords.parts - 1, 0, 1] {
            for i in 0..<n { w.base[i] = i >= bounds[r] && i < bounds[r + 1] ? UInt64(i) | 1 : 0 }
            let before = reference(w)
            d.snapshot(w)
            #expect(same(entries(d), before), "dirt in part \(r)")
            d.clear(w)
            #expect(w.nextNonZero(from: 0) == n)
        }
    }

    /// Bits set between the split snapshot and the split clear, at the cuts
    /// and elsewhere, stay; every snapshot bit goes.
    @Test func bitsSetAfterASplitSnapshotSurvive() throws {
        let w = try MappedWords(anonymousWordCount: 5000)
        let bounds = DrainWords.splits(wordCount: w.count)
        var rng = SplitMix64(seed: 17)
        var d = Self.split()
        for round in 0..<10 {
            fill(w, fraction: 0.3, rng: &rng)
            for b in bounds.dropFirst().dropLast() { w.base[b - 1] |= 1; w.base[b] |= 1 }
            d.snapshot(w)
            let snap = entries(d)
            var extra = [UInt64](repeating: 0, count: w.count)
            var targets = (0..<300).map { _ in rng.below(w.count) }
            for b in bounds.dropFirst().dropLast() { targets += [b - 1, b] }
            for i in targets {
                let bit: UInt64 = 1 << UInt64(rng.below(63) + 1) // not bit 0, which the cut words have
                if w.base[i] & bit == 0 { extra[i] |= bit }
                w.base[i] |= bit
            }
            d.clear(w)
            expectOnlyAddedBitsRemain(w, snapshot: snap, added: extra, round: round)
        }
    }

    /// A writer ORs bits atomically (as the BPF program does), most of them
    /// in the words around the cuts, while split drains run over and over:
    /// every bit it set is in exactly one snapshot or still in the map.
    @Test func nothingIsLostToAConcurrentWriterWhileSplit() throws {
        let w = try MappedWords(anonymousWordCount: 8192)
        let bounds = DrainWords.splits(wordCount: w.count)
        let hot = bounds.dropFirst().dropLast().flatMap { [$0 - 2, $0 - 1, $0, $0 + 1] }
        final class Box: @unchecked Sendable { var order: [(Int, UInt64)] = [] }
        let box = Box()
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) {
            // Each bit is set once, so each must be drained exactly once.
            var rng = SplitMix64(seed: 123)
            var set = [UInt64](repeating: 0, count: w.count)
            var order: [(Int, UInt64)] = []
            for _ in 0..<300_000 {
                let i = rng.below(4) == 0 ? rng.below(w.count) : hot[rng.below(hot.count)]
                let free = ~set[i]
                if free == 0 { continue }
                let bit = free & (0 &- free) // the lowest free bit
                set[i] |= bit
                w.set(i, bit)
                order.append((i, bit))
            }
            box.order = order
        }
        var drainedUnion = [UInt64](repeating: 0, count: w.count)
        var d = Self.split()
        var drains = 0, twice = 0
        func drainOnce() {
            d.snapshot(w)
            for k in 0..<d.count {
                let e = d[k]
                if drainedUnion[Int(e.wordIndex)] & e.bits != 0 { twice += 1 }
                drainedUnion[Int(e.wordIndex)] |= e.bits
            }
            d.clear(w)
            drains += 1
        }
        while group.wait(timeout: .now()) == .timedOut { drainOnce() }
        drainOnce()
        #expect(drains > 10)
        #expect(twice == 0, "a bit was drained twice")
        var everSet = [UInt64](repeating: 0, count: w.count)
        for (i, bit) in box.order { everSet[i] |= bit }
        #expect(box.order.count > 50_000)
        for i in 0..<w.count { #expect(drainedUnion[i] == everSet[i], "word \(i)") }
        #expect(w.nextNonZero(from: 0) == w.count)
    }
}
