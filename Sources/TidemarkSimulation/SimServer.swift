import TidemarkServerCore
import TidemarkSystem
import TidemarkTarget
import TidemarkWire

/// The process server of the simulation: the real `ReplicationReceiver`
/// (every ingest rule) in a shell of the simulation's making, whose sink is
/// a simulated spool and uploader in front of `SimTarget`.
///
/// The spool: segments handed to the sink are appended in memory (the
/// page cache) and become durable at the next group commit (`sync`, every
/// `syncIntervalNs`), or when a disk is settled for a new session; the
/// uploader stores durable segments in target storage in order, a few at
/// a time, then reports them committed and releases them. A crash loses
/// what was not synced, the receiver's state and every session; the synced
/// spool and the target survive (unless the fault also loses them).
/// A spooled segment may be damaged: the uploader reports it lost (as
/// `SpoolTargetSink` does when one does not verify), and the receiver makes
/// the agent send again from there.
///
/// Memory: the spooled segments (bounded by what the agent keeps in
/// flight plus what the uploader has not stored), one entry per session.
final class SimServer {
    struct Record {
        var sequence: UInt64
        var bytes: [UInt8]
        var synced = false
        var damaged = false
    }

    struct Settings {
        var syncIntervalNs: UInt64
        var uploadIntervalNs: UInt64
        var uploadBatchMax: Int
        var idleTimeoutNs: UInt64
        /// Chance that the sink fails an append (a full spool or an I/O error).
        var appendFailureChance: Double
    }

    let scheduler: SimScheduler
    let network: SimNetwork
    let target: SimTarget
    let diskID: String
    let settings: Settings
    private(set) var receiver: ReplicationReceiver
    /// Bumps at every start: events of an earlier run are ignored.
    private(set) var run: UInt64 = 0
    private(set) var running = false
    /// The spool, in sequence order (contiguous). Synced records survive a crash.
    private(set) var spool: [Record] = []
    /// A loss reported to the receiver and not forgotten yet.
    private var lostFrom: UInt64?
    private var sessionOf: [UInt64: ReplicationReceiver.SessionID] = [:]
    private var connectionOf: [ReplicationReceiver.SessionID: UInt64] = [:]
    private var lastHeard: [ReplicationReceiver.SessionID: UInt64] = [:]
    /// The segment bytes of a session's last segment message (for `append`).
    private var received: [ReplicationReceiver.SessionID: [UInt8]] = [:]
    /// Messages for a session that waits for a completion.
    private var inbox: [ReplicationReceiver.SessionID: [WireMessage]] = [:]
    private var nextSession: UInt64 = 1
    private var syncScheduled = false
    private var uploadScheduled = false
    private var work: [ReplicationReceiver.Event] = []
    /// Sessions whose append failed: closed once the receiver has taken the failure.
    private var failedSessions: [ReplicationReceiver.SessionID] = []
    private(set) var stats = Stats()
    /// What the receiver refused, for the run's summary.
    private(set) var refusals: [String] = []
    /// Hears what target storage refused (set by the simulation: a failure).
    var onStorageFailure: (String) -> Void = { _ in }

    struct Stats {
        var sessions: UInt64 = 0
        var appended: UInt64 = 0
        var committed: UInt64 = 0
        var lost: UInt64 = 0
        var crashes: UInt64 = 0
    }

    init(scheduler: SimScheduler, network: SimNetwork, target: SimTarget, diskID: String, settings: Settings) {
        self.scheduler = scheduler
        self.network = network
        self.target = target
        self.diskID = diskID
        self.settings = settings
        receiver = ReplicationReceiver(configuration: .init(serverID: "sim-server", maxConnections: 8))
    }

    // MARK: Life

    func start() {
        precondition(!running, "SimServer.start while running")
        run += 1
        running = true
        receiver = ReplicationReceiver(configuration: .init(serverID: "sim-server", maxConnections: 8))
        lostFrom = nil
        syncScheduled = false
        uploadScheduled = false
        scheduler.after(settings.idleTimeoutNs / 4, .serverTick(run: run))
        // Segments spooled by the last run wait for the uploader.
        kickUploader()
    }

    /// The process dies: what was not synced is gone, every connection resets.
    func crash() {
        guard running else { return }
        running = false
        stats.crashes += 1
        spool.removeAll { !$0.synced }
        for (conn, _) in sessionOf.sorted(by: { $0.key < $1.key }) { network.cut(conn, silent: false); network.noticed(conn, by: .server) }
        sessionOf.removeAll()
        connectionOf.removeAll()
        lastHeard.removeAll()
        received.removeAll()
        inbox.removeAll()
        work.removeAll()
        failedSessions.removeAll()
    }

