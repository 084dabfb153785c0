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
    /// tuples first. One pass over the flat arrays, one step per run.
    public static func extents(_ drained: DrainWords, nrChunks: UInt64, into out: inout [ChunkExtent]) {
        drained.withEntries { idx, bits in
            let n = idx.count
            guard n > 0 else { return }
            out.reserveCapacity(out.count + n)
            // The open run [runStart, runEnd); empty at first. An empty run
            // at 0 may be "extended" by a run starting at chunk 0: same result.
            var runStart: UInt64 = 0
            var runEnd: UInt64 = 0
            for k in 0..<n {
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
