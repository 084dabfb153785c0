import Foundation
import Glibc
import TidemarkCrypto
import TidemarkDaemon
import TidemarkSystem
import TidemarkWire

/// A filesystem mounted from the disk (or one of its partitions).
struct MountedFilesystem: Equatable {
    var mountPoint: String
    var fsType: String
    var device: String   // major:minor
}

enum Mounts {
    /// The filesystems mounted from `device` or its partitions, one mount
    /// point per filesystem (bind mounts of the same one are skipped).
    static func filesystems(on device: BlockDeviceInfo) -> [MountedFilesystem] {
        var devs: Set<String> = ["\(device.major):\(device.minor)"]
        if !device.isPartition, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/block/\(device.kernelName)") {
            for e in entries where e.hasPrefix(device.kernelName) {
                if let d = try? String(contentsOfFile: "/sys/class/block/\(device.kernelName)/\(e)/dev", encoding: .utf8) {
                    devs.insert(d.trimmingCharacters(in: .whitespacesAndNewlines))
                }
            }
        }
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return [] }
        var seen: Set<String> = []
        var result: [MountedFilesystem] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count >= 10, let dash = parts.firstIndex(of: "-"), dash + 1 < parts.count else { continue }
            let dev = String(parts[2])
            guard devs.contains(dev), !seen.contains(dev) else { continue }
            seen.insert(dev)
            let mountPoint = String(parts[4]).replacingOccurrences(of: "\\040", with: " ")
            result.append(MountedFilesystem(mountPoint: mountPoint, fsType: String(parts[dash + 1]), device: dev))
        }
        return result
    }
}

/// One disk's part in a point: the item its main loop takes from `orders`.
/// The point's coordinator (PointCoordinator.swift) runs on another thread
/// and tells the disk's main thread, phase by phase, what to do.
public struct PointOrder: Sendable {
    let coordinator: PointCoordinator
    let index: Int

    /// The disk cannot take part (too many points wait for it, or a resync
    /// holds them): the point fails, naming the disk.
    func refuse(_ e: TidemarkError) { coordinator.diskFailed(index, e) }
}

/// One disk's tag in a point. `tag` and `readyWake` are fixed; `sequence`
/// and `epoch` are set once, by the coordinator, under the disk's `cond`
/// (`numberTagLocked`), and read under it.
final class PointRequest: @unchecked Sendable {
    let tag: PointTag
    /// Signalled by the disk's reader whenever it is about to wait with
    /// nothing left to read while this request is armed: the coordinator
    /// then looks whether every disk is ready to be tagged.
    let readyWake: WakeSignal
    var sequence: UInt64?
    /// The numbering epoch the tag was numbered in.
    var epoch: UInt64 = 0
    /// When the coordinator first saw a resync compare this disk under the
    /// freeze, and how many chunks it had left then (its progress since
    /// tells whether it can end within the freeze).
    var resyncSeen: (at: Double, left: UInt64)?
    /// Bytes of chunks left to read when the tag was armed (drained under
    /// the freeze, or not yet read before it): what the freeze waits for.
    var toReadAtArmBytes: UInt64 = 0

    init(tag: PointTag, readyWake: WakeSignal) {
        self.tag = tag
        self.readyWake = readyWake
    }
}

/// One disk's tag of a point that was made and committed.
public struct PointCreated: Sendable {
    public var id: String
    public var disk: String
    public var diskID: String
    public var pointClass: PointClass
    public var sequence: UInt64
    public var freezeMs: Double
}

/// A point that was made: of one disk, or a machine point (every disk
/// tagged at one instant, under one id).
public struct PointResult: Sendable {
    public var id: String
    /// The weakest class of its disks' tags (a disk without a mounted
    /// filesystem is tagged `unverified`).
    public var pointClass: PointClass
    public var freezeMs: Double
    /// In the coordinator's disk order.
    public var disks: [PointCreated]
    public var isMachinePoint: Bool { disks.count > 1 }
}

extension DiskReplicator {
    /// Queues this disk's part in a point for the main loop; refuses when
    /// too many wait.
    func order(_ o: PointOrder) {
        cond.lock()
        if orders.count >= ReplicationLimits.pointRequestsQueuedMax {
            cond.unlock()
            o.refuse(TidemarkError(.busy, "\(ReplicationLimits.pointRequestsQueuedMax) point requests already wait for \(session.device.path)"))
            return
        }
        orders.append(o)
        cond.unlock()
    }

