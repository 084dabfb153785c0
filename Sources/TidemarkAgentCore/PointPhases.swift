import TidemarkSystem

/// The phases of one recovery point over one or more disks of this machine
/// — a machine point; a point of one disk is the case of one — as a pure
/// state machine: no threads, no I/O, no clock (times are monotonic seconds,
/// passed in). `PointCoordinator` drives it and does the I/O; another
/// coordinator (across machines) can drive the same phases.
///
///     preparing → prepared → freezing → frozen → tagged → thawed → committed
///                                                                 ↘ incomplete
///     failed: from any phase before `tagged` (the point is abandoned)
///
/// An app-consistent point prepares twice: once before its pre-freeze hook
/// and once after it (`markQuiesced` sends every disk back to prepare), so
/// that what the hook made the application write — a database's
/// checkpoint — is read before the freeze, not under it.
///
/// Each disk takes part through its own main thread, which asks
/// `command(for:)` what to do next and reports back (`prepared`, `armed`,
/// `diskFailed`); the coordinator moves the phases on.
///
/// Invariants (asserted):
/// - tags are numbered on every disk at once or on none (`tagDecision`
///   answers `.number` only when every disk is armed and ready), and never
///   at or after the tag deadline;
/// - from `beginFreeze` until `thawed`, a thaw is owed (`thawOwed`),
///   whatever fails;
/// - the post-thaw hook is owed exactly when the application was quiesced
///   (an app-consistent point whose pre-freeze hook succeeded, or has
///   none), once, after the thaw;
/// - a failure before the tags abandons the point on every disk: a failed
///   point has no tagged disk.
///
/// Threads: none of its own; its driver guards it with one lock
/// (`PointCoordinator.lock`). Memory: O(disks).
public struct PointPhases: Sendable {
    public enum Phase: String, Sendable {
        case preparing, prepared, freezing, frozen, tagged, thawed, committed, incomplete, failed
    }

    /// Where one disk is.
    public enum DiskStep: Equatable, Sendable {
        /// Its main thread has not taken part yet.
        case waiting
        /// Bringing its backlog down before the freeze.
        case preparing
        /// Prepared before the pre-freeze hook; brings its backlog down
        /// again (what the hook wrote) when it next asks.
        case settling
        /// Its backlog is small; it keeps it so until the freeze.
        case prepared
        /// Draining under the freeze, then arming its tag request.
        case draining
        /// Its tag request is armed; it waits to be numbered.
        case armed
        case tagged(sequence: UInt64)
        case committed(sequence: UInt64)
        /// Its tag was numbered, and thrown away before it was durable.
        case lost(sequence: UInt64)
    }

    /// What a disk's main thread does next.
    public enum DiskCommand: Equatable, Sendable {
        /// Sync its filesystems and bring its backlog down.
        case prepare
        /// Drain once more (keep the backlog small) and ask again.
        case hold
        /// Drain under the freeze, then arm its tag request.
        case drainAndArm
        /// Nothing to do yet: wait for the next phase.
        case wait
        /// Leave the point; an armed request not numbered is disarmed.
        case release
    }

    /// The answer of `tagDecision`.
    public enum TagDecision: Equatable, Sendable {
        /// Number every disk's tag now, all under their locks.
        case number
        /// Not every disk is ready: ask again when one becomes ready, at the latest at this time.
        case wait(until: Double)
        /// The point was abandoned (the bound passed, or a disk failed): no disk is tagged.
        case abandoned
    }

    /// Why a disk cannot be tagged at this instant.
    public struct NotReady: Equatable, Sendable, ExpressibleByStringLiteral {
        public var reason: String
        /// Nothing this freeze can wait for ends it (a resync compares the
        /// whole disk with the target; the agent stops): the point is
        /// abandoned at once instead of at the bound.
        public var endsThisFreeze: Bool
        /// What to do, when it ends this freeze.
        public var hint: String?
        public init(_ reason: String, endsThisFreeze: Bool = false, hint: String? = nil) {
            self.reason = reason
            self.endsThisFreeze = endsThisFreeze
            self.hint = hint
        }
        public init(stringLiteral reason: String) { self.init(reason) }
    }

    /// How the commit wait ended.
    public enum Outcome: Equatable, Sendable {
        case complete
        /// Disks (indices) whose tag was lost, and disks whose tag was not
        /// committed within the wait (it may still be).
        case incomplete(lost: [Int], pending: [Int])
    }

