import TidemarkSystem
import TidemarkTarget
import TidemarkWire

/// A peer broke the protocol: the session is answered with an `error`
/// frame carrying `code` and `message`, and closed.
public struct ProtocolViolation: Error, CustomStringConvertible, Equatable, Sendable {
    public var code: UInt16
    public var message: String
    /// The server logged the cause already (a quarantined disk): the
    /// refusal of each session is logged at debug level only.
    public var logged: Bool

    public init(code: UInt16, _ message: String, logged: Bool = false) {
        self.code = code
        self.message = message
        self.logged = logged
    }

    public var description: String { message }
}

/// The rules of ingest (docs/server-ingest.md): who may open which disk,
/// which segment is the next, what is acknowledged when, and what the
/// server answers a resuming agent. A pure state machine: every input is an
/// `Event` (a decoded message of a session, or the completion of something
/// the shell was asked to do, or a report of the `SegmentSink`), every
/// output an `Effect` the shell carries out. No threads, no I/O, no clock
/// (the only time it sees is the accept time an `accepted` event carries),
/// so a simulation or a fuzz target can drive it exactly like the server.
///
/// Invariants (`checkInvariants`, asserted after every event): for every
/// disk, committed ≤ durable ≤ appended ≤ `SegmentSequence.max`; at most one
/// segment of a disk is being appended, and it is the highest handed to the
/// sink (`appended`); a disk's owner is a live, authenticated session; a
/// session waits for at most one thing (`Pending`), and a session waiting
/// for the sink gets no message until that completion is reported.
///
/// Threads: none of its own. The process server keeps it under one lock
/// and carries out the effects outside it; a simulation calls it from one
/// thread. Memory: one entry per session (at most the unauthenticated pool,
/// `max_connections` authenticated ones and those being closed) with at
/// most `disksPerSessionMax` opened disk ids each, and one entry per disk
/// opened or reported lost since the start.
public struct ReplicationReceiver: Sendable {
    /// A session: one agent connection, named by the shell (unique for the
    /// receiver's lifetime).
    public struct SessionID: Hashable, Comparable, Sendable, CustomStringConvertible {
        public let value: UInt64
        public init(_ value: UInt64) { self.value = value }
        public static func < (a: SessionID, b: SessionID) -> Bool { a.value < b.value }
        public var description: String { "session \(value)" }
    }

    public struct Configuration: Sendable {
        /// Named in `helloOK` and in refusals.
        public var serverID: String
        /// Authenticated sessions at once (`max_connections`).
        public var maxConnections: Int
        public var disksPerSessionMax: Int
        /// The pool of sessions that have not completed their hello (session rule 9).
        public var unauthenticatedMax: Int
        public var unauthenticatedPerSourceMax: Int

        public init(serverID: String, maxConnections: Int,
                    disksPerSessionMax: Int = ServerLimits.disksPerConnectionMax,
                    unauthenticatedMax: Int = ServerLimits.unauthenticatedConnectionsMax,
                    unauthenticatedPerSourceMax: Int = ServerLimits.unauthenticatedPerSourceMax) {
            precondition(maxConnections >= 0 && disksPerSessionMax >= 1, "the receiver's limits must allow something")
            precondition(unauthenticatedPerSourceMax >= 1 && unauthenticatedPerSourceMax <= unauthenticatedMax,
                         "the per-source pool must be 1 … the whole pool")
            self.serverID = serverID
            self.maxConnections = maxConnections
            self.disksPerSessionMax = disksPerSessionMax
            self.unauthenticatedMax = unauthenticatedMax
            self.unauthenticatedPerSourceMax = unauthenticatedPerSourceMax
        }
    }

    /// What the sink stores of a disk, the answer to `Effect.lookUpDisk`.
    public enum DiskLookup: Equatable, Sendable {
        /// Its record (nil: none yet), the highest sequence stored for good
        /// (committed) and the highest it holds durable from an earlier run
        /// and has not committed yet (0: none).
        case stored(record: DiskRecord?, committedSequence: UInt64, heldSequence: UInt64)
        /// The sink will not take the disk (a quarantined record): this
        /// refusal goes to the agent.
        case refused(ProtocolViolation)
    }

    /// Why the receiver ends a session.
    public enum CloseReason: Equatable, Sendable {
        /// The agent broke a rule: send it this error, then close.
        case refused(ProtocolViolation)
        /// A newer connection needed its place in the unauthenticated pool
        /// (session rule 9): close without an error frame.
        case displacedFromPool
        /// A newer session of the agent opened this disk: close without an
        /// error frame (the agent has moved on).
        case displacedByNewOwner(diskID: String, agentID: String)
        /// The sink lost held segments of this disk from this sequence on:
        /// close so that the agent reconnects, learns the lower durable
        /// sequence and sends again from there.
        case sinkLost(diskID: String, fromSequence: UInt64)
        /// The agent sent an `error` message: close without answering.
        case agentError(code: UInt16, message: String)
    }

