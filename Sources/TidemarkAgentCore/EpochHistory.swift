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
        var w = ByteWriter(capacity: Self.bytesMax)
        w.raw(Self.magic)
        w.u32(Self.version)
        w.u32(UInt32(entries.count))
        for e in entries {
            w.u64(e.start)
            w.raw(e.id)
        }
        w.u32(w.bytes.withUnsafeBytes { crc32c($0) })
        return w.bytes
    }

    /// The largest file: every entry, the fixed fields and the CRC.
    static let bytesMax = 16 + entriesMax * entryBytes + 4

    static func decode(_ b: [UInt8], path: String) throws -> EpochHistory {
        try b.withUnsafeBytes { raw in
            var r = ByteReader(raw, what: path)
            guard b.count >= 20, try r.bytes(8, "magic") == magic else {
                throw r.corrupt("is not an epoch history (bad magic or too short)")
            }
            let v = try r.u32("version")
            guard v == version else { throw r.corrupt("is epoch history version \(v); this build reads \(version)") }
            let n = Int(try r.u32("entry count"))
            guard n <= entriesMax, b.count == 16 + n * entryBytes + 4 else {
                throw r.corrupt("has \(n) entries, which do not fit its \(b.count) bytes")
            }
            let stored = try r.u32(at: b.count - 4, "checksum")
            guard crc32c(UnsafeRawBufferPointer(rebasing: raw[0..<(b.count - 4)])) == stored else {
                throw r.corrupt("has a checksum mismatch")
            }
            var h = EpochHistory()
            for i in 0..<n {
                let start = try r.u64("entry \(i) start")
                guard start >= 1, start > (h.entries.last?.start ?? 0) else {
                    throw r.corrupt("entry \(i) starts at \(start), not after the one before")
                }
                h.entries.append((start, try r.bytes(SegmentLineage.idBytes, "entry \(i) epoch id")))
            }
            return h
        }
    }

    /// Reads the history; a missing file is empty, a damaged one is
    /// reported through `warn` and taken as empty.
    public static func load(_ path: String, warn: (String) -> Void) -> EpochHistory {
        do {
            guard let b = try SmallFile.readIfPresent(path, bytesMax: bytesMax, purpose: "reading the epoch history") else {
                return EpochHistory()
            }
            return try decode(b, path: path)
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
