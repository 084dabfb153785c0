import Foundation
import Testing
import TidemarkSystem
import TidemarkTracking
@testable import TidemarkBitmapTool

/// A temporary directory of `.hrl` files built with the real TrackingFile, removed on deinit.
final class Fixture {
    let dir: String

    init(_ tag: String = "bitmap-tool") throws {
        let base = ProcessInfo.processInfo.environment["TIDEMARK_TEST_TMP"] ?? NSTemporaryDirectory()
        dir = (base as NSString).appendingPathComponent("tidemark-\(tag)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    func path(_ name: String) -> String { dir + "/" + name }

    /// Creates `name` for a disk of `sizeBytes` with the given chunks dirty.
    @discardableResult
    func hrl(_ name: String = "sdb.hrl", sizeBytes: UInt64 = 64 * 65536, chunkSizeBytes: UInt32 = 65536,
             dirty: [UInt64] = [], state: TrackingState = .tracking, reason: ResyncReason = .none,
             reasonText: String = "", identity: String = "wwn-0x5000c500a1b2c3d4") throws -> String {
        let p = path(name)
        let file = try TrackingFile.create(at: p, identity: DiskIdentity(diskID: "sdb", identity: identity, sizeBytes: sizeBytes),
                                           chunkSizeBytes: chunkSizeBytes, state: state, reason: reason, reasonText: reasonText)
        if !dirty.isEmpty { try file.persistSet(SparseWords(chunks: dirty)) }
        file.close()
        return p
    }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let p = path(name)
        try Data(bytes).write(to: URL(fileURLWithPath: p))
        return p
    }
}

/// A live kernel map for a file, as the tracer would report it.
func liveContext(nrChunks: UInt64, chunkSizeBytes: UInt32 = 65536, dirty: [UInt64], overflow: Bool = false) -> ToolContext {
    var words = [UInt64](repeating: 0, count: Int((nrChunks + 63) / 64))
    for c in dirty { words[Int(c / 64)] |= UInt64(1) << (c % 64) }
    let map = LiveMap(words: words, overflow: overflow, chunkSizeBytes: chunkSizeBytes,
                      nrChunks: nrChunks, devicePath: "/dev/block/8:16")
    return ToolContext(liveMap: { _ in map })
}

/// Parses the output of a `--json` command as one JSON object.
func jsonObject(_ result: CommandResult, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
    #expect(result.exitCode == 0, "stderr: \(result.errorOutput)", sourceLocation: sourceLocation)
    let any = try JSONSerialization.jsonObject(with: Data(result.output.utf8))
    return try #require(any as? [String: Any], sourceLocation: sourceLocation)
}

/// `[[offset, length], ...]` from a JSON value.
func extentPairs(_ value: Any?) -> [[UInt64]] {
    guard let array = value as? [Any] else { return [] }
    return array.map { pair in ((pair as? [Any]) ?? []).map { ($0 as? NSNumber)?.uint64Value ?? .max } }
}

func uint(_ value: Any?) -> UInt64? { (value as? NSNumber)?.uint64Value }

/// The built `tidemark-bitmap` beside the test bundle (or in TIDEMARK_BIN_DIR), if there is one.
func toolBinary() -> String? {
    let dir: String
    if let d = ProcessInfo.processInfo.environment["TIDEMARK_BIN_DIR"] {
        dir = d
    } else {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        dir = (exe as NSString).deletingLastPathComponent
    }
    let path = dir + "/tidemark-bitmap"
    return FileManager.default.isExecutableFile(atPath: path) ? path : nil
}

struct ToolRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the tool to completion with its output captured.
func runTool(_ binary: String, _ arguments: [String]) throws -> ToolRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    // Outputs are small; read both fully, then wait.
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ToolRun(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                   stderr: String(decoding: stderr, as: UTF8.self))
}
