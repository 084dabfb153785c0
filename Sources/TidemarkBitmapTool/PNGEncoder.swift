/// A minimal PNG writer: 8-bit RGB, one IDAT chunk holding a zlib stream of stored
/// (uncompressed) deflate blocks. Heat maps are at most a few hundred kilobytes, so
/// compression is not worth a dependency; any PNG reader accepts stored blocks.
///
/// Layout (PNG spec, RFC 2083; zlib RFC 1950; deflate RFC 1951):
///   signature, IHDR (width, height, depth 8, color type 2, no interlace), IDAT, IEND;
///   each chunk is length (big-endian) + type + data + CRC-32 of type and data.
public enum PNGEncoder {
    /// The 8-byte PNG signature.
    public static let signature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

    /// Largest payload of one stored deflate block.
    static let storedBlockBytesMax = 65_535

    /// Encodes `rgb` (row-major, 3 bytes per pixel, `width * height * 3` bytes) as a PNG file.
    public static func encode(width: Int, height: Int, rgb: [UInt8]) -> [UInt8] {
        precondition(width > 0 && height > 0, "PNG dimensions must be positive")
        precondition(width <= 1 << 24 && height <= 1 << 24, "PNG dimensions are limited to 2^24 here")
        precondition(rgb.count == width * height * 3, "rgb must hold width * height * 3 bytes")

        // Each scanline is preceded by its filter type; 0 (None) keeps the writer trivial.
        let rowBytes = width * 3
        var raw: [UInt8] = []
        raw.reserveCapacity(height * (rowBytes + 1))
        for y in 0..<height {
            raw.append(0)
            raw.append(contentsOf: rgb[(y * rowBytes)..<((y + 1) * rowBytes)])
        }

        var ihdr: [UInt8] = []
        ihdr.appendBigEndian(UInt32(width))
        ihdr.appendBigEndian(UInt32(height))
        ihdr.append(contentsOf: [8, 2, 0, 0, 0])  // depth 8, truecolor RGB, deflate, filter 0, no interlace

        var out = signature
        appendChunk("IHDR", ihdr, to: &out)
        appendChunk("IDAT", zlibStored(raw), to: &out)
        appendChunk("IEND", [], to: &out)
        return out
    }

    /// A zlib stream (RFC 1950) whose deflate data is only stored blocks, with the Adler-32 trailer.
    public static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]  // CM 8, 32K window; FLEVEL 0; (0x7801 % 31 == 0)
        out.reserveCapacity(data.count + data.count / storedBlockBytesMax * 5 + 11)
        var offset = 0
        repeat {
            let n = min(storedBlockBytesMax, data.count - offset)
            let final: UInt8 = offset + n == data.count ? 1 : 0
            out.append(final)  // BFINAL + BTYPE 00 (stored), then byte-aligned LEN / NLEN (little-endian)
            out.append(UInt8(n & 0xFF)); out.append(UInt8(n >> 8))
            out.append(UInt8(~n & 0xFF)); out.append(UInt8((~n >> 8) & 0xFF))
            out.append(contentsOf: data[offset..<(offset + n)])
            offset += n
        } while offset < data.count
        out.appendBigEndian(adler32(data))
        return out
    }

    private static func appendChunk(_ type: String, _ data: [UInt8], to out: inout [UInt8]) {
        let typeBytes = Array(type.utf8)
        precondition(typeBytes.count == 4)
        out.appendBigEndian(UInt32(data.count))
        out.append(contentsOf: typeBytes)
        out.append(contentsOf: data)
        var crc = CRC32()
        crc.update(typeBytes)
        crc.update(data)
        out.appendBigEndian(crc.value)
    }

    /// Adler-32 (RFC 1950 §9).
    public static func adler32(_ data: [UInt8]) -> UInt32 {
        let modulus: UInt32 = 65_521
        var a: UInt32 = 1, b: UInt32 = 0
        // 5552 is the longest run before b can overflow 32 bits (zlib's NMAX).
        var index = 0
        while index < data.count {
            let end = min(index + 5552, data.count)
            for i in index..<end {
                a &+= UInt32(data[i])
                b &+= a
            }
            a %= modulus
            b %= modulus
            index = end
        }
        return b << 16 | a
    }
}

/// CRC-32 as PNG and zlib use it (ISO-HDLC: reflected polynomial 0xEDB88320, init and
/// final XOR 0xFFFFFFFF). Not CRC-32C, which the `.hrl` pages use.
public struct CRC32: Sendable {
    private static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    private var state: UInt32 = 0xFFFF_FFFF

    public init() {}

    public mutating func update(_ bytes: some Sequence<UInt8>) {
        var c = state
        for byte in bytes { c = Self.table[Int((c ^ UInt32(byte)) & 0xFF)] ^ (c >> 8) }
        state = c
    }

    public var value: UInt32 { state ^ 0xFFFF_FFFF }

    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc = CRC32()
        crc.update(bytes)
        return crc.value
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian(_ value: UInt32) {
        append(UInt8(value >> 24)); append(UInt8((value >> 16) & 0xFF))
        append(UInt8((value >> 8) & 0xFF)); append(UInt8(value & 0xFF))
    }
}