    /// Names of the disks, for messages ("/dev/sdb (agent-a-sdb-3f2a9c)").
    public let disks: [String]
    public let pointID: String
    public let appConsistent: Bool
    public let freezeTimeoutMs: Int
    public private(set) var phase: Phase = .preparing
    public private(set) var steps: [DiskStep]
    /// Disks whose main thread left the point.
    public private(set) var released: [Bool]
    /// No tag is numbered at or after this (monotonic seconds); set by `beginFreeze`.
    public private(set) var tagDeadline: Double?
    public private(set) var thawOwed = false
    /// An app-consistent point's pre-freeze hook succeeded (or there is none).
    public private(set) var quiesced = false
    public private(set) var postThawHookRan = false
    /// Why the point failed (set once, with `phase == .failed`).
    public private(set) var failure: TidemarkError?
    /// Why each disk could not be tagged when last asked (`tagDecision`):
    /// what the bound's error names.
    public private(set) var lastNotReady: [NotReady?]

    public init(disks: [String], pointID: String, appConsistent: Bool, freezeTimeoutMs: Int) {
        precondition(!disks.isEmpty, "a point spans at least one disk")
        precondition(freezeTimeoutMs > 0, "the freeze bound must be positive")
        self.disks = disks
        self.pointID = pointID
        self.appConsistent = appConsistent
        self.freezeTimeoutMs = freezeTimeoutMs
        steps = Array(repeating: .waiting, count: disks.count)
        released = Array(repeating: false, count: disks.count)
        lastNotReady = Array(repeating: nil, count: disks.count)
    }

    public var isMachinePoint: Bool { disks.count > 1 }
    /// The phases after which nothing is frozen any more and no disk works for the point.
    public var isOver: Bool { [.thawed, .committed, .incomplete, .failed].contains(phase) && !thawOwed }
    var tagged: Bool { [.tagged, .thawed, .committed, .incomplete].contains(phase) }

    // MARK: The disks' side

    /// The next command for disk `i`'s main thread; advances its step when
    /// the command starts work.
    public mutating func command(for i: Int) -> DiskCommand {
        if released[i] { return .release }
        if phase == .failed || tagged {
            released[i] = true
            return .release
        }
        switch steps[i] {
        case .waiting, .settling:
            steps[i] = .preparing
            return .prepare
        case .prepared:
            if phase == .frozen {
                steps[i] = .draining
                return .drainAndArm
            }
            return .hold
        default:
            return .wait
        }
    }

    /// Disk `i`'s backlog is small.
    public mutating func prepared(_ i: Int) {
        guard phase != .failed else { return }
        assert(steps[i] == .preparing, "disk \(i) prepared from \(steps[i])")
        steps[i] = .prepared
        if phase == .preparing && steps.allSatisfy({ $0 == .prepared }) { phase = .prepared }
    }

    /// Disk `i` drained under the freeze and armed its tag request.
    public mutating func armed(_ i: Int) {
        guard phase != .failed else { return }
        assert(steps[i] == .draining && phase == .frozen, "disk \(i) armed from \(steps[i]) in \(phase)")
        steps[i] = .armed
    }

    /// Disk `i` could not do its part: before the tags, the point fails on
    /// every disk. After them the tags stand (the commit outcome says what
    /// became of each). Returns whether the point failed now.
    @discardableResult
    public mutating func diskFailed(_ i: Int, _ error: TidemarkError) -> Bool {
        guard phase != .failed, !tagged else { return false }
        guard isMachinePoint else { return fail(error) }
        // A disk's own messages begin with its device ("/dev/sdc: …"): that
        // becomes its full name, not a second one.
        let device = disks[i].components(separatedBy: " (")[0]
        let text = error.message.hasPrefix(device + ": ")
            ? disks[i] + error.message.dropFirst(device.count) : "\(disks[i]): \(error.message)"
        return fail(TidemarkError(error.kind, "\(text); \(abandonedText)", hint: error.hint))
    }

    public var allArmed: Bool { steps.allSatisfy { $0 == .armed } }

    // MARK: The coordinator's side

    /// Abandons the point, if no disk is tagged yet. Returns whether it failed now.
    @discardableResult
    public mutating func fail(_ error: TidemarkError) -> Bool {
        guard phase != .failed, !tagged else { return false }
        phase = .failed
        failure = error
        assert(!steps.contains { if case .tagged = $0 { return true } else { return false } }, "a failed point has a tagged disk")
        return true
    }

