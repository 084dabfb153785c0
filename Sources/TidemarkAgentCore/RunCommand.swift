import Foundation
import Glibc
import ServiceLifecycle
import TidemarkConfigFiles
import TidemarkDaemon
import TidemarkSurface
import TidemarkSystem
import TidemarkTracking
import TidemarkTransport
import TidemarkWire

extension AgentCommands {
    /// `run`: continuous replication of every configured disk to the process
    /// server, recovery points on the policy's cadence and on request
    /// (`tidemarkctl point create`, through the control socket).
    ///
    /// A service group (TidemarkDaemon) owns the long-running parts: the
    /// control socket, the replication of the disks (their threads), the
    /// metrics sampler and the SIGHUP reload. SIGTERM or SIGINT stops them
    /// gracefully, in the reverse order of their start — the point scheduler
    /// first, then replication, the sampler, the reload and the control
    /// socket — and then the shutdown seal is armed, as before.
    /// `testSwitches` are those main read from the environment at start.
    public static func run(configPath: String?, disks: [String], stateDir: String?, server: String?,
                           waitForConfig: Bool = false, testSwitches: TestSwitches) async throws {
        // First of all: SIGTERM, SIGINT or SIGHUP during the setup below is
        // recorded, and replayed once the service group runs (DaemonSignals).
        DaemonSignals.prepare()
        AgentLimitRelations.check()
        // Then: a filesystem a dead agent left frozen is thawed (its
        // freeze record in the run directory says which), whatever else
        // fails after this.
        thawLeftovers()
        let file = configPath ?? AgentConfig.defaultPath
        let config = try loadRunConfig(configPath, disks: disks, stateDir: stateDir, server: server)
        Log.setLevel(config.logLevel.agentLevel)
        let lifecycleLogger = Log.logger("tidemark.agent.lifecycle")
        if waitForConfig, let missing = missingForRun(config, file: file) {
            // A fresh install: the service runs, says what is missing, and
            // waits; SIGHUP re-reads the file and says whether a restart
            // would now start replication.
            Log.warning("not replicating: \(missing.message); \(missing.hint ?? "")")
            let reload = ReloadService {
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
            try await DaemonSignals.group([reload], logger: lifecycleLogger).run()
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
            hookTimeoutMs: config.hookTimeoutSeconds * 1000, ioTimeoutMs: config.ioTimeoutMs)
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
        // Sealers, payload buffers and the segment budget of every disk (HostShare.swift).
        let share = try HostShare(budgetBytes: config.hostInflightBytesMax, payloadBytes: Int(config.segmentSizeBytes),
                                  workers: max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))), key: key, compressionLevel: DiskReplicator.sealerLevel(config.compressionLevel))
        for session in sessions {
            let d = session.device.path
            Log.info("\(d): \(session.startNote); state \(session.hrl.header.state)")
            // The disk's own hooks where `disks:` gives them, else the policy's.
            let listed = config.disks.first { $0 == d || realpathString($0) == realpathString(d) } ?? d
            let hooks = config.hooks(for: listed)
            var own = settings
            own.preFreezeHook = hooks.preFreeze
            own.postThawHook = hooks.postThaw
            own.hookTimeoutMs = hooks.timeoutSeconds * 1000
            let r = DiskReplicator(session: session, settings: own, share: share)
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
        // SIGHUP (systemctl reload): log_level applies at once; every other
        // changed key is named as waiting for a restart.
        let running = RunningConfig(config)
        let reload = ReloadService {
            do {
                let new = try loadRunConfig(configPath, disks: disks, stateDir: stateDir, server: server)
                Log.info(running.apply(new, file: file))
            } catch {
                Log.error("reload of \(file) refused, the running configuration stays: \(error)")
            }
        }
        // The policy's cadence: one point of every disk (a machine point
        // when there are several) each interval (PointCoordinator.swift).
        let scheduler = PointScheduler(disks: order, crashIntervalSeconds: settings.crashIntervalSeconds,
                                       appIntervalSeconds: settings.appIntervalSeconds)
        // A graceful shutdown stops the services in reverse order: the
        // scheduler first, then replication, then the control socket.
        let services: [any Service] = [
            StartStopService(start: { control.start() }, stop: { control.stop() }),
            reload,
            PeriodicService(intervalMs: ReplicationLimits.metricsSampleIntervalMs) {
                for r in order { r.metrics.observe(r.status()) }
            },
            ReplicationService(order),
            StartStopService(start: { scheduler.start() }, stop: { scheduler.stop() }),
        ]
        println("replicating \(order.count) disk(s) to \(host):\(config.serverPort) as \(config.agentID); SIGTERM or Ctrl-C stops the agent, tracking stays pinned")
        try await DaemonSignals.group(services, logger: lifecycleLogger).run()
        // A point of a control request runs on its client's thread: let it
        // thaw and end before the agent does (the bound covers the freeze).
        ActivePoints.shared.waitIdle(timeoutMs: settings.freezeTimeoutMs + 1_000)
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
        check("disks", a.disks != b.disks || a.diskHooks != b.diskHooks)
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
        check("replication.host_inflight_bytes", a.hostInflightBytesMax != b.hostInflightBytesMax)
        check("replication.io_timeout_ms", a.ioTimeoutMs != b.ioTimeoutMs)
        check("policy.crash_consistent_interval", a.crashConsistentIntervalSeconds != b.crashConsistentIntervalSeconds)
        check("policy.app_consistent_interval", a.appConsistentIntervalSeconds != b.appConsistentIntervalSeconds)
        check("policy.freeze_timeout_ms", a.freezeTimeoutMs != b.freezeTimeoutMs)
        check("policy.pre_freeze_hook", a.preFreezeHook != b.preFreezeHook)
        check("policy.post_thaw_hook", a.postThawHook != b.postThawHook)
        check("policy.hook_timeout", a.hookTimeoutSeconds != b.hookTimeoutSeconds)
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

    /// The answer to one control-socket request (ControlSocket.swift). A
    /// point order waits here, on the client's thread, until the point is
    /// committed or refused.
    static func handleControl(_ request: ControlRequest, _ table: [String: DiskReplicator]) -> ControlReply {
        switch request {
        case .status:
            // Every replicator once (the table also names each by its real path and disk id).
            var seen = Set<ObjectIdentifier>()
            var disks: [DiskStatus] = []
            for r in table.values.sorted(by: { $0.diskID < $1.diskID }) where seen.insert(ObjectIdentifier(r)).inserted {
                disks.append(r.status())
            }
            return .status(AgentStatus(rssBytes: residentBytes(), disks: disks, hostInflight: table.values.first?.share.status))
        case .createPoint(let disk, let appConsistent):
            // With a disk: a point of that disk. Without: a machine point of
            // every disk (one instant).
            let members: [DiskReplicator]
            if let disk {
                guard let r = table[disk] ?? realpathString(disk).flatMap({ table[$0] }) else {
                    return .failure("disk '\(disk)' is not replicated by this agent")
                }
                members = [r]
            } else {
                var seen = Set<ObjectIdentifier>()
                members = table.values.sorted { $0.diskID < $1.diskID }.filter { seen.insert(ObjectIdentifier($0)).inserted }
                guard !members.isEmpty else { return .failure("this agent replicates no disk") }
            }
            do {
                let p = try PointCoordinator(disks: members, appConsistent: appConsistent).run()
                return .point(CreatedPoint(
                    id: p.id, scope: p.isMachinePoint ? "machine" : "disk",
                    diskID: p.isMachinePoint ? nil : p.disks[0].diskID, pointClass: p.pointClass.rawValue,
                    sequence: p.isMachinePoint ? nil : p.disks[0].sequence, freezeMs: p.freezeMs,
                    disks: p.disks.map { CreatedPointDisk(disk: $0.disk, diskID: $0.diskID, pointClass: $0.pointClass.rawValue, sequence: $0.sequence) }))
            } catch {
                return .failure("\(error)")
            }
        }
    }
}

