import TidemarkCrypto
import TidemarkSystem

/// The object checksums (docs/target-layout.md section 3). The header
/// digest is SHA-256 in every envelope version. The payload checksum is
/// SHA-256 in version 1 and, in version 2, the 16-byte GMAC-PRF of the
/// payload under fixed public keys followed by 16 zero bytes: 5x cheaper
/// per byte here (AES-NI and carry-less multiply against SHA-NI). Keyless
/// either way, they guard against damage and misplacement, not against an
/// adversary: segments are authenticated by AES-GCM inside their payload.
enum ObjectDigest {
    static let bytes = 32

    static func sha256(_ b: UnsafeRawBufferPointer) -> [UInt8] { SHA256.hash(b) }
    static func sha256(_ b: [UInt8]) -> [UInt8] { SHA256.hash(b) }

    static let gmacKey = SHA256.hash(Array("tidemark-object-checksum-gmac".utf8))
    static let prpKey = SHA256.hash(Array("tidemark-object-checksum-prp".utf8))

    /// The 32-byte payload checksum field of an envelope of `version` (1 or 2).
    static func payload(_ b: UnsafeRawBufferPointer, version: UInt16) -> [UInt8] {
        if version == 1 { return sha256(b) }
        // One context per call: the uploader checksums objects on several threads.
        let prf = GMACPRF(gmacKey: gmacKey, prpKey: prpKey)
        let (low, high) = prf.mac(prefix: UnsafeRawBufferPointer(start: nil, count: 0), data: b)
        var out = [UInt8](repeating: 0, count: bytes)
        LittleEndian.store(low, into: &out, at: 0)
        LittleEndian.store(high, into: &out, at: 8)
        return out
    }

    static func payload(_ b: [UInt8], version: UInt16) -> [UInt8] {
        b.withUnsafeBytes { payload($0, version: version) }
    }
}

extension Array where Element == UInt8 {
    var hexString: String {
        let digits: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
        var s = ""
        s.reserveCapacity(count * 2)
        for b in self { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
        return s
    }
}
