// Frames and messages: FrameReader over an in-memory stream (read in pieces
// of a fuzzed size), WireMessage.decode for every type. Invariant: every
// frame that decodes re-encodes (FrameWriter, in the frame's version) to
// exactly the bytes it was read from (the format is canonical).
import FuzzSupport
import TidemarkSystem
import TidemarkWire

@_cdecl("fuzz_frames_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

/// Input: one byte of options (low 4 bits: read piece size 1 << n; bit 4:
/// read segment payloads in two pieces), then a stream of frames.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let options = all.first else { return 0 }
    let input = Array(all.dropFirst())
    let reader = FrameReader(MemoryStream(input, chunk: 1 << Int(options & 0x0F)))
    reader.acceptedVersions = WireProtocol.acceptedVersions
    var offset = 0
    do {
        while true {
            let message: WireMessage
            guard let frame = try reader.nextFrame() else { break }
            switch frame {
            case .message(let m):
                message = m
            case .segment(let length):
                var payload = [UInt8](repeating: 0, count: length)
                try payload.withUnsafeMutableBytes { p in
                    if options & 0x10 != 0 && length > 1 {
                        try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: p[0..<length / 2]))
                        try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: p[(length / 2)...]))
                    } else {
                        try reader.readPayload(into: p)
                    }
                }
                message = .segment(payload)
            }
            // The frame's bytes in the input.
            let version: UInt16 = Fuzz.le(input, offset + 4)
            let length = Int(Fuzz.le(input, offset + 8, as: UInt32.self))
            let frameBytes = Array(input[offset..<offset + 12 + length])
            offset += 12 + length
            let out = MemoryStream()
            let writer = FrameWriter(out)
            writer.version = version
            do {
                try writer.send(message)
            } catch {
                Fuzz.check(false, "a decoded \(message.type) message does not encode: \(error)")
            }
            Fuzz.check(out.written == frameBytes, "\(message.type) frame re-encodes to different bytes")
        }
        Fuzz.check(offset == input.count, "clean end of stream before the input's end")
    } catch {
        Fuzz.expectTyped(error, "fuzz-frames")
    }
    return 0
}

func seeds() throws -> [(String, [UInt8])] {
    let d = ChunkDigest(low: 0x0123_4567_89ab_cdef, high: 0xfedc_ba98_7654_3210)
    let messages: [(String, WireMessage)] = [
        ("hello", .hello(protocolVersion: 3, agentID: "agent-1")),
        ("helloOK", .helloOK(protocolVersion: 3, serverID: "server-1")),
        ("openDisk", .openDisk(diskID: "vdb", diskSizeBytes: 1 << 30, chunkSizeBytes: 65536, keyID: 0x1122334455667788)),
        ("diskState", .diskState(diskID: "vdb", durableSequence: 7, committedSequence: 5)),
        ("segment", .segment(Array("TMSG not really a segment".utf8))),
        ("ackDurable", .ackDurable(diskID: "vdb", sequence: 9)),
        ("ackCommitted", .ackCommitted(diskID: "vdb", sequence: 8)),
        ("error", .error(code: 400, message: "expected hello as the first message")),
        ("ping", .ping(42)), ("pong", .pong(42)),
        ("digestRequest", .digestRequest(diskID: "vdb", firstChunk: 16, count: 4)),
        ("chunkDigests", .chunkDigests(diskID: "vdb", firstChunk: 16, sequence: 3,
                                       states: [.unknown, .zero, .data(d, .hmacSHA256), .data(d, .gmacAES)])),
    ]
    var out: [(String, [UInt8])] = []
    var session: [UInt8] = [0x05]
    for (name, m) in messages {
        let s = MemoryStream()
        try FrameWriter(s).send(m)
        out.append((name, [0x00] + s.written))
        session += s.written
    }
    // A version 2 frame, and a whole session read in 32-byte pieces.
    let s2 = MemoryStream()
    let w2 = FrameWriter(s2)
    w2.version = 2
    try w2.send(.hello(protocolVersion: 2, agentID: "old-agent"))
    out.append(("hello-v2", [0x13] + s2.written))
    out.append(("session", session))
    return out
}
