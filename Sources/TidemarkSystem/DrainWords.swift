import CTidemarkSystem
import Glibc

/// A snapshot of the non-zero words of a kernel bitmap: word indices and
/// values in two flat arrays, in increasing index order. The drain takes it
/// without modifying the words, persists it, then clears exactly its bits
/// (docs/tracer.md, "Draining"). Keep one and reuse it: the arrays keep
/// their capacity across snapshots, so a steady drain does not allocate.
///
/// The scan and the clear are C (`tm_drain.h`): vector extraction of the
/// non-zero words, and prefetch-for-write ahead of the locked AND-NOTs.
///
/// On a machine with more than one CPU, a large bitmap is drained by
/// several threads (the caller and `pool`'s): the snapshot scans `parts`
/// ranges of the bitmap into separate regions of the arrays, then closes the
/// gaps between them; the clear and the listing split the entries into
/// `parts` equal ranges. Every clear is still one atomic AND-NOT per word of
/// exactly the snapshot's bits, whichever thread issues it.
public struct DrainWords: Sendable {
    /// Word indices; valid in `0..<count` (the rest is spare capacity).
    public private(set) var index: [UInt32]
    /// Word values as read; valid in `0..<count`, none zero.
    public private(set) var bits: [UInt64]
    /// Number of non-zero words in the snapshot.
    public private(set) var count: Int = 0
    /// A bitmap of at least this many words is snapshotted in parts.
    public let parallelMinWords: Int
    /// A snapshot of at least this many entries is cleared and listed in parts.
    public let parallelMinEntries: Int
    /// Into how many parts the last snapshot was cut (1: not split), for tests.
    var lastSnapshotParts = 1

    /// The C scan stops when fewer than this many entries are free.
    static let block = 32
    /// How many pieces a split drain is cut into: more than there are
    /// threads, so that a worker that wakes late still takes a share and
    /// the caller, which starts at once, does the rest.
    public static let parts = 4
    /// 8 MiB of bits (a 4 TiB disk at 64 KiB chunks). Measured on the
    /// 2-vCPU VM of BENCHMARKS.md (1% dirty, drain + list, split against one
    /// thread): 1 TiB 0.34 against 0.23 ms, 2 TiB 0.65-0.89 against 0.46 ms,
    /// 4 TiB 0.91-1.08 against 1.13 ms, 16 TiB 2.7-3.6 against 4.5-5.7 ms.
    /// Waking the worker and waiting for its last piece costs tens to a
    /// hundred microseconds per phase there.
    public static let defaultParallelMinWords = 1 << 20
    /// 64 Ki entries: about 0.4 ms of locked AND-NOTs on one thread, well
    /// above the cost of handing half of them to a sleeping worker.
    public static let defaultParallelMinEntries = 1 << 16

    /// How long the pool's threads, and the caller waiting for them, watch
    /// for more work before they sleep (`WorkerPool`). The caller then sees
    /// the last piece of each phase finish without a wake-up, and a phase
    /// that follows the previous at once (the listing right after the
    /// clear; the clear right after the snapshot when nothing is persisted
    /// in between, as in `tidemark-bench scan`) finds the worker awake.
    /// Measured on the 2-vCPU VM of BENCHMARKS.md (`tidemark-bench scan`,
    /// 16 TiB 1% clustered, one process alternating the settings, 15 drains
    /// each): drain + list medians 3.35-3.75 ms with no watch, 3.03-3.58
    /// with 50-100 µs, 2.92-3.51 with 200 µs. Costs at most this much CPU
    /// per thread per phase of a split drain (bitmaps of 4 TiB and more),
    /// and none between drains.
    public static let poolSpinMicroseconds = 200

    /// The threads besides the caller's that split drains run on (one fewer
    /// than the online CPUs, at most `parts - 1`); nil with one CPU. They
    /// sleep on a condition variable between drains (after a watch of
    /// `poolSpinMicroseconds` that follows each phase).
    static let pool: WorkerPool? = {
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let extra = min(max(cpus, 1), parts) - 1
        return extra > 0 ? WorkerPool(threads: extra, spinMicroseconds: poolSpinMicroseconds) : nil
    }()

    /// Whether this machine splits drains at all (more than one CPU).
    public static var canSplit: Bool { pool != nil }

