import TidemarkCompression
import TidemarkCrypto
import TidemarkSystem

/// Seals segments: zstd (skipped when it does not shrink), then AES-256-GCM
/// with the encoded header as associated data and a fresh random 96-bit
/// nonce per segment. Random nonces collide with probability about
/// n²/2^97 after n segments: rotate the replication key well before 2^32
/// segments (docs/wire-format.md, "Nonces").
///
/// Not thread-safe: one per worker thread (it reuses its zstd and EVP
/// contexts and a compression buffer).
public final class SegmentSealer: @unchecked Sendable {
    public let key: ReplicationKey
    /// The zstd level `seal` uses unless told otherwise; 0 = no compression
    /// (zstd's own level 0 means its default, 3: it is never passed on).
    public let compressionLevel: Int32
    private let gcm: AES256GCM
    private let zstd: ZstdCompressor
    private let headerMAC: SegmentHeaderMAC
    private var scratch: [UInt8] = []

    public init(key: ReplicationKey, compressionLevel: Int32) throws {
        self.key = key
        self.compressionLevel = compressionLevel
        self.headerMAC = SegmentHeaderMAC(key: key)
        self.gcm = try AES256GCM(key: key.bytes)
        self.zstd = try ZstdCompressor(level: compressionLevel == 0 ? 1 : compressionLevel)
    }

    /// payload = the bytes of the .data extents, concatenated in extent order.
    /// Returns the sealed segment: header ‖ ciphertext ‖ tag. Format version
    /// 2 (the default) computes the chunk digests from the payload and
    /// requires chunk-aligned extents; version 1 exists only so that tests
    /// and tools can produce segments of the older format.
    public func seal(kind: SegmentKind, diskID: String, sequence: UInt64, diskSizeBytes: UInt64, chunkSizeBytes: UInt32,
                     extents: [SegmentExtent], payload: UnsafeRawBufferPointer, point: PointTag?,
                     lineage: SegmentLineage = .single,
                     formatVersion: UInt16 = SegmentFormat.version, compressionLevel: Int32? = nil) throws -> [UInt8] {
        guard SegmentFormat.readableVersions.contains(formatVersion) else {
            throw TidemarkError(.invalidArgument, "segment format version \(formatVersion) is not one this build writes (\(SegmentFormat.readableVersions))")
        }
        try checkIdentifier(diskID, "disk id")
        guard chunkSizeBytes > 0 else { throw TidemarkError(.invalidArgument, "chunk size 0 for disk \(diskID)") }
        if formatVersion >= SegmentFormat.headerMACVersion { try lineage.check(sequence: sequence, .invalidArgument) }
        switch (kind, point) {
        case (.data, nil): break
        case (.data, .some): throw TidemarkError(.invalidArgument, "a data segment cannot carry a recovery point; use kind .point")
        case (.point, nil): throw TidemarkError(.invalidArgument, "a point segment needs its recovery point tag")
        case (.point, .some(let p)): try checkIdentifier(p.id, "recovery point id")
        }
        guard extents.count <= WireLimits.extentsPerSegmentMax else {
            throw TidemarkError(.invalidArgument, "\(extents.count) extents in one segment; the limit is \(WireLimits.extentsPerSegmentMax)")
        }
        var end: UInt64 = 0
        var dataBytes: UInt64 = 0
        for (i, e) in extents.enumerated() {
            try SegmentHeader.checkExtent(e, index: i, previousEnd: end, diskSizeBytes: diskSizeBytes, error: .invalidArgument)
            if formatVersion >= 2 {
                try SegmentHeader.checkChunkAligned(e, index: i, chunkSizeBytes: chunkSizeBytes, diskSizeBytes: diskSizeBytes, error: .invalidArgument)
            }
            end = e.offset + UInt64(e.length)
            if e.kind == .data { dataBytes += UInt64(e.length) }
        }
        guard dataBytes <= UInt64(WireLimits.segmentPayloadBytesMax) else {
            throw TidemarkError(.invalidArgument, "segment data extents hold \(dataBytes) bytes; the limit is \(WireLimits.segmentPayloadBytesMax)")
        }
        guard UInt64(payload.count) == dataBytes else {
            throw TidemarkError(.invalidArgument, "segment payload is \(payload.count) bytes; its data extents hold \(dataBytes)")
        }
        var digests: [ChunkDigest] = []
        if formatVersion >= 2 {
            let n = SegmentHeader.dataChunkCount(extents, chunkSizeBytes: chunkSizeBytes)
            guard n <= WireLimits.chunkDigestsPerSegmentMax else {
                throw TidemarkError(.invalidArgument, "segment data extents cover \(n) chunks; the limit is \(WireLimits.chunkDigestsPerSegmentMax)")
            }
            digests = ChunkDigester(key: key, diskID: diskID).digests(extents: extents, chunkSizeBytes: chunkSizeBytes, payload: payload,
                                                                      construction: DigestConstruction(segmentVersion: formatVersion)!)
        }

        // Compress into the scratch buffer; keep it only when it shrinks.
        // Level 0 stores the payload as it is.
        let plain = payload.count
        let level = compressionLevel ?? self.compressionLevel
        var compressedLength: Int? = nil
        if level != 0 {
            if scratch.count < plain { scratch = [UInt8](repeating: 0, count: plain) }
            compressedLength = try scratch.withUnsafeMutableBytes { try zstd.compress(payload, into: $0, level: level) }
        }

        var header = SegmentHeader(kind: kind, diskID: diskID, keyID: key.id, sequence: sequence, diskSizeBytes: diskSizeBytes,
                                   chunkSizeBytes: chunkSizeBytes, compressed: compressedLength != nil,
                                   plainLength: UInt32(plain), cipherLength: UInt32(compressedLength ?? plain),
                                   nonce: try SecureRandom.bytes(SegmentFormat.nonceBytes), extents: extents, point: point,
                                   version: formatVersion, chunkDigests: digests)
        if formatVersion >= SegmentFormat.headerMACVersion { header.lineage = lineage }
        var headerBytes = header.encode()
        if formatVersion >= SegmentFormat.headerMACVersion { headerBytes.withUnsafeMutableBytes { headerMAC.sign($0) } }
        let bodyLength = Int(header.cipherLength)
        // header ‖ ciphertext ‖ tag, written once each: the ciphertext goes
        // straight from the compressed (or plain) bytes into the segment.
        let total = headerBytes.count + bodyLength + SegmentFormat.tagBytes
        let out = try [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            let o = UnsafeMutableRawBufferPointer(buffer)
            headerBytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: o[0..<headerBytes.count]).copyMemory(from: $0) }
            let body = UnsafeMutableRawBufferPointer(rebasing: o[headerBytes.count..<headerBytes.count + bodyLength])
            let aad = UnsafeRawBufferPointer(rebasing: o[0..<headerBytes.count])
            let tag = UnsafeMutableRawBufferPointer(rebasing: o[(headerBytes.count + bodyLength)...])
            try header.nonce.withUnsafeBytes { nonce in
                if compressedLength != nil {
                    try scratch.withUnsafeBytes {
                        try gcm.seal(UnsafeRawBufferPointer(rebasing: $0[0..<bodyLength]), into: body, nonce: nonce, aad: aad, tag: tag)
                    }
                } else {
                    try gcm.seal(UnsafeRawBufferPointer(rebasing: payload[0..<bodyLength]), into: body, nonce: nonce, aad: aad, tag: tag)
                }
            }
            initialized = total
        }
        return out
    }
}

