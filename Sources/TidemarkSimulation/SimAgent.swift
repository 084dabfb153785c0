import TidemarkAgentCore
import TidemarkSystem
import TidemarkWire

/// The agent of the simulation: the real `ReplicationSender` (every rule
/// of numbering, the window, acknowledgements, resume and clearing) in a
/// shell that does what `DiskReplicator`'s threads do, as events: the
/// drain (kernel map → `.hrl` → to-read set) and the clearing of committed
/// bits, the reader (numbering, reading the disk, sealing real segments
/// with `SegmentSealer`), the sender (hello, openDisk, resume, segments,
/// pings, the io timeout) and recovery points (freeze, drain, tag, thaw,
/// wait for the commit).
///
/// Durable (survives an agent crash): the `.hrl` bits, whether the `.hrl`
/// says the disk was replicated, and the epoch history. Everything else is
/// the process's and is lost by a crash; a restart begins a new run, as
/// `DiskReplicator.prepare` does: the `.hrl`'s bits are to read, numbering
/// starts at 1 in a new epoch.
///
/// Not simulated: the digest-compare resync (a disk marked whole is sent
/// whole), compression levels chosen at run time, bandwidth limits.
final class SimAgent {
    struct Settings {
        var agentID: String
        var diskID: String
        var limits: SendWindowLimits
        var drainIntervalNs: UInt64
        var readNs: ClosedRange<UInt64>
        /// Segments one read takes at most (the reader's batch: one per sealer).
        var batchSegmentsMax: Int
        /// Segments read and not yet sealed, at most (the seal pipeline's depth).
        var pipelineDepth: Int
        var sealNs: ClosedRange<UInt64>
        var ioTimeoutNs: UInt64
        var connectTimeoutNs: UInt64
        var reconnectDelayNs: ClosedRange<UInt64>
        var freezeTimeoutNs: UInt64
        var commitWaitNs: UInt64
        /// Bytes per second of the agent's link (the time a segment takes to send).
        var linkBytesPerSecond: UInt64
        /// A bug planted in the agent's shell on purpose (nil: none), to show
        /// that the checker finds its class (`Simulation.PlantedBug`).
        var plantedBug: Simulation.PlantedBug? = nil
    }

    /// A point the agent tagged and waits for (as `makePoint` does).
    struct TaggedPoint {
        var id: String
        var sequence: UInt64
        var epoch: UInt64
        var waitUntilNs: UInt64
    }

    /// What happened to a point order, for the checker.
    enum PointOutcome {
        /// Tagged at this sequence: the disk's bytes at the freeze are its content.
        case tagged(id: String, sequence: UInt64, content: [UInt8])
        /// The agent reports it committed: the target must recover it now.
        case committed(id: String)
        case lost(id: String)
        case abandoned
    }

    let scheduler: SimScheduler
    let network: SimNetwork
    let disk: SimDisk
    let key: ReplicationKey
    let settings: Settings
    private let sealer: SegmentSealer
    /// Connect to the server: the connection, or nil when it is down or
    /// unreachable (set by the simulation).
    var connectToServer: () -> UInt64? = { nil }
    /// Hears what becomes of points (set by the simulation).
    var onPoint: (PointOutcome) -> Void = { _ in }
    /// Hears when the agent has marked the whole disk after a lost target.
    var onWholeDiskMarked: () -> Void = {}
    /// Hears what the real agent would stop on (a segment its sealer
    /// refuses): a failure of the run.
    var onFailure: (String) -> Void = { _ in }

    // Durable state (the state directory).
    private(set) var hrl: [Bool]
    private(set) var replicatedBefore = false
    private(set) var epochHistory = EpochHistory()

    // The process.
    private(set) var run: UInt64 = 0
    private(set) var running = false
    private(set) var sender: ReplicationSender?
    /// Segments read and being sealed, in sequence order (`SealPipeline`):
    /// they join the window in that order.
    private var pipeline: [(segment: NumberedSegment, tag: PointTag?, extents: [SegmentExtent], payload: [UInt8])] = []
    private var readScheduled = false
    private var sealScheduled = false
    private var sendScheduled = false
    private var linkFreeAtNs: UInt64 = 0
    private enum Phase { case hello, open, streaming }
    private var connection: (id: UInt64, phase: Phase)?
    private var lastHeardNs: UInt64 = 0
    private var lastSentNs: UInt64 = 0
    private var pings: UInt64 = 0
    private var reconnectDelayNs: UInt64 = 0
    private var connectScheduled = false
    private var targetLost = false
    private var freeze: (tag: PointTag, deadlineNs: UInt64)?
    private var waiting: [TaggedPoint] = []
    private(set) var stats = Stats()

