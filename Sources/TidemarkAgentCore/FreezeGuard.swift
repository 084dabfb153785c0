import Foundation
import Glibc
import TidemarkSystem

// The freeze bound (policy.freeze_timeout_ms) must hold whatever happens to
// the agent (docs/points-and-freeze.md). Three layers, each independent of
// the agent being alive:
//
// 1. A freeze record in the run directory, written and fsynced before
//    FIFREEZE, removed after the thaw, locked (flock) while the agent lives:
//    a restarted agent, and `tidemark-agent thaw-leftovers` (the unit's
//    ExecStopPost), thaw what a record left by a dead agent lists.
// 2. The freeze watchdog, `tidemark-agent freeze-watchdog`, a child in its
//    own session started once by `run` and reused for every point: armed
//    (with an acknowledgement) before the last sync of each point, told
//    "frozen" just before FIFREEZE (a write, no round trip), it thaws when
//    the agent's end of its socket closes (the agent died, even by SIGKILL)
//    or when the bound plus `FreezeGuardLimits.watchdogGraceMs` has passed
//    since "frozen" (the agent hangs).
// 3. The agent's own watchdog thread (Points.swift), which thaws at the
//    bound and abandons a point not yet tagged.

public enum FreezeGuardLimits {
    /// The watchdog process thaws this long after the bound if the agent has
    /// not: the agent's own thread thaws first when the agent is healthy,
    /// and a tag is never numbered after the bound (Replicator.nextBatch).
    public static let watchdogGraceMs = 200
    /// The agent waits this long for the watchdog to acknowledge an arm
    /// (it answers in microseconds), then starts a new one once.
    public static let watchdogReplyWaitMs = 2_000
    /// A record locked by a process that is still running is left alone;
    /// a lock can stay held this long by a child between fork and exec.
    public static let recordLockGraceMs = 50
}

/// What one freeze needs before FIFREEZE and after FITHAW: the record and
/// the armed watchdog.
final class FreezeGuard {
    let id: String
    let record: FreezeRecord
    private var ended = false

    private init(id: String, record: FreezeRecord) {
        self.id = id
        self.record = record
    }

    /// Writes the record (durable), then arms the watchdog process; throws
    /// (and leaves nothing behind) when either fails: then no freeze.
    static func begin(_ mounts: [MountedFilesystem], timeoutMs: Int) throws -> FreezeGuard {
        let id = FreezeRecord.newID()
        let record = try FreezeRecord.write(mounts, id: id)
        do {
            try FreezeWatchdogClient.shared.arm(id: id, timeoutMs: timeoutMs, record: record.path, mounts: mounts)
        } catch {
            record.remove()
            throw error
        }
        return FreezeGuard(id: id, record: record)
    }

    /// Just before FIFREEZE: the watchdog's bound starts.
    func frozen() throws {
        try FreezeWatchdogClient.shared.frozen(id: id)
    }

    /// After the thaw: disarms the watchdog and removes the record.
    func end() {
        guard !ended else { return }
        ended = true
        FreezeWatchdogClient.shared.disarm(id: id)
        record.remove()
    }
}

/// `frozen-<pid>-<n>.mounts` in the run directory: the mount points (with
/// their filesystems' major:minor) one freeze is about to freeze.
final class FreezeRecord {
    static let prefix = "frozen-"
    static let suffix = ".mounts"
    static let header = "# tidemark frozen mounts v1"

    let path: String
    private let fd: FileDescriptor?

    private init(path: String, fd: FileDescriptor?) {
        self.path = path
        self.fd = fd
    }

    nonisolated(unsafe) private static var counter = 0
    private static let counterLock = NSLock()

    static func newID() -> String {
        counterLock.lock()
        counter += 1
        let n = counter
        counterLock.unlock()
        return "\(getpid())-\(n)"
    }

    static var directory: String { TracerPaths.runDir }