/// Opens sealed segments: checks that the segment is the one expected (disk
/// id, sequence, key id), authenticates it, decrypts and decompresses it.
/// Not thread-safe: one per worker thread.
public final class SegmentOpener: @unchecked Sendable {
    public let key: ReplicationKey
    public let headerMAC: SegmentHeaderMAC
    private let gcm: AES256GCM
    private let zstd: ZstdDecompressor
    private var scratch: [UInt8] = []

    public init(key: ReplicationKey) throws {
        self.key = key
        self.headerMAC = SegmentHeaderMAC(key: key)
        self.gcm = try AES256GCM(key: key.bytes)
        self.zstd = try ZstdDecompressor()
    }

    /// Verifies disk id, sequence and key id against expectations,
    /// authenticates and decompresses. Returns the header and the payload
    /// (the bytes of the .data extents, concatenated in extent order). Every
    /// failure is TidemarkError(.corrupt) with a message naming the mismatch.
    public func open(_ segment: UnsafeRawBufferPointer, diskID: String, sequence: UInt64) throws -> (SegmentHeader, [UInt8]) {
        let (header, headerBytes) = try checkedHeader(segment, diskID: diskID, sequence: sequence)
        let payload = try [UInt8](unsafeUninitializedCapacity: Int(header.plainLength)) { buffer, count in
            try open(segment, header, headerBytes, into: UnsafeMutableRawBufferPointer(buffer), diskID: diskID, sequence: sequence)
            count = buffer.count
        }
        return (header, payload)
    }