    /// The spool's storage is lost (with the process).
    func loseSpool() {
        crash()
        spool.removeAll()
    }

    /// A synced, not yet uploaded segment no longer reads back.
    func damageOne(using rng: inout SimRandom) -> Bool {
        let candidates = spool.indices.filter { spool[$0].synced && !spool[$0].damaged }
        guard !candidates.isEmpty else { return false }
        spool[candidates[rng.below(candidates.count)]].damaged = true
        return true
    }

    // MARK: Connections

    /// An agent connects: a new session, past its TLS handshake.
    func accept(_ conn: UInt64, certificateName: String) {
        precondition(running, "accept on a server that is down")
        let id = ReplicationReceiver.SessionID(nextSession)
        nextSession += 1
        stats.sessions += 1
        sessionOf[conn] = id
        connectionOf[id] = conn
        lastHeard[id] = scheduler.nowNs
        feed(.accepted(id, source: "10.0.0.2", nowNs: scheduler.nowNs))
        feed(.tlsEstablished(id, certificateName: certificateName))
    }

    func receive(_ conn: UInt64, _ m: WireMessage) {
        guard running, let id = sessionOf[conn] else { return }
        lastHeard[id] = scheduler.nowNs
        if receiver.isBusy(id) || !(inbox[id]?.isEmpty ?? true) {
            inbox[id, default: []].append(m)
            return
        }
        deliver(id, m)
    }

    private func deliver(_ id: ReplicationReceiver.SessionID, _ m: WireMessage) {
        if case .segment(let bytes) = m { received[id] = bytes }
        feed(.message(id, m))
    }

    /// The agent's side closed or reset: the session ends.
    func connectionClosed(_ conn: UInt64) {
        network.noticed(conn, by: .server)
        guard running, let id = sessionOf[conn] else { return }
        end(id)
    }

    private func end(_ id: ReplicationReceiver.SessionID) {
        guard let conn = connectionOf.removeValue(forKey: id) else { return }
        sessionOf[conn] = nil
        lastHeard[id] = nil
        received[id] = nil
        inbox[id] = nil
        feed(.ended(id))
    }

    // MARK: Timers

    /// The next group commit, when something waits for it.
    private func kickSync() {
        guard running, !syncScheduled, spool.contains(where: { !$0.synced }) else { return }
        syncScheduled = true
        scheduler.after(settings.syncIntervalNs, .serverSync(run: run))
    }

    private func kickUploader() {
        guard running, !uploadScheduled, spool.contains(where: { $0.synced }) else { return }
        uploadScheduled = true
        scheduler.after(settings.uploadIntervalNs, .serverUpload(run: run))
    }

    func sync(run r: UInt64) {
        guard running, r == run else { return }
        syncScheduled = false
        syncAll()
    }

    /// Makes every appended record durable and reports the highest.
    private func syncAll() {
        var highest: UInt64?
        for i in spool.indices {
            spool[i].synced = true
            if lostFrom.map({ spool[i].sequence < $0 }) ?? true { highest = spool[i].sequence }
        }
        if let highest { feed(.durable(diskID: diskID, sequence: highest)) }
        kickUploader()
    }

    func upload(run r: UInt64) {
        guard running, r == run else { return }
        uploadScheduled = false
        var stored: UInt64?
        for _ in 0..<settings.uploadBatchMax {
            // Records at or below what is committed were stored already.
            while let first = spool.first, first.sequence <= target.committed { spool.removeFirst() }
            guard let first = spool.first, first.synced, first.sequence == target.committed + 1,
                  lostFrom.map({ first.sequence < $0 }) ?? true else { break }
            if first.damaged {
                // Read back, it does not verify: it and everything after it is lost.
                if lostFrom == nil {
                    lostFrom = first.sequence
                    stats.lost += 1
                    feed(.lost(diskID: diskID, fromSequence: first.sequence))
                }
                break
            }
            do {
                try target.put(sequence: first.sequence, bytes: first.bytes)
            } catch {
                // The receiver accepted it; the repository must store it.
                onStorageFailure("storing #\(first.sequence) in the target failed: \(error)")
                return
            }
            stats.committed += 1
            stored = first.sequence
            spool.removeFirst()
        }
        if let stored {
            feed(.committed(diskID: diskID, sequence: stored))
            kickUploader()
        }
    }

