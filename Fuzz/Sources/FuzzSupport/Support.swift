import TidemarkSystem

/// Helpers shared by the fuzz targets.
public enum Fuzz {
    /// The input as an array.
    public static func bytes(_ data: UnsafePointer<UInt8>, _ size: Int) -> [UInt8] {
        Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// A decoder's error must be one of the project's typed errors.
    public static func expectTyped(_ error: any Error, _ target: StaticString) {
        if error is TidemarkError || error is SystemError { return }
        fatalError("\(target): untyped error \(type(of: error)): \(error)")
    }

    /// An invariant a target checks beyond "no crash".
    public static func check(_ cond: @autoclosure () -> Bool, _ what: @autoclosure () -> String,
                             file: StaticString = #fileID, line: UInt = #line) {
        if !cond() { fatalError("invariant broken: \(what())", file: file, line: line) }
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

import CFuzzDriver

extension Fuzz {
    /// Runs libFuzzer with the process's arguments. A SwiftPM executable
    /// target is linked with `--defsym main=<module>_main` (and compiled with
    /// `-entry-point-function-name <module>_main`), so libFuzzer's own main()
    /// is not the program's: each target defines `<module>_main` with
    /// `@_cdecl` and calls this.
    public static func main(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                            _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt {
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv, callback)
    }
}