    struct Stats {
        var runs: UInt64 = 0
        var segmentsSealed: UInt64 = 0
        var staleSegments: UInt64 = 0
        var connections: UInt64 = 0
        var renumberings: UInt64 = 0
        var refusedAnswers: UInt64 = 0
        var chunksCleared: UInt64 = 0
        var pointsTagged: UInt64 = 0
        var pointsCommitted: UInt64 = 0
        var pointsLost: UInt64 = 0
        var pointsAbandoned: UInt64 = 0
    }

    init(scheduler: SimScheduler, network: SimNetwork, disk: SimDisk, key: ReplicationKey, settings: Settings) throws {
        self.scheduler = scheduler
        self.network = network
        self.disk = disk
        self.key = key
        self.settings = settings
        sealer = try SegmentSealer(key: key, compressionLevel: 1)
        // A first run: the whole disk is dirty (the initial replication).
        hrl = [Bool](repeating: true, count: disk.chunkCount)
    }

    // MARK: Life

    /// A new run of the agent process (`DiskReplicator.prepare`).
    func start() {
        precondition(!running, "SimAgent.start while running")
        run += 1
        running = true
        stats.runs += 1
        var s = ReplicationSender(chunkCount: UInt64(disk.chunkCount), limits: settings.limits,
                                  initialEpochID: scheduler.rng.bytes(SegmentLineage.idBytes))
        for c in hrl.indices where hrl[c] { s.markToRead(first: UInt64(c), count: 1) }
        sender = s
        pipeline = []
        readScheduled = false
        sealScheduled = false
        sendScheduled = false
        connection = nil
        targetLost = false
        freeze = nil
        waiting = []
        reconnectDelayNs = settings.reconnectDelayNs.lowerBound
        connectScheduled = true
        scheduler.after(1, .agentConnect(run: run))
        scheduler.after(settings.drainIntervalNs, .agentDrain(run: run))
        scheduler.after(settings.ioTimeoutNs / 4, .agentTick(run: run))
        kickReader()
    }

    /// The process dies. Its connection resets; a freeze is thawed by the
    /// watchdog process; the host keeps the disk, the kernel map and the
    /// state directory.
    func crash() {
        guard running else { return }
        running = false
        if let c = connection { network.cut(c.id, silent: false); network.noticed(c.id, by: .agent) }
        connection = nil
        if freeze != nil {
            freeze = nil
            disk.frozen = false
            onPoint(.abandoned)
        }
        sender = nil
        pipeline = []
        waiting = []
    }

    // MARK: The main loop: drain and clear

    func drain(run r: UInt64) {
        guard running, r == run else { return }
        scheduler.after(settings.drainIntervalNs, .agentDrain(run: run))
        drainOnce()
        clearCommitted()
        kickReader()
    }

    private func drainOnce() {
        let words = disk.takeKernelBits()
        // Durable in the .hrl before they leave the kernel map (DiskSession.drain).
        for (w, bits) in words {
            for b in 0..<64 where bits >> UInt64(b) & 1 == 1 { hrl[Int(w) * 64 + b] = true }
        }
        sender!.drained(words, atUnixMs: scheduler.nowUnixMs)
    }

    /// `DiskReplicator.clearCommitted`: a lost target first marks the whole
    /// disk; the first commit marks the `.hrl` replicated; then the bits of
    /// committed chunks not written since are cleared.
    private func clearCommitted() {
        if targetLost {
            targetLost = false
            markWholeDisk()
        }
        if sender!.committedSequence > 0 && !replicatedBefore { replicatedBefore = true }
        for c in sender!.takeClearable() {
            hrl[Int(c)] = false
            stats.chunksCleared += 1
        }
    }

