import Foundation
import Glibc
import TidemarkConfigFiles
import TidemarkSurface
import TidemarkSystem

/// The disk's "committed-through time": the newest drain time T such that
/// every chunk drained at or before T is in a committed segment. The RPO of
/// the disk is the age of that time (conservative: a write that completed
/// just after T is counted as not yet protected).
///
/// A checkpoint (T, S) is recorded whenever the to-read set is empty after
/// the drain that started at T was merged into it: every chunk drained at or
/// before T is then in a segment numbered ≤ S (S = the last sequence
/// numbered). When the committed sequence reaches S, T is committed through.
/// Part of `ReplicationSender` (no clock: drain times come in as
/// parameters); used under the replicator's lock.
struct CommittedThroughTracker {
    /// Checkpoints not yet committed, oldest first (T and S increase).
    private var pending: [(unixMs: Int64, sequence: UInt64)] = []
    /// The newest committed-through time, nil before the first commit of a checkpoint.
    private(set) var committedThroughUnixMs: Int64?
    /// Wall time of the latest drain that started (not yet known to be in the set when `draining`).
    private(set) var lastDrainUnixMs: Int64?

    static func nowUnixMs() -> Int64 { SystemClock.wallUnixMs() }

    /// A drain that started at `unixMs` has been merged into the to-read set.
    mutating func drained(atUnixMs unixMs: Int64, toReadEmpty: Bool, lastSequence: UInt64, committed: UInt64) {
        lastDrainUnixMs = unixMs
        if toReadEmpty { checkpoint(lastSequence: lastSequence, committed: committed) }
    }

    /// The to-read set became empty: everything drained up to the last drain
    /// is in segments ≤ `lastSequence`.
    mutating func checkpoint(lastSequence: UInt64, committed: UInt64) {
        guard let t = lastDrainUnixMs else { return }
        if let last = pending.last, last.sequence >= lastSequence {
            // Nothing numbered since: the newer time needs no newer sequence.
            pending[pending.count - 1] = (max(last.unixMs, t), last.sequence)
        } else if pending.count >= ReplicationLimits.rpoCheckpointsMax {
            // Full (the server stalls): fold into the newest, which can only make the answer older.
            pending[pending.count - 1] = (t, lastSequence)
        } else {
            pending.append((t, lastSequence))
        }
        advance(committed: committed)
    }

    /// The committed sequence moved: checkpoints at or below it are committed.
    mutating func advance(committed: UInt64) {
        var i = 0
        while i < pending.count && pending[i].sequence <= committed {
            committedThroughUnixMs = max(committedThroughUnixMs ?? 0, pending[i].unixMs)
            i += 1
        }
        if i > 0 { pending.removeFirst(i) }
    }

    /// The server no longer holds commits acknowledged before (another
    /// target, or a lost one): the committed-through time is unknown until
    /// a checkpoint commits on this one.
    mutating func lostCommits() {
        committedThroughUnixMs = nil
    }

    /// Sequences above `committed` were renumbered (the server restarted
    /// numbering): their checkpoints no longer mean anything.
    mutating func renumbered(committed: UInt64) {
        pending.removeAll { $0.sequence > committed }
    }
}

extension DiskReplicator {
    /// The level of `compression_level: N`: the sealers' own level. With
    /// `auto` every segment names its level, and status reports the governor's.
    var fixedCompressionLevel: Int32 { Self.sealerLevel(settings.compressionLevel) }

    /// The level sealers are made with: the fixed level, or where `auto` starts.
    static func sealerLevel(_ setting: CompressionSetting) -> Int32 {
        if case .fixed(let level) = setting { return level }
        return ReplicationLimits.compressionAutoStartLevel
    }

