import Foundation
import Glibc
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

/// A recovery point asked for by `tidemarkctl point create` or the policy timer.
public struct PointOrder: Sendable {
    public var appConsistent: Bool
    public var reply: @Sendable (Result<PointCreated, TidemarkError>) -> Void
    public init(appConsistent: Bool, reply: @escaping @Sendable (Result<PointCreated, TidemarkError>) -> Void) {
        self.appConsistent = appConsistent
        self.reply = reply
    }
}

public struct PointCreated: Sendable {
    public var id: String
    public var diskID: String
    public var pointClass: PointClass
    public var sequence: UInt64
    public var freezeMs: Double
}

extension DiskReplicator {
    /// Queues a point order for the main loop; refuses when too many wait.
    public func order(_ o: PointOrder) {
        cond.lock()
        if orders.count >= ReplicationLimits.pointRequestsQueuedMax {
            cond.unlock()
            o.reply(.failure(TidemarkError(.busy, "\(ReplicationLimits.pointRequestsQueuedMax) point requests already wait for \(session.device.path)")))
            return
        }
        orders.append(o)
        cond.unlock()
    }

    /// Runs the point orders that are due: policy cadence and requests.
    func servePointRequests() throws {
        let now = monotonicSeconds()
        if settings.crashIntervalSeconds > 0 && now - lastCrashPoint >= Double(settings.crashIntervalSeconds) {
            lastCrashPoint = now
            order(PointOrder(appConsistent: false) { _ in })
        }
        if settings.appIntervalSeconds > 0 && now - lastAppPoint >= Double(settings.appIntervalSeconds) {
            lastAppPoint = now
            order(PointOrder(appConsistent: true) { _ in })
        }
        while true {
            cond.lock()
            let o = orders.isEmpty ? nil : orders.removeFirst()
            cond.unlock()
            guard let o else { return }
            do {
                let created = try makePoint(appConsistent: o.appConsistent)
                o.reply(.success(created))
            } catch let e as TidemarkError {
                Log.error("\(session.device.path): recovery point failed: \(e)")
                o.reply(.failure(e))
            } catch {
                Log.error("\(session.device.path): recovery point failed: \(error)")
                o.reply(.failure(TidemarkError(.io, "\(error)")))
            }
        }
    }