    /// Written under a temporary name, locked, fsynced, then renamed (the
    /// leftover scan never sees a record that is not complete and locked).
    static func write(_ mounts: [MountedFilesystem], id: String, directory: String = directory) throws -> FreezeRecord {
        try makeDirectories(directory, mode: 0o700)
        let path = directory + "/" + prefix + id + suffix
        let temp = directory + "/.tmp-" + prefix + id + suffix
        let fd = try FileDescriptor(open: temp, [.writeOnly, .create, .truncate, .noFollow], mode: 0o600,
                                    purpose: "creating the freeze record")
        guard try fd.tryLockExclusive() else {
            throw TidemarkError(.busy, "the freeze record \(temp) is locked by another process")
        }
        var text = "\(header) pid \(getpid())\n"
        for m in mounts { text += "\(m.device)\t\(m.mountPoint)\n" }
        try Array(text.utf8).withUnsafeBytes { try fd.write($0, at: 0) }
        try fd.sync()
        do {
            try renameFile(temp, to: path, purpose: "recording the mounts to freeze in")
        } catch {
            _ = try? removeFile(temp)
            throw error
        }
        try FileDescriptor(open: directory, [.readOnly], purpose: "flushing the run directory").sync()
        return FreezeRecord(path: path, fd: fd)
    }

    func remove() {
        do {
            try removeFile(path, purpose: "removing the freeze record")
        } catch {
            Log.warning("could not remove the freeze record \(path): \(error)")
        }
        // The lock goes with the descriptor (deinit).
    }

    /// The (device, mount point) pairs a record lists.
    static func parse(_ text: String) -> [(device: String, mountPoint: String)] {
        text.split(separator: "\n").compactMap { line in
            guard !line.hasPrefix("#"), let tab = line.firstIndex(of: "\t") else { return nil }
            return (String(line[..<tab]), String(line[line.index(after: tab)...]))
        }
    }

    /// The records in the run directory, oldest name first.
    static func list(directory: String = directory) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return [] }
        return names.filter { $0.hasPrefix(prefix) && $0.hasSuffix(suffix) }.sorted().map { directory + "/" + $0 }
    }

    /// Thaws what every record left by a process that is gone lists, and
    /// removes those records. A record still locked (its agent is running
    /// and freezing) is left alone. Returns one line per record and mount,
    /// for the log; empty when there was nothing to do.
    static func thawLeftovers(directory: String = directory) -> [String] {
        var lines: [String] = []
        // A record still under its temporary name was never complete: the
        // agent died before it froze anything. Removed when nobody holds it.
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where name.hasPrefix(".tmp-" + prefix) {
            let path = directory + "/" + name
            if let fd = try? FileDescriptor(open: path, [.readOnly, .noFollow], purpose: "opening an incomplete freeze record"),
               (try? fd.tryLockExclusive()) == true {
                unlink(path)
            }
        }
        for path in list(directory: directory) {
            let fd: FileDescriptor
            do {
                fd = try FileDescriptor(open: path, [.readWrite, .noFollow], purpose: "opening the freeze record")
            } catch {
                lines.append("freeze record \(path): \(error)")
                continue
            }
            do {
                guard try fd.tryLockExclusive(graceMs: FreezeGuardLimits.recordLockGraceMs) else {
                    lines.append("left alone: the freeze record \(path) is held by a running agent (a point is being made)")
                    continue
                }
            } catch {
                lines.append("freeze record \(path): \(error)")
                continue
            }
            // The record is read through the locked descriptor; a damaged
            // or oversized one reads as empty and is removed below.
            let text = String(decoding: (try? SmallFile.read(fd, path: path, bytesMax: 1 << 20, purpose: "reading the freeze record")) ?? [], as: UTF8.self)
            let mounts = parse(text)
            let who = text.split(separator: "\n").first.map { $0.replacingOccurrences(of: header, with: "").trimmingCharacters(in: .whitespaces) } ?? ""
            for m in mounts {
                lines.append(thaw(mountPoint: m.mountPoint, device: m.device, reason: "left frozen by an agent that is gone (\(who.isEmpty ? "unknown pid" : who))"))
            }
            if mounts.isEmpty { lines.append("removed the freeze record \(path), which lists no mount point") }
            do {
                try removeFile(path, purpose: "removing the freeze record")
            } catch {
                lines.append("could not remove the freeze record \(path): \(error)")
            }
        }
        return lines
    }

    /// Thaws the filesystem mounted at `mountPoint` if it is still the one
    /// recorded (`device`, major:minor); says what happened.
    static func thaw(mountPoint: String, device: String, reason: String) -> String {
        do {
            let fd = try FileDescriptor(open: mountPoint, [.readOnly, .noFollow], purpose: "opening the mount point to thaw")
            let st = try fd.stat()
            let now = deviceName(st.st_dev)
            guard now == device else {
                return "\(mountPoint) is no longer the filesystem \(device) that was frozen (now \(now)): not touched"
            }
            if try fd.thawIfFrozen() {
                return "thawed \(mountPoint) (\(device)), \(reason)"
            }
            return "\(mountPoint) (\(device)) was not frozen any more (already thawed), \(reason)"
        } catch {
            return "could not thaw \(mountPoint) (\(device)), \(reason): \(error); thaw it with `fsfreeze -u \(mountPoint)`"
        }
    }

    /// "major:minor" of a dev_t, as /proc/self/mountinfo writes it.
    static func deviceName(_ dev: dev_t) -> String {
        let d = UInt64(dev)
        let major = ((d >> 8) & 0xfff) | ((d >> 32) & ~UInt64(0xfff))
        let minor = (d & 0xff) | ((d >> 12) & ~UInt64(0xff))
        return "\(major):\(minor)"
    }
}