    /// Closes sessions that have been silent for the idle timeout.
    func tick(run r: UInt64) {
        guard running, r == run else { return }
        scheduler.after(settings.idleTimeoutNs / 4, .serverTick(run: run))
        for (id, heard) in lastHeard.sorted(by: { $0.key < $1.key }) where scheduler.nowNs - heard >= settings.idleTimeoutNs {
            if let conn = connectionOf[id] { network.close(conn, by: .server) }
            end(id)
        }
    }

    // MARK: The receiver and its effects

    /// Hands an event to the receiver and carries out its effects, and those
    /// of the events they complete, in order.
    private func feed(_ e: ReplicationReceiver.Event) {
        work.append(e)
        guard work.count == 1 else { return }   // already draining
        while let next = work.first {
            for effect in receiver.handle(next) { carryOut(effect) }
            work.removeFirst()
            if work.isEmpty {
                for id in failedSessions {
                    guard let conn = connectionOf.removeValue(forKey: id) else { continue }
                    network.close(conn, by: .server)
                    sessionOf[conn] = nil
                    lastHeard[id] = nil
                    received[id] = nil
                    inbox[id] = nil
                    work.append(.ended(id))
                }
                failedSessions.removeAll()
            }
            if work.isEmpty { releaseInboxes() }
        }
    }

    private func releaseInboxes() {
        for id in inbox.keys.sorted() where !receiver.isBusy(id) {
            guard var q = inbox[id], !q.isEmpty else { continue }
            let m = q.removeFirst()
            inbox[id] = q
            work.append(.message(id, m))
            if case .segment(let bytes) = m { received[id] = bytes }
            return
        }
    }

    private func carryOut(_ effect: ReplicationReceiver.Effect) {
        switch effect {
        case .send(let id, let m):
            if let conn = connectionOf[id] { network.send(conn, from: .server, m) }
        case .authenticated:
            break
        case .close(let id, let reason):
            if case .refused(let v) = reason {
                refusals.append("\(v.code) \(v.message)")
                if let conn = connectionOf[id] { network.send(conn, from: .server, .error(code: v.code, message: v.message)) }
            }
            if let conn = connectionOf[id] { network.close(conn, by: .server) }
            if let conn = connectionOf.removeValue(forKey: id) {
                sessionOf[conn] = nil
                lastHeard[id] = nil
                received[id] = nil
                inbox[id] = nil
                work.append(.ended(id))
            }
        case .lookUpDisk(let id, let d):
            let held = spool.last(where: { $0.synced })?.sequence ?? 0
            work.append(.diskLookedUp(id, diskID: d, .stored(record: target.record, committedSequence: target.committed,
                                                             heldSequence: held > target.committed ? held : 0)))
        case .createDisk(let id, let record):
            do {
                try target.createDisk(record)
            } catch {
                return onStorageFailure("storing the disk record of \(record.diskID) failed: \(error)")
            }
            work.append(.diskCreated(id, diskID: record.diskID))
        case .append(let id, let d, let sequence):
            guard let bytes = received.removeValue(forKey: id) else {
                preconditionFailure("append of \(d) #\(sequence) for \(id) without its bytes")
            }
            if scheduler.rng.chance(settings.appendFailureChance) {
                // As ProcessServer does: the failure is reported, then the
                // connection ends with the error (the agent re-sends after
                // reconnecting).
                work.append(.appendFailed(id, diskID: d, sequence: sequence))
                failedSessions.append(id)
            } else {
                precondition(spool.last.map { $0.sequence + 1 == sequence } ?? true, "the spool would get a gap before #\(sequence)")
                spool.append(Record(sequence: sequence, bytes: bytes))
                stats.appended += 1
                kickSync()
                work.append(.appended(id, diskID: d, sequence: sequence))
            }
        case .settleDisk(let id, let d):
            syncAll()
            work.append(.diskSettled(id, diskID: d))
        case .answerDigests(let id, let d, let first, let count, let version):
            // The simulated agent does not resync by digests; answer as a
            // server without an index would.
            let m = ReplicationReceiver.chunkDigestsMessage(diskID: d, firstChunk: first, sequence: target.committed,
                                                            states: [ChunkState](repeating: .unknown, count: Int(count)),
                                                            protocolVersion: version)
            if let conn = connectionOf[id] { network.send(conn, from: .server, m) }
        case .forget(let d, let from):
            spool.removeAll { $0.sequence >= from }
            if let l = lostFrom, l >= from { lostFrom = nil }
            work.append(.forgotten(diskID: d, fromSequence: from))
        }
    }
}
