import Glibc
import TidemarkSystem
import TidemarkTracking
import TidemarkWire

/// The numbering epochs of one disk that still own stored sequences
/// (`SegmentLineage`), kept beside its `.hrl` as `<name>.epochs` so that a
/// restarted agent can name the epoch that owns the sequence before its new
/// one. Written whole (temporary file, fsync, rename, directory fsync)
/// before the first segment of a new epoch is sent: only when a run starts
/// and when a process server makes the agent renumber, so it costs nothing
/// on the data path.
///
/// Format (version 1), all little-endian:
///
///     0   8  magic "TMEPOCHS"
///     8   4  version = 1
///     12  4  n, entries (≤ `EpochHistory.entriesMax`)
///     16  24·n entries in increasing start order: u64 start, 16-byte epoch id
///     …   4  CRC32C of every byte before it
///
/// A missing file is an empty history; a damaged one is reported and taken
/// as empty: the next epoch's previous epoch is then `unknown`, and a
/// recovery says that it took the earlier epochs from the stored headers
/// (docs/wire-format.md 4.7).
public struct EpochHistory: Equatable, Sendable {
    static let magic = Array("TMEPOCHS".utf8)
    static let version: UInt32 = 1
    /// Entries kept: only the newest is needed unless a process server
    /// loses several epochs' worth of acknowledged segments at once.
    public static let entriesMax = 64
    static let entryBytes = 8 + SegmentLineage.idBytes

    public var entries: [(start: UInt64, id: [UInt8])]

    public init(entries: [(start: UInt64, id: [UInt8])] = []) { self.entries = entries }

    public static func == (a: EpochHistory, b: EpochHistory) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.start == $1.start && $0.id == $1.id }
    }

    /// The path beside a `.hrl`.
    public static func path(hrlPath: String) -> String {
        (hrlPath.hasSuffix(".hrl") ? String(hrlPath.dropLast(4)) : hrlPath) + ".epochs"
    }

    /// A new epoch starting at `start`: drops the epochs that own nothing
    /// any more (starting at or after it), names the one that owns
    /// `start - 1`, and appends the new one.
    public mutating func begin(_ id: [UInt8], start: UInt64) -> SegmentLineage {
        precondition(start >= 1 && id.count == SegmentLineage.idBytes, "EpochHistory.begin: bad epoch")
        entries.removeAll { $0.start >= start }
        let previous: SegmentLineage.Previous
        if start == 1 {
            previous = .none
        } else if let last = entries.last {
            previous = .known(id: last.id, start: last.start)
        } else {
            previous = .unknown
        }
        entries.append((start, id))
        if entries.count > Self.entriesMax { entries.removeFirst(entries.count - Self.entriesMax) }
        return SegmentLineage(epochID: id, epochStart: start, previous: previous)
    }

    func encode() -> [UInt8] {
        var out = Self.magic
        func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        le(Self.version)
        le(UInt32(entries.count))
        for e in entries { le(e.start); out += e.id }
        let crc = out.withUnsafeBytes { crc32c($0) }
        le(crc)
        return out
    }

    static func decode(_ b: [UInt8], path: String) throws -> EpochHistory {
        func corrupt(_ what: String) -> TidemarkError { TidemarkError(.corrupt, "\(path): \(what)") }
        func u32(_ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[at + $1]) << (8 * $1) } }
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * $1) } }
        guard b.count >= 20, Array(b[0..<8]) == magic else { throw corrupt("not an epoch history (bad magic or too short)") }
        guard u32(8) == version else { throw corrupt("epoch history version \(u32(8)); this build reads \(version)") }
        let n = Int(u32(12))
        guard n <= entriesMax, b.count == 16 + n * entryBytes + 4 else { throw corrupt("\(n) entries do not fit its \(b.count) bytes") }
        guard b.withUnsafeBytes({ crc32c(UnsafeRawBufferPointer(rebasing: $0[0..<(b.count - 4)])) }) == u32(b.count - 4) else {
            throw corrupt("checksum mismatch")
        }
        var h = EpochHistory()
        for i in 0..<n {
            let at = 16 + i * entryBytes
            let start = u64(at)
            guard start >= 1, start > (h.entries.last?.start ?? 0) else { throw corrupt("entry \(i) starts at \(start), not after the one before") }
            h.entries.append((start, Array(b[(at + 8)..<(at + entryBytes)])))
        }
        return h
    }

    /// Reads the history; a missing file is empty, a damaged one is
    /// reported through `warn` and taken as empty.
    public static func load(_ path: String, warn: (String) -> Void) -> EpochHistory {
        do {
            let fd = try FileDescriptor(open: path, .readOnly, purpose: "reading the epoch history")
            let size = Int(try fd.stat().st_size)
            guard size <= 16 + entriesMax * entryBytes + 4 else {
                throw TidemarkError(.corrupt, "\(path): \(size) bytes, more than an epoch history can hold")
            }
            var b = [UInt8](repeating: 0, count: size)
            let got = try b.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
            guard got == size else { throw TidemarkError(.corrupt, "\(path): truncated while reading") }
            return try decode(b, path: path)
        } catch let e as SystemError where e.errno == ENOENT {
            return EpochHistory()
        } catch {
            warn("\(error); the epochs before this run cannot be named: recoveries of points made from now on will take the epochs of the earlier sequences from the stored headers and say so")
            return EpochHistory()
        }
    }

    /// Writes the history durably in place of the old one.
    public func store(_ path: String) throws {
        let tmp = path + ".tmp-\(getpid())"
        let fd = try FileDescriptor(open: tmp, [.readWrite, .create, .truncate], mode: 0o600, purpose: "writing the epoch history")
        var renamed = false
        defer { if !renamed { _ = unlink(tmp) } }
        let bytes = encode()
        try bytes.withUnsafeBytes { try fd.write($0, at: 0) }
        try fd.dataSync()
        _ = try syscall("rename", "renaming \(tmp) to \(path)") { Glibc.rename(tmp, path) }
        renamed = true
        try syncDirectory(containing: path)
    }
}
