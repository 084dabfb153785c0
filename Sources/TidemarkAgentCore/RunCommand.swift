import Foundation
import Glibc
import TidemarkConfig
import TidemarkSystem
import TidemarkTracking
import TidemarkTransport
import TidemarkWire

extension AgentCommands {
    /// `run`: continuous replication of every configured disk to the process
    /// server, recovery points on the policy's cadence and on request
    /// (`tidemarkctl point create`, through the control socket).
    /// `testSwitches` are those main read from the environment at start.
    public static func run(configPath: String?, disks: [String], stateDir: String?, server: String?,
                           waitForConfig: Bool = false, testSwitches: TestSwitches) throws {
        // First of all: a filesystem a dead agent left frozen is thawed (its
        // freeze record in the run directory says which), whatever else
        // fails after this.
        thawLeftovers()
        let file = configPath ?? AgentConfig.defaultPath
        let config = try loadRunConfig(configPath, disks: disks, stateDir: stateDir, server: server)
        Log.setLevel(config.logLevel.agentLevel)
        if waitForConfig, let missing = missingForRun(config, file: file) {
            // A fresh install: the service runs, says what is missing, and
            // waits; SIGHUP re-reads the file and says whether a restart
            // would now start replication.
            Log.warning("not replicating: \(missing.message); \(missing.hint ?? "")")
            StopSignal.install()
            ReloadSignal.install()
            while !StopSignal.isRequested {
                StopSignal.sleep(milliseconds: 200)
                guard ReloadSignal.takeRequest() else { continue }
                do {
                    let again = try loadRunConfig(configPath, disks: disks, stateDir: stateDir, server: server)
                    Log.setLevel(again.logLevel.agentLevel)
                    if let still = missingForRun(again, file: file) {
                        Log.warning("reloaded \(file); still not replicating: \(still.message); \(still.hint ?? "")")
                    } else {
                        Log.info("reloaded \(file): disks and server are configured now; restart the agent to start replicating (systemctl restart tidemark-agent)")
                    }
                } catch {
                    Log.error("reload of \(file) refused: \(error)")
                }
            }
            Log.info("stopped")
            return
        }
        if let missing = missingForRun(config, file: file) { throw missing }
        guard let host = config.serverHost else { return }
        // The secret files before anything else reads them: a regular file
        // (a FIFO would block the read forever), of mode 0600 or 0400.
        try SecretFile.check(config.replicationKeyPath, what: "the replication key",
                             origin: config.origins.describe("replication.replication_key"), followSymlink: false)
        let tls = TLSFiles(ca: config.tlsCAPath, cert: config.tlsCertPath, key: config.tlsKeyPath,
                           keyOrigin: config.origins.describe("replication.key"))
        try SecretFile.check(tls.keyPath, what: "the TLS private key", origin: tls.keyOrigin)
        for d in config.disks { _ = try BlockDeviceInfo.inspect(d) }
        let key = try ReplicationKey.load(path: config.replicationKeyPath)
        _ = try TLSContext.client(tls)  // certificate problems are reported now, not at the first connect
        let settings = ReplicationSettings(
            agentID: config.agentID, serverHost: host, serverPort: config.serverPort,
            serverName: config.serverName ?? host, tls: tls, key: key,
            compressionLevel: config.compressionLevel, segmentSizeBytes: config.segmentSizeBytes,
            inflightBytesMax: config.inflightBytesMax, bandwidthLimitBytesPerSecond: config.bandwidthLimitBytesPerSecond,
            drainIntervalMs: config.drainIntervalMs, freezeTimeoutMs: config.freezeTimeoutMs,
            crashIntervalSeconds: config.crashConsistentIntervalSeconds,
            appIntervalSeconds: config.appConsistentIntervalSeconds,
            preFreezeHook: config.preFreezeHook, postThawHook: config.postThawHook,
            ioTimeoutMs: config.ioTimeoutMs)
        StopSignal.install()
        // Started once, reused by every point of every disk (FreezeGuard.swift);
        // a failure here is retried at the first point, which is refused
        // without it.
        do { try FreezeWatchdogClient.shared.start() } catch {
            Log.warning("the freeze watchdog could not be started: \(error); points are refused until it can")
        }
        defer { FreezeWatchdogClient.shared.stop() }
        var replicators: [String: DiskReplicator] = [:]
        var ordered: [DiskReplicator] = []
        let sessions = try openSessionsEarly(config.disks, stateDir: config.stateDir, chunkSizeBytes: config.chunkSizeBytes,
                                             testSwitches: testSwitches)
        guard !sessions.isEmpty else { return }
        for session in sessions {
            let d = session.device.path
            Log.info("\(d): \(session.startNote); state \(session.hrl.header.state)")
            let r = DiskReplicator(session: session, settings: settings)
            replicators[session.device.path] = r
            if let real = realpathString(d) { replicators[real] = r }
            replicators[r.diskID] = r
            ordered.append(r)
        }
        let table = replicators
        let order = ordered
        let control = try ControlServer(path: config.controlSocketPath) { request in
            handleControl(request, table)
        }
        control.start()
        defer { control.stop() }
        println("replicating \(order.count) disk(s) to \(host):\(config.serverPort) as \(config.agentID); SIGTERM or Ctrl-C stops the agent, tracking stays pinned")
        // SIGHUP (systemctl reload): log_level applies at once; every other
        // changed key is named as waiting for a restart.
        ReloadSignal.install()
        let started = config
        let reloader = Thread {
            var current = started
            while !StopSignal.isRequested {
                StopSignal.sleep(milliseconds: 200)
                guard ReloadSignal.takeRequest() else { continue }
                do {
                    let new = try loadRunConfig(configPath, disks: disks, stateDir: stateDir, server: server)
                    var text = "reloaded \(file)"
                    if new.logLevel != current.logLevel {
                        Log.setLevel(new.logLevel.agentLevel)
                        text += ": applied log_level"
                    } else {
                        text += ": nothing that applies while running changed"
                    }
                    let pending = restartKeys(current, new)
                    if !pending.isEmpty {
                        text += "; changed but applied only after a restart (systemctl restart tidemark-agent; tracking stays pinned): \(pending.joined(separator: ", "))"
                    }
                    Log.info(text)
                    current.logLevel = new.logLevel
                } catch {
                    Log.error("reload of \(file) refused, the running configuration stays: \(error)")
                }
            }
        }
        reloader.start()
        let failures = FailureBox()
        let threads = order.map { r in
            Thread {
                do { try r.run() } catch {
                    Log.error("\(r.session.device.path): replication stopped: \(error)")
                    failures.record("\(r.session.device.path): \(error)")
                    for other in order { other.stop() }
                }
                failures.finished()
            }
        }
        for t in threads { t.start() }
        failures.waitAll(order.count)
        if let f = failures.first {
            throw TidemarkError(.state, "replication stopped: \(f)")
        }
        armShutdownSeal(order.map(\.session), stateDir: config.stateDir, testSwitches: testSwitches)
        Log.info("stopped; tracking stays pinned")
    }

