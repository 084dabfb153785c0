import Foundation
import Testing
import TidemarkTesting
import TidemarkTracking
@testable import TidemarkBitmapTool

/// An independent PNG reader for the tests: checks the signature and every chunk CRC
/// (bitwise CRC-32, not the encoder's table), inflates stored deflate blocks, checks
/// Adler-32, and undoes filter type 0.
struct DecodedPNG {
    var width = 0
    var height = 0
    var chunkTypes: [String] = []
    var rgb: [UInt8] = []

    func pixel(_ x: Int, _ y: Int) -> [UInt8] {
        let p = (y * width + x) * 3
        return Array(rgb[p..<(p + 3)])
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    static func crc32Bitwise(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes {
            crc ^= UInt32(b)
            for _ in 0..<8 { crc = (crc >> 1) ^ (crc & 1 == 1 ? 0xEDB8_8320 : 0) }
        }
        return ~crc
    }

    static func be32(_ b: ArraySlice<UInt8>) -> UInt32 {
        let i = b.startIndex
        return UInt32(b[i]) << 24 | UInt32(b[i + 1]) << 16 | UInt32(b[i + 2]) << 8 | UInt32(b[i + 3])
    }

    init(_ bytes: [UInt8]) throws {
        guard bytes.prefix(8) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] else { throw Failure(description: "bad signature") }
        var at = 8
        var idat: [UInt8] = []
        while at < bytes.count {
            let length = Int(Self.be32(bytes[at..<(at + 4)]))
            let typeAndData = Array(bytes[(at + 4)..<(at + 8 + length)])
            let crc = Self.be32(bytes[(at + 8 + length)..<(at + 12 + length)])
            let type = String(decoding: typeAndData.prefix(4), as: UTF8.self)
            guard Self.crc32Bitwise(typeAndData) == crc else { throw Failure(description: "bad CRC in \(type)") }
            chunkTypes.append(type)
            let data = Array(typeAndData.dropFirst(4))
            if type == "IHDR" {
                width = Int(Self.be32(data[0..<4]))
                height = Int(Self.be32(data[4..<8]))
                guard Array(data[8..<13]) == [8, 2, 0, 0, 0] else { throw Failure(description: "not 8-bit RGB") }
            } else if type == "IDAT" {
                idat += data
            }
            at += 12 + length
        }
        // zlib header, stored blocks, Adler-32.
        guard idat.count >= 6, idat[0] & 0x0F == 8, (UInt16(idat[0]) << 8 | UInt16(idat[1])) % 31 == 0 else {
            throw Failure(description: "bad zlib header")
        }
        var raw: [UInt8] = []
        var p = 2
        while true {
            let header = idat[p]
            guard (header >> 1) & 3 == 0 else { throw Failure(description: "not a stored block") }
            let len = Int(idat[p + 1]) | Int(idat[p + 2]) << 8
            let nlen = Int(idat[p + 3]) | Int(idat[p + 4]) << 8
            guard len == ~nlen & 0xFFFF else { throw Failure(description: "LEN/NLEN mismatch") }
            raw += idat[(p + 5)..<(p + 5 + len)]
            p += 5 + len
            if header & 1 == 1 { break }
        }
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in raw { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
        guard Self.be32(idat[p..<(p + 4)]) == b << 16 | a else { throw Failure(description: "bad Adler-32") }
        guard raw.count == height * (width * 3 + 1) else { throw Failure(description: "wrong image data size \(raw.count)") }
        for y in 0..<height {
            let row = y * (width * 3 + 1)
            guard raw[row] == 0 else { throw Failure(description: "row \(y) has filter \(raw[row])") }
            rgb += raw[(row + 1)..<(row + 1 + width * 3)]
        }
    }
}

@Suite struct PNG {
    @Test func checksumVectors() {
        #expect(CRC32.checksum(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(CRC32.checksum(Array("IEND".utf8)) == 0xAE42_6082)
        #expect(PNGEncoder.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
        #expect(PNGEncoder.adler32([]) == 1)
        // Long input exercises the modulo batching.
        let long = [UInt8](repeating: 0xFF, count: 100_000)
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in long { a = (a + UInt32(byte)) % 65521; b = (b + a) % 65521 }
        #expect(PNGEncoder.adler32(long) == b << 16 | a)
    }

