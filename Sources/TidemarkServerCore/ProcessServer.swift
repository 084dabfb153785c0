import Foundation
import Glibc
import TidemarkSystem
import TidemarkTarget
import TidemarkWire

/// The process server: TLS ingest → durable spool → upload to target storage,
/// with the two acknowledgements of docs/design.md ("durable", "committed").
///
/// Threads: one accept loop, one thread per connection (bounded by
/// `maxConnections`), one spool sync thread (group commit), one uploader,
/// one pruner. Connections never share a TLS stream across threads: each
/// connection's thread reads frames and writes its own acknowledgements.
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

        public init(serverID: String, listenHost: String, listenPort: UInt16, tls: TLSFiles, spoolDir: String,
                    spoolMaxBytes: UInt64, targetPath: String, maxConnections: Int, retentionSeconds: Int,
                    pruneIntervalSeconds: Int, uploadMemoryBytes: Int) {
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
        }
    }

    /// What the server knows of one disk.
    final class DiskIngest {
        let record: DiskRecord
        var appended: UInt64
        var durable: UInt64
        var committed: UInt64
        weak var owner: Connection?
        /// Segments of this disk between their checks and their append (at
        /// most one per connection): a new owner waits for them to finish.
        var ingestsInFlight = 0
        /// The uploader is throwing away spooled segments that cannot be
        /// uploaded (`discardUnreadable`): no connection may open the disk meanwhile.
        var resetting = false
        init(record: DiskRecord, appended: UInt64, committed: UInt64) {
            self.record = record
            self.appended = appended
            self.durable = appended
            self.committed = committed
        }
    }

    /// The options, of which `reload` may change the TLS files, retention,
    /// prune interval and connection limit (read them under `lock`).
    public private(set) var options: Options
    let target: LocalDirectoryTarget
    let spool: Spool
    private var currentTLSContext: TLSContext
    /// The TLS context new connections use (swapped by `reload`).
    var tlsContext: TLSContext {
        lock.lock()
        defer { lock.unlock() }
        return currentTLSContext
    }
    let listener: TCPListener
    let lock = NSLock()
    var disks: [String: DiskIngest] = [:]
    /// Highest sequence per disk found in the spool at startup (not yet uploaded).
    var spooledHighest: [String: UInt64] = [:]
    var connections: [ObjectIdentifier: Connection] = [:]
    /// Of `connections`, those that have not completed the handshake and
    /// hello (bounded by `ServerLimits.unauthenticatedConnectionsMax`), and
    /// those that have (bounded by `options.maxConnections`).
    var handshaking: [ObjectIdentifier: Connection] = [:]
    var authenticatedConnections: Set<ObjectIdentifier> = []
    /// Chunk digest indexes of the disks opened so far (docs/target-layout.md section 9).
    var digestIndexes: [String: DigestIndex] = [:]
    let indexOpenLock = NSLock()
    let uploads = UploadQueue()
    /// Threads that write and fsync the objects of an upload batch beside the uploader's.
    let syncPool = WorkerPool(threads: ServerLimits.uploadSyncThreads - 1)
    /// Received payloads kept in memory, each as its target object's aligned
    /// buffer, until committed (bounded by `options.uploadMemoryBytes`):
    /// the uploader writes them with O_DIRECT instead of reading the spool.
    let staging: SegmentStaging
    /// Per disk: spooled segments from this sequence on that were appended
    /// before this spool position are never acknowledged or uploaded (one of
    /// them could not be read back; the agent re-sends them). Guarded by `lock`.
    private var discarded: [String: (fromSequence: UInt64, before: (fileIndex: UInt64, offset: UInt64))] = [:]
    private var stopped = false
    /// Disks whose stored record is unusable, with the refusal to send
    /// (`storedDisk`). Guarded by `lock`.
    private var quarantined: [String: String] = [:]

    /// The port actually listened on (useful with port 0 in tests).
    public var port: UInt16 { listener.port }

    public init(options: Options) throws {
        if let problem = ServerLimits.relationProblem() { preconditionFailure("ServerLimits: \(problem)") }
        self.options = options
        self.currentTLSContext = try TLSContext.server(options.tls)
        self.target = try LocalDirectoryTarget(root: options.targetPath)
        self.staging = SegmentStaging(bytesMax: options.uploadMemoryBytes, idleBuffersMax: ServerLimits.stagedIdleBuffersMax)
        let (spool, spooled) = try Spool.open(directory: options.spoolDir, maxBytes: options.spoolMaxBytes) { bytes in
            let (h, _) = try SegmentHeader.decode(bytes)
            return (h.diskID, h.sequence)
        }
        self.spool = spool
        self.listener = try TCPListener(host: options.listenHost, port: options.listenPort)
        // A record no server accepts today (an older server's, or damaged
        // yet with a valid checksum) is never uploaded nor counted.
        let (usable, unusable) = (spooled.filter { SegmentSequence.isValid($0.sequence) },
                                  spooled.filter { !SegmentSequence.isValid($0.sequence) })
        for r in unusable {
            Log.error("spool \(options.spoolDir): a record of \(r.diskID) has sequence \(r.sequence), outside \(SegmentSequence.min)...\(SegmentSequence.max); it is dropped (never uploaded)")
            spool.release(r)
        }
        let leftover = usable
        for r in leftover { spooledHighest[r.diskID] = max(spooledHighest[r.diskID] ?? 0, r.sequence) }
        if !leftover.isEmpty {
            Log.info("spool \(options.spoolDir): \(leftover.count) segments from an earlier run still to upload")
        }
        uploads.push(leftover)
        spool.onDurable = { [unowned self] records in self.recordsDurable(records) }
        spool.onDropped = { [unowned self] records in self.recordsDropped(records) }
    }

    /// Serves until `stop()`; returns after every thread has finished.
    public func run() {
        let syncThread = Thread { self.spool.runSyncLoop() }
        let uploadThread = Thread { self.runUploader() }
        let pruneThread = Thread { self.runPruner() }
        let deadlineThread = Thread { self.runDeadlines() }
        for t in [syncThread, uploadThread, pruneThread, deadlineThread] { t.start() }
        Log.info("\(options.serverID): listening on \(options.listenHost):\(port) (TLS 1.3, client certificates required); spool \(options.spoolDir); target \(options.targetPath)")
        var displaced = 0
        var displacedLoggedNs: UInt64 = 0
        while let socket = try? listener.accept() {
            // Unauthenticated connections have a pool of their own: a new
            // one displaces the oldest rather than wait or be refused, so a
            // flood cannot keep an agent out (ServerLimits).
            let c = Connection(server: self, socket: socket)
            lock.lock()
            let victim = displacedBy(c)
            connections[ObjectIdentifier(c)] = c
            handshaking[ObjectIdentifier(c)] = c
            lock.unlock()
            if let victim {
                victim.close()
                displaced += 1
                let now = monotonicNanoseconds()
                if displacedLoggedNs == 0 || now - displacedLoggedNs >= UInt64(ServerLimits.displacedLogIntervalMs) * 1_000_000 {
                    Log.warning("\(displaced) unauthenticated connection\(displaced == 1 ? "" : "s") closed to make room (the latest from \(victim.peer)): more than \(ServerLimits.unauthenticatedConnectionsMax) connections, or \(ServerLimits.unauthenticatedPerSourceMax) from one address, had not completed the TLS handshake and hello; the oldest gives way to the newest. A flood of connections that never authenticate looks like this; agents still get in")
                    displaced = 0
                    displacedLoggedNs = now
                }
            }
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
        uploads.stop()
        spool.stop()
        usleep(50_000)
        // A batch still being stored finishes on the uploader's own thread.
        syncPool.shutdown()
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

    /// The unauthenticated connection `c` displaces, if any: the oldest of
    /// its source address when that has `unauthenticatedPerSourceMax`
    /// already, else the oldest of all when the pool is full — of those
    /// still in the TLS handshake if there are any. Under `lock`.
    private func displacedBy(_ c: Connection) -> Connection? {
        let pool = Array(handshaking.values)
        let candidates = pool.map { UnauthenticatedConnection(source: $0.source, acceptedNs: $0.acceptedNs, pastTLSHandshake: $0.pastTLSHandshake) }
        guard let i = Self.displaced(among: candidates, newSource: c.source) else { return nil }
        let victim = pool[i]
        handshaking[ObjectIdentifier(victim)] = nil
        return victim
    }

    /// What the displacement policy knows of an unauthenticated connection.
    struct UnauthenticatedConnection {
        var source: String
        var acceptedNs: UInt64
        var pastTLSHandshake: Bool
    }

    /// The index in `pool` of the connection a new one from `newSource`
    /// displaces, nil when it fits (ServerLimits, docs/wire-format.md
    /// session rule 9): when its address has
    /// `unauthenticatedPerSourceMax` already, one of those; else, when the
    /// pool has `unauthenticatedConnectionsMax`, one of all. Of them, one
    /// still in the TLS handshake before one past it (it has shown a
    /// certificate of the CA and lacks only its hello), then the oldest.
    static func displaced(among pool: [UnauthenticatedConnection], newSource: String) -> Int? {
        let first = { (a: Int, b: Int) in
            pool[a].pastTLSHandshake != pool[b].pastTLSHandshake ? !pool[a].pastTLSHandshake : pool[a].acceptedNs < pool[b].acceptedNs
        }
        let sameSource = pool.indices.filter { pool[$0].source == newSource }
        if sameSource.count >= ServerLimits.unauthenticatedPerSourceMax { return sameSource.min(by: first) }
        if pool.count >= ServerLimits.unauthenticatedConnectionsMax { return pool.indices.min(by: first) }
        return nil
    }

    /// `c` completed its handshake and hello: it leaves the unauthenticated
    /// pool and counts towards `max_connections`. Returns why it may not
    /// (then it is refused), nil when it may go on.
    func authenticated(_ c: Connection) -> String? {
        lock.lock()
        defer { lock.unlock() }
        let id = ObjectIdentifier(c)
        guard handshaking[id] != nil else {
            return "the connection was closed to make room for newer unauthenticated ones; connect again"
        }
        guard authenticatedConnections.count < options.maxConnections else {
            return "process server \(options.serverID) serves \(options.maxConnections) agent connections already (max_connections); try again later"
        }
        handshaking[id] = nil
        authenticatedConnections.insert(id)
        return nil
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
            let open = connections.map { ($0.value, handshaking[$0.key] != nil) }
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

    func connectionEnded(_ c: Connection) {
        lock.lock()
        connections[ObjectIdentifier(c)] = nil
        handshaking[ObjectIdentifier(c)] = nil
        authenticatedConnections.remove(ObjectIdentifier(c))
        for d in disks.values where d.owner === c { d.owner = nil }
        lock.unlock()
    }

    // MARK: Disks

    /// Registers `c` as the one connection feeding `diskID` (an older one is
    /// closed), makes everything spooled durable, and returns what the agent
    /// must not re-send.
    func openDisk(_ c: Connection, agentID: String, diskID: String, sizeBytes: UInt64, chunkSizeBytes: UInt32,
                  keyID: UInt64) throws -> (durable: UInt64, committed: UInt64) {
        // Everything the agent sent is checked before anything is stored:
        // a record, once written, is immutable (docs/wire-format.md, session rule 8).
        if let problem = DiskGeometry.problem(sizeBytes: sizeBytes, chunkSizeBytes: chunkSizeBytes) {
            throw ProtocolViolation(code: 400, "openDisk of disk \(diskID) refused: \(problem) (docs/wire-format.md, section 6); nothing was stored")
        }
        let stored = try storedDisk(diskID)
        try RequestChecks.openDisk(agentID: agentID, diskID: diskID, sizeBytes: sizeBytes, chunkSizeBytes: chunkSizeBytes,
                                   keyID: keyID, stored: stored)
        let wanted = DiskRecord(diskID: diskID, ownerAgentID: agentID, sizeBytes: sizeBytes,
                                chunkSizeBytes: chunkSizeBytes, keyID: keyID)
        let record: DiskRecord
        if let existing = stored {
            record = existing
        } else {
            try target.putDisk(wanted)
            record = wanted
        }
        lock.lock()
        let ingest: DiskIngest
        while let d = disks[diskID], d.resetting {
            lock.unlock()
            usleep(10_000)
            if isStopped { throw TidemarkError(.state, "the server is stopping") }
            lock.lock()
        }
        if let d = disks[diskID] {
            ingest = d
        } else {
            let committed = try target.committedSequence(diskID: diskID)
            ingest = DiskIngest(record: record, appended: max(committed, spooledHighest[diskID] ?? 0), committed: committed)
            disks[diskID] = ingest
        }
        let previous = ingest.owner
        ingest.owner = c
        lock.unlock()
        if let previous, previous !== c {
            Log.info("\(diskID): a new connection from \(agentID) takes over; closing the old one")
            previous.close()
            // A segment the old connection is appending (perhaps waiting for
            // spool space) is appended or abandoned before the new owner
            // learns how far the disk is: never both connections at once.
            waitForIngests(ingest)
        }
        // Whatever the old connection appended becomes durable (or is dropped)
        // before we say how far the disk is.
        spool.syncAll()
        // Bring the digest index up to the committed sequence now, not in the
        // middle of the agent's first digest request.
        do {
            _ = try digestIndex(diskID)
        } catch {
            Log.warning("\(diskID): the chunk digest index is unavailable: \(error); digest requests are answered 'unknown' (the agent sends those chunks)")
        }
        lock.lock()
        defer { lock.unlock() }
        return (ingest.durable, ingest.committed)
    }

    /// The stored record of a disk (nil: none yet), checked. A record that
    /// cannot be used — damaged, or with a geometry no server accepts today
    /// (written by an older one) — quarantines the disk: one log line says
    /// what is wrong, where and what to do, and the disk is refused (error
    /// 500) until the server restarts with the target fixed. Its files are
    /// left as they are. Never a crash: nothing is computed from such a record.
    func storedDisk(_ diskID: String) throws -> DiskRecord? {
        lock.lock()
        let known = quarantined[diskID]
        lock.unlock()
        if let known { throw ProtocolViolation(code: 500, known, logged: true) }
        var problem: String?
        var record: DiskRecord?
        do {
            record = try target.disk(diskID)
            if let r = record { problem = RequestChecks.storedRecordProblem(r) }
        } catch let e as TidemarkError where e.kind == .corrupt {
            problem = e.message
        }
        guard let problem else { return record }
        let message = "disk \(diskID) is quarantined on process server \(options.serverID): its stored record is unusable (\(problem)); the operator must repair the target (see the server's log); replication of this disk stops until then"
        lock.lock()
        let first = quarantined[diskID] == nil
        quarantined[diskID] = message
        lock.unlock()
        if first {
            Log.error("disk \(diskID) quarantined: its record \(target.diskRecordPath(diskID)) is unusable: \(problem). This server refuses the disk (error 500) and changes none of its files. To replicate it afresh, move \(target.diskDir(diskID)) out of \(options.targetPath)/disks (keep it for inspection) and restart tidemark-server, then the agent sends the whole disk again; or restore the record from a backup of the target and restart tidemark-server")
        }
        throw ProtocolViolation(code: 500, message, logged: true)
    }

    /// A staged segment (its target object's buffer) for the segment of
    /// `segmentBytes` that `header` starts, for the connection to read into;
    /// nil when the staging budget is spent (the uploader then reads the
    /// segment back from the spool).
    func stage(_ header: SegmentHeader, segmentBytes: Int) -> StagedSegment? {
        let shape = Self.targetShape(header)
        return staging.reserve(diskID: header.diskID, extents: shape.extents, point: shape.point, payloadBytes: segmentBytes)
    }

    /// Appends a received segment (`bytes`, which are `staged`'s payload
    /// when it was staged) to the spool after its checks against the disk's
    /// state; the durable acknowledgement follows from the sync thread.
    func ingest(_ c: Connection, header: SegmentHeader, bytes: UnsafeRawBufferPointer, staged: StagedSegment?) throws {
        lock.lock()
        guard let d = disks[header.diskID], d.owner === c else {
            lock.unlock()
            throw ProtocolViolation(code: 400, "segment for disk \(header.diskID), which this connection has not opened")
        }
        let verdict: RequestChecks.SegmentVerdict
        do {
            verdict = try RequestChecks.segment(diskID: header.diskID, sequence: header.sequence, keyID: header.keyID,
                                                diskSizeBytes: header.diskSizeBytes, chunkSizeBytes: header.chunkSizeBytes,
                                                extents: header.extents.map { ($0.offset, UInt64($0.length)) },
                                                record: d.record, appended: d.appended)
        } catch {
            lock.unlock()
            throw error
        }
        if verdict == .duplicate {
            // A re-send of something already spooled (docs/wire-format.md,
            // resume rules): idempotent, acknowledged again, not stored twice.
            let durable = d.durable
            lock.unlock()
            c.queueAck(disk: header.diskID, durable: durable)
            return
        }
        d.ingestsInFlight += 1
        lock.unlock()
        // Appending may block while the spool is full; the sequence check
        // above stays valid because only this connection feeds the disk, and
        // a connection that takes over waits for this append to end (a
        // closed connection abandons it).
        defer {
            lock.lock()
            d.ingestsInFlight -= 1
            lock.unlock()
        }
        // Staged when the budget allowed: the record carries it to the
        // uploader. Otherwise the uploader reads the payload back.
        while true {
            do {
                _ = try spool.append(diskID: header.diskID, sequence: header.sequence, payload: bytes, retained: staged,
                                     abandon: { c.isClosed || self.isStopped })
                break
            } catch let full as Spool.SpoolFull {
                Log.warning("\(full.detail): holding back \(header.diskID) #\(header.sequence)")
                if isStopped || c.isClosed { throw full }
                usleep(useconds_t(ServerLimits.spoolFullWaitMs * 1000 * 4))
            }
        }
        lock.lock()
        d.appended = header.sequence
        lock.unlock()
    }

    /// Waits until no segment of `d` is between its checks and its append.
    private func waitForIngests(_ d: DiskIngest) {
        while true {
            lock.lock()
            let busy = d.ingestsInFlight > 0
            lock.unlock()
            if !busy { return }
            usleep(5_000)
        }
    }

    private func recordsDurable(_ records: [Spool.Record]) {
        lock.lock()
        var acks: [(Connection, String, UInt64)] = []
        for r in records where !isDiscardedLocked(r) {
            if let d = disks[r.diskID] {
                d.durable = max(d.durable, r.sequence)
                if let o = d.owner { acks.append((o, r.diskID, d.durable)) }
            }
        }
        lock.unlock()
        for (c, disk, seq) in acks { c.queueAck(disk: disk, durable: seq) }
        uploads.push(records)
    }

    private func recordsDropped(_ records: [Spool.Record]) {
        lock.lock()
        var toClose: [Connection] = []
        for r in records {
            guard let d = disks[r.diskID] else { continue }
            // Not durable: the agent re-sends from the durable point.
            d.appended = min(d.appended, max(d.durable, r.sequence - 1))
            if let o = d.owner { toClose.append(o) }
        }
        lock.unlock()
        for c in toClose { c.close() }
    }

    // MARK: Upload

    /// Stores spooled segments in target storage in batches (bounded by
    /// `ServerLimits.uploadBatchSegmentsMax` and `uploadBatchBytesMax`): the
    /// objects of a batch are fsynced in parallel and their directories once
    /// (`LocalDirectoryTarget.putSegments`), and "committed" is acknowledged
    /// only for the segments of the batch that are durable there. A failure
    /// is handled as if the segments had been uploaded one at a time: those
    /// before the first one that failed are committed, it is retried (or
    /// discarded when it is damaged), the later ones wait for it.
    private func runUploader() {
        var delayMs = ServerLimits.uploadRetryDelayMsMin
        while let batch = uploads.nextBatch(countMax: ServerLimits.uploadBatchSegmentsMax,
                                            bytesMax: ServerLimits.uploadBatchBytesMax) {
            // Read back in spool order, up to a record that cannot be read.
            var items: [UploadItem] = []
            var unread: (index: Int, error: Error)?
            for (i, record) in batch.enumerated() {
                if isDiscarded(record) {
                    // Numbered after a segment that could not be read back: the agent re-sends it.
                    uploads.done()
                    spool.release(record)
                    continue
                }
                do {
                    items.append(try prepareUpload(record))
                } catch {
                    unread = (i, error)
                    break
                }
            }
            let (stored, failure) = target.putSegments(items.map(\.put), pool: syncPool)
            committed(items[..<stored])
            // Not stored, in order: the rest of the items, then what was not read.
            var waiting = items[stored...].map(\.record) + batch[(unread?.index ?? batch.count)...]
            guard let error = failure?.error ?? unread?.error else {
                delayMs = ServerLimits.uploadRetryDelayMsMin
                continue
            }
            let record = waiting.removeFirst()
            if let e = error as? TidemarkError, e.kind == .corrupt {
                uploads.done()
                discardUnreadable(record, e)
                uploads.requeueFront(waiting[...])
                continue
            }
            Log.error("uploading \(record.diskID) #\(record.sequence) to \(options.targetPath) failed: \(error); retrying in \(delayMs) ms (the segment stays in the spool)")
            uploads.requeueFront(([record] + waiting)[...])
            usleep(useconds_t(delayMs * 1000))
            delayMs = min(delayMs * 2, ServerLimits.uploadRetryDelayMsMax)
        }
    }

    /// A spooled segment that does not verify when read back (its storage
    /// failed) is never uploaded, and neither is anything spooled after it for
    /// its disk: the target must not get a gap, nor segments the agent will
    /// number again. The disk goes back to the sequence before it, and its
    /// connection is closed: the agent reconnects, learns the lower durable
    /// sequence and re-sends everything from there, read again from its
    /// change-tracking bits (docs/wire-format.md, resume rules).
    private func discardUnreadable(_ record: Spool.Record, _ error: TidemarkError) {
        Log.error("\(record.diskID) #\(record.sequence) cannot be uploaded: \(error.message); it and every later spooled segment of \(record.diskID) are discarded and the agent is asked to re-send from #\(record.sequence)")
        lock.lock()
        let d = disks[record.diskID]
        d?.resetting = true
        let owner = d?.owner
        d?.owner = nil
        lock.unlock()
        owner?.close()
        if let d { waitForIngests(d) }
        // Sequences below 1 are never spooled (RequestChecks.segment, and the start filters the spool).
        let before = max(record.sequence, 1) - 1
        spool.syncAll()
        let position = spool.appendPosition
        spool.release(record)
        lock.lock()
        discarded[record.diskID] = (record.sequence, position)
        if let d {
            d.appended = min(d.appended, before)
            d.durable = min(d.durable, before)
            d.resetting = false
        }
        if let h = spooledHighest[record.diskID] { spooledHighest[record.diskID] = min(h, before) }
        lock.unlock()
    }

    private func isDiscarded(_ record: Spool.Record) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        return isDiscardedLocked(record)
    }

    private func isDiscardedLocked(_ record: Spool.Record) -> Bool {
        guard let d = discarded[record.diskID] else { return false }
        return record.sequence >= d.fromSequence && record.location.isBefore(d.before)
    }

    /// A spooled segment ready for upload.
    struct UploadItem {
        var record: Spool.Record
        var header: SegmentHeader
        var put: SegmentPut
    }

    /// What target storage records of a segment besides its bytes.
    static func targetShape(_ header: SegmentHeader) -> (extents: [TargetExtent], point: PointRecord?) {
        let extents = header.extents.map {
            TargetExtent(offset: $0.offset, length: UInt64($0.length), zero: $0.kind == .zero)
        }
        var point: PointRecord?
        if header.kind == .point, let tag = header.point {
            point = PointRecord(id: tag.id, diskID: header.diskID, pointClass: tag.pointClass.rawValue,
                                timeUnixMs: tag.timeUnixMs, sequence: header.sequence)
        }
        return (extents, point)
    }

    /// A record and what target storage needs of it: its payload as staged
    /// at ingest, or else read back from the spool (verified).
    private func prepareUpload(_ record: Spool.Record) throws -> UploadItem {
        // A quarantined disk's segments are never stored (storedDisk logs why).
        do {
            guard try storedDisk(record.diskID) != nil else {
                throw TidemarkError(.state, "disk \(record.diskID) has no record in the target")
            }
        } catch let v as ProtocolViolation {
            throw TidemarkError(.corrupt, v.message)
        }
        let staged = record.retained as? StagedSegment
        let bytes = staged == nil ? try spool.read(record) : []
        let (header, _) = try (staged?.payload).map { try SegmentHeader.decode($0) }
            ?? bytes.withUnsafeBytes { try SegmentHeader.decode($0) }
        guard header.diskID == record.diskID, header.sequence == record.sequence else {
            throw TidemarkError(.corrupt, "spool record of \(record.diskID) #\(record.sequence) holds \(header.diskID) #\(header.sequence)")
        }
        let (extents, point) = Self.targetShape(header)
        let put = staged.map { SegmentPut(diskID: header.diskID, sequence: header.sequence, extents: extents, point: point, staged: $0) }
            ?? SegmentPut(diskID: header.diskID, sequence: header.sequence, extents: extents, point: point, bytes: bytes)
        return UploadItem(record: record, header: header, put: put)
    }

    /// The items are durable in target storage: index their digests, then
    /// acknowledge "committed" (one acknowledgement per disk, the highest
    /// sequence) and let the spool forget them.
    private func committed(_ items: ArraySlice<UploadItem>) {
        guard !items.isEmpty else { return }
        var highest: [String: UInt64] = [:]
        for item in items {
            updateDigestIndex(item.header, extents: item.put.extents)
            if let point = item.put.point {
                Log.info("\(point.diskID): recovery point \(point.id) (\(point.pointClass)) committed at #\(point.sequence)")
            }
            highest[item.record.diskID] = max(highest[item.record.diskID] ?? 0, item.record.sequence)
        }
        lock.lock()
        var acks: [(Connection, String, UInt64)] = []
        for (diskID, sequence) in highest {
            if let d = disks[diskID] {
                d.committed = max(d.committed, sequence)
                if let o = d.owner { acks.append((o, diskID, d.committed)) }
            }
        }
        lock.unlock()
        for (c, diskID, seq) in acks { c.queueAck(disk: diskID, committed: seq) }
        uploads.done(items.count)
        for item in items { spool.release(item.record) }
    }

    // MARK: Chunk digests

    /// The disk's digest index, opened on first use and caught up from the
    /// objects with `upTo` (default: the committed sequence); a missing or
    /// damaged index is rebuilt this way.
    func digestIndex(_ diskID: String, upTo: UInt64? = nil) throws -> DigestIndex {
        // One opener at a time: two index objects must never write one file.
        indexOpenLock.lock()
        defer { indexOpenLock.unlock() }
        lock.lock()
        let existing = digestIndexes[diskID]
        lock.unlock()
        let index = try existing ?? target.digestIndex(diskID: diskID) { problem in
            Log.warning("\(diskID): rebuilding the chunk digest index from the segment objects: \(problem)")
        }
        try index.catchUp(to: try upTo ?? target.committedSequence(diskID: diskID), from: target, digestsOf: sealedDigests)
        lock.lock()
        let kept = digestIndexes[diskID] ?? index
        digestIndexes[diskID] = kept
        lock.unlock()
        return kept
    }

    /// The chunk digests in a stored sealed segment's header (nil for format
    /// version 1), after checking that the header is the stored object's.
    func sealedDigests(_ sequence: UInt64, _ bytes: [UInt8], _ extents: [TargetExtent]) throws -> [StoredDigest]? {
        let (h, _) = try bytes.withUnsafeBytes { try SegmentHeader.decode($0) }
        let sealedExtents = h.extents.map { TargetExtent(offset: $0.offset, length: UInt64($0.length), zero: $0.kind == .zero) }
        guard h.sequence == sequence, sealedExtents == extents else {
            throw TidemarkError(.corrupt, "segment \(h.diskID) #\(sequence): its sealed header (sequence \(h.sequence), \(h.extents.count) extents) differs from the stored metadata",
                                hint: "the object is damaged or misplaced; restore it from a copy")
        }
        return Self.storedDigests(h)
    }

    /// A segment's chunk digests as the index keeps them (nil for format
    /// version 1, which has none).
    static func storedDigests(_ h: SegmentHeader) -> [StoredDigest]? {
        guard let construction = DigestConstruction(segmentVersion: h.version) else { return nil }
        return h.chunkDigests.map { StoredDigest(low: $0.low, high: $0.high, segmentVersion: construction.segmentVersion) }
    }

    /// After a commit: records the segment's chunks in the digest index. A
    /// failure only costs digest comparisons (the index is rebuilt on the
    /// next request), never data, so it is logged, not retried.
    private func updateDigestIndex(_ header: SegmentHeader, extents: [TargetExtent]) {
        do {
            // Caught up to the segment before, so this one is applied from
            // the bytes at hand, not read back from storage.
            let index = try digestIndex(header.diskID, upTo: header.sequence - 1)
            let digests = Self.storedDigests(header)
            try index.apply(sequence: header.sequence, extents: extents, digests: digests,
                            sync: header.sequence % ServerLimits.digestIndexFlushEverySegments == 0)
        } catch {
            Log.warning("\(header.diskID) #\(header.sequence): updating the chunk digest index failed: \(error); it will be rebuilt from the objects")
            dropDigestIndex(header.diskID)
        }
    }

    private func dropDigestIndex(_ diskID: String) {
        indexOpenLock.lock()
        defer { indexOpenLock.unlock() }
        lock.lock()
        let index = digestIndexes.removeValue(forKey: diskID)
        lock.unlock()
        do { try index?.clear() } catch { Log.warning("\(diskID): clearing the chunk digest index failed: \(error)") }
    }

    /// Answers a digest request: the states of chunks [first, first + count)
    /// and the sequence they reflect. A damaged index is rebuilt from the
    /// objects and asked again; if that fails too, every chunk is 'unknown'
    /// (the agent then sends them all: slower, never wrong).
    func chunkStates(diskID: String, first: UInt64, count: Int) throws -> (UInt64, [ChunkState]) {
        // The record the disk was opened with: checked then.
        lock.lock()
        let record = disks[diskID]?.record
        lock.unlock()
        guard let record else {
            throw ProtocolViolation(code: 400, "digest request for disk \(diskID), which this connection has not opened")
        }
        try RequestChecks.digestRange(diskID: diskID, first: first, count: UInt32(clamping: count), record: record)
        for attempt in 0..<2 {
            do {
                let (seq, states) = try digestIndex(diskID).lookup(first: first, count: count)
                return (seq, states.map {
                    switch $0 {
                    case .unknown: .unknown
                    case .zero: .zero
                    case .data(let d):
                        // Written only by segments of a readable version (2 or 3).
                        .data(ChunkDigest(low: d.low, high: d.high), DigestConstruction(segmentVersion: d.segmentVersion)!)
                    }
                })
            } catch let e as TidemarkError where e.kind == .busy {
                Log.warning("\(diskID): chunk digest index: \(e); answering 'unknown'")
                break
            } catch {
                Log.warning("\(diskID): chunk digest index: \(error)\(attempt == 0 ? "; rebuilding it from the segment objects" : "; answering 'unknown'")")
                dropDigestIndex(diskID)
            }
        }
        return (try target.committedSequence(diskID: diskID), [ChunkState](repeating: .unknown, count: count))
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
        lock.unlock()
        return applied
    }

    private func runPruner() {
        var lastRun = Date.distantPast
        while !isStopped {
            usleep(200_000)
            lock.lock()
            let interval = options.pruneIntervalSeconds
            lock.unlock()
            guard Date().timeIntervalSince(lastRun) >= Double(interval) else { continue }
            lastRun = Date()
            pruneOnce()
        }
    }

    /// Expires recovery points older than the retention on every disk.
    public func pruneOnce() {
        lock.lock()
        let cutoff = Int64(Date().timeIntervalSince1970 * 1000) - Int64(options.retentionSeconds) * 1000
        let ids = Array(disks.keys)
        lock.unlock()
        for id in ids {
            do {
                let report = try target.prune(diskID: id, retainAfterUnixMs: cutoff)
                Log.debug("\(id): prune: \(report)")
            } catch {
                Log.error("\(id): pruning expired recovery points failed: \(error)")
            }
        }
    }
}

/// A peer broke the protocol: the connection is answered with an error frame and closed.
struct ProtocolViolation: Error, CustomStringConvertible {
    var code: UInt16
    var message: String
    /// The server logged the cause already (a quarantined disk): the
    /// refusal of each connection is logged at debug level only.
    var logged: Bool
    init(code: UInt16, _ message: String, logged: Bool = false) {
        self.code = code
        self.message = message
        self.logged = logged
    }
    var description: String { message }
}

/// Durable records waiting for upload, in order. Its size is bounded by the
/// spool's: every entry is a record in a spool file.
final class UploadQueue: @unchecked Sendable {
    private let cond = NSCondition()
    private var queue: [Spool.Record] = []
    private var head = 0
    private var stopped = false
    private var inFlight = 0

    func push(_ records: [Spool.Record]) {
        guard !records.isEmpty else { return }
        cond.lock()
        queue.append(contentsOf: records)
        cond.broadcast()
        cond.unlock()
    }

    /// The oldest records waiting, in order: at least one, at most
    /// `countMax`, and no more than `bytesMax` of payload unless the first
    /// alone is larger. Waits while there is none; nil once stopped.
    func nextBatch(countMax: Int, bytesMax: UInt64) -> [Spool.Record]? {
        cond.lock()
        defer { cond.unlock() }
        while head == queue.count && !stopped { cond.wait() }
        // Stopping leaves the rest in the spool: the next start uploads it.
        if stopped { return nil }
        var batch: [Spool.Record] = []
        var bytes: UInt64 = 0
        while head < queue.count, batch.count < countMax {
            let r = queue[head]
            if !batch.isEmpty && bytes + UInt64(r.location.length) > bytesMax { break }
            batch.append(r)
            bytes += UInt64(r.location.length)
            // The taken slot stays until trimmed: it must not keep the staged payload alive.
            queue[head].retained = nil
            head += 1
        }
        inFlight += batch.count
        if head > 4096 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return batch
    }

    func done(_ count: Int = 1) {
        cond.lock()
        inFlight -= count
        cond.broadcast()
        cond.unlock()
    }

    /// Puts records taken by `nextBatch` back at the head, in their order.
    func requeueFront(_ records: ArraySlice<Spool.Record>) {
        guard !records.isEmpty else { return }
        cond.lock()
        inFlight -= records.count
        if head >= records.count {
            head -= records.count
            queue.replaceSubrange(head..<(head + records.count), with: records)
        } else {
            queue.replaceSubrange(0..<head, with: records)
            head = 0
        }
        cond.unlock()
    }

    func stop() {
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
    }
}