extension AgentCommands {
    /// `thaw-leftovers` (the unit's ExecStopPost), and the start of `run`:
    /// thaws what a dead agent left frozen; logs each thing it did.
    /// Returns the number of problems (mounts it could not thaw).
    @discardableResult
    public static func thawLeftovers(quietWhenNothing: Bool = true) -> Int {
        let lines = FreezeRecord.thawLeftovers()
        var problems = 0
        for l in lines {
            // Problems: a mount that could not be thawed, a record that could
            // not be read or removed (each line says so in its first words).
            if l.hasPrefix("could not") || l.hasPrefix("freeze record") {
                problems += 1
                Log.error(l)
            } else if l.hasPrefix("thawed") {
                Log.warning(l)
            } else {
                Log.info(l)
            }
        }
        if lines.isEmpty && !quietWhenNothing { Log.info("no filesystem left frozen (no freeze record in \(FreezeRecord.directory))") }
        return problems
    }
}

/// The agent's side of the freeze watchdog process.
final class FreezeWatchdogClient: @unchecked Sendable {
    static let shared = FreezeWatchdogClient()
    /// The agent binary (re-executed as `freeze-watchdog`).
    nonisolated(unsafe) static var executable = "/proc/self/exe"

    private let lock = NSLock()
    private var pid: pid_t = 0
    private var socket: FileDescriptor?
    private var pending: [UInt8] = []

    /// Starts the watchdog process if it is not running.
    func start() throws {
        lock.lock()
        defer { lock.unlock() }
        try startLocked()
    }

    private func startLocked() throws {
        if socket != nil { return }
        signal(SIGPIPE, SIG_IGN)  // a dead watchdog is an EPIPE, not the end of the agent
        let child = try DetachedChild.spawn(path: Self.executable, arguments: ["tidemark-agent", "freeze-watchdog"])
        pid = child.pid
        socket = child.socket
        pending = []
        Log.info("freeze watchdog started (pid \(pid)): it thaws every frozen filesystem if this agent dies or hangs during a point")
    }

    private func dropLocked(_ why: String) {
        guard let s = socket else { return }
        socket = nil
        _ = s  // closed on release
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        Log.warning("freeze watchdog (pid \(pid)) \(why)\(r == pid ? " (exited, status \(status))" : ""); starting a new one")
    }

