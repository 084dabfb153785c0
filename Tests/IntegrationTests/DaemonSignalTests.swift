import Foundation
import Testing
import TidemarkTesting

/// The daemons' signals on the real binaries (swift-service-lifecycle,
/// TidemarkDaemon): SIGHUP re-reads the configuration and the reload's
/// effect shows, SIGTERM and SIGINT end the process gracefully with status
/// 0, and under systemd (standard error is the journal) every log line
/// carries the syslog priority of its level.
///
/// No loop device or tracer is needed: the agent runs as a fresh install's
/// unit does (`--wait-for-config`), the server with certificates from
/// scripts/make-certs.sh and a spool and target in a temporary directory.
@Suite(.serialized) struct DaemonSignalTests {
    /// Starts `argv` with standard error on `errPath` and JOURNAL_STREAM
    /// naming that file's device and inode, as systemd sets it when a unit's
    /// standard error is the journal.
    static func startUnderJournal(_ argv: [String], errPath: String, env: [String: String], logDir: String) throws -> BackgroundProcess {
        // The shell opens the file, names it in JOURNAL_STREAM and execs the
        // daemon, so the PID is the daemon's own and signals reach it.
        let quoted = argv.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let script = "exec 2>>'\(errPath)'; JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \(quoted)"
        return try BackgroundProcess(["/bin/sh", "-c", script], env: env, logDir: logDir)
    }

    static func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    /// The lines of `log` that contain `needle`.
    static func lines(_ log: String, containing needle: String) -> [String] {
        log.split(separator: "\n").map(String.init).filter { $0.contains(needle) }
    }

