import Foundation

/// The agent's control socket protocol (tidemarkctl ↔ tidemark-agent),
/// version 1.
///
/// The client sends one request, a JSON object on one line of at most
/// `requestBytesMax` bytes; the agent answers with one `ControlReply` on one
/// line of at most `replyBytesMax` bytes, then closes the connection.
/// Every message names the protocol `version`; an agent refuses a request
/// of another version, or with a field or operation it does not know, with
/// a reply that says so (`ok: false`, `error`), and tidemarkctl refuses a
/// reply of another version. tidemarkctl and tidemark-agent of one build
/// always agree; across builds, a version mismatch is named instead of
/// being misread.
///
/// Requests:
///   {"version":1,"op":"status"}
///   {"version":1,"op":"create-point","disk":"/dev/sdb","app_consistent":false}
///   {"version":1,"op":"create-point","scope":"machine","app_consistent":false}
/// Replies:
///   {"ok":true,"status":{"disks":[...],"rss_bytes":N},"version":1}
///   {"ok":true,"point":{"class":"crash-consistent",...},"version":1}
///   {"error":"...","ok":false,"version":1}
public enum ControlProtocol {
    /// The version this build speaks (and the only one it accepts).
    public static let version = 1
    /// The longest request line, newline excluded.
    public static let requestBytesMax = 4096
    /// The longest reply line, newline excluded: a status of many disks fits.
    public static let replyBytesMax = 64 << 10
}

/// The operations of `ControlRequest`, as named on the wire.
public enum ControlOperation: String, Sendable, CaseIterable {
    case status
    case createPoint = "create-point"

    /// The request fields the operation takes besides `version` and `op`.
    var fields: [String] {
        switch self {
        case .status: []
        case .createPoint: ["disk", "scope", "app_consistent"]
        }
    }

    /// "create-point, status": the operations for an error message.
    static var known: String { allCases.map(\.rawValue).sorted().joined(separator: ", ") }
}

/// A request the agent could not take: what is wrong with it, in words the
/// client prints as they are.
public struct ControlProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One request to the agent's control socket.
public enum ControlRequest: Sendable, Equatable {
    /// The replication state of every disk (`tidemarkctl status`).
    case status
    /// Tag a recovery point of `disk` (a device path or disk id) and answer
    /// when it is committed (`tidemarkctl point create`). Without a disk
    /// (`"scope":"machine"` on the wire), a machine point: every disk of the
    /// agent tagged at one instant under one id.
    case createPoint(disk: String?, appConsistent: Bool)

    public var operation: ControlOperation {
        switch self {
        case .status: .status
        case .createPoint: .createPoint
        }
    }

    /// Decodes one request line. Every failure is a `ControlProtocolError`
    /// that names what is wrong (not JSON, another version, an unknown
    /// operation or field, a field of the wrong type).
    public static func decode(_ line: Data) throws(ControlProtocolError) -> ControlRequest {
        do {
            return try JSONDecoder().decode(ControlRequest.self, from: line)
        } catch let e as ControlProtocolError {
            throw e
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
            throw ControlProtocolError("the request is not a JSON object: one JSON object on one line is expected")
        } catch {
            throw ControlProtocolError("the request is not JSON: one JSON object on one line is expected")
        }
    }

    /// The request as one line of JSON (without the newline).
    public func encoded() throws -> Data { try JSONOutput.encode(self) }
}

