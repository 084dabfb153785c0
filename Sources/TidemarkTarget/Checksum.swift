import TidemarkSystem

/// The object checksum: SHA-256 (TidemarkSystem's, OpenSSL EVP). It guards
/// against damage and misplacement, not against an adversary: segments are
/// authenticated by AES-GCM inside their payload.
enum ObjectDigest {
    static let bytes = 32

    static func sha256(_ b: UnsafeRawBufferPointer) -> [UInt8] { SHA256.hash(b) }
    static func sha256(_ b: [UInt8]) -> [UInt8] { SHA256.hash(b) }
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