    @Test func encoderRoundTripsAcrossManyStoredBlocks() throws {
        // 300 x 100 RGB = 90,100 bytes of scanlines: two stored blocks.
        let width = 300, height = 100
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for i in rgb.indices { rgb[i] = UInt8((i * 7) % 251) }
        let png = try DecodedPNG(PNGEncoder.encode(width: width, height: height, rgb: rgb))
        #expect(png.chunkTypes == ["IHDR", "IDAT", "IEND"])
        #expect(png.width == width && png.height == height)
        #expect(png.rgb == rgb)
        #expect(try DecodedPNG(PNGEncoder.encode(width: 1, height: 1, rgb: [1, 2, 3])).rgb == [1, 2, 3])
    }

    @Test func heatMapFile() throws {
        let fx = try Fixture()
        let hrl = try fx.hrl(dirty: [0, 2, 63])  // 64 chunks: one chunk per cell, one row
        let out = fx.path("map.png")
        let r = BitmapTool.map(path: hrl, pngPath: out, hrlOnly: true)
        #expect(r.exitCode == 0, "\(r.errorOutput)")
        #expect(r.output.contains("wrote \(out): 512x4 px"))
        let png = try DecodedPNG(Array(try Data(contentsOf: URL(fileURLWithPath: out))))
        #expect(png.width == 512 && png.height == 4)
        let darkRed: [UInt8] = [139, 0, 0], white: [UInt8] = [255, 255, 255], grey: [UInt8] = [200, 200, 200]
        #expect(png.pixel(0, 0) == darkRed)
        #expect(png.pixel(3, 3) == darkRed)
        #expect(png.pixel(4, 0) == white)        // chunk 1
        #expect(png.pixel(9, 2) == darkRed)      // chunk 2
        #expect(png.pixel(63 * 4 + 1, 1) == darkRed)
        #expect(png.pixel(64 * 4, 0) == grey)    // past the end of the disk
        #expect(png.pixel(511, 3) == grey)
    }

    @Test func heatMapShadesPartialCells() throws {
        let fx = try Fixture()
        // 32768 chunks in 128 x 128 cells: two chunks per cell.
        let hrl = try fx.hrl(sizeBytes: 32768 * 65536, dirty: [0, 2, 3])
        let out = fx.path("half.png")
        #expect(BitmapTool.map(path: hrl, pngPath: out, hrlOnly: true).exitCode == 0)
        let png = try DecodedPNG(Array(try Data(contentsOf: URL(fileURLWithPath: out))))
        #expect(png.width == 512 && png.height == 512)
        let half = HeatMap.color(0.5)
        #expect(png.pixel(0, 0) == [half.0, half.1, half.2])
        #expect(png.pixel(4, 0) == [139, 0, 0])
        #expect(png.pixel(8, 0) == [255, 255, 255])
        #expect(png.pixel(511, 511) == [255, 255, 255])
        // A single dirty chunk is never drawn close to white.
        #expect(HeatMap.color(0.0001).1 < 200)
    }