    /// The inputs.
    public enum Event: Sendable {
        // The transport.
        /// A connection was accepted at `nowNs` (any monotonic clock) from
        /// the address `source` (without its port).
        case accepted(SessionID, source: String, nowNs: UInt64)
        /// Its TLS handshake completed: the peer showed a certificate of the
        /// CA with this common name.
        case tlsEstablished(SessionID, certificateName: String)
        /// A decoded message (a `.segment` message is decoded here; the
        /// server streams segments and sends `.segment` events instead).
        case message(SessionID, WireMessage)
        /// The header of a `segment` frame whose payload the shell holds.
        case segment(SessionID, SegmentHeader)
        /// The session is gone (closed by either side). It must not have a
        /// segment being appended (report `appended` or `appendFailed` first).
        case ended(SessionID)
        // Completions of effects.
        case diskLookedUp(SessionID, diskID: String, DiskLookup)
        case diskCreated(SessionID, diskID: String)
        /// The sink holds the segment (`Effect.append`); durability follows.
        case appended(SessionID, diskID: String, sequence: UInt64)
        /// The sink did not take it (the session closed while it waited for
        /// room, an I/O error, stopping).
        case appendFailed(SessionID, diskID: String, sequence: UInt64)
        case diskSettled(SessionID, diskID: String)
        case forgotten(diskID: String, fromSequence: UInt64)
        // Reports of the sink.
        /// Every segment of the disk up to this sequence is durable.
        case durable(diskID: String, sequence: UInt64)
        /// Every segment of the disk up to this sequence is stored for good.
        case committed(diskID: String, sequence: UInt64)
        /// The sink will keep none of the segments of the disk from this
        /// sequence on that it was handed so far (a damaged or unsynced
        /// record); it is told to `forget` them once the disk is quiet.
        case lost(diskID: String, fromSequence: UInt64)
    }

    /// The outputs, in the order to carry them out.
    public enum Effect: Equatable, Sendable {
        /// Send the message on the session (after what was sent before).
        /// `ackDurable` and `ackCommitted` are cumulative: a shell may keep
        /// only the newest per disk.
        case send(SessionID, WireMessage)
        /// The session's hello was accepted: its frames now carry this
        /// protocol version (sent before its `helloOK`).
        case authenticated(SessionID, agentID: String, protocolVersion: UInt16)
        /// End the session (send the error of a refusal first).
        case close(SessionID, CloseReason)
        /// Ask the sink what it stores of the disk → `diskLookedUp`.
        case lookUpDisk(SessionID, diskID: String)
        /// Store the new disk's record → `diskCreated`.
        case createDisk(SessionID, DiskRecord)
        /// Hand the segment the session just sent to the sink → `appended`
        /// or `appendFailed`. Only ever the answer to that session's own
        /// `segment` (or `.message(.segment)`) event.
        case append(SessionID, diskID: String, sequence: UInt64)
        /// Let the sink make every segment of the disk it was handed durable
        /// (or report it lost) and get ready to answer the session's digest
        /// requests → `diskSettled`.
        case settleDisk(SessionID, diskID: String)
        /// Ask the sink for the chunk states and answer with `chunkDigests`
        /// (build it with `chunkDigestsMessage`, which applies the rules of
        /// the session's protocol version).
        case answerDigests(SessionID, diskID: String, firstChunk: UInt64, count: UInt32, protocolVersion: UInt16)
        /// The disk is quiet: the sink drops every segment of it from this
        /// sequence on that it was handed so far → `forgotten`.
        case forget(diskID: String, fromSequence: UInt64)
    }

    /// What a session waits for; it gets no message meanwhile.
    enum Pending: Equatable, Sendable {
        case lookUp(DiskRecord)
        case create(DiskRecord, committed: UInt64, held: UInt64)
        case append(diskID: String, sequence: UInt64)
        /// For the disk to be quiet: no other session's segment being
        /// appended, no loss being forgotten.
        case waiting(diskID: String)
        case settle(diskID: String)

        var diskID: String {
            switch self {
            case .lookUp(let r), .create(let r, _, _): r.diskID
            case .append(let d, _), .waiting(let d), .settle(let d): d
            }
        }
    }

    struct Session: Sendable {
        let source: String
        let acceptedNs: UInt64
        var certificateName: String?
        /// Set by an accepted hello.
        var agentID: String?
        var protocolVersion: UInt16 = 0
        /// In the pool of unauthenticated sessions (until its hello is
        /// accepted or it ends).
        var inPool = true
        var displacedFromPool = false
        /// The receiver ended it (an effect `close` went out): its messages
        /// are ignored until `ended`.
        var closed = false
        /// Disks answered with `diskState` on this session.
        var opened: Set<String> = []
        var pending: Pending?
    }

