import Foundation
import Glibc
import TidemarkConfig
import TidemarkSystem

public enum ServerCommands {
    /// `tidemark-server run`: serves until SIGTERM/SIGINT.
    public static func run(configPath: String?, listen: String?, spoolDir: String?, targetPath: String?) throws {
        var c = try configPath.map { try ServerConfig.load(path: $0) } ?? ServerConfig.loadDefault()
        switch c.logLevel {
        case .debug: Log.setLevel(.debug)
        case .info: Log.setLevel(.info)
        case .warning: Log.setLevel(.warning)
        case .error: Log.setLevel(.error)
        }
        if let listen {
            do {
                (c.listenHost, c.listenPort) = try ServerConfig.parseListenEndpoint(listen)
            } catch let e as InvalidValue {
                throw TidemarkError(.invalidArgument, "--listen '\(listen)': \(e.message)", hint: e.hint)
            }
        }
        if let spoolDir { c.spoolDir = spoolDir }
        if let targetPath { c.targetPath = targetPath }
        let server = try ProcessServer(options: .init(
            serverID: c.serverID, listenHost: c.listenHost, listenPort: c.listenPort,
            tls: TLSFiles(ca: c.tlsCAPath, cert: c.tlsCertPath, key: c.tlsKeyPath),
            spoolDir: c.spoolDir, spoolMaxBytes: c.spoolMaxBytes, targetPath: c.targetPath,
            maxConnections: c.maxConnections, retentionSeconds: c.retentionSeconds,
            pruneIntervalSeconds: c.pruneIntervalSeconds))
        StopSignal.install()
        let watcher = Thread {
            while !StopSignal.isRequested { StopSignal.sleep(milliseconds: 100) }
            server.stop()
        }
        watcher.start()
        let line = "tidemark-server \(c.serverID) listening on \(c.listenHost):\(server.port)\n"
        _ = line.withCString { Glibc.write(1, $0, strlen($0)) }
        server.run()
    }
}
