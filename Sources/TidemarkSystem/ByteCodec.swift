// The one little-endian byte codec of every Tidemark format (the wire
// frames and segments, the .hrl, the shutdown seal, the epoch history, the
// spool): fields are appended with `ByteWriter`, read back in order with
// `ByteReader` (every read checks the bytes left and throws a typed
// `TidemarkError` of kind `.corrupt` naming the field), and fixed layouts
// (a 4096-byte page with fields at known offsets) are read and written in
// place with `LittleEndian`.

/// Little-endian integers at fixed offsets of a buffer whose size the caller
/// has checked (a page of a fixed layout). An offset outside the buffer is a
/// bug in the layout, not bad input: it stops the process. Input whose
/// length is not known to fit is read with `ByteReader`, which throws.
public enum LittleEndian {
    @inlinable @inline(__always)
    public static func load<T: FixedWidthInteger>(_ b: UnsafeRawBufferPointer, at offset: Int, as: T.Type = T.self) -> T {
        precondition(offset >= 0 && offset <= b.count - MemoryLayout<T>.size,
                     "LittleEndian.load: \(MemoryLayout<T>.size) bytes at offset \(offset) of a \(b.count)-byte buffer")
        return T(littleEndian: b.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    @inlinable @inline(__always)
    public static func store<T: FixedWidthInteger>(_ v: T, into b: UnsafeMutableRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && offset <= b.count - MemoryLayout<T>.size,
                     "LittleEndian.store: \(MemoryLayout<T>.size) bytes at offset \(offset) of a \(b.count)-byte buffer")
        b.storeBytes(of: v.littleEndian, toByteOffset: offset, as: T.self)
    }

    /// The same for a byte array (a small header assembled in memory).
    @inlinable @inline(__always)
    public static func load<T: FixedWidthInteger>(_ b: [UInt8], at offset: Int, as: T.Type = T.self) -> T {
        b.withUnsafeBytes { load($0, at: offset, as: T.self) }
    }

    @inlinable @inline(__always)
    public static func store<T: FixedWidthInteger>(_ v: T, into b: inout [UInt8], at offset: Int) {
        b.withUnsafeMutableBytes { store(v, into: $0, at: offset) }
    }
}

/// Appends little-endian fields to a byte array.
///
/// A value type owned by one thread; its memory is the bytes appended (the
/// `capacity` given is reserved up front so a header is one allocation).
public struct ByteWriter: Sendable {
    /// What was appended. Writable, so a frame writer can reuse one encoder
    /// (`removeAll(keepingCapacity:)`) and patch a length in place.
    public var bytes: [UInt8]

    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { append(v) }
    public mutating func u32(_ v: UInt32) { append(v) }
    public mutating func u64(_ v: UInt64) { append(v) }
    public mutating func i64(_ v: Int64) { append(UInt64(bitPattern: v)) }
    public mutating func raw<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }
    public mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

    @inline(__always)
    private mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }
}

/// Reads little-endian fields from a buffer, never past its end: every read
/// checks the bytes left first and throws `TidemarkError(.corrupt)` naming
/// what is decoded (`what`), the field and the offset. Reads go forward from
/// `offset`; `u32(at:_:)` and friends read at an absolute offset, with the
/// same check, without moving it.
///
/// A value type over memory the caller owns and keeps alive while decoding;
/// it holds no memory of its own (except the arrays and strings it returns).
public struct ByteReader {
    public let buffer: UnsafeRawBufferPointer
    /// What is decoded ("segment header", "/var/lib/tidemark/sda.epochs"),
    /// first in every error message.
    public let what: String
    /// Added to every error as its hint (what to do about damaged input).
    public let hint: String?
    public private(set) var offset = 0

    public init(_ buffer: UnsafeRawBufferPointer, what: String, hint: String? = nil) {
        self.buffer = buffer
        self.what = what
        self.hint = hint
    }

    public var remaining: Int { buffer.count - offset }

