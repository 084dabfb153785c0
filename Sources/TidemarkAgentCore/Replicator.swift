import Foundation
import Glibc
import TidemarkConfigFiles
import TidemarkCrypto
import TidemarkSurface
import TidemarkSystem
import TidemarkTracking
import TidemarkTransport
import TidemarkWire

/// Where and how one disk replicates.
public struct ReplicationSettings: Sendable {
    public var agentID: String
    public var serverHost: String
    public var serverPort: UInt16
    public var serverName: String
    public var tls: TLSFiles
    public var key: ReplicationKey
    public var compressionLevel: CompressionSetting
    public var segmentSizeBytes: UInt32
    public var inflightBytesMax: UInt64
    public var bandwidthLimitBytesPerSecond: UInt64
    public var drainIntervalMs: Int
    public var freezeTimeoutMs: Int
    public var crashIntervalSeconds: Int
    public var appIntervalSeconds: Int
    public var preFreezeHook: String?
    public var postThawHook: String?
    /// A hook running longer is stopped (`hook_timeout` of the disk or the policy), in milliseconds.
    public var hookTimeoutMs: Int = AgentConfig.defaults.hookTimeoutSeconds * 1000
    /// A connection that makes no progress this long is dropped and made
    /// again (`replication.io_timeout_ms`); see `session(over:)`.
    public var ioTimeoutMs: Int
}

/// Continuous replication of one tracked disk to a process server:
///
/// drain (main thread) → `.hrl` → to-read set → reader thread (io_uring,
/// zero chunks become zero extents, seal on all cores) → send window →
/// sender thread (TLS) → "durable" frees the window → "committed" lets the
/// main thread clear the `.hrl` bits of chunks not written since.
///
/// The rules — numbering, the window, acknowledgements, resume, which bits
/// are cleared when — are `ReplicationSender`'s (ReplicationSender.swift), a
/// value without threads or I/O kept in `state` under `cond`; this class is
/// the shell around it: threads, sockets, files, the tracer and the `.hrl`.
///
/// Bounded: the reader takes no new segment while the window holds
/// `inflightBytesMax` of sealed segments or `inflightSegmentsMax` segments
/// are in flight, and bits accumulate (bitmap mode); the segments it read
/// before (at most one batch of `workers` plus the seal pipeline's
/// `workers + 1`) still join, so the window exceeds the byte limit by at
/// most 2 × workers + 1 segments. The chunk → newest-segment map holds only
/// chunks of uncommitted segments.
public final class DiskReplicator: @unchecked Sendable {
    public let session: DiskSession
    public let settings: ReplicationSettings
    public let diskID: String
    let chunkBytes: UInt64
    let chunkCount: UInt64

    // Shared state, guarded by `cond`.
    let cond = NSCondition()
    /// The replication rules' state (to read, numbering, window,
    /// acknowledgements, epochs, committed-through time).
    var state: ReplicationSender {
        didSet { publishHeld() }
    }
    /// What this disk shares with the others of the agent (HostShare.swift).
    let share: HostShare
    private(set) var shareIndex = 0
    /// The bytes last published to `share`. Under `cond`.
    private var heldPublished: UInt64 = 0
    var stopping = false
    /// The armed tag of the point this disk takes part in (Points.swift):
    /// while it is set, the reader signals its `readyWake` when it waits
    /// with nothing left to read.
    var pointRequest: PointRequest?
    /// Point tags numbered by their coordinator while the reader waited in
    /// `nextBatch`, in sequence order; the reader seals them before anything
    /// numbered after them (at most one per point waiting for this disk).
    var tagsNumbered: [Planned] = []
    /// The reader waits in `nextBatch` (holds no batch it has not read).
    var readerWaiting = false
    var readerBusy = false
    var replicatedBefore = false
    var targetLost = false
    /// The last connection to the server failed or ended, and none is
    /// established since (guarded by `cond`); false while the first is tried.
    var serverUnreachable = false
    /// Why the last whole-disk resync read the whole disk (main thread).
    var wholeDiskWhy = "not asked"
    public internal(set) var stats = Stats()
    /// This disk's metrics (docs/metrics.md).
    public let metrics: DiskMetrics
    /// The level chooser when `compression_level` is `auto` (nil: fixed).
    var compression: CompressionGovernor?
    /// The sender's last look at the window found nothing to send.
    var senderIdle = false
    /// Wakes the sender from its wait for acknowledgements when it has
    /// something to send: a sealed segment or a digest request.
    let senderWake: WakeSignal
    /// The digest-compare resync (Resync.swift), guarded by `cond`.
    let resync: ResyncState
    var orders: [PointOrder] = []
    /// Freeze durations of the points made, for status and benchmarks (bounded).
    public internal(set) var freezeMsHistory: [Double] = []
    /// The tracer's count of write completions on the disk, read before the
    /// last drain (`waitForNextDrain`). Main thread only.
    var eventsBeforeLastDrain: UInt64 = 0

