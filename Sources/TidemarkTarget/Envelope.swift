import TidemarkSystem

// The object envelope, format versions 1 and 2 (docs/target-layout.md
// section 3). All integers little-endian.
//
//   0   8  magic "TMTARGET"
//   8   2  format version (2 written; 1 and 2 read)
//  10   1  kind (1 disk, 2 segment, 3 point, 4 tombstone)
//  11   1  reserved, 0
//  12   4  header length H (bytes, including the header digest)
//  16   8  sequence (0 for a disk record)
//  24   8  payload length P
//  32  32  payload checksum: v1 SHA-256; v2 GMAC-PRF (16) + 16 zero bytes
//  64   2  disk id length D (1...255)
//  66   D  disk id, UTF-8
//  66+D 4  metadata length M
//  70+D M  metadata (per kind)
//  70+D+M 32 SHA-256 of bytes [0, 70+D+M)
//  H    P  payload
// The object's size is exactly H + P.

enum ObjectKind: UInt8, Sendable, CustomStringConvertible {
    case disk = 1, segment = 2, point = 3, tombstone = 4
    var description: String {
        switch self {
        case .disk: "disk record"
        case .segment: "segment"
        case .point: "point manifest"
        case .tombstone: "tombstone"
        }
    }
}

public enum EnvelopeFormat {
    static let magic: [UInt8] = Array("TMTARGET".utf8)
    /// The version written; readers take every version in `readable`.
    static let version: UInt16 = 2
    /// The version tombstones are written in: 3 gave a tombstone a payload,
    /// the pruned segment's sealed header and tag (`SealedHeaderCopy`).
    /// Other objects are the same in versions 2 and 3 and are written as 2.
    static let tombstoneVersion: UInt16 = 3
    static let readable: ClosedRange<UInt16> = 1...3
    /// Largest sealed header a segment object or a tombstone may declare
    /// (the wire format's is about 66 KB; this bound only keeps a damaged
    /// length from allocating much).
    static let sealedHeaderBytesMax = 1 << 20
    static let fixedBytes = 66          // up to and including the disk id length
    static let minHeaderBytes = 66 + 1 + 4 + 32
    static let headerBytesMax = 16 << 20
    static let payloadBytesMax: UInt64 = 1 << 30
    static let diskIDBytesMax = 255
    static let stringBytesMax = 4096
    /// The disk geometry a disk record may hold: the bounds of the wire
    /// format (`DiskGeometry` in TidemarkWire, docs/wire-format.md section
    /// 6; the process server's tests check both agree). A record outside
    /// them (an older server stored what it was sent) is refused as corrupt
    /// when read, before anything is computed from it.
    public static let chunkSizeBytesMin: UInt32 = 4 << 10
    public static let chunkSizeBytesMax: UInt32 = 1 << 20
    public static let diskSizeBytesMax: UInt64 = 256 << 40
}

struct Envelope: Equatable {
    var kind: ObjectKind
    var diskID: String
    var sequence: UInt64
    var version: UInt16
    var payloadLength: UInt64
    /// The 32-byte payload checksum field (`ObjectDigest.payload` of `version`).
    var payloadChecksum: [UInt8]
    var metadata: [UInt8]
    var headerLength: Int

    /// Encodes the header for `payload` (the payload itself is written after it).
    static func encodeHeader(kind: ObjectKind, diskID: String, sequence: UInt64, metadata: [UInt8],
                             payload: UnsafeRawBufferPointer, version: UInt16 = EnvelopeFormat.version) -> [UInt8] {
        let id = Array(diskID.utf8)
        precondition(!id.isEmpty && id.count <= EnvelopeFormat.diskIDBytesMax)
        precondition(version >= 2 && EnvelopeFormat.readable.contains(version), "Envelope: writers write version 2 or later")
        var w = ByteWriter()
        w.raw(EnvelopeFormat.magic)
        w.u16(version)
        w.u8(kind.rawValue)
        w.u8(0)
        w.u32(UInt32(headerBytes(diskID: diskID, metadataCount: metadata.count)))
        w.u64(sequence)
        w.u64(UInt64(payload.count))
        w.raw(ObjectDigest.payload(payload, version: version))
        w.u16(UInt16(id.count))
        w.raw(id)
        w.u32(UInt32(metadata.count))
        w.raw(metadata)
        w.raw(ObjectDigest.sha256(w.bytes))
        return w.bytes
    }