    /// `parallelMinWords` and `parallelMinEntries` decide when the work is
    /// split (tests lower them; `Int.max` keeps everything on the caller).
    public init(capacity: Int = 1024, parallelMinWords: Int = DrainWords.defaultParallelMinWords,
                parallelMinEntries: Int = DrainWords.defaultParallelMinEntries) {
        let c = max(capacity, 2 * Self.block)
        index = [UInt32](repeating: 0, count: c)
        bits = [UInt64](repeating: 0, count: c)
        self.parallelMinWords = max(parallelMinWords, 1)
        self.parallelMinEntries = max(parallelMinEntries, 1)
    }

    /// Where a split snapshot cuts a bitmap of `wordCount` words: `parts + 1`
    /// word indices from 0 to `wordCount`, inner ones multiples of 32.
    public static func splits(wordCount: Int) -> [Int] {
        (0...parts).map { r in r == parts ? wordCount : (wordCount / parts * r) & ~(block - 1) }
    }

    public var isEmpty: Bool { count == 0 }
    /// Entries the arrays hold without growing.
    public var capacity: Int { index.count }

    /// Number of set bits (chunks).
    public var popcount: UInt64 {
        bits.withUnsafeBufferPointer { b in
            var n: UInt64 = 0
            for i in 0..<count { n &+= UInt64(b[i].nonzeroBitCount) }
            return n
        }
    }

    /// Entry i (word index, bits).
    public subscript(i: Int) -> (wordIndex: UInt64, bits: UInt64) {
        precondition(i >= 0 && i < count, "DrainWords: entry \(i) of \(count)")
        return (UInt64(index[i]), bits[i])
    }

    /// The C scan itself (`tm_snapshot_nonzero`, resumable at `pos`, at most
    /// `cap` entries), for the tests of its contract.
    static func snapshotNonzero(_ words: UnsafePointer<UInt64>, _ n: Int, _ pos: inout Int,
                                _ idx: inout [UInt32], _ bits: inout [UInt64], _ cap: Int) -> Int {
        tm_snapshot_nonzero(words, n, &pos, &idx, &bits, cap)
    }

    /// Replaces the contents with every non-zero word of `words`, read once
    /// each and left unmodified. Bits set while the scan runs may or may not
    /// be in the snapshot; either way they stay in `words` until a clear.
    public mutating func snapshot(_ words: MappedWords) {
        // Indices are 32-bit: a BPF array map has fewer than 2^32 words
        // (Tracer caps a bitmap at UInt32.max / 8 words).
        precondition(words.count <= Int(UInt32.max) + 1, "DrainWords: \(words.count) words do not fit 32-bit indices")
        // A large snapshot (say after an outage) need not pin its memory forever.
        if capacity > 1 << 16 && count < capacity / 8 {
            let c = max(count * 2, 1024)
            index = [UInt32](repeating: 0, count: c)
            bits = [UInt64](repeating: 0, count: c)
        }
        count = 0
        lastSnapshotParts = 1
        if let pool = Self.pool, words.count >= parallelMinWords, words.count >= Self.parts * Self.block {
            snapshotInParts(words, pool)
            lastSnapshotParts = Self.parts
            return
        }
        var pos = 0
        let n = words.count
        while true {
            let have = count
            let got = index.withUnsafeMutableBufferPointer { ib in
                bits.withUnsafeMutableBufferPointer { bb in
                    tm_snapshot_nonzero(words.base, n, &pos,
                                        ib.baseAddress! + have, bb.baseAddress! + have, ib.count - have)
                }
            }
            count += got
            if pos >= n { break }
            // Out of room: double and resume where the scan stopped.
            let more = max(capacity, 2 * Self.block)
            index.append(contentsOf: repeatElement(0, count: more))
            bits.append(contentsOf: repeatElement(0, count: more))
        }
    }

