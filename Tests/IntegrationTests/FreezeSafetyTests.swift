import Foundation
import Glibc
import Testing
import TidemarkTesting

/// The freeze bound (policy.freeze_timeout_ms) holds whatever happens to the
/// agent during a point (docs/points-and-freeze.md): killed (the watchdog
/// process thaws at once), hung (it thaws at the bound), killed together
/// with its watchdog (the restarted agent, or the unit's ExecStopPost
/// command, thaws from the freeze record). Real ext4 on a loop device, real
/// server, agent and writers; the frozen hook holds the freeze open.
///
/// Every test thaws in its cleanup (`fsfreeze -u`, errors ignored) before
/// anything kills a writer or unmounts: a writer blocked by a freeze cannot
/// be killed until the thaw.
@Suite(.serialized) struct FreezeSafetyTests {
    static let freezeTimeoutMs = 2_000
    /// Process start-up and scheduling on a loaded 2-CPU machine.
    static let marginSeconds = 1.5

    /// A world whose frozen hook writes its pid and then blocks, holding the
    /// freeze open; cleanups thaw first, then stop what the test started.
    final class Blocked {
        let w: FaultWorld
        var hookPid: Int32?
        var watchdogPid: Int32?
        var stopped: [Int32] = []
        var hookPidFile: String { w.h.dir + "/hook.pid" }

        init(_ tag: String) throws {
            w = try FaultWorld(tag)
            try "#!/bin/sh\necho $$ > \(w.h.dir)/hook.pid.tmp && mv \(w.h.dir)/hook.pid.tmp \(w.h.dir)/hook.pid\nexec sleep 300\n"
                .write(toFile: w.h.dir + "/frozen-hook.sh", atomically: true, encoding: .utf8)
            try sh("chmod 755 \(w.h.dir)/frozen-hook.sh")
            w.cleanups.append { [self] in
                _ = try? run(["/sbin/fsfreeze", "-u", w.mnt])
                for p in stopped { kill(p, SIGCONT) }
                if let p = hookPid { kill(p, SIGKILL) }
                if let p = watchdogPid { kill(p, SIGKILL) }
            }
        }

        /// Starts server and agent, asks for a point (in the background) and
        /// waits until the hook runs: the filesystem is frozen from then on.
        /// Returns when that was seen.
        func freezeAndHold() throws -> Date {
            try w.startServer()
            try w.startAgent(freezeTimeoutMs: FreezeSafetyTests.freezeTimeoutMs)
            let log = w.agent?.stderr ?? ""
            if let r = log.range(of: "freeze watchdog started (pid "),
               let pid = Int32(log[r.upperBound...].prefix { $0.isNumber }) {
                watchdogPid = pid
            }
            let ctl = try BackgroundProcess([TestEnv.binary("tidemarkctl"), "point", "create", "--disk", w.disk.path,
                                             "--socket", w.h.dir + "/agent.sock"], logDir: w.h.dir)
            w.loads.append(ctl)
            try w.waitFor("the frozen hook runs (the filesystem is frozen)", timeoutSeconds: 120) {
                if FileManager.default.fileExists(atPath: hookPidFile) { return true }
                if !ctl.process.isRunning { throw TestFailure("the point ended before the frozen hook ran: \(ctl.stdout)\(ctl.stderr)\(w.logs)") }
                return false
            }
            let seen = Date()
            hookPid = Int32(try String(contentsOfFile: hookPidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines))
            return seen
        }

        /// A writer on the frozen filesystem; checks that it is held.
        func blockedWriter() throws -> BackgroundProcess {
            let writer = try BackgroundProcess(["/bin/sh", "-c", "echo after > \(w.mnt)/written-while-frozen && echo written"],
                                               logDir: w.h.dir)
            w.loads.append(writer)
            usleep(300_000)
            #expect(writer.process.isRunning, "the writer was not held: the filesystem is not frozen\(w.logs)")
            return writer
        }

        /// Waits until `writer` is done, at most until `deadline`; true if it was.
        func finishes(_ writer: BackgroundProcess, by deadline: Date) -> Bool {
            while writer.process.isRunning && Date() < deadline { usleep(10_000) }
            return !writer.process.isRunning
        }

