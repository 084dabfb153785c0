import Foundation
import Glibc
import TidemarkSystem
import TidemarkTracking
import TidemarkWire

/// The digest-compare resync (docs/design.md, "Change capture"): when
/// tracking was lost, or the disk is new to this `.hrl`, every chunk still
/// dirty in the `.hrl` is compared with what the target holds instead of
/// being sent blindly.
///
/// Per window of at most `WireLimits.digestsPerRequestMax` chunks the scan
/// thread asks the server for the target's chunk states (over the sender's
/// connection), then reads only the chunks the target holds (zero or data),
/// digests them (`ChunkDigester`, keyed: the server learns only equality)
/// and compares:
///
/// - target unknown, or content differs → the chunk joins the to-read set
///   and is sent by the normal pipeline (re-read then: a chunk written in
///   between is sent as it is now);
/// - equal → the chunk is "matched": the main thread clears its `.hrl` bit
///   like a committed chunk's, unless it was drained again since (it is then
///   in the to-read set or in an uncommitted segment) — so the `.hrl`
///   invariant holds: a chunk written after the scan read it is dirty in the
///   kernel map or the `.hrl`.
///
/// The answer must reflect at least every segment the server held when this
/// connection was opened (`baseline`, the `diskState` durable sequence):
/// segments of an earlier agent run still in the server's spool could
/// otherwise overwrite a chunk judged equal. Later segments are this run's
/// own, whose chunks were read from the disk after the bits that cover them
/// were drained, so comparing against them is exact.
///
/// Memory: the to-scan set is one bit per chunk (like the to-read set); a
/// window holds at most 2048 chunk states; chunks are read 1 MiB at a time,
/// 8 in flight (`Limits.readQueueDepth`).
/// Recovery points wait until the scan is over (a point would otherwise
/// claim chunks not yet compared).
final class ResyncState: @unchecked Sendable {
    // Guarded by the replicator's `cond`.
    var toScan: ChunkSet
    var windowInProgress = false
    /// Chunks of the window in progress (0 when none).
    var windowChunks: UInt64 = 0
    var baseline: UInt64?
    var query: DigestQuery?
    var matched: [UInt64] = []
    var scanBusy = false
    var stats = ResyncStats()
    /// A resync is under way: scanning, or its queued chunks not all committed yet.
    var awaitingCommit = false
    /// Once the scan is over and the to-read set was empty once: every chunk
    /// the scan queued is in a segment ≤ this sequence (of this epoch).
    var endSequence: (sequence: UInt64, epoch: UInt64)?
    /// Point orders have waited for the scan since then (monotonic seconds).
    var ordersWaitingSince: Double?
    var startedAt = 0.0
    /// When it began (wall clock, for the RPO during a resync).
    var startedUnixMs: Int64 = 0
    var bytesSentAtStart: UInt64 = 0
    var bytesReadAtStart: UInt64 = 0
    /// Chunks put to compare since it began: the work to do.
    var totalChunks: UInt64 = 0
    /// Why the whole disk (or what is left of it) is compared.
    var kind: ResyncKind = .initialCopy
    /// The last progress line (monotonic seconds).
    var lastProgressAt = 0.0
    /// What a whole-disk resync reads: used blocks only, or the whole disk and why.
    var scope: String?

    init(chunks: UInt64) { toScan = ChunkSet(chunks: chunks) }

    var active: Bool { !toScan.isEmpty || windowInProgress }
    /// Chunks not compared yet: to scan, or in the window in progress.
    var leftToCompare: UInt64 { toScan.count + windowChunks }
}

/// Why a resync runs: the first copy of the disk to a target that holds none
/// of it, or a comparison for a reason; a resync found in the `.hrl` at start
/// is one or the other depending on what the server says it holds.
enum ResyncKind: Equatable, Sendable {
    case initialCopy
    case resync(String)
    case resumed
}

