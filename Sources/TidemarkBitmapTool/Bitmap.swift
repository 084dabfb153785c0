import TidemarkTracking

/// A bitmap held in memory as words: word `i` holds chunks `64 i ..< 64 i + 64`, least
/// significant bit first (the kernel map's and the `.hrl` file's indexing). Bits at or
/// beyond `nrChunks` are always zero.
struct Bitmap: Equatable {
    private(set) var words: [UInt64]
    let nrChunks: UInt64

    static func wordCount(nrChunks: UInt64) -> Int { Int((nrChunks + 63) / 64) }

    /// Takes `words`, padding or cutting it to exactly the words that carry chunks and
    /// clearing bits past the end, so counts never include chunks the disk does not have.
    init(words: [UInt64], nrChunks: UInt64) {
        let count = Bitmap.wordCount(nrChunks: nrChunks)
        var w = Array(words.prefix(count))
        if w.count < count { w.append(contentsOf: repeatElement(0, count: count - w.count)) }
        let tailBits = Int(nrChunks % 64)
        if tailBits != 0 { w[count - 1] &= (UInt64(1) << UInt64(tailBits)) - 1 }
        self.words = w
        self.nrChunks = nrChunks
    }

    /// Every chunk set.
    static func full(nrChunks: UInt64) -> Bitmap {
        Bitmap(words: Array(repeating: ~0, count: wordCount(nrChunks: nrChunks)), nrChunks: nrChunks)
    }

    var popcount: UInt64 { words.withUnsafeBufferPointer { BitmapScan.popcount($0) } }

    /// The runs of set bits, in order, merged.
    var extents: [ChunkExtent] {
        var out: [ChunkExtent] = []
        words.withUnsafeBufferPointer { BitmapScan.extents($0, firstWordIndex: 0, nrChunks: nrChunks, into: &out) }
        return out
    }

    func isSet(_ chunk: UInt64) -> Bool {
        precondition(chunk < nrChunks)
        return words[Int(chunk / 64)] >> (chunk % 64) & 1 == 1
    }

    /// Set bits among chunks `[from, to)`.
    func count(from: UInt64, to: UInt64) -> UInt64 {
        let end = min(to, nrChunks)
        guard from < end else { return 0 }
        let firstWord = Int(from / 64), lastWord = Int((end - 1) / 64)
        let lowMask: UInt64 = ~0 << (from % 64)
        let highBits = end - UInt64(lastWord) * 64  // 1...64
        let highMask: UInt64 = highBits == 64 ? ~0 : (UInt64(1) << highBits) - 1
        if firstWord == lastWord { return UInt64((words[firstWord] & lowMask & highMask).nonzeroBitCount) }
        var n = UInt64((words[firstWord] & lowMask).nonzeroBitCount)
        for i in (firstWord + 1)..<lastWord { n += UInt64(words[i].nonzeroBitCount) }
        n += UInt64((words[lastWord] & highMask).nonzeroBitCount)
        return n
    }

    /// Word-wise combination of two bitmaps of the same length.
    func combined(with other: Bitmap, _ op: (UInt64, UInt64) -> UInt64) -> Bitmap {
        precondition(nrChunks == other.nrChunks, "combining bitmaps of \(nrChunks) and \(other.nrChunks) chunks")
        var out = words
        for i in out.indices { out[i] = op(words[i], other.words[i]) }
        return Bitmap(words: out, nrChunks: nrChunks)
    }
}

/// Dirty extents in bytes. The last chunk of a disk whose size is not a multiple of the
/// chunk size is partial, so an extent reaching it is clipped to the disk size.
struct ByteExtent: Equatable {
    var offset: UInt64
    var length: UInt64
    var firstChunk: UInt64
    var lastChunk: UInt64

    static func from(_ extents: [ChunkExtent], chunkSizeBytes: UInt32, diskSizeBytes: UInt64) -> [ByteExtent] {
        let chunk = UInt64(chunkSizeBytes)
        return BitmapScan.merge(extents).compactMap { e in
            let offset = e.firstChunk * chunk
            let end = min(e.endChunk * chunk, diskSizeBytes)
            guard end > offset else { return nil }
            return ByteExtent(offset: offset, length: end - offset, firstChunk: e.firstChunk, lastChunk: e.endChunk - 1)
        }
    }

    /// `offset_bytes length_bytes (chunks a-b)`.
    var line: String { "\(offset) \(length) (chunks \(firstChunk)-\(lastChunk))" }
}

extension Array where Element == ByteExtent {
    var totalBytes: UInt64 { reduce(0) { $0 + $1.length } }
}
