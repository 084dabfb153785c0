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
