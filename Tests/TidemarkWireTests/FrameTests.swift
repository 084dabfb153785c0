import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkWire

/// An in-memory stream: writes append, reads consume, optionally a few
/// bytes at a time to exercise partial reads.
final class MemoryPipe: ByteStream {
    var data: [UInt8] = []
    var readPosition = 0
    var maxRead: Int
    var reads = 0

    init(_ bytes: [UInt8] = [], maxRead: Int = .max) {
        data = bytes
        self.maxRead = maxRead
    }

    func read(into b: UnsafeMutableRawBufferPointer) throws -> Int {
        reads += 1
        let n = min(b.count, data.count - readPosition, maxRead)
        guard n > 0 else { return 0 }
        data.withUnsafeBytes { b.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[readPosition..<readPosition + n])) }
        readPosition += n
        return n
    }

    func writeAll(_ b: UnsafeRawBufferPointer) throws { data.append(contentsOf: b) }
}

func frame(type: UInt16, length: UInt32, version: UInt16 = WireProtocol.version, magic: [UInt8] = WireProtocol.magic) -> [UInt8] {
    var w = ByteWriter()
    w.raw(magic); w.u16(version); w.u16(type); w.u32(length)
    return w.bytes
}

func readAll(_ bytes: [UInt8], maxRead: Int = .max) throws -> [WireMessage] {
    let r = FrameReader(MemoryPipe(bytes, maxRead: maxRead))
    var out: [WireMessage] = []
    while let m = try r.next() { out.append(m) }
    return out
}

@Suite struct FrameTests {
    static let messages: [WireMessage] = [
        .hello(protocolVersion: 1, agentID: "agent-01.example"),
        .helloOK(protocolVersion: 1, serverID: "ps-1"),
        .openDisk(diskID: "disk-a", diskSizeBytes: 1 << 40, chunkSizeBytes: 65536, keyID: 0xDEAD_BEEF_0123_4567),
        .diskState(diskID: "disk-a", durableSequence: 41, committedSequence: 17),
        .segment([1, 2, 3, 4, 5]),
        .ackDurable(diskID: "disk-a", sequence: 42),
        .ackCommitted(diskID: "disk-a", sequence: 18),
        .error(code: 7, message: "spool full — back off"),
        .ping(99), .pong(99),
        .segment([]),
        .digestRequest(diskID: "disk-a", firstChunk: 4096, count: 2048),
        .chunkDigests(diskID: "disk-a", firstChunk: 4096, sequence: 77,
                      states: [.unknown, .zero, .data(ChunkDigest(low: 0x0123_4567_89AB_CDEF, high: 0xFEDC_BA98_7654_3210), .gmacAES),
                               .data(ChunkDigest(low: 7, high: 8), .hmacSHA256), .unknown]),
    ]

    @Test(arguments: [Int.max, 1, 5, 13]) func roundTrip(maxRead: Int) throws {
        let pipe = MemoryPipe()
        let w = FrameWriter(pipe)
        for m in Self.messages { try w.send(m) }
        #expect(w.framesWritten == UInt64(Self.messages.count))
        #expect(try readAll(pipe.data, maxRead: maxRead) == Self.messages)
    }

    @Test func realSegmentThroughFrames() throws {
        let key = try testKey()
        let segment = try seal(Fixture.random(), sealer: SegmentSealer(key: key, compressionLevel: 1))
        let pipe = MemoryPipe()
        try FrameWriter(pipe).send(.segment(segment))
        let got = try readAll(pipe.data, maxRead: 70_000)
        #expect(got == [.segment(segment)])
        guard case .segment(let bytes) = got[0] else { return }
        #expect(try open(bytes, opener: SegmentOpener(key: key)).1 == Fixture.random().payload)
    }