    /// Takes part in the points ordered, one after the other (main loop).
    /// A point's failure is its coordinator's to report; nothing here stops
    /// replication.
    func servePointRequests() throws {
        while true {
            cond.lock()
            let o = orders.isEmpty ? nil : orders.removeFirst()
            cond.unlock()
            guard let o else { return }
            takePart(in: o.coordinator, as: o.index)
        }
    }

    /// This disk's main thread in one point: does what the point's phase
    /// asks — prepare, hold the backlog small, drain and arm its tag under
    /// the freeze — until the point releases it (tagged or abandoned), then
    /// returns to replicating. Drains stay on this thread, as everywhere.
    func takePart(in c: PointCoordinator, as i: Int) {
        let request = c.requests[i]
        // A request the point did not number is disarmed when the disk leaves.
        defer { disarm(request) }
        while true {
            if StopSignal.isRequested || isStopping {
                c.diskFailed(i, TidemarkError(.state, "\(session.device.path): the agent is stopping; no point is made"))
            }
            let command = c.command(for: i, waitMs: ReplicationLimits.pointPrepareDrainMs)
            do {
                switch command {
                case .prepare:
                    try prepareForPoint(c.mounts[i], until: c.currentPrepareDeadline)
                    c.prepared(i)
                case .hold:
                    // Prepared, waiting for the other disks or the pre-freeze
                    // hook: what is written meanwhile is read now, not under
                    // the freeze.
                    try drainOnce()
                    try clearCommitted()
                case .drainAndArm:
                    session.enteringFreeze()
                    try drainOnce()
                    // Tests only: copy the frozen source as ground truth for the point.
                    if let hook = session.testSwitches.frozenHook {
                        try runHook(hook, "test frozen", environment: hookEnvironment, timeoutMs: settings.hookTimeoutMs)
                    }
                    arm(request)
                    c.armed(i)
                case .wait:
                    continue
                case .release:
                    return
                }
            } catch {
                c.diskFailed(i, (error as? TidemarkError) ?? TidemarkError(.io, "\(session.device.path): \(error)"))
            }
        }
    }

    /// What a hook learns of this disk.
    var hookEnvironment: [String: String] { ["TIDEMARK_DISK": session.device.path, "TIDEMARK_DISK_ID": diskID] }

    /// Shrinks what the freeze has to flush and to read first, so it lasts
    /// milliseconds: syncs the filesystems (FIFREEZE flushes every dirty
    /// page, and a sync while not frozen leaves it little), then reads the
    /// chunks that were written, until the backlog is small; again while a
    /// sync still found much to write.
    func prepareForPoint(_ mounts: [MountedFilesystem], until deadline: Double) throws {
        var round = 0
        while true {
            round += 1
            let syncMs = syncMounts(mounts)
            try waitForSmallBacklog(until: deadline)
            if mounts.isEmpty || syncMs <= ReplicationLimits.pointSyncQuietMs || round >= ReplicationLimits.pointSyncRoundsMax { break }
        }
    }

    /// Under the freeze, after the drain: from now on the reader signals
    /// `p.readyWake` whenever it waits with nothing left to read.
    func arm(_ p: PointRequest) {
        cond.lock()
        p.toReadAtArmBytes = state.toReadCount * chunkBytes
        pointRequest = p
        cond.broadcast()
        cond.unlock()
    }

    /// Leaving a point: a request that was not numbered is disarmed.
    func disarm(_ p: PointRequest) {
        cond.lock()
        if pointRequest === p { pointRequest = nil }
        cond.unlock()
    }

    /// Why this disk cannot be tagged at this instant, or nil when it can:
    /// `p` is armed, no resync compares, nothing is left to read, and the
    /// reader waits in `nextBatch` — so every chunk drained under the freeze
    /// is in a segment numbered before and has been read. The caller holds
    /// `cond`.
    func tagReadinessLocked(_ p: PointRequest, now: Double, deadline: Double) -> PointPhases.NotReady? {
        if stopping { return .init("the agent is stopping", endsThisFreeze: true, hint: "take the point once the agent runs again") }
        if pointRequest !== p { return "its tag is not armed" }
        if resync.active { return resyncUnderFreeze(p, now: now, deadline: deadline) }
        if state.wholeDiskPending {
            // Marking the whole disk is this disk's main thread's, which the
            // point holds until it is tagged or abandoned.
            return .init("the target was lost and the whole disk is not yet marked to be sent again", endsThisFreeze: true,
                         hint: "take the point again once the disk replicates to the new target")
        }
        if !state.toReadIsEmpty {
            return .init("\(state.toReadCount * chunkBytes) bytes written before the freeze still to read"
                + (state.windowHasRoom ? "" : ", the send window full (\(state.segmentsInFlight) segments, \(state.windowBytes) bytes unacknowledged)"))
        }
        if !readerWaiting {
            return .init("its reader is still reading what was written before the freeze"
                + (state.everyNumberedSegmentSealed ? "" : " (a batch is being read or sealed)"))
        }
        return nil
    }