/// A JSON object key known only at run time, to find fields the request
/// should not have.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ s: String) { stringValue = s }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension ControlRequest: Codable {
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        func field<T: Decodable>(_ name: String, _ type: T.Type, _ what: String) throws -> T? {
            guard c.contains(AnyKey(name)) else { return nil }
            do {
                return try c.decode(T.self, forKey: AnyKey(name))
            } catch {
                throw ControlProtocolError("request field \"\(name)\" is not \(what)")
            }
        }
        guard let version = try field("version", Int.self, "a whole number") else {
            throw ControlProtocolError("the request has no \"version\": it comes from a tidemarkctl of another build "
                                       + "(this agent speaks control protocol version \(ControlProtocol.version)); "
                                       + "use the tidemarkctl installed with this agent")
        }
        guard version == ControlProtocol.version else {
            throw ControlProtocolError("the request is of control protocol version \(version); this agent speaks version "
                                       + "\(ControlProtocol.version): use the tidemarkctl installed with this agent")
        }
        guard let opName = try field("op", String.self, "a string") else {
            throw ControlProtocolError("the request has no \"op\" (known: \(ControlOperation.known))")
        }
        guard let op = ControlOperation(rawValue: opName) else {
            throw ControlProtocolError("unknown request '\(opName)' (known: \(ControlOperation.known))")
        }
        let allowed = Set(["version", "op"] + op.fields)
        if let unknown = c.allKeys.map(\.stringValue).filter({ !allowed.contains($0) }).sorted().first {
            let takes = op.fields.isEmpty ? "no other field" : op.fields.map { "\"\($0)\"" }.joined(separator: ", ")
            throw ControlProtocolError("unknown field \"\(unknown)\" in a '\(op.rawValue)' request (it takes \(takes))")
        }
        switch op {
        case .status:
            self = .status
        case .createPoint:
            let disk = try field("disk", String.self, "a string")
            let scope = try field("scope", String.self, "a string")
            guard scope == nil || scope == "disk" || scope == "machine" else {
                throw ControlProtocolError("request field \"scope\" is \"disk\" or \"machine\", not \"\(scope ?? "")\"")
            }
            if scope == "machine" && disk != nil {
                throw ControlProtocolError("a machine point spans every disk of the agent: a 'create-point' request with \"scope\":\"machine\" names no \"disk\"")
            }
            if disk == nil && scope == "disk" || disk?.isEmpty == true {
                throw ControlProtocolError("a 'create-point' request of scope \"disk\" needs \"disk\" (the device path or disk id)")
            }
            self = .createPoint(disk: disk, appConsistent: try field("app_consistent", Bool.self, "true or false") ?? false)
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnyKey.self)
        try c.encode(ControlProtocol.version, forKey: AnyKey("version"))
        try c.encode(operation.rawValue, forKey: AnyKey("op"))
        if case .createPoint(let disk, let appConsistent) = self {
            if let disk { try c.encode(disk, forKey: AnyKey("disk")) } else { try c.encode("machine", forKey: AnyKey("scope")) }
            try c.encode(appConsistent, forKey: AnyKey("app_consistent"))
        }
    }
}

/// The agent's answer to one request: `ok` with the operation's result
/// (`status` or `point`), or not `ok` with `error`.
public struct ControlReply: Codable, Sendable, Equatable {
    public var version: Int
    public var ok: Bool
    public var error: String?
    public var status: AgentStatus?
    public var point: CreatedPoint?

    public init(ok: Bool, error: String? = nil, status: AgentStatus? = nil, point: CreatedPoint? = nil) {
        self.version = ControlProtocol.version
        self.ok = ok
        self.error = error
        self.status = status
        self.point = point
    }

    public static func failure(_ message: String) -> ControlReply { ControlReply(ok: false, error: message) }
    public static func status(_ s: AgentStatus) -> ControlReply { ControlReply(ok: true, status: s) }
    public static func point(_ p: CreatedPoint) -> ControlReply { ControlReply(ok: true, point: p) }

    /// Decodes a reply line, refusing one of another protocol version.
    /// `agent` names the agent (its socket) in the messages.
    public static func decode(_ line: Data, agent: String) throws(ControlProtocolError) -> ControlReply {
        let reply: ControlReply
        do {
            reply = try JSONDecoder().decode(ControlReply.self, from: line)
        } catch DecodingError.keyNotFound(let key, let context) where key.stringValue == "version" && context.codingPath.isEmpty {
            throw ControlProtocolError("the agent on \(agent) answered without a protocol version: it is a tidemark-agent of "
                                       + "another build; use the tidemarkctl installed with it")
        } catch {
            throw ControlProtocolError("the agent on \(agent) sent a reply this tidemarkctl cannot read (\(error)); "
                                       + "tidemarkctl and tidemark-agent should be of one build")
        }
        guard reply.version == ControlProtocol.version else {
            throw ControlProtocolError("the agent on \(agent) speaks control protocol version \(reply.version), this tidemarkctl "
                                       + "version \(ControlProtocol.version): use the tidemarkctl installed with the agent")
        }
        return reply
    }
}