    /// freeze → drain → read → tag → thaw, with a watchdog that always thaws;
    /// then waits for the tag to be committed.
    func makePoint(appConsistent: Bool) throws -> PointCreated {
        let mounts = Mounts.filesystems(on: session.device)
        let cls: PointClass = mounts.isEmpty ? .unverified : (appConsistent ? .appConsistent : .crashConsistent)
        if appConsistent && mounts.isEmpty {
            throw TidemarkError(.state, "\(session.device.path) has no mounted filesystem to quiesce: an app-consistent point cannot be made",
                                hint: "take a crash point instead (it will be marked unverified)")
        }
        // Shrink what the freeze has to flush and to read first, so it lasts
        // milliseconds: sync the filesystems (FIFREEZE flushes every dirty
        // page, and a sync while not frozen leaves it little), then read the
        // chunks that wrote, until the backlog is small; again while a sync
        // still found much to write.
        let deadline = monotonicSeconds() + Double(ReplicationLimits.pointPrepareWaitMsMax) / 1000
        var round = 0
        while true {
            round += 1
            let syncMs = syncFilesystems(mounts)
            try waitForSmallBacklog(until: deadline)
            if mounts.isEmpty || syncMs <= ReplicationLimits.pointSyncQuietMs || round >= ReplicationLimits.pointSyncRoundsMax { break }
        }
        if appConsistent, let hook = settings.preFreezeHook { try runHook(hook, "pre-freeze") }
        var thawHookNeeded = appConsistent
        defer { if thawHookNeeded, let hook = settings.postThawHook { try? runHook(hook, "post-thaw") } }

        let tag = PointTag(id: Self.newPointID(), pointClass: cls, timeUnixMs: Int64(Date().timeIntervalSince1970 * 1000))
        let request = PointRequest(tag: tag)
        let freezer = Freezer(mounts: mounts)
        // Before FIFREEZE: the freeze record (durable) and the armed watchdog
        // process, which thaw even if this process dies (FreezeGuard.swift);
        // before the last sync, so that their fsyncs and round trip do not
        // delay the freeze after it.
        let tGuard = monotonicSeconds()
        try freezer.prepare(timeoutMs: settings.freezeTimeoutMs)
        let guardMs = (monotonicSeconds() - tGuard) * 1000
        // A last sync just before the freeze: what was dirtied while the
        // backlog was read is written now, not by FIFREEZE while frozen (it
        // is read under the freeze either way).
        _ = syncFilesystems(mounts)
        let t0 = monotonicSeconds()
        // No tag is numbered after the bound counted from here (the watchdog
        // process counts its own from its "frozen" message, sent after this).
        request.tagDeadline = t0 + Double(settings.freezeTimeoutMs) / 1000
        try freezer.freeze()
        let tFrozen = monotonicSeconds()
        // The watchdog thaws even if this thread is stuck; a tag not yet
        // numbered by then is abandoned, never faked.
        let watchdog = Thread { [self] in
            let end = t0 + Double(settings.freezeTimeoutMs) / 1000
            while monotonicSeconds() < end {
                if freezer.isThawed { return }
                usleep(1_000)
            }
            cond.lock()
            if request.sequence == nil { request.abandoned = true }
            cond.broadcast()
            cond.unlock()
            freezer.thaw()
        }
        watchdog.start()
        var tDrained = tFrozen
        do {
            try drainOnce()
            tDrained = monotonicSeconds()
            // Tests only: copy the frozen source as ground truth for the point.
            if let hook = ProcessInfo.processInfo.environment["TIDEMARK_TEST_FROZEN_HOOK"] { try runHook(hook, "test frozen") }
        } catch {
            freezer.thaw()
            throw error
        }
        cond.lock()
        pointRequest = request
        cond.broadcast()
        while request.sequence == nil && !request.abandoned && !stopping {
            _ = cond.wait(until: Date(timeIntervalSinceNow: 0.01))
        }
        let sequence = request.sequence
        if sequence == nil { request.abandoned = true }
        pointRequest = nil
        cond.unlock()
        freezer.thaw()
        let freezeMs = (monotonicSeconds() - t0) * 1000
        let ms = { (a: Double, b: Double) in String(format: "%.1f", (b - a) * 1000) }
        if appConsistent, let hook = settings.postThawHook {
            thawHookNeeded = false
            try runHook(hook, "post-thaw")
        }
        guard let sequence else {
            throw TidemarkError(.state, "\(session.device.path): the freeze exceeded \(settings.freezeTimeoutMs) ms before the point could be tagged; the filesystems were thawed and the point abandoned",
                                hint: "raise policy.freeze_timeout_ms, or lower the write load")
        }
        Log.info("\(session.device.path): recovery point \(tag.id) (\(cls.rawValue)) tagged at #\(sequence); frozen \(String(format: "%.1f", freezeMs)) ms (FIFREEZE \(ms(t0, tFrozen)), drain \(ms(tFrozen, tDrained)), read and tag \(ms(tDrained, t0 + freezeMs / 1000))); guarded in \(String(format: "%.1f", guardMs)) ms before")
        recordFreeze(ms: freezeMs)
        // Wait for the commit, so the caller can recover it at once.
        let commitDeadline = Date(timeIntervalSinceNow: Double(ReplicationLimits.pointCommitWaitMsMax) / 1000)
        cond.lock()
        // A tag the server never made durable is gone when numbering restarts
        // below it (the server lost segments, or a spooled one was damaged):
        // the chunks read under the freeze are read again after the thaw, so
        // the point cannot be remade and is reported lost.
        func lostLocked() -> Bool { state.pointLost(sequence: sequence, epoch: request.epoch) }
        while state.committedSequence < sequence && !stopping && !StopSignal.isRequested && !lostLocked() {
            if !cond.wait(until: min(commitDeadline, Date(timeIntervalSinceNow: 0.05))) && Date() >= commitDeadline { break }
        }
        let lost = lostLocked()
        let committed = !lost && state.committedSequence >= sequence
        cond.unlock()
        if lost {
            throw TidemarkError(.state, "recovery point \(tag.id) was lost: the server restarted numbering below its tag #\(sequence) before the tag was durable (it lost or refused segments); the data is re-sent, but this point cannot be remade",
                                hint: "take a new point (tidemarkctl point create)")
        }
        guard committed else {
            throw TidemarkError(.state, "recovery point \(tag.id) was tagged at #\(sequence) but is not committed yet (the server is unreachable or slow)",
                                hint: "it is committed once the server catches up; check `tidemarkctl points list`")
        }
        return PointCreated(id: tag.id, diskID: diskID, pointClass: cls, sequence: sequence, freezeMs: freezeMs)
    }

