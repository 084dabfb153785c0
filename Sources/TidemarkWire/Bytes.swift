import TidemarkSystem

/// Appends little-endian fields to a byte array.
struct ByteWriter {
    var bytes: [UInt8]

    init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { le(v) }
    mutating func u32(_ v: UInt32) { le(v) }
    mutating func u64(_ v: UInt64) { le(v) }
    mutating func i64(_ v: Int64) { le(UInt64(bitPattern: v)) }
    mutating func raw<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }
    mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

    private mutating func le<T: FixedWidthInteger>(_ v: T) {
        var x = v.littleEndian
        withUnsafeBytes(of: &x) { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian fields from a buffer, never past its end: every read
/// checks the remaining bytes first and throws .corrupt naming `what`.
struct ByteReader {
    let buffer: UnsafeRawBufferPointer
    let what: String
    private(set) var offset = 0

    init(_ buffer: UnsafeRawBufferPointer, what: String) {
        self.buffer = buffer
        self.what = what
    }

    var remaining: Int { buffer.count - offset }

    func need(_ n: Int, _ field: String) throws {
        guard n >= 0, n <= remaining else {
            throw TidemarkError(.corrupt, "\(what) is truncated: \(field) needs \(n) bytes at offset \(offset), \(remaining) left")
        }
    }

    mutating func u8(_ field: String) throws -> UInt8 {
        try need(1, field)
        defer { offset += 1 }
        return buffer[offset]
    }
    mutating func u16(_ field: String) throws -> UInt16 { try le(field) }
    mutating func u32(_ field: String) throws -> UInt32 { try le(field) }
    mutating func u64(_ field: String) throws -> UInt64 { try le(field) }
    mutating func i64(_ field: String) throws -> Int64 { Int64(bitPattern: try le(field) as UInt64) }

    mutating func bytes(_ n: Int, _ field: String) throws -> [UInt8] {
        try need(n, field)
        defer { offset += n }
        return Array(UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n]))
    }

    /// The rest of the buffer.
    mutating func rest() -> [UInt8] {
        defer { offset = buffer.count }
        return Array(UnsafeRawBufferPointer(rebasing: buffer[offset...]))
    }

    /// n bytes of valid UTF-8.
    mutating func string(_ n: Int, _ field: String) throws -> String {
        try need(n, field)
        defer { offset += n }
        let slice = UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n])
        guard let s = String(validating: slice.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw TidemarkError(.corrupt, "\(what): \(field) is not valid UTF-8")
        }
        return s
    }

    /// Throws unless every byte was consumed.
    func end() throws {
        guard remaining == 0 else {
            throw TidemarkError(.corrupt, "\(what) has \(remaining) unexpected trailing bytes at offset \(offset)")
        }
    }

    private mutating func le<T: FixedWidthInteger>(_ field: String) throws -> T {
        let n = MemoryLayout<T>.size
        try need(n, field)
        var v: T = 0
        withUnsafeMutableBytes(of: &v) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n])) }
        offset += n
        return T(littleEndian: v)
    }
}

/// Checks an identifier (disk id, agent id, point id) before it is encoded:
/// 1...stringBytesMax bytes of UTF-8 without NUL.
func checkIdentifier(_ s: String, _ what: String) throws {
    let n = s.utf8.count
    guard n >= 1, n <= WireLimits.stringBytesMax else {
        throw TidemarkError(.invalidArgument, "\(what) '\(s.prefix(64))' is \(n) bytes; it must be 1...\(WireLimits.stringBytesMax) bytes of UTF-8")
    }
    guard !s.utf8.contains(0) else {
        throw TidemarkError(.invalidArgument, "\(what) '\(s.prefix(64))' contains a NUL byte")
    }
}

/// The same rule for a decoded identifier (malformed input is .corrupt).
func checkDecodedIdentifier(_ s: String, _ what: String, in context: String) throws {
    guard !s.isEmpty, !s.utf8.contains(0) else {
        throw TidemarkError(.corrupt, "\(context): \(what) is empty or contains a NUL byte")
    }
}

/// 16 lowercase hex digits.
func hex16(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: 16 - s.count) + s
}
