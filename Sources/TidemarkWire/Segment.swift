import TidemarkSystem

/// Whether an extent's bytes travel in the payload (.data) or are zeros
/// (.zero, no payload).
public enum ExtentKind: UInt8, Sendable {
    case data = 0, zero = 1
}

/// A byte range of the disk carried by a segment.
public struct SegmentExtent: Equatable, Sendable {
    public var offset: UInt64
    public var length: UInt32
    public var kind: ExtentKind

    public init(offset: UInt64, length: UInt32, kind: ExtentKind) {
        self.offset = offset
        self.length = length
        self.kind = kind
    }
}

/// A data segment carries changed extents; a point segment marks a recovery
/// point: every segment up to and including it makes the point.
public enum SegmentKind: UInt8, Sendable {
    case data = 1, point = 2
}

public enum PointClass: String, Sendable, Codable, CaseIterable {
    case crashConsistent = "crash-consistent", appConsistent = "app-consistent", unverified

    /// The code in a segment header.
    var code: UInt8 {
        switch self {
        case .crashConsistent: 1
        case .appConsistent: 2
        case .unverified: 3
        }
    }

    init?(code: UInt8) {
        switch code {
        case 1: self = .crashConsistent
        case 2: self = .appConsistent
        case 3: self = .unverified
        default: return nil
        }
    }
}

/// The recovery point a point segment carries.
public struct PointTag: Equatable, Sendable {
    public var id: String
    public var pointClass: PointClass
    public var timeUnixMs: Int64

    public init(id: String, pointClass: PointClass, timeUnixMs: Int64) {
        self.id = id
        self.pointClass = pointClass
        self.timeUnixMs = timeUnixMs
    }
}

/// Constants of the segment format (docs/wire-format.md, "Segments").
public enum SegmentFormat {
    /// "TMSG".
    public static let magic: [UInt8] = [0x54, 0x4D, 0x53, 0x47]
    /// The version writers produce: 2 added the chunk digests after the
    /// extents; 3 has the same layout with digests of construction 3
    /// (`DigestConstruction`); 4 adds the header MAC at the end of the
    /// header (`SegmentHeaderMAC`), so that the header alone can be
    /// authenticated under the replication key (a tombstone keeps it).
    public static let version: UInt16 = 4
    /// Versions a reader accepts (version 1 segments carry no digests).
    public static let readableVersions: ClosedRange<UInt16> = 1...4
    /// The first version whose header carries a lineage and a header MAC.
    public static let headerMACVersion: UInt16 = 4
    /// Bytes of the header MAC (the last bytes of a version 4 header).
    public static let headerMACBytes = 16
    /// Bytes before the disk id.
    public static let fixedBytes = 76
    /// Bytes per extent entry.
    public static let extentBytes = 16
    /// Bytes per chunk digest (format version 2).
    public static let chunkDigestBytes = ChunkDigest.byteCount
    public static let nonceBytes = 12
    public static let tagBytes = 16
    /// Flag bit: the ciphertext decrypts to a zstd frame, not to the payload.
    static let flagCompressed: UInt8 = 1
}

/// The plaintext header of a sealed segment. Its encoding is the GCM
/// associated data, so every field is authenticated.
public struct SegmentHeader: Equatable, Sendable {
    public var kind: SegmentKind
    public var diskID: String
    public var keyID: UInt64
    public var sequence: UInt64
    public var diskSizeBytes: UInt64
    public var chunkSizeBytes: UInt32
    /// The ciphertext decrypts to a zstd frame of the payload.
    public var compressed: Bool
    /// Payload bytes: the sum of the data extents' lengths.
    public var plainLength: UInt32
    /// Ciphertext bytes (without the tag): plainLength, or less when compressed.
    public var cipherLength: UInt32
    public var nonce: [UInt8]
    public var extents: [SegmentExtent]
    /// Present exactly when kind is .point.
    public var point: PointTag?
    /// The format version: 1 (no digests), 2 or 3 (digests, of the
    /// construction `DigestConstruction(segmentVersion:)` names).
    public var version: UInt16
    /// Version 2: one keyed digest per chunk of the data extents, in extent
    /// order (`ChunkDigester`); empty in version 1.
    public var chunkDigests: [ChunkDigest]
    /// Version 4: the header MAC as stored (`SegmentHeaderMAC`), checked by
    /// `SegmentHeaderMAC.verify`, not by `decode` (which holds no key);
    /// empty before version 4. `encode` writes zeros in its place: the
    /// sealer fills it in.
    public var headerMAC: [UInt8] = []
    /// Version 4: the epoch that sealed the segment (`SegmentLineage`); nil
    /// before version 4.
    public var lineage: SegmentLineage? = nil

