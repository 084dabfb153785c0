import Glibc
import Testing
import TidemarkTesting
import TidemarkSystem
@testable import TidemarkTracking

/// A private directory under $TMPDIR (default /tmp), removed with its
/// contents when the value goes away.
final class TempDir {
    let path: String

    init() {
        let base = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        var template = Array("\(base)/tidemark-hrl-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed: errno \(errno)")
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { "\(path)/\(name)" }

    deinit {
        if let dir = opendir(path) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name != "." && name != ".." { unlink("\(path)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(path)
    }
}

let pageSize = 4096

func readFileBytes(_ path: String) throws -> [UInt8] {
    let fd = try FileDescriptor(open: path, .readOnly)
    let size = Int(try fd.stat().st_size)
    var bytes = [UInt8](repeating: 0, count: size)
    let n = try bytes.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
    precondition(n == size)
    return bytes
}

func writeFileBytes(_ path: String, _ bytes: [UInt8]) throws {
    let fd = try FileDescriptor(open: path, [.writeOnly, .create, .truncate])
    try bytes.withUnsafeBytes { try fd.write($0, at: 0) }
}

func patchFile(_ path: String, at offset: UInt64, _ bytes: [UInt8]) throws {
    let fd = try FileDescriptor(open: path, .readWrite)
    try bytes.withUnsafeBytes { try fd.write($0, at: offset) }
}

func readPage(_ path: String, at offset: UInt64) throws -> [UInt8] {
    let fd = try FileDescriptor(open: path, .readOnly)
    var bytes = [UInt8](repeating: 0, count: pageSize)
    _ = try bytes.withUnsafeMutableBytes { try fd.read(into: $0, at: offset) }
    return bytes
}

/// Flips every bit of one byte.
func flipByte(_ path: String, at offset: UInt64) throws {
    var b = try readPage(path, at: offset)
    b[0] ^= 0xFF
    try patchFile(path, at: offset, [b[0]])
}

/// Rewrites a page with `change` applied and a correct checksum, as a buggy
/// or foreign writer would: the damage is then visible only to the checks
/// behind the checksum.
func rewritePage(_ path: String, at offset: UInt64, _ change: (inout [UInt8]) -> Void) throws {
    var b = try readPage(path, at: offset)
    change(&b)
    let crc = b.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<4092])) }
    putLE(&b, 4092, crc)
    try patchFile(path, at: offset, b)
}

func putLE<T: FixedWidthInteger>(_ b: inout [UInt8], _ offset: Int, _ v: T) {
    withUnsafeBytes(of: v.littleEndian) { for (i, x) in $0.enumerated() { b[offset + i] = x } }
}

func getLE<T: FixedWidthInteger>(_ b: [UInt8], _ offset: Int, as: T.Type) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v |= T(b[offset + i]) << (8 * i) }
    return v
}

/// A small disk: 100_003 chunks of 4 KiB, the last one partial, so the last
/// bitmap word and the last page are partial. 1563 words = 4 bitmap pages.
let smallDisk = DiskIdentity(diskID: "vdb", identity: "serial-TEST-0001", sizeBytes: 100_003 * 4096 - 100)
let smallChunk: UInt32 = 4096

func makeFile(_ dir: TempDir, _ name: String = "disk.hrl", identity: DiskIdentity = smallDisk,
              chunk: UInt32 = smallChunk) throws -> TrackingFile {
    try TrackingFile.create(at: dir.file(name), identity: identity, chunkSizeBytes: chunk, state: .tracking,
                            reason: .none, reasonText: "")
}

/// Expects `body` to throw a `TrackingFileError` of `kind` and returns it.
@discardableResult
func expectTrackingError(_ kind: TrackingFileError.Kind, sourceLocation: SourceLocation = #_sourceLocation,
                         _ body: () throws -> Void) -> TrackingFileError? {
    do {
        try body()
        Issue.record("expected TrackingFileError \(kind), but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let e as TrackingFileError {
        #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
        return e
    } catch {
        Issue.record("expected TrackingFileError \(kind), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}


/// The set chunks of a word array.
func chunks(of words: [UInt64]) -> [UInt64] {
    var out: [UInt64] = []
    for (i, w) in words.enumerated() {
        var b = w
        while b != 0 {
            out.append(UInt64(i) * 64 + UInt64(b.trailingZeroBitCount))
            b &= b - 1
        }
    }
    return out
}

/// Extents of a sorted chunk list, the slow obvious way.
func extents(ofSorted chunks: [UInt64]) -> [ChunkExtent] {
    var out: [ChunkExtent] = []
    for c in chunks {
        if let last = out.last, last.endChunk == c {
            out[out.count - 1].chunkCount += 1
        } else {
            out.append(ChunkExtent(firstChunk: c, chunkCount: 1))
        }
    }
    return out
}

func allExtents(_ f: TrackingFile, max: UInt64 = .max) throws -> [ChunkExtent] {
    var out: [ChunkExtent] = []
    try f.forEachDirtyExtent(maxChunksPerExtent: max) { out.append($0) }
    return out
}

/// `xxd`-like dump, all-zero rows folded to "*" (as in docs/hrl-format.md).
func hexDump(_ b: [UInt8]) -> String {
    var lines: [String] = []
    var skipped = false
    for off in stride(from: 0, to: b.count, by: 16) {
        let row = b[off..<off + 16]
        if row.allSatisfy({ $0 == 0 }) {
            if !skipped { lines.append("*") }
            skipped = true
            continue
        }
        skipped = false
        let hex = row.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }
        let ascii = String(row.map { (0x20..<0x7f).contains($0) ? Character(UnicodeScalar($0)) : "." })
        let o = String(off, radix: 16)
        lines.append(String(repeating: "0", count: 8 - o.count) + o + "  " + hex[0..<8].joined(separator: " ") + "  "
                     + hex[8..<16].joined(separator: " ") + "  |" + ascii + "|")
    }
    return lines.joined(separator: "\n")
}
