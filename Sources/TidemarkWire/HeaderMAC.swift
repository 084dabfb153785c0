import TidemarkCrypto
import TidemarkSystem

/// The header MAC of segment format 4 (docs/wire-format.md 4.6): the first
/// 16 bytes of HMAC-SHA-256 under a key derived from the replication key,
/// over the encoded header without its last 16 bytes, which hold the MAC.
///
///     K_h = SHA-256("tidemark-header-mac" ‖ 0x00 ‖ replication key)
///     MAC = first 16 bytes of HMAC-SHA-256(K_h, header[0, H − 16))
///
/// Why: the GCM tag authenticates header and ciphertext together, so a
/// reader has to read the whole segment to trust its header. Recovery plans
/// from the headers of every segment up to a point, most of which it never
/// opens (their chunks were overwritten later), and pruning keeps only a
/// segment's header; with the MAC each header is proven under the key on
/// its own. Headers are small (at most `WireLimits.segmentHeaderBytesMax`),
/// so HMAC's speed does not matter here.
public struct SegmentHeaderMAC: Sendable {
    static let label = "tidemark-header-mac"
    private let key: [UInt8]

    public init(key: ReplicationKey) {
        self.key = SHA256.hash(Array(Self.label.utf8) + [0] + key.bytes)
    }

    /// The MAC of `header`, an encoded header of version 4 or later whose
    /// last `SegmentFormat.headerMACBytes` bytes are the MAC's place.
    public func mac(ofHeader header: UnsafeRawBufferPointer) -> [UInt8] {
        precondition(header.count >= SegmentFormat.fixedBytes + SegmentFormat.headerMACBytes, "SegmentHeaderMAC: not a header")
        let covered = UnsafeRawBufferPointer(rebasing: header[0..<(header.count - SegmentFormat.headerMACBytes)])
        return Array(HMACSHA256.mac(key: key, prefix: UnsafeRawBufferPointer(start: nil, count: 0), data: covered)
            .prefix(SegmentFormat.headerMACBytes))
    }

    /// Writes the MAC into the last bytes of an encoded header.
    public func sign(_ header: UnsafeMutableRawBufferPointer) {
        let m = mac(ofHeader: UnsafeRawBufferPointer(header))
        let at = header.count - SegmentFormat.headerMACBytes
        for i in 0..<m.count { header[at + i] = m[i] }
    }

    /// True when the last bytes of the encoded header `header` (all of its
    /// H bytes, version 4 or later) are its MAC under this key. Compares in
    /// constant time.
    public func verify(_ header: UnsafeRawBufferPointer) -> Bool {
        guard header.count >= SegmentFormat.fixedBytes + SegmentFormat.headerMACBytes else { return false }
        let m = mac(ofHeader: header)
        let at = header.count - SegmentFormat.headerMACBytes
        var diff: UInt8 = 0
        for i in 0..<m.count { diff |= m[i] ^ header[at + i] }
        return diff == 0
    }
}

/// A sealed segment's header, decoded and proven: what recovery knows of a
/// segment it does not open. Made by `SegmentHeaderProof.check` from the
/// header bytes alone (a stored segment's first H bytes, or the copy a
/// tombstone keeps).
public struct SegmentHeaderProof: Sendable {
    public var header: SegmentHeader
    /// True when the header carries a MAC (format 4 or later) and it
    /// verified under the key; false for older formats, whose header is
    /// authenticated only together with the ciphertext (by opening).
    public var authenticated: Bool

    /// Decodes the first bytes of a sealed segment of `segmentBytes` bytes
    /// (at least its declared header length) and checks that it is the
    /// header the agent sealed for disk `diskID` at `sequence` under `key`:
    /// disk id, sequence, key id, then (format 4 and later) the MAC. Every
    /// failure is .corrupt and names the mismatch.
    public static func check(_ prefix: UnsafeRawBufferPointer, segmentBytes: Int, diskID: String, sequence: UInt64,
                             key: ReplicationKey, mac: SegmentHeaderMAC) throws -> SegmentHeaderProof {
        let (header, headerBytes) = try SegmentHeader.decode(prefix, segmentBytes: segmentBytes)
        try SegmentOpener.checkIdentity(header, UnsafeRawBufferPointer(rebasing: prefix[0..<headerBytes]), diskID: diskID,
                                        sequence: sequence, key: key, mac: mac)
        return SegmentHeaderProof(header: header, authenticated: header.version >= SegmentFormat.headerMACVersion)
    }
}
