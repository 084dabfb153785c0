// Value types shared by the `.hrl` file, the drain loop and the tools.
// The on-disk encoding of each is specified in docs/hrl-format.md.

/// Whether the `.hrl` file's bits can be trusted to describe every change
/// since the last committed recovery point.
public enum TrackingState: UInt32, Sendable, CustomStringConvertible, CaseIterable {
    /// Not tracked and nothing pending: the target equals the disk as of the
    /// last commit, and no tracer is expected to be attached.
    case clean = 0
    /// The tracer is attached and every drained bit is in the file: the bits
    /// are the complete set of chunks still to ship.
    case tracking = 1
    /// The bits are incomplete (see the reason): only a full scan resync can
    /// bring the target back in step.
    case resyncRequired = 2

    public var description: String {
        switch self {
        case .clean: "clean"
        case .tracking: "tracking"
        case .resyncRequired: "resync-required"
        }
    }
}

/// Why tracking was lost. Recorded with `resync-required` so an operator can
/// see what happened; the numeric values are part of the file format.
public enum ResyncReason: UInt32, Sendable, CustomStringConvertible, CaseIterable {
    case none = 0
    case neverSynchronized = 1
    case trackingFileMissing = 2
    case trackingFileCorrupt = 3
    case diskSizeChanged = 4
    case diskIdentityChanged = 5
    case chunkSizeChanged = 6
    case uncleanShutdown = 7
    case tracerDetached = 8
    case operatorRequest = 9
    case targetChanged = 10
    case tracerOverflow = 11
    /// Format version 2.
    case lateAttach = 12

    public var description: String {
        switch self {
        case .none: "none"
        case .neverSynchronized: "never-synchronized"
        case .trackingFileMissing: "tracking-file-missing"
        case .trackingFileCorrupt: "tracking-file-corrupt"
        case .diskSizeChanged: "disk-size-changed"
        case .diskIdentityChanged: "disk-identity-changed"
        case .chunkSizeChanged: "chunk-size-changed"
        case .uncleanShutdown: "unclean-shutdown"
        case .tracerDetached: "tracer-detached"
        case .operatorRequest: "operator-request"
        case .targetChanged: "target-changed"
        case .tracerOverflow: "tracer-overflow"
        case .lateAttach: "late-attach"
        }
    }

    /// One sentence for operators (the debug tool prints it).
    public var explanation: String {
        switch self {
        case .none: "no resync is pending"
        case .neverSynchronized: "the disk has never been copied to the target"
        case .trackingFileMissing: "the tracking file was missing, so changes since the last commit are unknown"
        case .trackingFileCorrupt: "the tracking file was torn or corrupt and cannot be trusted"
        case .diskSizeChanged: "the disk's size changed, so chunk numbers no longer line up"
        case .diskIdentityChanged: "a different disk now answers at this path"
        case .chunkSizeChanged: "the configured chunk size changed, so the bits no longer line up"
        case .uncleanShutdown: "the host went down while tracking; writes during the outage were not seen"
        case .tracerDetached: "the tracer was detached while writes could go on"
        case .operatorRequest: "an operator asked for a resync"
        case .targetChanged: "the replication target changed; the new target holds none of the old state"
        case .tracerOverflow: "the tracer could not record a write bit by bit"
        case .lateAttach: "after a reboot the tracer was attached only once a filesystem on the disk was already mounted read-write; earlier writes of that boot were not seen"
        }
    }
}

/// What identifies the disk a `.hrl` file tracks. A file is only valid for
/// the disk it was created for: a different size or identity means its
/// chunk numbers describe some other disk.
public struct DiskIdentity: Sendable, Equatable {
    /// Short stable name, e.g. the kernel name or a configured id ("sda").
    public var diskID: String
    /// Serial number, WWN or UUID — what says "the same physical disk".
    public var identity: String
    public var sizeBytes: UInt64

    public init(diskID: String, identity: String, sizeBytes: UInt64) {
        self.diskID = diskID
        self.identity = identity
        self.sizeBytes = sizeBytes
    }
}

/// A run of consecutive chunks.
public struct ChunkExtent: Sendable, Equatable, CustomStringConvertible {
    public var firstChunk: UInt64
    public var chunkCount: UInt64

    public init(firstChunk: UInt64, chunkCount: UInt64) {
        self.firstChunk = firstChunk
        self.chunkCount = chunkCount
    }

    /// One past the last chunk.
    public var endChunk: UInt64 { firstChunk + chunkCount }

    public var description: String { "[\(firstChunk), \(endChunk))" }
}

/// A sparse set of bitmap words: what one drain moved out of the kernel map,
/// or what one commit allows to clear. Sorted by `wordIndex`, unique, and no
/// entry has `bits == 0`. `wordIndex` is the GLOBAL word index (chunk / 64),
/// the same indexing as the kernel map, so drained words map 1:1.
public struct SparseWords: Sendable, Equatable, CustomStringConvertible {
    /// Kept as labelled tuples so callers can write `e.wordIndex` / `e.bits`
    /// and destructure; equality is therefore written by hand below.
    public var entries: [(wordIndex: UInt64, bits: UInt64)]