    public init(kind: SegmentKind, diskID: String, keyID: UInt64, sequence: UInt64, diskSizeBytes: UInt64,
                chunkSizeBytes: UInt32, compressed: Bool, plainLength: UInt32, cipherLength: UInt32,
                nonce: [UInt8], extents: [SegmentExtent], point: PointTag?,
                version: UInt16 = SegmentFormat.version, chunkDigests: [ChunkDigest] = []) {
        self.version = version
        self.chunkDigests = chunkDigests
        self.kind = kind
        self.diskID = diskID
        self.keyID = keyID
        self.sequence = sequence
        self.diskSizeBytes = diskSizeBytes
        self.chunkSizeBytes = chunkSizeBytes
        self.compressed = compressed
        self.plainLength = plainLength
        self.cipherLength = cipherLength
        self.nonce = nonce
        self.extents = extents
        self.point = point
    }

    /// Bytes of the encoded header.
    public var encodedBytes: Int {
        SegmentFormat.fixedBytes + diskID.utf8.count + (point?.id.utf8.count ?? 0) + extents.count * SegmentFormat.extentBytes
            + chunkDigests.count * SegmentFormat.chunkDigestBytes + macBytes
    }

    /// Bytes of the lineage and the header MAC in this version's header (0 before version 4).
    var macBytes: Int { version >= SegmentFormat.headerMACVersion ? SegmentLineage.encodedBytes + SegmentFormat.headerMACBytes : 0 }

    /// The number of chunks the data extents cover: the digest count of a
    /// version 2 header.
    public static func dataChunkCount(_ extents: [SegmentExtent], chunkSizeBytes: UInt32) -> Int {
        let chunk = UInt64(chunkSizeBytes)
        return extents.reduce(0) { $0 + ($1.kind == .data ? Int((UInt64($1.length) + chunk - 1) / chunk) : 0) }
    }

    /// The data chunks of the extents, in extent order, paired with their
    /// digests (version 2; nil for version 1, which has none).
    public var dataChunkDigests: [(chunk: UInt64, digest: ChunkDigest)]? {
        guard version >= 2 else { return nil }
        let chunk = UInt64(chunkSizeBytes)
        var out: [(UInt64, ChunkDigest)] = []
        out.reserveCapacity(chunkDigests.count)
        var i = 0
        for e in extents where e.kind == .data {
            var c = e.offset / chunk
            while c * chunk < e.offset + UInt64(e.length) {
                out.append((c, chunkDigests[i]))
                i += 1
                c += 1
            }
        }
        return out
    }

    /// Sum of the data extents' lengths.
    public var dataBytes: UInt64 {
        extents.reduce(0) { $0 + ($1.kind == .data ? UInt64($1.length) : 0) }
    }

    /// The encoding (docs/wire-format.md, "Segment header"). The caller has
    /// validated the fields (`validate`).
    func encode() -> [UInt8] {
        var w = ByteWriter(capacity: encodedBytes)
        w.raw(SegmentFormat.magic)
        w.u16(version)
        w.u8(kind.rawValue)
        w.u8(compressed ? SegmentFormat.flagCompressed : 0)
        w.u32(UInt32(encodedBytes))
        w.u32(plainLength)
        w.u32(cipherLength)
        w.u32(UInt32(extents.count))
        w.u64(keyID)
        w.u64(sequence)
        w.u64(diskSizeBytes)
        w.u32(chunkSizeBytes)
        w.raw(nonce)
        w.u8(UInt8(diskID.utf8.count))
        w.u8(UInt8(point?.id.utf8.count ?? 0))
        w.u8(point?.pointClass.code ?? 0)
        w.u8(0)
        w.i64(point?.timeUnixMs ?? 0)
        w.raw(diskID.utf8)
        if let point { w.raw(point.id.utf8) }
        for e in extents {
            w.u64(e.offset)
            w.u32(e.length)
            w.u8(e.kind.rawValue)
            w.zeros(3)
        }
        for d in chunkDigests { w.u64(d.low); w.u64(d.high) }
        if version >= SegmentFormat.headerMACVersion {
            (lineage ?? .single).encode(into: &w)
            w.zeros(SegmentFormat.headerMACBytes)
        }
        assert(w.bytes.count == encodedBytes)
        return w.bytes
    }