    /// The length of the header `encodeHeader` makes for this disk id and metadata length.
    static func headerBytes(diskID: String, metadataCount: Int) -> Int {
        EnvelopeFormat.minHeaderBytes - 1 + diskID.utf8.count + metadataCount
    }

    /// The header length stored in a prefix of at least 16 bytes.
    static func headerLength(prefix: UnsafeRawBufferPointer) -> Int {
        Int(LittleEndian.load(prefix, at: 12, as: UInt32.self))
    }

    /// Decodes and verifies a header. `header` holds at least the header
    /// bytes; `objectSize` is the object's size on storage. Every check
    /// names the object and what is wrong.
    static func decode(_ header: UnsafeRawBufferPointer, objectSize: UInt64, path: String,
                       kind expectedKind: ObjectKind, diskID expectedDisk: String,
                       sequence expectedSequence: UInt64) throws -> Envelope {
        func corrupt(_ what: String) -> TidemarkError {
            TidemarkError(.corrupt, "\(path): \(what)",
                          hint: "the object is damaged or misplaced; it is not used. Restore it from a copy, or treat its sequence as lost")
        }
        guard objectSize >= UInt64(EnvelopeFormat.minHeaderBytes) else {
            throw corrupt("truncated: \(objectSize) bytes, shorter than the smallest envelope (\(EnvelopeFormat.minHeaderBytes))")
        }
        guard header.count >= EnvelopeFormat.fixedBytes else { throw corrupt("truncated header") }
        guard Array(header[0..<8]) == EnvelopeFormat.magic else { throw corrupt("bad magic (not a Tidemark target object)") }
        let version = LittleEndian.load(header, at: 8, as: UInt16.self)
        guard EnvelopeFormat.readable.contains(version) else {
            throw TidemarkError(.unsupported, "\(path): envelope format version \(version); this build reads versions \(EnvelopeFormat.readable.lowerBound) to \(EnvelopeFormat.readable.upperBound)",
                                hint: "use a Tidemark release that knows this layout version")
        }
        let h = Int(LittleEndian.load(header, at: 12, as: UInt32.self))
        guard h >= EnvelopeFormat.minHeaderBytes, h <= EnvelopeFormat.headerBytesMax else {
            throw corrupt("header length \(h) out of range")
        }
        guard UInt64(h) <= objectSize else { throw corrupt("truncated: header says \(h) header bytes, object has \(objectSize)") }
        guard header.count >= h else { throw corrupt("truncated header") }
        let stored = Array(header[(h - 32)..<h])
        let computed = ObjectDigest.sha256(UnsafeRawBufferPointer(rebasing: header[0..<(h - 32)]))
        guard stored == computed else { throw corrupt("header checksum mismatch (stored \(stored.hexString.prefix(16))…, computed \(computed.hexString.prefix(16))…)") }
        guard let kind = ObjectKind(rawValue: header[10]) else { throw corrupt("unknown object kind \(header[10])") }
        guard header[11] == 0 else { throw corrupt("reserved byte 11 is \(header[11]), not 0") }
        let sequence = LittleEndian.load(header, at: 16, as: UInt64.self)
        let payloadLength = LittleEndian.load(header, at: 24, as: UInt64.self)
        let digest = Array(header[32..<64])
        guard version == 1 || digest[16..<32].allSatisfy({ $0 == 0 }) else { throw corrupt("reserved bytes 48-63 are not 0") }
        let d = Int(LittleEndian.load(header, at: 64, as: UInt16.self))
        guard d >= 1, d <= EnvelopeFormat.diskIDBytesMax, 66 + d + 4 + 32 <= h else { throw corrupt("disk id length \(d) out of range") }
        guard let diskID = String(validating: Array(header[66..<(66 + d)]), as: UTF8.self) else { throw corrupt("disk id is not UTF-8") }
        let m = Int(LittleEndian.load(header, at: 66 + d, as: UInt32.self))
        guard 70 + d + m + 32 == h else { throw corrupt("metadata length \(m) does not fit header length \(h)") }
        let metadata = Array(header[(70 + d)..<(70 + d + m)])
        guard kind == expectedKind else { throw corrupt("holds a \(kind), expected a \(expectedKind)") }
        guard diskID == expectedDisk else { throw corrupt("belongs to disk '\(diskID)', expected disk '\(expectedDisk)'") }
        guard sequence == expectedSequence else { throw corrupt("holds sequence \(sequence), expected \(expectedSequence)") }
        guard payloadLength <= EnvelopeFormat.payloadBytesMax else { throw corrupt("payload length \(payloadLength) out of range") }
        guard UInt64(h) + payloadLength == objectSize else {
            throw corrupt(UInt64(h) + payloadLength > objectSize
                ? "truncated: \(objectSize) bytes, envelope says \(UInt64(h) + payloadLength)"
                : "\(objectSize - UInt64(h) - payloadLength) trailing bytes after the payload")
        }
        return Envelope(kind: kind, diskID: diskID, sequence: sequence, version: version, payloadLength: payloadLength,
                        payloadChecksum: digest, metadata: metadata, headerLength: h)
    }
}

