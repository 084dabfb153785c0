import TidemarkSurface
import TidemarkTracking

// What the `--json` commands of tidemark-bitmap print: one Codable model
// per command, written by `JSONOutput` (one line, keys sorted). The keys
// are documented in docs/bitmap-tool.md.

/// An extent as the JSON pair `[offset_bytes, length_bytes]`.
struct ExtentPair: Codable, Equatable {
    var offset: UInt64
    var length: UInt64

    init(_ e: ByteExtent) {
        offset = e.offset
        length = e.length
    }

    init(from decoder: Decoder) throws {
        var c = try decoder.unkeyedContainer()
        offset = try c.decode(UInt64.self)
        length = try c.decode(UInt64.self)
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.unkeyedContainer()
        try c.encode(offset)
        try c.encode(length)
    }
}

/// A value that is written as JSON `null` when absent (instead of the key
/// being left out), so a key of the report is always there.
struct Nullable<Value: Codable & Equatable>: Codable, Equatable {
    var value: Value?

    init(_ value: Value?) { self.value = value }

    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        value = c.decodeNil() ? nil : try c.decode(Value.self)
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        if let value { try c.encode(value) } else { try c.encodeNil() }
    }
}

/// `show --json`.
struct ShowReport: Codable, Equatable {
    struct Reason: Codable, Equatable {
        var code: UInt64
        var name: String
        var explanation: String
        var text: String
    }

    /// The live kernel map: where the file is tracked, how many chunks it
    /// holds; or why it was not combined (`mismatch`) or not read (`error`).
    struct Kernel: Codable, Equatable {
        var device: String?
        var chunks: UInt64?
        var undrainedChunks: UInt64?
        var overflow: Bool?
        var mismatch: String?
        var error: String?

        enum CodingKeys: String, CodingKey {
            case device, chunks, overflow, mismatch, error
            case undrainedChunks = "undrained_chunks"
        }
    }

    var path: String
    var formatVersion: UInt32
    var generation: UInt64
    var state: String
    var reason: Reason
    var diskID: String
    var diskIdentity: String
    var diskSize: UInt64
    var chunkSize: UInt64
    var nrChunks: UInt64
    var bitmapPages: UInt64
    var hrlDirtyChunks: UInt64
    var hrlDirtyBytes: UInt64
    var live: Bool
    /// null when the live map was not consulted (--hrl-only) or the file is not tracked on this host.
    var kernel: Nullable<Kernel>
    var overflow: Bool
    var dirtyChunks: UInt64
    var dirtyBytes: UInt64
    var dirtyPercent: Double
    var drainSeq: UInt64
    var clearSeq: UInt64
    var created: String
    var createdUnixNs: UInt64
    var stateChanged: String
    var stateChangedUnixNs: UInt64
    var bootID: String
    var sealNonce: String
    var targetID: String
    var fileUUID: String

    enum CodingKeys: String, CodingKey {
        case path, generation, state, reason, live, kernel, overflow, created
        case formatVersion = "format_version"
        case diskID = "disk_id"
        case diskIdentity = "disk_identity"
        case diskSize = "disk_size"
        case chunkSize = "chunk_size"
        case nrChunks = "nr_chunks"
        case bitmapPages = "bitmap_pages"
        case hrlDirtyChunks = "hrl_dirty_chunks"
        case hrlDirtyBytes = "hrl_dirty_bytes"
        case dirtyChunks = "dirty_chunks"
        case dirtyBytes = "dirty_bytes"
        case dirtyPercent = "dirty_percent"
        case drainSeq = "drain_seq"
        case clearSeq = "clear_seq"
        case createdUnixNs = "created_unix_ns"
        case stateChanged = "state_changed"
        case stateChangedUnixNs = "state_changed_unix_ns"
        case bootID = "boot_id"
        case sealNonce = "seal_nonce"
        case targetID = "target_id"
        case fileUUID = "file_uuid"
    }
}

/// `extents --json`.
struct ExtentsReport: Codable, Equatable {
    var path: String
    var chunkSize: UInt64
    var diskSize: UInt64
    var live: Bool
    var overflow: Bool
    var dirtyChunks: UInt64
    var dirtyBytes: UInt64
    var extents: [ExtentPair]

    enum CodingKeys: String, CodingKey {
        case path, live, overflow, extents
        case chunkSize = "chunk_size"
        case diskSize = "disk_size"
        case dirtyChunks = "dirty_chunks"
        case dirtyBytes = "dirty_bytes"
    }
}

/// `diff --json`.
struct DiffReport: Codable, Equatable {
    struct Section: Codable, Equatable {
        var chunks: UInt64
        var bytes: UInt64
        var extents: [ExtentPair]
    }

    var a: String
    var b: String
    var chunkSize: UInt64
    var diskSize: UInt64
    var sameDiskIdentity: Bool
    var onlyA: Section
    var onlyB: Section
    var both: Section

    enum CodingKeys: String, CodingKey {
        case a, b, both
        case chunkSize = "chunk_size"
        case diskSize = "disk_size"
        case sameDiskIdentity = "same_disk_identity"
        case onlyA = "only_a"
        case onlyB = "only_b"
    }
}

/// `verify --json`: `ok` when the file would open; the header's geometry
/// when one slot was valid (null otherwise); every problem and note.
struct VerifyReport: Codable, Equatable {
    var path: String
    var ok: Bool
    /// false when the file is not a Tidemark tracking file at all.
    var trackingFile: Bool
    var formatVersion: Nullable<UInt32>
    var state: Nullable<String>
    var nrChunks: Nullable<UInt64>
    var chunkSize: Nullable<UInt64>
    var bitmapPages: Nullable<UInt64>
    var problems: [String]
    var notes: [String]

    enum CodingKeys: String, CodingKey {
        case path, ok, state, problems, notes
        case trackingFile = "tracking_file"
        case formatVersion = "format_version"
        case nrChunks = "nr_chunks"
        case chunkSize = "chunk_size"
        case bitmapPages = "bitmap_pages"
    }

    init(path: String, report: HRLVerifyReport, trackingFile: Bool) {
        self.path = path
        ok = report.problems.isEmpty && report.header != nil
        self.trackingFile = trackingFile
        let h = report.header
        formatVersion = Nullable(h?.formatVersion)
        state = Nullable(h.map { $0.state.description })
        nrChunks = Nullable(h?.nrChunks)
        chunkSize = Nullable(h.map { UInt64($0.chunkSizeBytes) })
        bitmapPages = Nullable(h?.bitmapPages)
        problems = report.problems
        notes = report.notes
    }
}