    /// The split snapshot: part r scans words `splits[r] ..< splits[r + 1]`
    /// into region r (`capacity / parts` entries from `r * capacity / parts`).
    /// When a region is too small, every part is scanned again into larger
    /// ones (the scan does not modify the words, so a second look is just
    /// a later snapshot). Then the regions are moved together.
    private mutating func snapshotInParts(_ words: MappedWords, _ pool: WorkerPool) {
        let k = Self.parts
        let bounds = Self.splits(wordCount: words.count)
        var got = [Int](repeating: 0, count: k)
        var stop = [Int](repeating: 0, count: k)
        while true {
            let region = capacity / k
            if region >= 2 * Self.block {
                index.withUnsafeMutableBufferPointer { ib in
                    bits.withUnsafeMutableBufferPointer { bb in
                        got.withUnsafeMutableBufferPointer { g in
                            stop.withUnsafeMutableBufferPointer { st in
                                let ip = ib.baseAddress!, bp = bb.baseAddress!, gp = g.baseAddress!, sp = st.baseAddress!
                                pool.run(count: k) { r in
                                    var pos = bounds[r]
                                    gp[r] = tm_snapshot_nonzero(words.base, bounds[r + 1], &pos,
                                                                ip + r * region, bp + r * region, region)
                                    sp[r] = pos
                                }
                            }
                        }
                    }
                }
                if (0..<k).allSatisfy({ stop[$0] >= bounds[$0 + 1] }) { break }
            }
            // Room for every part at the density its scan saw so far.
            var need = 2 * Self.block
            for r in 0..<k where region >= 2 * Self.block {
                let len = bounds[r + 1] - bounds[r], seen = max(stop[r] - bounds[r], 1)
                let estimate = stop[r] >= bounds[r + 1] ? got[r] : Int((Double(got[r]) * Double(len) / Double(seen)).rounded(.up))
                need = max(need, estimate + 2 * Self.block)
            }
            let c = k * max(need, 2 * region)
            index = [UInt32](repeating: 0, count: c)
            bits = [UInt64](repeating: 0, count: c)
        }
        let region = capacity / k
        var total = got[0]
        index.withUnsafeMutableBufferPointer { ib in
            bits.withUnsafeMutableBufferPointer { bb in
                let ip = ib.baseAddress!, bp = bb.baseAddress!
                for r in 1..<k where got[r] > 0 {
                    if total != r * region {
                        (ip + total).update(from: ip + r * region, count: got[r])
                        (bp + total).update(from: bp + r * region, count: got[r])
                    }
                    total += got[r]
                }
            }
        }
        count = total
    }

    /// Clears exactly the snapshot's bits in `words` with an atomic AND-NOT
    /// per word: bits set since the snapshot survive. Call only once the
    /// snapshot is durable elsewhere. A large snapshot is cleared by several
    /// threads, each over its own entries (so its own words).
    public func clear(_ words: MappedWords) {
        guard count > 0 else { return }
        let n = count
        index.withUnsafeBufferPointer { ib in
            bits.withUnsafeBufferPointer { bb in
                // Indices came from a scan of a map with words.count words;
                // check the last (the largest) rather than trust the caller.
                precondition(Int(ib[n - 1]) < words.count, "DrainWords.clear: snapshot of a larger bitmap")
                let ip = ib.baseAddress!, bp = bb.baseAddress!
                if let pool = Self.pool, n >= parallelMinEntries {
                    let k = Self.parts
                    pool.run(count: k) { j in
                        let a = n * j / k, b = n * (j + 1) / k
                        tm_clear_snapshot(words.base, ip + a, bp + a, b - a)
                    }
                } else {
                    tm_clear_snapshot(words.base, ip, bp, n)
                }
            }
        }
    }

    /// Whether `forEachEntryRange` splits this snapshot.
    public var splitsEntries: Bool { Self.pool != nil && count >= parallelMinEntries }

    /// Runs `body(j, entries)` for `parts` consecutive entry ranges
    /// covering `0..<count`, each with the whole snapshot's buffers (so a
    /// range may look past its ends), on several threads when the snapshot
    /// has at least `parallelMinEntries` entries; otherwise once, on the
    /// caller, with `j == 0` and every entry. Returns the number of ranges.
    @discardableResult
    public func forEachEntryRange(_ body: @escaping (Int, Range<Int>, UnsafeBufferPointer<UInt32>, UnsafeBufferPointer<UInt64>) -> Void) -> Int {
        let n = count
        let k = splitsEntries ? Self.parts : 1
        index.withUnsafeBufferPointer { ib in
            bits.withUnsafeBufferPointer { bb in
                let ip = UnsafeBufferPointer(rebasing: ib[0..<n]), bp = UnsafeBufferPointer(rebasing: bb[0..<n])
                if k == 1 { body(0, 0..<n, ip, bp); return }
                Self.pool!.run(count: k) { j in body(j, n * j / k ..< n * (j + 1) / k, ip, bp) }
            }
        }
        return k
    }

    /// The valid entries as two buffers, for tight loops (listing extents,
    /// building the `.hrl` update).
    public func withEntries<R>(_ body: (UnsafeBufferPointer<UInt32>, UnsafeBufferPointer<UInt64>) throws -> R) rethrows -> R {
        try index.withUnsafeBufferPointer { ib in
            try bits.withUnsafeBufferPointer { bb in
                try body(UnsafeBufferPointer(rebasing: ib[0..<count]), UnsafeBufferPointer(rebasing: bb[0..<count]))
            }
        }
    }
}