    public init() { entries = [] }

    /// The words holding the given chunks (any order, duplicates allowed).
    public init<S: Sequence>(chunks: S) where S.Element == UInt64 {
        entries = []
        for c in chunks.sorted() { insertAtEnd(wordIndex: c / 64, bits: UInt64(1) << (c % 64)) }
    }

    /// Adds bits to the word `wordIndex`, which must be at or after the last
    /// one appended (the same index merges). Zero bits are ignored so the
    /// "no zero entries" rule holds without callers filtering.
    public mutating func append(wordIndex: UInt64, bits: UInt64) {
        precondition(entries.last.map { $0.wordIndex <= wordIndex } ?? true,
                     "SparseWords.append: word \(wordIndex) after word \(entries.last!.wordIndex); entries must be increasing")
        insertAtEnd(wordIndex: wordIndex, bits: bits)
    }

    /// Adds the chunks [first, first + count), in increasing order like `append`.
    public mutating func appendChunks(first: UInt64, count: UInt64) {
        var c = first
        let end = first + count
        while c < end {
            let bit = c % 64
            let n = min(64 - bit, end - c)
            let mask: UInt64 = n == 64 ? ~0 : ((UInt64(1) << n) - 1) << bit
            append(wordIndex: c / 64, bits: mask)
            c += n
        }
    }

    private mutating func insertAtEnd(wordIndex: UInt64, bits: UInt64) {
        guard bits != 0 else { return }
        if let last = entries.last, last.wordIndex == wordIndex {
            entries[entries.count - 1].bits |= bits
        } else {
            entries.append((wordIndex: wordIndex, bits: bits))
        }
    }

    public var isEmpty: Bool { entries.isEmpty }
    /// Number of words (entries), not chunks; see `popcount` for chunks.
    public var count: Int { entries.count }
    /// Number of chunks (set bits).
    public var popcount: UInt64 {
        var n: UInt64 = 0
        for e in entries { n += UInt64(e.bits.nonzeroBitCount) }
        return n
    }

    /// Every chunk in increasing order (tests and tools; allocates).
    public var chunks: [UInt64] {
        var out: [UInt64] = []
        out.reserveCapacity(Int(popcount))
        for e in entries {
            var b = e.bits
            while b != 0 {
                out.append(e.wordIndex * 64 + UInt64(b.trailingZeroBitCount))
                b &= b - 1
            }
        }
        return out
    }

    public static func == (a: SparseWords, b: SparseWords) -> Bool {
        guard a.entries.count == b.entries.count else { return false }
        for (x, y) in zip(a.entries, b.entries) where x.wordIndex != y.wordIndex || x.bits != y.bits {
            return false
        }
        return true
    }

    public var description: String {
        let shown = entries.prefix(8).map { "\($0.wordIndex):0x\(String($0.bits, radix: 16))" }
        return "SparseWords(\(entries.count) words, \(popcount) chunks\(shown.isEmpty ? "" : ": ")\(shown.joined(separator: " "))\(entries.count > 8 ? " …" : ""))"
    }
}

/// The `.hrl` file cannot be used. Every kind means the same thing to the
/// agent — the bits cannot be trusted, so a resync is required — but the
/// kind and detail tell an operator what went wrong.
public struct TrackingFileError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable, CustomStringConvertible {
        /// No `.hrl` magic: some other file, or an empty one.
        case notATrackingFile
        /// A `.hrl` file from a newer (or unknown) format version.
        case unsupportedVersion
        /// Torn, truncated, extended or otherwise damaged beyond what the
        /// A/B slots absorb.
        case corrupt
        /// A valid file, but for another disk (size, identity or chunk size).
        case wrongIdentity

        public var description: String {
            switch self {
            case .notATrackingFile: "not a tracking file"
            case .unsupportedVersion: "unsupported version"
            case .corrupt: "corrupt"
            case .wrongIdentity: "wrong identity"
            }
        }
    }

    public var kind: Kind
    public var path: String
    /// What is wrong, naming the page or field ("bitmap page 17: ...").
    public var detail: String

    public init(_ kind: Kind, path: String, detail: String) {
        self.kind = kind
        self.path = path
        self.detail = detail
    }

    /// What the kind means for the operator.
    var consequence: String {
        switch kind {
        case .notATrackingFile, .corrupt:
            "the file cannot be trusted — tracking must be rebuilt by a resync"
        case .unsupportedVersion:
            "this build cannot read it — upgrade tidemark, or remove the file and resync"
        case .wrongIdentity:
            "the file describes another disk — tracking must be rebuilt by a resync"
        }
    }

    public var description: String { "\(path): \(kind): \(detail); \(consequence)" }
}
