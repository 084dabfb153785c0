import Foundation
import Glibc
import TidemarkSystem
import TidemarkTarget
import TidemarkTransport
import TidemarkWire

/// The process server: TLS ingest → durable spool → upload to target storage,
/// with the two acknowledgements of docs/design.md ("durable", "committed").
/// A shell around two parts: the `ReplicationReceiver` (the rules of
/// ingest, a pure state machine, under `lock`) and the `SpoolTargetSink`
/// (spool, uploader, target storage). This class owns the sockets, TLS and
/// threads, feeds the receiver what happens, and carries out its effects
/// (docs/server-ingest.md).
///
/// Threads: one accept loop, one thread per connection (bounded by the
/// unauthenticated pool and `maxConnections`), the sink's spool sync thread
/// (group commit) and uploader, one pruner, one deadline checker.
/// Connections never share a TLS stream across threads: each connection's
/// thread reads frames and writes everything sent on it; other threads
/// queue messages and work for it (`Connection.post`). The receiver is
/// touched only under `lock`, and no sink call is made under it.
public final class ProcessServer: @unchecked Sendable {
    public struct Options: Sendable {
        public var serverID: String
        public var listenHost: String
        public var listenPort: UInt16
        public var tls: TLSFiles
        public var spoolDir: String
        public var spoolMaxBytes: UInt64
        public var targetPath: String
        public var maxConnections: Int
        public var retentionSeconds: Int
        public var pruneIntervalSeconds: Int
        /// Bytes of buffers holding received segments until committed (0: every one is read back from the spool).
        public var uploadMemoryBytes: Int
        /// Incoming bytes per second over all agents (`bandwidth_limit`); 0 = unlimited.
        public var bandwidthLimitBytesPerSecond: UInt64

        public init(serverID: String, listenHost: String, listenPort: UInt16, tls: TLSFiles, spoolDir: String,
                    spoolMaxBytes: UInt64, targetPath: String, maxConnections: Int, retentionSeconds: Int,
                    pruneIntervalSeconds: Int, uploadMemoryBytes: Int, bandwidthLimitBytesPerSecond: UInt64 = 0) {
            self.serverID = serverID
            self.listenHost = listenHost
            self.listenPort = listenPort
            self.tls = tls
            self.spoolDir = spoolDir
            self.spoolMaxBytes = spoolMaxBytes
            self.targetPath = targetPath
            self.maxConnections = maxConnections
            self.retentionSeconds = retentionSeconds
            self.pruneIntervalSeconds = pruneIntervalSeconds
            self.uploadMemoryBytes = uploadMemoryBytes
            self.bandwidthLimitBytesPerSecond = bandwidthLimitBytesPerSecond
        }
    }

    /// The options, of which `reload` may change the TLS files, retention,
    /// prune interval and connection limit (read them under `lock`).
    public private(set) var options: Options
    /// Where accepted segments go; every target-storage call is in it.
    let sink: SpoolTargetSink
    private var currentTLSContext: TLSContext
    /// The TLS context new connections use (swapped by `reload`).
    var tlsContext: TLSContext {
        lock.lock()
        defer { lock.unlock() }
        return currentTLSContext
    }
    let listener: TCPListener
    let lock = NSLock()
    /// The rules of ingest. Guarded by `lock`.
    var receiver: ReplicationReceiver
    /// The open connections by session. Guarded by `lock`.
    var connections: [ReplicationReceiver.SessionID: Connection] = [:]
    private var nextSession: UInt64 = 1
    private var stopped = false
    /// Unauthenticated connections displaced from the pool since the last
    /// log line about them (the accept thread's alone).
    private var displacedCount = 0
    private var displacedLoggedNs: UInt64 = 0

    /// The server's metrics (docs/metrics.md).
    public let metrics: ServerMetrics
    /// The incoming bandwidth cap every connection pays into before it
    /// reads a segment's payload.
    let ingestBandwidth: TokenBucket

    /// The port actually listened on (useful with port 0 in tests).
    public var port: UInt16 { listener.port }

    public init(options: Options) throws {
        if let problem = ServerLimits.relationProblem() { preconditionFailure("ServerLimits: \(problem)") }
        self.options = options
        self.currentTLSContext = try TLSContext.server(options.tls)
        self.metrics = ServerMetrics()
        self.ingestBandwidth = TokenBucket(bytesPerSecond: options.bandwidthLimitBytesPerSecond)
        self.sink = try SpoolTargetSink(serverID: options.serverID, spoolDir: options.spoolDir, spoolMaxBytes: options.spoolMaxBytes,
                                        targetPath: options.targetPath, uploadMemoryBytes: options.uploadMemoryBytes, metrics: metrics)
        self.receiver = ReplicationReceiver(configuration: .init(serverID: options.serverID, maxConnections: options.maxConnections))
        self.listener = try TCPListener(host: options.listenHost, port: options.listenPort)
        sink.onReport = { [unowned self] reports in
            for r in reports {
                // Reports lead only to messages, closes, forgets and work
                // queued for connections: nothing here throws.
                do { try self.feed(r.event, from: nil) } catch { Log.error("handling the sink's report \(r): \(error)") }
            }
        }
    }