struct DigestQuery {
    var first: UInt64
    var count: UInt32
    var sent = false
    var reply: (sequence: UInt64, states: [ChunkState])?
}

/// Counters of the current (or last) resync, for logs, status and tests.
public struct ResyncStats: Sendable {
    /// Chunks compared (every chunk taken from the to-scan set).
    public var chunksScanned: UInt64 = 0
    /// Equal on the target: not sent.
    public var chunksIdentical: UInt64 = 0
    /// Read and found different from the target's: sent.
    public var chunksDiffering: UInt64 = 0
    /// Unknown to the target (never stored with a digest): sent without reading twice.
    public var chunksUnknown: UInt64 = 0
    /// Already queued to send by tracking when the scan reached them.
    public var chunksAlreadyQueued: UInt64 = 0
    /// Bytes the scan read to digest.
    public var bytesRead: UInt64 = 0
    public var digestRequests: UInt64 = 0
}

extension DiskReplicator {
    /// The `.hrl` target id while a digest-compare resync is in progress: on
    /// restart the `.hrl`'s dirty chunks are scanned, not sent blindly.
    var scanTargetID: String { "server:\(diskID)@scan" }

    public var resyncStats: ResyncStats {
        cond.lock()
        defer { cond.unlock() }
        return resync.stats
    }

    var resyncActive: Bool {
        cond.lock()
        defer { cond.unlock() }
        return resync.active
    }

    /// Puts chunks to compare (the caller holds `cond`); starts the counters
    /// when a new resync begins.
    func scheduleScanLocked(words: SparseWords, kind: ResyncKind?) {
        if words.isEmpty { scheduleScanLocked(kind: kind) }
        for e in words.entries { scheduleScanLocked(word: e.wordIndex, bits: e.bits, kind: kind) }
    }

    func scheduleScanLocked(word: UInt64? = nil, bits: UInt64 = 0, all: Bool = false, kind: ResyncKind? = nil) {
        if !resync.active && !resync.awaitingCommit {
            resync.stats = ResyncStats()
            resync.startedAt = monotonicSeconds()
            resync.startedUnixMs = CommittedThroughTracker.nowUnixMs()
            resync.bytesSentAtStart = stats.bytesSent
            resync.bytesReadAtStart = stats.bytesRead
            resync.totalChunks = 0
            resync.lastProgressAt = resync.startedAt
            resync.kind = kind ?? .resumed
            resync.scope = nil
        } else if let kind, kind != .initialCopy, resync.kind != .initialCopy {
            // A resync takes the newest reason; an initial copy stays one
            // (nothing of the disk is recoverable until it is committed).
            resync.kind = kind
        }
        // The work grows by the chunks newly put to compare (a chunk put
        // twice counts once).
        let before = resync.toScan.count
        if all { resync.toScan.insertAll() } else if let word { resync.toScan.insert(word: word, bits: bits) }
        resync.totalChunks = min(chunkCount, resync.totalChunks + (resync.toScan.count - before))
        resync.awaitingCommit = true
        resync.endSequence = nil
        cond.broadcast()
    }

    // MARK: Main thread

    /// While the scan runs, point orders wait (the target does not match the
    /// disk until every chunk has been compared) — like a point waits for a
    /// large backlog, at most `ReplicationLimits.pointPrepareWaitMsMax`; then
    /// they are refused with the progress and what to do.
    func holdPointOrdersDuringResync() {
        cond.lock()
        if orders.isEmpty {
            resync.ordersWaitingSince = nil
            cond.unlock()
            return
        }
        let now = monotonicSeconds()
        let since = resync.ordersWaitingSince ?? now
        resync.ordersWaitingSince = since
        guard now - since > Double(ReplicationLimits.pointPrepareWaitMsMax) / 1000 else {
            cond.unlock()
            return
        }
        let waiting = orders
        orders.removeAll()
        resync.ordersWaitingSince = nil
        let done = resync.stats.chunksScanned
        let left = resync.toScan.count
        cond.unlock()
        for o in waiting {
            o.refuse(TidemarkError(.busy, "\(session.device.path): a resync is comparing the disk with the target (\(done) chunks compared, \(left) to go); a recovery point cannot be taken until it has finished (waited \(ReplicationLimits.pointPrepareWaitMsMax / 1000) s)",
                                           hint: "retry when the agent logs 'resync of \(diskID) complete'"))
        }
    }