    /// `nextFrame` hands a segment's payload to the caller, who reads it in
    /// pieces (the process server: the header, then the rest into place);
    /// the frames around it are unaffected, and the header alone decodes
    /// to what the whole segment does.
    @Test(arguments: [Int.max, 7]) func segmentPayloadReadInPieces(maxRead: Int) throws {
        let segment = try seal(Fixture.random(), sealer: SegmentSealer(key: testKey(), compressionLevel: 1))
        let pipe = MemoryPipe()
        let w = FrameWriter(pipe)
        try w.send(.ping(1)); try w.send(.segment(segment)); try w.send(.segment([])); try w.send(.pong(2))
        let r = FrameReader(MemoryPipe(pipe.data, maxRead: maxRead))
        guard case .message(.ping(1))? = try r.nextFrame(), case .segment(let length)? = try r.nextFrame() else {
            Issue.record("expected a ping then a segment"); return
        }
        #expect(length == segment.count && r.payloadRemaining == length)
        var fixed = [UInt8](repeating: 0, count: SegmentFormat.fixedBytes)
        try fixed.withUnsafeMutableBytes { try r.readPayload(into: $0) }
        let declared = try fixed.withUnsafeBytes { try SegmentHeader.declaredHeaderBytes($0) }
        var head = fixed + [UInt8](repeating: 0, count: declared - fixed.count)
        try head.withUnsafeMutableBytes { try r.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: $0[SegmentFormat.fixedBytes...])) }
        let (fromHead, n) = try head.withUnsafeBytes { try SegmentHeader.decode($0, segmentBytes: length) }
        let (whole, m) = try segment.withUnsafeBytes { try SegmentHeader.decode($0) }
        #expect(n == declared && m == declared && fromHead == whole && Array(segment[..<declared]) == head)
        // A wrong total is refused from the header alone.
        #expect(tidemarkError { _ = try head.withUnsafeBytes { try SegmentHeader.decode($0, segmentBytes: length - 1) } }?.kind == .corrupt)
        var rest = [UInt8](repeating: 0, count: length - declared)
        try rest.withUnsafeMutableBytes { try r.readPayload(into: $0) }
        #expect(head + rest == segment && r.payloadRemaining == 0)
        guard case .segment(0)? = try r.nextFrame() else { Issue.record("expected an empty segment"); return }
        guard case .message(.pong(2))? = try r.nextFrame() else { Issue.record("expected a pong"); return }
        #expect(try r.nextFrame() == nil)
    }

    /// The fixed header's declared length: bad magic, a length below the
    /// fixed part or above the limit, and a short buffer are .corrupt.
    @Test func declaredHeaderBytesChecksItsBounds() throws {
        let segment = try seal(Fixture.random(), sealer: SegmentSealer(key: testKey(), compressionLevel: 1))
        let fixed = Array(segment[..<SegmentFormat.fixedBytes])
        #expect(try fixed.withUnsafeBytes { try SegmentHeader.declaredHeaderBytes($0) } > SegmentFormat.fixedBytes)
        func with(_ edit: (inout [UInt8]) -> Void) -> TidemarkError? {
            var b = fixed
            edit(&b)
            return tidemarkError { _ = try b.withUnsafeBytes { try SegmentHeader.declaredHeaderBytes($0) } }
        }
        #expect(with { $0[0] ^= 1 }?.kind == .corrupt)
        #expect(with { $0.removeLast() }?.kind == .corrupt)
        // The header length is the little-endian u32 at offset 8.
        func length(_ v: Int) -> (inout [UInt8]) -> Void { { b in for i in 0..<4 { b[8 + i] = UInt8(truncatingIfNeeded: v >> (8 * i)) } } }
        #expect(with(length(SegmentFormat.fixedBytes - 1))?.kind == .corrupt)
        #expect(with(length(WireLimits.segmentHeaderBytesMax + 1))?.kind == .corrupt)
        var largest = fixed
        length(WireLimits.segmentHeaderBytesMax)(&largest)
        #expect(try largest.withUnsafeBytes { try SegmentHeader.declaredHeaderBytes($0) } == WireLimits.segmentHeaderBytesMax)
    }

    @Test func longErrorMessageIsCutAtScalarBoundary() throws {
        let pipe = MemoryPipe()
        let long = String(repeating: "é", count: 3000)  // 6000 bytes
        try FrameWriter(pipe).send(.error(code: 1, message: long))
        guard case .error(_, let m) = try readAll(pipe.data)[0] else { Issue.record("not an error"); return }
        #expect(m.utf8.count == 4096 && m == String(repeating: "é", count: 2048))
    }

    @Test func writerRejectsOversizedIdentifiers() throws {
        let pipe = MemoryPipe()
        let w = FrameWriter(pipe)
        #expect(tidemarkError { try w.send(.hello(protocolVersion: 1, agentID: String(repeating: "a", count: 256))) }?.kind == .invalidArgument)
        #expect(tidemarkError { try w.send(.ackDurable(diskID: "", sequence: 1)) }?.kind == .invalidArgument)
        #expect(tidemarkError { try w.send(.segment([UInt8](repeating: 0, count: WireLimits.segmentBytesMax + 1))) }?.kind == .invalidArgument)
        #expect(pipe.data.isEmpty)
    }

    @Test func cleanEOFAndTruncation() throws {
        #expect(try readAll([]) == [])
        let pipe = MemoryPipe()
        try FrameWriter(pipe).send(.diskState(diskID: "d", durableSequence: 1, committedSequence: 1))
        for cut in 1..<pipe.data.count {
            let e = tidemarkError { _ = try readAll(Array(pipe.data[0..<cut])) }
            #expect(e?.kind == .io && e?.message.contains("closed in the middle of a frame") == true, "cut \(cut)")
        }
    }

    @Test func oversizedFramesRejectedBeforeAllocation() throws {
        // The declared length is refused from the header alone: the reader
        // never asks the stream for the payload.
        for (type, length) in [(UInt16(5), UInt32(WireLimits.framePayloadBytesMax + 1)), (5, .max), (1, UInt32(WireLimits.controlPayloadBytesMax + 1)), (8, 1 << 30)] {
            let pipe = MemoryPipe(frame(type: type, length: length))
            let e = tidemarkError { _ = try FrameReader(pipe).next() }
            #expect(e?.kind == .corrupt && e?.message.contains("the limit is") == true, "type \(type) length \(length)")
            #expect(pipe.readPosition == WireProtocol.frameHeaderBytes)
        }
    }

    @Test func malformedFramesRejected() throws {
        func corrupt(_ bytes: [UInt8], _ needle: String, sourceLocation: SourceLocation = #_sourceLocation) {
            let e = tidemarkError({ _ = try readAll(bytes) }, sourceLocation: sourceLocation)
            #expect(e?.kind == .corrupt, sourceLocation: sourceLocation)
            #expect(e?.message.contains(needle) == true, "\(e?.message ?? "-")", sourceLocation: sourceLocation)
        }
        corrupt(frame(type: 9, length: 8, magic: Array("HTTP".utf8)) + [UInt8](repeating: 0, count: 8), "bad frame magic")
        corrupt(frame(type: 9, length: 8, version: 1) + [UInt8](repeating: 0, count: 8), "version 1")
        corrupt(frame(type: 9, length: 8, version: 2) + [UInt8](repeating: 0, count: 8), "version 2")
        corrupt(frame(type: 9, length: 8, version: 4) + [UInt8](repeating: 0, count: 8), "version 4")
        corrupt(frame(type: 99, length: 0), "unknown message type 99")
        // ping with 7 or 9 bytes
        corrupt(frame(type: 9, length: 7) + [UInt8](repeating: 0, count: 7), "truncated")
        corrupt(frame(type: 9, length: 9) + [UInt8](repeating: 0, count: 9), "trailing bytes")
        // A string length pointing past the payload.
        corrupt(frame(type: 6, length: 9) + [200] + [UInt8](repeating: 0x61, count: 8), "truncated")
        // An empty disk id, invalid UTF-8.
        corrupt(frame(type: 6, length: 9) + [0] + [UInt8](repeating: 0, count: 8), "empty")
        corrupt(frame(type: 6, length: 10) + [1, 0xFF] + [UInt8](repeating: 0, count: 8), "not valid UTF-8")
        // An error message longer than its limit, and one longer than the payload.
        var w = ByteWriter(); w.u16(1); w.u16(5000); w.zeros(5000)
        corrupt(frame(type: 8, length: UInt32(w.bytes.count)) + w.bytes, "limit")
        corrupt(frame(type: 8, length: 4) + [1, 0, 0xFF, 0xFF], "error message")
    }

    /// Random garbage never crashes the reader and never yields more than it holds.
    @Test func fuzzGarbage() throws {
        var rng = SplitMix64(seed: 11)
        let pipe = MemoryPipe()
        let w = FrameWriter(pipe)
        for m in Self.messages { try w.send(m) }
        let good = pipe.data
        for _ in 0..<2000 {
            var t = good
            for _ in 0..<(1 + rng.below(4)) { t[rng.below(t.count)] = UInt8.random(in: 0...255, using: &rng) }
            if rng.below(4) == 0 { t = Array(t[0..<rng.below(t.count)]) }
            do { _ = try readAll(t, maxRead: 1 + rng.below(64)) } catch is TidemarkError {}
        }
    }
}

