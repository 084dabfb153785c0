import TidemarkSystem

/// Constants of the frame format (docs/wire-format.md, "Frames").
public enum WireProtocol {
    /// "TMWF".
    public static let magic: [UInt8] = [0x54, 0x4D, 0x57, 0x46]
    /// The version of this protocol: frame layout and message payloads.
    /// Version 2 added `digestRequest` and `chunkDigests` (and segments of
    /// format version 2); version 3 added chunk state 3 (a digest of
    /// construction 3, from segments of format version 3).
    public static let version: UInt16 = 3
    /// Versions a process server accepts in `hello`. To a version 2 agent it
    /// answers in version 2: state 3 chunks go as unknown (the agent then
    /// sends them), since it cannot compute their digests.
    public static let acceptedVersions: ClosedRange<UInt16> = 2...3
    /// magic (4), version u16, type u16, payload length u32.
    public static let frameHeaderBytes = 12
}

/// One message of the agent ↔ process server protocol.
public enum WireMessage: Equatable, Sendable {
    case hello(protocolVersion: UInt16, agentID: String)
    case helloOK(protocolVersion: UInt16, serverID: String)
    case openDisk(diskID: String, diskSizeBytes: UInt64, chunkSizeBytes: UInt32, keyID: UInt64)
    case diskState(diskID: String, durableSequence: UInt64, committedSequence: UInt64)
    /// A sealed segment, verbatim.
    case segment([UInt8])
    /// Every segment of the disk up to `sequence` is in the spool (cumulative).
    case ackDurable(diskID: String, sequence: UInt64)
    /// Every segment of the disk up to `sequence` is in target storage (cumulative).
    case ackCommitted(diskID: String, sequence: UInt64)
    case error(code: UInt16, message: String)
    case ping(UInt64), pong(UInt64)
    /// What does the target hold for chunks [firstChunk, firstChunk + count)?
    /// (count 1 ... `WireLimits.digestsPerRequestMax`.)
    case digestRequest(diskID: String, firstChunk: UInt64, count: UInt32)
    /// The answer: one state per chunk from `firstChunk`, reflecting every
    /// segment of the disk up to `sequence`.
    case chunkDigests(diskID: String, firstChunk: UInt64, sequence: UInt64, states: [ChunkState])

    /// Message type codes (the frame header's type field).
    public enum MessageType: UInt16, Sendable, CaseIterable {
        case hello = 1, helloOK = 2, openDisk = 3, diskState = 4, segment = 5
        case ackDurable = 6, ackCommitted = 7, error = 8, ping = 9, pong = 10
        case digestRequest = 11, chunkDigests = 12