    /// Clears the `.hrl` bits of chunks the scan found equal on the target,
    /// except those drained again since (queued to send or in an
    /// uncommitted segment: they are cleared when that segment commits).
    func clearMatched() throws {
        cond.lock()
        let matched = resync.matched
        resync.matched.removeAll(keepingCapacity: true)
        let clear = state.clearableMatched(matched)
        cond.unlock()
        guard !clear.isEmpty else { return }
        try session.hrl.persistClear(SparseWords(chunks: clear.sorted()))
    }

    /// Once the scan is over and everything it queued is committed: marks
    /// the `.hrl` replicated and logs what the resync cost. "Everything it
    /// queued" is every segment numbered by the first time the to-read set
    /// was empty after the scan (new writes keep coming under load, so the
    /// pipeline itself need never be empty); a server that renumbers (a new
    /// epoch) restarts that wait.
    func finishResyncIfDone() throws {
        cond.lock()
        if resync.awaitingCommit && !resync.active {
            if let end = resync.endSequence, end.epoch != state.epoch { resync.endSequence = nil }
            if resync.endSequence == nil && state.toReadIsEmpty { resync.endSequence = (state.nextSequence - 1, state.epoch) }
        }
        let done = resync.awaitingCommit && !resync.active && resync.matched.isEmpty && state.committedSequence > 0
            && resync.endSequence.map { state.committedSequence >= $0.sequence } == true
        let s = resync.stats
        let sent = stats.bytesSent - resync.bytesSentAtStart
        let readToSend = stats.bytesRead - resync.bytesReadAtStart
        let seconds = monotonicSeconds() - resync.startedAt
        if done { resync.awaitingCommit = false }
        let kind = resync.kind
        cond.unlock()
        guard done else { return }
        if !replicatedBefore {
            try session.hrl.setTargetID(replicatedTargetID)
            replicatedBefore = true
        }
        let what = kind == .initialCopy ? "initial copy of \(diskID) (resync of \(diskID)) complete" : "resync of \(diskID) complete"
        Log.info("\(session.device.path): \(what): \(s.chunksScanned) chunks compared (\(s.bytesRead) bytes read), \(s.chunksIdentical) identical on the target, \(s.chunksDiffering) differing, \(s.chunksUnknown) unknown to the target, \(s.chunksAlreadyQueued) already queued; read \(readToSend) bytes and sent \(sent) bytes of segments for a \(session.device.sizeBytes)-byte disk in \(String(format: "%.2f", seconds)) s")
    }

    // MARK: Scan thread

