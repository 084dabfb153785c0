import TidemarkCrypto
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
        // Arrays and slices (every caller) are read in place; another
        // collection is copied first.
        func words(_ b: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
            (LittleEndian.load(b, at: 0, as: UInt64.self), LittleEndian.load(b, at: 8, as: UInt64.self))
        }
        (low, high) = bytes.withContiguousStorageIfAvailable { words(UnsafeRawBufferPointer($0)) }
            ?? Array(bytes).withUnsafeBytes { words($0) }
    }

    /// The 16 bytes, in wire order.
    public var bytes: [UInt8] {
        var w = ByteWriter(capacity: Self.byteCount)
        w.u64(low)
        w.u64(high)
        return w.bytes
    }

    public var description: String {
        bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }
}

/// How a chunk digest was computed; it follows the format version of the
/// segment that carries it (docs/wire-format.md 4.5).
public enum DigestConstruction: UInt8, Sendable, CaseIterable {
    /// Segment format 2: the first 16 bytes of HMAC-SHA-256.
    case hmacSHA256 = 2
    /// Segment format 3: AES-256 of a GMAC tag (5 times faster here).
    case gmacAES = 3

    /// What writers use.
    public static let current = DigestConstruction.gmacAES

    /// The construction of a segment format version's digests (format 4
    /// keeps construction 3); nil for version 1, which carries none.
    public init?(segmentVersion: UInt16) {
        switch segmentVersion {
        case 2: self = .hmacSHA256
        case 3, 4: self = .gmacAES
        default: return nil
        }
    }

    public var segmentVersion: UInt16 { UInt16(rawValue) }
}

/// Computes chunk digests for one disk (docs/wire-format.md 4.5). The
/// message is the same for both constructions:
///
///     m = u8 len(disk id) ‖ disk id ‖ u64 chunk index ‖ chunk bytes
///
/// construction 2 (segment format 2):
///     K_d    = SHA-256("tidemark-chunk-digest" ‖ 0x00 ‖ replication key)
///     digest = first 16 bytes of HMAC-SHA-256(K_d, m)
/// construction 3 (segment format 3, what writers use):
///     K_g    = SHA-256("tidemark-chunk-digest-gmac" ‖ 0x00 ‖ replication key)
///     K_p    = SHA-256("tidemark-chunk-digest-prp" ‖ 0x00 ‖ replication key)
///     digest = AES-256(K_p, GMAC(K_g, IV = 12 zero bytes, m))
///
/// The labels separate these keys from the key id derivation and from the
/// AES key itself; binding the disk id and chunk index means equal content
/// at two places gives unrelated digests, so the server learns only whether
/// one chunk of one disk still holds the content it stored. Thread-safe (no
/// mutable state); construction 3 runs in a `Context`, one per thread.
public struct ChunkDigester: Sendable {
    public let diskID: String
    private let hmacKey: [UInt8]
    private let gmacKey: [UInt8]
    private let prpKey: [UInt8]
    private let diskPrefix: [UInt8]

    public static let label = "tidemark-chunk-digest"
    public static let gmacLabel = "tidemark-chunk-digest-gmac"
    public static let prpLabel = "tidemark-chunk-digest-prp"

    public init(key: ReplicationKey, diskID: String) {
        self.diskID = diskID
        hmacKey = SHA256.hash(Array(Self.label.utf8) + [0] + key.bytes)
        gmacKey = SHA256.hash(Array(Self.gmacLabel.utf8) + [0] + key.bytes)
        prpKey = SHA256.hash(Array(Self.prpLabel.utf8) + [0] + key.bytes)
        let id = Array(diskID.utf8.prefix(WireLimits.stringBytesMax))
        diskPrefix = [UInt8(id.count)] + id
    }

    /// Keyed state for digesting many chunks on one thread (the AES key
    /// schedules are made once).
    public final class Context {
        let digester: ChunkDigester
        private var prf: GMACPRF?
        private var prefix: [UInt8]

        init(_ d: ChunkDigester) {
            digester = d
            prefix = d.diskPrefix + [UInt8](repeating: 0, count: 8)
        }

        /// The digest of chunk `index` holding `bytes` (a whole chunk; the
        /// last chunk of a disk may be shorter).
        public func digest(chunk index: UInt64, _ bytes: UnsafeRawBufferPointer,
                           construction: DigestConstruction = .current) -> ChunkDigest {
            let at = digester.diskPrefix.count
            LittleEndian.store(index, into: &prefix, at: at)
            switch construction {
            case .hmacSHA256:
                let mac = prefix.withUnsafeBytes { HMACSHA256.mac(key: digester.hmacKey, prefix: $0, data: bytes) }
                return ChunkDigest(bytes: mac[0..<ChunkDigest.byteCount])
            case .gmacAES:
                if prf == nil { prf = GMACPRF(gmacKey: digester.gmacKey, prpKey: digester.prpKey) }
                let out = prefix.withUnsafeBytes { prf!.mac(prefix: $0, data: bytes) }
                return ChunkDigest(low: out.low, high: out.high)
            }
        }
    }

    public func makeContext() -> Context { Context(self) }

    /// The digest of one chunk (sets up a `Context` per call: for many
    /// chunks, use one context).
    public func digest(chunk index: UInt64, _ bytes: UnsafeRawBufferPointer,
                       construction: DigestConstruction = .current) -> ChunkDigest {
        makeContext().digest(chunk: index, bytes, construction: construction)
    }

    /// One digest per chunk of the data extents of a segment, in extent
    /// order, from the segment payload (the data extents' bytes concatenated).
    /// Extents must be chunk-aligned (offset a multiple of the chunk size).
    public func digests(extents: [SegmentExtent], chunkSizeBytes: UInt32, payload: UnsafeRawBufferPointer,
                        construction: DigestConstruction = .current) -> [ChunkDigest] {
        let chunk = UInt64(chunkSizeBytes)
        let ctx = makeContext()
        var out: [ChunkDigest] = []
        var pos = 0
        for e in extents where e.kind == .data {
            var off: UInt64 = 0
            while off < UInt64(e.length) {
                let n = Int(min(chunk, UInt64(e.length) - off))
                out.append(ctx.digest(chunk: (e.offset + off) / chunk, UnsafeRawBufferPointer(rebasing: payload[pos..<pos + n]),
                                      construction: construction))
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
    /// Written as data with this digest, computed this way.
    case data(ChunkDigest, DigestConstruction)
}
