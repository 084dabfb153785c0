import TidemarkSystem

/// A protected disk as target storage knows it. Stored once per disk
/// (first writer wins) and never changed.
public struct DiskRecord: Codable, Equatable, Sendable {
    public var diskID: String
    public var ownerAgentID: String
    public var sizeBytes: UInt64
    public var chunkSizeBytes: UInt32
    public var keyID: UInt64

    public init(diskID: String, ownerAgentID: String, sizeBytes: UInt64, chunkSizeBytes: UInt32, keyID: UInt64) {
        self.diskID = diskID
        self.ownerAgentID = ownerAgentID
        self.sizeBytes = sizeBytes
        self.chunkSizeBytes = chunkSizeBytes
        self.keyID = keyID
    }
}

/// One extent of a segment, in plaintext metadata: `length` bytes at
/// `offset` of the disk, either data (carried, sealed, in the segment) or
/// zeros (no payload).
public struct TargetExtent: Equatable, Sendable {
    public var offset: UInt64
    public var length: UInt64
    public var zero: Bool

    public init(offset: UInt64, length: UInt64, zero: Bool) {
        self.offset = offset
        self.length = length
        self.zero = zero
    }

    public var end: UInt64 { offset + length }
}

/// A recovery point: applying every segment with sequence <= `sequence`, in
/// order, onto a zero image gives the disk as it was at the point.
public struct PointRecord: Codable, Equatable, Sendable {
    public var id: String
    public var diskID: String
    /// "crash-consistent", "app-consistent", "unverified", ...: stored as given.
    public var pointClass: String
    public var timeUnixMs: Int64
    public var sequence: UInt64

    public init(id: String, diskID: String, pointClass: String, timeUnixMs: Int64, sequence: UInt64) {
        self.id = id
        self.diskID = diskID
        self.pointClass = pointClass
        self.timeUnixMs = timeUnixMs
        self.sequence = sequence
    }
}

/// What the target holds for one sequence of a disk.
public struct StoredSegment: Equatable, Sendable {
    public var sequence: UInt64
    public var extents: [TargetExtent]
    public var point: PointRecord?
    /// Length and checksum of the opaque segment bytes (the sealed blob):
    /// the envelope's 32-byte payload checksum field, computed as envelope
    /// version `checksumVersion` defines it (docs/target-layout.md section 3).
    public var payloadLength: UInt64
    public var payloadChecksum: [UInt8]
    public var checksumVersion: UInt16
    /// True when only a tombstone is left: the bytes were pruned.
    public var pruned: Bool
    /// For a pruned segment: the point sequence at which every one of its
    /// chunks was overwritten (it is not needed by any point at or above it).
    public var deadAtSequence: UInt64?
    /// For a pruned segment: the copy of its sealed header and tag its
    /// tombstone keeps (envelope version 3); nil for an older tombstone.
    /// Not read for a stored segment (`sealedHeaderCopy` reads it).
    public var sealedHeaderCopy: SealedHeaderCopy? = nil
}

/// A sealed segment's header and GCM tag, without the ciphertext between
/// them: what a reader holding the replication key needs to prove the
/// header (format 4 carries a header MAC; docs/wire-format.md 4.6), and
/// what a tombstone keeps of the segment it stands for. Target storage
/// treats both as opaque bytes; it knows only that the sealed header's
/// length is the u32 at its byte 8 and that the tag is the segment's last
/// 16 bytes.
public struct SealedHeaderCopy: Equatable, Sendable {
    public static let tagBytes = 16
    /// The sealed header length field's offset, and the bytes needed to read it.
    static let headerLengthOffset = 8
    static let prefixBytes = 12

    /// The sealed header, all of its bytes.
    public var header: [UInt8]
    /// The segment's last 16 bytes (its GCM tag).
    public var tag: [UInt8]
    /// The whole sealed segment's length, in bytes.
    public var segmentBytes: UInt64

    /// The header length a sealed segment's first bytes declare.
    static func declaredHeaderBytes(_ prefix: UnsafeRawBufferPointer) -> Int {
        Int(ByteReader.loadU32(prefix, headerLengthOffset))
    }

    /// A tombstone's payload: header ‖ tag.
    var encoded: [UInt8] { header + tag }

    /// Decodes a tombstone's payload for a segment of `segmentBytes`.
    static func decode(_ payload: [UInt8], segmentBytes: UInt64, path: String) throws -> SealedHeaderCopy {
        func corrupt(_ what: String) -> TidemarkError {
            TidemarkError(.corrupt, "\(path): the sealed header copy \(what)", hint: "the tombstone is damaged; it is not used")
        }
        guard payload.count >= prefixBytes + tagBytes else { throw corrupt("is \(payload.count) bytes, too short") }
        let h = payload.withUnsafeBytes { declaredHeaderBytes($0) }
        guard h >= prefixBytes, h + tagBytes == payload.count else {
            throw corrupt("declares a \(h)-byte header in \(payload.count) bytes (header + \(tagBytes)-byte tag)")
        }
        guard UInt64(payload.count) <= segmentBytes else { throw corrupt("is longer than the \(segmentBytes)-byte segment it copies") }
        return SealedHeaderCopy(header: Array(payload[0..<h]), tag: Array(payload[h...]), segmentBytes: segmentBytes)
    }
}

/// The outcome of `TargetRepository.prune`.
public struct PruneReport: Equatable, Sendable {
    public var diskID: String
    /// Points whose manifests were removed.
    public var expiredPoints: [PointRecord]
    /// Points kept (every point at or above `oldestRetainedSequence`).
    public var retainedPoints: [PointRecord]
    /// The sequence of the oldest retained point; nil when the disk has no
    /// complete point (nothing is pruned then).
    public var oldestRetainedSequence: UInt64?
    /// Segments at or below `oldestRetainedSequence` that were looked at.
    public var segmentsExamined: Int
    /// Segments replaced by tombstones (their bytes deleted).
    public var segmentsPruned: Int
    /// Examined segments kept because part of them is still live.
    public var segmentsKept: Int
    /// Size of the deleted segment objects, in bytes (before tombstones).
    public var bytesFreed: UInt64
    /// Size of the tombstones written, in bytes.
    public var tombstoneBytes: UInt64

    public var pointsExpired: Int { expiredPoints.count }
}

/// One segment to store with `TargetRepository.putSegments`: what
/// `putSegment` takes, the payload owned: an array, or a `StagedSegment`
/// (written from its aligned buffer, with O_DIRECT in a local store).
public struct SegmentPut: Sendable {
    public var diskID: String
    public var sequence: UInt64
    public var extents: [TargetExtent]
    public var point: PointRecord?
    public var bytes: [UInt8]
    public var staged: StagedSegment?

    public init(diskID: String, sequence: UInt64, extents: [TargetExtent], point: PointRecord?, bytes: [UInt8]) {
        self.diskID = diskID
        self.sequence = sequence
        self.extents = extents
        self.point = point
        self.bytes = bytes
        self.staged = nil
    }

    /// A put whose payload is `staged`, staged for these same extents and point.
    public init(diskID: String, sequence: UInt64, extents: [TargetExtent], point: PointRecord?, staged: StagedSegment) {
        self.init(diskID: diskID, sequence: sequence, extents: extents, point: point, bytes: [])
        self.staged = staged
    }

    public var payloadCount: Int { staged?.payloadCount ?? bytes.count }

    public func withPayload<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if let staged { return try body(staged.payload) }
        return try bytes.withUnsafeBytes(body)
    }
}
