import CTidemarkCrypto
import Glibc
import TidemarkSystem

/// AES-256-GCM via OpenSSL EVP (the C side is `CTidemarkCrypto.h`): 12-byte nonce,
/// 16-byte tag, encryption and decryption in place. The key is scheduled once
/// per instance and the EVP contexts are reused for every message.
/// Not thread-safe: one per worker.
public final class AES256GCM: @unchecked Sendable {
    public static let keyBytes = 32, nonceBytes = 12, tagBytes = 16
    private let ctx: OpaquePointer

    public init(key: [UInt8]) throws {
        guard key.count == Self.keyBytes else {
            throw TidemarkError(.invalidArgument, "an AES-256 key is \(Self.keyBytes) bytes, got \(key.count)")
        }
        guard let c = key.withUnsafeBufferPointer({ tm_gcm_new($0.baseAddress) }) else {
            throw SystemError(call: "EVP_EncryptInit_ex", errno: ENOMEM, context: "setting up AES-256-GCM")
        }
        ctx = c
    }

    deinit { tm_gcm_free(ctx) }

    /// Encrypts `buffer` in place and writes the 16-byte tag.
    public func seal(_ buffer: UnsafeMutableRawBufferPointer, nonce: UnsafeRawBufferPointer,
                     aad: UnsafeRawBufferPointer, tag: UnsafeMutableRawBufferPointer) throws {
        precondition(nonce.count == Self.nonceBytes && tag.count == Self.tagBytes, "AES256GCM.seal: nonce/tag size")
        let r = withNonNull(buffer) { b in
            tm_gcm_seal(ctx, b, buffer.count, nonce.assumingMemoryBound(to: UInt8.self).baseAddress,
                        aad.baseAddress, aad.count, tag.assumingMemoryBound(to: UInt8.self).baseAddress)
        }
        if r != 0 {
            throw SystemError(call: "EVP_EncryptUpdate", errno: -r, context: "encrypting \(buffer.count) bytes with AES-256-GCM")
        }
    }

    /// Encrypts `input` into `output` (the same length; not overlapping) and
    /// writes the 16-byte tag.
    public func seal(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, nonce: UnsafeRawBufferPointer,
                     aad: UnsafeRawBufferPointer, tag: UnsafeMutableRawBufferPointer) throws {
        precondition(nonce.count == Self.nonceBytes && tag.count == Self.tagBytes, "AES256GCM.seal: nonce/tag size")
        precondition(input.count == output.count, "AES256GCM.seal: input and output sizes differ")
        let r = withNonNull(output) { o in
            tm_gcm_seal_to(ctx, input.baseAddress ?? UnsafeRawPointer(o), o, input.count, nonce.assumingMemoryBound(to: UInt8.self).baseAddress,
                           aad.baseAddress, aad.count, tag.assumingMemoryBound(to: UInt8.self).baseAddress)
        }
        if r != 0 {
            throw SystemError(call: "EVP_EncryptUpdate", errno: -r, context: "encrypting \(input.count) bytes with AES-256-GCM")
        }
    }

    /// Decrypts in place; throws TidemarkError(.corrupt, "authentication
    /// failed ...") on a bad tag, and then leaves the buffer zeroed.
    public func open(_ buffer: UnsafeMutableRawBufferPointer, nonce: UnsafeRawBufferPointer,
                     aad: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) throws {
        precondition(nonce.count == Self.nonceBytes && tag.count == Self.tagBytes, "AES256GCM.open: nonce/tag size")
        let r = withNonNull(buffer) { b in
            tm_gcm_open(ctx, b, buffer.count, nonce.assumingMemoryBound(to: UInt8.self).baseAddress,
                        aad.baseAddress, aad.count, tag.assumingMemoryBound(to: UInt8.self).baseAddress)
        }
        if r == -EBADMSG {
            throw TidemarkError(.corrupt, "authentication failed: wrong key, or the data was tampered with")
        }
        if r != 0 {
            throw SystemError(call: "EVP_DecryptUpdate", errno: -r, context: "decrypting \(buffer.count) bytes with AES-256-GCM")
        }
    }

    /// Decrypts `input` into `output` (of the same size, not overlapping it);
    /// fails as `open` does, leaving `output` zeroed on a bad tag.
    public func open(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer, nonce: UnsafeRawBufferPointer,
                     aad: UnsafeRawBufferPointer, tag: UnsafeRawBufferPointer) throws {
        precondition(nonce.count == Self.nonceBytes && tag.count == Self.tagBytes, "AES256GCM.open: nonce/tag size")
        precondition(input.count == output.count, "AES256GCM.open: input and output sizes differ")
        let r = withNonNull(output) { o in
            tm_gcm_open_to(ctx, input.baseAddress ?? UnsafeRawPointer(o), o, output.count,
                           nonce.assumingMemoryBound(to: UInt8.self).baseAddress,
                           aad.baseAddress, aad.count, tag.assumingMemoryBound(to: UInt8.self).baseAddress)
        }
        if r == -EBADMSG {
            throw TidemarkError(.corrupt, "authentication failed: wrong key, or the data was tampered with")
        }
        if r != 0 {
            throw SystemError(call: "EVP_DecryptUpdate", errno: -r, context: "decrypting \(output.count) bytes with AES-256-GCM")
        }
    }