    /// The header length a segment's fixed header declares (its first
    /// `SegmentFormat.fixedBytes` bytes), so a reader knows how much of a
    /// segment to read before `decode(_:segmentBytes:)`. Checks the magic
    /// and the bounds only; .corrupt when they are wrong.
    public static func declaredHeaderBytes(_ fixed: UnsafeRawBufferPointer) throws -> Int {
        guard fixed.count >= SegmentFormat.fixedBytes else {
            throw TidemarkError(.corrupt, "segment is \(fixed.count) bytes, shorter than the \(SegmentFormat.fixedBytes)-byte fixed header")
        }
        var r = ByteReader(fixed, what: "segment header")
        guard try r.bytes(4, "magic") == SegmentFormat.magic else {
            throw TidemarkError(.corrupt, "not a Tidemark segment (bad magic)")
        }
        _ = try r.bytes(4, "version, kind, flags")
        let headerLength = Int(try r.u32("header length"))
        guard headerLength >= SegmentFormat.fixedBytes && headerLength <= WireLimits.segmentHeaderBytesMax else {
            throw TidemarkError(.corrupt, "segment header: header length \(headerLength) is outside \(SegmentFormat.fixedBytes)...\(WireLimits.segmentHeaderBytesMax)")
        }
        return headerLength
    }

