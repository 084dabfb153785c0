import Foundation
import Glibc
import TidemarkSystem
import TidemarkWire

/// One recovery point over a set of this machine's disks: a machine point —
/// every disk tagged at one instant, under one id — or, with one disk, a
/// point of that disk. Its phases are methods another coordinator (one
/// across machines) can call in turn, each machine's between the others':
///
/// - `prepare`: every disk, on its own main thread, syncs its filesystems
///   and brings its backlog down, then keeps it small; the pre-freeze hook
///   runs once (app-consistent points);
/// - `freeze`: one freeze record and one watchdog arm for every filesystem
///   of every disk (both before any FIFREEZE), a last sync, FIFREEZE of them
///   all, under one bound (`policy.freeze_timeout_ms`);
/// - `drain`: every disk drains its tracer under the freeze and arms its tag;
/// - `awaitReady`, `tag`: once every disk's reader has read what was
///   drained, every disk's tag is numbered at once, under all the disks'
///   locks — or, when the bound comes first, none is;
/// - `thaw`: every filesystem; then the post-thaw hook;
/// - `awaitCommit`: every disk's tag committed in target storage.
///
/// `run()` does them in order and, on any failure, abandons the point on
/// every disk, thaws and runs the post-thaw hook when it is owed. What may
/// follow what, the bound, tagging all or none, the hooks and the outcome
/// are `PointPhases`' (a pure state machine); this class does the I/O.
///
/// Threads: the caller of the phases, which must not be a disk's main
/// thread (the control socket's client thread, or the policy scheduler);
/// each disk's main thread (`DiskReplicator.takePart`); each disk's reader,
/// which signals `readyWake`; the watchdog thread of the freeze. `lock`
/// guards `phases` and the timings; lock order: `lock`, then the disks'
/// `cond`s in disk order, then a `Freezer`'s. Memory: O(disks + mounts).
public final class PointCoordinator: @unchecked Sendable {
    public let id: String
    public let appConsistent: Bool
    let members: [DiskReplicator]
    let mounts: [[MountedFilesystem]]
    let requests: [PointRequest]
    let classes: [PointClass]
    let freezeTimeoutMs: Int
    /// The hooks of the point's disks: each distinct pair of hooks (with
    /// its timeout) once, in disk order, with the disks that name it.
    let hookSets: [HookSet]
    /// Every disk brings its backlog down by this (monotonic seconds);
    /// guarded by `lock` (`currentPrepareDeadline`).
    private var prepareDeadline: Double
    /// Signalled by the disks' readers (see `PointRequest.readyWake`).
    let readyWake: WakeSignal

    let lock = NSCondition()
    private(set) var phases: PointPhases
    private var freezer: Freezer?
    private var guardMs = 0.0
    private var tFreeze = 0.0, tFrozen = 0.0, tArmed = 0.0, tTagged = 0.0
    private var freezeMs = 0.0
    /// How long the pre-freeze hook ran, and bringing down what it wrote took.
    private var hookMs = 0.0, settleMs = 0.0
    /// Why the tags waited under the freeze: each change of the disks'
    /// reasons, at most `ReplicationLimits.pointWaitTraceEntriesMax`, with
    /// the milliseconds since the drain; logged when reading and tagging
    /// took longer than `ReplicationLimits.pointSlowTagLogMs`.
    private var waitTrace: [(ms: Double, why: String)] = []

    /// Points over several disks are made one at a time: two of them would
    /// each hold some disks' main threads while waiting for the others'.
    private static let machinePoints = NSLock()