/// The agent's replication state (`status`).
public struct AgentStatus: Codable, Sendable, Equatable {
    /// The agent's resident set size (0 when /proc could not be read).
    public var rssBytes: UInt64
    /// One entry per replicated disk, ordered by disk id.
    public var disks: [DiskStatus]
    /// The segments all disks hold in memory, against the host's budget
    /// (`replication.host_inflight_bytes`); absent from older agents.
    public var hostInflight: HostInflightStatus?

    public init(rssBytes: UInt64, disks: [DiskStatus], hostInflight: HostInflightStatus? = nil) {
        self.rssBytes = rssBytes
        self.disks = disks
        self.hostInflight = hostInflight
    }

    enum CodingKeys: String, CodingKey {
        case rssBytes = "rss_bytes"
        case disks
        case hostInflight = "host_inflight"
    }
}

/// Bytes of segments being read, sealed or waiting for "durable", over all
/// disks of the agent.
public struct HostInflightStatus: Codable, Sendable, Equatable {
    /// The budget (`replication.host_inflight_bytes`).
    public var budgetBytes: UInt64
    /// Held now.
    public var heldBytes: UInt64
    /// The most held at once since the agent started.
    public var peakBytes: UInt64

    public init(budgetBytes: UInt64, heldBytes: UInt64, peakBytes: UInt64) {
        self.budgetBytes = budgetBytes
        self.heldBytes = heldBytes
        self.peakBytes = peakBytes
    }

    enum CodingKeys: String, CodingKey {
        case budgetBytes = "budget_bytes"
        case heldBytes = "held_bytes"
        case peakBytes = "peak_bytes"
    }
}

/// One disk's replication state.
///
/// `rpoMs` is the age of the committed-through time (-1 until the first
/// checkpoint is committed); `backlogBytes` counts chunks drained but not
/// yet read, plus sealed segments not yet durable, plus chunks of durable
/// segments not yet committed.
/// What the change tracker of one disk found since the agent opened it: the
/// completion deficits (writes the kernel completed that the tracer did not
/// see) and how each was answered (docs/tracer.md).
public struct TrackingHealth: Codable, Sendable, Equatable {
    public var deficits: UInt64 = 0
    public var sectorsUnseen: UInt64 = 0
    /// Answered by marking the chunks the issue record held.
    public var answeredFromIssueRecord: UInt64 = 0
    public var chunksFromIssueRecord: UInt64 = 0
    /// Issue-record answers the balance confirmed when the disk was still.
    public var confirmed: UInt64 = 0
    /// Answered (or later replaced) by the whole disk.
    public var wholeDisk: UInt64 = 0
    public var lastWholeDiskWhy: String? = nil
    /// Sectors of answers still to confirm (0: none).
    public var pendingSectors: UInt64 = 0
    /// The issue record has a balance to be checked against (the disk was
    /// still once since tracking began); without it a deficit takes the whole disk.
    public var issueRecordBalanced: Bool = false

    public init() {}

    enum CodingKeys: String, CodingKey {
        case deficits
        case sectorsUnseen = "sectors_unseen"
        case answeredFromIssueRecord = "answered_from_issue_record"
        case chunksFromIssueRecord = "chunks_from_issue_record"
        case confirmed
        case wholeDisk = "whole_disk"
        case lastWholeDiskWhy = "last_whole_disk_why"
        case pendingSectors = "pending_sectors"
        case issueRecordBalanced = "issue_record_balanced"
    }
}