    /// Serves until `stop()`; returns once the connections have ended and
    /// the server's own threads have (at most `ServerLimits.stopThreadsWaitMs`
    /// for those: the uploader finishes the batch it is storing).
    public func run() {
        let ended = DispatchSemaphore(value: 0)
        let own: [(String, @Sendable () -> Void)] = [
            ("spool sync", { self.sink.runSyncLoop() }), ("uploader", { self.sink.runUploader() }),
            ("pruner", { self.runPruner() }), ("deadlines", { self.runDeadlines() }),
        ]
        let running = FinishedNames(own.map(\.0))
        for (name, body) in own {
            Thread { body(); running.finished(name); ended.signal() }.start()
        }
        Log.info("\(options.serverID): listening on \(options.listenHost):\(port) (TLS 1.3, client certificates required); spool \(options.spoolDir); target \(options.targetPath)")
        while let socket = try? listener.accept() {
            // Unauthenticated connections have a pool of their own: a new
            // one displaces the oldest rather than wait or be refused, so a
            // flood cannot keep an agent out (ServerLimits).
            metrics.connectionAccepted()
            lock.lock()
            let c = Connection(server: self, id: ReplicationReceiver.SessionID(nextSession), socket: socket)
            nextSession += 1
            connections[c.id] = c
            let effects = receiver.handle(.accepted(c.id, source: c.source, nowNs: c.acceptedNs))
            lock.unlock()
            // At most the close of a displaced connection: nothing throws.
            do { try perform(effects, from: nil, segment: nil) } catch { Log.error("accepting \(c.peer): \(error)") }
            let t = Thread { c.serve(); self.connectionEnded(c) }
            t.start()
        }
        // Stopping: close connections, let the threads drain.
        lock.lock()
        let open = Array(connections.values)
        lock.unlock()
        for c in open { c.close() }
        while true {
            lock.lock()
            let n = connections.count
            lock.unlock()
            if n == 0 { break }
            usleep(10_000)
        }
        sink.stop()
        let deadline = DispatchTime.now() + .milliseconds(ServerLimits.stopThreadsWaitMs)
        for _ in own where ended.wait(timeout: deadline) == .timedOut {
            Log.error("\(options.serverID): stopping without waiting longer for \(running.left.joined(separator: ", ")) (\(ServerLimits.stopThreadsWaitMs / 1000) s): what it was storing stays in the spool for the next start")
            break
        }
        sink.shutdown()
        Log.info("\(options.serverID): stopped")
    }