    /// The pre-freeze hook of an app-consistent point succeeded (or there
    /// is none): it runs once per point, before the freeze. Every disk
    /// prepares again (what the hook wrote is read before the freeze); the
    /// point is `prepared` again when all have.
    /// The point may have failed while the hook ran (a disk's part failed):
    /// the post-thaw hook is owed all the same.
    public mutating func markQuiesced() {
        precondition(appConsistent && !quiesced && (phase == .prepared || phase == .failed), "quiesced twice, out of order, or for a crash point")
        quiesced = true
        guard phase == .prepared else { return }
        phase = .preparing
        steps = steps.map { _ in .settling }
    }

    /// Whether the post-thaw hook is to run now: the application was
    /// quiesced, nothing is frozen, and it did not run yet.
    public var postThawHookDue: Bool { quiesced && !postThawHookRan && !thawOwed }

    public mutating func ranPostThawHook() {
        assert(postThawHookDue, "the post-thaw hook runs once, after the thaw, when the pre-freeze hook ran")
        postThawHookRan = true
    }

    /// Just before FIFREEZE (the freeze record is written and the watchdog
    /// armed): the bound starts now; a thaw is owed from here on. False when
    /// the point failed meanwhile (a disk's part failed): nothing is frozen.
    @discardableResult
    public mutating func beginFreeze(now: Double) -> Bool {
        guard phase != .failed else { return false }
        precondition(phase == .prepared, "freeze from \(phase)")
        tagDeadline = now + Double(freezeTimeoutMs) / 1000
        thawOwed = true
        phase = .freezing
        return true
    }

    /// Every filesystem is frozen. False when the point failed meanwhile
    /// (the bound passed while freezing).
    @discardableResult
    public mutating func frozen() -> Bool {
        guard phase != .failed else { return false }
        precondition(phase == .freezing, "frozen from \(phase)")
        phase = .frozen
        return true
    }

    /// Whether to number the tags now. `notReady[i]` is nil when disk `i`
    /// is ready (its reader waits with nothing left to read), or says why
    /// not. At or after the deadline the point is abandoned, naming the
    /// disks that were not ready.
    public mutating func tagDecision(now: Double, notReady: [NotReady?]) -> TagDecision {
        precondition(notReady.count == disks.count)
        if phase == .failed { return .abandoned }
        precondition(phase == .frozen, "tag decision in \(phase)")
        lastNotReady = notReady
        let deadline = tagDeadline!
        let hopeless = notReady.indices.filter { notReady[$0]?.endsThisFreeze == true }
        if !hopeless.isEmpty {
            fail(cannotTagError(hopeless))
            return .abandoned
        }
        let ready = notReady.indices.filter { notReady[$0] == nil && steps[$0] == .armed }
        if ready.count == disks.count && now < deadline { return .number }
        if now >= deadline {
            fail(boundError(notReady.indices.filter { !ready.contains($0) }))
            return .abandoned
        }
        return .wait(until: deadline)
    }

    /// The tags were numbered, one per disk, at once.
    public mutating func tagged(_ sequences: [UInt64]) {
        precondition(phase == .frozen && sequences.count == disks.count && allArmed, "tags numbered in \(phase)")
        steps = sequences.map { .tagged(sequence: $0) }
        phase = .tagged
    }

    /// The bound, seen by the watchdog thread: a point not tagged by then is
    /// abandoned. Returns whether it abandoned the point now. (It thaws
    /// either way.)
    @discardableResult
    public mutating func expire(now: Double) -> Bool {
        guard let deadline = tagDeadline, now >= deadline, phase == .freezing || phase == .frozen else { return false }
        let late = steps.indices.filter { steps[$0] != .armed || lastNotReady[$0] != nil }
        return fail(boundError(late.isEmpty ? Array(disks.indices) : late))
    }

    /// Every filesystem is thawed (or, when nothing was frozen, the freeze
    /// guard ended). Idempotent.
    public mutating func thawed() {
        thawOwed = false
        if phase == .tagged { phase = .thawed }
    }

    /// Disk `i`'s tag is committed (every segment up to it is in target storage).
    public mutating func committed(_ i: Int) {
        guard case .tagged(let s) = steps[i] else { preconditionFailure("disk \(i) committed from \(steps[i])") }
        steps[i] = .committed(sequence: s)
    }

    /// Disk `i`'s tag was thrown away before it was durable.
    public mutating func lost(_ i: Int) {
        guard case .tagged(let s) = steps[i] else { preconditionFailure("disk \(i) lost from \(steps[i])") }
        steps[i] = .lost(sequence: s)
    }

    /// The commit wait is over: complete when every disk's tag is committed.
    public mutating func finish() -> Outcome {
        precondition(phase == .thawed, "finish in \(phase)")
        var lost: [Int] = [], pending: [Int] = []
        for (i, s) in steps.enumerated() {
            switch s {
            case .committed: break
            case .lost: lost.append(i)
            default: pending.append(i)
            }
        }
        phase = lost.isEmpty && pending.isEmpty ? .committed : .incomplete
        return lost.isEmpty && pending.isEmpty ? .complete : .incomplete(lost: lost, pending: pending)
    }