/// What a replicated disk is doing, for operators: its initial copy, a
/// resync (and why), protected, or paused — with progress for the first two.
public struct DiskActivity: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        /// Nothing of the disk is recoverable yet: the whole disk is compared
        /// with (and sent to) a target that holds none of it.
        case initialCopy = "initial-copy"
        /// The disk is compared with the target, for the reason in `detail`.
        case resync
        /// Changes are replicated as they come.
        case protected
        /// Replication waits, for the reason in `detail` (the process server
        /// unreachable, or slower than the disk's changes).
        case paused
    }
    public var state: State
    public var detail: String?
    /// An initial copy or whole-disk resync: what it reads — "used blocks
    /// only: ext4 at /srv uses ..." or "the whole disk: <why>".
    public var scope: String?
    /// An initial copy or resync: bytes compared or sent so far, of the total.
    public var bytesDone: UInt64?
    public var bytesTotal: UInt64?
    /// Average since it began; nil before there is one.
    public var bytesPerSecond: Double?
    public var etaSeconds: Double?

    public init(state: State, detail: String? = nil, bytesDone: UInt64? = nil, bytesTotal: UInt64? = nil,
                bytesPerSecond: Double? = nil, etaSeconds: Double? = nil) {
        self.state = state; self.detail = detail; self.bytesDone = bytesDone; self.bytesTotal = bytesTotal
        self.bytesPerSecond = bytesPerSecond; self.etaSeconds = etaSeconds
    }

    enum CodingKeys: String, CodingKey {
        case state, detail, scope
        case bytesDone = "bytes_done"
        case bytesTotal = "bytes_total"
        case bytesPerSecond = "bytes_per_second"
        case etaSeconds = "eta_seconds"
    }

    /// "initial copy 45% (1.2 GiB of 2.0 GiB, 120.0 MiB/s, ETA 7 s)", for status and logs.
    public var text: String {
        var out: String
        switch state {
        case .initialCopy: out = "initial copy"
        case .resync: out = "resync"
        case .protected: out = "protected"
        case .paused: out = "paused"
        }
        if let detail { out += " (\(detail))" }
        if let done = bytesDone, let total = bytesTotal, total > 0 {
            let pct = Double(min(done, total)) * 100 / Double(total)
            out += String(format: " %.0f%%", pct) + " (\(ByteCount.text(done)) of \(ByteCount.text(total))"
            if let rate = bytesPerSecond, rate > 0 { out += ", \(ByteCount.text(UInt64(rate)))/s" }
            if let eta = etaSeconds { out += ", ETA \(Self.duration(eta))" }
            out += ")"
        }
        return out
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded(.up))
        if s < 120 { return "\(s) s" }
        if s < 7200 { return "\(s / 60) min" }
        return "\(s / 3600) h \(s % 3600 / 60) min"
    }
}

public struct DiskStatus: Codable, Sendable, Equatable {
    public var disk: String
    public var diskID: String
    public var rpoMs: Int64
    public var committedThroughUnixMs: Int64?
    public var committedSequence: UInt64
    public var durableSequence: UInt64
    public var nextSequence: UInt64
    public var backlogBytes: UInt64
    public var toReadBytes: UInt64
    public var windowBytes: UInt64
    public var bytesRead: UInt64
    public var bytesSent: UInt64
    public var segmentsSent: UInt64
    public var zeroChunks: UInt64
    /// The zstd level segments are sealed with now (0: compression off).
    public var compressionLevel: Int
    /// `compression_level: auto`: the governor picks the level.
    public var compressionAuto: Bool
    public var compressionStepsFaster: UInt64
    public var compressionStepsSmaller: UInt64
    /// The freeze of the latest point, in milliseconds (nil before the first).
    public var lastFreezeMs: Double?
    /// The change tracker's deficits and answers (nil from agents before it).
    public var tracking: TrackingHealth?
    /// What the disk is doing (nil from agents before it).
    public var activity: DiskActivity?

