import Glibc
import TidemarkSystem

/// File-system primitives for immutable objects: create-once (temp file,
/// fsync, link without overwrite, fsync the directory), verified reads,
/// directory listings.
enum ObjectFiles {
    static let tempPrefix = ".tmp-"

    /// Creates `dir/name` with `header` followed by `payload`, durably, if it
    /// does not exist yet. Returns false (and changes nothing) when an object
    /// of that name already exists; it is never overwritten.
    static func create(dir: String, name: String, header: [UInt8], payload: UnsafeRawBufferPointer) throws -> Bool {
        let tmp = try writeTemporary(dir: dir, name: name, header: header, payload: payload)
        guard try publish(temporary: tmp, dir: dir, name: name) else { return false }
        try syncDirectory(dir)
        return true
    }

    /// Steps 1–2 of create-once (docs/target-layout.md section 4): writes
    /// `header` + `payload` to a new temporary name in `dir` and fsyncs it.
    /// Returns the temporary path; on failure nothing is left behind.
    static func writeTemporary(dir: String, name: String, header: [UInt8], payload: UnsafeRawBufferPointer) throws -> String {
        let tmp = temporaryPath(dir: dir, name: name)
        do {
            let fd = try FileDescriptor(open: tmp, [.writeOnly, .create, .exclusive, .noFollow], mode: 0o444,
                                        purpose: "creating a temporary object")
            try header.withUnsafeBytes { try fd.write($0, at: 0) }
            if payload.count > 0 { try fd.write(payload, at: UInt64(header.count)) }
            try fd.sync()
        } catch {
            _ = unlink(tmp)
            throw error
        }
        return tmp
    }

    /// Alignment of the memory, file offsets and lengths of direct writes
    /// (the largest logical block size in common use).
    static let directAlignmentBytes = 4096

    /// `writeTemporary` for a staged segment: `header` goes into the staged
    /// buffer's header room and the object is written from that buffer with
    /// O_DIRECT (padded to the alignment, then truncated to its size), so
    /// the payload is not copied through the page cache. Where the
    /// filesystem refuses O_DIRECT (EINVAL at open or write, e.g. tmpfs),
    /// the same bytes are written buffered. Either way the file is fsynced.
    static func writeTemporary(dir: String, name: String, staged: StagedSegment, header: [UInt8],
                               alignment: Int = directAlignmentBytes) throws -> String {
        let padded = staged.assemble(header: header, alignment: alignment)
        let length = staged.headerBytes + staged.payloadCount
        let object = UnsafeRawBufferPointer(rebasing: padded[0..<length])
        let tmp = temporaryPath(dir: dir, name: name)
        let flags: FileDescriptor.Flags = [.writeOnly, .create, .exclusive, .noFollow]
        do {
            var fd: FileDescriptor
            do {
                fd = try FileDescriptor(open: tmp, flags.union(.direct), mode: 0o444, purpose: "creating a temporary object")
                do {
                    try fd.write(padded, at: 0)
                    try fd.truncate(to: UInt64(length))
                } catch let e as SystemError where e.errno == EINVAL {
                    // Direct I/O refused at this alignment: the same descriptor, buffered.
                    try fd.setDirect(false)
                    try fd.write(object, at: 0)
                    try fd.truncate(to: UInt64(length))
                }
            } catch let e as SystemError where e.errno == EINVAL {
                // A filesystem without direct I/O refuses the open after
                // creating the file: start over without O_DIRECT.
                _ = unlink(tmp)
                fd = try FileDescriptor(open: tmp, flags, mode: 0o444, purpose: "creating a temporary object")
                try fd.write(object, at: 0)
            }
            try fd.sync()
        } catch {
            _ = unlink(tmp)
            throw error
        }
        return tmp
    }

    private static func temporaryPath(dir: String, name: String) -> String {
        dir + "/" + tempPrefix + name + "-\(getpid())-\(UInt64.random(in: 0...UInt64.max) & 0xffff_ffff_ffff)"
    }

    /// Steps 3–4 without the directory fsync: links a complete, fsynced
    /// temporary file to `dir/name` and removes the temporary name. Returns
    /// false when `dir/name` exists already (it is not replaced). The new
    /// name is durable only once the caller has fsynced `dir`.
    static func publish(temporary tmp: String, dir: String, name: String) throws -> Bool {
        let final = dir + "/" + name
        // link() fails with EEXIST instead of replacing: the first complete
        // object wins and is never rewritten (rename would overwrite).
        defer { _ = try? removeFile(tmp) }
        return try linkFile(tmp, to: final, purpose: "publishing object")
    }

    /// Removes an object and makes the removal durable.
    static func remove(_ path: String, syncDir: Bool = true) throws {
        guard try removeFile(path) else { return }
        if syncDir { try syncDirectory(parent(of: path)) }
    }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func syncDirectory(_ dir: String) throws {
        let fd = try FileDescriptor(open: dir, .readOnly, purpose: "opening directory to flush it")
        try fd.sync()
    }

    /// mkdir that tolerates an existing directory; flushes the parent when it
    /// created one.
    static func makeDirectory(_ path: String) throws {
        if try TidemarkSystem.makeDirectory(path, mode: 0o755, purpose: "creating directory") {
            try syncDirectory(parent(of: path))
            return
        }
        if let st = try? fileStatus(path), st.st_mode & S_IFMT == S_IFDIR { return }
        throw TidemarkError(.state, "\(path) exists and is not a directory", hint: "move it away; the target layout needs a directory there")
    }

    /// Names in a directory (without "." and ".."); nil when it does not exist.
    static func list(_ dir: String) throws -> [String]? {
        try directoryEntries(dir)
    }

    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// Size of a file, nil when absent.
    static func size(_ path: String) throws -> UInt64? {
        guard let st = try fileStatusIfPresent(path) else { return nil }
        return UInt64(st.st_size)
    }