    @Test func unwritablePNGPath() throws {
        let fx = try Fixture()
        let hrl = try fx.hrl(dirty: [1])
        let r = BitmapTool.map(path: hrl, pngPath: fx.path("no/such/dir/map.png"), hrlOnly: true)
        #expect(r.exitCode == 1)
        #expect(r.errorOutput.contains(fx.path("no/such/dir/map.png")))
    }
}

@Suite struct TextMap {
    @Test func oneChunkPerCell() throws {
        let fx = try Fixture()
        let hrl = try fx.hrl(dirty: [0, 9, 63])
        let r = BitmapTool.map(path: hrl, width: 8, hrlOnly: true)
        #expect(r.exitCode == 0)
        let lines = r.output.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines[0] == "\(hrl): 64 chunks of 64 KiB (4 MiB), 3 dirty (4.69%)")
        #expect(lines[1].hasPrefix("each cell = 1 chunk (64 KiB); ' ' clean  ░"))
        #expect(Array(lines[2...9]) == [
            "    0 B |█       |",
            "512 KiB | █      |",
            "  1 MiB |        |",
            "1.5 MiB |        |",
            "  2 MiB |        |",
            "2.5 MiB |        |",
            "  3 MiB |        |",
            "3.5 MiB |       █|",
        ])
        #expect(lines.count == 11 && lines[10].isEmpty)
    }

    @Test func shadesByFraction() throws {
        let fx = try Fixture()
        // 1024 chunks, 8 columns x 32 rows max: 4 chunks per cell.
        let hrl = try fx.hrl(sizeBytes: 1024 * 65536, dirty: [0, 4, 5, 8, 9, 10, 12, 13, 14, 15])
        let r = BitmapTool.map(path: hrl, width: 8, hrlOnly: true)
        let lines = r.output.split(separator: "\n").map(String.init)
        #expect(lines[1].hasPrefix("each cell = 4 chunks (256 KiB)"))
        #expect(lines[2] == "   0 B |░▒▓█    |")
        #expect(lines.count == 2 + 32)
    }

    @Test func shadeThresholds() {
        #expect(DensityMap.shade(0) == " ")
        #expect(DensityMap.shade(0.001) == "░")
        #expect(DensityMap.shade(1.0 / 3) == "░")
        #expect(DensityMap.shade(0.5) == "▒")
        #expect(DensityMap.shade(0.99) == "▓")
        #expect(DensityMap.shade(1) == "█")
    }

    @Test func widthOutOfRange() throws {
        let fx = try Fixture()
        let hrl = try fx.hrl()
        let r = BitmapTool.map(path: hrl, width: 2)
        #expect(r.exitCode == 2)
        #expect(r.errorOutput.contains("--width 2 is out of range"))
    }

    @Test func liveUnionIsDrawnAndSaidSo() throws {
        let fx = try Fixture()
        let hrl = try fx.hrl(dirty: [0])
        let r = BitmapTool.map(path: hrl, width: 8, context: liveContext(nrChunks: 64, dirty: [1]))
        #expect(r.output.contains("2 dirty (3.13%) — includes 1 undrained chunks from the live kernel map"))
        #expect(r.output.contains("    0 B |██      |"))
    }

    @Test func layoutCoversEveryChunkOnce() {
        for (n, columns, rowsMax) in [(1, 8, 32), (64, 8, 32), (257, 8, 32), (163_841, 64, 32), (1 << 24, 128, 128)] as [(UInt64, Int, Int)] {
            let layout = DensityLayout(nrChunks: n, columns: columns, rowsMax: rowsMax)
            #expect(layout.rows <= rowsMax)
            #expect(layout.chunks(ofCell: 0).lowerBound == 0)
            #expect(layout.chunks(ofCell: layout.cellCount - 1).upperBound == n)
            #expect(!layout.chunks(ofCell: layout.cellCount - 1).isEmpty)
            // Fewest chunks per cell: one fewer would not fit.
            if layout.chunksPerCell > 1 {
                #expect((n + layout.chunksPerCell - 2) / (layout.chunksPerCell - 1) > UInt64(columns * rowsMax))
            }
        }
    }
}

