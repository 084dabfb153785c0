import Glibc
import TidemarkStorage
import TidemarkSystem

/// Verified reads of envelope objects (docs/target-layout.md section 3)
/// from an `ObjectStore`: the header first (its size from `stat`), checked
/// against what is expected at that name, then the payload when wanted,
/// checked against the payload checksum. An object that is absent — or
/// vanishes between two reads (prune deleted it) — reads as nil; a byte
/// range beyond its end means it was cut short, and is reported as corrupt.
/// Messages name the object by its location in the store (a file path for
/// a local store).
enum ObjectReader {
    /// Reads `range` of `name` into `buffer`; false when the object is gone.
    private static func read(_ store: any ObjectStore, _ name: String, _ range: Range<UInt64>,
                             into buffer: UnsafeMutableRawBufferPointer, what: String) throws -> Bool {
        do {
            try store.read(name, range: range, into: buffer)
            return true
        } catch let e as ObjectStoreError where e.kind == .notFound {
            return false
        } catch let e as ObjectStoreError where e.kind == .outOfRange {
            throw TidemarkError(.corrupt, "\(store.location(of: name)): truncated while reading \(what) (\(e.message))",
                                hint: "the object is damaged; it is not used. Restore it from a copy, or treat its sequence as lost")
        }
    }

    /// Reads and verifies an object's header; nil when it does not exist.
    static func header(_ store: any ObjectStore, _ name: String, kind: ObjectKind, diskID: String,
                       sequence: UInt64) throws -> (envelope: Envelope, objectSize: UInt64)? {
        guard let size = try store.stat(name)?.size else { return nil }
        let path = store.location(of: name)
        var prefix = [UInt8](repeating: 0, count: Int(min(size, 4096)))
        guard try prefix.withUnsafeMutableBytes({ try read(store, name, 0..<UInt64($0.count), into: $0, what: "the header") }) else {
            return nil
        }
        if prefix.count >= 16 {
            let h = prefix.withUnsafeBytes { Envelope.headerLength(prefix: $0) }
            if h > prefix.count, UInt64(h) <= size, h <= EnvelopeFormat.headerBytesMax {
                prefix = [UInt8](repeating: 0, count: h)
                guard try prefix.withUnsafeMutableBytes({ try read(store, name, 0..<UInt64(h), into: $0, what: "the header") }) else {
                    return nil
                }
            }
        }
        let env = try prefix.withUnsafeBytes {
            try Envelope.decode($0, objectSize: size, path: path, kind: kind, diskID: diskID, sequence: sequence)
        }
        return (env, size)
    }

    /// Reads and verifies an object; nil when it does not exist. With
    /// `payload` the payload is read and its checksum checked too.
    static func read(_ store: any ObjectStore, _ name: String, kind: ObjectKind, diskID: String, sequence: UInt64,
                     payload wantPayload: Bool) throws -> (envelope: Envelope, payload: [UInt8]?, objectSize: UInt64)? {
        guard let (env, size) = try header(store, name, kind: kind, diskID: diskID, sequence: sequence) else { return nil }
        guard wantPayload else { return (env, nil, size) }
        // Uninitialized: zeroing first would be one more pass over every byte.
        let length = Int(env.payloadLength)
        var present = true
        let body = try [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            if length > 0 {
                present = try read(store, name, UInt64(env.headerLength)..<(UInt64(env.headerLength) + env.payloadLength),
                                   into: UnsafeMutableRawBufferPointer(buffer), what: "the payload")
            }
            count = present ? length : 0
        }
        guard present else { return nil }
        try body.withUnsafeBytes { try verifyPayload($0, of: env, path: store.location(of: name)) }
        return (env, body, size)
    }