        /// The largest payload a frame of this type may declare.
        public var payloadBytesMax: Int {
            switch self {
            case .segment: WireLimits.framePayloadBytesMax
            case .chunkDigests: WireLimits.chunkDigestsPayloadBytesMax
            default: WireLimits.controlPayloadBytesMax
            }
        }
    }

    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .helloOK: .helloOK
        case .openDisk: .openDisk
        case .diskState: .diskState
        case .segment: .segment
        case .ackDurable: .ackDurable
        case .ackCommitted: .ackCommitted
        case .error: .error
        case .ping: .ping
        case .pong: .pong
        case .digestRequest: .digestRequest
        case .chunkDigests: .chunkDigests
        }
    }

    /// Encodes the payload of a message other than .segment. Identifiers
    /// that break the limits throw .invalidArgument; an error message longer
    /// than the limit is cut at a UTF-8 scalar boundary.
    func encodeControlPayload(into w: inout ByteWriter) throws {
        func id(_ s: String, _ what: String) throws {
            try checkIdentifier(s, what)
            w.u8(UInt8(s.utf8.count))
            w.raw(s.utf8)
        }
        switch self {
        case .hello(let v, let agentID):
            w.u16(v); try id(agentID, "agent id")
        case .helloOK(let v, let serverID):
            w.u16(v); try id(serverID, "server id")
        case .openDisk(let diskID, let size, let chunk, let keyID):
            try id(diskID, "disk id"); w.u64(size); w.u32(chunk); w.u64(keyID)
        case .diskState(let diskID, let durable, let committed):
            try id(diskID, "disk id"); w.u64(durable); w.u64(committed)
        case .ackDurable(let diskID, let seq), .ackCommitted(let diskID, let seq):
            try id(diskID, "disk id"); w.u64(seq)
        case .error(let code, let message):
            let m = Self.truncateUTF8(message, WireLimits.errorMessageBytesMax)
            w.u16(code); w.u16(UInt16(m.count)); w.raw(m)
        case .ping(let v), .pong(let v):
            w.u64(v)
        case .digestRequest(let diskID, let first, let count):
            guard count >= 1, Int(count) <= WireLimits.digestsPerRequestMax else {
                throw TidemarkError(.invalidArgument, "a digest request for \(count) chunks; it must ask for 1...\(WireLimits.digestsPerRequestMax)")
            }
            try id(diskID, "disk id"); w.u64(first); w.u32(count)
        case .chunkDigests(let diskID, let first, let sequence, let states):
            guard states.count >= 1, states.count <= WireLimits.digestsPerRequestMax else {
                throw TidemarkError(.invalidArgument, "a digest answer with \(states.count) chunks; it must hold 1...\(WireLimits.digestsPerRequestMax)")
            }
            try id(diskID, "disk id"); w.u64(first); w.u64(sequence); w.u32(UInt32(states.count))
            for st in states {
                switch st {
                case .unknown: w.u8(ChunkStateCode.unknown)
                case .zero: w.u8(ChunkStateCode.zero)
                case .data(_, .hmacSHA256): w.u8(ChunkStateCode.dataV2)
                case .data(_, .gmacAES): w.u8(ChunkStateCode.dataV3)
                }
            }
            for case .data(let d, _) in states { w.u64(d.low); w.u64(d.high) }
        case .segment:
            preconditionFailure("segment payloads are written verbatim")
        }
    }

    /// At most max bytes of s, cut at a scalar boundary.
    static func truncateUTF8(_ s: String, _ max: Int) -> [UInt8] {
        if s.utf8.count <= max { return Array(s.utf8) }
        var out: [UInt8] = []
        for scalar in s.unicodeScalars {
            let n = String(scalar).utf8.count
            if out.count + n > max { break }
            out.append(contentsOf: String(scalar).utf8)
        }
        return out
    }

    /// Decodes a frame payload of the given type. The payload must be
    /// consumed exactly; malformed input throws .corrupt.
    static func decode(type: MessageType, payload: UnsafeRawBufferPointer) throws -> WireMessage {
        var r = ByteReader(payload, what: "\(type) message")
        func id(_ what: String) throws -> String {
            let n = Int(try r.u8("\(what) length"))
            let s = try r.string(n, what)
            try checkDecodedIdentifier(s, what, in: "\(type) message")
            return s
        }
        let m: WireMessage
        switch type {
        case .hello:
            let v = try r.u16("protocol version")
            m = .hello(protocolVersion: v, agentID: try id("agent id"))
        case .helloOK:
            let v = try r.u16("protocol version")
            m = .helloOK(protocolVersion: v, serverID: try id("server id"))
        case .openDisk:
            let d = try id("disk id")
            m = .openDisk(diskID: d, diskSizeBytes: try r.u64("disk size"), chunkSizeBytes: try r.u32("chunk size"),
                          keyID: try r.u64("key id"))
        case .diskState:
            let d = try id("disk id")
            m = .diskState(diskID: d, durableSequence: try r.u64("durable sequence"),
                           committedSequence: try r.u64("committed sequence"))
        case .segment:
            guard payload.count <= WireLimits.segmentBytesMax else {
                throw TidemarkError(.corrupt, "segment message of \(payload.count) bytes exceeds the segment limit \(WireLimits.segmentBytesMax)")
            }
            m = .segment(r.rest())
        case .ackDurable:
            let d = try id("disk id")
            m = .ackDurable(diskID: d, sequence: try r.u64("sequence"))
        case .ackCommitted:
            let d = try id("disk id")
            m = .ackCommitted(diskID: d, sequence: try r.u64("sequence"))
        case .error:
            let code = try r.u16("error code")
            let n = Int(try r.u16("message length"))
            guard n <= WireLimits.errorMessageBytesMax else {
                throw TidemarkError(.corrupt, "error message: \(n) bytes exceeds the limit \(WireLimits.errorMessageBytesMax)")
            }
            m = .error(code: code, message: try r.string(n, "message"))
        case .ping:
            m = .ping(try r.u64("value"))
        case .pong:
            m = .pong(try r.u64("value"))
        case .digestRequest:
            let d = try id("disk id")
            let first = try r.u64("first chunk")
            let count = try r.u32("count")
            guard count >= 1, Int(count) <= WireLimits.digestsPerRequestMax else {
                throw TidemarkError(.corrupt, "digestRequest message: \(count) chunks; the limit is 1...\(WireLimits.digestsPerRequestMax)")
            }
            m = .digestRequest(diskID: d, firstChunk: first, count: count)
        case .chunkDigests:
            let d = try id("disk id")
            let first = try r.u64("first chunk")
            let sequence = try r.u64("sequence")
            let n = Int(try r.u32("count"))
            guard n >= 1, n <= WireLimits.digestsPerRequestMax else {
                throw TidemarkError(.corrupt, "chunkDigests message: \(n) chunks; the limit is 1...\(WireLimits.digestsPerRequestMax)")
            }
            let codes = try r.bytes(n, "chunk states")
            var states: [ChunkState] = []
            states.reserveCapacity(n)
            for (i, c) in codes.enumerated() {
                switch c {
                case ChunkStateCode.unknown: states.append(.unknown)
                case ChunkStateCode.zero: states.append(.zero)
                case ChunkStateCode.dataV2, ChunkStateCode.dataV3:
                    let low = try r.u64("digest of chunk \(i)")
                    let digest = ChunkDigest(low: low, high: try r.u64("digest of chunk \(i)"))
                    states.append(.data(digest, c == ChunkStateCode.dataV2 ? .hmacSHA256 : .gmacAES))
                default:
                    throw TidemarkError(.corrupt, "chunkDigests message: chunk \(i) has unknown state \(c)")
                }
            }
            m = .chunkDigests(diskID: d, firstChunk: first, sequence: sequence, states: states)
        }
        try r.end()
        return m
    }
}

/// The state byte of a chunk in a `chunkDigests` message.
enum ChunkStateCode {
    static let unknown: UInt8 = 0
    static let zero: UInt8 = 1
    /// Data, digest of construction 2 (HMAC-SHA-256).
    static let dataV2: UInt8 = 2
    /// Data, digest of construction 3 (AES of a GMAC tag; protocol version 3).
    static let dataV3: UInt8 = 3
}