    /// A `.corrupt` error about `what`, with this decoder's hint.
    public func corrupt(_ problem: String) -> TidemarkError {
        TidemarkError(.corrupt, "\(what) \(problem)", hint: hint)
    }

    /// Throws unless `n` more bytes are there.
    public func need(_ n: Int, _ field: String) throws(TidemarkError) {
        guard n >= 0, n <= remaining else {
            throw corrupt("is truncated: \(field) needs \(n) bytes at offset \(offset), \(remaining) left")
        }
    }

    public mutating func u8(_ field: String) throws(TidemarkError) -> UInt8 {
        try need(1, field)
        defer { offset += 1 }
        return buffer[offset]
    }
    public mutating func u16(_ field: String) throws(TidemarkError) -> UInt16 { try next(field) }
    public mutating func u32(_ field: String) throws(TidemarkError) -> UInt32 { try next(field) }
    public mutating func u64(_ field: String) throws(TidemarkError) -> UInt64 { try next(field) }
    public mutating func i64(_ field: String) throws(TidemarkError) -> Int64 { Int64(bitPattern: try next(field) as UInt64) }

    /// The next `n` bytes, copied.
    public mutating func bytes(_ n: Int, _ field: String) throws(TidemarkError) -> [UInt8] {
        try need(n, field)
        defer { offset += n }
        return Array(UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n]))
    }

    /// Skips `n` bytes.
    public mutating func skip(_ n: Int, _ field: String) throws(TidemarkError) {
        try need(n, field)
        offset += n
    }

    /// The rest of the buffer, copied.
    public mutating func rest() -> [UInt8] {
        defer { offset = buffer.count }
        return Array(UnsafeRawBufferPointer(rebasing: buffer[offset...]))
    }

    /// The next `n` bytes as valid UTF-8.
    public mutating func string(_ n: Int, _ field: String) throws(TidemarkError) -> String {
        try need(n, field)
        let slice = UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + n])
        guard let s = String(validating: slice.bindMemory(to: UInt8.self), as: UTF8.self) else {
            throw TidemarkError(.corrupt, "\(what): \(field) is not valid UTF-8", hint: hint)
        }
        offset += n
        return s
    }

    /// Throws unless every byte was consumed.
    public func end() throws(TidemarkError) {
        guard remaining == 0 else {
            throw corrupt("has \(remaining) unexpected trailing bytes at offset \(offset)")
        }
    }

    /// Fields at an absolute offset, bounds-checked as the reads above; the
    /// read position does not move.
    public func u16(at at: Int, _ field: String) throws(TidemarkError) -> UInt16 { try load(at, field) }
    public func u32(at at: Int, _ field: String) throws(TidemarkError) -> UInt32 { try load(at, field) }
    public func u64(at at: Int, _ field: String) throws(TidemarkError) -> UInt64 { try load(at, field) }
    public func bytes(at at: Int, _ n: Int, _ field: String) throws(TidemarkError) -> [UInt8] {
        try check(at, n, field)
        return Array(UnsafeRawBufferPointer(rebasing: buffer[at..<at + n]))
    }

    @inline(__always)
    private mutating func next<T: FixedWidthInteger>(_ field: String) throws(TidemarkError) -> T {
        try need(MemoryLayout<T>.size, field)
        let v = T(littleEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    @inline(__always)
    private func load<T: FixedWidthInteger>(_ at: Int, _ field: String) throws(TidemarkError) -> T {
        try check(at, MemoryLayout<T>.size, field)
        return T(littleEndian: buffer.loadUnaligned(fromByteOffset: at, as: T.self))
    }

    private func check(_ at: Int, _ n: Int, _ field: String) throws(TidemarkError) {
        guard at >= 0, n >= 0, at <= buffer.count, n <= buffer.count - at else {
            throw corrupt("is truncated: \(field) needs \(n) bytes at offset \(at), the data has \(buffer.count)")
        }
    }
}