    /// A point over `disks` (in that order; each once). Throws when an
    /// app-consistent point is asked of a disk with no mounted filesystem.
    public init(disks: [DiskReplicator], appConsistent: Bool) throws {
        precondition(!disks.isEmpty, "a point spans at least one disk")
        var seen = Set<ObjectIdentifier>()
        let members = disks.filter { seen.insert(ObjectIdentifier($0)).inserted }
        let settings = members[0].settings
        self.members = members
        self.appConsistent = appConsistent
        freezeTimeoutMs = settings.freezeTimeoutMs
        hookSets = HookSet.of(members.map(\.settings))
        let mounts = members.map { Mounts.filesystems(on: $0.session.device) }
        self.mounts = mounts
        let bare = members.indices.filter { mounts[$0].isEmpty }
        if appConsistent && !bare.isEmpty {
            let names = bare.map { members[$0].session.device.path }.joined(separator: ", ")
            throw TidemarkError(.state, "\(names) \(bare.count == 1 ? "has" : "have") no mounted filesystem to quiesce: an app-consistent point cannot be made",
                                hint: members.count == 1 ? "take a crash point instead (it will be marked unverified)"
                                    : "take a crash point instead (those disks' tags are marked unverified), or an app-consistent point of each other disk (--disk)")
        }
        let classes: [PointClass] = mounts.map { $0.isEmpty ? .unverified : (appConsistent ? .appConsistent : .crashConsistent) }
        self.classes = classes
        let id = PointID.make(disks: members.count)
        self.id = id
        let timeUnixMs = Int64(Date().timeIntervalSince1970 * 1000)
        let wake = WakeSignal()
        readyWake = wake
        requests = classes.map { PointRequest(tag: PointTag(id: id, pointClass: $0, timeUnixMs: timeUnixMs), readyWake: wake) }
        prepareDeadline = monotonicSeconds() + Double(ReplicationLimits.pointPrepareWaitMsMax) / 1000
        let names = members.count == 1 ? [members[0].session.device.path]
            : members.map { "\($0.session.device.path) (\($0.diskID))" }
        phases = PointPhases(disks: names, pointID: id, appConsistent: appConsistent, freezeTimeoutMs: settings.freezeTimeoutMs)
    }

    var isMachinePoint: Bool { members.count > 1 }

    // MARK: All phases

    /// Every phase in order; on a failure the point is abandoned on every
    /// disk (nothing tagged), the filesystems are thawed and the post-thaw
    /// hook runs when it is owed. Returns once every disk's tag is committed.
    public func run() throws -> PointResult {
        if isMachinePoint { Self.machinePoints.lock() }
        defer { if isMachinePoint { Self.machinePoints.unlock() } }
        ActivePoints.shared.begin()
        defer { ActivePoints.shared.end() }
        do {
            try prepare()
            try freeze()
            try drain()
            try tag()
            thaw()
            try postThaw()
            let result = try awaitCommit()
            for (i, r) in members.enumerated() { r.metrics.pointCreated(pointClass: result.disks[i].pointClass.rawValue) }
            return result
        } catch {
            let e = abandon(error)
            for r in members { r.metrics.pointAbandoned() }
            Log.error(isMachinePoint ? "machine point \(id) failed: \(e)" : "\(members[0].session.device.path): recovery point failed: \(e)")
            throw e
        }
    }

    // MARK: Phases

    /// Every disk's main thread takes part (behind whatever it is doing) and
    /// brings its backlog down; then, for an app-consistent point, the
    /// pre-freeze hook runs, once, and every disk brings down again what
    /// the hook made the application write (a checkpoint), so that it is
    /// read before the freeze, not under it.
    public func prepare() throws {
        for (i, r) in members.enumerated() { r.order(PointOrder(coordinator: self, index: i)) }
        try awaitPrepared(after: nil)
        if appConsistent {
            let hooksFrom = monotonicSeconds()
            try runPreFreezeHooks()
            hookMs = (monotonicSeconds() - hooksFrom) * 1000
            lock.lock()
            phases.markQuiesced()
            prepareDeadline = monotonicSeconds() + Double(ReplicationLimits.pointPrepareWaitMsMax) / 1000
            lock.broadcast()
            lock.unlock()
            let t0 = monotonicSeconds()
            try awaitPrepared(after: "the pre-freeze hook")
            settleMs = (monotonicSeconds() - t0) * 1000
        }
    }

    /// Waits until every disk is prepared; fails the point, naming the
    /// disks that are not, at the preparation's deadline.
    private func awaitPrepared(after: String?) throws {
        // A disk's own wait ends at the deadline (it fails then); a little
        // more for it to say so.
        let ready = wait(until: currentPrepareDeadline + 1) { $0.phase == .prepared }
        try throwIfFailed()
        guard !ready else { return }
        lock.lock()
        let late = phases.steps.indices.filter { phases.steps[$0] != .prepared }
        let text = late.map { phases.disks[$0] + (phases.steps[$0] == .waiting
            ? " (its main loop did not take part: it is busy with another point or a resync)"
            : after.map { " (its backlog, with what \($0) wrote, did not come down)" } ?? " (its backlog did not come down)") }
        let e = TidemarkError(.busy, "\(text.joined(separator: ", ")) did not get ready for point \(id) within \(ReplicationLimits.pointPrepareWaitMsMax / 1000) s\(after.map { " after \($0)" } ?? ""); no disk was tagged",
                              hint: "retry when the disk is less busy")
        phases.fail(e)
        lock.broadcast()
        lock.unlock()
        throw e
    }