    struct Disk: Sendable {
        /// Nil while the disk is known only from a loss the sink reported
        /// (not opened since the start).
        var record: DiskRecord?
        var appended: UInt64 = 0
        var durable: UInt64 = 0
        var committed: UInt64 = 0
        var owner: SessionID?
        var appending: (session: SessionID, sequence: UInt64)?
        /// A loss the sink reported that is not forgotten yet (the lowest).
        var lostFrom: UInt64?
        /// The `forget` effect went out for this sequence.
        var forgetting: UInt64?
        /// For a disk without a record: what losses forgotten before it was
        /// opened leave of what the sink held.
        var heldCeiling: UInt64?
    }

    public var configuration: Configuration
    private(set) var sessions: [SessionID: Session] = [:]
    private(set) var disks: [String: Disk] = [:]
    private(set) var authenticatedCount = 0

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    // MARK: Queries

    /// The session waits for a completion or for a disk to be quiet: feed
    /// it no message until this is false.
    public func isBusy(_ id: SessionID) -> Bool { sessions[id]?.pending != nil }

    /// The session has not completed its hello and still counts in the
    /// unauthenticated pool.
    public func isUnauthenticated(_ id: SessionID) -> Bool { sessions[id]?.inPool ?? false }

    /// The session may send segments of the disk: it opened it and owns it.
    /// (The server checks this after a segment frame's header, before it
    /// reads the payload.)
    public func mayReceiveSegments(_ id: SessionID, diskID: String) -> Bool {
        guard let s = sessions[id], !s.closed, s.opened.contains(diskID) else { return false }
        return disks[diskID]?.owner == id
    }

    /// Disks opened since the start, in id order.
    public var openedDiskIDs: [String] { disks.compactMap { $0.value.record == nil ? nil : $0.key }.sorted() }

    /// A disk's bookkeeping (nil: not opened since the start).
    public func state(ofDisk diskID: String) -> (appended: UInt64, durable: UInt64, committed: UInt64, owner: SessionID?)? {
        guard let d = disks[diskID], d.record != nil else { return nil }
        return (d.appended, d.durable, d.committed, d.owner)
    }

    public var sessionCount: Int { sessions.count }

    // MARK: Events

    public mutating func handle(_ event: Event) -> [Effect] {
        var out: [Effect] = []
        switch event {
        case .accepted(let id, let source, let nowNs):
            accepted(id, source: source, nowNs: nowNs, &out)
        case .tlsEstablished(let id, let name):
            precondition(sessions[id] != nil, "tlsEstablished for \(id), which was never accepted")
            sessions[id]!.certificateName = name
        case .message(let id, let m):
            message(id, m, &out)
        case .segment(let id, let header):
            if let s = live(id) { segment(id, s, header, &out) }
        case .ended(let id):
            ended(id)
        case .diskLookedUp(let id, let diskID, let lookup):
            diskLookedUp(id, diskID, lookup, &out)
        case .diskCreated(let id, let diskID):
            diskCreated(id, diskID, &out)
        case .appended(let id, let diskID, let sequence):
            appendDone(id, diskID, sequence, failed: false, &out)
        case .appendFailed(let id, let diskID, let sequence):
            appendDone(id, diskID, sequence, failed: true, &out)
        case .diskSettled(let id, let diskID):
            diskSettled(id, diskID, &out)
        case .forgotten(let diskID, let from):
            forgotten(diskID, from, &out)
        case .durable(let diskID, let sequence):
            durable(diskID, sequence, &out)
        case .committed(let diskID, let sequence):
            committed(diskID, sequence, &out)
        case .lost(let diskID, let from):
            lost(diskID, from, &out)
        }
        assert(invariantProblem() == nil, "ReplicationReceiver: \(invariantProblem() ?? "")")
        return out
    }

    /// The session if it may still act (accepted, not closed by the
    /// receiver). A message for a session that waits is the shell's bug.
    private func live(_ id: SessionID) -> Session? {
        guard let s = sessions[id] else { preconditionFailure("an event for \(id), which was never accepted or has ended") }
        if s.closed { return nil }
        precondition(s.pending == nil, "a message for \(id) while it waits for \(String(describing: s.pending))")
        return s
    }

    private mutating func close(_ id: SessionID, _ reason: CloseReason, _ out: inout [Effect]) {
        guard var s = sessions[id], !s.closed else { return }
        s.closed = true
        // It waits for nothing any more; completions still come for the sink's work.
        if case .waiting = s.pending { s.pending = nil }
        sessions[id] = s
        out.append(.close(id, reason))
    }