@Suite struct GoldenTests {
    /// The example frame of docs/wire-format.md, section 3.
    @Test func ackDurableExample() throws {
        let pipe = MemoryPipe()
        try FrameWriter(pipe).send(.ackDurable(diskID: "d1", sequence: 42))
        #expect(hex(pipe.data) == "544d5746030006000b0000000264312a00000000000000")
    }

    /// The limits table of docs/wire-format.md, section 6.
    @Test func limits() {
        #expect(WireLimits.segmentHeaderBytesMax == 66_194)
        #expect(WireLimits.segmentBytesMax == 8_454_818)
        #expect(WireLimits.segmentBytesMax <= WireLimits.framePayloadBytesMax)
        #expect(WireLimits.framePayloadBytesMax == 8_519_680)
        #expect(WireLimits.chunkDigestsPayloadBytesMax == 35_092)
        #expect(WireLimits.chunkDigestsPayloadBytesMax > WireLimits.controlPayloadBytesMax)
    }
}

@Suite struct DigestMessageTests {
    /// The digest answer example of docs/wire-format.md, section 3.
    @Test func chunkDigestsExample() throws {
        let pipe = MemoryPipe()
        try FrameWriter(pipe).send(.chunkDigests(diskID: "d1", firstChunk: 16, sequence: 9,
                                                 states: [.zero, .data(ChunkDigest(bytes: Array(0..<16)), .gmacAES), .unknown]))
        #expect(hex(pipe.data) == "544d574603000c002a000000" + "026431" + "1000000000000000" + "0900000000000000"
                + "03000000" + "010300" + "000102030405060708090a0b0c0d0e0f")
        let req = MemoryPipe()
        try FrameWriter(req).send(.digestRequest(diskID: "d1", firstChunk: 16, count: 3))
        #expect(hex(req.data) == "544d574603000b000f000000" + "026431" + "1000000000000000" + "03000000")
    }

    @Test func countsOutsideTheLimitsAreRefused() throws {
        let pipe = MemoryPipe()
        let w = FrameWriter(pipe)
        #expect(tidemarkError { try w.send(.digestRequest(diskID: "d", firstChunk: 0, count: 0)) }?.kind == .invalidArgument)
        #expect(tidemarkError { try w.send(.digestRequest(diskID: "d", firstChunk: 0, count: UInt32(WireLimits.digestsPerRequestMax + 1))) }?.kind == .invalidArgument)
        #expect(tidemarkError { try w.send(.chunkDigests(diskID: "d", firstChunk: 0, sequence: 1, states: [])) }?.kind == .invalidArgument)
        #expect(pipe.data.isEmpty)
        // The largest answer fits its frame limit exactly when the disk id is the longest.
        let states = (0..<WireLimits.digestsPerRequestMax).map { ChunkState.data(ChunkDigest(low: UInt64($0), high: 1), $0 % 2 == 0 ? .gmacAES : .hmacSHA256) }
        let disk = String(repeating: "d", count: WireLimits.stringBytesMax)
        try w.send(.chunkDigests(diskID: disk, firstChunk: 0, sequence: 1, states: states))
        #expect(pipe.data.count == WireProtocol.frameHeaderBytes + WireLimits.chunkDigestsPayloadBytesMax)
        #expect(try readAll(pipe.data) == [.chunkDigests(diskID: disk, firstChunk: 0, sequence: 1, states: states)])
    }

    /// A process server reads frames of protocol version 2 and writes in it
    /// for a version 2 agent; the agent's own reader takes only its version.
    @Test func olderVersionFramesWhereAccepted() throws {
        let old = frame(type: 9, length: 8, version: 2) + [UInt8](repeating: 0, count: 8)
        let strict = FrameReader(MemoryPipe(old))
        #expect(tidemarkError { _ = try strict.next() }?.message.contains("version 2") == true)
        let server = FrameReader(MemoryPipe(old))
        server.acceptedVersions = WireProtocol.acceptedVersions
        #expect(try server.next() == .ping(0))
        let pipe = MemoryPipe()
        let w = FrameWriter(pipe)
        w.version = 2
        try w.send(.pong(0))
        #expect(Array(pipe.data[4..<6]) == [2, 0])
    }

    @Test func malformedDigestMessagesAreRejected() throws {
        func corrupt(_ bytes: [UInt8], _ needle: String, sourceLocation: SourceLocation = #_sourceLocation) {
            let e = tidemarkError({ _ = try readAll(bytes) }, sourceLocation: sourceLocation)
            #expect(e?.kind == .corrupt, sourceLocation: sourceLocation)
            #expect(e?.message.contains(needle) == true, "\(e?.message ?? "-")", sourceLocation: sourceLocation)
        }
        var r = ByteWriter(); r.u8(1); r.raw([0x64]); r.u64(0); r.u32(0)
        corrupt(frame(type: 11, length: UInt32(r.bytes.count)) + r.bytes, "limit")
        var a = ByteWriter(); a.u8(1); a.raw([0x64]); a.u64(0); a.u64(1); a.u32(2); a.raw([1, 4])
        corrupt(frame(type: 12, length: UInt32(a.bytes.count)) + a.bytes, "unknown state 4")
        // A data state (either construction) whose digest is missing.
        for state: UInt8 in [2, 3] {
            var b = ByteWriter(); b.u8(1); b.raw([0x64]); b.u64(0); b.u64(1); b.u32(1); b.raw([state]); b.zeros(15)
            corrupt(frame(type: 12, length: UInt32(b.bytes.count)) + b.bytes, "truncated")
        }
        // A count beyond the limit is refused before the states are read.
        var c = ByteWriter(); c.u8(1); c.raw([0x64]); c.u64(0); c.u64(1); c.u32(UInt32(WireLimits.digestsPerRequestMax + 1))
        corrupt(frame(type: 12, length: UInt32(c.bytes.count)) + c.bytes, "limit")
        // A frame declaring more than the answer's limit.
        corrupt(frame(type: 12, length: UInt32(WireLimits.chunkDigestsPayloadBytesMax + 1)), "the limit is")
    }
}
