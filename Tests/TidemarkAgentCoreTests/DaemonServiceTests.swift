import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import TidemarkDaemon
import TidemarkSystem

/// The daemons' service building blocks: a thread as a service stops on the
/// group's graceful shutdown, periodic work ticks until then, a thread's
/// failure ends the group; child processes start with no signal blocked.
@Suite struct DaemonServiceTests {
    final class Flag: @unchecked Sendable {
        let stopped = Atomic<Bool>(false)
        let ticks = Atomic<Int>(0)
    }

    @Test func gracefulShutdownStopsAThreadService() async throws {
        let flag = Flag()
        let thread = ThreadService(name: "test-loop", body: {
            while !flag.stopped.load(ordering: .relaxed) { usleep(1_000) }
        }, stop: { flag.stopped.store(true, ordering: .relaxed) })
        let ticker = PeriodicService(intervalMs: 5) { flag.ticks.add(1, ordering: .relaxed) }
        let group = DaemonSignals.group([thread, ticker], logger: Log.logger("test.daemon"))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            while flag.ticks.load(ordering: .relaxed) < 3 { try await Task.sleep(for: .milliseconds(5)) }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let stopped = flag.stopped.load(ordering: .relaxed)
        #expect(stopped)
    }

    @Test func aFailingThreadEndsTheGroupWithItsError() async throws {
        struct Broke: Error {}
        let flag = Flag()
        let failing = ThreadService(name: "test-fail", body: { throw Broke() }, stop: {})
        let other = ThreadService(name: "test-other", body: {
            while !flag.stopped.load(ordering: .relaxed) { usleep(1_000) }
        }, stop: { flag.stopped.store(true, ordering: .relaxed) })
        let group = DaemonSignals.group([other, failing], logger: Log.logger("test.daemon"))
        await #expect(throws: Broke.self) { try await group.run() }
        let stopped = flag.stopped.load(ordering: .relaxed)
        #expect(stopped, "the other service was not stopped")
    }

    @Test func childProcessesStartWithNoSignalBlocked() throws {
        // The daemon's threads block these (DaemonSignals.prepare); a child must not inherit that.
        let result = Atomic<Int>(-1)
        let done = DispatchSemaphore(value: 0)
        let t = Thread {
            var set = sigset_t()
            sigemptyset(&set)
            for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
            pthread_sigmask(SIG_BLOCK, &set, nil)
            // Exit 0 only when the child's mask is empty and it sees its environment.
            // (A shell command, not a script file: a file just written can be
            // busy for exec while another test spawns.)
            let check = "grep -q '^SigBlk:\t0000000000000000$' /proc/self/status && [ \"$TIDEMARK_DISK\" = /dev/test ]"
            do {
                let ending = try ChildProcess(path: "/bin/sh", arguments: ["-c", check], environment: ["TIDEMARK_DISK": "/dev/test", "PATH": "/usr/bin:/bin"])
                    .wait(timeoutMs: 10_000)
                result.store(ending == .exited(0) ? 1 : 0, ordering: .relaxed)
                if ending != .exited(0) { print("the check ended with \(String(describing: ending))") }
            } catch {
                print("the check: \(error)")
                result.store(0, ordering: .relaxed)
            }
            done.signal()
        }
        t.start()
        done.wait()
        let ok = result.load(ordering: .relaxed)
        #expect(ok == 1)
    }

    /// A descriptor the daemon inherited without close-on-exec (a
    /// supervisor's pipe) does not reach the child: a hook that outlives
    /// the daemon must not hold it open.
    @Test func childProcessesGetOnlyStandardDescriptors() throws {
        let inherited = open("/dev/null", O_RDONLY)   // deliberately not O_CLOEXEC
        #expect(inherited >= 3)
        defer { close(inherited) }
        let check = "[ -e /proc/self/fd/0 ] && [ ! -e /proc/self/fd/\(inherited) ]"
        let ending = try ChildProcess(path: "/bin/sh", arguments: ["-c", check], environment: ["PATH": "/usr/bin:/bin"]).wait(timeoutMs: 10_000)
        #expect(ending == .exited(0), "descriptor \(inherited) reached the child")
        var actions = posix_spawn_file_actions_t()
        #expect(posix_spawn_file_actions_init(&actions) == 0)
        #expect(ChildProcess.closeFromThree(&actions) == 0)
        posix_spawn_file_actions_destroy(&actions)
    }

    @Test func childProcessEndingsAndTimeout() throws {
        let fail = try ChildProcess(path: "/bin/sh", arguments: ["-c", "exit 3"], environment: [:])
        #expect(fail.wait(timeoutMs: 10_000) == .exited(3))
        let hung = try ChildProcess(path: "/bin/sleep", arguments: ["30"], environment: [:])
        #expect(hung.wait(timeoutMs: 50) == nil)
        hung.terminate()
        #expect(hung.poll() == .killed(signal: SIGTERM))
        #expect(throws: SystemError.self) { try ChildProcess(path: "/nonexistent/hook", environment: [:]) }
    }
}
