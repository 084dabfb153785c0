import TidemarkSystem

/// Reads frames from a stream (docs/wire-format.md, "Frames"). A frame
/// header is checked (magic, version, known type, length within the type's
/// limit) before its payload is allocated; a payload must decode exactly.
/// Malformed input throws .corrupt, a stream that ends inside a frame .io.
///
/// Not thread-safe: one reader per connection, used by one thread.
public final class FrameReader: @unchecked Sendable {
    private let stream: ByteStream
    /// Read-ahead for small frames; a large payload is read into place.
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0, end = 0
    /// Frames and bytes read so far.
    public private(set) var framesRead: UInt64 = 0
    public private(set) var bytesRead: UInt64 = 0
    /// Frame versions read; others are refused. A process server widens it
    /// to `WireProtocol.acceptedVersions`.
    public var acceptedVersions: ClosedRange<UInt16> = WireProtocol.version...WireProtocol.version

    static let bufferBytes = 64 << 10

    public init(_ s: ByteStream) {
        stream = s
        buffer = .allocate(byteCount: Self.bufferBytes, alignment: 16)
    }

    deinit { buffer.deallocate() }

    /// True when read-ahead holds bytes of a next frame: a caller that polls
    /// the stream before `next()` must look here first.
    public var hasBufferedBytes: Bool { start < end }

    /// A frame as `nextFrame()` returns it: a whole message, or a segment
    /// whose `length` payload bytes the caller reads with `readPayload`.
    public enum Frame {
        case message(WireMessage)
        case segment(length: Int)
    }

    /// Payload bytes of the last segment frame not yet read (`nextFrame`).
    public private(set) var payloadRemaining = 0

    /// The next message, or nil at a clean end of stream (between frames).
    public func next() throws -> WireMessage? {
        guard let frame = try nextFrame() else { return nil }
        switch frame {
        case .message(let m):
            return m
        case .segment(let length):
            let payload = try [UInt8](unsafeUninitializedCapacity: length) { b, initialized in
                try readPayload(into: UnsafeMutableRawBufferPointer(b))
                initialized = length
            }
            return .segment(payload)
        }
    }

    /// The next frame, or nil at a clean end of stream (between frames). A
    /// control message is read and decoded whole; of a segment only the
    /// frame header is read: the caller reads its `length` bytes with
    /// `readPayload`, in pieces, wherever they should go (the process
    /// server reads most of a segment straight into the buffer its target
    /// object is written from), before it asks for the next frame.
    public func nextFrame() throws -> Frame? {
        precondition(payloadRemaining == 0, "FrameReader: the previous segment's payload was not read")
        var header = (UInt64(0), UInt32(0))  // 12 bytes of storage
        let got = try withUnsafeMutableBytes(of: &header) { h in
            try readExact(UnsafeMutableRawBufferPointer(rebasing: h[0..<WireProtocol.frameHeaderBytes]), eofAllowed: true)
        }
        if got == 0 { return nil }
        let (type, length) = try withUnsafeBytes(of: &header) { h in
            try Self.parseHeader(UnsafeRawBufferPointer(rebasing: h[0..<WireProtocol.frameHeaderBytes]), accepting: acceptedVersions)
        }
        // length checked against the type's limit
        if type == .segment {
            framesRead += 1
            payloadRemaining = length
            return .segment(length: length)
        }
        let payload = try [UInt8](unsafeUninitializedCapacity: length) { b, initialized in
            _ = try readExact(UnsafeMutableRawBufferPointer(b), eofAllowed: false)
            initialized = length
        }
        framesRead += 1
        return .message(try payload.withUnsafeBytes { try WireMessage.decode(type: type, payload: $0) })
    }

    /// Reads the next `dst.count` bytes of the current segment's payload
    /// into dst (all of them, or throws). Asking for more than remains is a
    /// programming error.
    public func readPayload(into dst: UnsafeMutableRawBufferPointer) throws {
        precondition(dst.count <= payloadRemaining, "FrameReader: \(dst.count) bytes asked of a payload with \(payloadRemaining) left")
        _ = try readExact(dst, eofAllowed: false)
        payloadRemaining -= dst.count
    }

