import Foundation
import Testing

/// Helpers shared by Tidemark's tests: real loop devices, real processes,
/// and the rule that a test the machine cannot run fails loudly on CI
/// (CI=true) and is reported as skipped, with the reason, elsewhere
/// (`.requiresRoot`, `.requiresTracefs`, `.requires(_:_:)` in Requirements.swift).
public enum TestEnv {
    public static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
    /// Root, unless `TIDEMARK_TEST_ASSUME_NO_ROOT=1` asks the tests to behave
    /// as if they ran unprivileged (to check, as root, that root-only tests
    /// are reported as skipped, and fail under CI=true).
    public static var isRoot: Bool {
        geteuid() == 0 && ProcessInfo.processInfo.environment["TIDEMARK_TEST_ASSUME_NO_ROOT"] != "1"
    }

    /// Why this process cannot use loop devices as root, or nil when it can.
    public static var rootProblem: String? {
        if !isRoot {
            return geteuid() == 0 ? "TIDEMARK_TEST_ASSUME_NO_ROOT=1 makes the tests behave as if not root" : "not root"
        }
        if !FileManager.default.fileExists(atPath: "/sbin/losetup") { return "/sbin/losetup is missing (apt install mount)" }
        return nil
    }

    /// Why tracefs cannot be used, or nil when it is mounted at /sys/kernel/tracing.
    public static var tracefsProblem: String? {
        FileManager.default.fileExists(atPath: "/sys/kernel/tracing/instances") ? nil
            : "tracefs is not mounted at /sys/kernel/tracing (mount -t tracefs nodev /sys/kernel/tracing; scripts/test.sh does it)"
    }

    /// True when the test may go on. Records a failure on CI when it cannot.
    @available(*, deprecated, message: "a test that returns early is reported as passed: use @Test(.requiresRoot) instead")
    public static func requireRoot(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        guard let problem = rootProblem else { return true }
        let msg = "\(what) needs root and loop devices (losetup): \(problem)"
        if isCI {
            Issue.record("\(msg); CI must run it", sourceLocation: sourceLocation)
        } else {
            print("SKIP: \(msg)")
        }
        return false
    }

    /// True when tracefs is mounted at /sys/kernel/tracing. Otherwise records
    /// an issue on CI and prints SKIP elsewhere, saying how to mount it.
    @available(*, deprecated, message: "a test that returns early is reported as passed: use @Test(.requiresTracefs) instead")
    public static func requireTracefs(_ what: String, sourceLocation: SourceLocation = #_sourceLocation) -> Bool {
        guard let problem = tracefsProblem else { return true }
        let msg = "\(what) needs tracefs: \(problem)"
        if isCI {
            Issue.record("\(msg); CI must run it", sourceLocation: sourceLocation)
        } else {
            print("SKIP: \(msg)")
        }
        return false
    }

    /// The directory holding the built executables (beside the test bundle).
    public static var binDir: String {
        if let d = ProcessInfo.processInfo.environment["TIDEMARK_BIN_DIR"] { return d }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }

    public static func binary(_ name: String) -> String { binDir + "/" + name }

