// tidemark-bitmap: inspect .hrl change-tracking files and the live tracking map.
// Only argument parsing lives here; the commands are in TidemarkBitmapTool.
import ArgumentParser
import Glibc
import TidemarkBitmapTool
import TidemarkSystem

struct TidemarkBitmap: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-bitmap",
        abstract: "Inspect Tidemark .hrl change-tracking files and live tracking state.",
        discussion: """
            .hrl files live in the agent's state_dir (default /var/lib/tidemark), one per disk.
            Exit status: 0 success, 1 a problem with the file (or verify found damage), 2 usage error or no such file.
            """,
        subcommands: [Show.self, Extents.self, Map.self, Diff.self, Verify.self])
}

/// Prints a command's result and ends the process with its exit code.
func finish(_ result: CommandResult) throws {
    writeAll(1, result.output)
    writeAll(2, result.errorOutput)
    if result.exitCode != 0 { throw ExitCode(result.exitCode) }
}

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the header, state, resync reason and dirty counts (with the live kernel map when tracked).")
    @Argument(help: "The .hrl file.") var file: String
    @Flag(help: "Ignore the live kernel map; show the file's bits only.") var hrlOnly = false
    @Flag(help: "Print one JSON object.") var json = false
    func run() throws { try finish(BitmapTool.show(path: file, hrlOnly: hrlOnly, json: json)) }
}

struct Extents: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List dirty extents: offset_bytes length_bytes (chunks a-b), merged and sorted.")
    @Argument(help: "The .hrl file.") var file: String
    @Flag(help: "Print one JSON object with chunk_size and extents [[offset, length], ...].") var json = false
    @Flag(help: "Ignore the live kernel map; list the file's bits only.") var hrlOnly = false
    func run() throws { try finish(BitmapTool.extents(path: file, hrlOnly: hrlOnly, json: json)) }
}

struct Map: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw a density map of the disk in the terminal, or as a PNG heat map.")
    @Argument(help: "The .hrl file.") var file: String
    @Option(help: "Cells per row (\(BitmapTool.mapWidthRange.lowerBound)-\(BitmapTool.mapWidthRange.upperBound)).")
    var width = BitmapTool.mapWidthDefault
    @Option(name: .customLong("png"), help: ArgumentHelp("Write a PNG heat map to this path instead.", valueName: "out"))
    var png: String?
    @Flag(help: "Ignore the live kernel map; draw the file's bits only.") var hrlOnly = false

    func validate() throws {
        guard BitmapTool.mapWidthRange.contains(width) else {
            throw ValidationError("--width must be from \(BitmapTool.mapWidthRange.lowerBound) to \(BitmapTool.mapWidthRange.upperBound)")
        }
    }
    func run() throws { try finish(BitmapTool.map(path: file, width: width, pngPath: png, hrlOnly: hrlOnly)) }
}

struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare two .hrl files of the same disk: chunks dirty only in A, only in B, and in both.")
    @Argument(help: "The first .hrl file.") var a: String
    @Argument(help: "The second .hrl file.") var b: String
    @Flag(help: "Print one JSON object.") var json = false
    func run() throws { try finish(BitmapTool.diff(a, b, json: json)) }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every header slot and bitmap page checksum; exit 1 listing each problem.")
    @Argument(help: "The .hrl file.") var file: String
    @Flag(help: "Print one JSON object: ok, the header's geometry, problems and notes (same exit status).") var json = false
    func run() throws { try finish(BitmapTool.verify(path: file, json: json)) }
}

// ArgumentParser exits 64 on usage errors; Tidemark's tools use 2, like most Unix tools.
do {
    var command = try TidemarkBitmap.parseAsRoot()
    try command.run()
} catch {
    let code = TidemarkBitmap.exitCode(for: error)
    if code == .validationFailure {
        writeAll(2, TidemarkBitmap.fullMessage(for: error) + "\n")
        exit(ToolExit.usage)
    }
    TidemarkBitmap.exit(withError: error)
}
