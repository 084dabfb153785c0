import Foundation
import Glibc
import ServiceLifecycle
import TidemarkConfigFiles
import TidemarkDaemon
import TidemarkSystem
import TidemarkTransport

public enum ServerCommands {
    /// `tidemark-server run`: serves until SIGTERM/SIGINT; SIGHUP re-reads
    /// the configuration and applies what can change while serving.
    ///
    /// A service group (TidemarkDaemon) owns the server's threads (as one
    /// service), the metrics sampler and the SIGHUP reload. SIGTERM or
    /// SIGINT stops them gracefully: the server closes its listener and
    /// connections, lets the uploader finish the batch it is storing and the
    /// spool's sync loop its last group commit, and returns once its threads
    /// have ended (bounded by `ServerLimits.stopThreadsWaitMs`).
    public static func run(configPath: String?, listen: String?, spoolDir: String?, targetPath: String?) async throws {
        // First of all: SIGTERM, SIGINT or SIGHUP during the setup below is
        // recorded, and replayed once the service group runs (DaemonSignals).
        DaemonSignals.prepare()
        let overrides = Overrides(listen: listen, spoolDir: spoolDir, targetPath: targetPath)
        let c = try loadConfig(configPath, overrides)
        setLogLevel(c.logLevel)
        let server = try ProcessServer(options: options(c))
        let running = RunningServerConfig(c)
        let services: [any Service] = [
            ThreadService(name: "process-server", body: { server.run() }, stop: { server.stop() }),
            PeriodicService(intervalMs: ServerLimits.metricsSampleIntervalMs) { server.sampleMetrics() },
            ReloadService { running.update { reload(server, $0, configPath, overrides) } },
        ]
        let line = "tidemark-server \(c.serverID) listening on \(c.listenHost):\(server.port)\n"
        _ = line.withCString { Glibc.write(1, $0, strlen($0)) }
        try await DaemonSignals.group(services, logger: Log.logger("tidemark.server.lifecycle")).run()
    }

    /// The configuration the server runs with, replaced by each reload.
    /// Thread-safe (a lock): the reload service is its only writer.
    final class RunningServerConfig: @unchecked Sendable {
        private let lock = NSLock()
        private var current: ServerConfig
        init(_ c: ServerConfig) { current = c }
        func update(_ body: (ServerConfig) -> ServerConfig) {
            lock.lock()
            defer { lock.unlock() }
            current = body(current)
        }
    }

    /// Command-line values, which win over the file on every (re)load.
    struct Overrides {
        var listen: String?
        var spoolDir: String?
        var targetPath: String?
    }

    static func loadConfig(_ configPath: String?, _ o: Overrides) throws -> ServerConfig {
        var c = try configPath.map { try ServerConfig.load(path: $0) } ?? ServerConfig.loadDefault()
        if let listen = o.listen {
            do {
                (c.listenHost, c.listenPort) = try ServerConfig.parseListenEndpoint(listen)
            } catch let e as InvalidValue {
                throw TidemarkError(.invalidArgument, "--listen '\(listen)': \(e.message)", hint: e.hint)
            }
        }
        if let spoolDir = o.spoolDir { c.spoolDir = spoolDir }
        if let targetPath = o.targetPath { c.targetPath = targetPath }
        return c
    }

    static func options(_ c: ServerConfig) -> ProcessServer.Options {
        .init(serverID: c.serverID, listenHost: c.listenHost, listenPort: c.listenPort,
              tls: TLSFiles(ca: c.tlsCAPath, cert: c.tlsCertPath, key: c.tlsKeyPath, keyOrigin: c.origins.describe("tls.key")),
              spoolDir: c.spoolDir, spoolMaxBytes: c.spoolMaxBytes, targetPath: c.targetPath,
              maxConnections: c.maxConnections, retentionSeconds: c.retentionSeconds,
              pruneIntervalSeconds: c.pruneIntervalSeconds, uploadMemoryBytes: Int(c.uploadMemoryBytes),
              bandwidthLimitBytesPerSecond: c.bandwidthLimitBytesPerSecond)
    }

    static func setLogLevel(_ level: TidemarkConfigFiles.LogLevel) {
        switch level {
        case .debug: Log.setLevel(.debug)
        case .info: Log.setLevel(.info)
        case .warning: Log.setLevel(.warning)
        case .error: Log.setLevel(.error)
        }
    }

    /// The keys whose change needs a restart, changed between two configurations.
    static func restartKeys(_ a: ServerConfig, _ b: ServerConfig) -> [String] {
        var keys: [String] = []
        if a.serverID != b.serverID { keys.append("server_id") }
        if a.listenHost != b.listenHost || a.listenPort != b.listenPort { keys.append("listen") }
        if a.spoolDir != b.spoolDir { keys.append("spool_dir") }
        if a.spoolMaxBytes != b.spoolMaxBytes { keys.append("spool_max_bytes") }
        if a.uploadMemoryBytes != b.uploadMemoryBytes { keys.append("upload_memory_bytes") }
        if a.targetType != b.targetType || a.targetPath != b.targetPath { keys.append("target") }
        if a.bandwidthLimitBytesPerSecond != b.bandwidthLimitBytesPerSecond { keys.append("bandwidth_limit") }
        return keys
    }

    /// SIGHUP: a configuration that does not load (or TLS files that do not)
    /// changes nothing and is reported; otherwise the reloadable keys apply
    /// and the log says which changed keys wait for a restart.
    static func reload(_ server: ProcessServer, _ current: ServerConfig, _ configPath: String?, _ o: Overrides) -> ServerConfig {
        let file = configPath ?? ServerConfig.defaultPath
        let new: ServerConfig
        do {
            new = try loadConfig(configPath, o)
        } catch {
            Log.error("reload of \(file) refused, the running configuration stays: \(error)")
            return current
        }
        let applied: [String]
        do {
            applied = try server.reload(options(new))
        } catch {
            Log.error("reload of \(file) refused, the running configuration stays: \(error)")
            return current
        }
        var changed = applied
        if new.logLevel != current.logLevel {
            setLogLevel(new.logLevel)
            changed.append("log_level")
        }
        let pending = restartKeys(current, new)
        var text = "reloaded \(file): applied \(changed.joined(separator: ", "))"
        if !pending.isEmpty {
            text += "; changed but applied only after a restart (systemctl restart tidemark-server): \(pending.joined(separator: ", "))"
        }
        Log.info(text)
        // What runs now: the old configuration with the keys that applied
        // (a key added later counts as restart-only until it is listed here).
        var running = current
        running.tlsCAPath = new.tlsCAPath
        running.tlsCertPath = new.tlsCertPath
        running.tlsKeyPath = new.tlsKeyPath
        running.retentionSeconds = new.retentionSeconds
        running.pruneIntervalSeconds = new.pruneIntervalSeconds
        running.maxConnections = new.maxConnections
        running.logLevel = new.logLevel
        return running
    }
}
