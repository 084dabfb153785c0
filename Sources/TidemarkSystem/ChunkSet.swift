/// A set of chunk indexes of one disk, `0..<chunkCount`, as a flat bitmap:
/// the agent's backlog of chunks to read or scan, and the target's "covered"
/// set of the reverse passes in prune and materialize. The one
/// representation of a set of chunks or runs of chunks in Tidemark.
///
/// Invariants: no bit at or beyond `chunkCount` is set; `count` is the
/// number of set bits; `cursor < max(chunkCount, 1)`.
/// Memory: `chunkCount / 8` bytes (2 MiB per TiB at 64 KiB chunks),
/// allocated once at init, whatever is inserted. A value type owned by one
/// thread (the replicator's loop, a prune or materialize pass).
///
/// Runs are taken from a rotating cursor, so a long backlog is read in disk
/// order and a hot region cannot starve the rest.
public struct ChunkSet: Sendable, Equatable {
    public let chunkCount: UInt64
    /// The disk's chunk size when the set was made from the disk's geometry
    /// (`init(sizeBytes:chunkSizeBytes:)`), for mapping bytes to chunks and
    /// back; 0 when made from a count of chunks.
    public let chunkSizeBytes: UInt64
    /// The number of chunks in the set.
    public private(set) var count: UInt64 = 0
    private var words: [UInt64]
    private var cursor: UInt64 = 0

    public init(chunks: UInt64) {
        chunkCount = chunks
        chunkSizeBytes = 0
        words = [UInt64](repeating: 0, count: Int((chunks + 63) / 64))
    }

    /// The empty set of the chunks of a disk of `sizeBytes`; the last chunk
    /// may be short.
    public init(sizeBytes: UInt64, chunkSizeBytes: UInt32) {
        precondition(chunkSizeBytes > 0, "ChunkSet: a chunk size of 0 bytes")
        let size = UInt64(chunkSizeBytes)
        self.init(chunks: sizeBytes / size + (sizeBytes % size == 0 ? 0 : 1), chunkSizeBytes: size)
    }

    private init(chunks: UInt64, chunkSizeBytes: UInt64) {
        chunkCount = chunks
        self.chunkSizeBytes = chunkSizeBytes
        words = [UInt64](repeating: 0, count: Int((chunks + 63) / 64))
    }

    public var isEmpty: Bool { count == 0 }

    public func contains(_ chunk: UInt64) -> Bool {
        chunk < chunkCount && words[Int(chunk >> 6)] & (1 << (chunk & 63)) != 0
    }

    /// True when every chunk of `r` is in the set (an empty range is).
    public func containsAll(_ r: Range<UInt64>) -> Bool {
        guard r.upperBound <= chunkCount else { return r.isEmpty }
        var c = r.lowerBound
        while c < r.upperBound {
            let w = c >> 6, bit = c & 63
            let take = min(64 - bit, r.upperBound - c)
            let mask: UInt64 = take == 64 ? ~0 : ((1 << take) - 1) << bit
            if words[Int(w)] & mask != mask { return false }
            c += take
        }
        return true
    }

    /// Adds the chunks set in `bits` of bitmap word `word` (chunks
    /// `64 * word ..< 64 * word + 64`); bits beyond the disk are ignored.
    public mutating func insert(word: UInt64, bits: UInt64) {
        guard word < UInt64(words.count) else { return }
        var b = bits
        if word == UInt64(words.count - 1), chunkCount % 64 != 0 { b &= (1 << (chunkCount % 64)) - 1 }
        let added = b & ~words[Int(word)]
        words[Int(word)] |= added
        count += UInt64(added.nonzeroBitCount)
    }

    /// Adds chunks `first ..< first + n`, clipped to the disk.
    public mutating func insert(first: UInt64, count n: UInt64) {
        var c = first
        let end = first > chunkCount ? first : min(first + min(n, chunkCount - first), chunkCount)
        while c < end {
            let w = c >> 6, bit = c & 63
            let take = min(64 - bit, end - c)
            let mask: UInt64 = take == 64 ? ~0 : ((1 << take) - 1) << bit
            insert(word: w, bits: mask)
            c += take
        }
    }

    /// Adds the chunks of `r`, clipped to the disk.
    public mutating func insert(_ r: Range<UInt64>) {
        insert(first: r.lowerBound, count: UInt64(r.count))
    }

    public mutating func insertAll() { insert(first: 0, count: chunkCount) }

    /// Removes chunks `first ..< first + n`, clipped to the disk.
    public mutating func remove(first: UInt64, count n: UInt64) {
        var c = first
        let end = first > chunkCount ? first : min(first + min(n, chunkCount - first), chunkCount)
        while c < end {
            let w = c >> 6, bit = c & 63
            let take = min(64 - bit, end - c)
            let mask: UInt64 = take == 64 ? ~0 : ((1 << take) - 1) << bit
            count -= UInt64((words[Int(w)] & mask).nonzeroBitCount)
            words[Int(w)] &= ~mask
            c += take
        }
    }

    /// Takes the next run of set chunks at or after the cursor (wrapping),
    /// at most `maxChunks` (> 0) long, and removes it from the set.
    public mutating func takeRun(maxChunks: UInt64) -> (first: UInt64, count: UInt64)? {
        precondition(maxChunks > 0, "ChunkSet.takeRun: maxChunks must be positive")
        guard count > 0 else { return nil }
        var w = Int(cursor >> 6)
        var scanned = 0
        // Bits below the cursor in the first word are found after wrapping.
        var bits = words[w] & (~0 << (cursor & 63))
        while bits == 0 {
            w += 1
            scanned += 1
            if w == words.count { w = 0 }
            bits = words[w]
            if scanned > words.count { return nil }
        }
        let first = UInt64(w) * 64 + UInt64(bits.trailingZeroBitCount)
        var end = first
        while end < chunkCount && end - first < maxChunks && contains(end) { end += 1 }
        remove(first: first, count: end - first)
        cursor = end >= chunkCount ? 0 : end
        return (first, end - first)
    }

    /// The maximal runs of `r` (within the disk) not in the set, in order.
    public func missingRuns(_ r: Range<UInt64>) -> [Range<UInt64>] {
        var runs = [Range<UInt64>]()
        let upper = min(r.upperBound, chunkCount)
        var c = r.lowerBound
        var start: UInt64? = nil
        while c < upper {
            let word = words[Int(c >> 6)]
            if c & 63 == 0, upper - c >= 64, word == 0 || word == ~0 {
                if word == 0 {
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
        if let s = start { runs.append(s..<upper) }
        return runs
    }

    // MARK: Bytes (a set made from the disk's geometry)

    /// The chunks a byte range touches, whole (a chunk-aligned extent covers
    /// them exactly; the last chunk of the disk may be short).
    public func chunks(ofBytes b: Range<UInt64>) -> Range<UInt64> {
        precondition(chunkSizeBytes > 0, "ChunkSet: made without a chunk size")
        // Rounded up without `upperBound + chunkSizeBytes - 1`, which
        // overflows for an end near 2^64.
        let upper = b.upperBound / chunkSizeBytes + (b.upperBound % chunkSizeBytes == 0 ? 0 : 1)
        return b.lowerBound / chunkSizeBytes ..< upper
    }

    /// The byte range of a run of chunks, clipped to the disk size.
    public func bytes(_ r: Range<UInt64>, diskSize: UInt64) -> Range<UInt64> {
        precondition(chunkSizeBytes > 0, "ChunkSet: made without a chunk size")
        return r.lowerBound * chunkSizeBytes ..< min(r.upperBound * chunkSizeBytes, diskSize)
    }
}