    private mutating func refuse(_ id: SessionID, _ v: ProtocolViolation, _ out: inout [Effect]) {
        close(id, .refused(v), &out)
    }

    // MARK: Sessions and hello (session rules 1 and 9)

    private mutating func accepted(_ id: SessionID, source: String, nowNs: UInt64, _ out: inout [Effect]) {
        precondition(sessions[id] == nil, "\(id) accepted twice")
        // In id order, so that the choice among equals is deterministic.
        let pool = sessions.filter(\.value.inPool).sorted { $0.key < $1.key }
        let candidates = pool.map {
            UnauthenticatedConnection(source: $0.value.source, acceptedNs: $0.value.acceptedNs,
                                      pastTLSHandshake: $0.value.certificateName != nil)
        }
        if let i = Self.displaced(among: candidates, newSource: source, perSourceMax: configuration.unauthenticatedPerSourceMax,
                                  allMax: configuration.unauthenticatedMax) {
            let victim = pool[i].key
            sessions[victim]!.inPool = false
            sessions[victim]!.displacedFromPool = true
            close(victim, .displacedFromPool, &out)
        }
        sessions[id] = Session(source: source, acceptedNs: nowNs)
    }

    /// What the displacement policy knows of an unauthenticated connection.
    public struct UnauthenticatedConnection: Sendable {
        public var source: String
        public var acceptedNs: UInt64
        public var pastTLSHandshake: Bool
        public init(source: String, acceptedNs: UInt64, pastTLSHandshake: Bool) {
            self.source = source
            self.acceptedNs = acceptedNs
            self.pastTLSHandshake = pastTLSHandshake
        }
    }

    /// The index in `pool` of the connection a new one from `newSource`
    /// displaces, nil when it fits (ServerLimits, docs/wire-format.md
    /// session rule 9): when its address has `perSourceMax` already, one of
    /// those; else, when the pool has `allMax`, one of all. Of them, one
    /// still in the TLS handshake before one past it (it has shown a
    /// certificate of the CA and lacks only its hello), then the oldest
    /// (then the first in `pool`).
    public static func displaced(among pool: [UnauthenticatedConnection], newSource: String,
                                 perSourceMax: Int = ServerLimits.unauthenticatedPerSourceMax,
                                 allMax: Int = ServerLimits.unauthenticatedConnectionsMax) -> Int? {
        let first = { (a: Int, b: Int) in
            pool[a].pastTLSHandshake != pool[b].pastTLSHandshake ? !pool[a].pastTLSHandshake : pool[a].acceptedNs < pool[b].acceptedNs
        }
        let sameSource = pool.indices.filter { pool[$0].source == newSource }
        if sameSource.count >= perSourceMax { return sameSource.min(by: first) }
        if pool.count >= allMax { return pool.indices.min(by: first) }
        return nil
    }

    /// Why a hello is refused (nil: it is accepted), in the order of session
    /// rules 1 and 9: the protocol version, the identity, the pool, the
    /// connection limit.
    private func helloRefusal(_ s: Session, version: UInt16, agentID: String) -> ProtocolViolation? {
        guard WireProtocol.acceptedVersions.contains(version) else {
            return ProtocolViolation(code: 426, "protocol version \(version) is not supported; this server speaks \(WireProtocol.acceptedVersions.lowerBound) to \(WireProtocol.acceptedVersions.upperBound)")
        }
        let certName = s.certificateName ?? ""
        guard !certName.isEmpty, agentID == certName else {
            return ProtocolViolation(code: 403, "agent id '\(agentID)' does not match the certificate's name '\(certName)'; an agent's hello names the agent id its certificate was issued for (docs/wire-format.md, session rule 1)")
        }
        guard s.inPool, !s.displacedFromPool else {
            return ProtocolViolation(code: 503, "the connection was closed to make room for newer unauthenticated ones; connect again")
        }
        guard authenticatedCount < configuration.maxConnections else {
            return ProtocolViolation(code: 503, "process server \(configuration.serverID) serves \(configuration.maxConnections) agent connections already (max_connections); try again later")
        }
        return nil
    }

    private mutating func hello(_ id: SessionID, _ s: Session, version: UInt16, agentID: String, _ out: inout [Effect]) {
        if let refusal = helloRefusal(s, version: version, agentID: agentID) { return refuse(id, refusal, &out) }
        sessions[id]!.inPool = false
        sessions[id]!.agentID = agentID
        sessions[id]!.protocolVersion = version
        authenticatedCount += 1
        out.append(.authenticated(id, agentID: agentID, protocolVersion: version))
        out.append(.send(id, .helloOK(protocolVersion: version, serverID: configuration.serverID)))
    }