    /// Reads and verifies an object. Returns nil when it does not exist.
    /// With `payload` the payload is read and its SHA-256 checked too.
    static func read(_ path: String, kind: ObjectKind, diskID: String, sequence: UInt64,
                     payload wantPayload: Bool) throws -> (envelope: Envelope, payload: [UInt8]?, objectSize: UInt64)? {
        guard let (fd, env, size) = try openVerifyingHeader(path, kind: kind, diskID: diskID, sequence: sequence) else { return nil }
        guard wantPayload else { return (env, nil, size) }
        // Read into uninitialized memory: zeroing it first would be one more pass over every byte.
        let length = Int(env.payloadLength)
        let body = try [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            count = length > 0 ? try fd.read(into: UnsafeMutableRawBufferPointer(buffer), at: UInt64(env.headerLength)) : 0
        }
        try body.withUnsafeBytes { try verifyPayload(UnsafeRawBufferPointer($0), of: env, path: path) }
        return (env, body, size)
    }

    /// As `read` with the payload, into a buffer of `pool` (no allocation,
    /// no page faults once the pool holds buffers of that size): returns the
    /// buffer and the payload's length in it.
    static func read(_ path: String, kind: ObjectKind, diskID: String, sequence: UInt64,
                     into pool: BufferPool) throws -> (envelope: Envelope, payload: PooledBuffer?, length: Int)? {
        guard let (fd, env, _) = try openVerifyingHeader(path, kind: kind, diskID: diskID, sequence: sequence) else { return nil }
        let length = Int(env.payloadLength)
        guard length > 0 else {
            try verifyPayload(UnsafeRawBufferPointer(start: nil, count: 0), of: env, path: path)
            return (env, nil, 0)
        }
        let buffer = pool.take(length)
        let got = try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<length]), at: UInt64(env.headerLength))
        try verifyPayload(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<got]), of: env, path: path)
        return (env, buffer, length)
    }

    /// The sealed header and tag of a segment object: its payload's first
    /// bytes (as long as the sealed header they declare) and last 16 bytes,
    /// without the ciphertext between them; nil when the object does not
    /// exist. The envelope header is verified; the payload checksum is not
    /// (the copy is proven under the replication key by whoever uses it).
    static func readSealedHeaderCopy(_ path: String, diskID: String, sequence: UInt64) throws -> (Envelope, SealedHeaderCopy)? {
        guard let (fd, env, _) = try openVerifyingHeader(path, kind: .segment, diskID: diskID, sequence: sequence) else { return nil }
        let p = env.payloadLength
        let tagBytes = UInt64(SealedHeaderCopy.tagBytes)
        func corrupt(_ what: String) -> TidemarkError {
            TidemarkError(.corrupt, "\(path): \(what)", hint: "the object is damaged; it is not used. Restore it from a copy, or treat its sequence as lost")
        }
        guard p >= UInt64(SealedHeaderCopy.prefixBytes) + tagBytes else { throw corrupt("its \(p)-byte payload is too short for a sealed segment") }
        var prefix = [UInt8](repeating: 0, count: SealedHeaderCopy.prefixBytes)
        guard try prefix.withUnsafeMutableBytes({ try fd.read(into: $0, at: UInt64(env.headerLength)) }) == prefix.count else {
            throw corrupt("truncated while reading the sealed header")
        }
        let h = prefix.withUnsafeBytes { SealedHeaderCopy.declaredHeaderBytes($0) }
        guard h >= SealedHeaderCopy.prefixBytes, h <= EnvelopeFormat.sealedHeaderBytesMax, UInt64(h) + tagBytes <= p else {
            throw corrupt("the sealed segment declares a \(h)-byte header in a \(p)-byte payload")
        }
        var header = [UInt8](repeating: 0, count: h)
        var tag = [UInt8](repeating: 0, count: SealedHeaderCopy.tagBytes)
        guard try header.withUnsafeMutableBytes({ try fd.read(into: $0, at: UInt64(env.headerLength)) }) == h,
              try tag.withUnsafeMutableBytes({ try fd.read(into: $0, at: UInt64(env.headerLength) + p - tagBytes) }) == tag.count else {
            throw corrupt("truncated while reading the sealed header and tag")
        }
        return (env, SealedHeaderCopy(header: header, tag: tag, segmentBytes: p))
    }

    /// Opens an object and reads and verifies its header; nil when it does not exist.
    private static func openVerifyingHeader(_ path: String, kind: ObjectKind, diskID: String,
                                            sequence: UInt64) throws -> (FileDescriptor, Envelope, UInt64)? {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor(open: path, [.readOnly, .noFollow], purpose: "reading object")
        } catch let e as SystemError where e.errno == ENOENT {
            return nil
        }
        let size = UInt64(try fd.stat().st_size)
        var prefix = [UInt8](repeating: 0, count: Int(min(size, 4096)))
        let got = try prefix.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        guard got == prefix.count else {
            throw TidemarkError(.corrupt, "\(path): truncated while reading (\(got) of \(prefix.count) bytes)")
        }
        if prefix.count >= 16 {
            let h = prefix.withUnsafeBytes { Envelope.headerLength(prefix: $0) }
            if h > prefix.count, UInt64(h) <= size, h <= EnvelopeFormat.headerBytesMax {
                prefix = [UInt8](repeating: 0, count: h)
                let n = try prefix.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
                guard n == h else { throw TidemarkError(.corrupt, "\(path): truncated while reading the header") }
            }
        }
        let env = try prefix.withUnsafeBytes {
            try Envelope.decode($0, objectSize: size, path: path, kind: kind, diskID: diskID, sequence: sequence)
        }
        return (fd, env, size)
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
