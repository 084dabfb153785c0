import ArgumentParser
import Glibc
import TidemarkServerCore
import TidemarkSystem

struct Run: AsyncParsableCommand {
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

    func run() async throws {
        do {
            try await ServerCommands.run(configPath: config, listen: listen, spoolDir: spoolDir, targetPath: target)
        } catch {
            Log.writeFatal("tidemark-server: error: \(error)\n")
            throw ExitCode(1)
        }
    }
}

@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
struct Server: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-server",
        abstract: "Tidemark process server.",
        version: tidemarkVersion,
        subcommands: [Run.self])
}

/// The async entry point: inside an async function the compiler picks
/// AsyncParsableCommand's `main()`, whose `run()` may await (at top level it
/// picks ParsableCommand's, which refuses an async root).
@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
func runMain() async { await Server.main() }

Log.bootstrap(program: "tidemark-server")
await runMain()