    private mutating func message(_ id: SessionID, _ m: WireMessage, _ out: inout [Effect]) {
        guard let s = sessions[id] else { preconditionFailure("a message for \(id), which was never accepted or has ended") }
        if s.closed {
            // A hello that arrives after its connection gave way in the pool
            // is still answered (session rule 9); the rest is ignored.
            if s.displacedFromPool, s.agentID == nil, case .hello(let v, let a) = m, let refusal = helloRefusal(s, version: v, agentID: a) {
                out.append(.close(id, .refused(refusal)))
            }
            return
        }
        guard let session = live(id) else { return }
        guard let agentID = session.agentID else {
            guard case .hello(let version, let agent) = m else {
                return refuse(id, ProtocolViolation(code: 400, "expected hello as the first message"), &out)
            }
            return hello(id, session, version: version, agentID: agent, &out)
        }
        switch m {
        case .openDisk(let diskID, let size, let chunk, let keyID):
            openDisk(id, session, agentID: agentID, diskID: diskID, sizeBytes: size, chunkSizeBytes: chunk, keyID: keyID, &out)
        case .digestRequest(let diskID, let first, let count):
            guard session.opened.contains(diskID), let record = disks[diskID]?.record else {
                return refuse(id, ProtocolViolation(code: 400, "digest request for disk \(diskID), which this connection has not opened"), &out)
            }
            do {
                try RequestChecks.digestRange(diskID: diskID, first: first, count: count, record: record)
            } catch {
                return refuse(id, Self.violation(error), &out)
            }
            out.append(.answerDigests(id, diskID: diskID, firstChunk: first, count: count, protocolVersion: session.protocolVersion))
        case .segment(let bytes):
            let header: SegmentHeader
            do {
                header = try bytes.withUnsafeBytes { try SegmentHeader.decode($0).0 }
            } catch {
                return refuse(id, Self.violation(error), &out)
            }
            segment(id, session, header, &out)
        case .ping(let n):
            out.append(.send(id, .pong(n)))
        case .pong:
            break
        case .error(let code, let text):
            close(id, .agentError(code: code, message: text), &out)
        default:
            refuse(id, ProtocolViolation(code: 400, "unexpected message \(m.type) from an agent"), &out)
        }
    }

    /// A refusal from a check, or a decoding error of the agent's bytes.
    static func violation(_ error: any Error) -> ProtocolViolation {
        if let v = error as? ProtocolViolation { return v }
        if let e = error as? TidemarkError { return ProtocolViolation(code: 400, e.message) }
        return ProtocolViolation(code: 400, "\(error)")
    }

    // MARK: Opening a disk (session rules 2, 5, 8, 10)

    private mutating func openDisk(_ id: SessionID, _ s: Session, agentID: String, diskID: String, sizeBytes: UInt64,
                                   chunkSizeBytes: UInt32, keyID: UInt64, _ out: inout [Effect]) {
        if !s.opened.contains(diskID) && s.opened.count >= configuration.disksPerSessionMax {
            return refuse(id, ProtocolViolation(code: 400, "more than \(configuration.disksPerSessionMax) disks on one connection"), &out)
        }
        // Everything the agent sent is checked before anything is stored or
        // even read: a record, once written, is immutable (session rule 8).
        if let problem = DiskGeometry.problem(sizeBytes: sizeBytes, chunkSizeBytes: chunkSizeBytes) {
            return refuse(id, ProtocolViolation(code: 400, "openDisk of disk \(diskID) refused: \(problem) (docs/wire-format.md, section 6); nothing was stored"), &out)
        }
        let wanted = DiskRecord(diskID: diskID, ownerAgentID: agentID, sizeBytes: sizeBytes, chunkSizeBytes: chunkSizeBytes, keyID: keyID)
        if let record = disks[diskID]?.record {
            // Known since an earlier open: its record is the stored one.
            return checkAndClaim(id, wanted: wanted, against: record, &out)
        }
        sessions[id]!.pending = .lookUp(wanted)
        out.append(.lookUpDisk(id, diskID: diskID))
    }

    private mutating func diskLookedUp(_ id: SessionID, _ diskID: String, _ lookup: DiskLookup, _ out: inout [Effect]) {
        guard case .lookUp(let wanted)? = sessions[id]?.pending, wanted.diskID == diskID else {
            preconditionFailure("diskLookedUp(\(diskID)) for \(id), which did not ask for it")
        }
        sessions[id]!.pending = nil
        guard !sessions[id]!.closed else { return }
        switch lookup {
        case .refused(let v):
            refuse(id, v, &out)
        case .stored(let stored, let committed, let held):
            if let record = disks[diskID]?.record {
                // Another session opened it meanwhile: its record is the one.
                return checkAndClaim(id, wanted: wanted, against: record, &out)
            }
            do {
                try RequestChecks.openDisk(agentID: wanted.ownerAgentID, diskID: diskID, sizeBytes: wanted.sizeBytes,
                                           chunkSizeBytes: wanted.chunkSizeBytes, keyID: wanted.keyID, stored: stored)
            } catch {
                return refuse(id, Self.violation(error), &out)
            }
            if let stored {
                register(stored, committed: committed, held: held)
                claim(id, diskID, &out)
            } else {
                sessions[id]!.pending = .create(wanted, committed: committed, held: held)
                out.append(.createDisk(id, wanted))
            }
        }
    }