    /// syncfs on each filesystem; returns how long it took in ms. A failed
    /// syncfs is only logged: FIFREEZE flushes anyway (it is just slower).
    func syncFilesystems(_ mounts: [MountedFilesystem]) -> Double {
        let t0 = monotonicSeconds()
        for m in mounts {
            do {
                try FileDescriptor(open: m.mountPoint, .readOnly, purpose: "opening mount point for syncfs").syncFilesystem()
            } catch {
                Log.warning("\(session.device.path): \(error); the freeze will flush instead")
            }
        }
        return (monotonicSeconds() - t0) * 1000
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
            cond.unlock()
            let now = monotonicSeconds()
            if backlog <= ReplicationLimits.pointBacklogBytesMax && roomy {
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

    static func newPointID() -> String {
        var b = [UInt8](repeating: 0, count: 6)
        try? b.withUnsafeMutableBytes { try SecureRandom.fill($0) }
        let f = DateFormatter()
        f.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        f.timeZone = TimeZone(identifier: "UTC")
        return "p-" + f.string(from: Date()) + "-" + b.map { String(format: "%02x", $0) }.joined()
    }

    func runHook(_ path: String, _ what: String) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.environment = ["TIDEMARK_DISK": session.device.path, "TIDEMARK_DISK_ID": diskID, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
        do { try p.run() } catch {
            throw TidemarkError(.invalidArgument, "\(what) hook \(path) could not be started: \(error)",
                                hint: "check policy.\(what == "pre-freeze" ? "pre_freeze_hook" : "post_thaw_hook") and that the file is executable")
        }
        let deadline = monotonicSeconds() + Double(ReplicationLimits.hookTimeoutMs) / 1000
        while p.isRunning {
            if monotonicSeconds() > deadline {
                p.terminate()
                throw TidemarkError(.state, "\(what) hook \(path) ran longer than \(ReplicationLimits.hookTimeoutMs / 1000) s and was stopped")
            }
            usleep(5_000)
        }
        guard p.terminationStatus == 0 else {
            throw TidemarkError(.state, "\(what) hook \(path) failed with status \(p.terminationStatus); no app-consistent point was made")
        }
    }
}

/// Freezes a set of filesystems; thaws each exactly once, from any thread.
/// `prepare` first: the freeze record and the watchdog process guard the
/// freeze until `thaw` (which ends the guard).
final class Freezer: @unchecked Sendable {
    let mounts: [MountedFilesystem]
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

    init(mounts: [MountedFilesystem]) { self.mounts = mounts }

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
                throw TidemarkError(.state, "cannot freeze \(m.mountPoint) (\(m.fsType)): \(error)",
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
