import TidemarkSystem

/// A keyed 128-bit digest of one chunk's content (docs/wire-format.md,
/// "Chunk digests"). It lets the process server and target storage, which
/// never hold the replication key, tell whether a chunk they store equals a
/// chunk the agent reads, and nothing else about its content.
public struct ChunkDigest: Hashable, Sendable, CustomStringConvertible {
    /// The 16 digest bytes, as two little-endian words (bytes 0–7, 8–15).
    public var low: UInt64
    public var high: UInt64

    public static let byteCount = 16

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// From 16 bytes (the wire and index encoding).
    public init<C: Collection>(bytes: C) where C.Element == UInt8 {
        precondition(bytes.count == Self.byteCount, "a chunk digest is 16 bytes")
        var l: UInt64 = 0, h: UInt64 = 0
        for (i, b) in bytes.enumerated() {
            if i < 8 { l |= UInt64(b) << (8 * UInt64(i)) } else { h |= UInt64(b) << (8 * UInt64(i - 8)) }
        }
        low = l
        high = h
    }

    /// The 16 bytes, in wire order.
    public var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: low >> (8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: high >> (8 * $0)) }
    }

    public var description: String {
        bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}

/// Computes chunk digests for one disk:
///
///     digest key  K_d = SHA-256("tidemark-chunk-digest" ‖ 0x00 ‖ replication key)
///     digest      = first 16 bytes of HMAC-SHA-256(K_d, u8 len(disk id) ‖ disk id ‖ u64 chunk index ‖ chunk bytes)
///
/// The label separates K_d from the key id derivation and from the AES key
/// itself; binding the disk id and chunk index means equal content at two
/// places gives unrelated digests, so the server learns only whether one
/// chunk of one disk still holds the content it stored. Thread-safe (no
/// mutable state).
public struct ChunkDigester: Sendable {
    public let diskID: String
    private let digestKey: [UInt8]
    private let diskPrefix: [UInt8]

    public static let label = "tidemark-chunk-digest"

    public init(key: ReplicationKey, diskID: String) {
        self.diskID = diskID
        digestKey = SHA256.hash(Array(Self.label.utf8) + [0] + key.bytes)
        let id = Array(diskID.utf8.prefix(WireLimits.stringBytesMax))
        diskPrefix = [UInt8(id.count)] + id
    }

    /// The digest of chunk `index` holding `bytes` (a whole chunk; the last
    /// chunk of a disk may be shorter).
    public func digest(chunk index: UInt64, _ bytes: UnsafeRawBufferPointer) -> ChunkDigest {
        var prefix = diskPrefix
        var le = index.littleEndian
        withUnsafeBytes(of: &le) { prefix.append(contentsOf: $0) }
        let mac = prefix.withUnsafeBytes { HMACSHA256.mac(key: digestKey, prefix: $0, data: bytes) }
        return ChunkDigest(bytes: mac[0..<ChunkDigest.byteCount])
    }

    /// One digest per chunk of the data extents of a segment, in extent
    /// order, from the segment payload (the data extents' bytes concatenated).
    /// Extents must be chunk-aligned (offset a multiple of the chunk size).
    public func digests(extents: [SegmentExtent], chunkSizeBytes: UInt32, payload: UnsafeRawBufferPointer) -> [ChunkDigest] {
        let chunk = UInt64(chunkSizeBytes)
        var out: [ChunkDigest] = []
        var pos = 0
        for e in extents where e.kind == .data {
            var off: UInt64 = 0
            while off < UInt64(e.length) {
                let n = Int(min(chunk, UInt64(e.length) - off))
                out.append(digest(chunk: (e.offset + off) / chunk, UnsafeRawBufferPointer(rebasing: payload[pos..<pos + n])))
                pos += n
                off += UInt64(n)
            }
        }
        return out
    }
}

/// What the target holds for one chunk at the sequence a `chunkDigests`
/// answer reflects.
public enum ChunkState: Equatable, Sendable {
    /// Never written, pruned knowledge, or written by a segment without digests.
    case unknown
    /// Written as a zero extent (reads as zeros).
    case zero
    /// Written as data with this digest.
    case data(ChunkDigest)
}