    func runScan() {
        cond.lock()
        resync.scanBusy = true
        cond.unlock()
        defer {
            cond.lock()
            resync.scanBusy = false
            cond.broadcast()
            cond.unlock()
        }
        do {
            // Opened at the first window that reads: most runs never scan.
            // Its buffers: Limits.readQueueDepth reads of at most
            // Limits.readRequestBytesMax bytes (8 MiB).
            var reader: ChunkReader?
            let digester = ChunkDigester(key: settings.key, diskID: diskID)
            while let window = nextScanWindow() {
                do {
                    if reader == nil {
                        reader = try ChunkReader(path: session.device.path,
                                                 options: ChunkReaderOptions(queueDepth: Limits.readQueueDepth,
                                                                             maxRequestBytes: Limits.readRequestBytesMax)) { Log.warning($0) }
                    }
                    try scan(window, reader: reader!, digester: digester)
                } catch let e as ScanInterrupted {
                    Log.warning("\(diskID): resync window at chunk \(window.first): \(e.message); retrying")
                    cond.lock()
                    for c in window.chunks { resync.toScan.insert(first: c, count: 1) }
                    resync.windowInProgress = false
                    resync.windowChunks = 0
                    cond.unlock()
                    StopSignal.sleep(milliseconds: ReplicationLimits.reconnectDelayMsMax)
                    continue
                }
                cond.lock()
                resync.windowInProgress = false
                resync.windowChunks = 0
                let finished = !resync.active
                let s = resync.stats
                cond.broadcast()
                cond.unlock()
                if finished {
                    Log.info("\(session.device.path): resync scan of \(diskID) done: \(s.chunksScanned) chunks compared, \(s.chunksIdentical) identical on the target; \(s.chunksDiffering + s.chunksUnknown) to send")
                }
            }
        } catch {
            Log.error("\(session.device.path): resync scan stopped: \(error)")
            stop()
        }
    }

    struct ScanWindow {
        var first: UInt64
        var count: UInt32
        var chunks: [UInt64]
    }

    struct ScanInterrupted: Error {
        var message: String
    }