/// The replication of every disk as one service: `run()` starts each
/// replicator on a thread of its own and returns when all have returned. A
/// graceful shutdown stops them all at once (each finishes its current
/// step, as on SIGTERM before); when one fails, the others are stopped and
/// the service throws its error, which ends the agent (no shutdown seal is
/// armed then: the next start resyncs what it must).
struct ReplicationService: Service {
    let replicators: [DiskReplicator]

    init(_ replicators: [DiskReplicator]) { self.replicators = replicators }

    func run() async throws {
        let all = replicators
        let stopAll: @Sendable () -> Void = {
            StopSignal.request()
            for r in all { r.stop() }
        }
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for r in all {
                    group.addTask {
                        do {
                            try await ThreadService.onThread("replicate \(r.session.device.path)") { try r.run() }
                        } catch {
                            Log.error("\(r.session.device.path): replication stopped: \(error)")
                            for other in all { other.stop() }
                            throw TidemarkError(.state, "replication stopped: \(r.session.device.path): \(error)")
                        }
                    }
                }
                // Every replicator ends; the first failure is the agent's.
                var first: Error?
                while let result = await group.nextResult() {
                    if case .failure(let e) = result, first == nil { first = e }
                }
                if let first { throw first }
            }
        } onCancelOrGracefulShutdown: {
            stopAll()
        }
    }
}

/// The configuration `run` works with, changed by reloads (only
/// `log_level` applies while running). Thread-safe (a lock): the reload
/// service is its only writer.
final class RunningConfig: @unchecked Sendable {
    private let lock = NSLock()
    private var current: AgentConfig

    init(_ config: AgentConfig) { current = config }

    /// Applies what may change while running and returns the line to log:
    /// what applied, and which changed keys wait for a restart.
    func apply(_ new: AgentConfig, file: String) -> String {
        lock.lock()
        defer { lock.unlock() }
        var text = "reloaded \(file)"
        if new.logLevel != current.logLevel {
            Log.setLevel(new.logLevel.agentLevel)
            text += ": applied log_level"
        } else {
            text += ": nothing that applies while running changed"
        }
        let pending = AgentCommands.restartKeys(current, new)
        if !pending.isEmpty {
            text += "; changed but applied only after a restart (systemctl restart tidemark-agent; tracking stays pinned): \(pending.joined(separator: ", "))"
        }
        current.logLevel = new.logLevel
        return text
    }
}