    /// Every chunk is dirty, durably, and to read (the real agent compares
    /// them with the target first; here all are sent).
    private func markWholeDisk() {
        for c in hrl.indices { hrl[c] = true }
        sender!.markToRead(first: 0, count: UInt64(disk.chunkCount))
        sender!.wholeDiskMarked()
        onWholeDiskMarked()
        // The sender held the window back until now (nextToSend).
        kickSender()
    }

    // MARK: The reader

    private func kickReader() {
        guard running, !readScheduled, pipeline.count < settings.pipelineDepth else { return }
        let s = sender!
        let tagDue = freeze != nil && s.mayTagPoint
        guard tagDue || (s.windowHasRoom && !s.toReadIsEmpty) else { return }
        readScheduled = true
        scheduler.after(scheduler.rng.between(settings.readNs.lowerBound, settings.readNs.upperBound), .agentRead(run: run))
    }

    /// The reader thread (`nextBatch`, `read`): numbers a batch — or the
    /// point tag, once everything drained is numbered — reads its chunks
    /// from the disk now, and hands the segments to the seal pipeline. It
    /// does not wait for the pipeline to be empty: segments numbered before
    /// may still be sealing.
    func read(run r: UInt64) {
        guard running, r == run else { return }
        readScheduled = false
        var batch: [(NumberedSegment, PointTag?)] = []
        if let f = freeze, sender!.mayTagPoint {
            // Everything drained under the freeze is in earlier segments: tag now.
            let tag = sender!.numberPointTag()
            batch = [(tag, f.tag)]
            freeze = nil
            disk.frozen = false
            stats.pointsTagged += 1
            onPoint(.tagged(id: f.tag.id, sequence: tag.sequence, content: frozenContent))
            frozenContent = []
            waiting.append(TaggedPoint(id: f.tag.id, sequence: tag.sequence, epoch: tag.epoch,
                                       waitUntilNs: scheduler.nowNs + settings.commitWaitNs))
        } else if sender!.windowHasRoom && !sender!.toReadIsEmpty {
            batch = sender!.planBatch(segmentsMax: 1 + scheduler.rng.below(settings.batchSegmentsMax)).map { ($0, nil) }
        }
        for (n, tag) in batch {
            let (extents, payload) = readChunks(n)
            pipeline.append((n, tag, extents, payload))
        }
        kickSealer()
        kickReader()
    }

    private func kickSealer() {
        guard running, !sealScheduled, !pipeline.isEmpty else { return }
        sealScheduled = true
        scheduler.after(scheduler.rng.between(settings.sealNs.lowerBound, settings.sealNs.upperBound), .agentSeal(run: run))
    }

    /// The oldest segment in the pipeline is sealed and joins the window
    /// (`queueSealed`), or goes back to be read again when numbering
    /// restarted since it was numbered.
    func sealNext(run r: UInt64) {
        guard running, r == run else { return }
        sealScheduled = false
        guard !pipeline.isEmpty else { return }
        let p = pipeline.removeFirst()
        guard let bytes = seal(p.segment, p.tag, p.extents, p.payload) else { return }
        if sender!.sealed(p.segment, bytes: bytes) {
            stats.segmentsSealed += 1
        } else {
            stats.staleSegments += 1
        }
        kickSender()
        kickSealer()
        kickReader()
    }

    /// The disk's bytes at the freeze (the point's content).
    private var frozenContent: [UInt8] = []

    /// Reads the segment's chunks from the disk now: zero chunks as zero
    /// extents, the rest as data (`SegmentPayloadCompactor`).
    private func readChunks(_ n: NumberedSegment) -> ([SegmentExtent], [UInt8]) {
        var extents: [SegmentExtent] = []
        var payload: [UInt8] = []
        for run in n.runs {
            for c in Int(run.first)..<Int(run.first + run.count) {
                let bytes = disk.chunk(c)
                let zero = bytes.withUnsafeBytes { isAllZero($0) }
                let kind: ExtentKind = zero ? .zero : .data
                let off = UInt64(c * disk.chunkBytes)
                if let last = extents.last, last.kind == kind, last.offset + UInt64(last.length) == off {
                    extents[extents.count - 1].length += UInt32(bytes.count)
                } else {
                    extents.append(SegmentExtent(offset: off, length: UInt32(bytes.count), kind: kind))
                }
                if !zero { payload += bytes }
            }
        }
        return (extents, payload)
    }