    /// Validates a frame header; returns the type and payload length.
    static func parseHeader(_ h: UnsafeRawBufferPointer,
                            accepting accepted: ClosedRange<UInt16> = WireProtocol.version...WireProtocol.version) throws -> (WireMessage.MessageType, Int) {
        var r = ByteReader(h, what: "frame header")
        guard try r.bytes(4, "magic") == WireProtocol.magic else {
            throw TidemarkError(.corrupt, "the peer is not speaking the Tidemark wire protocol (bad frame magic)",
                                hint: "check that the address and port are those of a Tidemark process server / agent")
        }
        let version = try r.u16("version")
        guard accepted.contains(version) else {
            throw TidemarkError(.corrupt, "the peer speaks wire protocol version \(version); this build speaks \(accepted.count == 1 ? "\(accepted.lowerBound)" : "\(accepted.lowerBound) to \(accepted.upperBound)")",
                                hint: "run the same Tidemark version on agents and process servers")
        }
        let code = try r.u16("type")
        guard let type = WireMessage.MessageType(rawValue: code) else {
            throw TidemarkError(.corrupt, "frame of unknown message type \(code)")
        }
        let length = Int(try r.u32("length"))
        guard length <= type.payloadBytesMax else {
            throw TidemarkError(.corrupt, "\(type) frame declares \(length) payload bytes; the limit is \(type.payloadBytesMax)")
        }
        return (type, length)
    }

    /// Fills dst. Returns 0 when the stream ended before the first byte and
    /// eofAllowed; throws .io when it ended part-way.
    private func readExact(_ dst: UnsafeMutableRawBufferPointer, eofAllowed: Bool) throws -> Int {
        var done = 0
        while done < dst.count {
            if start < end {
                let n = min(end - start, dst.count - done)
                UnsafeMutableRawBufferPointer(rebasing: dst[done..<done + n])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: buffer[start..<start + n]))
                start += n
                done += n
                continue
            }
            let want = dst.count - done
            let n: Int
            if want >= buffer.count {
                n = try stream.read(into: UnsafeMutableRawBufferPointer(rebasing: dst[done...]))
                done += n
            } else {
                n = try stream.read(into: buffer)
                start = 0
                end = n
            }
            precondition(n >= 0, "ByteStream.read returned \(n)")
            if n == 0 {
                if done == 0 && eofAllowed { return 0 }
                throw TidemarkError(.io, "the connection closed in the middle of a frame (\(done) of \(dst.count) bytes of a frame \(eofAllowed ? "header" : "payload"))")
            }
            bytesRead += UInt64(n)
        }
        return done
    }
}

/// Writes frames to a stream. A control message goes out in one write; a
/// segment as the frame header and then the segment bytes, uncopied.
///
/// Not thread-safe: one writer per connection, used by one thread (or
/// behind the caller's lock).
public final class FrameWriter: @unchecked Sendable {
    private let stream: ByteStream
    private var scratch = ByteWriter(capacity: 256)
    public private(set) var framesWritten: UInt64 = 0
    /// The protocol version frames are written in: this build's, or the
    /// older one a process server agreed on with an older agent.
    public var version: UInt16 = WireProtocol.version

    public init(_ s: ByteStream) { stream = s }

    /// Sends one message. Throws .invalidArgument for a message that breaks
    /// a limit (nothing is written then), and the stream's errors.
    public func send(_ m: WireMessage) throws {
        scratch.bytes.removeAll(keepingCapacity: true)
        if case .segment(let bytes) = m {
            guard bytes.count <= WireLimits.segmentBytesMax else {
                throw TidemarkError(.invalidArgument, "a segment of \(bytes.count) bytes exceeds the limit \(WireLimits.segmentBytesMax)")
            }
            Self.header(&scratch, .segment, bytes.count, version: version)
            try scratch.bytes.withUnsafeBytes { try stream.writeAll($0) }
            try bytes.withUnsafeBytes { try stream.writeAll($0) }
        } else {
            Self.header(&scratch, m.type, 0, version: version)
            try m.encodeControlPayload(into: &scratch)
            let length = scratch.bytes.count - WireProtocol.frameHeaderBytes
            precondition(length <= m.type.payloadBytesMax, "\(m.type) payload of \(length) bytes")
            LittleEndian.store(UInt32(length), into: &scratch.bytes, at: 8)
            try scratch.bytes.withUnsafeBytes { try stream.writeAll($0) }
        }
        framesWritten += 1
    }

    static func header(_ w: inout ByteWriter, _ type: WireMessage.MessageType, _ length: Int,
                       version: UInt16 = WireProtocol.version) {
        w.raw(WireProtocol.magic)
        w.u16(version)
        w.u16(type.rawValue)
        w.u32(UInt32(length))
    }
}