    private mutating func diskCreated(_ id: SessionID, _ diskID: String, _ out: inout [Effect]) {
        guard case .create(let wanted, let committed, let held)? = sessions[id]?.pending, wanted.diskID == diskID else {
            preconditionFailure("diskCreated(\(diskID)) for \(id), which did not ask for it")
        }
        sessions[id]!.pending = nil
        guard !sessions[id]!.closed else { return }
        if let record = disks[diskID]?.record {
            return checkAndClaim(id, wanted: wanted, against: record, &out)
        }
        register(wanted, committed: committed, held: held)
        claim(id, diskID, &out)
    }

    private mutating func checkAndClaim(_ id: SessionID, wanted: DiskRecord, against record: DiskRecord, _ out: inout [Effect]) {
        do {
            try RequestChecks.openDisk(agentID: wanted.ownerAgentID, diskID: wanted.diskID, sizeBytes: wanted.sizeBytes,
                                       chunkSizeBytes: wanted.chunkSizeBytes, keyID: wanted.keyID, stored: record)
        } catch {
            return refuse(id, Self.violation(error), &out)
        }
        claim(id, wanted.diskID, &out)
    }

    /// The disk becomes known: everything committed or held counts as
    /// appended and durable (held segments were durable before this run).
    private mutating func register(_ record: DiskRecord, committed: UInt64, held: UInt64) {
        precondition(committed <= SegmentSequence.max && held <= SegmentSequence.max,
                     "the sink reports sequences beyond \(SegmentSequence.max) for \(record.diskID)")
        var d = disks[record.diskID] ?? Disk()
        precondition(d.record == nil, "\(record.diskID) registered twice")
        var highest = max(committed, held)
        if let ceiling = d.heldCeiling { highest = max(committed, min(highest, ceiling)) }
        d.record = record
        d.appended = highest
        d.durable = highest
        d.committed = committed
        d.heldCeiling = nil
        disks[record.diskID] = d
    }

    /// `id` becomes the one session feeding the disk; an older one is
    /// closed. It is answered once the disk is quiet and settled.
    private mutating func claim(_ id: SessionID, _ diskID: String, _ out: inout [Effect]) {
        let previous = disks[diskID]!.owner
        disks[diskID]!.owner = id
        if let previous, previous != id {
            close(previous, .displacedByNewOwner(diskID: diskID, agentID: sessions[id]!.agentID!), &out)
        }
        sessions[id]!.pending = .waiting(diskID: diskID)
        resume(diskID, &out)
    }

    /// What a quiet disk does next: forget a loss, else settle for the
    /// owner that waits.
    private mutating func resume(_ diskID: String, _ out: inout [Effect]) {
        guard let d = disks[diskID], d.appending == nil else { return }
        if let from = d.lostFrom {
            if d.forgetting == nil {
                disks[diskID]!.forgetting = from
                out.append(.forget(diskID: diskID, fromSequence: from))
            }
            return
        }
        guard let owner = d.owner, let s = sessions[owner], !s.closed, s.pending == .waiting(diskID: diskID) else { return }
        sessions[owner]!.pending = .settle(diskID: diskID)
        out.append(.settleDisk(owner, diskID: diskID))
    }

    private mutating func diskSettled(_ id: SessionID, _ diskID: String, _ out: inout [Effect]) {
        guard sessions[id]?.pending == .settle(diskID: diskID) else {
            preconditionFailure("diskSettled(\(diskID)) for \(id), which did not ask for it")
        }
        sessions[id]!.pending = nil
        guard !sessions[id]!.closed, let d = disks[diskID], d.owner == id else { return }
        if d.lostFrom != nil {
            // The sink lost something while settling: answer after the reset.
            sessions[id]!.pending = .waiting(diskID: diskID)
            return resume(diskID, &out)
        }
        precondition(d.appending == nil, "\(diskID) settled for \(id) while a segment of it is being appended")
        // The lineage rule (wire format 4.7): the agent numbers a new epoch
        // from durable + 1, so durable must be everything the sink holds of
        // the disk; else a sealing it holds above would be superseded.
        precondition(d.durable == d.appended,
                     "the sink settled \(diskID) with durable #\(d.durable) below appended #\(d.appended): settling must report every held segment durable or lost")
        sessions[id]!.opened.insert(diskID)
        out.append(.send(id, .diskState(diskID: diskID, durableSequence: d.durable, committedSequence: d.committed)))
    }