    func recordFreeze(ms: Double) {
        cond.lock()
        if freezeMsHistory.count >= 10_000 { freezeMsHistory.removeFirst(5_000) }
        freezeMsHistory.append(ms)
        cond.unlock()
        metrics.frozen(ms: ms)
    }

    public struct Stats: Sendable {
        public var bytesRead: UInt64 = 0
        public var bytesSent: UInt64 = 0
        public var zeroChunks: UInt64 = 0
        public var segmentsSealed: UInt64 = 0
        public var segmentsSent: UInt64 = 0
    }

    public init(session: DiskSession, settings: ReplicationSettings, share: HostShare) {
        self.session = session
        self.settings = settings
        self.share = share
        chunkBytes = UInt64(session.hrl.header.chunkSizeBytes)
        chunkCount = (session.device.sizeBytes + chunkBytes - 1) / chunkBytes
        let limits = SendWindowLimits(bytesMax: settings.inflightBytesMax, segmentsMax: ReplicationLimits.inflightSegmentsMax,
                                      chunksPerSegment: max(1, UInt64(settings.segmentSizeBytes) / chunkBytes),
                                      runsPerSegmentMax: WireLimits.extentsPerSegmentMax / 2)
        state = ReplicationSender(chunkCount: chunkCount, limits: limits, initialEpochID: Self.newEpochID())
        resync = ResyncState(chunks: chunkCount)
        senderWake = WakeSignal()
        diskID = Self.diskID(agentID: settings.agentID, device: session.device)
        if settings.compressionLevel == .auto { compression = CompressionGovernor() }
        metrics = DiskMetrics(diskID: diskID)
        session.metrics = metrics
        shareIndex = share.register(cond)
    }

    /// Tells the host's budget what this disk holds now: its window, and a
    /// payload buffer per segment numbered and not yet sealed. Under `cond`.
    private func publishHeld(force: Bool = false) {
        let bytes = state.windowBytes + state.unsealedSegments * share.segmentBytes
        guard force || bytes != heldPublished else { return }
        heldPublished = bytes
        share.publish(shareIndex, bytes: bytes)
    }

    /// A fresh random epoch id. getrandom does not fail on Linux ≥ 3.17 with
    /// a valid buffer; if it did, the all-zero id only weakens the check
    /// against superseded sealings (two runs could share it).
    static func newEpochID() -> [UInt8] {
        (try? SecureRandom.bytes(SegmentLineage.idBytes)) ?? [UInt8](repeating: 0, count: SegmentLineage.idBytes)
    }

    /// The disk's name on the wire and in target storage: stable across
    /// reboots (derived from the disk's identity, not its kernel name).
    public static func diskID(agentID: String, device: BlockDeviceInfo) -> String {
        let digest = Array(device.identity.utf8).withUnsafeBytes { SHA256.hash($0) }
        let hex = digest.prefix(6).map { String(format: "%02x", $0) }.joined()
        return "\(agentID)-\(device.kernelName)-\(hex)"
    }

    // MARK: Main loop

    /// Replicates until `StopSignal` or `stop()`. Starts the reader and sender threads.
    public func run() throws {
        try prepare()
        let reader = Thread { self.runReader() }
        let sender = Thread { self.runSender() }
        let scanner = Thread { self.runScan() }
        reader.start()
        sender.start()
        scanner.start()
        defer {
            cond.lock()
            stopping = true
            cond.broadcast()
            cond.unlock()
            while true {
                cond.lock()
                let busy = readerBusy || resync.scanBusy
                cond.unlock()
                if !busy { break }
                usleep(5_000)
            }
        }
        while !StopSignal.isRequested && !isStopping {
            let started = monotonicSeconds()
            let found = try drainOnce()
            try clearCommitted()
            // Points wait while a resync compares: the target does not
            // match the disk until every chunk has been compared.
            if resyncActive { holdPointOrdersDuringResync() } else { try servePointRequests() }
            reportProgressIfDue()
            waitForNextDrain(after: started, found: found)
        }
        try drainOnce()
        try clearCommitted()
    }

    var isStopping: Bool {
        cond.lock()
        defer { cond.unlock() }
        return stopping
    }

    public func stop() {
        cond.lock()
        stopping = true
        cond.broadcast()
        cond.unlock()
    }