    /// EVP wants a valid pointer even for zero bytes.
    private func withNonNull(_ b: UnsafeMutableRawBufferPointer, _ body: (UnsafeMutableRawPointer) -> Int32) -> Int32 {
        if let p = b.baseAddress { return body(p) }
        var one: UInt8 = 0
        return withUnsafeMutableBytes(of: &one) { body($0.baseAddress!) }
    }
}

/// Bytes from the operating system's CSPRNG (getrandom(2)).
public enum SecureRandom {
    public static func fill(_ b: UnsafeMutableRawBufferPointer) throws {
        guard let p = b.baseAddress, b.count > 0 else { return }
        try shimcall("getrandom", "reading \(b.count) random bytes") { tm_random_bytes(p, b.count) }
    }

    /// n random bytes.
    public static func bytes(_ n: Int) throws -> [UInt8] {
        var a = [UInt8](repeating: 0, count: n)
        try a.withUnsafeMutableBytes { try fill($0) }
        return a
    }
}

/// SHA-256 (OpenSSL EVP_Digest).
public enum SHA256 {
    public static let digestBytes = 32

    /// The 32-byte digest of b.
    public static func hash(_ b: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: digestBytes)
        var one: UInt8 = 0
        let r = out.withUnsafeMutableBufferPointer { o in
            withUnsafeBytes(of: &one) { scratch in
                tm_sha256(b.baseAddress ?? scratch.baseAddress!, b.count, o.baseAddress)
            }
        }
        // EVP_Digest fails only when OpenSSL cannot allocate or its provider
        // is missing; neither is recoverable here.
        precondition(r == 0, "SHA256: EVP_Digest failed")
        return out
    }

    public static func hash(_ bytes: [UInt8]) -> [UInt8] { bytes.withUnsafeBytes { hash($0) } }
}

/// HMAC-SHA-256 (RFC 2104; OpenSSL EVP underneath) with a key of at most 64
/// bytes, over `prefix ‖ data` without copying them together.
public enum HMACSHA256 {
    public static let digestBytes = 32
    public static let keyBytesMax = 64

    public static func mac(key: [UInt8], prefix: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer) -> [UInt8] {
        precondition(key.count <= keyBytesMax, "HMACSHA256: key longer than \(keyBytesMax) bytes")
        var out = [UInt8](repeating: 0, count: digestBytes)
        let r = out.withUnsafeMutableBufferPointer { o in
            key.withUnsafeBufferPointer { k in
                tm_hmac_sha256(k.baseAddress, k.count, prefix.baseAddress, prefix.count, data.baseAddress, data.count, o.baseAddress)
            }
        }
        // Fails only when OpenSSL cannot allocate or its provider is missing.
        precondition(r == 0, "HMACSHA256: EVP digest failed (\(r))")
        return out
    }
}

/// The chunk digests' keyed PRF (docs/wire-format.md 4.5, construction 3):
/// AES-256 under the second key of the GMAC tag (AES-256-GCM under the first
/// key, an all-zero 12-byte IV) over `prefix ‖ data` as associated data.
/// Both key schedules are made once; one instance serves one thread at a time.
public final class GMACPRF {
    public static let keyBytes = 32
    public static let outputBytes = 16
    private let ctx: OpaquePointer

    public init(gmacKey: [UInt8], prpKey: [UInt8]) {
        precondition(gmacKey.count == Self.keyBytes && prpKey.count == Self.keyBytes, "GMACPRF: keys are 32 bytes")
        let c = gmacKey.withUnsafeBufferPointer { g in prpKey.withUnsafeBufferPointer { p in tm_gmac_prf_new(g.baseAddress, p.baseAddress) } }
        // NULL only when OpenSSL cannot allocate or has no AES: not recoverable here.
        guard let c else { preconditionFailure("GMACPRF: OpenSSL could not set up AES-256-GCM and AES-256-ECB") }
        ctx = c
    }

    deinit { tm_gmac_prf_free(ctx) }

    /// The 16-byte output for `prefix ‖ data`, as two little-endian words
    /// (bytes 0–7, 8–15).
    public func mac(prefix: UnsafeRawBufferPointer, data: UnsafeRawBufferPointer) -> (low: UInt64, high: UInt64) {
        var out: (UInt64, UInt64) = (0, 0)
        let r = withUnsafeMutableBytes(of: &out) { o in
            tm_gmac_prf(ctx, prefix.baseAddress, prefix.count, data.baseAddress, data.count, o.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        precondition(r == 0, "GMACPRF: EVP cipher failed (\(r))")
        return withUnsafeBytes(of: out) { (LittleEndian.load($0, at: 0, as: UInt64.self), LittleEndian.load($0, at: 8, as: UInt64.self)) }
    }
}