    /// Each disk brings its backlog down by this (monotonic seconds); moved
    /// on once the pre-freeze hook is done.
    var currentPrepareDeadline: Double {
        lock.lock()
        defer { lock.unlock() }
        return prepareDeadline
    }

    /// The freeze record and the watchdog arm for every filesystem of every
    /// disk (nothing is frozen unless both are in place), a last sync, then
    /// FIFREEZE of them all; the bound starts just before.
    public func freeze() throws {
        try throwIfFailed()
        var seen = Set<String>()
        let all = mounts.joined().filter { seen.insert($0.device).inserted }
        var owners: [String: String] = [:]
        if isMachinePoint {
            for (i, ms) in mounts.enumerated() { for m in ms where owners[m.device] == nil { owners[m.device] = members[i].session.device.path } }
        }
        let freezer = Freezer(mounts: all, owners: owners)
        // Before FIFREEZE: the freeze record (durable) and the armed watchdog
        // process, which thaw even if this process dies (FreezeGuard.swift);
        // before the last sync, so that their fsyncs and round trip do not
        // delay the freeze after it.
        let tGuard = monotonicSeconds()
        try freezer.prepare(timeoutMs: freezeTimeoutMs)
        lock.lock()
        self.freezer = freezer
        guardMs = (monotonicSeconds() - tGuard) * 1000
        lock.unlock()
        // A last sync just before the freeze: what was dirtied while the
        // backlog was read is written now, not by FIFREEZE while frozen (it
        // is read under the freeze either way).
        _ = syncMounts(all)
        lock.lock()
        let t0 = monotonicSeconds()
        tFreeze = t0
        // No tag is numbered after the bound counted from here (the watchdog
        // process counts its own from its "frozen" message, sent after this).
        let begun = phases.beginFreeze(now: t0)
        lock.unlock()
        if !begun { try throwIfFailed() }
        do {
            try freezer.freeze()
        } catch {
            let e = (error as? TidemarkError) ?? TidemarkError(.state, "\(error)")
            lock.lock()
            phases.fail(isMachinePoint ? TidemarkError(e.kind, "\(e.message); \(phases.abandonedText)", hint: e.hint) : e)
            let failure = phases.failure ?? e
            lock.broadcast()
            lock.unlock()
            throw failure
        }
        lock.lock()
        tFrozen = monotonicSeconds()
        let ok = phases.frozen()
        lock.broadcast()
        lock.unlock()
        startWatchdog(freezer, end: t0 + Double(freezeTimeoutMs) / 1000)
        if !ok { try throwIfFailed() }
    }

    /// Every disk drains its tracer under the freeze (on its main thread)
    /// and arms its tag.
    public func drain() throws {
        try throwIfFailed()
        lock.lock()
        let deadline = phases.tagDeadline ?? 0
        lock.unlock()
        let armed = wait(until: deadline) { $0.allArmed }
        if !armed {
            lock.lock()
            phases.expire(now: monotonicSeconds())
            lock.broadcast()
            lock.unlock()
        }
        try throwIfFailed()
        lock.lock()
        tArmed = monotonicSeconds()
        lock.unlock()
    }

    /// Returns once every disk is ready to be tagged (its reader has read
    /// everything drained under the freeze); throws at the bound.
    public func awaitReady() throws {
        try untilReady(number: false)
    }

    /// Numbers every disk's tag at once, as soon as every disk is ready;
    /// at the bound, none (the point is abandoned).
    public func tag() throws {
        try untilReady(number: true)
        lock.lock()
        tTagged = monotonicSeconds()
        lock.unlock()
        logSlowTag()
    }