    /// The error of an incomplete point: names each disk that lost its tag
    /// and each whose tag is not committed yet, and which disks hold it.
    public func incompleteError(lost: [Int], pending: [Int]) -> TidemarkError {
        func seq(_ i: Int) -> UInt64 {
            switch steps[i] {
            case .tagged(let s), .committed(let s), .lost(let s): s
            default: 0
            }
        }
        if !isMachinePoint {
            if !lost.isEmpty {
                return TidemarkError(.state, "recovery point \(pointID) was lost: the server restarted numbering below its tag #\(seq(0)) before the tag was durable (it lost or refused segments); the data is re-sent, but this point cannot be remade",
                                     hint: "take a new point (tidemarkctl point create)")
            }
            return TidemarkError(.state, "recovery point \(pointID) was tagged at #\(seq(0)) but is not committed yet (the server is unreachable or slow)",
                                 hint: "it is committed once the server catches up; check `tidemarkctl points list`")
        }
        let holding = disks.indices.filter { if case .committed = steps[$0] { return true } else { return false } }
        var parts: [String] = []
        if !lost.isEmpty {
            parts.append("lost on " + lost.map { "\(disks[$0]) (tag #\(seq($0)) thrown away before it was durable: the server restarted numbering below it)" }.joined(separator: ", "))
        }
        if !pending.isEmpty {
            parts.append("not committed yet on " + pending.map { "\(disks[$0]) (tag #\(seq($0)); the server is unreachable or slow)" }.joined(separator: ", "))
        }
        let held = holding.isEmpty ? "no disk holds it yet" : "committed on " + holding.map { disks[$0] }.joined(separator: ", ")
        let hint = lost.isEmpty
            ? "the point becomes complete once the server catches up; `tidemarkctl points list` shows it complete then"
            : "it stays incomplete (`tidemarkctl points list` says so): take a new point (tidemarkctl point create); each disk that holds it can still be recovered at it alone"
        return TidemarkError(.state, "machine point \(pointID) of \(disks.count) disks is incomplete: \(parts.joined(separator: "; ")); \(held)", hint: hint)
    }

    // MARK: Messages

    var abandonedText: String {
        "the machine point \(pointID) was abandoned on all \(disks.count) disks (none was tagged)"
    }

    /// Why disk `i` was not tagged, as last seen (empty when unknown).
    func whyLate(_ i: Int) -> String {
        if steps[i] == .draining || steps[i] == .prepared { return "still draining under the freeze" }
        return lastNotReady[i]?.reason ?? ""
    }

    /// The bound passed before the disks `late` (indices) could be tagged.
    func boundError(_ late: [Int]) -> TidemarkError {
        if !isMachinePoint {
            let why = whyLate(0)
            return TidemarkError(.state, "\(disks[0]): the freeze exceeded \(freezeTimeoutMs) ms before the point could be tagged\(why.isEmpty ? "" : " (\(why))"); the filesystems were thawed and the point abandoned",
                                 hint: "raise policy.freeze_timeout_ms, or lower the write load")
        }
        let names = late.map { i in whyLate(i).isEmpty ? disks[i] : "\(disks[i]) (\(whyLate(i)))" }
        return TidemarkError(.state, "the freeze reached policy.freeze_timeout_ms (\(freezeTimeoutMs) ms) before \(names.joined(separator: ", ")) could be tagged; the filesystems were thawed and \(abandonedText)",
                             hint: "raise policy.freeze_timeout_ms, or lower the write load")
    }

    /// The disks `hopeless` (indices) cannot be tagged under this freeze at all.
    func cannotTagError(_ hopeless: [Int]) -> TidemarkError {
        let hint = hopeless.lazy.compactMap { self.lastNotReady[$0]?.hint }.first ?? "take the point again"
        if !isMachinePoint {
            return TidemarkError(.state, "\(disks[0]): the point cannot be tagged under this freeze (\(lastNotReady[0]?.reason ?? "")); the filesystems were thawed at once and the point abandoned", hint: hint)
        }
        let names = hopeless.map { "\(disks[$0]) (\(lastNotReady[$0]?.reason ?? ""))" }
        return TidemarkError(.state, "\(names.joined(separator: ", ")) cannot be tagged under this freeze; the filesystems were thawed at once and \(abandonedText)", hint: hint)
    }
}
