import TidemarkSystem

extension BitmapScan {
    /// The merged chunk runs of a sparse word list (sorted by word index):
    /// what a drain produced, listed without scanning the whole bitmap again.
    public static func extents(_ sparse: SparseWords, nrChunks: UInt64, into out: inout [ChunkExtent]) {
        var runStart: UInt64 = 0
        var runEnd: UInt64 = 0 // exclusive; runEnd == runStart means no open run
        for e in sparse.entries {
            var bits = e.bits
            let base = e.wordIndex &* 64
            while bits != 0 {
                let lo = UInt64(bits.trailingZeroBitCount)
                // Length of the run of ones starting at lo.
                let shifted = bits >> lo
                let len = shifted == ~0 ? 64 - lo : UInt64((~shifted).trailingZeroBitCount)
                let first = base + lo
                if runEnd > runStart && runEnd == first {
                    runEnd = first + len
                } else {
                    if runEnd > runStart { out.append(ChunkExtent(firstChunk: runStart, chunkCount: min(runEnd, nrChunks) - runStart)) }
                    runStart = first
                    runEnd = first + len
                }
                bits = lo + len >= 64 ? 0 : bits & ~((UInt64(1) << (lo + len)) - 1)
            }
        }
        if runEnd > runStart && runStart < nrChunks {
            out.append(ChunkExtent(firstChunk: runStart, chunkCount: min(runEnd, nrChunks) - runStart))
        }
    }
}

extension BitmapScan {
    /// The merged chunk runs of a drain snapshot: the same list as
    /// `extents(_: SparseWords, ...)` of the same words, without building
    /// tuples first. One pass over the flat arrays, one step per run; a
    /// large snapshot is listed in entry ranges on several threads, each
    /// into its own list, and the lists are concatenated with the runs that
    /// go on across a range boundary merged.
    public static func extents(_ drained: DrainWords, nrChunks: UInt64, into out: inout [ChunkExtent]) {
        guard drained.splitsEntries else {
            drained.withEntries { idx, bits in
                out.reserveCapacity(out.count + idx.count)
                listRuns(idx, bits, 0..<idx.count, nrChunks, &out)
            }
            return
        }
        let lists = UnsafeMutablePointer<[ChunkExtent]>.allocate(capacity: DrainWords.parts)
        lists.initialize(repeating: [], count: DrainWords.parts)
        defer { lists.deinitialize(count: DrainWords.parts); lists.deallocate() }
        let k = drained.forEachEntryRange { j, range, idx, bits in
            var list: [ChunkExtent] = []
            list.reserveCapacity(range.count + range.count / 2)
            listRuns(idx, bits, range, nrChunks, &list)
            lists[j] = list
        }
        let start = out.count
        out.reserveCapacity(start + (0..<k).reduce(0) { $0 + lists[$1].count })
        for j in 0..<k {
            var rest = lists[j][...]
            // A run cut by the range boundary: its two pieces touch.
            if out.count > start, let first = rest.first, out[out.count - 1].endChunk == first.firstChunk {
                out[out.count - 1].chunkCount += first.chunkCount
                rest = rest.dropFirst()
            }
            out.append(contentsOf: rest)
        }
    }

    /// The runs of entries `range`, merged within it, appended to `out`.
    @inline(__always)
    static func listRuns(_ idx: UnsafeBufferPointer<UInt32>, _ bits: UnsafeBufferPointer<UInt64>, _ range: Range<Int>,
                         _ nrChunks: UInt64, _ out: inout [ChunkExtent]) {
        // The open run [runStart, runEnd); empty at first. An empty run
        // at 0 may be "extended" by a run starting at chunk 0: same result.
        var runStart: UInt64 = 0
        var runEnd: UInt64 = 0
        for k in range {
            var w = bits[k]
            let base = UInt64(idx[k]) &<< 6
            while w != 0 {
                // Lowest run of ones: adding its lowest bit carries
                // through it; the carry's lowest bit is where it ends
                // (64 if it reaches the top: 0.trailingZeroBitCount == 64).
                let low = w & (0 &- w)
                let carry = w &+ low
                let first = base &+ UInt64(low.trailingZeroBitCount)
                let end = base &+ UInt64(carry.trailingZeroBitCount)
                w &= carry
                if runEnd == first {
                    runEnd = end
                } else {
                    if runEnd > runStart && runStart < nrChunks {
                        out.append(ChunkExtent(firstChunk: runStart, chunkCount: min(runEnd, nrChunks) - runStart))
                    }
                    runStart = first
                    runEnd = end
                }
            }
        }
        if runEnd > runStart && runStart < nrChunks {
            out.append(ChunkExtent(firstChunk: runStart, chunkCount: min(runEnd, nrChunks) - runStart))
        }
    }
}

extension SparseWords {
    /// The words of a drain snapshot, for `TrackingFile.persistSet`.
    public init(_ drained: DrainWords) {
        self.init()
        assign(drained)
    }

    /// Replaces the entries with the words of a drain snapshot, reusing the
    /// array's capacity (a fresh multi-megabyte array costs more in page
    /// faults than the copy itself).
    public mutating func assign(_ drained: DrainWords) {
        // Resize (keeping the storage; only a grown tail is zero-filled),
        // then overwrite in place: no per-element capacity or uniqueness checks.
        let n = drained.count
        if entries.count > n {
            entries.removeLast(entries.count - n)
        } else if entries.count < n {
            entries.append(contentsOf: repeatElement((wordIndex: 0, bits: 0), count: n - entries.count))
        }
        entries.withUnsafeMutableBufferPointer { e in
            drained.withEntries { idx, bits in
                for k in 0..<n { e[k] = (wordIndex: UInt64(idx[k]), bits: bits[k]) }
            }
        }
    }
}