    /// Thaws every filesystem (idempotent).
    public func thaw() {
        freezer?.thaw()
        lock.lock()
        if tFreeze > 0 && freezeMs == 0 { freezeMs = (monotonicSeconds() - tFreeze) * 1000 }
        phases.thawed()
        lock.unlock()
    }

    /// The post-thaw hook, when the application was quiesced for this point.
    public func postThaw() throws {
        lock.lock()
        let due = phases.postThawHookDue
        if due { phases.ranPostThawHook() }
        lock.unlock()
        if due { try runPostThawHooks(of: hookSets.indices) }
    }

    /// Each pre-freeze hook in turn. When one fails, the post-thaw hooks of
    /// those that ran before it run too (their applications were
    /// quiesced, and nothing will be frozen), then the point fails.
    private func runPreFreezeHooks() throws {
        var ran: [Int] = []
        for (k, set) in hookSets.enumerated() {
            guard let hook = set.preFreeze else { continue }
            do {
                try runHook(hook, "pre-freeze", environment: hookEnvironment(set), timeoutMs: set.timeoutMs)
                ran.append(k)
            } catch {
                guard ran.contains(where: { hookSets[$0].postThaw != nil }) else { throw error }
                do { try runPostThawHooks(of: ran) } catch let post {
                    throw TidemarkError(.state, "\(error); then, for the hooks that had run: \(post)")
                }
                throw error
            }
        }
    }

    /// The post-thaw hooks of `sets`, every one of them even when one
    /// fails; the first failure is thrown after.
    private func runPostThawHooks(of sets: some Sequence<Int>) throws {
        var first: Error?
        for k in sets {
            guard let hook = hookSets[k].postThaw else { continue }
            do { try runHook(hook, "post-thaw", environment: hookEnvironment(hookSets[k]), timeoutMs: hookSets[k].timeoutMs) } catch {
                Log.error("point \(id): \(error)")
                if first == nil { first = error }
            }
        }
        if let first { throw first }
    }

