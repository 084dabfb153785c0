/// A set of chunk indexes as a flat bitmap (1 bit per chunk: 2 MiB per TiB
/// at 64 KiB chunks), with a rotating cursor so a long backlog is read in
/// disk order and a hot region cannot starve the rest.
struct ChunkSet {
    private(set) var words: [UInt64]
    private(set) var count: UInt64 = 0
    let chunks: UInt64
    private var cursor: UInt64 = 0

    init(chunks: UInt64) {
        self.chunks = chunks
        words = [UInt64](repeating: 0, count: Int((chunks + 63) / 64))
    }

    var isEmpty: Bool { count == 0 }

    func contains(_ chunk: UInt64) -> Bool {
        words[Int(chunk >> 6)] & (1 << (chunk & 63)) != 0
    }

    mutating func insert(word: UInt64, bits: UInt64) {
        guard word < UInt64(words.count) else { return }
        var b = bits
        if word == UInt64(words.count - 1), chunks % 64 != 0 { b &= (1 << (chunks % 64)) - 1 }
        let added = b & ~words[Int(word)]
        words[Int(word)] |= added
        count += UInt64(added.nonzeroBitCount)
    }

    mutating func insert(first: UInt64, count n: UInt64) {
        var c = first
        let end = min(first + n, chunks)
        while c < end {
            let w = c >> 6, bit = c & 63
            let take = min(64 - bit, end - c)
            let mask: UInt64 = take == 64 ? ~0 : ((1 << take) - 1) << bit
            insert(word: w, bits: mask)
            c += take
        }
    }

    mutating func insertAll() { insert(first: 0, count: chunks) }

    /// Takes the next run of set chunks at or after the cursor (wrapping),
    /// at most `maxChunks` long, and removes it from the set.
    mutating func takeRun(maxChunks: UInt64) -> (first: UInt64, count: UInt64)? {
        guard count > 0 else { return nil }
        var w = Int(cursor >> 6)
        var scanned = 0
        // Mask off bits below the cursor in the first word; they are found after wrapping.
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
        while end < chunks && end - first < maxChunks && contains(end) { end += 1 }
        remove(first: first, count: end - first)
        cursor = end >= chunks ? 0 : end
        return (first, end - first)
    }

    mutating func remove(first: UInt64, count n: UInt64) {
        var c = first
        let end = first + n
        while c < end {
            let w = c >> 6, bit = c & 63
            let take = min(64 - bit, end - c)
            let mask: UInt64 = take == 64 ? ~0 : ((1 << take) - 1) << bit
            count -= UInt64((words[Int(w)] & mask).nonzeroBitCount)
            words[Int(w)] &= ~mask
            c += take
        }
    }
}