    /// A resync compares the disk under the freeze (a drain under it found
    /// a skipped probe or an overflow): the tag waits for the comparison,
    /// which on a small disk ends within milliseconds and on a large one
    /// long after the bound. Judged by its own pace: once it has compared
    /// for `ReplicationLimits.pointResyncJudgeMs`, a comparison that at
    /// that pace ends after `deadline` (or has not moved) ends this
    /// freeze — the point is abandoned at once, saying why, instead of
    /// holding the filesystems frozen until the bound. The caller holds `cond`.
    func resyncUnderFreeze(_ p: PointRequest, now: Double, deadline: Double) -> PointPhases.NotReady {
        let left = resync.leftToCompare
        let seen = p.resyncSeen ?? (at: now, left: left)
        p.resyncSeen = seen
        let text = "a resync compares the disk with the target (\(left) of its chunks left to compare"
        guard let late = Self.resyncEndsTooLate(seen: seen, left: left, now: now, deadline: deadline) else { return .init(text + ")") }
        return .init(text + "; \(late))", endsThisFreeze: true,
                     hint: "take the point once the resync is done (`tidemarkctl status` shows its progress)")
    }

    /// Whether a comparison with `left` chunks to go at `now`, which had
    /// `seen.left` at `seen.at`, ends after `deadline` at its pace so far:
    /// nil while it is watched for less than `judgeMs` or ends in time,
    /// else why not, in words. Pure.
    static func resyncEndsTooLate(seen: (at: Double, left: UInt64), left: UInt64, now: Double, deadline: Double,
                                  judgeMs: Int = ReplicationLimits.pointResyncJudgeMs) -> String? {
        let watched = now - seen.at
        guard watched * 1000 >= Double(judgeMs) else { return nil }
        let perSecond = Double(seen.left > left ? seen.left - left : 0) / watched
        let endsAt = perSecond > 0 ? now + Double(left) / perSecond : Double.infinity
        guard endsAt >= deadline else { return nil }
        return perSecond > 0
            ? String(format: "at %.0f chunks/s it ends %@ after the freeze bound", perSecond,
                     endsAt - deadline < 1 ? String(format: "%.0f ms", (endsAt - deadline) * 1000) : String(format: "%.1f s", endsAt - deadline))
            : String(format: "it compared nothing in %.0f ms", watched * 1000)
    }

    /// Numbers `p`'s tag as the next sequence; the reader, waiting in
    /// `nextBatch`, seals it before anything numbered after it. The caller
    /// holds `cond` and has just seen `tagReadinessLocked(p) == nil` under
    /// the same hold.
    func numberTagLocked(_ p: PointRequest) -> UInt64 {
        precondition(p.sequence == nil && pointRequest === p && state.mayTagPoint && readerWaiting, "a tag numbered while its disk is not ready")
        let tag = state.numberPointTag()
        p.sequence = tag.sequence
        p.epoch = tag.epoch
        tagsNumbered.append(Planned(numbered: tag, point: p.tag))
        pointRequest = nil
        cond.broadcast()
        return tag.sequence
    }

    enum TagCommit: Equatable {
        case committed, lost, pending
    }

    /// Waits until `p`'s tag is committed, lost, or `deadline` passes.
    func awaitTagCommit(_ p: PointRequest, until deadline: Date) -> TagCommit {
        cond.lock()
        defer { cond.unlock() }
        guard let sequence = p.sequence else { return .pending }
        // A tag the server never made durable is gone when numbering restarts
        // below it (the server lost segments, or a spooled one was damaged):
        // the chunks read under the freeze are read again after the thaw, so
        // the point cannot be remade and is reported lost.
        func lostLocked() -> Bool { state.pointLost(sequence: sequence, epoch: p.epoch) }
        while state.committedSequence < sequence && !stopping && !StopSignal.isRequested && !lostLocked() {
            if !cond.wait(until: min(deadline, Date(timeIntervalSinceNow: 0.05))) && Date() >= deadline { break }
        }
        if lostLocked() { return .lost }
        return state.committedSequence >= sequence ? .committed : .pending
    }