        var records: [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: w.h.sandbox.runDir)) ?? []).filter { $0.hasPrefix("frozen-") }
        }
    }

    /// `kill -9` of the agent while a point holds ext4 frozen: the watchdog
    /// process sees the agent's end of its socket close and thaws at once;
    /// a writer completes within the bound.
    @Test(.requiresRoot) func agentKilledWhileFrozenIsThawedByItsWatchdog() throws {
        let b = try Blocked("freeze-kill")
        defer { b.w.close() }
        let frozenSince = try b.freezeAndHold()
        #expect(b.watchdogPid != nil, "the agent did not log its freeze watchdog\(b.w.logs)")
        #expect(b.records.count == 1, "no freeze record in the run dir while frozen: \(b.records)")
        let writer = try b.blockedWriter()
        kill(b.w.agent!.pid, SIGKILL)
        let bound = frozenSince.addingTimeInterval(Double(Self.freezeTimeoutMs) / 1000 + Self.marginSeconds)
        let done = b.finishes(writer, by: bound)
        #expect(done, "the filesystem stayed frozen \(String(format: "%.1f", Date().timeIntervalSince(frozenSince))) s after the agent was killed (bound \(Self.freezeTimeoutMs) ms + \(Self.marginSeconds) s)\(b.w.logs)")
        if done { #expect(writer.stdout.contains("written")) }
        let log = b.w.agent?.stderr ?? ""
        #expect(log.contains("freeze watchdog: thawed \(b.w.mnt) (") && log.contains("the agent is gone"), "\(b.w.logs)")
        try b.w.waitFor("the watchdog removed the freeze record", timeoutSeconds: 5) { b.records.isEmpty }
    }

    /// The agent hangs (SIGSTOP) while frozen: its own watchdog thread is
    /// stopped with it; the watchdog process thaws at the bound.
    @Test(.requiresRoot) func hungAgentIsThawedAtTheBound() throws {
        let b = try Blocked("freeze-hang")
        defer { b.w.close() }
        let frozenSince = try b.freezeAndHold()
        kill(b.w.agent!.pid, SIGSTOP)
        b.stopped.append(b.w.agent!.pid)
        let writer = try b.blockedWriter()
        let bound = frozenSince.addingTimeInterval(Double(Self.freezeTimeoutMs) / 1000 + 0.2 + Self.marginSeconds)
        let done = b.finishes(writer, by: bound)
        #expect(done, "the filesystem stayed frozen \(String(format: "%.1f", Date().timeIntervalSince(frozenSince))) s with the agent stopped (bound \(Self.freezeTimeoutMs) ms + 200 ms grace + \(Self.marginSeconds) s)\(b.w.logs)")
        // Not thawed at once either: the bound is what a slow point may use
        // (the hook started some time after the freeze began).
        #expect(Date().timeIntervalSince(frozenSince) >= Double(Self.freezeTimeoutMs) / 1000 / 2,
                "thawed long before the bound: the point could not be made under load")
        kill(b.w.agent!.pid, SIGCONT)
        b.stopped.removeAll()
        #expect((b.w.agent?.stderr ?? "").contains("freeze watchdog: thawed \(b.w.mnt) ("), "\(b.w.logs)")
    }

    /// Agent and watchdog both killed while frozen (nothing is left to
    /// thaw): the restarted agent thaws at start, from the freeze record the
    /// dead one left, and says so.
    @Test(.requiresRoot) func restartedAgentThawsWhatADeadOneLeftFrozen() throws {
        let b = try Blocked("freeze-restart")
        defer { b.w.close() }
        _ = try b.freezeAndHold()
        let watchdog = try #require(b.watchdogPid, "the agent did not log its freeze watchdog\(b.w.logs)")
        kill(watchdog, SIGKILL)
        usleep(100_000)
        kill(b.w.agent!.pid, SIGKILL)
        b.w.agent!.process.waitUntilExit()
        let writer = try b.blockedWriter()
        #expect(b.records.count == 1, "the dead agent's freeze record: \(b.records)")
        // Nothing of the dead agent thaws any more: past the bound it is still frozen.
        usleep(UInt32(Self.freezeTimeoutMs + 500) * 1000)
        #expect(writer.process.isRunning, "thawed without the agent or its watchdog?")
        let restarted = Date()
        try b.w.startAgent(freezeTimeoutMs: Self.freezeTimeoutMs)
        let done = b.finishes(writer, by: restarted.addingTimeInterval(30))
        #expect(done, "the restarted agent did not thaw \(b.w.mnt)\(b.w.logs)")
        let log = b.w.agent?.stderr ?? ""
        #expect(log.contains("thawed \(b.w.mnt) (") && log.contains("left frozen by an agent that is gone"), "\(b.w.logs)")
        #expect(b.records.isEmpty, "the leftover record was not removed: \(b.records)")
    }

    /// One watchdog process serves every point (no fork per point); killed
    /// between points, it is replaced at the next one, which succeeds and
    /// is byte-identical to the frozen source. No freeze record is left.
    @Test(.requiresRoot) func oneWatchdogServesEveryPointAndIsReplacedWhenGone() throws {
        let w = try FaultWorld("freeze-reuse")
        defer { w.close() }
        try w.startServer()
        try w.startAgent(freezeTimeoutMs: Self.freezeTimeoutMs)
        func started() -> [Int32] {
            (w.agent?.stderr ?? "").components(separatedBy: "freeze watchdog started (pid ").dropFirst()
                .compactMap { Int32($0.prefix { $0.isNumber }) }
        }
        _ = try w.point()
        _ = try w.point()
        let first = started()
        #expect(first.count == 1, "a watchdog per point? \(first)\(w.logs)")
        let pid = try #require(first.first)
        #expect(kill(pid, SIGKILL) == 0)
        let id = try w.point()
        let now = started()
        #expect(now.count == 2 && now.last != pid, "\(now)\(w.logs)")
        #expect((w.agent?.stderr ?? "").contains("freeze watchdog (pid \(pid))"), "the agent did not say its watchdog was gone\(w.logs)")
        try w.waitFor("the point is committed", timeoutSeconds: 60) { try w.stored(try w.diskID()).points.count >= 3 }
        try w.recoverAndCompare(id)
        let records = ((try? FileManager.default.contentsOfDirectory(atPath: w.h.sandbox.runDir)) ?? []).filter { $0.contains("frozen-") }
        #expect(records.isEmpty, "\(records)")
    }

    /// The command the unit's ExecStopPost runs (read from the unit file):
    /// thaws what a record lists, says so, removes the record; a mount that
    /// is no longer frozen is left as it is; nothing to do is fine.
    @Test(.requiresRoot) func theUnitsStopCommandThawsLeftovers() throws {
        let h = try Harness("thaw-leftovers")
        let d = try h.loop(sizeMiB: 32, directIO: false)
        let mnt = h.dir + "/mnt"
        var mounted = false
        var writers: [BackgroundProcess] = []
        defer {
            _ = try? run(["/sbin/fsfreeze", "-u", mnt])
            for w in writers { w.stop(timeoutSeconds: 5) }
            if mounted { _ = try? sh("umount \(mnt)") }
            h.close()
        }
        try sh("mkfs.ext4 -q -F \(d.path) && mkdir -p \(mnt) && mount \(d.path) \(mnt)")
        mounted = true
        let unitFile = FileManager.default.currentDirectoryPath + "/Packaging/systemd/tidemark-agent.service"
        let unit = try String(contentsOfFile: unitFile, encoding: .utf8)
        let stopPost = try #require(unit.split(separator: "\n").first { $0.hasPrefix("ExecStopPost=") }, "no ExecStopPost in \(unitFile)")
        #expect(stopPost == "ExecStopPost=/usr/bin/tidemark-agent thaw-leftovers")
        let command = [TestEnv.binary("tidemark-agent")] + stopPost.split(separator: " ").dropFirst().map(String.init)

        let device = try sh("mountpoint -d \(mnt)")
        let runDir = h.sandbox.runDir
        try FileManager.default.createDirectory(atPath: runDir, withIntermediateDirectories: true)
        let record = runDir + "/frozen-999999-1.mounts"
        try "# tidemark frozen mounts v1 pid 999999\n\(device)\t\(mnt)\n".write(toFile: record, atomically: true, encoding: .utf8)
        try sh("fsfreeze -f \(mnt)")
        let writer = try BackgroundProcess(["/bin/sh", "-c", "echo x > \(mnt)/w && echo written"], logDir: h.dir)
        writers.append(writer)
        usleep(300_000)
        #expect(writer.process.isRunning, "the writer was not held by the freeze")

        let r = try run(command, env: h.env)
        #expect(r.ok, "\(r.stderr)")
        #expect(r.stderr.contains("thawed \(mnt) (\(device)), left frozen by an agent that is gone (pid 999999)"), "\(r.stderr)")
        let deadline = Date().addingTimeInterval(5)
        while writer.process.isRunning && Date() < deadline { usleep(10_000) }
        #expect(!writer.process.isRunning, "still frozen after thaw-leftovers")
        #expect(!FileManager.default.fileExists(atPath: record))

        // Already thawed: said, not an error.
        try "# tidemark frozen mounts v1 pid 999999\n\(device)\t\(mnt)\n".write(toFile: record, atomically: true, encoding: .utf8)
        let again = try run(command, env: h.env)
        #expect(again.ok && again.stderr.contains("was not frozen any more (already thawed)"), "\(again.stderr)")
        let nothing = try run(command, env: h.env)
        #expect(nothing.ok && nothing.stderr.contains("no filesystem left frozen"), "\(nothing.stderr)")
    }
}
