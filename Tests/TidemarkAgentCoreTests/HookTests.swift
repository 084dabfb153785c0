import Foundation
import Testing
@testable import TidemarkAgentCore
import TidemarkSystem

/// The pre-freeze and post-thaw hooks are real processes: one that runs
/// longer than its `hook_timeout` is stopped and the point fails saying
/// so; one that fails is reported with how it ended; the environment reaches it.
@Suite struct HookTests {
    func script(_ body: String) throws -> (path: String, dir: String) {
        let dir = NSTemporaryDirectory() + "tidemark-hook-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/hook.sh"
        try "#!/bin/sh\n\(body)\n".write(toFile: path, atomically: true, encoding: .utf8)
        _ = chmod(path, 0o755)
        return (path, dir)
    }

    @Test func aHookRunningPastItsTimeoutIsStopped() throws {
        let (path, dir) = try script("sleep 30")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let t0 = monotonicSeconds()
        do {
            try runHook(path, "pre-freeze", environment: [:], timeoutMs: 300)
            Issue.record("a hook sleeping 30 s returned within a 300 ms timeout")
        } catch let e as TidemarkError {
            #expect(e.message.contains("(its hook_timeout) and was stopped"), "\(e.message)")
            #expect(e.hint == "make the hook faster, or raise hook_timeout (under policy:, or in the disk's entry in disks: when it sets its own)")
        }
        #expect(monotonicSeconds() - t0 < 10, "the hook was not stopped at its timeout")
    }

    @Test func aFailingHookSaysHowItEndedAndTheEnvironmentReachesIt() throws {
        let (path, dir) = try script("[ \"$TIDEMARK_POINT_CLASS\" = app-consistent ] || exit 9\nexit 3")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            try runHook(path, "pre-freeze", environment: ["TIDEMARK_POINT_CLASS": "app-consistent"], timeoutMs: 10_000)
            Issue.record("a hook exiting 3 was taken for a success")
        } catch let e as TidemarkError {
            #expect(e.message.contains("failed with status 3;"), "the environment reached it (else it exits 9): \(e.message)")
        }
    }
}