    /// `open` into memory of the caller's: `allocate(n)` is called once,
    /// with the payload's size, after the header checks and before
    /// decryption, and returns at least n bytes (e.g. page-aligned, for
    /// O_DIRECT writes straight from it), of which the first n receive the
    /// payload. Nothing unauthenticated is left there on failure.
    public func open(_ segment: UnsafeRawBufferPointer, diskID: String, sequence: UInt64,
                     into allocate: (Int) throws -> UnsafeMutableRawBufferPointer) throws -> SegmentHeader {
        let (header, headerBytes) = try checkedHeader(segment, diskID: diskID, sequence: sequence)
        let plainLength = Int(header.plainLength)
        let out = try allocate(plainLength)
        precondition(out.count >= plainLength, "SegmentOpener.open: the buffer is smaller than the payload")
        try open(segment, header, headerBytes, into: UnsafeMutableRawBufferPointer(rebasing: out[0..<plainLength]),
                 diskID: diskID, sequence: sequence)
        return header
    }

    private func checkedHeader(_ segment: UnsafeRawBufferPointer, diskID: String, sequence: UInt64) throws -> (SegmentHeader, Int) {
        let (header, headerBytes) = try SegmentHeader.decode(segment)
        try Self.checkIdentity(header, UnsafeRawBufferPointer(rebasing: segment[0..<headerBytes]), diskID: diskID, sequence: sequence,
                               key: key, mac: headerMAC)
        guard UInt64(header.plainLength) == header.dataBytes else {
            throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID): payload is \(header.plainLength) bytes, its data extents hold \(header.dataBytes)")
        }
        return (header, headerBytes)
    }

    /// The checks that tie a decoded header (`headerBytes`, all of its
    /// bytes) to what the reader expects, in order (docs/wire-format.md
    /// 4.4): disk id, sequence, key id, then, from format 4 on, the header
    /// MAC. Every failure is .corrupt and names the mismatch.
    static func checkIdentity(_ header: SegmentHeader, _ headerBytes: UnsafeRawBufferPointer, diskID: String, sequence: UInt64,
                              key: ReplicationKey, mac: SegmentHeaderMAC) throws {
        guard header.diskID == diskID else {
            throw TidemarkError(.corrupt, "segment belongs to disk \(header.diskID), expected \(diskID)",
                                hint: "the segment was stored under the wrong disk, or moved there")
        }
        guard header.sequence == sequence else {
            throw TidemarkError(.corrupt, "segment of disk \(diskID) has sequence \(header.sequence), expected \(sequence)",
                                hint: "the segment was stored under the wrong sequence number, or replayed")
        }
        guard header.keyID == key.id else {
            throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID) was sealed with key id \(hex16(header.keyID)), this key is \(key.idHex)",
                                hint: "load the replication key the agent used for this disk")
        }
        guard header.version < SegmentFormat.headerMACVersion || mac.verify(headerBytes) else {
            throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID): authentication failed: wrong replication key, or the segment was tampered with (its header MAC does not verify)",
                                hint: "this segment must not be used; re-send it from the agent or restore from another copy")
        }
    }

    /// Authenticates and decrypts (out of place: the segment is not
    /// changed) and decompresses into `payload`, exactly the plain length.
    private func open(_ segment: UnsafeRawBufferPointer, _ header: SegmentHeader, _ headerBytes: Int,
                      into payload: UnsafeMutableRawBufferPointer, diskID: String, sequence: UInt64) throws {
        let cipherLength = Int(header.cipherLength)
        let plainLength = Int(header.plainLength)
        let aad = UnsafeRawBufferPointer(rebasing: segment[0..<headerBytes])
        let cipher = UnsafeRawBufferPointer(rebasing: segment[headerBytes..<headerBytes + cipherLength])
        let tag = UnsafeRawBufferPointer(rebasing: segment[(headerBytes + cipherLength)...])

        func authenticate(into body: UnsafeMutableRawBufferPointer) throws {
            do {
                try header.nonce.withUnsafeBytes { try gcm.open(cipher, into: body, nonce: $0, aad: aad, tag: tag) }
            } catch let e as TidemarkError where e.kind == .corrupt {
                throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID): authentication failed: wrong replication key, or the segment was tampered with",
                                    hint: "this segment must not be used; re-send it from the agent or restore from another copy")
            }
        }

        if header.compressed {
            if scratch.count < cipherLength { scratch = [UInt8](repeating: 0, count: cipherLength) }
            try scratch.withUnsafeMutableBytes { s in
                let body = UnsafeMutableRawBufferPointer(rebasing: s[0..<cipherLength])
                try authenticate(into: body)
                do {
                    try zstd.decompress(UnsafeRawBufferPointer(body), into: payload, expected: plainLength)
                } catch let e as TidemarkError {
                    payload.initializeMemory(as: UInt8.self, repeating: 0)
                    throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID) authenticated but does not decompress: \(e.message)")
                }
            }
        } else {
            guard cipherLength == plainLength else {
                throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID): uncompressed, yet its cipher length \(cipherLength) differs from its plain length \(plainLength)")
            }
            try authenticate(into: payload)
        }
    }
}