    // MARK: Segments (session rules 2-5)

    private mutating func segment(_ id: SessionID, _ s: Session, _ header: SegmentHeader, _ out: inout [Effect]) {
        guard s.agentID != nil else {
            return refuse(id, ProtocolViolation(code: 400, "expected hello as the first message"), &out)
        }
        let diskID = header.diskID
        guard s.opened.contains(diskID), var d = disks[diskID], let record = d.record, d.owner == id else {
            return refuse(id, ProtocolViolation(code: 400, "segment for disk \(diskID), which this connection has not opened"), &out)
        }
        let verdict: RequestChecks.SegmentVerdict
        do {
            verdict = try RequestChecks.segment(diskID: diskID, sequence: header.sequence, keyID: header.keyID,
                                                diskSizeBytes: header.diskSizeBytes, chunkSizeBytes: header.chunkSizeBytes,
                                                extents: header.extents.map { ($0.offset, UInt64($0.length)) },
                                                record: record, appended: d.appended)
        } catch {
            return refuse(id, Self.violation(error), &out)
        }
        switch verdict {
        case .duplicate:
            // A re-send of something held already (resume rule 5):
            // idempotent, acknowledged again, not stored twice.
            out.append(.send(id, .ackDurable(diskID: diskID, sequence: d.durable)))
        case .append:
            d.appended = header.sequence
            d.appending = (id, header.sequence)
            disks[diskID] = d
            sessions[id]!.pending = .append(diskID: diskID, sequence: header.sequence)
            out.append(.append(id, diskID: diskID, sequence: header.sequence))
        }
    }

    private mutating func appendDone(_ id: SessionID, _ diskID: String, _ sequence: UInt64, failed: Bool, _ out: inout [Effect]) {
        guard sessions[id]?.pending == .append(diskID: diskID, sequence: sequence),
              let a = disks[diskID]?.appending, a.session == id, a.sequence == sequence else {
            preconditionFailure("append of \(diskID) #\(sequence) reported for \(id), which was not appending it")
        }
        sessions[id]!.pending = nil
        disks[diskID]!.appending = nil
        if failed {
            precondition(disks[diskID]!.appended == sequence && disks[diskID]!.durable < sequence,
                         "\(diskID) #\(sequence) failed to append but is counted durable")
            disks[diskID]!.appended = sequence - 1
        }
        resume(diskID, &out)
    }

    // MARK: Reports of the sink

    private mutating func durable(_ diskID: String, _ sequence: UInt64, _ out: inout [Effect]) {
        guard let d = disks[diskID], d.record != nil else { return }
        // Held before a loss being forgotten: the sink will not keep it.
        if let from = d.lostFrom, sequence >= from { return }
        precondition(sequence <= d.appended, "the sink reports \(diskID) #\(sequence) durable, beyond #\(d.appended) it was handed")
        guard sequence > d.durable else { return }
        disks[diskID]!.durable = sequence
        if let owner = d.owner, let s = sessions[owner], !s.closed, s.opened.contains(diskID) {
            out.append(.send(owner, .ackDurable(diskID: diskID, sequence: sequence)))
        }
    }

    private mutating func committed(_ diskID: String, _ sequence: UInt64, _ out: inout [Effect]) {
        guard let d = disks[diskID], d.record != nil else { return }
        precondition(sequence <= d.durable, "the sink reports \(diskID) #\(sequence) committed, beyond #\(d.durable) durable")
        guard sequence > d.committed else { return }
        disks[diskID]!.committed = sequence
        if let owner = d.owner, let s = sessions[owner], !s.closed, s.opened.contains(diskID) {
            out.append(.send(owner, .ackCommitted(diskID: diskID, sequence: sequence)))
        }
    }

    private mutating func lost(_ diskID: String, _ from: UInt64, _ out: inout [Effect]) {
        precondition(SegmentSequence.isValid(from), "the sink reports \(diskID) lost from #\(from)")
        var d = disks[diskID] ?? Disk()
        d.lostFrom = min(d.lostFrom ?? from, from)
        // An owner that was told how far the disk is must learn it again:
        // closed, its agent reconnects. One still waiting for its diskState
        // gets the lowered state after the reset.
        var told: SessionID?
        if let owner = d.owner, sessions[owner]?.opened.contains(diskID) == true {
            told = owner
            d.owner = nil
        }
        disks[diskID] = d
        if let told { close(told, .sinkLost(diskID: diskID, fromSequence: from), &out) }
        resume(diskID, &out)
    }