    /// Logs the tags, then waits until every disk's tag is committed (or
    /// lost, or `pointCommitWaitMsMax` passed): a complete point is
    /// returned; otherwise the error names each disk that lacks it.
    public func awaitCommit() throws -> PointResult {
        lock.lock()
        precondition(phases.phase == .thawed, "commit wait in \(phases.phase)")
        let f = freezeMs
        let ms = { (a: Double, b: Double) in String(format: "%.1f", (b - a) * 1000) }
        let timing = "frozen \(String(format: "%.1f", f)) ms (FIFREEZE \(ms(tFreeze, tFrozen)), drain \(ms(tFrozen, tArmed)), read and tag \(ms(tArmed, tTagged))); guarded in \(String(format: "%.1f", guardMs)) ms before"
            + (appConsistent ? String(format: "; pre-freeze hook %.1f ms, its writes read before the freeze in %.1f ms", hookMs, settleMs) : "")
        lock.unlock()
        for (i, r) in members.enumerated() {
            Log.info("\(r.session.device.path): recovery point \(id) (\(classes[i].rawValue)) tagged at #\(requests[i].sequence ?? 0)\(isMachinePoint ? " as one of \(members.count) disks" : ""); \(timing); \(requests[i].toReadAtArmBytes) bytes to read under the freeze")
            r.recordFreeze(ms: f)
        }
        let deadline = Date(timeIntervalSinceNow: Double(ReplicationLimits.pointCommitWaitMsMax) / 1000)
        for (i, r) in members.enumerated() {
            let state = r.awaitTagCommit(requests[i], until: deadline)
            lock.lock()
            switch state {
            case .committed: phases.committed(i)
            case .lost: phases.lost(i)
            case .pending: break
            }
            lock.unlock()
        }
        lock.lock()
        let outcome = phases.finish()
        let incomplete: TidemarkError? = switch outcome {
        case .complete: nil
        case .incomplete(let lost, let pending): phases.incompleteError(lost: lost, pending: pending)
        }
        lock.unlock()
        if let incomplete { throw incomplete }
        let created = members.indices.map { i in
            PointCreated(id: id, disk: members[i].session.device.path, diskID: members[i].diskID, pointClass: classes[i],
                         sequence: requests[i].sequence ?? 0, freezeMs: f)
        }
        if isMachinePoint {
            Log.info("machine point \(id) committed on \(members.count) disks: \(created.map { "\($0.diskID) #\($0.sequence)" }.joined(separator: ", "))")
        }
        let weakest: PointClass = classes.contains(.unverified) ? .unverified : (appConsistent ? .appConsistent : .crashConsistent)
        return PointResult(id: id, pointClass: weakest, freezeMs: f, disks: created)
    }

    // MARK: The disks' side (their main threads)

    /// The next thing disk `i`'s main thread does; waits up to `waitMs` for
    /// one when there is none (and answers `.hold` or `.wait` then).
    func command(for i: Int, waitMs: Int) -> PointPhases.DiskCommand {
        lock.lock()
        defer { lock.unlock() }
        let until = Date(timeIntervalSinceNow: Double(waitMs) / 1000)
        while true {
            let c = phases.command(for: i)
            if c != .hold && c != .wait { return c }
            if !lock.wait(until: until) { return phases.command(for: i) }
        }
    }

    func prepared(_ i: Int) {
        lock.lock()
        phases.prepared(i)
        lock.broadcast()
        lock.unlock()
    }

    func armed(_ i: Int) {
        lock.lock()
        phases.armed(i)
        lock.broadcast()
        lock.unlock()
    }

    /// Disk `i` cannot do its part: before the tags, the point fails on every disk.
    func diskFailed(_ i: Int, _ e: TidemarkError) {
        lock.lock()
        phases.diskFailed(i, e)
        lock.broadcast()
        lock.unlock()
    }

    // MARK: Internals

    /// What a pre-freeze or post-thaw hook learns: the point's id and class,
    /// every disk of the point, the disks it is the hook of, and, when that
    /// is one disk, that disk as TIDEMARK_DISK and TIDEMARK_DISK_ID.
    func hookEnvironment(_ set: HookSet) -> [String: String] {
        var env = [
            "TIDEMARK_POINT_ID": id,
            "TIDEMARK_POINT_CLASS": appConsistent ? PointClass.appConsistent.rawValue : PointClass.crashConsistent.rawValue,
            "TIDEMARK_DISKS": members.map(\.session.device.path).joined(separator: " "),
            "TIDEMARK_DISK_IDS": members.map(\.diskID).joined(separator: " "),
            "TIDEMARK_HOOK_DISKS": set.disks.map { members[$0].session.device.path }.joined(separator: " "),
        ]
        if set.disks.count == 1 { env.merge(members[set.disks[0]].hookEnvironment) { $1 } }
        return env
    }

    private func throwIfFailed() throws {
        lock.lock()
        let failure = phases.failure
        lock.unlock()
        if let failure { throw failure }
    }

    /// Waits until `done` holds, the point failed, the agent stops, or
    /// `deadline` (monotonic seconds); true when `done` held.
    private func wait(until deadline: Double, _ done: (PointPhases) -> Bool) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        while !done(phases) {
            if phases.phase == .failed { return false }
            if StopSignal.isRequested || members.contains(where: { $0.isStopping }) {
                phases.fail(TidemarkError(.state, "the agent is stopping; point \(id) was abandoned"))
                lock.broadcast()
                return false
            }
            let left = deadline - monotonicSeconds()
            if left <= 0 { return false }
            _ = lock.wait(until: Date(timeIntervalSinceNow: min(left, 0.05)))
        }
        return true
    }

    /// Looks at every disk under its lock, all at once; with `number`, numbers
    /// every tag when all are ready.
    private func attempt(number: Bool) -> PointPhases.TagDecision {
        lock.lock()
        defer {
            lock.broadcast()
            lock.unlock()
        }
        for m in members { m.cond.lock() }
        defer { for m in members.reversed() { m.cond.unlock() } }
        let now = monotonicSeconds()
        let deadline = phases.tagDeadline ?? now
        let notReady = members.indices.map { members[$0].tagReadinessLocked(requests[$0], now: now, deadline: deadline) }
        traceWait(notReady, now: now)
        let decision = phases.tagDecision(now: now, notReady: notReady)
        if decision == .number && number {
            phases.tagged(members.indices.map { members[$0].numberTagLocked(requests[$0]) })
        }
        return decision
    }