    /// The configuration of `run`: the file (or the defaults), then the command line.
    static func loadRunConfig(_ configPath: String?, disks: [String], stateDir: String?, server: String?) throws -> AgentConfig {
        var config = try configPath.map { try AgentConfig.load(path: $0) } ?? AgentConfig.loadDefault()
        if !disks.isEmpty { config.disks = disks }
        if let stateDir { config.stateDir = stateDir }
        if let server {
            do {
                (config.serverHost, config.serverPort) = try AgentConfig.parseServerEndpoint(server)
            } catch let e as InvalidValue {
                throw TidemarkError(.invalidArgument, "--server '\(server)': \(e.message)", hint: e.hint)
            }
        }
        return config
    }

    /// The keys that differ between two configurations and that `run` applies
    /// only at start.
    static func restartKeys(_ a: AgentConfig, _ b: AgentConfig) -> [String] {
        var keys: [String] = []
        func check(_ name: String, _ differ: Bool) { if differ { keys.append(name) } }
        check("agent_id", a.agentID != b.agentID)
        check("state_dir", a.stateDir != b.stateDir)
        check("chunk_size", a.chunkSizeBytes != b.chunkSizeBytes)
        check("disks", a.disks != b.disks)
        check("drain_interval_ms", a.drainIntervalMs != b.drainIntervalMs)
        check("replication.server", a.serverHost != b.serverHost || a.serverPort != b.serverPort)
        check("replication.server_name", a.serverName != b.serverName)
        check("replication.ca", a.tlsCAPath != b.tlsCAPath)
        check("replication.cert", a.tlsCertPath != b.tlsCertPath)
        check("replication.key", a.tlsKeyPath != b.tlsKeyPath)
        check("replication.replication_key", a.replicationKeyPath != b.replicationKeyPath)
        check("replication.compression_level", a.compressionLevel != b.compressionLevel)
        check("replication.bandwidth_limit", a.bandwidthLimitBytesPerSecond != b.bandwidthLimitBytesPerSecond)
        check("replication.segment_size", a.segmentSizeBytes != b.segmentSizeBytes)
        check("replication.inflight_bytes", a.inflightBytesMax != b.inflightBytesMax)
        check("replication.io_timeout_ms", a.ioTimeoutMs != b.ioTimeoutMs)
        check("policy.crash_consistent_interval", a.crashConsistentIntervalSeconds != b.crashConsistentIntervalSeconds)
        check("policy.app_consistent_interval", a.appConsistentIntervalSeconds != b.appConsistentIntervalSeconds)
        check("policy.freeze_timeout_ms", a.freezeTimeoutMs != b.freezeTimeoutMs)
        check("policy.pre_freeze_hook", a.preFreezeHook != b.preFreezeHook)
        check("policy.post_thaw_hook", a.postThawHook != b.postThawHook)
        check("control_socket", a.controlSocketPath != b.controlSocketPath)
        return keys
    }

