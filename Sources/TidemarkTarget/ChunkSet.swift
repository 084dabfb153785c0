/// A set of chunks of one disk, one bit per chunk: the "covered" set of the
/// reverse passes in prune and materialize. Memory is `size / chunk / 8`
/// bytes (2 MiB for 1 TiB at 64 KiB chunks), whatever the number of segments.
struct ChunkSet {
    let chunkSize: UInt64
    let chunkCount: UInt64
    private var words: [UInt64]

    init(sizeBytes: UInt64, chunkSizeBytes: UInt32) {
        chunkSize = UInt64(chunkSizeBytes)
        chunkCount = (sizeBytes + chunkSize - 1) / chunkSize
        words = [UInt64](repeating: 0, count: Int((chunkCount + 63) / 64))
    }

    /// The chunk indices an extent touches (extents are chunk-aligned, so it
    /// covers them whole; the last chunk of the disk may be short).
    func chunks(of e: TargetExtent) -> Range<UInt64> {
        e.offset / chunkSize ..< (e.end + chunkSize - 1) / chunkSize
    }

    func contains(_ c: UInt64) -> Bool { words[Int(c >> 6)] >> (c & 63) & 1 == 1 }

    /// True when every chunk of `r` is in the set.
    func containsAll(_ r: Range<UInt64>) -> Bool {
        var c = r.lowerBound
        while c < r.upperBound {
            if c & 63 == 0, r.upperBound - c >= 64 {
                if words[Int(c >> 6)] != ~0 { return false }
                c += 64
            } else {
                if !contains(c) { return false }
                c += 1
            }
        }
        return true
    }

    mutating func insert(_ r: Range<UInt64>) {
        var c = r.lowerBound
        while c < r.upperBound {
            if c & 63 == 0, r.upperBound - c >= 64 {
                words[Int(c >> 6)] = ~0
                c += 64
            } else {
                words[Int(c >> 6)] |= 1 << (c & 63)
                c += 1
            }
        }
    }

    /// The maximal runs of `r` not in the set.
    func missingRuns(_ r: Range<UInt64>) -> [Range<UInt64>] {
        var runs = [Range<UInt64>]()
        var c = r.lowerBound
        var start: UInt64? = nil
        while c < r.upperBound {
            if c & 63 == 0, r.upperBound - c >= 64, words[Int(c >> 6)] == 0 || words[Int(c >> 6)] == ~0 {
                if words[Int(c >> 6)] == 0 {
                    if start == nil { start = c }
                } else if let s = start {
                    runs.append(s..<c)
                    start = nil
                }
                c += 64
                continue
            }
            if contains(c) {
                if let s = start { runs.append(s..<c); start = nil }
            } else if start == nil {
                start = c
            }
            c += 1
        }
        if let s = start { runs.append(s..<r.upperBound) }
        return runs
    }

    /// The byte range of a run of chunks, clipped to the disk size.
    func bytes(_ r: Range<UInt64>, diskSize: UInt64) -> Range<UInt64> {
        r.lowerBound * chunkSize ..< min(r.upperBound * chunkSize, diskSize)
    }
}
