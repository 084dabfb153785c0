import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkWire

/// A fixed test key (never a real one).
func testKey(_ seed: UInt8 = 1) throws -> ReplicationKey {
    try ReplicationKey(bytes: (0..<32).map { UInt8($0) &* 7 &+ seed })
}

/// A segment of compressible data extents with a zero extent between them.
struct Fixture {
    var extents: [SegmentExtent]
    var payload: [UInt8]

    static func text(seed: UInt64 = 1) -> Fixture {
        var rng = SplitMix64(seed: seed)
        let chunk = 65536
        var payload: [UInt8] = []
        for i in 0..<3 {
            let line = Array("chunk \(i) block \(rng.next() % 1000) of a filesystem\n".utf8)
            for j in 0..<chunk { payload.append(line[j % line.count]) }
        }
        let extents = [
            SegmentExtent(offset: 0, length: UInt32(chunk), kind: .data),
            SegmentExtent(offset: UInt64(chunk) * 4, length: UInt32(chunk) * 2, kind: .data),
            SegmentExtent(offset: UInt64(chunk) * 10, length: UInt32(chunk) * 5, kind: .zero),
        ]
        return Fixture(extents: extents, payload: payload)
    }

    static func random(seed: UInt64 = 2) -> Fixture {
        var rng = SplitMix64(seed: seed)
        let payload = (0..<(3 * 65536)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return Fixture(extents: [SegmentExtent(offset: 65536, length: 3 * 65536, kind: .data)], payload: payload)
    }
}

let diskSize: UInt64 = 1 << 30

func seal(_ f: Fixture, sealer: SegmentSealer, disk: String = "disk-a", sequence: UInt64 = 5,
          kind: SegmentKind = .data, point: PointTag? = nil) throws -> [UInt8] {
    try f.payload.withUnsafeBytes {
        try sealer.seal(kind: kind, diskID: disk, sequence: sequence, diskSizeBytes: diskSize, chunkSizeBytes: 65536,
                        extents: f.extents, payload: $0, point: point)
    }
}

func open(_ s: [UInt8], opener: SegmentOpener, disk: String = "disk-a", sequence: UInt64 = 5) throws -> (SegmentHeader, [UInt8]) {
    try s.withUnsafeBytes { try opener.open($0, diskID: disk, sequence: sequence) }
}

/// The error `body` throws (a test failure if it throws none or another type).
func tidemarkError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> TidemarkError? {
    do {
        try body()
        Issue.record("expected a TidemarkError, nothing was thrown", sourceLocation: sourceLocation)
    } catch let e as TidemarkError {
        return e
    } catch {
        Issue.record("expected a TidemarkError, got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

@Suite struct SegmentTests {
    @Test func roundTripCompressed() throws {
        let key = try testKey()
        let sealer = try SegmentSealer(key: key, compressionLevel: 1)
        let opener = try SegmentOpener(key: key)
        let f = Fixture.text()
        let s = try seal(f, sealer: sealer)
        #expect(s.count < f.payload.count / 4)
        let (h, payload) = try open(s, opener: opener)
        #expect(payload == f.payload)
        #expect(h.compressed && h.kind == .data && h.diskID == "disk-a" && h.sequence == 5 && h.keyID == key.id)
        #expect(h.extents == f.extents && h.plainLength == UInt32(f.payload.count) && h.point == nil)
        #expect(h.diskSizeBytes == diskSize && h.chunkSizeBytes == 65536 && h.nonce.count == 12)
    }

    @Test func compressionSkippedForRandomData() throws {
        let key = try testKey()
        let sealer = try SegmentSealer(key: key, compressionLevel: 3)
        let f = Fixture.random()
        let s = try seal(f, sealer: sealer)
        let (h, n) = try s.withUnsafeBytes { try SegmentHeader.decode($0) }
        #expect(!h.compressed && h.cipherLength == h.plainLength)
        #expect(s.count == n + f.payload.count + 16)
        #expect(try open(s, opener: SegmentOpener(key: key)).1 == f.payload)
    }

    @Test func zeroOnlyAndPointSegments() throws {
        let key = try testKey()
        let sealer = try SegmentSealer(key: key, compressionLevel: 1)
        let opener = try SegmentOpener(key: key)
        let zeros = Fixture(extents: [SegmentExtent(offset: 0, length: 1 << 20, kind: .zero)], payload: [])
        let s = try seal(zeros, sealer: sealer)
        let (h, p) = try open(s, opener: opener)
        #expect(p.isEmpty && h.plainLength == 0 && h.extents == zeros.extents)
        #expect(s.count == h.encodedBytes + 16)

        let tag = PointTag(id: "p-2024-01-01T00:00:00Z", pointClass: .appConsistent, timeUnixMs: 1_704_067_200_000)
        let ps = try seal(Fixture(extents: [], payload: []), sealer: sealer, sequence: 6, kind: .point, point: tag)
        let (ph, _) = try open(ps, opener: opener, sequence: 6)
        #expect(ph.kind == .point && ph.point == tag && ph.extents.isEmpty)
    }

    @Test func noncesDiffer() throws {
        let sealer = try SegmentSealer(key: testKey(), compressionLevel: 1)
        let f = Fixture.text()
        let a = try seal(f, sealer: sealer), b = try seal(f, sealer: sealer)
        #expect(a != b)
        let ha = try a.withUnsafeBytes { try SegmentHeader.decode($0).0 }
        let hb = try b.withUnsafeBytes { try SegmentHeader.decode($0).0 }
        #expect(ha.nonce != hb.nonce)
    }

    @Test func sealerRejectsBadInput() throws {
        let sealer = try SegmentSealer(key: testKey(), compressionLevel: 1)
        var f = Fixture.text()
        f.payload.removeLast()
        #expect(tidemarkError { _ = try seal(f, sealer: sealer) }?.kind == .invalidArgument)
        let overlap = Fixture(extents: [SegmentExtent(offset: 100, length: 10, kind: .zero), SegmentExtent(offset: 105, length: 10, kind: .zero)], payload: [])
        #expect(tidemarkError { _ = try seal(overlap, sealer: sealer) }?.message.contains("increasing offset order") == true)
        let beyond = Fixture(extents: [SegmentExtent(offset: diskSize - 5, length: 10, kind: .zero)], payload: [])
        #expect(tidemarkError { _ = try seal(beyond, sealer: sealer) }?.message.contains("beyond the disk size") == true)
        #expect(tidemarkError { _ = try seal(Fixture.text(), sealer: sealer, disk: String(repeating: "d", count: 256)) }?.kind == .invalidArgument)
        #expect(tidemarkError { _ = try seal(Fixture.text(), sealer: sealer, kind: .point) }?.kind == .invalidArgument)
        let tooMany = Fixture(extents: (0..<(WireLimits.extentsPerSegmentMax + 1)).map { SegmentExtent(offset: UInt64($0) * 8, length: 4, kind: .zero) }, payload: [])
        #expect(tidemarkError { _ = try seal(tooMany, sealer: sealer) }?.kind == .invalidArgument)
    }

    // MARK: tampering

    /// Flipping any single bit of a sealed segment is detected.
    @Test(arguments: [false, true]) func everyBitFlipDetected(compressible: Bool) throws {
        let key = try testKey()
        let sealer = try SegmentSealer(key: key, compressionLevel: 1)
        let opener = try SegmentOpener(key: key)
        // Small, so every bit can be flipped.
        let f: Fixture
        if compressible {
            f = Fixture(extents: [SegmentExtent(offset: 4096, length: 512, kind: .data), SegmentExtent(offset: 8192, length: 4096, kind: .zero)],
                        payload: [UInt8](repeating: 0x41, count: 512))
        } else {
            var rng = SplitMix64(seed: 3)
            f = Fixture(extents: [SegmentExtent(offset: 4096, length: 64, kind: .data)],
                        payload: (0..<64).map { _ in UInt8.random(in: 0...255, using: &rng) })
        }
        let s = try seal(f, sealer: sealer)
        let (h, headerBytes) = try s.withUnsafeBytes { try SegmentHeader.decode($0) }
        #expect(h.compressed == compressible)
        for bit in 0..<(s.count * 8) {
            var t = s
            t[bit / 8] ^= 1 << UInt8(bit % 8)
            let e = tidemarkError { _ = try open(t, opener: opener) }
            #expect(e?.kind == .corrupt, "bit \(bit) (byte \(bit / 8) of \(s.count), header \(headerBytes))")
            if bit / 8 >= headerBytes {
                // Ciphertext and tag: only authentication can tell.
                #expect(e?.message.contains("authentication failed") == true, "bit \(bit): \(e?.message ?? "-")")
            }
        }
    }

    @Test func headerFieldTamperingFailsAuthentication() throws {
        let key = try testKey()
        let sealer = try SegmentSealer(key: key, compressionLevel: 1)
        let opener = try SegmentOpener(key: key)
        let s = try seal(Fixture.text(), sealer: sealer, sequence: 5)
        // Rewriting the sequence field (offset 32) to the expected one: the AAD no longer matches.
        var t = s
        t[32] = 6
        let e = tidemarkError { _ = try open(t, opener: opener, sequence: 6) }
        #expect(e?.message.contains("authentication failed: wrong replication key, or the segment was tampered with") == true)
        // Moving an extent (offset of extent 0) to another place on the disk.
        let (h, n) = try s.withUnsafeBytes { try SegmentHeader.decode($0) }
        var m = s
        m[n - h.extents.count * 16 + 1] ^= 0x10
        #expect(tidemarkError { _ = try open(m, opener: opener) }?.message.contains("authentication failed") == true)
    }

    @Test func truncationDetected() throws {
        let key = try testKey()
        let opener = try SegmentOpener(key: key)
        let s = try seal(Fixture.text(), sealer: SegmentSealer(key: key, compressionLevel: 1))
        for cut in [0, 1, 4, 40, 75, 76, 100, s.count / 2, s.count - 17, s.count - 16, s.count - 1] {
            let e = tidemarkError { _ = try open(Array(s[0..<cut]), opener: opener) }
            #expect(e?.kind == .corrupt, "cut at \(cut)")
        }
        // Extra bytes are rejected too.
        #expect(tidemarkError { _ = try open(s + [0], opener: opener) }?.kind == .corrupt)
    }

    @Test func wrongSequenceDiskAndKey() throws {
        let key = try testKey()
        let sealer = try SegmentSealer(key: key, compressionLevel: 1)
        let opener = try SegmentOpener(key: key)
        let s5 = try seal(Fixture.text(seed: 5), sealer: sealer, sequence: 5)
        let s6 = try seal(Fixture.text(seed: 6), sealer: sealer, sequence: 6)

        // Swapping two segments (stored under each other's sequence).
        #expect(tidemarkError { _ = try open(s6, opener: opener, sequence: 5) }?.message.contains("has sequence 6, expected 5") == true)
        #expect(tidemarkError { _ = try open(s5, opener: opener, sequence: 6) }?.message.contains("has sequence 5, expected 6") == true)
        // Replaying a segment under a later sequence.
        #expect(tidemarkError { _ = try open(s5, opener: opener, sequence: 7) }?.message.contains("expected 7") == true)
        // Moving it to another disk.
        #expect(tidemarkError { _ = try open(s5, opener: opener, disk: "disk-b") }?.message == "segment belongs to disk disk-a, expected disk-b")
        // Wrong key: named by key id before any decryption.
        let other = try testKey(2)
        let e = tidemarkError { _ = try open(s5, opener: SegmentOpener(key: other)) }
        #expect(e?.message.contains("sealed with key id \(key.idHex), this key is \(other.idHex)") == true)
        // A forged header claiming the other key's id still fails authentication.
        var forged = s5
        withUnsafeBytes(of: other.id.littleEndian) { for i in 0..<8 { forged[24 + i] = $0[i] } }
        #expect(tidemarkError { _ = try open(forged, opener: SegmentOpener(key: other)) }?.message.contains("authentication failed") == true)
    }

    @Test func decoderNeverTrustsLengths() throws {
        let key = try testKey()
        let s = try seal(Fixture.text(), sealer: SegmentSealer(key: key, compressionLevel: 1))
        func patched(_ offset: Int, _ v: UInt32) -> [UInt8] {
            var t = s
            withUnsafeBytes(of: v.littleEndian) { for i in 0..<4 { t[offset + i] = $0[i] } }
            return t
        }
        for (offset, what) in [(8, "header length"), (12, "plain length"), (16, "cipher length"), (20, "extent count")] {
            for v: UInt32 in [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF] {
                let t = patched(offset, v)
                let e = tidemarkError { _ = try t.withUnsafeBytes { try SegmentHeader.decode($0) } }
                #expect(e?.kind == .corrupt, "\(what) = \(v)")
            }
        }
        #expect(tidemarkError { _ = try patched(20, 0xFFFF_FFFF).withUnsafeBytes { try SegmentHeader.decode($0) } }?
            .message.contains("more than the limit") == true)
        // Bad magic and version.
        var m = s
        m[0] = 0
        #expect(tidemarkError { _ = try m.withUnsafeBytes { try SegmentHeader.decode($0) } }?.message.contains("magic") == true)
        var v = s
        v[4] = 2
        #expect(tidemarkError { _ = try v.withUnsafeBytes { try SegmentHeader.decode($0) } }?.message.contains("version 2") == true)
    }

    @Test func keyIDDerivation() throws {
        let key = try testKey()
        let d = SHA256.hash(Array("tidemark-key-id".utf8) + [0] + key.bytes)
        #expect(key.id == d[0..<8].reduce(0) { $0 << 8 | UInt64($1) })
        #expect(!key.description.contains(hex(key.bytes)))
    }
}

@Suite struct SegmentLimitTests {
    /// The largest segment (8 MiB payload in 2048 extents, long ids, a point
    /// tag) fits in a frame and opens.
    @Test func largestSegmentFitsAFrame() throws {
        let key = try testKey()
        var rng = SplitMix64(seed: 9)
        let n = WireLimits.extentsPerSegmentMax
        let length = WireLimits.segmentPayloadBytesMax / n
        let extents = (0..<n).map { SegmentExtent(offset: UInt64($0) * UInt64(length) * 2, length: UInt32(length), kind: .data) }
        let payload = (0..<WireLimits.segmentPayloadBytesMax).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let disk = String(repeating: "d", count: WireLimits.stringBytesMax)
        let point = PointTag(id: String(repeating: "p", count: WireLimits.stringBytesMax), pointClass: .crashConsistent, timeUnixMs: -1)
        let sealed = try payload.withUnsafeBytes {
            try SegmentSealer(key: key, compressionLevel: 1).seal(kind: .point, diskID: disk, sequence: 1, diskSizeBytes: 1 << 40,
                                                                 chunkSizeBytes: 4096, extents: extents, payload: $0, point: point)
        }
        #expect(sealed.count == WireLimits.segmentBytesMax)
        let pipe = MemoryPipe()
        try FrameWriter(pipe).send(.segment(sealed))
        guard case .segment(let got)? = try FrameReader(pipe).next() else { Issue.record("no segment"); return }
        let (h, p) = try open(got, opener: SegmentOpener(key: key), disk: disk, sequence: 1)
        #expect(p == payload && h.point == point && h.extents == extents)
        // One byte more payload is refused by the sealer.
        let more = payload + [0]
        var bigger = extents
        bigger[n - 1].length += 1
        #expect(tidemarkError {
            _ = try more.withUnsafeBytes {
                try SegmentSealer(key: key, compressionLevel: 1).seal(kind: .data, diskID: "d", sequence: 1, diskSizeBytes: 1 << 40,
                                                                     chunkSizeBytes: 4096, extents: bigger, payload: $0, point: nil)
            }
        }?.kind == .invalidArgument)
    }
}