    /// Records the disks' reasons when they changed (caller holds `lock`).
    private func traceWait(_ notReady: [PointPhases.NotReady?], now: Double) {
        guard waitTrace.count < ReplicationLimits.pointWaitTraceEntriesMax else { return }
        let why = notReady.indices.compactMap { i in notReady[i].map { isMachinePoint ? "\(members[i].session.device.path): \($0.reason)" : $0.reason } }
            .joined(separator: "; ")
        // A change of kind, not of a byte count, is a new entry.
        let kind = { (text: String) in text.filter { !$0.isNumber } }
        if let last = waitTrace.last, kind(last.why) == kind(why.isEmpty ? "ready" : why) { return }
        waitTrace.append((ms: (now - (tArmed > 0 ? tArmed : now)) * 1000, why: why.isEmpty ? "ready" : why))
    }

    /// What the tags waited for, when reading and tagging was slow.
    private func logSlowTag() {
        lock.lock()
        let tagMs = (tTagged - tArmed) * 1000
        let trace = waitTrace
        lock.unlock()
        guard tagMs > Double(ReplicationLimits.pointSlowTagLogMs) else { return }
        let steps = trace.map { String(format: "+%.1f ms ", $0.ms) + $0.why }.joined(separator: " | ")
        Log.info("point \(id): reading and tagging under the freeze took \(String(format: "%.1f", tagMs)) ms; waited for: \(steps)")
    }

    private func untilReady(number: Bool) throws {
        while true {
            readyWake.clear()
            switch attempt(number: number) {
            case .number:
                return
            case .abandoned:
                try throwIfFailed()
                preconditionFailure("a point abandoned without a failure")
            case .wait(let until):
                if StopSignal.isRequested {
                    lock.lock()
                    phases.fail(TidemarkError(.state, "the agent is stopping; point \(id) was abandoned"))
                    lock.unlock()
                    try throwIfFailed()
                }
                // The readers signal when they run out of work; a short poll
                // covers anything else that makes a disk ready.
                let ms = max(1, min(ReplicationLimits.pointReadyPollMs, Int(((until - monotonicSeconds()) * 1000).rounded(.up))))
                var p = pollfd(fd: readyWake.fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, Int32(ms))
            }
        }
    }

    /// The freeze's own watchdog thread: at the bound it abandons a point
    /// not tagged yet, and thaws, even if the caller's thread is stuck.
    private func startWatchdog(_ freezer: Freezer, end: Double) {
        let watchdog = Thread { [self] in
            while monotonicSeconds() < end {
                if freezer.isThawed { return }
                usleep(1_000)
            }
            lock.lock()
            phases.expire(now: monotonicSeconds())
            lock.broadcast()
            lock.unlock()
            freezer.thaw()
            lock.lock()
            phases.thawed()
            lock.unlock()
        }
        watchdog.start()
    }

    /// After a failure: the point fails on every disk (if nothing was tagged),
    /// the filesystems are thawed and the freeze guard ended, the post-thaw
    /// hook runs when owed, and no disk keeps an armed request. Returns the
    /// error to report.
    private func abandon(_ error: Error) -> TidemarkError {
        let e = (error as? TidemarkError) ?? TidemarkError(.io, "\(error)")
        lock.lock()
        phases.fail(e)
        let failure = phases.failure ?? e
        lock.broadcast()
        lock.unlock()
        thaw()
        do { try postThaw() } catch { Log.error("point \(id): \(error)") }
        for (i, r) in members.enumerated() { r.disarm(requests[i]) }
        return failure
    }
}

/// The points in progress, so that `run` thaws before it returns: a point
/// runs on a control client's thread or the scheduler's, not on the disks'
/// main threads. Threads: any; guarded by `cond`. Memory: one counter.
final class ActivePoints: @unchecked Sendable {
    static let shared = ActivePoints()
    private let cond = NSCondition()
    private var count = 0

    func begin() {
        cond.lock()
        count += 1
        cond.unlock()
    }

    func end() {
        cond.lock()
        count -= 1
        cond.broadcast()
        cond.unlock()
    }

    /// Waits until no point is in progress, at most `timeoutMs`; true if none is.
    @discardableResult
    func waitIdle(timeoutMs: Int) -> Bool {
        let deadline = Date(timeIntervalSinceNow: Double(timeoutMs) / 1000)
        cond.lock()
        defer { cond.unlock() }
        while count > 0 {
            if !cond.wait(until: deadline) { return count == 0 }
        }
        return true
    }
}