    /// Drains often until at most `pointBacklogBytesMax` of chunks are unread
    /// and the send window has room (the reader is not held up), then waits
    /// briefly for the reader to seal what it has taken; ends with a drain.
    func waitForSmallBacklog(until deadline: Double) throws {
        var idleDeadline: Double?
        let lateFrom = monotonicSeconds() + Double(ReplicationLimits.pointPreferredWaitMs) / 1000
        while true {
            try drainOnce()
            try clearCommitted()
            cond.lock()
            let backlog = state.toReadCount * chunkBytes
            let roomy = state.windowBytes < settings.inflightBytesMax / 2
            // Every numbered segment is sealed: the reader holds no batch.
            let readerIdle = state.everyNumberedSegmentSealed
            // A resync must end first: no tag is numbered while it compares.
            let scanLeft = resync.active ? resync.leftToCompare : nil
            cond.unlock()
            let now = monotonicSeconds()
            if let scanLeft {
                if now > deadline {
                    throw TidemarkError(.busy, "\(session.device.path): a resync compares the disk with the target (\(scanLeft) chunks left to compare); a point waits until it is done",
                                        hint: "take the point once the resync is done (`tidemarkctl status` shows its progress)")
                }
            } else if backlog <= ReplicationLimits.pointBacklogBytesMax && roomy {
                if readerIdle { return }
                if idleDeadline == nil { idleDeadline = now + Double(ReplicationLimits.pointReaderIdleWaitMsMax) / 1000 }
                if now > idleDeadline! { return }
            } else if now > lateFrom && backlog <= ReplicationLimits.pointBacklogBytesLateMax {
                // A slow or flapping link keeps the window full: after a
                // while, accept a larger backlog (read under the freeze,
                // which the watchdog still bounds).
                Log.info("\(session.device.path): freezing with \(backlog) bytes unread\(roomy ? "" : " and the send window full") after waiting \(ReplicationLimits.pointPreferredWaitMs) ms for less")
                return
            } else if now > deadline {
                throw TidemarkError(.busy, "\(session.device.path): \(backlog) bytes still to replicate; a point waits until the backlog is small",
                                    hint: "retry when the initial replication is done")
            }
            usleep(useconds_t(ReplicationLimits.pointPrepareDrainMs * 1000))
        }
    }
}

/// syncfs on each filesystem; returns how long it took in ms. A failed
/// syncfs is only logged: FIFREEZE flushes anyway (it is just slower).
func syncMounts(_ mounts: [MountedFilesystem]) -> Double {
    let t0 = monotonicSeconds()
    for m in mounts {
        do {
            try FileDescriptor(open: m.mountPoint, .readOnly, purpose: "opening mount point for syncfs").syncFilesystem()
        } catch {
            Log.warning("\(m.mountPoint): \(error); the freeze will flush instead")
        }
    }
    return (monotonicSeconds() - t0) * 1000
}