    /// Decodes and validates the header at the start of a sealed segment,
    /// and checks that the segment is exactly header + ciphertext + tag long.
    /// Every length is checked against WireLimits and the bytes present
    /// before anything is allocated; malformed input throws .corrupt.
    /// With `segmentBytes`, `segment` may hold only the header (its first
    /// bytes, at least the declared header length) of a segment that long.
    public static func decode(_ segment: UnsafeRawBufferPointer, segmentBytes: Int? = nil) throws -> (SegmentHeader, headerBytes: Int) {
        // The fixed header's size, magic and header length bounds.
        _ = try declaredHeaderBytes(segment)
        let segmentCount = segmentBytes ?? segment.count
        var r = ByteReader(segment, what: "segment header")
        _ = try r.bytes(4, "magic")
        let version = try r.u16("version")
        guard SegmentFormat.readableVersions.contains(version) else {
            throw TidemarkError(.corrupt, "segment format version \(version) is not supported (this build reads versions \(SegmentFormat.readableVersions.lowerBound) to \(SegmentFormat.readableVersions.upperBound))",
                                hint: "upgrade Tidemark on this side")
        }
        let kindRaw = try r.u8("kind")
        guard let kind = SegmentKind(rawValue: kindRaw) else {
            throw TidemarkError(.corrupt, "segment header: unknown segment kind \(kindRaw)")
        }
        let flags = try r.u8("flags")
        guard flags & ~SegmentFormat.flagCompressed == 0 else {
            throw TidemarkError(.corrupt, "segment header: unknown flags 0x\(String(flags, radix: 16))")
        }
        let headerLength = Int(try r.u32("header length"))
        let plainLength = try r.u32("plain length")
        let cipherLength = try r.u32("cipher length")
        let extentCount = Int(try r.u32("extent count"))
        let keyID = try r.u64("key id")
        let sequence = try r.u64("sequence")
        let diskSize = try r.u64("disk size")
        let chunkSize = try r.u32("chunk size")
        let nonce = try r.bytes(SegmentFormat.nonceBytes, "nonce")
        let diskIDLength = Int(try r.u8("disk id length"))
        let pointIDLength = Int(try r.u8("point id length"))
        let pointClassCode = try r.u8("point class")
        let reserved = try r.u8("reserved")
        let pointTime = try r.i64("point time")
        assert(r.offset == SegmentFormat.fixedBytes)

        guard reserved == 0 else { throw TidemarkError(.corrupt, "segment header: reserved byte is \(reserved), not 0") }
        guard extentCount <= WireLimits.extentsPerSegmentMax else {
            throw TidemarkError(.corrupt, "segment header: \(extentCount) extents, more than the limit \(WireLimits.extentsPerSegmentMax)")
        }
        // Version 2 adds the digests, whose count follows from the extents:
        // the exact check waits until they are decoded.
        let expectedHeader = SegmentFormat.fixedBytes + diskIDLength + pointIDLength + extentCount * SegmentFormat.extentBytes
        guard version >= 2 ? (headerLength >= expectedHeader && headerLength <= WireLimits.segmentHeaderBytesMax) : headerLength == expectedHeader else {
            throw TidemarkError(.corrupt, "segment header: header length \(headerLength) does not match its fields (\(expectedHeader))")
        }
        guard Int(plainLength) <= WireLimits.segmentPayloadBytesMax else {
            throw TidemarkError(.corrupt, "segment header: payload of \(plainLength) bytes exceeds the limit \(WireLimits.segmentPayloadBytesMax)")
        }
        let compressed = flags & SegmentFormat.flagCompressed != 0
        if compressed {
            guard cipherLength < plainLength else {
                throw TidemarkError(.corrupt, "segment header: compressed length \(cipherLength) is not smaller than the payload (\(plainLength))")
            }
        } else {
            guard cipherLength == plainLength else {
                throw TidemarkError(.corrupt, "segment header: uncompressed, but cipher length \(cipherLength) differs from payload length \(plainLength)")
            }
        }
        let total = headerLength + Int(cipherLength) + SegmentFormat.tagBytes
        guard segmentCount == total else {
            throw TidemarkError(.corrupt, "segment is \(segmentCount) bytes; its header says \(total) (header \(headerLength) + ciphertext \(cipherLength) + tag \(SegmentFormat.tagBytes))")
        }
        guard chunkSize > 0 else { throw TidemarkError(.corrupt, "segment header: chunk size is 0") }
        guard diskIDLength > 0 else { throw TidemarkError(.corrupt, "segment header: empty disk id") }
        let diskID = try r.string(diskIDLength, "disk id")
        try checkDecodedIdentifier(diskID, "disk id", in: "segment header")

        var point: PointTag? = nil
        switch kind {
        case .data:
            guard pointIDLength == 0, pointClassCode == 0, pointTime == 0 else {
                throw TidemarkError(.corrupt, "segment header: a data segment carries point fields")
            }
        case .point:
            guard pointIDLength > 0 else { throw TidemarkError(.corrupt, "segment header: a point segment without a point id") }
            guard let pc = PointClass(code: pointClassCode) else {
                throw TidemarkError(.corrupt, "segment header: unknown point class \(pointClassCode)")
            }
            let pid = try r.string(pointIDLength, "point id")
            try checkDecodedIdentifier(pid, "point id", in: "segment header")
            point = PointTag(id: pid, pointClass: pc, timeUnixMs: pointTime)
        }

        var extents: [SegmentExtent] = []
        extents.reserveCapacity(extentCount)  // bounded by the limit checked above
        var dataBytes: UInt64 = 0
        var end: UInt64 = 0
        for i in 0..<extentCount {
            let offset = try r.u64("extent \(i) offset")
            let length = try r.u32("extent \(i) length")
            let kindCode = try r.u8("extent \(i) kind")
            let pad = try r.bytes(3, "extent \(i) padding")
            guard let ek = ExtentKind(rawValue: kindCode) else {
                throw TidemarkError(.corrupt, "segment header: extent \(i) has unknown kind \(kindCode)")
            }
            guard pad == [0, 0, 0] else { throw TidemarkError(.corrupt, "segment header: extent \(i) padding is not zero") }
            let e = SegmentExtent(offset: offset, length: length, kind: ek)
            try checkExtent(e, index: i, previousEnd: end, diskSizeBytes: diskSize, error: .corrupt)
            if version >= 2 { try checkChunkAligned(e, index: i, chunkSizeBytes: chunkSize, diskSizeBytes: diskSize, error: .corrupt) }
            end = offset + UInt64(length)
            if ek == .data { dataBytes += UInt64(length) }
            extents.append(e)
        }
        var digests: [ChunkDigest] = []
        if version >= 2 {
            let n = dataChunkCount(extents, chunkSizeBytes: chunkSize)
            guard n <= WireLimits.chunkDigestsPerSegmentMax else {
                throw TidemarkError(.corrupt, "segment header: data extents cover \(n) chunks, more than the limit \(WireLimits.chunkDigestsPerSegmentMax)")
            }
            let mac = version >= SegmentFormat.headerMACVersion ? SegmentLineage.encodedBytes + SegmentFormat.headerMACBytes : 0
            guard headerLength == expectedHeader + n * SegmentFormat.chunkDigestBytes + mac else {
                throw TidemarkError(.corrupt, "segment header: header length \(headerLength) does not match its fields (\(expectedHeader + n * SegmentFormat.chunkDigestBytes + mac) with \(n) chunk digests\(mac > 0 ? ", the lineage and the header MAC" : ""))")
            }
            digests.reserveCapacity(n)  // bounded by the limit checked above
            for i in 0..<n {
                let low = try r.u64("chunk digest \(i)")
                digests.append(ChunkDigest(low: low, high: try r.u64("chunk digest \(i)")))
            }
        }
        var headerMAC: [UInt8] = []
        var lineage: SegmentLineage? = nil
        if version >= SegmentFormat.headerMACVersion {
            lineage = try SegmentLineage.decode(&r, sequence: sequence)
            headerMAC = try r.bytes(SegmentFormat.headerMACBytes, "header MAC")
        }
        try r.need(0, "end")
        guard r.offset == headerLength else {
            throw TidemarkError(.corrupt, "segment header: fields end at \(r.offset), header length says \(headerLength)")
        }
        guard dataBytes == UInt64(plainLength) else {
            throw TidemarkError(.corrupt, "segment header: data extents hold \(dataBytes) bytes, payload length is \(plainLength)")
        }
        let h = SegmentHeader(kind: kind, diskID: diskID, keyID: keyID, sequence: sequence, diskSizeBytes: diskSize,
                              chunkSizeBytes: chunkSize, compressed: compressed, plainLength: plainLength,
                              cipherLength: cipherLength, nonce: nonce, extents: extents, point: point,
                              version: version, chunkDigests: digests)
        var withMAC = h
        withMAC.headerMAC = headerMAC
        withMAC.lineage = lineage
        return (withMAC, headerLength)
    }