    /// Arms the watchdog for one freeze (the bound starts with `frozen`)
    /// and waits for its acknowledgement;
    /// a watchdog that is gone is replaced once.
    func arm(id: String, timeoutMs: Int, record: String, mounts: [MountedFilesystem]) throws {
        var line = "arm\t\(id)\t\(timeoutMs + FreezeGuardLimits.watchdogGraceMs)\t\(record)"
        for m in mounts { line += "\t\(m.device)\t\(m.mountPoint)" }
        line += "\n"
        lock.lock()
        defer { lock.unlock() }
        var lastError: Error?
        for _ in 0..<2 {
            do {
                try startLocked()
                try sendLocked(line)
                let reply = try readLineLocked()
                if reply == "armed\t\(id)" { return }
                if reply.hasPrefix("error\t\(id)\t") {
                    throw TidemarkError(.state, "the freeze watchdog cannot guard this freeze: \(reply.split(separator: "\t", maxSplits: 2).last ?? "")",
                                        hint: "no point is made without it; see the agent log")
                }
                throw TidemarkError(.state, "the freeze watchdog answered '\(reply)' to arming \(id)")
            } catch let e as TidemarkError where e.message.hasPrefix("the freeze watchdog cannot") {
                throw e
            } catch {
                lastError = error
                dropLocked("did not answer: \(error)")
            }
        }
        throw TidemarkError(.state, "no freeze watchdog: \(lastError.map { "\($0)" } ?? "?"); the filesystems are not frozen without one",
                            hint: "check that \(Self.executable) can run `tidemark-agent freeze-watchdog`; see the agent log")
    }

    /// Just before FIFREEZE: starts the bound of an armed freeze; no answer
    /// is awaited (a write of a few bytes).
    func frozen(id: String) throws {
        lock.lock()
        defer { lock.unlock() }
        do { try sendLocked("frozen\t\(id)\n") } catch {
            dropLocked("is gone: \(error)")
            throw error
        }
    }

    /// After the thaw; no answer is awaited.
    func disarm(id: String) {
        lock.lock()
        defer { lock.unlock() }
        do { try sendLocked("thawed\t\(id)\n") } catch { dropLocked("is gone: \(error)") }
    }

    /// Closes the socket: the watchdog, with nothing armed, exits.
    func stop() {
        lock.lock()
        defer { lock.unlock() }
        socket = nil
    }

    private func sendLocked(_ text: String) throws {
        guard let s = socket else { throw TidemarkError(.state, "not running") }
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            done += try bytes.withUnsafeBytes { b in
                try syscall("write", "arming the freeze watchdog") { Glibc.write(s.rawValue, b.baseAddress! + done, b.count - done) }
            }
        }
    }

    private func readLineLocked() throws -> String {
        guard let s = socket else { throw TidemarkError(.state, "not running") }
        let deadline = monotonicSeconds() + Double(FreezeGuardLimits.watchdogReplyWaitMs) / 1000
        while true {
            if let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                return line
            }
            let left = Int32(max(0, (deadline - monotonicSeconds()) * 1000))
            guard left > 0 else { throw TidemarkError(.state, "no answer within \(FreezeGuardLimits.watchdogReplyWaitMs) ms") }
            guard try pollReady(s.rawValue, Int16(POLLIN), timeoutMs: Int(left), "waiting for the freeze watchdog") else { continue }
            var buf = [UInt8](repeating: 0, count: 256)
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { b in
                    try syscall("read", "waiting for the freeze watchdog") { Glibc.read(s.rawValue, b.baseAddress!, b.count) }
                }
            } catch let e as SystemError where e.errno == EAGAIN {
                continue
            }
            if n == 0 { throw TidemarkError(.state, "it exited") }
            pending += buf[0..<n]
        }
    }
}

/// The watchdog process (`tidemark-agent freeze-watchdog`): standard input
/// is its socket to the agent. Lines from the agent:
///   arm <id> <ms> <record> (<major:minor> <mount point>)+   → answers "armed <id>" or "error <id> <text>"
///   frozen <id>       (just before FIFREEZE: the bound starts)
///   thawed <id>       (after FITHAW: disarmed)
/// (tab-separated). It thaws an armed freeze `ms` after its "frozen", all
/// of them at once when the agent's end closes (the agent is gone: the
/// records are then removed too) or on SIGTERM; it exits when the agent's
/// end closes.
public enum FreezeWatchdog {
    struct Armed {
        var deadline: Double
        var timeoutMs: Int
        var record: String
        var mounts: [(fd: FileDescriptor, mountPoint: String, device: String)]
    }

    /// The process's signals: SIGTERM thaws what is armed, then `serve` returns.
    public static func installSignals() {
        StopSignal.install()
        signal(SIGHUP, SIG_IGN)
    }

