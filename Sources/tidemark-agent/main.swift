import ArgumentParser
import Glibc
import TidemarkAgentCore
import TidemarkSystem

struct DiskOptions: ParsableArguments {
    @Option(name: .customLong("disk"), help: "A block device to work on (repeatable).")
    var disks: [String] = []

    @Option(help: "Directory of the .hrl state files (default /var/lib/tidemark).")
    var stateDir: String?

    @Option(help: "Configuration file (default /etc/tidemark/agent.yaml, when it exists).")
    var config: String?
}

struct Track: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Track writes to disks until SIGTERM/SIGINT; tracking stays pinned after exit.")
    @OptionGroup var common: DiskOptions
    @Option(help: "Chunk size, a power of two from 4k to 1m (default 64k).")
    var chunkSize: String?

    func run() throws {
        try runReportingErrors {
            try AgentCommands.track(withTestSwitches(AgentSettings.resolve(configPath: common.config, disks: common.disks,
                                                                           stateDir: common.stateDir, chunkSize: chunkSize)))
        }
    }
}

struct Untrack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop tracking disks; their .hrl files become resync-required.")
    @OptionGroup var common: DiskOptions

    func run() throws {
        try runReportingErrors {
            try AgentCommands.untrack(withTestSwitches(AgentSettings.resolve(configPath: common.config, disks: common.disks,
                                                                             stateDir: common.stateDir, chunkSize: nil)))
        }
    }
}

struct MirrorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mirror",
        abstract: "Keep a file or block device a continuous mirror of a disk.")
    @OptionGroup var common: DiskOptions
    @Option(help: "The mirror: a file (created sparse) or a block device at least as large.")
    var to: String?
    @Option(help: "Chunk size, a power of two from 4k to 1m (default 64k).")
    var chunkSize: String?
    @Flag(help: "Copy until the mirror is current, then exit 0.")
    var once = false

    func run() throws {
        try runReportingErrors {
            try AgentCommands.mirror(withTestSwitches(AgentSettings.resolve(configPath: common.config, disks: common.disks,
                                                                            stateDir: common.stateDir, chunkSize: chunkSize, mirrorTo: to)),
                                     once: once)
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Replicate disks continuously to a process server (config: /etc/tidemark/agent.yaml).")
    @OptionGroup var common: DiskOptions
    @Option(help: "Process server host:port (overrides replication.server).")
    var server: String?
    @Flag(help: "With no disk or no server configured, wait (until SIGTERM) instead of failing; SIGHUP re-checks the file. For the service unit of a fresh install.")
    var waitForConfig = false

    func run() async throws {
        do {
            try await AgentCommands.run(configPath: common.config, disks: common.disks, stateDir: common.stateDir, server: server,
                                        waitForConfig: waitForConfig, testSwitches: testSwitches)
        } catch {
            try reportError(error)
        }
    }
}

struct ShutdownSealCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shutdown-seal",
        abstract: "Seal the last writes of an orderly shutdown (run by the systemd-shutdown hook).",
        discussion: """
            Run by /usr/lib/systemd/system-shutdown/tidemark after every filesystem is unmounted or \
            read-only. Reads the shutdown seal the agent armed when it stopped (its copy in /run/tidemark), \
            snapshots the pinned tracer's bits of every disk listed there, and writes them with O_DIRECT \
            to the seal file's blocks on the raw device. At the next boot the agent merges them into the \
            .hrl files, so an orderly reboot needs no resync. Writes no file and works with the root \
            filesystem read-only. On any failure it writes nothing and exits 1; the next start then \
            requires a resync. Exits 0 without writing when no disk is tracked. See docs/shutdown-seal.md.
            """)

    func run() throws {
        try runReportingErrors { println(try ShutdownSeal.seal(testSwitches)) }
    }
}

struct ThawLeftoversCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "thaw-leftovers",
        abstract: "Thaw filesystems a dead agent left frozen (run by the unit's ExecStopPost).",
        discussion: """
            Before it freezes filesystems for a recovery point, the agent records their mount points in \
            $TIDEMARK_RUN_DIR (default /run/tidemark), frozen-*.mounts, and removes the record after the \
            thaw. This command thaws what every record left by an agent that is no longer running lists \
            (a filesystem that is not frozen any more is left as it is), removes those records and logs \
            what it did. `run` does the same when it starts. Exits 1 if a filesystem could not be thawed. \
            See docs/points-and-freeze.md.
            """)

    func run() throws {
        try runReportingErrors {
            let problems = AgentCommands.thawLeftovers(quietWhenNothing: false)
            if problems > 0 { throw ExitCode(1) }
        }
    }
}

struct FreezeWatchdogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "freeze-watchdog",
        abstract: "Internal: the freeze watchdog process `run` starts (standard input is its socket).",
        shouldDisplay: false)

    func run() throws {
        FreezeWatchdog.installSignals()
        let status = FreezeWatchdog.serve(fd: 0)
        if status != 0 { throw ExitCode(status) }
    }
}

/// The test switches (TIDEMARK_TEST_*), read here once, at start, and
/// handed down to the code that honours them; all off in production.
let testSwitches = TestSwitches(environment: SystemEnvironment.variables)

/// The settings with this process's test switches.
func withTestSwitches(_ settings: AgentSettings) -> AgentSettings {
    var s = settings
    s.testSwitches = testSwitches
    return s
}

/// Operating errors end in one clear message and exit status 1, never a trace.
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch {
        try reportError(error)
    }
}

/// Writes an operating error as one line and ends with exit status 1 (an
/// `ExitCode` passes through as it is).
func reportError(_ error: Error) throws -> Never {
    if let e = error as? ExitCode { throw e }
    Log.writeFatal("tidemark-agent: error: \(error)\n")
    throw ExitCode(1)
}

@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
struct Agent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-agent",
        abstract: "Tidemark agent: tracks changed disk chunks and replicates them.",
        version: tidemarkVersion,
        subcommands: [Run.self, Track.self, Untrack.self, MirrorCommand.self, ShutdownSealCommand.self,
                      ThawLeftoversCommand.self, FreezeWatchdogCommand.self])
}

/// The async entry point: inside an async function the compiler picks
/// AsyncParsableCommand's `main()`, whose `run()` may await (at top level it
/// picks ParsableCommand's, which refuses an async root).
@available(macOS 10.15, macCatalyst 13, iOS 13, tvOS 13, watchOS 6, *)
func runMain() async { await Agent.main() }

Log.bootstrap(program: "tidemark-agent")
await runMain()