/// The policy's cadence (`policy.crash_consistent_interval`,
/// `policy.app_consistent_interval`): each interval, one point of every disk
/// the agent replicates — a machine point when there are several, so the
/// disks' points are of one instant. A disk that a resync is comparing with
/// the target is left out of it (it cannot be tagged until the resync is
/// over; the log says so). Threads: its own (`start`), stopped by
/// `StopSignal` or `stop`. Memory: O(disks).
final class PointScheduler: @unchecked Sendable {
    let disks: [DiskReplicator]
    let crashIntervalSeconds: Int
    let appIntervalSeconds: Int
    private let cond = NSCondition()
    private var stopping = false
    private var running = false

    init(disks: [DiskReplicator], crashIntervalSeconds: Int, appIntervalSeconds: Int) {
        self.disks = disks
        self.crashIntervalSeconds = crashIntervalSeconds
        self.appIntervalSeconds = appIntervalSeconds
    }

    func start() {
        guard crashIntervalSeconds > 0 || appIntervalSeconds > 0, !disks.isEmpty else { return }
        cond.lock()
        running = true
        cond.unlock()
        let t = Thread { [self] in
            var lastCrash = monotonicSeconds()
            var lastApp = lastCrash
            while !isStopping {
                StopSignal.sleep(milliseconds: 200)
                let now = monotonicSeconds()
                if crashIntervalSeconds > 0 && now - lastCrash >= Double(crashIntervalSeconds) {
                    lastCrash = now
                    makePoint(appConsistent: false)
                }
                if appIntervalSeconds > 0 && now - lastApp >= Double(appIntervalSeconds) && !isStopping {
                    lastApp = monotonicSeconds()
                    makePoint(appConsistent: true)
                }
            }
            cond.lock()
            running = false
            cond.broadcast()
            cond.unlock()
        }
        t.name = "point-scheduler"
        t.start()
    }

    private var isStopping: Bool {
        cond.lock()
        defer { cond.unlock() }
        return stopping || StopSignal.isRequested || disks.contains { $0.isStopping }
    }

    /// Stops the cadence and waits for a point in progress to end.
    func stop() {
        cond.lock()
        stopping = true
        while running { cond.wait() }
        cond.unlock()
    }

    private func makePoint(appConsistent: Bool) {
        let resyncing = disks.filter { $0.resyncActive }
        let included = disks.filter { d in !resyncing.contains { $0 === d } }
        if !resyncing.isEmpty {
            Log.info("\(appConsistent ? "app" : "crash")-consistent point of the policy: \(resyncing.map(\.session.device.path).joined(separator: ", ")) left out (a resync compares \(resyncing.count == 1 ? "it" : "them") with the target)")
        }
        guard !included.isEmpty else { return }
        let point: PointCoordinator
        do {
            point = try PointCoordinator(disks: included, appConsistent: appConsistent)
        } catch {
            Log.error("the policy's \(appConsistent ? "app" : "crash")-consistent point: \(error)")
            return
        }
        // A failure is logged by the coordinator.
        _ = try? point.run()
    }
}

/// One pair of hooks of a point and the disks whose settings name it: a
/// point runs each pair once however many of its disks share it.
struct HookSet: Equatable {
    var preFreeze: String?
    var postThaw: String?
    var timeoutMs: Int
    /// Indices into the point's disks, in order.
    var disks: [Int]

    /// The distinct pairs of `settings` (a point's disks, in order), in the
    /// order their first disk comes; disks with neither hook are in none.
    static func of(_ settings: [ReplicationSettings]) -> [HookSet] {
        var sets: [HookSet] = []
        for (i, s) in settings.enumerated() where s.preFreezeHook != nil || s.postThawHook != nil {
            if let k = sets.firstIndex(where: { $0.preFreeze == s.preFreezeHook && $0.postThaw == s.postThawHook && $0.timeoutMs == s.hookTimeoutMs }) {
                sets[k].disks.append(i)
            } else {
                sets.append(HookSet(preFreeze: s.preFreezeHook, postThaw: s.postThawHook, timeoutMs: s.hookTimeoutMs, disks: [i]))
            }
        }
        return sets
    }
}