    public init(disk: String, diskID: String, rpoMs: Int64, committedThroughUnixMs: Int64?, committedSequence: UInt64,
                durableSequence: UInt64, nextSequence: UInt64, backlogBytes: UInt64, toReadBytes: UInt64, windowBytes: UInt64,
                bytesRead: UInt64, bytesSent: UInt64, segmentsSent: UInt64, zeroChunks: UInt64, compressionLevel: Int,
                compressionAuto: Bool, compressionStepsFaster: UInt64, compressionStepsSmaller: UInt64, lastFreezeMs: Double?,
                tracking: TrackingHealth? = nil, activity: DiskActivity? = nil) {
        self.disk = disk
        self.diskID = diskID
        self.rpoMs = rpoMs
        self.committedThroughUnixMs = committedThroughUnixMs
        self.committedSequence = committedSequence
        self.durableSequence = durableSequence
        self.nextSequence = nextSequence
        self.backlogBytes = backlogBytes
        self.toReadBytes = toReadBytes
        self.windowBytes = windowBytes
        self.bytesRead = bytesRead
        self.bytesSent = bytesSent
        self.segmentsSent = segmentsSent
        self.zeroChunks = zeroChunks
        self.compressionLevel = compressionLevel
        self.compressionAuto = compressionAuto
        self.compressionStepsFaster = compressionStepsFaster
        self.compressionStepsSmaller = compressionStepsSmaller
        self.lastFreezeMs = lastFreezeMs
        self.tracking = tracking
        self.activity = activity
    }

    enum CodingKeys: String, CodingKey {
        case disk
        case diskID = "disk_id"
        case rpoMs = "rpo_ms"
        case committedThroughUnixMs = "committed_through_unix_ms"
        case committedSequence = "committed_sequence"
        case durableSequence = "durable_sequence"
        case nextSequence = "next_sequence"
        case backlogBytes = "backlog_bytes"
        case toReadBytes = "to_read_bytes"
        case windowBytes = "window_bytes"
        case bytesRead = "bytes_read"
        case bytesSent = "bytes_sent"
        case segmentsSent = "segments_sent"
        case zeroChunks = "zero_chunks"
        case compressionLevel = "compression_level"
        case compressionAuto = "compression_auto"
        case compressionStepsFaster = "compression_steps_faster"
        case compressionStepsSmaller = "compression_steps_smaller"
        case lastFreezeMs = "last_freeze_ms"
        case tracking
        case activity
    }
}

/// A recovery point the agent created and saw committed (`create-point`):
/// of one disk (`scope` "disk", with `diskID` and `sequence`) or a machine
/// point (`scope` "machine"), every disk tagged at one instant under one id.
public struct CreatedPoint: Codable, Sendable, Equatable {
    public var id: String
    /// "disk" or "machine".
    public var scope: String
    /// The disk of a point of one disk; nil for a machine point.
    public var diskID: String?
    /// The weakest class of the point's disks: "crash-consistent",
    /// "app-consistent" or "unverified" (docs/points-and-freeze.md).
    public var pointClass: String
    /// The segment sequence the tag of a point of one disk was numbered at.
    public var sequence: UInt64?
    /// How long the filesystems were frozen, in milliseconds.
    public var freezeMs: Double
    /// Every disk's tag, in the agent's disk order (one for a point of one disk).
    public var disks: [CreatedPointDisk]

    public init(id: String, scope: String, diskID: String?, pointClass: String, sequence: UInt64?, freezeMs: Double,
                disks: [CreatedPointDisk]) {
        self.id = id
        self.scope = scope
        self.diskID = diskID
        self.pointClass = pointClass
        self.sequence = sequence
        self.freezeMs = freezeMs
        self.disks = disks
    }

    enum CodingKeys: String, CodingKey {
        case id
        case scope
        case diskID = "disk_id"
        case pointClass = "class"
        case sequence
        case freezeMs = "freeze_ms"
        case disks
    }
}

/// One disk's tag in a `CreatedPoint`.
public struct CreatedPointDisk: Codable, Sendable, Equatable {
    /// The device path.
    public var disk: String
    public var diskID: String
    public var pointClass: String
    /// The segment sequence the disk's tag was numbered at.
    public var sequence: UInt64

    public init(disk: String, diskID: String, pointClass: String, sequence: UInt64) {
        self.disk = disk
        self.diskID = diskID
        self.pointClass = pointClass
        self.sequence = sequence
    }

    enum CodingKeys: String, CodingKey {
        case disk
        case diskID = "disk_id"
        case pointClass = "class"
        case sequence
    }
}
