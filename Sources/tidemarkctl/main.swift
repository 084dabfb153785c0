// tidemarkctl: the administration command line. Only argument parsing lives
// here; the commands are in TidemarkCtlCore.
import ArgumentParser
import Glibc
import TidemarkCtlCore
import TidemarkSystem

/// Operating errors end in one clear message (with its hint) and exit status
/// 1, never a trace. Usage errors stay ArgumentParser's (exit 64).
func runReportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as ExitCode {
        throw e
    } catch {
        writeAll(2, "tidemarkctl: error: \(error)\n")
        throw ExitCode(1)
    }
}

struct TargetOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Target storage directory (default: target.path of the server configuration, /var/lib/tidemark/target).",
                               valueName: "dir"))
    var target: String?

    @Option(help: ArgumentHelp("Server configuration file for the target directory (default /etc/tidemark/server.yaml, when it exists).",
                               valueName: "file"))
    var config: String?

    func resolve() throws -> String { try TargetLocation.resolve(target: target, configPath: config) }
}

// MARK: points

struct Points: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Recovery points in target storage.",
        subcommands: [PointsList.self])
}

struct PointsList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the recovery points that can be recovered: id, disk, class, time (UTC), sequence.")
    @OptionGroup var target: TargetOptions
    @Option(help: ArgumentHelp("Only the points of this disk id.", valueName: "id"))
    var disk: String?
    @Flag(help: "Print one JSON object on one line: {\"points\":[{\"class\",\"disk_id\",\"id\",\"sequence\",\"time\",\"time_unix_ms\"}]}.")
    var json = false

    func run() throws {
        try runReportingErrors {
            writeAll(1, try PointsCommand.list(targetDir: target.resolve(), diskID: disk, json: json))
        }
    }
}

// MARK: point create

struct PointGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "point",
        abstract: "Create recovery points through the agent on this host.",
        subcommands: [PointCreate.self])
}

struct PointCreate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Tag a recovery point now — of every disk at one instant (a machine point), or of one disk — and wait until it is committed to target storage.",
        discussion: """
            The agent freezes the filesystems (FIFREEZE) for the few milliseconds it takes to read the \
            last changed chunks; a disk without a mounted filesystem gets an 'unverified' tag. Without \
            --disk, every disk the agent protects is frozen together and tagged under one point id \
            (docs/points-and-freeze.md); `tidemarkctl recover --point ID --disk DISK_ID` recovers each.
            """)
    @Option(help: ArgumentHelp("Only this protected disk (as the agent names it, e.g. /dev/sdb); without it, a machine point of every disk.", valueName: "dev"))
    var disk: String?
    @Flag(help: "A machine point of every disk the agent protects (the default without --disk).")
    var machine = false
    @Flag(help: "Run the pre-freeze / post-thaw hook scripts around the freeze (an app-consistent point).")
    var appConsistent = false
    @Option(help: ArgumentHelp("The agent's control socket.", valueName: "path"))
    var socket: String = PointCreateCommand.defaultSocketPath
    @Flag(help: "Print the point as one JSON object on one line: {\"class\",\"disk_id\",\"disks\",\"freeze_ms\",\"id\",\"scope\",\"sequence\"} (a machine point has no disk_id or sequence of its own).")
    var json = false

    func validate() throws {
        if machine && disk != nil { throw ValidationError("--machine and --disk exclude each other: a machine point spans every disk of the agent") }
    }

    func run() throws {
        try runReportingErrors {
            writeAll(1, try PointCreateCommand.run(socketPath: socket, disk: disk, machine: machine, appConsistent: appConsistent, json: json))
        }
    }
}

// MARK: status

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the replication state of the agent on this host: RPO, committed sequence and backlog per disk, RSS.")
    @Option(help: ArgumentHelp("The agent's control socket.", valueName: "path"))
    var socket: String = PointCreateCommand.defaultSocketPath
    @Flag(help: "Print the state as one JSON object on one line: {\"disks\":[{\"backlog_bytes\",\"committed_sequence\",\"disk\",\"disk_id\",\"rpo_ms\",...}],\"rss_bytes\"} (docs/control-socket.md).")
    var json = false

    func run() throws {
        try runReportingErrors {
            writeAll(1, try StatusCommand.run(socketPath: socket, json: json))
        }
    }
}

// MARK: recover

struct Recover: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write the disk image of a recovery point to a file or block device.",
        discussion: """
            A file is created (sparse, mode 0600) under a temporary name beside it and renamed into place \
            only when complete; on any error nothing is left behind. A block device must be at least as \
            large as the disk; it is overwritten in place.
            """)
    @Option(help: ArgumentHelp("A point id, or 'latest' (the newest point of the disk).", valueName: "id|latest"))
    var point: String
    @Option(help: ArgumentHelp("The disk id (needed with 'latest' when the target holds several disks).", valueName: "id"))
    var disk: String?
    @Option(help: ArgumentHelp("The image file or block device to write.", valueName: "file|dev"))
    var to: String
    @OptionGroup var target: TargetOptions
    @Option(help: ArgumentHelp("The replication key file.", valueName: "file"))
    var key: String = RecoverCommand.defaultKeyPath
    @Flag(help: "Accept segment headers written before Tidemark proved them under the key (older targets); the segments opened are still authenticated.")
    var allowUnprovenHeaders = false
    @Flag(help: "Print the result as one JSON object on one line: {\"bytes\",\"lineage_inferred_below\",\"point\":{...},\"to\",\"unproven_sequences\"}.")
    var json = false

    func run() throws {
        try runReportingErrors {
            let result = try RecoverCommand.run(pointID: point, diskID: disk, to: to, targetDir: target.resolve(), keyPath: key,
                                                allowUnprovenHeaders: allowUnprovenHeaders,
                                                progress: ProgressReporter(label: "recovering"))
            writeAll(1, try result.output(json: json))
        }
    }
}

// MARK: keys

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Key material.",
        discussion: """
            TLS certificates (the CA, the process server's, one per agent) and a replication key are made \
            together by scripts/make-certs.sh DIR [--agent NAME ...] [--server-name HOST ...] \
            (docs/keys-and-certificates.md).
            """,
        subcommands: [GenerateReplicationKey.self])
}

struct GenerateReplicationKey: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate-replication-key",
        abstract: "Create a new random 256-bit replication key file (mode 0600); never overwrites one.")
    @Option(help: ArgumentHelp("The key file to create (e.g. /etc/tidemark/replication.key).", valueName: "file"))
    var out: String
    @Flag(help: "Print one JSON object on one line: {\"key_id\",\"path\"} (never the key).")
    var json = false

    func run() throws {
        try runReportingErrors {
            writeAll(1, try KeysCommand.generateReplicationKey(out: out, json: json))
        }
    }
}

struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemarkctl",
        abstract: "Tidemark administration: recovery points, recovery, keys.",
        version: tidemarkVersion,
        subcommands: [Points.self, PointGroup.self, Status.self, Recover.self, Keys.self])
}

Ctl.main()