    /// Loads the backlog: a disk that needs a resync is marked dirty whole
    /// (durably, so an interrupted resync resumes from the `.hrl` instead of
    /// starting over) and its dirty chunks are compared with the target
    /// before any is sent (Resync.swift); otherwise the `.hrl` bits are sent.
    func prepare() throws {
        let h = session.hrl.header
        replicatedBefore = h.targetID == replicatedTargetID
        let known = [pendingTargetID, scanTargetID, replicatedTargetID]
        if h.state == .resyncRequired || !known.contains(h.targetID) {
            Log.info("\(session.device.path): resync of \(diskID) by digest comparison (\(h.state == .resyncRequired ? "resync required: \(h.reason)" : "new target"))")
            metrics.resyncStarted(h.state == .resyncRequired ? .resyncRequired : .newTarget)
            // Whether the target holds the disk already is known once the
            // server answers (resume): a new .hrl may find it there.
            let kind: ResyncKind = h.state == .resyncRequired && replicatedBefore
                ? .resync("resync required: \(h.reason)\(h.reasonText.isEmpty ? "" : ", \(h.reasonText)")") : .resumed
            try markWholeDisk(kind)
        }
        // A resync interrupted earlier (or an initial replication of an
        // older agent, "pending") compares what is left instead of sending it.
        let scanning = session.hrl.header.targetID != replicatedTargetID
        let words = try session.hrl.dirtyWords()
        cond.lock()
        for e in words.entries {
            if scanning { scheduleScanLocked(word: e.wordIndex, bits: e.bits) } else { state.markToRead(word: e.wordIndex, bits: e.bits) }
        }
        let n = scanning ? resync.toScan.count : state.toReadCount
        cond.unlock()
        Log.info("\(session.device.path): \(n) chunks to \(scanning ? "compare with the target" : "replicate") as \(diskID)")
    }

    /// The `.hrl` names the target it is tracking for: "pending" until the
    /// first commit, then "replicated"; a target that has nothing of a disk
    /// marked replicated was lost, and the whole disk is sent again.
    var pendingTargetID: String { "server:\(diskID)" }
    var replicatedTargetID: String { "server:\(diskID)@replicated" }

    /// Marks the whole disk dirty, durably, and schedules every chunk for
    /// comparison with the target: an interrupted resync resumes from the
    /// `.hrl` (target id "@scan") instead of starting over.
    func markWholeDisk(_ kind: ResyncKind) throws {
        try session.drain()
        // Used blocks only, when the filesystem can say which: the tracer
        // was attached before this question (at the session's start), so a
        // block allocated after the answer is written after it, and tracked.
        let used = session.testSwitches.wholeDiskReads ? nil : usedChunks()
        if let used {
            try session.hrl.persistSet(used.words)
        } else {
            try session.hrl.markAllDirty()
        }
        try session.hrl.setTargetID(scanTargetID)
        try session.hrl.setState(.tracking, reason: .none, text: "")
        replicatedBefore = false
        let scope = used?.scope ?? wholeDiskScope
        Log.info("\(session.device.path): the resync reads \(scope)")
        cond.lock()
        if let used {
            scheduleScanLocked(words: used.words, kind: kind)
        } else {
            scheduleScanLocked(all: true, kind: kind)
        }
        resync.scope = scope
        state.wholeDiskMarked()
        // The sender holds segments back until now (nextToSend).
        cond.broadcast()
        cond.unlock()
    }

    /// Why the last `usedChunks` found none (for status and logs).
    var wholeDiskScope: String {
        session.testSwitches.wholeDiskReads ? "the whole disk (test switch)" : "the whole disk: \(wholeDiskWhy)"
    }

    /// The chunks the disk's filesystem uses (and every chunk past its end),
    /// or nil when it cannot say (`UsedSpace`); then `wholeDiskWhy` says why.
    func usedChunks() -> (words: SparseWords, scope: String)? {
        switch UsedSpace.map(session.device) {
        case .failure(let n):
            wholeDiskWhy = n.reason
            return nil
        case .success(let map):
            var words = SparseWords()
            let end = min(map.filesystemBytes, session.device.sizeBytes)
            for e in map.extents where e.offset < end {
                let last = min(e.offset + e.length, end) - 1
                words.appendChunks(first: e.offset / chunkBytes, count: last / chunkBytes - e.offset / chunkBytes + 1)
            }
            if end < session.device.sizeBytes {
                let first = end / chunkBytes
                words.appendChunks(first: first, count: chunkCount - first)
            }
            let scope = "used blocks only: \(map.source) uses \(ByteCount.text(map.usedBytes)) of \(ByteCount.text(session.device.sizeBytes)), \(words.popcount) of \(chunkCount) chunks"
            return (words, scope)
        }
    }

