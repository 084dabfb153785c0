import Foundation
import Testing
import TidemarkCrypto
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
          kind: SegmentKind = .data, point: PointTag? = nil, chunk: UInt32 = 65536,
          formatVersion: UInt16 = SegmentFormat.version, level: Int32? = nil) throws -> [UInt8] {
    try f.payload.withUnsafeBytes {
        try sealer.seal(kind: kind, diskID: disk, sequence: sequence, diskSizeBytes: diskSize, chunkSizeBytes: chunk,
                        extents: f.extents, payload: $0, point: point, formatVersion: formatVersion, compressionLevel: level)
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

    /// `open(into:)` writes the payload into the caller's memory, compressed
    /// or not, and leaves no plaintext there when authentication fails.
    @Test func opensIntoCallersMemory() throws {
        let key = try testKey()
        let opener = try SegmentOpener(key: key)
        for (f, level) in [(Fixture.text(), Int32(1)), (Fixture.random(), Int32(3))] {
            let s = try seal(f, sealer: SegmentSealer(key: key, compressionLevel: level))
            let buffer = AlignedBuffer(count: f.payload.count + 8192, zeroed: false)
            var asked = -1
            let h = try s.withUnsafeBytes {
                try opener.open($0, diskID: "disk-a", sequence: 5) { n in
                    asked = n
                    return buffer.bytes
                }
            }
            #expect(asked == f.payload.count && h.extents == f.extents)
            #expect(Array(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<asked])) == f.payload)
            var bad = s
            bad[bad.count - 1] ^= 1
            buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0xee)
            #expect(throws: TidemarkError.self) {
                _ = try bad.withUnsafeBytes { try opener.open($0, diskID: "disk-a", sequence: 5) { _ in buffer.bytes } }
            }
            // Zeroed (decrypted in place there) or untouched (decrypted into scratch): no plaintext.
            #expect(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<asked]).allSatisfy { $0 == 0 || $0 == 0xee },
                    "no plaintext is left after a failed authentication")
        }
    }

    /// Level 0 means no compression (zstd's own 0 would mean level 3), as
    /// the sealer's level and as a per-segment level; zstd's fast (negative)
    /// levels and a per-segment level round-trip.
    @Test func levelZeroStoresAndPerSegmentLevels() throws {
        let key = try testKey()
        let opener = try SegmentOpener(key: key)
        let f = Fixture.text()
        for s in [try seal(f, sealer: SegmentSealer(key: key, compressionLevel: 0)),
                  try seal(f, sealer: SegmentSealer(key: key, compressionLevel: 1), level: 0)] {
            let (h, n) = try s.withUnsafeBytes { try SegmentHeader.decode($0) }
            #expect(!h.compressed && h.cipherLength == h.plainLength && s.count == n + f.payload.count + 16)
            #expect(try open(s, opener: opener).1 == f.payload)
        }
        // Words drawn at random from a small vocabulary: the levels differ.
        var rng = SplitMix64(seed: 7)
        let words = ["block", "chunk", "extent", "segment", "sector", "inode", "journal", "superblock"]
        var text: [UInt8] = []
        while text.count < 3 * 65536 { text += Array((words[Int(rng.next() % 8)] + " ").utf8) }
        let g = Fixture(extents: [SegmentExtent(offset: 0, length: 3 * 65536, kind: .data)], payload: Array(text[0..<(3 * 65536)]))
        let sealer = try SegmentSealer(key: key, compressionLevel: 0)
        var sizes: [Int32: Int] = [:]
        for level: Int32 in [-5, -1, 1, 19] {
            let s = try seal(g, sealer: sealer, level: level)
            let (h, payload) = try open(s, opener: opener)
            #expect(h.compressed && payload == g.payload, "level \(level)")
            sizes[level] = s.count
        }
        #expect(sizes[-5]! > sizes[1]! && sizes[1]! > sizes[19]!, "\(sizes)")
        #expect(throws: TidemarkError.self) { try seal(g, sealer: sealer, level: 1000) }
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
        #expect(tidemarkError { _ = try seal(overlap, sealer: sealer, chunk: 1) }?.message.contains("increasing offset order") == true)
        #expect(tidemarkError { _ = try seal(overlap, sealer: sealer) }?.message.contains("not aligned to the chunk size 65536") == true)
        #expect(tidemarkError { _ = try seal(overlap, sealer: sealer, formatVersion: 1) }?.message.contains("increasing offset order") == true)
        let beyond = Fixture(extents: [SegmentExtent(offset: diskSize - 5, length: 10, kind: .zero)], payload: [])
        #expect(tidemarkError { _ = try seal(beyond, sealer: sealer, chunk: 1) }?.message.contains("beyond the disk size") == true)
        #expect(tidemarkError { _ = try seal(Fixture.text(), sealer: sealer, formatVersion: 5) }?.kind == .invalidArgument)
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
        let s = try seal(f, sealer: sealer, chunk: compressible ? 512 : 64)
        let (h, headerBytes) = try s.withUnsafeBytes { try SegmentHeader.decode($0) }
        #expect(h.compressed == compressible && h.chunkDigests.count == 1)
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
        // (the last extent, by 1 MiB: still chunk-aligned and in order, so only the tag check can tell)
        m[n - h.chunkDigests.count * 16 - 16 + 2] ^= 0x10
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
        v[4] = 5
        #expect(tidemarkError { _ = try v.withUnsafeBytes { try SegmentHeader.decode($0) } }?.message.contains("version 5") == true)
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

@Suite struct ChunkDigestTests {
    /// RFC 4231 test case 2 (key "Jefe").
    @Test func hmacSHA256KnownAnswer() {
        let data = Array("what do ya want for nothing?".utf8)
        let mac = data.withUnsafeBytes { d in
            [UInt8]().withUnsafeBytes { HMACSHA256.mac(key: Array("Jefe".utf8), prefix: $0, data: d) }
        }
        #expect(hex(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        // Split between prefix and data, the MAC is the same.
        let split = data[0..<7].withUnsafeBytes { p in data[7...].withUnsafeBytes { d in HMACSHA256.mac(key: Array("Jefe".utf8), prefix: p, data: d) } }
        #expect(split == mac)
    }

    /// Construction 2 is the documented HMAC, bound to key, disk and chunk index.
    @Test func digestConstruction() throws {
        let key = try testKey()
        let chunk = [UInt8](repeating: 0x5A, count: 4096)
        let d = ChunkDigester(key: key, diskID: "disk-a")
        let got = chunk.withUnsafeBytes { d.digest(chunk: 7, $0, construction: .hmacSHA256) }
        let k = SHA256.hash(Array("tidemark-chunk-digest".utf8) + [0] + key.bytes)
        let prefix: [UInt8] = [6] + Array("disk-a".utf8) + [7, 0, 0, 0, 0, 0, 0, 0]
        let mac = prefix.withUnsafeBytes { p in chunk.withUnsafeBytes { HMACSHA256.mac(key: k, prefix: p, data: $0) } }
        #expect(got.bytes == Array(mac[0..<16]))
        #expect(ChunkDigest(bytes: got.bytes) == got)
        for how in DigestConstruction.allCases {
            let base = chunk.withUnsafeBytes { d.digest(chunk: 7, $0, construction: how) }
            #expect(chunk.withUnsafeBytes { d.digest(chunk: 8, $0, construction: how) } != base)
            #expect(chunk.withUnsafeBytes { ChunkDigester(key: key, diskID: "disk-b").digest(chunk: 7, $0, construction: how) } != base)
            #expect(try chunk.withUnsafeBytes { ChunkDigester(key: try testKey(2), diskID: "disk-a").digest(chunk: 7, $0, construction: how) } != base)
            var changed = chunk
            changed[4095] ^= 1
            #expect(changed.withUnsafeBytes { d.digest(chunk: 7, $0, construction: how) } != base)
            // A context reused over chunks gives what a fresh one gives.
            let ctx = d.makeContext()
            _ = changed.withUnsafeBytes { ctx.digest(chunk: 3, $0, construction: how) }
            #expect(chunk.withUnsafeBytes { ctx.digest(chunk: 7, $0, construction: how) } == base)
        }
        #expect(chunk.withUnsafeBytes { d.digest(chunk: 7, $0, construction: .gmacAES) } != got)
    }

    /// Construction 3 is AES-256 (K_p) of the GMAC tag (K_g, zero IV) of the
    /// same message, checked against the openssl command line tool (an
    /// independent path into OpenSSL: `openssl mac GMAC`, `openssl enc
    /// -aes-256-ecb`), and the example of docs/wire-format.md 4.5.
    @Test func gmacDigestConstruction() throws {
        let key = try testKey()
        let chunk = [UInt8](repeating: 0x5A, count: 4096)
        let got = chunk.withUnsafeBytes { ChunkDigester(key: key, diskID: "disk-a").digest(chunk: 7, $0) }
        #expect(DigestConstruction.current == .gmacAES)
        let kg = SHA256.hash(Array("tidemark-chunk-digest-gmac".utf8) + [0] + key.bytes)
        let kp = SHA256.hash(Array("tidemark-chunk-digest-prp".utf8) + [0] + key.bytes)
        let dir = try TestEnv.tempDir("gmac-digest")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let message: [UInt8] = [6] + Array("disk-a".utf8) + [7, 0, 0, 0, 0, 0, 0, 0] + chunk
        try Data(message).write(to: URL(fileURLWithPath: dir + "/m"))
        let tag = try run(["openssl", "mac", "-cipher", "AES-256-GCM", "-macopt", "hexkey:" + hex(kg),
                           "-macopt", "hexiv:" + String(repeating: "00", count: 12), "-in", dir + "/m", "GMAC"])
        #expect(tag.ok, "\(tag.stderr)")
        let tagBytes = stride(from: 0, to: 32, by: 2).map { i -> UInt8 in
            let t = Array(tag.stdout.trimmingCharacters(in: .whitespacesAndNewlines).utf8)
            return UInt8(String(decoding: t[i..<i + 2], as: UTF8.self), radix: 16)!
        }
        try Data(tagBytes).write(to: URL(fileURLWithPath: dir + "/t"))
        let enc = try run(["openssl", "enc", "-aes-256-ecb", "-nopad", "-K", hex(kp), "-in", dir + "/t", "-out", dir + "/d"])
        #expect(enc.ok, "\(enc.stderr)")
        let want = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/d")))
        #expect(got.bytes == want)
        // The documented example (GMAC tag 00ec0be6ffc5a349b74a2964197addbe).
        #expect(hex(got.bytes) == "ec0f9f22ca4b3d5118caa9a934d09311")
    }

    /// Segments of format version 1 (no digests) stay readable.
    @Test func version1StillOpens() throws {
        let key = try testKey()
        let f = Fixture.text()
        let s = try seal(f, sealer: SegmentSealer(key: key, compressionLevel: 1), formatVersion: 1)
        let (h, n) = try s.withUnsafeBytes { try SegmentHeader.decode($0) }
        #expect(h.version == 1 && s[4] == 1 && h.chunkDigests.isEmpty && h.dataChunkDigests == nil)
        #expect(n == 76 + 6 + 3 * 16)
        let (oh, payload) = try open(s, opener: SegmentOpener(key: key))
        #expect(payload == f.payload && oh.extents == f.extents)
        // Version 1 does not require chunk alignment (it never did).
        let odd = Fixture(extents: [SegmentExtent(offset: 100, length: 10, kind: .data)], payload: Array(0..<10))
        #expect(try open(seal(odd, sealer: SegmentSealer(key: key, compressionLevel: 1), formatVersion: 1), opener: SegmentOpener(key: key)).1 == odd.payload)
    }

    /// A version 2 header whose length does not account for its digests, or
    /// a version 1 header relabelled as version 2, is rejected.
    @Test func version2LengthRules() throws {
        let key = try testKey()
        let v1 = try seal(Fixture.text(), sealer: SegmentSealer(key: key, compressionLevel: 1), formatVersion: 1)
        var relabelled = v1
        relabelled[4] = 2
        let e = tidemarkError { _ = try relabelled.withUnsafeBytes { try SegmentHeader.decode($0) } }
        #expect(e?.kind == .corrupt && e?.message.contains("chunk digests") == true, "\(e?.message ?? "-")")
        let v2 = try seal(Fixture.text(), sealer: SegmentSealer(key: key, compressionLevel: 1), formatVersion: 2)
        var relabelledDown = v2
        relabelledDown[4] = 1
        #expect(tidemarkError { _ = try relabelledDown.withUnsafeBytes { try SegmentHeader.decode($0) } }?.kind == .corrupt)
    }
}

/// Segment format 4's header MAC (docs/wire-format.md 4.6).
@Suite struct HeaderMACTests {
    @Test func macIsTheDocumentedConstructionAndProvesTheHeaderAlone() throws {
        let key = try ReplicationKey(bytes: (0..<32).map { UInt8($0 * 7 + 1) })
        let sealer = try SegmentSealer(key: key, compressionLevel: 1)
        let payload = [UInt8](repeating: 0x5A, count: 8192)
        let extents = [SegmentExtent(offset: 0, length: 8192, kind: .data), SegmentExtent(offset: 16384, length: 4096, kind: .zero)]
        let sealed = try payload.withUnsafeBytes {
            try sealer.seal(kind: .data, diskID: "disk-a", sequence: 9, diskSizeBytes: 1 << 20, chunkSizeBytes: 4096,
                            extents: extents, payload: $0, point: nil)
        }
        let (header, h) = try sealed.withUnsafeBytes { try SegmentHeader.decode($0) }
        #expect(header.version == 4 && header.headerMAC.count == 16)
        // MAC = first 16 bytes of HMAC-SHA-256(SHA-256("tidemark-header-mac" ‖ 00 ‖ key), header[0, H − 16)).
        let kh = SHA256.hash(Array("tidemark-header-mac".utf8) + [0] + key.bytes)
        let expected = sealed.withUnsafeBytes {
            Array(HMACSHA256.mac(key: kh, prefix: UnsafeRawBufferPointer(start: nil, count: 0),
                                 data: UnsafeRawBufferPointer(rebasing: $0[0..<(h - 16)])).prefix(16))
        }
        #expect(header.headerMAC == expected)
        let mac = SegmentHeaderMAC(key: key)
        // The header alone (no ciphertext) is proven; any edit to it is not.
        let proof = try Array(sealed[0..<h]).withUnsafeBytes {
            try SegmentHeaderProof.check($0, segmentBytes: sealed.count, diskID: "disk-a", sequence: 9, key: key, mac: mac)
        }
        #expect(proof.authenticated && proof.header.extents == extents)
        for at in [24, 32, 40, 76, 76 + 6, h - 20, h - 1] {
            var edited = Array(sealed[0..<h])
            edited[at] ^= 0x01
            #expect(throws: TidemarkError.self, "byte \(at)") {
                _ = try edited.withUnsafeBytes {
                    try SegmentHeaderProof.check($0, segmentBytes: sealed.count, diskID: "disk-a", sequence: 9, key: key, mac: mac)
                }
            }
        }
        let other = try ReplicationKey(bytes: [UInt8](repeating: 3, count: 32))
        #expect(!Array(sealed[0..<h]).withUnsafeBytes { SegmentHeaderMAC(key: other).verify($0) })
    }
}
