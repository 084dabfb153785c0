import Foundation
import Glibc
import TidemarkConfig
import TidemarkSystem
import TidemarkTracking
import TidemarkWire

extension AgentCommands {
    /// `run`: continuous replication of every configured disk to the process
    /// server, recovery points on the policy's cadence and on request
    /// (`tidemarkctl point create`, through the control socket).
    public static func run(configPath: String?, disks: [String], stateDir: String?, server: String?) throws {
        var config = try configPath.map { try AgentConfig.load(path: $0) } ?? AgentConfig.loadDefault()
        Log.setLevel(config.logLevel.agentLevel)
        if !disks.isEmpty { config.disks = disks }
        if let stateDir { config.stateDir = stateDir }
        if let server {
            do {
                (config.serverHost, config.serverPort) = try AgentConfig.parseServerEndpoint(server)
            } catch let e as InvalidValue {
                throw TidemarkError(.invalidArgument, "--server '\(server)': \(e.message)", hint: e.hint)
            }
        }
        let file = configPath ?? AgentConfig.defaultPath
        guard !config.disks.isEmpty else {
            throw TidemarkError(.invalidArgument, "no disk to replicate", hint: "pass --disk /dev/... or list disks under 'disks:' in \(file)")
        }
        guard let host = config.serverHost else {
            throw TidemarkError(.invalidArgument, "no process server configured",
                                hint: "set replication.server in \(file) (e.g. 'server: 10.0.0.5:9443') or pass --server")
        }
        for d in config.disks { _ = try BlockDeviceInfo.inspect(d) }
        let key = try ReplicationKey.load(path: config.replicationKeyPath)
        let tls = TLSFiles(ca: config.tlsCAPath, cert: config.tlsCertPath, key: config.tlsKeyPath)
        _ = try TLSContext.client(tls)  // certificate problems are reported now, not at the first connect
        let settings = ReplicationSettings(
            agentID: config.agentID, serverHost: host, serverPort: config.serverPort,
            serverName: config.serverName ?? host, tls: tls, key: key,
            compressionLevel: config.compressionLevel, segmentSizeBytes: config.segmentSizeBytes,
            inflightBytesMax: config.inflightBytesMax, bandwidthLimitBytesPerSecond: config.bandwidthLimitBytesPerSecond,
            drainIntervalMs: config.drainIntervalMs, freezeTimeoutMs: config.freezeTimeoutMs,
            crashIntervalSeconds: config.crashConsistentIntervalSeconds,
            appIntervalSeconds: config.appConsistentIntervalSeconds,
            preFreezeHook: config.preFreezeHook, postThawHook: config.postThawHook)
        StopSignal.install()
        var replicators: [String: DiskReplicator] = [:]
        var ordered: [DiskReplicator] = []
        for d in config.disks {
            let session = try DiskSession.open(devicePath: d, stateDir: config.stateDir, chunkSizeBytes: config.chunkSizeBytes)
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
        Log.info("stopped; tracking stays pinned")
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
