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
/// SIGTERM blocked and could not be stopped at its timeout.
///
/// Standard input, output and error are the daemon's; every other
/// descriptor is closed in the child, as Process does: the daemon's own are
/// close-on-exec, but what it inherited may not be (a supervisor's pipe or
/// socket), and a hook that outlives the daemon (`sleep` in a hung hook)
/// would hold it open, so the supervisor would not see the daemon end.
/// Not thread-safe: one thread starts, waits for and stops it.
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
        var actions = posix_spawn_file_actions_t()
        r = posix_spawn_file_actions_init(&actions)
        guard r == 0 else { throw SystemError(call: "posix_spawn_file_actions_init", errno: r, context: "starting \(path)") }
        defer { posix_spawn_file_actions_destroy(&actions) }
        r = Self.closeFromThree(&actions)
        guard r == 0 else { throw SystemError(call: "posix_spawn_file_actions_addclose", errno: r, context: "starting \(path)") }
        var child = pid_t()
        r = posix_spawn(&child, path, &actions, &attr, argv, envp)
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
        // ECHILD (nothing to wait for) cannot happen for our own child.
        guard let r = try? syscall("waitpid", "polling hook \(path)", { waitpid(pid, &s, WNOHANG) }) else { return .exited(-1) }
        if r == 0 { return nil }
        status = s
        return Self.ending(s)
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
            _ = try? syscall("waitpid", "reaping a hook", { waitpid(pid, &s, 0) })
        }
        reaper.name = "reap \(path)"
        reaper.start()
    }

    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34 and later),
    /// which Swift's Glibc module does not import; nil with an older glibc.
    private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let addCloseFrom: AddCloseFrom? = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: AddCloseFrom.self)
    }()

    /// Adds "close every descriptor from 3 up" to `actions`: with
    /// closefrom where glibc has it, else one close per descriptor open now
    /// (/proc/self/fd). Returns 0 or an errno value.
    static func closeFromThree(_ actions: inout posix_spawn_file_actions_t) -> Int32 {
        if let addCloseFrom { return addCloseFrom(&actions, 3) }
        guard let dir = opendir("/proc/self/fd") else { return errno }
        defer { closedir(dir) }
        let own = dirfd(dir)
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let fd = Int32(name), fd >= 3, fd != own else { continue }
            let r = posix_spawn_file_actions_addclose(&actions, fd)
            if r != 0 { return r }
        }
        return 0
    }

    static func ending(_ s: Int32) -> Ending {
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import.
        let signal = s & 0x7f
        return signal == 0 ? .exited((s >> 8) & 0xff) : .killed(signal: signal)
    }
}