    private mutating func forgotten(_ diskID: String, _ from: UInt64, _ out: inout [Effect]) {
        guard var d = disks[diskID], d.forgetting == from else {
            preconditionFailure("forgotten(\(diskID) from #\(from)), which was not asked for")
        }
        d.forgetting = nil
        if d.record != nil {
            d.appended = min(d.appended, from - 1)
            d.durable = min(d.durable, from - 1)
            precondition(d.committed <= d.durable, "\(diskID): the sink lost #\(from), at or below committed #\(d.committed)")
        } else {
            d.heldCeiling = min(d.heldCeiling ?? (from - 1), from - 1)
        }
        // A loss below this one reported meanwhile needs its own forget;
        // one at or above it is covered (nothing was appended since).
        if let lowest = d.lostFrom, lowest >= from { d.lostFrom = nil }
        disks[diskID] = d
        // Next: another forget, or the owner that waited for the reset.
        resume(diskID, &out)
    }

    private mutating func ended(_ id: SessionID) {
        guard let s = sessions.removeValue(forKey: id) else { preconditionFailure("\(id) ended twice, or was never accepted") }
        if case .append? = s.pending { preconditionFailure("\(id) ended with a segment being appended; report its outcome first") }
        if s.agentID != nil { authenticatedCount -= 1 }
        // Every disk it owns (opened, or claimed and not answered yet).
        for (diskID, d) in disks where d.owner == id { disks[diskID]!.owner = nil }
    }

    // MARK: Invariants

    /// What is wrong with the state (nil: nothing). Asserted after every
    /// event; tests call it too.
    func invariantProblem() -> String? {
        var authenticated = 0
        for (id, s) in sessions {
            if s.agentID != nil { authenticated += 1 }
            if s.agentID != nil && s.inPool { return "\(id) is authenticated and still in the unauthenticated pool" }
            if s.opened.count > configuration.disksPerSessionMax { return "\(id) opened \(s.opened.count) disks" }
            if let p = s.pending {
                guard let d = disks[p.diskID] else {
                    if case .lookUp = p { continue }
                    if case .create = p { continue }
                    return "\(id) waits for \(p) of an unknown disk"
                }
                if case .append(_, let seq) = p, d.appending?.session != id || d.appending?.sequence != seq {
                    return "\(id) waits for the append of #\(seq), which its disk does not record"
                }
            }
        }
        if authenticated != authenticatedCount { return "authenticatedCount \(authenticatedCount), sessions say \(authenticated)" }
        for (diskID, d) in disks {
            guard d.record != nil else {
                if d.owner != nil || d.appending != nil || d.appended != 0 { return "\(diskID) has no record but is in use" }
                continue
            }
            if !(d.committed <= d.durable && d.durable <= d.appended && d.appended <= SegmentSequence.max) {
                return "\(diskID): committed \(d.committed) ≤ durable \(d.durable) ≤ appended \(d.appended) does not hold"
            }
            if let a = d.appending {
                if a.sequence != d.appended { return "\(diskID): #\(a.sequence) being appended is not the highest appended (#\(d.appended))" }
                if sessions[a.session] == nil { return "\(diskID): appended by \(a.session), which has ended" }
            }
            if let o = d.owner {
                guard let s = sessions[o] else { return "\(diskID) is owned by \(o), which has ended" }
                if s.agentID == nil { return "\(diskID) is owned by \(o), which is not authenticated" }
                if s.agentID != d.record!.ownerAgentID { return "\(diskID) is owned by agent \(s.agentID!), its record names \(d.record!.ownerAgentID)" }
            }
            if let f = d.forgetting, d.lostFrom.map({ $0 > f }) ?? false { return "\(diskID) forgets from #\(f) but its loss is from #\(d.lostFrom!)" }
            if d.forgetting != nil && d.appending != nil { return "\(diskID) is forgotten while a segment of it is being appended" }
        }
        return nil
    }

    // MARK: Digest answers (session rule 7)

    /// The `chunkDigests` answer to a digest request, in the session's
    /// protocol version: a version 2 agent computes only construction 2
    /// digests, so construction 3 ones go to it as 'unknown' (it then sends
    /// those chunks).
    public static func chunkDigestsMessage(diskID: String, firstChunk: UInt64, sequence: UInt64, states: [ChunkState],
                                           protocolVersion: UInt16) -> WireMessage {
        var states = states
        if protocolVersion < 3 {
            states = states.map { if case .data(_, .gmacAES) = $0 { .unknown } else { $0 } }
        }
        return .chunkDigests(diskID: diskID, firstChunk: firstChunk, sequence: sequence, states: states)
    }
}