    /// Waits until the next drain of the main loop: the configured drain
    /// interval after the drain that began at `started` (monotonic seconds),
    /// shortened while the disk is written. After a drain that found
    /// chunks, the next one comes `busyDrainIntervalMs` after it; otherwise
    /// as soon as the tracer has counted a write completion on the disk since
    /// (looked at every `writeWatchMs`), but not sooner than that. A burst is
    /// thus drained while it is written, and the drain after its last write
    /// follows within `busyDrainIntervalMs`; an idle disk is drained at the
    /// configured interval. The counter only hastens drains: whatever it
    /// says, every bit is drained by the next one.
    func waitForNextDrain(after started: Double, found: Bool) {
        let interval = Double(settings.drainIntervalMs) / 1000
        let busy = Double(min(settings.drainIntervalMs, ReplicationLimits.busyDrainIntervalMs)) / 1000
        let due = started + (found ? busy : interval)
        while !StopSignal.isRequested && !isStopping {
            let now = monotonicSeconds()
            if now >= due { return }
            if now >= started + busy && session.bitmap.events != eventsBeforeLastDrain { return }
            let left = Int(((due - now) * 1000).rounded(.up))
            StopSignal.sleep(milliseconds: max(1, min(left, ReplicationLimits.writeWatchMs)))
        }
    }

    /// Drains the kernel's bits into the `.hrl` and the to-read set; true
    /// when it found any.
    @discardableResult
    func drainOnce() throws -> Bool {
        var added: [(UInt64, UInt64)] = []
        let startedUnixMs = CommittedThroughTracker.nowUnixMs()
        eventsBeforeLastDrain = session.bitmap.events
        let result = try session.drain { w, b in added.append((w, b)) }
        if !added.isEmpty || result.overflowed {
            Log.debug("\(diskID): drain at \(monotonicNanoseconds() / 1_000_000) ms: \(result.overflowed ? "overflow, " : "")chunks \(added.map { w, b in (0..<64).filter { b >> $0 & 1 == 1 }.map { String(w * 64 + UInt64($0)) }.joined(separator: ",") }.joined(separator: ","))")
        }
        cond.lock()
        state.drained(added, atUnixMs: startedUnixMs)
        let found = !added.isEmpty || result.overflowed
        if found { cond.broadcast() }
        cond.unlock()
        if result.overflowed {
            // Every chunk may have changed unseen (the drain marked them all
            // dirty in the .hrl): compare the whole disk with the target and
            // send only what differs, as after a lost tracker, instead of
            // sending all of it.
            Log.warning("\(session.device.path): the whole disk counts as dirty; comparing it with the target (digest resync)")
            metrics.resyncStarted(.tracerOverflow)
            let why: String
            if case .wholeDisk(_, let w)? = result.deficit { why = "writes the tracer did not see: \(w)" }
            else { why = "the tracer overflowed or was skipped" }
            try markWholeDisk(.resync(why))
        }
        return found
    }

    /// Clears, in the `.hrl`, the chunks of committed segments that were
    /// not drained again since (those stay for their newer segment).
    func clearCommitted() throws {
        cond.lock()
        let lost = targetLost
        targetLost = false
        // During a resync the `.hrl` says "@scan" until the comparison is
        // over and its chunks are committed (finishResyncIfDone).
        let firstCommit = state.committedSequence > 0 && !replicatedBefore && !resync.awaitingCommit
        cond.unlock()
        if lost {
            Log.warning("\(session.device.path): the target holds nothing of \(diskID), which was replicated before: sending the whole disk again")
            metrics.resyncStarted(.targetLost)
            try markWholeDisk(.resync("the target lost the disk"))
        }
        try clearMatched()
        if firstCommit {
            try session.hrl.setTargetID(replicatedTargetID)
            replicatedBefore = true
        }
        cond.lock()
        let chunks = state.takeClearable()
        cond.unlock()
        if !chunks.isEmpty {
            try session.hrl.persistClear(SparseWords(chunks: chunks))
        }
        try finishResyncIfDone()
    }

    // MARK: Reader

