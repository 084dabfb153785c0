import Glibc
import TidemarkCrypto
import TidemarkSystem

/// The customer's 256-bit replication key: segments are sealed with it
/// (AES-256-GCM), and it is needed again only to recover. The file holds 64
/// hex digits and a newline (as `generate` writes it) or 32 raw bytes; it must
/// be readable by its owner alone.
public struct ReplicationKey: Sendable, Equatable, CustomStringConvertible, CustomReflectable {
    /// First 8 bytes (big-endian) of SHA-256("tidemark-key-id\0" + key): names
    /// the key in segment headers without revealing it.
    public let id: UInt64
    /// The 32 key bytes.
    public let bytes: [UInt8]

    public static let keyBytes = 32
    /// Largest key file accepted (64 hex digits and "\r\n" fit well below).
    static let fileBytesMax = 128

    public init(bytes: [UInt8]) throws {
        guard bytes.count == Self.keyBytes else {
            throw TidemarkError(.invalidArgument, "a replication key is \(Self.keyBytes) bytes, got \(bytes.count)")
        }
        self.bytes = bytes
        self.id = Self.keyID(bytes)
    }

    /// Never prints the key itself.
    public var description: String { "replication key \(hex16(id))" }

    /// `dump`, a debugger and the default description of a type that holds
    /// a key show the id only, never `bytes`: a key must not reach a log.
    public var customMirror: Mirror { Mirror(self, children: ["id": hex16(id)], displayStyle: .struct) }

    /// The key id as 16 hex digits, as messages print it.
    public var idHex: String { hex16(id) }

    static func keyID(_ key: [UInt8]) -> UInt64 {
        let d = SHA256.hash(Array("tidemark-key-id".utf8) + [0] + key)
        return d[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// Loads a key file. Refuses a file that group or others can access
    /// (hint: chmod 600), that is not a regular file (without blocking on a
    /// FIFO), a symbolic link, or whose content is neither 32 raw bytes nor
    /// 64 hex digits with an optional newline.
    public static func load(path: String, origin: String? = nil) throws -> ReplicationKey {
        // A secret file: a regular file (a FIFO would block a plain open),
        // not a link, of mode 0600 or 0400 (SecretFile says why otherwise).
        let fd = try SecretFile.open(path, what: "the replication key", origin: origin, followSymlink: false)
        let st = try fd.stat()
        guard st.st_size <= fileBytesMax else {
            throw TidemarkError(.invalidArgument, "replication key \(path) is \(st.st_size) bytes; expected 64 hex digits or 32 raw bytes",
                                hint: "restore the key file from your backup")
        }
        // One buffer of fileBytesMax + 1 bytes, never copied (SmallFile),
        // zeroed once parsed so the key bytes do not linger on the heap.
        var buf = try SmallFile.read(fd, path: path, bytesMax: fileBytesMax, purpose: "reading the replication key")
        defer { for i in buf.indices { buf[i] = 0 } }
        return try parse(buf, path: path)
    }

    static func parse(_ content: [UInt8], path: String) throws -> ReplicationKey {
        if content.count == keyBytes { return try ReplicationKey(bytes: content) }
        var text = content[...]
        if text.last == UInt8(ascii: "\n") { text = text.dropLast() }
        if text.last == UInt8(ascii: "\r") { text = text.dropLast() }
        if text.count == 2 * keyBytes, let key = decodeHex(text) { return try ReplicationKey(bytes: key) }
        throw TidemarkError(.invalidArgument,
                            "replication key \(path) is neither 64 hex digits (with an optional newline) nor 32 raw bytes (\(content.count) bytes)",
                            hint: "restore the key file from your backup; its id is printed in the agent log")
    }

    static func decodeHex(_ s: ArraySlice<UInt8>) -> [UInt8]? {
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(s.count / 2)
        var i = s.startIndex
        while i < s.endIndex {
            guard let hi = nibble(s[i]), let lo = nibble(s[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    /// Creates a new random key at `path` (which must not exist: O_EXCL, mode
    /// 0600), written as 64 hex digits and a newline, and flushed to disk.
    public static func generate(path: String) throws -> ReplicationKey {
        let key = try ReplicationKey(bytes: SecureRandom.bytes(keyBytes))
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor(open: path, [.writeOnly, .create, .exclusive, .noFollow], mode: 0o600,
                                    purpose: "creating the replication key")
        } catch let e as SystemError where e.errno == EEXIST {
            throw TidemarkError(.state, "replication key \(path) already exists; not overwriting it",
                                hint: "a new key cannot decrypt what the old one sealed: keep the old file, or move it away first")
        }
        let digits = Array("0123456789abcdef".utf8)
        var text = key.bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] } + [UInt8(ascii: "\n")]
        defer { for i in text.indices { text[i] = 0 } }
        try text.withUnsafeBytes { try fd.write($0, at: 0) }
        try fd.sync()
        // The new directory entry must survive a crash too.
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        try FileDescriptor(open: dir, [.readOnly], purpose: "flushing the directory of the replication key").sync()
        return key
    }
}