// MARK: - Per-kind metadata

enum Metadata {
    static func encodeDisk(_ d: DiskRecord) -> [UInt8] {
        var w = ByteWriter()
        w.u64(d.sizeBytes)
        w.u32(d.chunkSizeBytes)
        w.u64(d.keyID)
        w.string(d.ownerAgentID)
        return w.bytes
    }

    static func decodeDisk(_ m: [UInt8], diskID: String, path: String) throws -> DiskRecord {
        var r = MetadataReader(m, path: path)
        let size = try r.u64(), chunk = try r.u32(), key = try r.u64(), owner = try r.string()
        try r.end()
        guard chunk >= EnvelopeFormat.chunkSizeBytesMin, chunk <= EnvelopeFormat.chunkSizeBytesMax, chunk.nonzeroBitCount == 1 else {
            throw r.corrupt("disk record: chunk size \(chunk) is not a power of two from \(EnvelopeFormat.chunkSizeBytesMin) to \(EnvelopeFormat.chunkSizeBytesMax) bytes")
        }
        guard size >= 1, size <= EnvelopeFormat.diskSizeBytesMax else {
            throw r.corrupt("disk record: disk size \(size) is not 1 to \(EnvelopeFormat.diskSizeBytesMax) bytes")
        }
        return DiskRecord(diskID: diskID, ownerAgentID: owner, sizeBytes: size, chunkSizeBytes: chunk, keyID: key)
    }

    static func encodePoint(_ p: PointRecord, into w: inout ByteWriter) {
        w.string(p.id)
        w.string(p.pointClass)
        w.u64(UInt64(bitPattern: p.timeUnixMs))
        w.u64(p.sequence)
    }

    static func decodePoint(_ r: inout MetadataReader, diskID: String) throws -> PointRecord {
        let id = try r.string(), cls = try r.string()
        let time = Int64(bitPattern: try r.u64()), seq = try r.u64()
        return PointRecord(id: id, diskID: diskID, pointClass: cls, timeUnixMs: time, sequence: seq)
    }

    static func encodeSegment(extents: [TargetExtent], point: PointRecord?, into w: inout ByteWriter) {
        w.u32(UInt32(extents.count))
        for e in extents {
            w.u64(e.offset)
            w.u64(e.length)
            w.u8(e.zero ? 1 : 0)
        }
        if let point {
            w.u8(1)
            encodePoint(point, into: &w)
        } else {
            w.u8(0)
        }
    }

