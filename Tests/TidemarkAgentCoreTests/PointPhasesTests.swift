import Testing
import TidemarkSystem
@testable import TidemarkAgentCore

/// The phases of a (machine) point as a pure state machine: the disks'
/// commands follow the phase, tags are numbered on every disk or on none
/// and never at or after the bound, a thaw is owed from the freeze on, the
/// post-thaw hook follows a quiesce exactly once, and the outcome names the
/// disks that lack the point.
@Suite struct PointPhasesTests {
    let disks = ["/dev/sdb (a-sdb-1)", "/dev/sdc (a-sdc-2)"]
    let bound = 2.0  // seconds, freezeTimeoutMs 2000

    func machine(app: Bool = false) -> PointPhases {
        PointPhases(disks: disks, pointID: "m2-20250301T101500Z-3fa9c01b7de2", appConsistent: app, freezeTimeoutMs: 2_000)
    }

    /// A point of one disk (/dev/sdb), prepared, frozen at t = 0 (deadline 2), armed.
    func oneDiskArmed() -> PointPhases {
        var p = PointPhases(disks: ["/dev/sdb"], pointID: "p-20250301T101500Z-3fa9c01b7de2", appConsistent: false, freezeTimeoutMs: 2_000)
        _ = p.command(for: 0)
        p.prepared(0)
        p.beginFreeze(now: 0)
        p.frozen()
        _ = p.command(for: 0)
        p.armed(0)
        return p
    }

