import Foundation
import Glibc
import TidemarkSystem

/// A program the daemon runs and waits for (the agent's pre-freeze and
/// post-thaw hooks), started with posix_spawn with an empty signal mask and
/// every signal's default disposition.
///
/// Why not Foundation's Process: a daemon's threads run with nearly every
/// signal blocked (Swift concurrency's threads are libdispatch workers,
/// which block them, and threads they start inherit the mask), the daemon
/// ignores SIGPIPE, and Process passes both on, so a hook would start with
/// SIGTERM blocked and could not be stopped at its timeout. Standard input, output and error are
/// the daemon's, as with Process; the daemon's own descriptors are
/// close-on-exec. Not thread-safe: one thread starts, waits for and stops it.
public final class ChildProcess {
    public let pid: pid_t
    public let path: String
    /// The wait status once reaped.
    private var status: Int32?
    /// `terminate` handed the child to a reaper thread.
    private var terminated = false

    /// Starts `path` with `arguments` (argv[1...]) and exactly `environment`.
    public init(path: String, arguments: [String] = [], environment: [String: String]) throws {
        self.path = path
        var attr = posix_spawnattr_t()
        var r = posix_spawnattr_init(&attr)
        guard r == 0 else { throw SystemError(call: "posix_spawnattr_init", errno: r, context: "starting \(path)") }
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var all = sigset_t()
        sigfillset(&all)
        r = posix_spawnattr_setsigmask(&attr, &empty)
        if r == 0 { r = posix_spawnattr_setsigdefault(&attr, &all) }
        if r == 0 { r = posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)) }
        guard r == 0 else { throw SystemError(call: "posix_spawnattr", errno: r, context: "starting \(path)") }
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var child = pid_t()
        r = posix_spawn(&child, path, nil, &attr, argv, envp)
        guard r == 0 else { throw SystemError(call: "posix_spawn", errno: r, context: "starting \(path)") }
        pid = child
    }

    /// How the child ended: its exit status, or the signal that killed it.
    public enum Ending: Equatable, Sendable, CustomStringConvertible {
        case exited(Int32)
        case killed(signal: Int32)

        public var description: String {
            switch self {
            case .exited(let code): "status \(code)"
            case .killed(let signal): "signal \(signal)"
            }
        }
    }

    /// The ending if the child has ended (reaped now), nil while it runs.
    public func poll() -> Ending? {
        if terminated { return .killed(signal: SIGTERM) }
        if let status { return Self.ending(status) }
        var s: Int32 = 0
        while true {
            let r = waitpid(pid, &s, WNOHANG)
            if r == 0 { return nil }
            if r < 0 && errno == EINTR { continue }
            if r < 0 { return .exited(-1) }   // ECHILD: nothing to wait for (cannot happen for our own child)
            status = s
            return Self.ending(s)
        }
    }

    /// Waits until the child ends or `timeoutMs` passes (nil then).
    public func wait(timeoutMs: Int, pollMs: Int = 5) -> Ending? {
        let deadline = monotonicNanoseconds() + UInt64(timeoutMs) * 1_000_000
        while true {
            if let e = poll() { return e }
            if monotonicNanoseconds() >= deadline { return nil }
            usleep(useconds_t(pollMs * 1000))
        }
    }

    /// Sends SIGTERM and reaps the child on a thread of its own when it ends
    /// (a child that ignores SIGTERM is left to finish by itself).
    public func terminate() {
        guard status == nil, !terminated else { return }
        terminated = true
        kill(pid, SIGTERM)
        let pid = self.pid
        let reaper = Thread {
            var s: Int32 = 0
            while waitpid(pid, &s, 0) < 0 && errno == EINTR {}
        }
        reaper.name = "reap \(path)"
        reaper.start()
    }

    static func ending(_ s: Int32) -> Ending {
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import.
        let signal = s & 0x7f
        return signal == 0 ? .exited((s >> 8) & 0xff) : .killed(signal: signal)
    }
}