    static func decodeSegment(_ r: inout MetadataReader, diskID: String) throws -> ([TargetExtent], PointRecord?) {
        let n = Int(try r.u32())
        guard n <= r.remaining / 17 else { throw r.corrupt("extent count \(n) exceeds the metadata") }
        var extents = [TargetExtent]()
        extents.reserveCapacity(n)
        for _ in 0..<n {
            let off = try r.u64(), len = try r.u64(), flags = try r.u8()
            guard flags <= 1 else { throw r.corrupt("extent flags \(flags) (only bit 0, zero, is defined)") }
            extents.append(TargetExtent(offset: off, length: len, zero: flags == 1))
        }
        let has = try r.u8()
        guard has <= 1 else { throw r.corrupt("point flag \(has)") }
        return (extents, has == 1 ? try decodePoint(&r, diskID: diskID) : nil)
    }

    static func encodeSegment(extents: [TargetExtent], point: PointRecord?) -> [UInt8] {
        var w = ByteWriter()
        encodeSegment(extents: extents, point: point, into: &w)
        return w.bytes
    }

    static func encodePointManifest(_ p: PointRecord) -> [UInt8] {
        var w = ByteWriter()
        encodePoint(p, into: &w)
        return w.bytes
    }

    static func encodeTombstone(_ s: StoredSegment, prunedAtUnixMs: Int64, deadAt: UInt64) -> [UInt8] {
        var w = ByteWriter()
        w.u64(UInt64(bitPattern: prunedAtUnixMs))
        w.u64(deadAt)
        w.u64(s.payloadLength)
        w.raw(s.payloadChecksum)
        w.u16(s.checksumVersion)  // since envelope version 2
        encodeSegment(extents: s.extents, point: s.point, into: &w)
        return w.bytes
    }
}

// MARK: - Metadata strings and the metadata reader

extension ByteWriter {
    /// u16 length, then UTF-8 bytes (a metadata string).
    mutating func string(_ s: String) {
        let b = Array(s.utf8)
        precondition(b.count <= EnvelopeFormat.stringBytesMax)
        u16(UInt16(b.count))
        raw(b)
    }
}

/// Reads the per-kind metadata of an envelope: the fields `Metadata`
/// writes, little-endian through `LittleEndian` (the one byte codec), over
/// an array it owns, so a reader can be handed from one decoding function
/// to the next. Every read checks the bytes left and throws `.corrupt`
/// naming the object's path. One thread; holds the metadata bytes only.
struct MetadataReader {
    let data: [UInt8]
    let path: String
    var at = 0

    init(_ data: [UInt8], path: String) {
        self.data = data
        self.path = path
    }

    var remaining: Int { data.count - at }

    func corrupt(_ what: String) -> TidemarkError {
        TidemarkError(.corrupt, "\(path): metadata: \(what)",
                      hint: "the object is damaged or was written by an incompatible tool; it is not used")
    }

    private mutating func advance(_ n: Int) throws -> Int {
        guard n >= 0, n <= remaining else { throw corrupt("truncated at byte \(at) (need \(n), have \(remaining))") }
        defer { at += n }
        return at
    }

    private mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        let from = try advance(n)
        return data[from..<(from + n)]
    }

    private mutating func le<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let from = try advance(MemoryLayout<T>.size)
        return LittleEndian.load(data, at: from, as: T.self)
    }

    mutating func u8() throws -> UInt8 { try take(1).first! }
    mutating func u16() throws -> UInt16 { try le(UInt16.self) }
    mutating func u32() throws -> UInt32 { try le(UInt32.self) }
    mutating func u64() throws -> UInt64 { try le(UInt64.self) }
    mutating func bytes(_ n: Int) throws -> [UInt8] { Array(try take(n)) }
    mutating func string() throws -> String {
        let n = Int(try u16())
        guard let s = String(validating: Array(try take(n)), as: UTF8.self) else { throw corrupt("string is not UTF-8") }
        return s
    }
    func end() throws {
        guard remaining == 0 else { throw corrupt("\(remaining) unexpected trailing bytes") }
    }
}