    @Test func agentReloadsOnSIGHUPAndStopsOnSIGTERMWithJournalPriorities() throws {
        let dir = try TestEnv.tempDir("daemon-agent")
        let sandbox = TracerSandbox(tag: "daemon-agent")
        defer {
            sandbox.cleanup()
            _ = try? run(["/bin/rm", "-rf", dir])
        }
        let config = dir + "/agent.yaml"
        let err = dir + "/agent.journal"
        // A fresh install: no disk, no server.
        try "agent_id: agent-signals\nstate_dir: \(dir)/state\nlog_level: info\n".write(toFile: config, atomically: true, encoding: .utf8)
        let agent = try Self.startUnderJournal([TestEnv.binary("tidemark-agent"), "run", "--config", config, "--wait-for-config"],
                                               errPath: err, env: sandbox.env, logDir: dir)
        defer { agent.stop(signal: SIGKILL) }
        try waitFor("the agent says what is missing", timeoutSeconds: 30) { Self.read(err).contains("not replicating: no disk to replicate") }
        // A warning is priority 4, and the journal format has no time stamp of its own.
        let missing = Self.lines(Self.read(err), containing: "not replicating")
        #expect(missing.count == 1 && missing[0].hasPrefix("<4>not replicating: no disk to replicate"), "\(missing)")

        // SIGHUP after the disk and the server are configured: the reload reads the new file.
        try "agent_id: agent-signals\nstate_dir: \(dir)/state\nlog_level: info\ndisks: [/dev/tidemark-test-none]\nreplication:\n  server: 127.0.0.1:9443\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        try waitFor("the agent logs the reload", timeoutSeconds: 10) { Self.read(err).contains("reloaded \(config): disks and server are configured now") }
        let reloaded = Self.lines(Self.read(err), containing: "reloaded \(config)")
        #expect(reloaded.count == 1 && reloaded[0].hasPrefix("<6>reloaded \(config): disks and server are configured now"), "\(reloaded)")

        // SIGHUP with log_level error: the reload's own info line is no
        // longer logged. The next SIGHUP (a broken file, refused at priority
        // 3, naming file:line) shows the reload has run. (Signals that come
        // while no reload has started yet are merged into one; the pause
        // keeps the two apart.)
        let configured = "agent_id: agent-signals\nstate_dir: \(dir)/state\ndisks: [/dev/tidemark-test-none]\nreplication:\n  server: 127.0.0.1:9443\n"
        try (configured + "log_level: error\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        usleep(1_000_000)
        try "agent_id: agent-signals\nlog_level: loud\n".write(toFile: config, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        try waitFor("the agent refuses the broken file", timeoutSeconds: 10) { Self.read(err).contains("reload of \(config) refused") }
        let refused = Self.lines(Self.read(err), containing: "reload of \(config) refused")
        #expect(refused.count == 1 && refused[0].hasPrefix("<3>reload of \(config) refused") && refused[0].contains("agent.yaml:"), "\(refused)")
        #expect(Self.lines(Self.read(err), containing: "reloaded \(config)").count == 1, "an info line was logged at log_level error")

        // Back to log_level info: the reload says so again.
        try (configured + "log_level: info\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        try waitFor("the agent logs the reload again", timeoutSeconds: 10) { Self.lines(Self.read(err), containing: "reloaded \(config)").count == 2 }

        // SIGTERM: a graceful stop, status 0, the last line logged at priority 6.
        let status = agent.stop(signal: SIGTERM, timeoutSeconds: 20)
        #expect(status == 0, "the agent exited \(status) on SIGTERM: \(Self.read(err))")
        let log = Self.read(err)
        #expect(log.hasSuffix("<6>stopped\n"), "\(log)")
        // Under the journal every line starts with a priority.
        for line in log.split(separator: "\n") {
            #expect(line.range(of: #"^<[2-7]>"#, options: .regularExpression) != nil, "a line without priority: \(line)")
        }
    }

    /// The error a daemon exits with is priority 3 under the journal.
    @Test func startupErrorsAreErrorsInTheJournal() throws {
        let dir = try TestEnv.tempDir("daemon-fatal")
        let sandbox = TracerSandbox(tag: "daemon-fatal")
        defer {
            sandbox.cleanup()
            _ = try? run(["/bin/rm", "-rf", dir])
        }
        let config = dir + "/agent.yaml"
        let err = dir + "/agent.journal"
        try "agent_id: agent-signals\nlog_level: loud\n".write(toFile: config, atomically: true, encoding: .utf8)
        let agent = try Self.startUnderJournal([TestEnv.binary("tidemark-agent"), "run", "--config", config],
                                               errPath: err, env: sandbox.env, logDir: dir)
        defer { agent.stop(signal: SIGKILL) }
        try waitFor("the agent exits", timeoutSeconds: 30) { !agent.process.isRunning }
        #expect(agent.process.terminationStatus == 1)
        let log = Self.read(err)
        #expect(log.hasPrefix("<3>tidemark-agent: error: \(config):2"), "\(log)")
        for line in log.split(separator: "\n") { #expect(line.hasPrefix("<"), "a line without priority: \(line)") }
        let server = try Self.startUnderJournal([TestEnv.binary("tidemark-server"), "run", "--config", config],
                                                errPath: dir + "/server.journal", env: [:], logDir: dir)
        defer { server.stop(signal: SIGKILL) }
        try waitFor("the server exits", timeoutSeconds: 30) { !server.process.isRunning }
        #expect(server.process.terminationStatus == 1)
        #expect(Self.read(dir + "/server.journal").hasPrefix("<3>tidemark-server: error: \(config):"), "\(Self.read(dir + "/server.journal"))")
    }

    @Test func agentStopsGracefullyOnSIGINT() throws {
        let dir = try TestEnv.tempDir("daemon-agent-int")
        let sandbox = TracerSandbox(tag: "daemon-agent-int")
        defer {
            sandbox.cleanup()
            _ = try? run(["/bin/rm", "-rf", dir])
        }
        let config = dir + "/agent.yaml"
        try "agent_id: agent-signals\nstate_dir: \(dir)/state\n".write(toFile: config, atomically: true, encoding: .utf8)
        let agent = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "run", "--config", config, "--wait-for-config"],
                                          env: sandbox.env, logDir: dir)
        defer { agent.stop(signal: SIGKILL) }
        try waitFor("the agent waits for its configuration", timeoutSeconds: 30) { agent.stderr.contains("not replicating") }
        let status = agent.stop(signal: SIGINT, timeoutSeconds: 20)
        #expect(status == 0, "the agent exited \(status) on SIGINT: \(agent.stderr)")
        // Outside the journal: a time stamp, the program and the level in words.
        let stopped = Self.lines(agent.stderr, containing: "stopped")
        #expect(stopped.count == 1 && stopped[0].contains("tidemark-agent[\(agent.pid)] info: stopped"), "\(agent.stderr)")
    }

    @Test func serverReloadsOnSIGHUPAndStopsOnSIGTERMWithoutLoggingItsKey() throws {
        let dir = try TestEnv.tempDir("daemon-server")
        defer { _ = try? run(["/bin/rm", "-rf", dir]) }
        let tls = dir + "/tls"
        let certs = try run([FileManager.default.currentDirectoryPath + "/scripts/make-certs.sh", tls, "--agent", "agent-signals"])
        guard certs.ok else { throw TestFailure("make-certs.sh failed: \(certs.stderr)") }
        let config = dir + "/server.yaml"
        let base = """
            listen: 127.0.0.1:0
            tls:
              ca: \(tls)/ca.crt
              cert: \(tls)/server.crt
              key: \(tls)/server.key
            spool_dir: \(dir)/spool
            target:
              path: \(dir)/target
            log_level: debug

            """
        try base.write(toFile: config, atomically: true, encoding: .utf8)
        let server = try BackgroundProcess([TestEnv.binary("tidemark-server"), "run", "--config", config], env: [:], logDir: dir)
        defer { server.stop(signal: SIGKILL) }
        try server.waitForOutput("listening on")

        // SIGHUP: retention applies while serving; a changed spool limit waits for a restart.
        try (base + "retention: 48h\nspool_max_bytes: 3g\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(server.pid, SIGHUP)
        try waitFor("the server logs the reload", timeoutSeconds: 10) { server.stderr.contains("reloaded \(config)") }
        let reloaded = Self.lines(server.stderr, containing: "reloaded \(config)")
        #expect(reloaded.count == 1 && reloaded[0].contains("applied") && reloaded[0].contains("retention"), "\(reloaded)")
        #expect(reloaded.first?.contains("after a restart") == true && reloaded.first?.contains("spool_max_bytes") == true, "\(reloaded)")

        // A broken file: refused with file:line, the running configuration stays.
        try (base + "retention: forever\n").write(toFile: config, atomically: true, encoding: .utf8)
        kill(server.pid, SIGHUP)
        try waitFor("the server refuses the broken file", timeoutSeconds: 10) { server.stderr.contains("reload of \(config) refused") }
        let refused = Self.lines(server.stderr, containing: "reload of \(config) refused")
        #expect(refused.count == 1 && refused[0].contains(" error: ") && refused[0].contains("server.yaml:"), "\(refused)")

        // SIGTERM: a graceful stop, status 0.
        let status = server.stop(signal: SIGTERM, timeoutSeconds: 20)
        #expect(status == 0, "the server exited \(status) on SIGTERM: \(server.stderr)")

        // Nothing of the private key was ever logged or printed.
        let keyText = try String(contentsOfFile: tls + "/server.key", encoding: .utf8)
        let keyLines = keyText.split(separator: "\n").filter { !$0.hasPrefix("-----") && $0.count >= 16 }
        #expect(!keyLines.isEmpty)
        for line in keyLines {
            #expect(!server.stderr.contains(line) && !server.stdout.contains(line), "a line of the TLS private key was logged")
        }
    }

    /// Whether `pid` has a handler for `signal` (/proc/PID/status SigCgt).
    static func catches(_ pid: Int32, _ signal: Int32) -> Bool {
        let status = read("/proc/\(pid)/status")
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("SigCgt:") }),
              let mask = UInt64(line.dropFirst("SigCgt:".count).trimmingCharacters(in: .whitespaces), radix: 16) else { return false }
        return mask & (UInt64(1) << UInt64(signal - 1)) != 0
    }

    /// Holds `count` freeze records in `runDir` locked, as running agents
    /// making points would: an agent starting waits its grace
    /// (`FreezeGuardLimits.recordLockGraceMs`, 50 ms) on each before it
    /// leaves them alone, so its setup takes `count` × 50 ms. The records
    /// stay until the descriptors are closed and the files removed.
    static func holdFreezeRecords(_ runDir: String, count: Int) throws -> [Int32] {
        _ = try sh("mkdir -p '\(runDir)'")
        var fds: [Int32] = []
        for i in 0..<count {
            let path = runDir + "/frozen-held-\(i).mounts"
            let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else { throw TestFailure("holding \(path): errno \(errno)") }
            fds.append(fd)
        }
        return fds
    }

    /// A SIGHUP, or a SIGTERM, that comes while the agent is still setting
    /// up (here: waiting on freeze records other agents hold) is not lost
    /// and does not kill it: once the service group runs, the owed reload
    /// runs, or the stop is graceful.
    @Test func signalsDuringStartupAreReplayedOnceTheGroupRuns() throws {
        let dir = try TestEnv.tempDir("daemon-early")
        let sandbox = TracerSandbox(tag: "daemon-early")
        let held = try Self.holdFreezeRecords(sandbox.runDir, count: 60)   // 3 s of setup
        defer {
            for fd in held { close(fd) }
            sandbox.cleanup()
            _ = try? run(["/bin/rm", "-rf", dir])
        }
        let config = dir + "/agent.yaml"
        try "agent_id: agent-signals\nstate_dir: \(dir)/state\n".write(toFile: config, atomically: true, encoding: .utf8)

        // SIGHUP during the setup: the reload is owed and runs once the group does.
        let agent = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "run", "--config", config, "--wait-for-config"],
                                          env: sandbox.env, logDir: dir)
        defer { agent.stop(signal: SIGKILL) }
        try waitFor("the agent records signals", timeoutSeconds: 30) { Self.catches(agent.pid, SIGHUP) && Self.catches(agent.pid, SIGTERM) }
        kill(agent.pid, SIGHUP)
        usleep(200_000)
        #expect(kill(agent.pid, 0) == 0, "SIGHUP during the setup killed the agent: \(agent.stderr)")
        #expect(!agent.stderr.contains("not replicating"), "the setup was over before the signal: the test proves nothing")
        try waitFor("the owed reload", timeoutSeconds: 30) { agent.stderr.contains("reloaded \(config); still not replicating") }
        #expect(agent.stderr.contains("is held by a running agent"), "\(agent.stderr)")
        let status = agent.stop(signal: SIGTERM, timeoutSeconds: 20)
        #expect(status == 0, "the agent exited \(status) on SIGTERM: \(agent.stderr)")

        // SIGTERM during the setup: a graceful stop once the group runs.
        let second = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "run", "--config", config, "--wait-for-config"],
                                           env: sandbox.env, logDir: dir)
        defer { second.stop(signal: SIGKILL) }
        try waitFor("the agent records signals", timeoutSeconds: 30) { Self.catches(second.pid, SIGTERM) }
        kill(second.pid, SIGTERM)
        usleep(200_000)
        #expect(second.process.isRunning, "SIGTERM during the setup killed the agent at once: \(second.stderr)")
        #expect(!second.stderr.contains("not replicating"), "the setup was over before the signal: the test proves nothing")
        try waitFor("the agent stops", timeoutSeconds: 30) { !second.process.isRunning }
        #expect(second.process.terminationStatus == 0 && second.process.terminationReason == .exit, "\(second.stderr)")
        #expect(second.stderr.contains("signal \(SIGTERM) came while starting; stopping now") && second.stderr.contains("info: stopped"),
                "\(second.stderr)")
    }
}