    /// As `read` with the payload, into a buffer of `pool` (no allocation,
    /// no page faults once the pool holds buffers of that size): returns the
    /// buffer and the payload's length in it.
    static func read(_ store: any ObjectStore, _ name: String, kind: ObjectKind, diskID: String, sequence: UInt64,
                     into pool: BufferPool) throws -> (envelope: Envelope, payload: PooledBuffer?, length: Int)? {
        guard let (env, _) = try header(store, name, kind: kind, diskID: diskID, sequence: sequence) else { return nil }
        let path = store.location(of: name)
        let length = Int(env.payloadLength)
        guard length > 0 else {
            try verifyPayload(UnsafeRawBufferPointer(start: nil, count: 0), of: env, path: path)
            return (env, nil, 0)
        }
        let buffer = pool.take(length)
        let start = UInt64(env.headerLength)
        guard try read(store, name, start..<(start + env.payloadLength), into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<length]),
                       what: "the payload") else {
            return nil
        }
        try verifyPayload(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]), of: env, path: path)
        return (env, buffer, length)
    }

    /// The sealed header and tag of a segment object: its payload's first
    /// bytes (as long as the sealed header they declare) and last 16 bytes,
    /// without the ciphertext between them; nil when the object does not
    /// exist. The envelope header is verified; the payload checksum is not
    /// (the copy is proven under the replication key by whoever uses it).
    static func readSealedHeaderCopy(_ store: any ObjectStore, _ name: String, diskID: String,
                                     sequence: UInt64) throws -> (Envelope, SealedHeaderCopy)? {
        guard let (env, _) = try header(store, name, kind: .segment, diskID: diskID, sequence: sequence) else { return nil }
        let path = store.location(of: name)
        let p = env.payloadLength
        let start = UInt64(env.headerLength)
        let tagBytes = UInt64(SealedHeaderCopy.tagBytes)
        func corrupt(_ what: String) -> TidemarkError {
            TidemarkError(.corrupt, "\(path): \(what)", hint: "the object is damaged; it is not used. Restore it from a copy, or treat its sequence as lost")
        }
        guard p >= UInt64(SealedHeaderCopy.prefixBytes) + tagBytes else { throw corrupt("its \(p)-byte payload is too short for a sealed segment") }
        var prefix = [UInt8](repeating: 0, count: SealedHeaderCopy.prefixBytes)
        guard try prefix.withUnsafeMutableBytes({ try read(store, name, start..<(start + UInt64($0.count)), into: $0, what: "the sealed header") }) else {
            return nil
        }
        let h = prefix.withUnsafeBytes { SealedHeaderCopy.declaredHeaderBytes($0) }
        guard h >= SealedHeaderCopy.prefixBytes, h <= EnvelopeFormat.sealedHeaderBytesMax, UInt64(h) + tagBytes <= p else {
            throw corrupt("the sealed segment declares a \(h)-byte header in a \(p)-byte payload")
        }
        var header = [UInt8](repeating: 0, count: h)
        var tag = [UInt8](repeating: 0, count: SealedHeaderCopy.tagBytes)
        guard try header.withUnsafeMutableBytes({ try read(store, name, start..<(start + UInt64(h)), into: $0, what: "the sealed header") }),
              try tag.withUnsafeMutableBytes({ try read(store, name, (start + p - tagBytes)..<(start + p), into: $0, what: "the sealed tag") }) else {
            return nil
        }
        return (env, SealedHeaderCopy(header: header, tag: tag, segmentBytes: p))
    }

    /// The payload read must be whole and match the envelope's payload checksum.
    private static func verifyPayload(_ body: UnsafeRawBufferPointer, of env: Envelope, path: String) throws {
        guard UInt64(body.count) == env.payloadLength else {
            throw TidemarkError(.corrupt, "\(path): truncated payload (\(body.count) of \(env.payloadLength) bytes)")
        }
        let digest = ObjectDigest.payload(body, version: env.version)
        guard digest == env.payloadChecksum else {
            throw TidemarkError(.corrupt, "\(path): payload checksum mismatch (stored \(env.payloadChecksum.hexString.prefix(16))…, computed \(digest.hexString.prefix(16))…)",
                                hint: "the object is damaged; it is not used. Restore it from a copy, or treat its sequence as lost")
        }
    }
}

/// A pthread mutex (no Foundation in this module).
final class Lock: @unchecked Sendable {
    private let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    init() {
        m.initialize(to: pthread_mutex_t())
        pthread_mutex_init(m, nil)
    }
    deinit {
        pthread_mutex_destroy(m)
        m.deallocate()
    }
    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(m)
        defer { pthread_mutex_unlock(m) }
        return try body()
    }
}
