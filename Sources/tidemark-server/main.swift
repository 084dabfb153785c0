import ArgumentParser
import Glibc
import TidemarkServerCore
import TidemarkSystem

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve agents: TLS ingest, durable spool, upload to target storage (config: /etc/tidemark/server.yaml).")
    @Option(help: "Configuration file (default /etc/tidemark/server.yaml, when it exists).")
    var config: String?
    @Option(help: "host:port to listen on (overrides listen).")
    var listen: String?
    @Option(help: "Spool directory (overrides spool_dir).")
    var spoolDir: String?
    @Option(help: "Local target directory (overrides target.path).")
    var target: String?

    func run() throws {
        Log.program = "tidemark-server"
        do {
            try ServerCommands.run(configPath: config, listen: listen, spoolDir: spoolDir, targetPath: target)
        } catch {
            let text = "tidemark-server: error: \(error)\n"
            _ = text.withCString { Glibc.write(2, $0, strlen($0)) }
            throw ExitCode(1)
        }
    }
}

struct Server: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-server",
        abstract: "Tidemark process server.",
        version: tidemarkVersion,
        subcommands: [Run.self])
}

Server.main()