    private func runReader() {
        cond.lock()
        readerBusy = true
        cond.unlock()
        defer {
            cond.lock()
            readerBusy = false
            cond.broadcast()
            cond.unlock()
        }
        do {
            // The reader (its ring; it reads straight into the payload
            // buffers, which are page-aligned and hold a whole segment, so
            // it makes no buffers of its own for them) and the payload
            // buffers exist while there is work: after
            // `readerIdleReleaseMs` without any, they are given back and
            // made again by the next batch.
            var reader: ChunkReader?
            let workers = share.sealers.count
            // Each segment is sealed on one of `workers` threads as soon as
            // it is read, while the next is read here, with a sealer lent by
            // the host's pool (shared by every disk); segments join the
            // window in sequence order. At most one segment per worker plus
            // one more waits or is sealed (`SealPipeline.depth`), each in a
            // payload buffer of the host's pool, counted in its budget.
            let pipeline = SealPipeline(pool: share.sealers, threads: workers, depth: workers + 1)
            var reading = false
            defer { if reading { share.readerIdle() } }
            // Waits for the last sealing before the reader counts as stopped.
            defer { pipeline.finish() }
            let chunksPerSegment = max(1, UInt64(settings.segmentSizeBytes) / chunkBytes)
            let payloadBytes = Int(chunksPerSegment * chunkBytes)
            while true {
                let idle = reader == nil ? nil : Double(ReplicationLimits.readerIdleReleaseMs) / 1000
                guard let batch = nextBatch(maxSegments: workers, idleAfterSeconds: idle) else { return }
                if batch.isEmpty {
                    reader = nil
                    if reading { share.readerIdle(); reading = false }
                    returnFreeHeapToSystem()
                    continue
                }
                let current = try reader ?? ChunkReader(path: session.device.path, options: ChunkReaderOptions()) { Log.warning($0) }
                reader = current
                if !reading { share.readerStarted(); reading = true }
                let pool = share.payloads
                for p in batch {
                    let buffer = pool.take(payloadBytes)
                    let plan = try read(p, reader: current, into: buffer.buffer)
                    // Every sealer busy while this segment is ready: sealing
                    // may be what holds replication back (CompressionGovernor).
                    let sealersBusy = pipeline.sealersBusy
                    try pipeline.submit({ sealer in
                        try self.seal(p, plan, payload: UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<plan.payloadBytes]), sealer: sealer)
                    }, deliver: { bytes in
                        withExtendedLifetime(buffer) {}
                        self.queueSealed(p, plan, bytes, sealersBusy: sealersBusy)
                    })
                }
            }
        } catch {
            Log.error("\(session.device.path): reader stopped: \(error)")
            stop()
        }
    }

    struct Planned {
        /// Its sequence, chunks, epoch and lineage (ReplicationSender).
        var numbered: NumberedSegment
        var point: PointTag?
        var sequence: UInt64 { numbered.sequence }
        var runs: [ChunkRun] { numbered.runs }
        /// The zstd level chosen for it (`auto`); nil: the sealer's fixed level.
        var compressionLevel: Int32? = nil
        /// Its batch waited for room in the send window (downstream-bound).
        var waitedForWindow = false
    }

    /// Waits for work and window space; takes up to `maxSegments` segments'
    /// worth of chunks from the to-read set and numbers them.
    /// With `idleAfterSeconds`, returns an empty batch once nothing came for
    /// that long (the reader then gives its buffers back).
    private func nextBatch(maxSegments: Int, idleAfterSeconds: Double? = nil) -> [Planned]? {
        cond.lock()
        defer { cond.unlock() }
        let idleFrom = monotonicSeconds()
        var waitedForWindow = false
        var admitted = 0
        // Not waiting for the host's budget while it reads (or stops).
        defer { share.stopWaiting(shareIndex) }
        while true {
            if stopping { return nil }
            if !tagsNumbered.isEmpty {
                // Numbered while this thread waited below (PointCoordinator.tag):
                // everything drained under the freeze is in earlier segments.
                // One numbered in an earlier epoch is dropped by queueSealed.
                defer { tagsNumbered.removeAll() }
                return tagsNumbered
            }
            if let idleAfterSeconds, monotonicSeconds() - idleFrom >= idleAfterSeconds, state.toReadIsEmpty { return [] }
            let roomy = state.windowHasRoom
            var hostBound = false
            if roomy && !state.toReadIsEmpty {
                admitted = share.admit(shareIndex, wanted: maxSegments)
                if admitted > 0 { break }
                hostBound = true
            }
            if (!roomy || hostBound) && !state.toReadIsEmpty { waitedForWindow = true }
            if let p = pointRequest, state.mayTagPoint, !resync.active {
                // Nothing left to read under the freeze (and no whole disk
                // still to mark after a lost target): the point's
                // coordinator may number the tag now (tagReadinessLocked).
                p.readyWake.signal()
            }
            readerWaiting = true
            // Room in the host's budget is broadcast on `cond` by the disk
            // that frees it; a wake-up lost to the race costs one short poll.
            _ = cond.wait(until: Date(timeIntervalSinceNow: hostBound ? Double(ReplicationLimits.hostBudgetPollMs) / 1000 : 0.2))
            readerWaiting = false
        }
        // Downstream-bound: the reader waited for room, or the window is
        // still mostly full (an acknowledgement freed a little room just
        // before this batch: with a narrow link that alternates with waits).
        let downstreamBound = waitedForWindow
            || state.windowBytes >= settings.inflightBytesMax / 4 * 3
        let level = compression?.level
        let planned = state.planBatch(segmentsMax: admitted).map {
            Planned(numbered: $0, point: nil, compressionLevel: level, waitedForWindow: downstreamBound)
        }
        // The admission counted `admitted` segments; what was numbered replaces it.
        publishHeld(force: true)
        return planned
    }

    /// A segment read: its extents (zero chunks as zero extents), how many
    /// payload bytes (the data extents' bytes, concatenated) it put in its
    /// buffer, and counters.
    struct ReadPlan {
        var extents: [SegmentExtent]
        var payloadBytes: Int
        var readBytes: UInt64
        var zeroChunks: UInt64
    }

    /// Reads one segment's chunks straight into `buffer` (O_DIRECT, no
    /// copy), then keeps the bytes of its data chunks, one after the other,
    /// at its start: zero chunks are dropped by moving the data after them
    /// down, in place (`SegmentPayloadCompactor`). The buffer holds
    /// `chunksPerSegment` chunks, zero ones included.
    private func read(_ p: Planned, reader: ChunkReader, into buffer: AlignedBuffer) throws -> ReadPlan {
        let size = session.device.sizeBytes
        var readBytes: UInt64 = 0
        var payload = SegmentPayloadCompactor(chunkBytes: Int(chunkBytes))
        let byteExtents = p.runs.map { run -> ByteExtent in
            let off = run.first * chunkBytes
            return ByteExtent(offset: off, length: min(run.count * chunkBytes, size - off))
        }
        if !byteExtents.isEmpty {
            precondition(reader.requestedBytes(byteExtents) <= buffer.count, "a segment's chunks exceed its payload buffer")
            let bytes = buffer.bytes
            try reader.read(byteExtents, into: buffer) { offset, range in
                readBytes += UInt64(range.count)
                payload.add(offset: offset, range: range, in: bytes)
            }
        }
        let used = payload.payloadBytes
        let extents = payload.extents
        Log.debug("\(diskID): #\(p.sequence) read at \(monotonicNanoseconds() / 1_000_000) ms: \(Self.describe(extents, UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<used]), chunkBytes: chunkBytes))")
        return ReadPlan(extents: extents, payloadBytes: used, readBytes: readBytes, zeroChunks: payload.zeroChunks)
    }

    /// "chunk:crc32c" for each data chunk and "chunk:0" for each zero chunk,
    /// for debug logs that let a test tell which content each segment read.
    static func describe(_ extents: [SegmentExtent], _ raw: UnsafeRawBufferPointer, chunkBytes: UInt64) -> String {
        var out: [String] = []
        var pos = 0
        for e in extents {
            var off = e.offset
            while off < e.offset + UInt64(e.length) {
                let n = Int(min(chunkBytes, e.offset + UInt64(e.length) - off))
                if e.kind == .zero {
                    out.append("\(off / chunkBytes):0")
                } else {
                    let crc = crc32c(UnsafeRawBufferPointer(rebasing: raw[pos..<pos + n]))
                    out.append("\(off / chunkBytes):\(String(crc, radix: 16))")
                    pos += n
                }
                off += UInt64(n)
            }
        }
        return out.joined(separator: ",")
    }

    /// Seals one segment (on a sealer thread).
    private func seal(_ p: Planned, _ plan: ReadPlan, payload: UnsafeRawBufferPointer, sealer: SegmentSealer) throws -> [UInt8] {
        try sealer.seal(kind: p.point == nil ? .data : .point, diskID: diskID, sequence: p.sequence,
                        diskSizeBytes: session.device.sizeBytes, chunkSizeBytes: UInt32(chunkBytes),
                        extents: plan.extents, payload: payload, point: p.point, lineage: p.numbered.lineage,
                        compressionLevel: p.compressionLevel)
    }

    /// Puts a sealed segment in the send window (segments arrive in sequence order).
    private func queueSealed(_ p: Planned, _ plan: ReadPlan, _ bytes: [UInt8], sealersBusy: Bool) {
        cond.lock()
        defer { cond.unlock() }
        stats.bytesRead += plan.readBytes
        stats.zeroChunks += plan.zeroChunks
        if p.point == nil, plan.payloadBytes > 0, compression != nil {
            let signal: CompressionGovernor.Signal = p.waitedForWindow ? .downstreamBound
                : sealersBusy && senderIdle ? .sealingBound : .neither
            if compression!.observe(signal) {
                Log.debug("\(diskID): compression level \(compression!.level) (\(signal == .sealingBound ? "sealing" : "downstream") is the bottleneck)")
            }
        }
        guard state.sealed(p.numbered, bytes: bytes) else {
            // The server restarted numbering while we read: these chunks went back to be read again.
            cond.broadcast()
            return
        }
        stats.segmentsSealed += 1
        cond.broadcast()
        if senderIdle { senderWake.signal() }
    }

    // MARK: Sender

    private func runSender() {
        var backoffMs = ReplicationLimits.reconnectDelayMsMin
        while !isStopping && !StopSignal.isRequested {
            var established = false
            do {
                try session(over: try connect(), established: &established)
                backoffMs = ReplicationLimits.reconnectDelayMsMin
            } catch {
                // A connection that worked and then broke is retried at once;
                // only failures in a row back off further.
                if established { backoffMs = ReplicationLimits.reconnectDelayMsMin }
                if isStopping || StopSignal.isRequested { break }
                Log.warning("\(diskID): connection to \(settings.serverHost):\(settings.serverPort) failed: \(error); retrying in \(backoffMs) ms")
            }
            cond.lock()
            state.connectionEnded()
            senderIdle = false
            serverUnreachable = true
            cond.unlock()
            connectionEndedForScan()
            StopSignal.sleep(milliseconds: backoffMs)
            backoffMs = min(backoffMs * 2, ReplicationLimits.reconnectDelayMsMax)
        }
    }

    private func connect() throws -> TLSStream {
        let socket = try TCPSocket.connect(host: settings.serverHost, port: settings.serverPort,
                                           timeoutMs: ReplicationLimits.connectTimeoutMs)
        try socket.setTimeouts(readMs: settings.ioTimeoutMs, writeMs: settings.ioTimeoutMs)
        let context = try TLSContext.client(settings.tls)
        return try TLSStream.connect(socket, context, serverName: settings.serverName,
                                     handshakeTimeoutMs: settings.ioTimeoutMs)
    }

    private func session(over stream: TLSStream, established: inout Bool) throws {
        defer { stream.close() }
        let reader = FrameReader(stream)
        let writer = FrameWriter(stream)
        try writer.send(.hello(protocolVersion: WireProtocol.version, agentID: settings.agentID))
        guard case .helloOK(let version, let serverID)? = try reader.next() else {
            throw TidemarkError(.state, "the server did not answer hello")
        }
        guard version == WireProtocol.version else {
            throw TidemarkError(.state, "the server answered in protocol version \(version); this agent speaks \(WireProtocol.version)",
                                hint: "upgrade the process server first")
        }
        try writer.send(.openDisk(diskID: diskID, diskSizeBytes: session.device.sizeBytes,
                                  chunkSizeBytes: UInt32(chunkBytes), keyID: settings.key.id))
        let answer = try reader.next()
        guard case .diskState(_, let durable, let committed)? = answer else {
            if case .error(let code, let message)? = answer {
                throw TidemarkError(.state, "the server refused disk \(diskID): \(message) (\(code))")
            }
            throw TidemarkError(.state, "the server did not answer openDisk")
        }
        try resume(durable: durable, committed: committed)
        established = true
        Log.info("\(diskID): connected to \(serverID) at \(settings.serverHost):\(settings.serverPort); server has #\(durable) durable, #\(committed) committed")
        let bucket = TokenBucket(bytesPerSecond: settings.bandwidthLimitBytesPerSecond)
        // Liveness: a connection can hang without an error (a stalled network
        // path, a server that stopped reading). With nothing else to send, a
        // ping goes out every quarter of the io timeout (it also keeps the
        // server's idle limit away); when no frame at all arrives within the
        // io timeout, the connection is given up and made again.
        let ioTimeoutSeconds = Double(settings.ioTimeoutMs) / 1000
        var lastHeard = monotonicSeconds()
        var lastSent = lastHeard
        var pings: UInt64 = 0
        while !isStopping && !StopSignal.isRequested {
            let now = monotonicSeconds()
            if now - lastHeard >= ioTimeoutSeconds {
                throw TidemarkError(.io, "nothing heard from \(serverID) for \(settings.ioTimeoutMs) ms (replication.io_timeout_ms): the connection is given up and made again")
            }
            if now - lastSent >= ioTimeoutSeconds / 4 {
                pings += 1
                try writer.send(.ping(pings))
                lastSent = now
            }
            // Cleared before looking for work: a wake-up given after this
            // look is kept, and ends the wait below at once.
            senderWake.clear()
            // A resync's digest request goes before segments: it is small and the scan waits for it.
            let asked = try sendDigestRequest(writer)
            if asked { lastSent = monotonicSeconds() }
            // Send what is unsent, in order.
            cond.lock()
            let item = state.nextToSend()
            senderIdle = item == nil
            cond.unlock()
            if let item {
                bucket.take(UInt64(item.bytes.count))
                try writer.send(.segment(item.bytes))
                lastSent = monotonicSeconds()
                cond.lock()
                state.markSent(item.sequence)
                stats.bytesSent += UInt64(item.bytes.count)
                stats.segmentsSent += 1
                cond.unlock()
                metrics.segmentSent(bytes: item.bytes.count)
            }
            // Read whatever acknowledgements have arrived; with nothing to
            // send, wait for one, or for something to send (senderWake).
            let idle = item == nil && !asked
            while try reader.hasBufferedBytes
                    || stream.waitReadable(timeoutMs: idle ? ReplicationLimits.idlePollMs : 0, wake: idle ? senderWake : nil) {
                guard let m = try reader.next() else { throw TidemarkError(.state, "the server closed the connection") }
                lastHeard = monotonicSeconds()
                try handle(m)
            }
        }
    }

    /// After (re)connecting: drop what the server holds durably, and decide
    /// what to re-send (`ReplicationSender.resume`). Throws when the answer
    /// is impossible, and when the epoch history cannot be written: nothing
    /// of a new epoch is sent before it is.
    private func resume(durable: UInt64, committed: UInt64) throws {
        cond.lock()
        defer {
            cond.broadcast()
            cond.unlock()
        }
        let resumed = try state.resume(durable: durable, committed: committed, freshEpochID: Self.newEpochID)
        serverUnreachable = false
        if resync.kind == .resumed {
            // A resync found at start: the first copy while the target holds
            // nothing committed of the disk.
            resync.kind = committed == 0 ? .initialCopy : .resync("comparing the disk with what the target holds, resumed after a restart or for a new tracking file")
        }
        // A resync compares only against digests that include everything
        // this server held when we connected (segments of an earlier run, or
        // of a lost target's successor): set on every connection.
        resync.baseline = durable
        if let before = resumed.acknowledgedBefore {
            Log.warning("\(diskID): the server has only #\(durable), #\(before) had been acknowledged: re-sending all uncommitted chunks")
        }
        if !state.lineageRecorded {
            // Record the epoch before anything sealed in it goes out: the
            // next run names it as the owner of the sequences before its own.
            let path = EpochHistory.path(hrlPath: session.hrl.path)
            var history = EpochHistory.load(path) { Log.warning("\(diskID): \($0)") }
            // The history names the previous epoch. A renumbered epoch has
            // sealed nothing yet (the lock is held since it began); the run's
            // first epoch may have, from 1, and beginning at 1 names none, as
            // its segments say.
            let recorded = history.begin(state.lineage.epochID, start: state.lineage.epochStart)
            state.adoptLineage(recorded)
            try history.store(path)
            state.lineageStored()
            if case .unknown = recorded.previous {
                Log.warning("\(diskID): numbering continues at #\(recorded.epochStart) with no record of the epochs before it (\(path) is missing or damaged): recoveries will take the epochs of the sequences below #\(recorded.epochStart) from the stored headers and say so")
            }
        }
        if state.completeResume(durable: durable, committed: committed, replicatedBefore: replicatedBefore) {
            // The target has nothing of a disk this .hrl says was replicated.
            targetLost = true
        }
    }

    private func handle(_ m: WireMessage) throws {
        switch m {
        case .ackDurable(let disk, let seq) where disk == diskID:
            cond.lock()
            do { try state.ackDurable(seq) } catch { cond.unlock(); throw error }
            cond.broadcast()
            cond.unlock()
        case .ackCommitted(let disk, let seq) where disk == diskID:
            cond.lock()
            do { try state.ackCommitted(seq) } catch { cond.unlock(); throw error }
            cond.broadcast()
            cond.unlock()
        case .chunkDigests(let disk, let first, let sequence, let states) where disk == diskID:
            receiveDigests(first: first, sequence: sequence, states: states)
        case .ping(let n):
            _ = n
        case .pong:
            break
        case .error(let code, let message):
            throw TidemarkError(.state, "the server reports error \(code): \(message)")
        default:
            throw TidemarkError(.corrupt, "unexpected message \(m.type) from the server")
        }
    }

}

func monotonicSeconds() -> Double { SystemClock.monotonicSeconds() }