    /// Waits for chunks to scan and a connection; takes the next window: the
    /// first chunk to scan and every other one within
    /// `WireLimits.digestsPerRequestMax` chunks after it.
    private func nextScanWindow() -> ScanWindow? {
        cond.lock()
        defer { cond.unlock() }
        while !stopping && (resync.toScan.isEmpty || resync.baseline == nil) {
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.2))
        }
        if stopping { return nil }
        guard let run = resync.toScan.takeRun(maxChunks: UInt64(WireLimits.digestsPerRequestMax)) else { return nil }
        let end = min(run.first + UInt64(WireLimits.digestsPerRequestMax), chunkCount)
        var chunks = Array(run.first..<(run.first + run.count))
        var c = run.first + run.count
        while c < end {
            if resync.toScan.contains(c) {
                resync.toScan.remove(first: c, count: 1)
                chunks.append(c)
            }
            c += 1
        }
        resync.windowInProgress = true
        resync.windowChunks = UInt64(chunks.count)
        return ScanWindow(first: run.first, count: UInt32(chunks.last! - run.first + 1), chunks: chunks)
    }

    private func scan(_ w: ScanWindow, reader: ChunkReader, digester: ChunkDigester) throws {
        let states = try queryDigests(first: w.first, count: w.count)
        guard let states else { throw ScanInterrupted(message: "stopping") }
        // Decide what to read; unknown chunks go straight to the sender.
        var toCompare: [UInt64] = []
        cond.lock()
        for c in w.chunks {
            resync.stats.chunksScanned += 1
            if state.toReadContains(c) {
                resync.stats.chunksAlreadyQueued += 1
                continue
            }
            if case .unknown = states[Int(c - w.first)] {
                state.markToRead(first: c, count: 1)
                resync.stats.chunksUnknown += 1
            } else {
                toCompare.append(c)
            }
        }
        cond.broadcast()
        cond.unlock()
        guard !toCompare.isEmpty else { return }

        // Read the chunks the target holds, in runs, and compare.
        let size = session.device.sizeBytes
        var extents: [ByteExtent] = []
        for c in toCompare {
            let off = c * chunkBytes
            let len = min(chunkBytes, size - off)
            if let last = extents.last, last.offset + last.length == off,
               last.length + len <= UInt64(Limits.readRequestBytesMax) {
                extents[extents.count - 1].length += len
            } else {
                extents.append(ByteExtent(offset: off, length: len))
            }
        }
        var matched: [UInt64] = []
        var differing: [UInt64] = []
        var bytesRead: UInt64 = 0
        let digests = digester.makeContext()
        try reader.read(extents) { offset, data in
            bytesRead += UInt64(data.count)
            var pos = 0
            while pos < data.count {
                let n = min(Int(chunkBytes), data.count - pos)
                let piece = UnsafeRawBufferPointer(rebasing: data[pos..<pos + n])
                let chunk = (offset + UInt64(pos)) / chunkBytes
                let equal: Bool
                switch states[Int(chunk - w.first)] {
                case .zero: equal = isAllZero(piece)
                case .data(let d, let how): equal = !isAllZero(piece) && digests.digest(chunk: chunk, piece, construction: how) == d
                case .unknown: equal = false
                }
                if equal { matched.append(chunk) } else { differing.append(chunk) }
                pos += n
            }
        }
        cond.lock()
        resync.stats.bytesRead += bytesRead
        resync.stats.chunksIdentical += UInt64(matched.count)
        resync.stats.chunksDiffering += UInt64(differing.count)
        for c in differing { state.markToRead(first: c, count: 1) }
        resync.matched += matched
        cond.broadcast()
        cond.unlock()
    }

    /// Asks the target's states of chunks [first, first + count) through the
    /// sender's connection; waits for an answer that reflects at least the
    /// baseline sequence. nil when stopping.
    private func queryDigests(first: UInt64, count: UInt32) throws -> [ChunkState]? {
        let started = monotonicSeconds()
        cond.lock()
        defer {
            resync.query = nil
            cond.unlock()
        }
        resync.query = DigestQuery(first: first, count: count)
        resync.stats.digestRequests += 1
        cond.broadcast()
        senderWake.signal()
        while !stopping {
            if let reply = resync.query?.reply {
                let baseline = resync.baseline ?? 0
                if reply.sequence >= baseline { return reply.states }
                // The server has not committed an earlier run's segments yet: ask again shortly.
                if monotonicSeconds() - started > Double(Limits.digestBaselineWaitMsMax) / 1000 {
                    throw ScanInterrupted(message: "the server's digests reflect #\(reply.sequence), but it held #\(baseline) when this agent connected; still waiting for it to commit")
                }
                resync.query = DigestQuery(first: first, count: count)
                senderWake.signal()
                cond.unlock()
                StopSignal.sleep(milliseconds: Limits.digestBaselinePollMs)
                cond.lock()
                continue
            }
            if monotonicSeconds() - started > Double(Limits.digestReplyWaitMsMax) / 1000 {
                throw ScanInterrupted(message: "no digest answer from the server within \(Limits.digestReplyWaitMsMax) ms")
            }
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.05))
        }
        return nil
    }

    // MARK: Sender side (called with the connection's reader and writer)

    /// Sends the scan's digest request if one waits unsent.
    func sendDigestRequest(_ writer: FrameWriter) throws -> Bool {
        cond.lock()
        guard var q = resync.query, !q.sent, q.reply == nil else {
            cond.unlock()
            return false
        }
        q.sent = true
        resync.query = q
        cond.unlock()
        try writer.send(.digestRequest(diskID: diskID, firstChunk: q.first, count: q.count))
        return true
    }

    /// Hands a `chunkDigests` answer to the scan.
    func receiveDigests(first: UInt64, sequence: UInt64, states: [ChunkState]) {
        cond.lock()
        defer { cond.unlock() }
        guard var q = resync.query, q.sent, q.reply == nil, q.first == first, UInt64(q.count) == UInt64(states.count) else {
            // The answer to a request the scan gave up waiting for: harmless.
            Log.debug("\(diskID): ignoring digests for \(states.count) chunks from \(first), which no request waits for")
            return
        }
        q.reply = (sequence, states)
        resync.query = q
        cond.broadcast()
    }

    /// After a connection ends: a request in flight is asked again on the next one.
    func connectionEndedForScan() {
        cond.lock()
        if var q = resync.query, q.reply == nil {
            q.sent = false
            resync.query = q
        }
        cond.unlock()
    }
}
