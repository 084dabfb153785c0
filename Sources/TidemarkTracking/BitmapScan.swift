/// Fast scanning helpers on raw word arrays, used by the drain loop, the
/// benchmark and the debug tool. Word `i` of a buffer holds chunks
/// `(firstWordIndex + i) * 64 ..< + 64`, least significant bit first — the
/// kernel map's and the `.hrl` file's indexing.
public enum BitmapScan {
    /// Appends the runs of set bits in `words` to `into`, as extents in
    /// increasing order. A run that starts right where `into.last` ends is
    /// merged into it, so scanning consecutive buffers (pages) into the same
    /// array yields runs merged across buffer boundaries. Bits at or beyond
    /// `nrChunks` are ignored. Zero words are skipped eight at a time, since
    /// a mostly-clean map is the common case.
    public static func extents(_ words: UnsafeBufferPointer<UInt64>, firstWordIndex: UInt64 = 0, nrChunks: UInt64,
                               into out: inout [ChunkExtent]) {
        let n = words.count
        var i = 0
        while i < n {
            if i + 8 <= n {
                let any = words[i] | words[i + 1] | words[i + 2] | words[i + 3]
                    | words[i + 4] | words[i + 5] | words[i + 6] | words[i + 7]
                if any == 0 { i += 8; continue }
            }
            let blockEnd = min(i + 8, n)
            while i < blockEnd {
                let w = words[i]
                if w != 0 {
                    let base = (firstWordIndex + UInt64(i)) * 64
                    if base >= nrChunks { return }
                    if w == ~0 {
                        addRun(&out, base, 64, nrChunks)
                    } else {
                        addRuns(of: w, base: base, nrChunks: nrChunks, &out)
                    }
                }
                i += 1
            }
        }
    }

    @inline(__always)
    private static func addRuns(of word: UInt64, base: UInt64, nrChunks: UInt64, _ out: inout [ChunkExtent]) {
        var w = word
        while w != 0 {
            let start = w.trailingZeroBitCount
            // Ones starting at bit 0 of (w >> start) are the run; the first
            // zero above them ends it (the top `start` bits of ~x are ones, so
            // the count never passes 64 - start).
            let length = (~(w >> UInt64(start))).trailingZeroBitCount
            addRun(&out, base + UInt64(start), UInt64(length), nrChunks)
            let end = start + length
            if end >= 64 { break }
            w &= ~((UInt64(1) << UInt64(end)) &- 1)
        }
    }

    @inline(__always)
    private static func addRun(_ out: inout [ChunkExtent], _ first: UInt64, _ count: UInt64, _ nrChunks: UInt64) {
        guard first < nrChunks else { return }
        let c = min(count, nrChunks - first)
        if let last = out.last, last.firstChunk + last.chunkCount == first {
            out[out.count - 1].chunkCount += c
        } else {
            out.append(ChunkExtent(firstChunk: first, chunkCount: c))
        }
    }

    /// Number of set bits.
    public static func popcount(_ words: UnsafeBufferPointer<UInt64>) -> UInt64 {
        var n: UInt64 = 0
        for w in words { n &+= UInt64(w.nonzeroBitCount) }
        return n
    }

    /// Sorts extents and merges the ones that overlap or touch; empty
    /// extents are dropped.
    public static func merge(_ a: [ChunkExtent]) -> [ChunkExtent] {
        let sorted = a.filter { $0.chunkCount > 0 }.sorted { $0.firstChunk < $1.firstChunk }
        var out: [ChunkExtent] = []
        out.reserveCapacity(sorted.count)
        for e in sorted {
            if let last = out.last, e.firstChunk <= last.endChunk {
                out[out.count - 1].chunkCount = max(last.endChunk, e.endChunk) - last.firstChunk
            } else {
                out.append(e)
            }
        }
        return out
    }
}