    /// The sealed segment; nil, with the run failed, when the sealer
    /// refuses what the reader planned (the real agent would stop).
    private func seal(_ n: NumberedSegment, _ tag: PointTag?, _ extents: [SegmentExtent], _ payload: [UInt8]) -> [UInt8]? {
        do {
            return try payload.withUnsafeBytes {
                try sealer.seal(kind: tag == nil ? .data : .point, diskID: settings.diskID, sequence: n.sequence,
                                diskSizeBytes: UInt64(disk.sizeBytes), chunkSizeBytes: UInt32(disk.chunkBytes),
                                extents: extents, payload: $0, point: tag, lineage: n.lineage)
            }
        } catch {
            onFailure("the sealer refuses #\(n.sequence) as the sender planned it (runs \(n.runs.map { "\($0.first)+\($0.count)" }.joined(separator: ", "))): \(error)")
            return nil
        }
    }

    // MARK: Points

    /// A point order (`makePoint`): freeze, drain, then the reader tags
    /// once everything drained is numbered, or the freeze bound passes.
    @discardableResult
    func orderPoint() -> Bool {
        guard running, freeze == nil, !disk.frozen, connection?.phase == .streaming else { return false }
        disk.frozen = true
        drainOnce()
        frozenContent = disk.bytes
        let id = "p-sim-\(scheduler.rng.bytes(6).map { String($0, radix: 16) }.joined())"
        freeze = (PointTag(id: id, pointClass: .crashConsistent, timeUnixMs: scheduler.nowUnixMs),
                  scheduler.nowNs + settings.freezeTimeoutNs)
        scheduler.after(settings.freezeTimeoutNs, .agentPointDeadline(run: run))
        kickReader()
        return true
    }

    func pointDeadline(run r: UInt64) {
        guard running, r == run, let f = freeze, scheduler.nowNs >= f.deadlineNs else { return }
        // Too late: the filesystems are thawed, the tag is never numbered.
        freeze = nil
        frozenContent = []
        disk.frozen = false
        stats.pointsAbandoned += 1
        onPoint(.abandoned)
    }

    /// Reports tagged points that are committed, lost, or waited for long enough.
    private func settlePoints() {
        guard let s = sender else { return }
        waiting.removeAll { p in
            if s.pointLost(sequence: p.sequence, epoch: p.epoch) {
                stats.pointsLost += 1
                onPoint(.lost(id: p.id))
                return true
            }
            if s.committedSequence >= p.sequence {
                stats.pointsCommitted += 1
                onPoint(.committed(id: p.id))
                return true
            }
            return scheduler.nowNs >= p.waitUntilNs
        }
    }

    // MARK: The sender

    func connect(run r: UInt64) {
        guard running, r == run else { return }
        connectScheduled = false
        guard connection == nil else { return }
        guard let id = connectToServer() else { return reconnectLater(afterNs: settings.connectTimeoutNs) }
        stats.connections += 1
        connection = (id, .hello)
        lastHeardNs = scheduler.nowNs
        send(.hello(protocolVersion: WireProtocol.version, agentID: settings.agentID))
    }

    private func reconnectLater(afterNs extra: UInt64 = 0) {
        guard running, !connectScheduled else { return }
        connectScheduled = true
        scheduler.after(extra + reconnectDelayNs, .agentConnect(run: run))
        reconnectDelayNs = min(reconnectDelayNs * 2, settings.reconnectDelayNs.upperBound)
    }

    private func send(_ m: WireMessage) {
        guard let c = connection else { return }
        network.send(c.id, from: .agent, m)
        lastSentNs = scheduler.nowNs
    }

    /// The connection is given up (an error, a refusal, the io timeout).
    private func dropConnection() {
        guard let c = connection else { return }
        network.close(c.id, by: .agent)
        connectionEnded()
    }

    private func connectionEnded() {
        connection = nil
        sender?.connectionEnded()
        reconnectLater()
    }

    /// The server side closed or the network reset the connection.
    func closed(_ id: UInt64) {
        network.noticed(id, by: .agent)
        guard running, connection?.id == id else { return }
        connectionEnded()
    }

