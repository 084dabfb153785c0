import Glibc
import Testing
import TidemarkCompression
import TidemarkCrypto
import TidemarkSystem
import TidemarkTesting

@Suite struct CryptoPrimitiveTests {
    @Test func sha256KnownAnswers() {
        #expect(hex(SHA256.hash([UInt8]())) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    /// Test case 14 of the GCM specification (McGrew & Viega): all-zero
    /// 256-bit key, 96-bit IV and 16-byte plaintext, no AAD.
    @Test func aesGCMKnownAnswer() throws {
        let gcm = try AES256GCM(key: [UInt8](repeating: 0, count: 32))
        var buf = [UInt8](repeating: 0, count: 16)
        let nonce = [UInt8](repeating: 0, count: 12)
        var tag = [UInt8](repeating: 0, count: 16)
        try buf.withUnsafeMutableBytes { b in
            try nonce.withUnsafeBytes { n in
                try tag.withUnsafeMutableBytes { t in try gcm.seal(b, nonce: n, aad: UnsafeRawBufferPointer(start: nil, count: 0), tag: t) }
            }
        }
        #expect(hex(buf) == "cea7403d4d606b6e074ec5d3baf39d18")
        #expect(hex(tag) == "d0d1c8a799996bf0265b98b5d48ab919")
    }

    @Test func aesGCMRoundTripAndTamper() throws {
        var rng = SplitMix64(seed: 7)
        let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let gcm = try AES256GCM(key: key)
        let plain = (0..<1000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let aad = Array("header".utf8)
        let nonce = try SecureRandom.bytes(12)
        var buf = plain
        var tag = [UInt8](repeating: 0, count: 16)
        try seal(gcm, &buf, nonce, aad, &tag)
        #expect(buf != plain)
        // The same instance opens and seals alternately (two reused EVP contexts).
        var copy = buf
        try open(gcm, &copy, nonce, aad, tag)
        #expect(copy == plain)
        var again = plain
        var tag2 = tag
        try seal(gcm, &again, nonce, aad, &tag2)
        #expect(again == buf && tag2 == tag)

        var badAAD = buf
        #expect(throws: TidemarkError.self) { try open(gcm, &badAAD, nonce, Array("headeR".utf8), tag) }
        #expect(badAAD.allSatisfy { $0 == 0 }, "unauthenticated plaintext is zeroed")
        var badTag = tag
        badTag[3] ^= 1
        var c2 = buf
        #expect(throws: TidemarkError.self) { try open(gcm, &c2, nonce, aad, badTag) }
        let other = try AES256GCM(key: key.map { $0 ^ 0x55 })
        var c3 = buf
        #expect(throws: TidemarkError.self) { try open(other, &c3, nonce, aad, tag) }
    }

    @Test func aesGCMOpensOutOfPlace() throws {
        var rng = SplitMix64(seed: 9)
        let key = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let gcm = try AES256GCM(key: key)
        let plain = (0..<5000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let aad = Array("hdr".utf8)
        let nonce = try SecureRandom.bytes(12)
        var cipher = plain
        var tag = [UInt8](repeating: 0, count: 16)
        try seal(gcm, &cipher, nonce, aad, &tag)
        func openTo(_ t: [UInt8], _ a: [UInt8]) throws -> [UInt8] {
            var out = [UInt8](repeating: 0xee, count: cipher.count)
            try cipher.withUnsafeBytes { c in
                try out.withUnsafeMutableBytes { o in
                    try nonce.withUnsafeBytes { n in
                        try a.withUnsafeBytes { ad in try t.withUnsafeBytes { try gcm.open(c, into: o, nonce: n, aad: ad, tag: $0) } }
                    }
                }
            }
            return out
        }
        let before = cipher
        #expect(try openTo(tag, aad) == plain)
        #expect(cipher == before, "the input is not changed")
        var badTag = tag
        badTag[0] ^= 1
        #expect(throws: TidemarkError.self) { _ = try openTo(badTag, aad) }
        #expect(throws: TidemarkError.self) { _ = try openTo(tag, Array("hdR".utf8)) }
    }

    @Test func secureRandomFills() throws {
        let a = try SecureRandom.bytes(64), b = try SecureRandom.bytes(64)
        #expect(a != b && a.count == 64)
    }

    @Test func zstdRoundTripAndSkip() throws {
        let c = try ZstdCompressor(level: 3)
        let d = try ZstdDecompressor()
        let text = Array(String(repeating: "tidemark replicates blocks. ", count: 500).utf8)
        var dst = [UInt8](repeating: 0, count: ZstdCompressor.compressBound(text.count))
        let n = try text.withUnsafeBytes { s in try dst.withUnsafeMutableBytes { try c.compress(s, into: $0) } }
        let len = try #require(n)
        #expect(len < text.count / 10)
        var out = [UInt8](repeating: 0, count: text.count)
        try dst.withUnsafeBytes { s in
            try out.withUnsafeMutableBytes { try d.decompress(UnsafeRawBufferPointer(rebasing: s[0..<len]), into: $0, expected: text.count) }
        }
        #expect(out == text)
        // Expecting a different size is corruption, as is garbage.
        var small = [UInt8](repeating: 0, count: text.count - 1)
        #expect(throws: TidemarkError.self) {
            try dst.withUnsafeBytes { s in
                try small.withUnsafeMutableBytes { try d.decompress(UnsafeRawBufferPointer(rebasing: s[0..<len]), into: $0, expected: text.count - 1) }
            }
        }
        #expect(throws: TidemarkError.self) {
            try [UInt8](repeating: 0xAB, count: 100).withUnsafeBytes { s in
                try out.withUnsafeMutableBytes { try d.decompress(s, into: $0, expected: 10) }
            }
        }
        // Random bytes do not shrink.
        var rng = SplitMix64(seed: 1)
        let random = (0..<65536).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let r = try random.withUnsafeBytes { s in try dst.withUnsafeMutableBytes { try c.compress(s, into: $0) } }
        #expect(r == nil)
        #expect(throws: TidemarkError.self) { _ = try ZstdCompressor(level: 1000) }
    }
}

func hex(_ b: [UInt8]) -> String {
    let d = Array("0123456789abcdef")
    return String(b.flatMap { [d[Int($0 >> 4)], d[Int($0 & 15)]] })
}

private func seal(_ g: AES256GCM, _ buf: inout [UInt8], _ nonce: [UInt8], _ aad: [UInt8], _ tag: inout [UInt8]) throws {
    try buf.withUnsafeMutableBytes { b in
        try nonce.withUnsafeBytes { n in
            try aad.withUnsafeBytes { a in try tag.withUnsafeMutableBytes { t in try g.seal(b, nonce: n, aad: a, tag: t) } }
        }
    }
}

private func open(_ g: AES256GCM, _ buf: inout [UInt8], _ nonce: [UInt8], _ aad: [UInt8], _ tag: [UInt8]) throws {
    try buf.withUnsafeMutableBytes { b in
        try nonce.withUnsafeBytes { n in
            try aad.withUnsafeBytes { a in try tag.withUnsafeBytes { t in try g.open(b, nonce: n, aad: a, tag: t) } }
        }
    }
}