    /// What `run` lacks to replicate anything, if anything.
    static func missingForRun(_ config: AgentConfig, file: String) -> TidemarkError? {
        if config.disks.isEmpty {
            return TidemarkError(.invalidArgument, "no disk to replicate", hint: "pass --disk /dev/... or list disks under 'disks:' in \(file)")
        }
        if config.serverHost == nil {
            return TidemarkError(.invalidArgument, "no process server configured",
                                 hint: "set replication.server in \(file) (e.g. 'server: 10.0.0.5:9443') or pass --server")
        }
        return nil
    }

    static func handleControl(_ request: [String: String], _ table: [String: DiskReplicator]) -> [String: Any] {
        if request["op"] == "status" {
            // Every replicator once (the table also names each by its real path and disk id).
            var seen = Set<ObjectIdentifier>()
            var disks: [[String: Any]] = []
            for r in table.values.sorted(by: { $0.diskID < $1.diskID }) where seen.insert(ObjectIdentifier(r)).inserted {
                disks.append(r.status())
            }
            return ["ok": true, "rss_bytes": residentBytes(), "disks": disks]
        }
        guard request["op"] == "create-point" else {
            return ["ok": false, "error": "unknown request '\(request["op"] ?? "")' (known: create-point, status)"]
        }
        guard let disk = request["disk"], let r = table[disk] ?? realpathString(disk).flatMap({ table[$0] }) else {
            return ["ok": false, "error": "disk '\(request["disk"] ?? "")' is not replicated by this agent"]
        }
        let done = DispatchSemaphore(value: 0)
        let result = ResultBox()
        r.order(PointOrder(appConsistent: request["app_consistent"] == "true") { outcome in
            result.set(outcome)
            done.signal()
        })
        done.wait()
        switch result.get() {
        case .success(let p):
            return ["ok": true, "id": p.id, "disk_id": p.diskID, "class": p.pointClass.rawValue,
                    "sequence": String(p.sequence), "freeze_ms": String(format: "%.1f", p.freezeMs)]
        case .failure(let e):
            return ["ok": false, "error": e.description]
        case nil:
            return ["ok": false, "error": "no result"]
        }
    }
}

final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Result<PointCreated, TidemarkError>?
    func set(_ v: Result<PointCreated, TidemarkError>) { lock.lock(); value = v; lock.unlock() }
    func get() -> Result<PointCreated, TidemarkError>? { lock.lock(); defer { lock.unlock() }; return value }
}

final class FailureBox: @unchecked Sendable {
    private let cond = NSCondition()
    private var failures: [String] = []
    private var done = 0
    func record(_ s: String) { cond.lock(); failures.append(s); cond.unlock() }
    func finished() { cond.lock(); done += 1; cond.broadcast(); cond.unlock() }
    func waitAll(_ n: Int) { cond.lock(); while done < n { cond.wait() }; cond.unlock() }
    var first: String? { cond.lock(); defer { cond.unlock() }; return failures.first }
}