    /// One disk's replication state for the control socket's `status`
    /// request (the fields are explained at `DiskStatus`).
    public func status() -> DiskStatus {
        cond.lock()
        defer { cond.unlock() }
        let now = CommittedThroughTracker.nowUnixMs()
        // Segments at or below the committed sequence stay in `uncommitted`
        // until the main loop clears their bits (clearCommitted): their
        // chunks are committed already and are not backlog.
        let uncommittedChunks = state.uncommittedChunks
        let activity = activityLocked()
        // Nothing is recoverable until the initial copy is committed; during
        // a resync the target is in step with the disk only as of its start.
        var through = state.committedThroughUnixMs
        if resync.active || resync.awaitingCommit {
            if isInitialCopyLocked {
                through = nil
            } else if let t = through {
                through = min(t, resync.startedUnixMs)
            }
        }
        return DiskStatus(
            disk: session.device.path,
            diskID: diskID,
            rpoMs: through.map { max(0, now - $0) } ?? -1,
            committedThroughUnixMs: through,
            committedSequence: state.committedSequence,
            durableSequence: state.durableSequence,
            nextSequence: state.nextSequence,
            backlogBytes: (state.toReadCount + uncommittedChunks) * chunkBytes + state.windowBytes,
            toReadBytes: state.toReadCount * chunkBytes,
            windowBytes: state.windowBytes,
            bytesRead: stats.bytesRead,
            bytesSent: stats.bytesSent,
            segmentsSent: stats.segmentsSent,
            zeroChunks: stats.zeroChunks,
            compressionLevel: Int(compression?.level ?? fixedCompressionLevel),
            compressionAuto: compression != nil,
            compressionStepsFaster: compression?.stepsFaster ?? 0,
            compressionStepsSmaller: compression?.stepsSmaller ?? 0,
            lastFreezeMs: freezeMsHistory.last,
            tracking: session.trackingHealth,
            activity: activity)
    }

    /// The initial copy is under way (the caller holds `cond`).
    var isInitialCopyLocked: Bool {
        (resync.active || resync.awaitingCommit) && resync.kind == .initialCopy
    }

    /// What the disk is doing (the caller holds `cond`): paused from a
    /// failed or broken connection until one is established, or while the
    /// send window is full with chunks waiting;
    /// otherwise its initial copy, a resync (and why), or protected. An
    /// initial copy or resync carries its progress: bytes compared or read
    /// to send of those it began with, the average rate, and the time left
    /// at that rate.
    func activityLocked() -> DiskActivity {
        var a = DiskActivity(state: .protected)
        if resync.active || resync.awaitingCommit {
            if isInitialCopyLocked {
                a.state = .initialCopy
            } else {
                a.state = .resync
                switch resync.kind {
                case .resync(let why): a.detail = why
                case .resumed: a.detail = "resumed after a restart; the server has not yet said what it holds"
                case .initialCopy: break
                }
            }
            a.scope = resync.scope
            let total = resync.totalChunks * chunkBytes
            let left = min(total, (resync.leftToCompare + state.toReadCount) * chunkBytes)
            let done = total - left
            let seconds = monotonicSeconds() - resync.startedAt
            a.bytesTotal = total
            a.bytesDone = done
            if seconds > 0 && done > 0 {
                let rate = Double(done) / seconds
                a.bytesPerSecond = rate
                a.etaSeconds = Double(left) / rate
            }
        }
        let pausedWhy: String?
        if serverUnreachable {
            pausedWhy = "the process server at \(settings.serverHost):\(settings.serverPort) is not reachable"
        } else if !state.windowHasRoom && state.toReadCount > 0 {
            pausedWhy = "backpressure: the send window is full (\(state.segmentsInFlight) segments, \(state.windowBytes) bytes not yet durable at the server)"
        } else {
            pausedWhy = nil
        }
        if let why = pausedWhy {
            let during = a.state == .protected ? "" : ", during the \(a.state == .initialCopy ? "initial copy" : "resync")"
            a.detail = why + during
            a.state = .paused
        }
        return a
    }

    /// Logs the progress of an initial copy or resync: every
    /// `ReplicationLimits.progressTerminalIntervalMs` when the agent's
    /// standard error is a terminal, every `progressLogIntervalMs` otherwise.
    func reportProgressIfDue() {
        cond.lock()
        guard resync.active || resync.awaitingCommit else { cond.unlock(); return }
        let now = monotonicSeconds()
        let interval = Double(isatty(2) == 1 ? ReplicationLimits.progressTerminalIntervalMs : ReplicationLimits.progressLogIntervalMs) / 1000
        guard now - resync.lastProgressAt >= interval else { cond.unlock(); return }
        resync.lastProgressAt = now
        let a = activityLocked()
        cond.unlock()
        Log.info("\(session.device.path) (\(diskID)): \(a.text)")
    }
}

/// The resident set size of this process in bytes (from /proc/self/statm), 0 if unreadable.
public func residentBytes() -> UInt64 {
    guard let text = SmallFile.textIfReadable("/proc/self/statm") else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count >= 2, let pages = UInt64(fields[1]) else { return 0 }
    return pages * UInt64(sysconf(Int32(_SC_PAGESIZE)))
}