    /// A fresh temporary directory, removed by `cleanup`.
    public static func tempDir(_ tag: String) throws -> String {
        let base = ProcessInfo.processInfo.environment["TIDEMARK_TEST_TMP"] ?? NSTemporaryDirectory()
        let path = (base as NSString).appendingPathComponent("tidemark-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// The result of a finished process.
public struct ProcessResult: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var ok: Bool { status == 0 }
}

/// Runs a program to completion, capturing output.
@discardableResult
public func run(_ args: [String], env: [String: String] = [:], input: String? = nil) throws -> ProcessResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: args[0].hasPrefix("/") ? args[0] : "/usr/bin/env")
    p.arguments = args[0].hasPrefix("/") ? Array(args.dropFirst()) : args
    var environment = ProcessInfo.processInfo.environment
    for (k, v) in env { environment[k] = v }
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    if input != nil { p.standardInput = Pipe() } else { p.standardInput = FileHandle.nullDevice }
    try p.run()
    if let input, let pipe = p.standardInput as? Pipe {
        pipe.fileHandleForWriting.write(input.data(using: .utf8)!)
        try pipe.fileHandleForWriting.close()
    }
    // Read both pipes concurrently so neither fills and blocks the child.
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errData = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    p.waitUntilExit()
    return ProcessResult(status: p.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

/// Runs a shell command line; throws with its output when it fails.
@discardableResult
public func sh(_ command: String) throws -> String {
    let r = try run(["/bin/sh", "-c", command])
    guard r.ok else { throw TestFailure("`\(command)` failed (\(r.status)): \(r.stderr)\(r.stdout)") }
    return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A long-running child process (an agent), killed on `stop` or deinit.
public final class BackgroundProcess: @unchecked Sendable {
    public let process = Process()
    public let stdoutPath: String
    public let stderrPath: String

    public init(_ args: [String], env: [String: String] = [:], logDir: String) throws {
        process.executableURL = URL(fileURLWithPath: args[0])
        process.arguments = Array(args.dropFirst())
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        process.environment = environment
        let tag = UUID().uuidString.prefix(8)
        stdoutPath = logDir + "/proc-\(tag).out"
        stderrPath = logDir + "/proc-\(tag).err"
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath)
        process.standardError = FileHandle(forWritingAtPath: stderrPath)
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    public var pid: Int32 { process.processIdentifier }
    public var stdout: String { (try? String(contentsOfFile: stdoutPath, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    /// Waits until `predicate` holds on the process's stdout, or fails.
    public func waitForOutput(_ needle: String, timeoutSeconds: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if stdout.contains(needle) { return }
            if !process.isRunning {
                throw TestFailure("process exited (\(process.terminationStatus)) before printing '\(needle)'\nstdout: \(stdout)\nstderr: \(stderr)")
            }
            usleep(20_000)
        }
        throw TestFailure("timed out waiting for '\(needle)'\nstdout: \(stdout)\nstderr: \(stderr)")
    }

    /// Sends `signal` and waits for the process to exit; returns its status.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeoutSeconds: Double = 30) -> Int32 {
        if process.isRunning { kill(pid, signal) }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    deinit { if process.isRunning { kill(pid, SIGKILL); process.waitUntilExit() } }
}

/// A real loop device over a sparse file, detached and removed by `detach`
/// (also on deinit).
public final class LoopDevice: @unchecked Sendable {
    public let path: String
    public let backingFile: String
    public let sizeBytes: UInt64
    private var attached = true

    public init(sizeBytes: UInt64, in dir: String, directIO: Bool = true, sectorSize: Int? = nil) throws {
        self.sizeBytes = sizeBytes
        backingFile = dir + "/disk-\(UUID().uuidString.prefix(8)).img"
        guard FileManager.default.createFile(atPath: backingFile, contents: nil) else {
            throw TestFailure("cannot create \(backingFile)")
        }
        try sh("truncate -s \(sizeBytes) '\(backingFile)'")
        path = try sh("losetup -f --show \(directIO ? "--direct-io=on" : "") \(sectorSize.map { "--sector-size \($0)" } ?? "") '\(backingFile)'")
    }

    /// The kernel name (loop3) and major:minor.
    public var name: String { (path as NSString).lastPathComponent }

    public func detach() {
        guard attached else { return }
        attached = false
        _ = try? run(["/sbin/blockdev", "--setrw", path])
        _ = try? run(["/sbin/losetup", "-d", path])
        try? FileManager.default.removeItem(atPath: backingFile)
    }

    deinit { detach() }
}

/// Isolates a test's tracer from any production tracer and from other tests:
/// its own bpffs pin directory and run directory.
public struct TracerSandbox: Sendable {
    public let pinDir: String
    public let runDir: String
    public var env: [String: String] { ["TIDEMARK_BPF_PIN_DIR": pinDir, "TIDEMARK_RUN_DIR": runDir] }

    public init(tag: String) {
        let id = "\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        pinDir = "/sys/fs/bpf/tidemark-test-\(id)"
        runDir = "/run/tidemark-test-\(id)"
        if !FileManager.default.fileExists(atPath: "/sys/fs/bpf/tidemark-test-probe") {
            _ = try? run(["/bin/sh", "-c", "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf"])
        }
    }

    /// Removes every pin (which detaches the program) and the run dir.
    public func cleanup() {
        _ = try? run(["/bin/rm", "-rf", pinDir, runDir])
    }
}
