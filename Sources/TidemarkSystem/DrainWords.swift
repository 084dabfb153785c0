import CTidemark

/// A snapshot of the non-zero words of a kernel bitmap: word indices and
/// values in two flat arrays, in increasing index order. The drain takes it
/// without modifying the words, persists it, then clears exactly its bits
/// (docs/tracer.md, "Draining"). Keep one and reuse it: the arrays keep
/// their capacity across snapshots, so a steady drain does not allocate.
///
/// The scan and the clear are C (`tm_drain.h`): vector extraction of the
/// non-zero words, and prefetch-for-write ahead of the locked AND-NOTs.
public struct DrainWords: Sendable {
    /// Word indices; valid in `0..<count` (the rest is spare capacity).
    public private(set) var index: [UInt32]
    /// Word values as read; valid in `0..<count`, none zero.
    public private(set) var bits: [UInt64]
    /// Number of non-zero words in the snapshot.
    public private(set) var count: Int = 0

    /// The C scan stops when fewer than this many entries are free.
    static let block = 32

    public init(capacity: Int = 1024) {
        let c = max(capacity, 2 * Self.block)
        index = [UInt32](repeating: 0, count: c)
        bits = [UInt64](repeating: 0, count: c)
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

    /// Clears exactly the snapshot's bits in `words` with an atomic AND-NOT
    /// per word: bits set since the snapshot survive. Call only once the
    /// snapshot is durable elsewhere.
    public func clear(_ words: MappedWords) {
        guard count > 0 else { return }
        index.withUnsafeBufferPointer { ib in
            bits.withUnsafeBufferPointer { bb in
                // Indices came from a scan of a map with words.count words;
                // check the last (the largest) rather than trust the caller.
                precondition(Int(ib[count - 1]) < words.count, "DrainWords.clear: snapshot of a larger bitmap")
                tm_clear_snapshot(words.base, ib.baseAddress!, bb.baseAddress!, count)
            }
        }
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