    /// Every disk prepared, then frozen at t = 100 (deadline 102), every disk armed.
    func frozenAndArmed(app: Bool = false) -> PointPhases {
        var p = machine(app: app)
        for i in disks.indices { #expect(p.command(for: i) == .prepare) }
        for i in disks.indices { p.prepared(i) }
        if app {
            p.markQuiesced()
            // What the hook wrote is brought down before the freeze.
            #expect(p.phase == .preparing)
            for i in disks.indices { #expect(p.command(for: i) == .prepare) }
            for i in disks.indices { p.prepared(i) }
            #expect(p.phase == .prepared)
        }
        #expect(p.beginFreeze(now: 100) == true)
        #expect(p.frozen() == true)
        for i in disks.indices {
            #expect(p.command(for: i) == .drainAndArm)
            p.armed(i)
        }
        return p
    }

    @Test func commandsFollowThePhases() {
        var p = machine()
        #expect(p.phase == .preparing)
        #expect(p.command(for: 0) == .prepare)
        #expect(p.command(for: 0) == .wait, "preparing: nothing more to do until it reports")
        p.prepared(0)
        #expect(p.phase == .preparing, "one disk of two prepared")
        #expect(p.command(for: 0) == .hold, "a prepared disk keeps its backlog small")
        #expect(p.command(for: 1) == .prepare)
        p.prepared(1)
        #expect(p.phase == .prepared)
        #expect(p.beginFreeze(now: 10) == true)
        #expect(p.thawOwed && p.tagDeadline == 10 + bound)
        #expect(p.command(for: 0) == .hold, "while freezing the disks still only hold")
        #expect(p.frozen() == true)
        #expect(p.command(for: 0) == .drainAndArm)
        #expect(p.command(for: 0) == .wait)
        p.armed(0)
        #expect(!p.allArmed)
        #expect(p.command(for: 1) == .drainAndArm)
        p.armed(1)
        #expect(p.allArmed)
        #expect(p.tagDecision(now: 10.5, notReady: [nil, nil]) == .number)
        p.tagged([41, 7])
        #expect(p.phase == .tagged)
        #expect(p.command(for: 0) == .release && p.command(for: 1) == .release)
        #expect(p.released == [true, true])
        p.thawed()
        #expect(p.phase == .thawed && !p.thawOwed && p.isOver)
        p.committed(0)
        p.committed(1)
        #expect(p.finish() == .complete)
        #expect(p.phase == .committed)
        #expect(p.steps == [.committed(sequence: 41), .committed(sequence: 7)])
    }

    /// All or none: one disk not ready means no disk is numbered; at the
    /// deadline the point is abandoned naming that disk and why.
    @Test func tagsAreNumberedOnEveryDiskOrOnNone() throws {
        var p = frozenAndArmed()
        #expect(p.tagDecision(now: 100.1, notReady: [nil, "3 MiB still to read"]) == .wait(until: 102))
        #expect(p.tagDecision(now: 101.9, notReady: ["its reader is still reading", nil]) == .wait(until: 102))
        #expect(p.phase == .frozen)
        // Ready at the very deadline is too late.
        #expect(p.tagDecision(now: 102, notReady: [nil, "3 MiB still to read"]) == .abandoned)
        #expect(p.phase == .failed && p.thawOwed)
        let e = try #require(p.failure)
        #expect(e.message.contains("/dev/sdc (a-sdc-2) (3 MiB still to read)"), "\(e.message)")
        #expect(!e.message.contains("/dev/sdb"), "the ready disk is not blamed: \(e.message)")
        #expect(e.message.contains("abandoned on all 2 disks (none was tagged)"), "\(e.message)")
        #expect(!p.steps.contains { if case .tagged = $0 { return true } else { return false } })
        #expect(p.command(for: 0) == .release && p.command(for: 1) == .release)
        #expect(p.tagDecision(now: 100, notReady: [nil, nil]) == .abandoned, "nothing is numbered after a failure")
        p.thawed()
        #expect(p.isOver)
    }

    /// A resync that starts under the freeze (the drain found the tracer
    /// overflowed) cannot end within it: the point is abandoned at once,
    /// naming the resync, instead of holding the filesystems to the bound.
    @Test func aResyncUnderTheFreezeAbandonsAtOnceAndSaysSo() throws {
        var p = frozenAndArmed()
        let resync = PointPhases.NotReady("a resync compares the disk with the target (65536 chunks left to compare)", endsThisFreeze: true,
                                          hint: "take the point once the resync is done (`tidemarkctl status` shows its progress)")
        #expect(p.tagDecision(now: 100.1, notReady: [nil, resync]) == .abandoned)
        #expect(p.phase == .failed && p.thawOwed)
        let e = try #require(p.failure)
        #expect(e.message.contains("/dev/sdc (a-sdc-2) (a resync compares the disk with the target (65536 chunks left to compare)) cannot be tagged under this freeze"), "\(e.message)")
        #expect(e.message.contains("abandoned on all 2 disks (none was tagged)"), "\(e.message)")
        #expect(e.hint?.contains("once the resync is done") == true)

        var one = oneDiskArmed()
        #expect(one.tagDecision(now: 0.01, notReady: [resync]) == .abandoned)
        #expect(one.failure?.message == "/dev/sdb: the point cannot be tagged under this freeze (a resync compares the disk with the target (65536 chunks left to compare)); the filesystems were thawed at once and the point abandoned")
    }

    /// A resync under the freeze is judged by its own pace, once it has
    /// been watched long enough: in time → waited for; too slow or stuck →
    /// the freeze ends (with the pace in words).
    @Test func aResyncIsJudgedByItsPace() {
        let judge = { (seenLeft: UInt64, left: UInt64, now: Double) in
            DiskReplicator.resyncEndsTooLate(seen: (at: 10, left: seenLeft), left: left, now: now, deadline: 12, judgeMs: 50)
        }
        #expect(judge(65_536, 65_536, 10.04) == nil, "not watched long enough to judge")
        #expect(judge(65_536, 61_440, 10.1) == nil, "40,960 chunks/s: 61,440 left end at 11.6 s, before the bound")
        #expect(judge(65_536, 65_000, 10.1) == "at 5360 chunks/s it ends 10.2 s after the freeze bound")
        #expect(judge(512, 512, 10.053) == "it compared nothing in 53 ms")
        #expect(judge(45_056, 43_008, 10.1) == "at 20480 chunks/s it ends 200 ms after the freeze bound")
        #expect(judge(512, 0, 10.06) == nil, "done")
    }

    /// The watchdog's expiry names why each disk was late, as last seen.
    @Test func theWatchdogsBoundNamesTheLastReason() throws {
        var p = frozenAndArmed()
        #expect(p.tagDecision(now: 101.5, notReady: [nil, "its reader is still reading what was written before the freeze"]) == .wait(until: 102))
        let expired = p.expire(now: 102)
        #expect(expired)
        let e = try #require(p.failure)
        #expect(e.message.contains("/dev/sdc (a-sdc-2) (its reader is still reading what was written before the freeze)"), "\(e.message)")
        #expect(!e.message.contains("/dev/sdb"), "the ready disk is not blamed: \(e.message)")
    }

    @Test func aDiskNotArmedIsNotReady() {
        var p = machine()
        for i in disks.indices { _ = p.command(for: i); p.prepared(i) }
        p.beginFreeze(now: 0)
        p.frozen()
        _ = p.command(for: 0)
        p.armed(0)
        #expect(p.tagDecision(now: 1, notReady: [nil, nil]) == .wait(until: 2), "disk 1 still drains under the freeze")
        #expect(p.tagDecision(now: 2, notReady: [nil, nil]) == .abandoned)
        #expect(p.failure?.message.contains("/dev/sdc (a-sdc-2) (still draining under the freeze)") == true, "\(p.failure?.message ?? "")")
    }

    /// The watchdog thread at the bound: abandons a point not tagged; a
    /// tagged one stands (it only thaws).
    @Test func theBoundAbandonsOnlyAPointNotTagged() {
        var p = frozenAndArmed()
        #expect(p.expire(now: 101.99) == false)
        #expect(p.expire(now: 102) == true)
        #expect(p.phase == .failed)
        #expect(p.expire(now: 103) == false, "once")

        var q = frozenAndArmed()
        #expect(q.tagDecision(now: 101, notReady: [nil, nil]) == .number)
        q.tagged([5, 6])
        #expect(q.expire(now: 102.5) == false)
        #expect(q.phase == .tagged)
        q.thawed()
        #expect(q.phase == .thawed)
    }

    /// A disk that fails before the tags fails the point on every disk,
    /// naming it; after the tags it changes nothing.
    @Test func aDiskFailureBeforeTheTagsAbandonsThePointEverywhere() throws {
        var p = machine()
        _ = p.command(for: 0)
        _ = p.command(for: 1)
        p.prepared(0)
        #expect(p.diskFailed(1, TidemarkError(.busy, "3 MiB still to replicate", hint: "retry later")) == true)
        let e = try #require(p.failure)
        #expect(e.message == "/dev/sdc (a-sdc-2): 3 MiB still to replicate; the machine point m2-20250301T101500Z-3fa9c01b7de2 was abandoned on all 2 disks (none was tagged)")
        #expect(e.hint == "retry later")
        #expect(!p.thawOwed, "nothing was frozen")
        #expect(p.beginFreeze(now: 1) == false, "no freeze after a failure")
        #expect(!p.thawOwed)
        #expect(p.command(for: 0) == .release)
        p.prepared(1)  // a late report is ignored
        #expect(p.phase == .failed)

        var named = machine()
        _ = named.command(for: 1)
        named.diskFailed(1, TidemarkError(.busy, "/dev/sdc: a resync is comparing the disk with the target"))
        #expect(named.failure?.message.hasPrefix("/dev/sdc (a-sdc-2): a resync is comparing") == true, "named once: \(named.failure?.message ?? "")")

        var q = frozenAndArmed()
        _ = q.tagDecision(now: 100.5, notReady: [nil, nil])
        q.tagged([3, 4])
        #expect(q.diskFailed(0, TidemarkError(.io, "late")) == false)
        #expect(q.phase == .tagged && q.failure == nil)
    }

    /// A point of one disk keeps the messages of a disk point.
    @Test func aPointOfOneDiskSaysWhatADiskPointSaid() throws {
        var p = oneDiskArmed()
        #expect(!p.isMachinePoint)
        #expect(p.tagDecision(now: 2.5, notReady: ["4096 bytes still to read"]) == .abandoned)
        #expect(p.failure?.message == "/dev/sdb: the freeze exceeded 2000 ms before the point could be tagged (4096 bytes still to read); the filesystems were thawed and the point abandoned")
        var q = PointPhases(disks: ["/dev/sdb"], pointID: "p-1", appConsistent: false, freezeTimeoutMs: 2_000)
        _ = q.command(for: 0)
        q.diskFailed(0, TidemarkError(.busy, "/dev/sdb: 9 bytes still to replicate"))
        #expect(q.failure?.message == "/dev/sdb: 9 bytes still to replicate", "a disk point's error is the disk's own")
    }

    /// An app-consistent point prepares again after its pre-freeze hook:
    /// every disk brings down what the hook wrote; a disk done holds while
    /// another still reads; a disk that fails then fails the point (and the
    /// application, quiesced, is owed its post-thaw hook).
    @Test func anAppPointPreparesAgainAfterItsHook() {
        var p = machine(app: true)
        for i in disks.indices { _ = p.command(for: i); p.prepared(i) }
        #expect(p.phase == .prepared)
        p.markQuiesced()
        #expect(p.phase == .preparing && p.steps == [.settling, .settling])
        #expect(p.command(for: 0) == .prepare)
        p.prepared(0)
        #expect(p.command(for: 0) == .hold, "disk 0 keeps its backlog small while disk 1 reads")
        #expect(p.phase == .preparing)
        #expect(p.command(for: 1) == .prepare)
        p.prepared(1)
        #expect(p.phase == .prepared)
        let began = p.beginFreeze(now: 5)
        #expect(began)

        var q = machine(app: true)
        for i in disks.indices { _ = q.command(for: i); q.prepared(i) }
        q.markQuiesced()
        _ = q.command(for: 1)
        q.diskFailed(1, TidemarkError(.busy, "/dev/sdc: 268435456 bytes still to replicate"))
        #expect(q.phase == .failed && q.postThawHookDue)
        #expect(q.command(for: 0) == .release)
    }

    /// The post-thaw hook follows a quiesce, once, after the thaw — also
    /// when the point failed after the pre-freeze hook; never without one.
    @Test func thePostThawHookFollowsAQuiesceOnce() {
        var p = frozenAndArmed(app: true)
        #expect(p.quiesced && !p.postThawHookDue, "frozen: not yet")
        _ = p.tagDecision(now: 100.2, notReady: [nil, nil])
        p.tagged([1, 2])
        #expect(!p.postThawHookDue)
        p.thawed()
        #expect(p.postThawHookDue)
        p.ranPostThawHook()
        #expect(!p.postThawHookDue)

        var failed = machine(app: true)
        for i in disks.indices { _ = failed.command(for: i); failed.prepared(i) }
        failed.diskFailed(0, TidemarkError(.io, "drain failed"))  // while the pre-freeze hook ran
        failed.markQuiesced()
        #expect(failed.postThawHookDue, "the application was quiesced: it is released again")

        var crash = frozenAndArmed()
        crash.thawed()
        #expect(!crash.postThawHookDue, "a crash point runs no hook")
    }

    /// The commit outcome names each disk that lost its tag or has it not
    /// committed yet, and the disks that hold it.
    @Test func anIncompletePointNamesItsDisks() {
        var p = frozenAndArmed()
        _ = p.tagDecision(now: 100.2, notReady: [nil, nil])
        p.tagged([41, 7])
        p.thawed()
        p.committed(0)
        p.lost(1)
        #expect(p.finish() == .incomplete(lost: [1], pending: []))
        #expect(p.phase == .incomplete)
        let e = p.incompleteError(lost: [1], pending: [])
        #expect(e.message.contains("machine point m2-20250301T101500Z-3fa9c01b7de2 of 2 disks is incomplete"), "\(e.message)")
        #expect(e.message.contains("lost on /dev/sdc (a-sdc-2) (tag #7"), "\(e.message)")
        #expect(e.message.contains("committed on /dev/sdb (a-sdb-1)"), "\(e.message)")
        #expect(e.hint?.contains("stays incomplete") == true)

        var q = frozenAndArmed()
        _ = q.tagDecision(now: 100.2, notReady: [nil, nil])
        q.tagged([41, 7])
        q.thawed()
        q.committed(1)
        #expect(q.finish() == .incomplete(lost: [], pending: [0]))
        let pending = q.incompleteError(lost: [], pending: [0])
        #expect(pending.message.contains("not committed yet on /dev/sdb (a-sdb-1) (tag #41"), "\(pending.message)")
        #expect(pending.hint?.contains("becomes complete once the server catches up") == true)

        var one = PointPhases(disks: ["/dev/sdb"], pointID: "p-9", appConsistent: false, freezeTimeoutMs: 100)
        _ = one.command(for: 0); one.prepared(0); one.beginFreeze(now: 0); one.frozen(); _ = one.command(for: 0); one.armed(0)
        _ = one.tagDecision(now: 0.01, notReady: [nil])
        one.tagged([12])
        one.thawed()
        one.lost(0)
        #expect(one.finish() == .incomplete(lost: [0], pending: []))
        #expect(one.incompleteError(lost: [0], pending: []).message.hasPrefix("recovery point p-9 was lost: the server restarted numbering below its tag #12"))
    }

    /// A freeze that fails (FIFREEZE refused) leaves a thaw owed until the
    /// driver has thawed what it froze; no disk is tagged.
    @Test func aFailedFreezeOwesAThawAndTagsNothing() {
        var p = machine()
        for i in disks.indices { _ = p.command(for: i); p.prepared(i) }
        p.beginFreeze(now: 5)
        let failedNow = p.fail(TidemarkError(.state, "cannot freeze /srv (ext4 of /dev/sdc): EBUSY"))
        #expect(failedNow)
        #expect(p.thawOwed && !p.isOver)
        #expect(p.frozen() == false)
        #expect(p.tagDecision(now: 5.1, notReady: [nil, nil]) == .abandoned)
        p.thawed()
        #expect(p.isOver)
    }
}