/// Runs a hook script with `environment` (and a plain PATH); throws when it
/// cannot be started, fails, or runs longer than `timeoutMs`
/// (`hook_timeout` of the disk or the policy; it is stopped then). ChildProcess, not Foundation's Process: the hook starts
/// with no signal blocked or ignored and only descriptors 0–2 open.
func runHook(_ path: String, _ what: String, environment: [String: String], timeoutMs: Int) throws {
    let p: ChildProcess
    do {
        p = try ChildProcess(path: path, environment: environment.merging(["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]) { a, _ in a })
    } catch {
        throw TidemarkError(.invalidArgument, "\(what) hook \(path) could not be started: \(error)",
                            hint: "check \(what == "pre-freeze" ? "pre_freeze_hook" : "post_thaw_hook") (under policy: or the disk's entry in disks:) and that the file is executable")
    }
    guard let ending = p.wait(timeoutMs: timeoutMs) else {
        p.terminate()
        throw TidemarkError(.state, "\(what) hook \(path) ran longer than \(timeoutMs / 1000) s (its hook_timeout) and was stopped",
                            hint: "make the hook faster, or raise hook_timeout (under policy:, or in the disk's entry in disks: when it sets its own)")
    }
    guard ending == .exited(0) else {
        throw TidemarkError(.state, "\(what) hook \(path) failed with \(ending); no app-consistent point was made")
    }
}

/// Freezes a set of filesystems — every one of a point's disks, under one
/// freeze record and one watchdog arm — and thaws each exactly once, from
/// any thread. `prepare` first: the freeze record and the watchdog process
/// guard the freeze until `thaw` (which ends the guard).
final class Freezer: @unchecked Sendable {
    let mounts: [MountedFilesystem]
    /// The disk each filesystem (by major:minor) belongs to, for messages.
    let owners: [String: String]
    private let lock = NSLock()
    private var frozen: [FileDescriptor] = []
    private var thawed = false
    private var freezeGuard: FreezeGuard?

    /// Writes the freeze record and arms the watchdog process; throws when
    /// the freeze cannot be guarded (then nothing is frozen).
    func prepare(timeoutMs: Int) throws {
        guard !mounts.isEmpty else { return }
        let g = try FreezeGuard.begin(mounts, timeoutMs: timeoutMs)
        lock.lock()
        freezeGuard = g
        lock.unlock()
    }

    init(mounts: [MountedFilesystem], owners: [String: String] = [:]) {
        self.mounts = mounts
        self.owners = owners
    }

    private func lockedGuard() -> FreezeGuard? {
        lock.lock()
        defer { lock.unlock() }
        return freezeGuard
    }

    var isThawed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return thawed
    }

    func freeze() throws {
        // The watchdog process's bound starts now.
        do {
            try lockedGuard()?.frozen()
        } catch {
            thaw()
            throw TidemarkError(.state, "the freeze watchdog is gone: \(error); nothing was frozen", hint: "retry the point (a new watchdog is started)")
        }
        // FIFREEZE takes the filesystem's three freeze locks, each waiting for
        // an RCU grace period: 10-50 ms apiece on a busy 2-CPU machine, most
        // of the freeze. Expedited grace periods make that ~1 ms.
        let expedited = RCUExpedite.begin()
        defer { if expedited { RCUExpedite.end() } }
        for m in mounts {
            do {
                let fd = try FileDescriptor(open: m.mountPoint, .readOnly, purpose: "opening mount point for freezing")
                try fd.freezeFilesystem()
                lock.lock()
                frozen.append(fd)
                lock.unlock()
            } catch {
                thaw()
                let busy = (error as? SystemError)?.errno == EBUSY
                throw TidemarkError(.state, "cannot freeze \(m.mountPoint) (\(m.fsType)\(owners[m.device].map { " of \($0)" } ?? "")): \(error)",
                                    hint: busy
                                        ? "it is already frozen (fsfreeze -f?); thaw it with `fsfreeze -u \(m.mountPoint)` and retry"
                                        : "the filesystem may not support FIFREEZE; points of this disk cannot be crash-consistent")
            }
        }
    }

    func thaw() {
        lock.lock()
        defer { lock.unlock() }
        guard !thawed else { return }
        thawed = true
        for fd in frozen {
            do {
                if try !fd.thawIfFrozen() {
                    Log.warning("\(fd.path) was already thawed (by the freeze watchdog process, after the bound)")
                }
            } catch {
                Log.error("thawing \(fd.path) failed: \(error); thaw it with `fsfreeze -u \(fd.path)`")
            }
        }
        frozen.removeAll()
        freezeGuard?.end()
        freezeGuard = nil
    }
}

/// Expedited RCU grace periods (/sys/kernel/rcu_expedited) while filesystems
/// are being frozen, process-wide reference counted: the first caller saves
/// the setting and sets it, the last one restores it. Off when the
/// environment has TIDEMARK_FREEZE_EXPEDITE_RCU=0, or when the file is
/// missing or not writable (the freeze is only slower then).
enum RCUExpedite {
    static let path = "/sys/kernel/rcu_expedited"
    private static let lock = NSLock()
    nonisolated(unsafe) private static var users = 0
    nonisolated(unsafe) private static var saved: String?

    static var enabled: Bool { ProcessInfo.processInfo.environment["TIDEMARK_FREEZE_EXPEDITE_RCU"] != "0" }

    /// Returns whether `end()` must be called.
    static func begin() -> Bool {
        guard enabled else { return false }
        lock.lock()
        defer { lock.unlock() }
        if users == 0 {
            guard let old = try? String(contentsOfFile: path, encoding: .utf8) else { return false }
            saved = old.trimmingCharacters(in: .whitespacesAndNewlines)
            if saved != "1" && !write("1") { saved = nil; return false }
        }
        users += 1
        return true
    }

    static func end() {
        lock.lock()
        defer { lock.unlock() }
        users -= 1
        if users == 0, let old = saved, old != "1" {
            if !write(old) { Log.warning("could not restore \(path) to \(old)") }
        }
        if users == 0 { saved = nil }
    }

    private static func write(_ value: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return value.withCString { Glibc.write(fd, $0, strlen($0)) } == value.utf8.count
    }
}
