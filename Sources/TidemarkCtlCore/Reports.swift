import TidemarkSurface
import TidemarkSystem
import TidemarkTarget

/// What `tidemarkctl recover --json` prints: the point recovered, where to,
/// how many bytes, and the two findings the text prints as a warning and a
/// note (both empty on a target written by this version).
public struct RecoverReport: Codable, Sendable, Equatable {
    /// The point recovered.
    public var point: Point
    /// The disk's size: the bytes the image covers.
    public var bytes: UInt64
    /// The file or block device written.
    public var to: String
    /// Sequences whose headers predate header MACs and were accepted
    /// unproven (`--allow-unproven-headers`), ascending.
    public var unprovenSequences: [UInt64]
    /// Epoch starts below which the owners of sequences were taken from the
    /// stored headers (the agent had lost its record of earlier epochs).
    public var lineageInferredBelow: [UInt64]

    /// The point, with the fields of a point in `points list --json`.
    public struct Point: Codable, Sendable, Equatable {
        public var id: String
        public var diskID: String
        /// "crash-consistent", "app-consistent" or "unverified".
        public var pointClass: String
        public var timeUnixMs: Int64
        /// `timeUnixMs` as ISO 8601 UTC with milliseconds.
        public var time: String
        public var sequence: UInt64

        init(_ p: PointRecord) {
            id = p.id
            diskID = p.diskID
            pointClass = p.pointClass
            timeUnixMs = p.timeUnixMs
            time = Format.isoTime(unixMs: p.timeUnixMs)
            sequence = p.sequence
        }

        enum CodingKeys: String, CodingKey {
            case id
            case diskID = "disk_id"
            case pointClass = "class"
            case timeUnixMs = "time_unix_ms"
            case time
            case sequence
        }
    }

    public init(_ r: RecoverCommand.Result) {
        point = Point(r.point)
        bytes = r.bytes
        to = r.path
        unprovenSequences = r.unprovenSequences.sorted()
        lineageInferredBelow = r.lineageInferredBelow
    }

    enum CodingKeys: String, CodingKey {
        case point
        case bytes
        case to
        case unprovenSequences = "unproven_sequences"
        case lineageInferredBelow = "lineage_inferred_below"
    }
}

/// What `tidemarkctl keys generate-replication-key --json` prints: the new
/// key's id and file, never the key.
public struct GeneratedKeyReport: Codable, Sendable, Equatable {
    /// The key id, 16 hex digits, as segment headers and logs name it.
    public var keyID: String
    public var path: String

    public init(keyID: String, path: String) {
        self.keyID = keyID
        self.path = path
    }

    enum CodingKeys: String, CodingKey {
        case keyID = "key_id"
        case path
    }
}

extension RecoverCommand.Result {
    /// What tidemarkctl prints: the summary, or with `json` one `RecoverReport` line.
    public func output(json: Bool) throws -> String {
        json ? try JSONOutput.line(RecoverReport(self)) : summary + "\n"
    }
}