    private func kickSender() {
        guard running, !sendScheduled, connection?.phase == .streaming, sender!.nextToSend() != nil else { return }
        sendScheduled = true
        scheduler.at(max(scheduler.nowNs, linkFreeAtNs), .agentSend(run: run))
    }

    func sendNext(run r: UInt64) {
        guard running, r == run else { return }
        sendScheduled = false
        guard connection?.phase == .streaming, let item = sender!.nextToSend() else { return }
        send(.segment(item.bytes))
        sender!.markSent(item.sequence)
        linkFreeAtNs = scheduler.nowNs + UInt64(item.bytes.count) * 1_000_000_000 / settings.linkBytesPerSecond
        kickSender()
    }

    /// Pings and the io timeout.
    func tick(run r: UInt64) {
        guard running, r == run else { return }
        scheduler.after(settings.ioTimeoutNs / 4, .agentTick(run: run))
        settlePoints()
        guard connection != nil else { return }
        if scheduler.nowNs - lastHeardNs >= settings.ioTimeoutNs { return dropConnection() }
        if scheduler.nowNs - lastSentNs >= settings.ioTimeoutNs / 4 {
            pings += 1
            send(.ping(pings))
        }
    }

    func receive(_ id: UInt64, _ m: WireMessage) {
        guard running, let c = connection, c.id == id else { return }
        lastHeardNs = scheduler.nowNs
        switch (c.phase, m) {
        case (.hello, .helloOK(let version, _)) where version == WireProtocol.version:
            connection!.phase = .open
            send(.openDisk(diskID: settings.diskID, diskSizeBytes: UInt64(disk.sizeBytes),
                           chunkSizeBytes: UInt32(disk.chunkBytes), keyID: key.id))
        case (.open, .diskState(let d, let durable, let committed)) where d == settings.diskID:
            resume(durable: durable, committed: committed)
        case (.streaming, .ackDurable(let d, let seq)) where d == settings.diskID:
            do { try sender!.ackDurable(seq) } catch { stats.refusedAnswers += 1; return dropConnection() }
            if settings.plantedBug == .clearsBitsWhenDurable {
                // The planted bug: durable in the spool taken for stored in the target.
                do { try sender!.ackCommitted(seq) } catch { stats.refusedAnswers += 1; return dropConnection() }
            }
            kickReader()
            settlePoints()
        case (.streaming, .ackCommitted(let d, let seq)) where d == settings.diskID:
            do { try sender!.ackCommitted(seq) } catch { stats.refusedAnswers += 1; return dropConnection() }
            settlePoints()
        case (_, .ping), (_, .pong):
            break
        default:
            // An error frame, or anything out of place: the session ends.
            dropConnection()
        }
    }

    /// `DiskReplicator.resume`: the sender decides, the epoch history
    /// records a new epoch before anything sealed in it is sent.
    private func resume(durable: UInt64, committed: UInt64) {
        let before = sender!.epoch
        do {
            _ = try sender!.resume(durable: durable, committed: committed) { scheduler.rng.bytes(SegmentLineage.idBytes) }
        } catch {
            stats.refusedAnswers += 1
            return dropConnection()
        }
        if sender!.epoch != before { stats.renumberings += 1 }
        if !sender!.lineageRecorded {
            let recorded = epochHistory.begin(sender!.lineage.epochID, start: sender!.lineage.epochStart)
            sender!.adoptLineage(recorded)
            sender!.lineageStored()
        }
        if sender!.completeResume(durable: durable, committed: committed, replicatedBefore: replicatedBefore) {
            targetLost = true
        }
        connection!.phase = .streaming
        reconnectDelayNs = settings.reconnectDelayNs.lowerBound
        settlePoints()
        kickReader()
        kickSender()
    }

    // MARK: For the checker

    /// The agent has work left: chunks to read, segments not committed, bits set.
    var idle: Bool {
        guard let s = sender else { return false }
        return s.toReadIsEmpty && pipeline.isEmpty && s.window.isEmpty && s.uncommitted.isEmpty
            && s.committedSequence + 1 == s.nextSequence && !hrl.contains(true) && freeze == nil
    }
}