@Suite struct Helpers {
    @Test func bitmapCountMatchesNaive() {
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return seed
        }
        for nrChunks in [1, 63, 64, 65, 200, 1000] as [UInt64] {
            let words = (0..<Bitmap.wordCount(nrChunks: nrChunks)).map { _ in next() & next() }
            let bitmap = Bitmap(words: words, nrChunks: nrChunks)
            for _ in 0..<50 {
                let a = next() % (nrChunks + 1), b = next() % (nrChunks + 1)
                let (from, to) = (min(a, b), max(a, b))
                let naive = (from..<to).filter { bitmap.isSet($0) }.count
                #expect(bitmap.count(from: from, to: to) == UInt64(naive))
            }
            #expect(bitmap.count(from: 0, to: nrChunks) == bitmap.popcount)
            // Bits past the end are dropped.
            #expect(Bitmap(words: [~0, ~0], nrChunks: 70).popcount == 70)
        }
    }

    @Test func byteExtentsClipToDisk() {
        let extents = ByteExtent.from([ChunkExtent(firstChunk: 8, chunkCount: 2), ChunkExtent(firstChunk: 0, chunkCount: 3),
                                       ChunkExtent(firstChunk: 3, chunkCount: 1)],
                                      chunkSizeBytes: 4096, diskSizeBytes: 9 * 4096 + 100)
        #expect(extents == [ByteExtent(offset: 0, length: 4 * 4096, firstChunk: 0, lastChunk: 3),
                            ByteExtent(offset: 8 * 4096, length: 4096 + 100, firstChunk: 8, lastChunk: 9)])
    }

    @Test func formats() {
        #expect(Format.bytes(0) == "0 B")
        #expect(Format.bytes(512) == "512 B")
        #expect(Format.bytes(65536) == "64 KiB")
        #expect(Format.bytes(1536) == "1.5 KiB")
        #expect(Format.bytes(10 << 30) == "10 GiB")
        #expect(Format.percent(1, of: 3) == "33.33%")
        #expect(Format.percent(1, of: 1_000_000) == "<0.01%")
        #expect(Format.percent(999_999, of: 1_000_000) == ">99.99%")
        #expect(Format.percent(0, of: 0) == "0.00%")
        #expect(Format.fixed(2.005, decimals: 1) == "2.0")
        #expect(Format.fixed(0.999, decimals: 2) == "1.00")
        #expect(Format.time(unixNs: 0) == "never")
        #expect(Format.time(unixNs: 1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123Z")
    }

    @Test func jsonRendering() throws {
        let value = JSON.object([("s", .string("a\"b\\c\n\u{1}é")), ("n", .uint(UInt64.max)), ("i", .int(-3)),
                                 ("e", .array([])), ("pairs", .array([.array([.uint(1), .uint(2)])])), ("z", .null),
                                 ("t", .bool(true)), ("d", .double(12.5))])
        let text = value.rendered()
        #expect(text.contains("\"s\": \"a\\\"b\\\\c\\n\\u0001é\""))
        #expect(text.contains("[1, 2]"))
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(parsed["s"] as? String == "a\"b\\c\n\u{1}é")
        #expect((parsed["n"] as? NSNumber)?.uint64Value == UInt64.max)
        #expect(value.rendered(pretty: false) == #"{"s":"a\"b\\c\n\u0001é","n":18446744073709551615,"i":-3,"e":[],"pairs":[[1,2]],"z":null,"t":true,"d":12.5000}"#)
    }
}

/// The executable itself: argument parsing and exit codes.
@Suite struct Executable {
    @Test(.requires("tidemark-bitmap built beside the test bundle (swift build --build-tests)", toolBinary() != nil))
    func exitCodes() throws {
        let binary = try #require(toolBinary())
        let fx = try Fixture()
        let hrl = try fx.hrl(dirty: [1, 2])
        let ok = try runTool(binary, ["verify", hrl])
        #expect(ok.status == 0)
        #expect(ok.stdout.hasPrefix("\(hrl): OK (format v2"))
        let extents = try runTool(binary, ["extents", hrl, "--hrl-only"])
        #expect(extents.status == 0 && extents.stdout == "65536 131072 (chunks 1-2)\n")
        let missing = try runTool(binary, ["show", fx.path("gone.hrl")])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("gone.hrl: no such file"))
        #expect(!missing.stderr.contains("Fatal error"))
        let usage = try runTool(binary, ["map", hrl, "--width", "zero"])
        #expect(usage.status == 2)
        let unknown = try runTool(binary, ["frobnicate"])
        #expect(unknown.status == 2)
        let help = try runTool(binary, ["--help"])
        #expect(help.status == 0 && help.stdout.contains("verify"))
        let junk = try fx.write("junk.hrl", [UInt8](repeating: 7, count: 9000))
        let bad = try runTool(binary, ["verify", junk])
        #expect(bad.status == 1)
    }
}