    public static func serve(fd: Int32 = 0, stopRequested: () -> Bool = { StopSignal.isRequested }) -> Int32 {
        var armed: [String: Armed] = [:]
        var pending: [UInt8] = []

        func thaw(_ id: String, _ a: Armed, _ reason: String, removeRecord: Bool) {
            for m in a.mounts {
                do {
                    if try m.fd.thawIfFrozen() {
                        Log.warning("freeze watchdog: thawed \(m.mountPoint) (\(m.device)): \(reason)")
                    } else {
                        Log.info("freeze watchdog: \(m.mountPoint) (\(m.device)) was already thawed (\(reason))")
                    }
                } catch {
                    Log.error("freeze watchdog: \(error) (\(reason)); thaw it with `fsfreeze -u \(m.mountPoint)`")
                }
            }
            if removeRecord { unlink(a.record) }
        }
        func thawAll(_ reason: String) {
            for (id, a) in armed { thaw(id, a, reason, removeRecord: true) }
            armed.removeAll()
        }
        func reply(_ text: String) {
            _ = (text + "\n").withCString { Glibc.write(fd, $0, strlen($0)) }
        }
        func handle(_ line: String) {
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if f.count >= 2 && f[0] == "thawed" {
                armed[f[1]] = nil
                return
            }
            if f.count >= 2 && f[0] == "frozen" {
                if var a = armed[f[1]] {
                    a.deadline = monotonicSeconds() + Double(a.timeoutMs) / 1000
                    armed[f[1]] = a
                }
                return
            }
            guard f.count >= 6, f[0] == "arm", let ms = Int(f[2]), (f.count - 4) % 2 == 0 else {
                Log.error("freeze watchdog: unknown request '\(line)'")
                return
            }
            let id = f[1]
            // The bound starts with "frozen", just before FIFREEZE; until then
            // only the agent's death thaws (nothing may be frozen yet).
            var a = Armed(deadline: .infinity, timeoutMs: ms, record: f[3], mounts: [])
            var i = 4
            while i + 1 < f.count {
                do {
                    let d = try FileDescriptor(open: f[i + 1], [.readOnly], purpose: "opening the mount point to guard its freeze")
                    a.mounts.append((d, f[i + 1], f[i]))
                } catch {
                    reply("error\t\(id)\t\(error)")
                    return
                }
                i += 2
            }
            armed[id] = a
            reply("armed\t\(id)")
        }

        while true {
            if stopRequested() {
                thawAll("the freeze watchdog was stopped (SIGTERM)")
                return 0
            }
            let now = monotonicSeconds()
            for (id, a) in armed where now >= a.deadline {
                thaw(id, a, "the agent did not thaw it within \(a.timeoutMs) ms (freeze_timeout_ms + \(FreezeGuardLimits.watchdogGraceMs) ms of grace): the agent hangs or was stopped", removeRecord: false)
                // Kept until the agent says "thawed": should it freeze late
                // and then die, the end of its socket still thaws.
                var kept = a
                kept.deadline = .infinity
                armed[id] = kept
            }
            let next = armed.values.map(\.deadline).filter { $0.isFinite }.min()
            var waitMs = 200
            if let next { waitMs = min(waitMs, max(0, Int(((next - now) * 1000).rounded(.up)))) }
            do {
                guard try pollReady(fd, Int16(POLLIN), timeoutMs: waitMs, "the freeze watchdog waiting for the agent") else { continue }
            } catch {
                thawAll("the freeze watchdog's poll failed: \(error)")
                return 1
            }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { b in try syscall("read", "the freeze watchdog reading the agent's requests") { Glibc.read(fd, b.baseAddress!, b.count) } }
            } catch let e as SystemError where e.errno == EAGAIN {
                continue
            } catch {
                n = -1
            }
            if n <= 0 {
                if !armed.isEmpty { thawAll("the agent is gone while the filesystem was frozen") }
                return 0
            }
            pending += buf[0..<n]
            while let nl = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[..<nl], as: UTF8.self)
                pending.removeSubrange(...nl)
                handle(line)
            }
        }
    }
}