    public func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
        listener.close()
    }

    var isStopped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopped
    }

    // MARK: The receiver

    /// A segment a connection's thread holds while the receiver decides on it.
    struct SegmentInHand {
        var header: SegmentHeader
        var bytes: UnsafeRawBufferPointer
        var buffer: (any SegmentBuffer)?
    }

    /// Feeds `event` to the receiver and carries out its effects on the
    /// calling thread: connection `c`'s (whose `segment` it holds), or nil
    /// for the accept thread and the sink's. Throws when the receiver ended
    /// `c`'s session (a `ProtocolViolation` for a refusal) or a sink call
    /// for it failed.
    func feed(_ event: ReplicationReceiver.Event, from c: Connection?, segment: SegmentInHand? = nil) throws {
        lock.lock()
        let effects = receiver.handle(event)
        lock.unlock()
        try perform(effects, from: c, segment: segment)
    }

    /// Every effect is carried out even when one fails (others' sessions
    /// may depend on the rest); the first failure is thrown at the end.
    private func perform(_ effects: [ReplicationReceiver.Effect], from c: Connection?, segment: SegmentInHand?) throws {
        var failure: (any Error)?
        func run(_ body: () throws -> Void) {
            do { try body() } catch { if failure == nil { failure = error } }
        }
        /// The effects that only the session's own thread can carry out.
        func own(_ s: ReplicationReceiver.SessionID, _ effect: ReplicationReceiver.Effect) -> Connection {
            guard let c, c.id == s else { preconditionFailure("\(effect) for \(s) on another thread") }
            return c
        }
        for effect in effects {
            switch effect {
            case .send(let s, let message):
                connection(s)?.post(message)
            case .authenticated(let s, let agentID, let version):
                let c = own(s, effect)
                run { try c.didAuthenticate(agentID: agentID, protocolVersion: version) }
            case .close(let s, let reason):
                if s == c?.id {
                    if failure == nil { failure = ending(c!, reason) }
                } else {
                    closeOther(s, reason)
                }
            case .lookUpDisk(let s, let diskID):
                let c = own(s, effect)
                run { try feed(.diskLookedUp(s, diskID: diskID, try sink.lookUpDisk(diskID)), from: c, segment: segment) }
            case .createDisk(let s, let record):
                let c = own(s, effect)
                run {
                    try sink.createDisk(record)
                    try feed(.diskCreated(s, diskID: record.diskID), from: c, segment: segment)
                }
            case .append(let s, let diskID, let sequence):
                let c = own(s, effect)
                guard let segment, segment.header.diskID == diskID, segment.header.sequence == sequence else {
                    preconditionFailure("append of \(diskID) #\(sequence) without that segment in hand")
                }
                run {
                    do {
                        try sink.append(segment.header, bytes: segment.bytes, buffer: segment.buffer,
                                        abandon: { c.isClosed || self.isStopped })
                    } catch {
                        try? feed(.appendFailed(s, diskID: diskID, sequence: sequence), from: c)
                        throw error
                    }
                    try feed(.appended(s, diskID: diskID, sequence: sequence), from: c)
                }
            case .settleDisk(let s, let diskID):
                if s == c?.id {
                    run {
                        try sink.settle(diskID: diskID)
                        try feed(.diskSettled(s, diskID: diskID), from: c)
                    }
                } else {
                    // The session waited for another's append or a loss: its own thread settles.
                    connection(s)?.post(work: effect)
                }
            case .answerDigests(let s, let diskID, let first, let count, let version):
                let c = own(s, effect)
                run {
                    let (sequence, states) = try sink.chunkStates(diskID: diskID, firstChunk: first, count: Int(count))
                    c.post(ReplicationReceiver.chunkDigestsMessage(diskID: diskID, firstChunk: first, sequence: sequence,
                                                                   states: states, protocolVersion: version))
                }
            case .forget(let diskID, let from):
                sink.forget(diskID: diskID, fromSequence: from)
                run { try feed(.forgotten(diskID: diskID, fromSequence: from), from: c) }
            }
        }
        if let failure { throw failure }
    }

    /// Work the receiver addressed to `c`'s session from another thread.
    func performPosted(_ effect: ReplicationReceiver.Effect, on c: Connection) throws {
        try perform([effect], from: c, segment: nil)
    }

    private func connection(_ s: ReplicationReceiver.SessionID) -> Connection? {
        lock.lock()
        defer { lock.unlock() }
        return connections[s]
    }

    /// How `c`'s own session ends: a refusal is thrown as the violation
    /// (its thread sends the error frame), the rest quietly.
    private func ending(_ c: Connection, _ reason: ReplicationReceiver.CloseReason) -> any Error {
        switch reason {
        case .refused(let v):
            return v
        case .agentError(let code, let message):
            Log.warning("\(c.peer): agent \(c.agentName) reports error \(code): \(message)")
        case .displacedFromPool, .displacedByNewOwner, .sinkLost:
            break
        }
        return Connection.EndedQuietly()
    }

    /// Closes another session's connection from this thread (its own
    /// thread wakes and ends).
    private func closeOther(_ s: ReplicationReceiver.SessionID, _ reason: ReplicationReceiver.CloseReason) {
        guard let victim = connection(s) else { return }
        switch reason {
        case .displacedByNewOwner(let diskID, let agentID):
            Log.info("\(diskID): a new connection from \(agentID) takes over; closing the old one")
        case .displacedFromPool:
            // Only the accept thread displaces from the pool.
            displacedCount += 1
            let now = monotonicNanoseconds()
            if displacedLoggedNs == 0 || now - displacedLoggedNs >= UInt64(ServerLimits.displacedLogIntervalMs) * 1_000_000 {
                Log.warning("\(displacedCount) unauthenticated connection\(displacedCount == 1 ? "" : "s") closed to make room (the latest from \(victim.peer)): more than \(ServerLimits.unauthenticatedConnectionsMax) connections, or \(ServerLimits.unauthenticatedPerSourceMax) from one address, had not completed the TLS handshake and hello; the oldest gives way to the newest. A flood of connections that never authenticate looks like this; agents still get in")
                displacedCount = 0
                displacedLoggedNs = now
            }
        case .refused(let v):
            Log.warning("\(victim.logName): \(v.message); closing the connection")
        case .sinkLost, .agentError:
            break
        }
        victim.close()
    }

    /// `c`'s session waits for a completion or for a disk to be quiet.
    func isBusy(_ c: Connection) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return receiver.isBusy(c.id)
    }

    func mayReceiveSegments(_ c: Connection, diskID: String) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return receiver.mayReceiveSegments(c.id, diskID: diskID)
    }

    func connectionEnded(_ c: Connection) {
        lock.lock()
        connections[c.id] = nil
        let effects = receiver.handle(.ended(c.id))
        lock.unlock()
        precondition(effects.isEmpty, "the end of a session has no effects")
    }

    /// Cuts connections past their deadline (the handshake and hello from
    /// the accept; each whole frame from its first byte), checking every
    /// `ServerLimits.deadlineCheckMs`.
    /// Cuts of unauthenticated connections are logged at most once per
    /// `ServerLimits.displacedLogIntervalMs` (with a count): a flood of them
    /// must not flood the log. An authenticated agent's cut is always logged.
    private func runDeadlines() {
        var unauthenticatedCuts = 0
        var loggedNs: UInt64 = 0
        while !isStopped {
            usleep(useconds_t(ServerLimits.deadlineCheckMs * 1000))
            lock.lock()
            let open = connections.map { ($0.value, receiver.isUnauthenticated($0.key)) }
            lock.unlock()
            let now = monotonicNanoseconds()
            for (c, unauthenticated) in open {
                guard let late = c.expiredDeadline(nowNs: now) else { continue }
                // Logged before the cut: whoever sees the connection end finds the reason in the log.
                let line = "\(c.logName): \(late.what) did not complete within \(late.limitMs) ms; closing the connection (docs/wire-format.md, session rule 9)"
                if !unauthenticated {
                    Log.warning(line)
                } else {
                    unauthenticatedCuts += 1
                    if loggedNs == 0 || now - loggedNs >= UInt64(ServerLimits.displacedLogIntervalMs) * 1_000_000 {
                        Log.warning(unauthenticatedCuts == 1 ? line : "\(line) (\(unauthenticatedCuts) unauthenticated connections cut since the last such line)")
                        unauthenticatedCuts = 0
                        loggedNs = now
                    }
                }
                c.close()
            }
        }
    }

    /// Applies what can change while serving: the TLS files (new
    /// connections use them; a bad file keeps the old ones and throws),
    /// retention, prune interval and connection limit. Returns the keys
    /// that changed.
    public func reload(_ new: Options) throws -> [String] {
        var applied: [String] = []
        // Certificates are re-read even under unchanged names: renewing them
        // in place is the usual rotation.
        let context = try TLSContext.server(new.tls)
        applied.append("tls")
        lock.lock()
        currentTLSContext = context
        if new.retentionSeconds != options.retentionSeconds { applied.append("retention") }
        if new.pruneIntervalSeconds != options.pruneIntervalSeconds { applied.append("prune_interval") }
        if new.maxConnections != options.maxConnections { applied.append("max_connections") }
        options.tls = new.tls
        options.retentionSeconds = new.retentionSeconds
        options.pruneIntervalSeconds = new.pruneIntervalSeconds
        options.maxConnections = new.maxConnections
        receiver.configuration.maxConnections = new.maxConnections
        lock.unlock()
        return applied
    }

    private func runPruner() {
        // Monotonic, so setting the wall clock neither skips nor repeats a run.
        var lastRun: Double? = nil
        while !isStopped {
            usleep(200_000)
            lock.lock()
            let interval = options.pruneIntervalSeconds
            lock.unlock()
            let now = SystemClock.monotonicSeconds()
            if let lastRun, now - lastRun < Double(interval) { continue }
            lastRun = now
            pruneOnce()
        }
    }

    /// Expires recovery points older than the retention on every disk opened since the start.
    public func pruneOnce() {
        lock.lock()
        let retention = options.retentionSeconds
        let ids = receiver.openedDiskIDs
        lock.unlock()
        sink.prune(diskIDs: ids, retentionSeconds: retention)
    }
}

/// The names of threads still running, for the message of a stop that
/// gives up waiting. Thread-safe.
final class FinishedNames: @unchecked Sendable {
    private let lock = NSLock()
    private var names: [String]
    init(_ names: [String]) { self.names = names }
    func finished(_ name: String) { lock.lock(); names.removeAll { $0 == name }; lock.unlock() }
    var left: [String] { lock.lock(); defer { lock.unlock() }; return names }
}