    /// Version 2: an extent starts on a chunk boundary and spans whole
    /// chunks (the disk's last chunk may be short), so each chunk of a data
    /// extent has exactly one digest.
    static func checkChunkAligned(_ e: SegmentExtent, index i: Int, chunkSizeBytes: UInt32, diskSizeBytes: UInt64,
                                  error kind: TidemarkError.Kind) throws {
        let chunk = UInt64(chunkSizeBytes)
        let end = e.offset + UInt64(e.length)
        guard e.offset % chunk == 0, UInt64(e.length) % chunk == 0 || end == diskSizeBytes else {
            throw TidemarkError(kind, "segment extent \(i) [\(e.offset), +\(e.length)) is not aligned to the chunk size \(chunkSizeBytes); format version 2 carries one digest per chunk")
        }
    }

    /// The rules on one extent, shared by the sealer (.invalidArgument) and
    /// the decoder (.corrupt): non-empty, inside the disk, in increasing
    /// offset order without overlap.
    static func checkExtent(_ e: SegmentExtent, index i: Int, previousEnd: UInt64, diskSizeBytes: UInt64,
                            error kind: TidemarkError.Kind) throws {
        guard e.length > 0 else {
            throw TidemarkError(kind, "segment extent \(i) at offset \(e.offset) is empty")
        }
        let (end, overflow) = e.offset.addingReportingOverflow(UInt64(e.length))
        guard !overflow, end <= diskSizeBytes else {
            throw TidemarkError(kind, "segment extent \(i) [\(e.offset), +\(e.length)) lies beyond the disk size \(diskSizeBytes)")
        }
        guard e.offset >= previousEnd else {
            throw TidemarkError(kind, "segment extent \(i) at offset \(e.offset) overlaps or precedes the previous extent (ending at \(previousEnd)); extents must be in increasing offset order")
        }
    }
}
