import CFuzzDriver
import Foundation
import TidemarkSystem

/// Helpers shared by the fuzz targets (docs/fuzzing.md).
public enum Fuzz {
    /// The input as an array.
    public static func bytes(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
        guard let data, size > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// A decoder's error must be one of the project's typed errors
    /// (`TidemarkError`, `SystemError`, or one the caller names): anything
    /// else is a finding.
    public static func expectTyped(_ error: any Error, _ target: String, also: (any Error) -> Bool = { _ in false }) {
        if error is TidemarkError || error is SystemError || also(error) { return }
        fatalError("\(target): untyped error \(type(of: error)): \(error)")
    }

    /// An invariant a target checks beyond "no crash": a broken one aborts
    /// (libFuzzer saves the input as a crash).
    public static func check(_ cond: @autoclosure () -> Bool, _ what: @autoclosure () -> String,
                             file: StaticString = #fileID, line: UInt = #line) {
        if !cond() { fatalError("invariant broken: \(what())", file: file, line: line) }
    }

    /// Runs libFuzzer with the process's arguments. A SwiftPM executable
    /// target is linked with `--defsym main=<module>_main` (and compiled with
    /// `-entry-point-function-name <module>_main`), so libFuzzer's own main()
    /// is not the program's: each target defines `<module>_main` with
    /// `@_cdecl` and calls this.
    ///
    /// With TIDEMARK_FUZZ_WRITE_SEEDS=DIR set, writes `seeds()` (inputs made
    /// by the real encoders) into DIR instead and exits: Fuzz/make-corpus.sh.
    public static func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                            seeds: () throws -> [(String, [UInt8])],
                            _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt {
        if let dir = ProcessInfo.processInfo.environment["TIDEMARK_FUZZ_WRITE_SEEDS"] {
            do {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                for (name, bytes) in try seeds() {
                    try Data(bytes).write(to: URL(fileURLWithPath: dir + "/" + name))
                }
                return 0
            } catch {
                FileHandle.standardError.write(Data("writing seeds: \(error)\n".utf8))
                return 1
            }
        }
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv, callback)
    }

    /// A private scratch directory for file-based targets (under
    /// $TMPDIR, default /dev/shm when it exists: no disk I/O), made once.
    public static let scratch: String = {
        let base = ProcessInfo.processInfo.environment["TMPDIR"]
            ?? (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : "/tmp")
        let dir = base + "/tidemark-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Fuzz.scratchPathForExit) }
        return dir
    }()
    nonisolated(unsafe) static var scratchPathForExit = ""

    /// Empties `dir` (creating it).
    public static func resetDirectory(_ dir: String) {
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        scratchPathForExit = scratch
    }

    public static func writeFile(_ path: String, _ bytes: [UInt8]) {
        try! Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    public static func readFile(_ path: String) -> [UInt8] {
        [UInt8]((try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data())
    }

    public static func le<T: FixedWidthInteger>(_ b: [UInt8], _ at: Int, as: T.Type = T.self) -> T {
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size where at + i < b.count { v |= T(b[at + i]) << (8 * i) }
        return v
    }

    public static func putLE<T: FixedWidthInteger>(_ b: inout [UInt8], _ at: Int, _ v: T) {
        for i in 0..<MemoryLayout<T>.size where at + i < b.count { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) }
    }
}

/// A ByteStream over bytes in memory: reads return them in pieces of at
/// most `chunk` bytes, writes append to `written`.
public final class MemoryStream: ByteStream {
    public let input: [UInt8]
    public var position = 0
    public var chunk: Int
    public var written: [UInt8] = []

    public init(_ input: [UInt8] = [], chunk: Int = .max) {
        self.input = input
        self.chunk = max(1, chunk)
    }

    public func read(into dst: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(dst.count, input.count - position, chunk)
        if n <= 0 { return 0 }
        input.withUnsafeBytes { src in
            dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[position..<position + n]))
        }
        position += n
        return n
    }

    public func writeAll(_ src: UnsafeRawBufferPointer) throws {
        written.append(contentsOf: src)
    }
}
