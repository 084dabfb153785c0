// Spool records (docs/spool-format.md): the input becomes spool files in a
// scratch directory and Spool.open scans them, identifying each record's
// payload with SegmentHeader.decode as the process server does.
// Options byte: bit 0 recomputes every record's CRC32C before writing (so
// that scanning goes past the checksum), bit 1 splits the input in two
// files (a u32 gives the first one's length; the first is then "complete":
// a torn record there is an error).
// Invariants: records come back in file order with their bytes (read back
// through Spool.read), the last file is cut to the end of its valid part,
// errors are typed.
import Foundation
import FuzzSupport
import TidemarkServerCore
import TidemarkSystem
import TidemarkWire

@_cdecl("fuzz_spool_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

let recordMagic: UInt32 = 0x5253_4D54

/// Walks records like the scanner and fixes each record's CRC.
func fixCRCs(_ file: inout [UInt8]) {
    var o = 16
    while o + 16 <= file.count {
        let length = Int(Fuzz.le(file, o + 4, as: UInt32.self))
        guard length > 0, length <= file.count - o - 16 else { return }
        let crc = file.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[(o + 16)..<(o + 16 + length)])) }
        Fuzz.putLE(&file, o + 8, crc)
        o += 16 + length
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let options = all.first else { return 0 }
    let dir = Fuzz.scratch + "/spool"
    Fuzz.resetDirectory(dir)
    var parts: [[UInt8]] = []
    let body = Array(all.dropFirst())
    if options & 2 != 0 && body.count >= 4 {
        let n = min(Int(Fuzz.le(body, 0, as: UInt32.self)), body.count - 4)
        parts = [Array(body[4..<(4 + n)]), Array(body[(4 + n)...])]
    } else {
        parts = [body]
    }
    for (i, var p) in parts.enumerated() {
        if options & 1 != 0 { fixCRCs(&p) }
        Fuzz.writeFile(dir + "/spool-" + String(repeating: "0", count: 19) + "\(i + 1).log", p)
        parts[i] = p
    }
    do {
        let (spool, records) = try Spool.open(directory: dir, maxBytes: 1 << 30) { bytes in
            let (h, _) = try SegmentHeader.decode(bytes)
            return (h.diskID, h.sequence)
        }
        var previous: (UInt64, UInt64) = (0, 0)
        for r in records {
            let index = Int(r.location.fileIndex)
            Fuzz.check(index >= 1 && index <= parts.count, "record of file \(index)")
            let loc = (r.location.fileIndex, r.location.offset)
            Fuzz.check(loc > previous, "records out of order")
            previous = loc
            let file = parts[index - 1]
            let start = Int(r.location.offset), end = start + Int(r.location.length)
            Fuzz.check(start >= 32 && end <= file.count, "record outside its file")
            let back = try spool.read(r)
            Fuzz.check(back == Array(file[start..<end]), "record reads back different bytes")
        }
        // The last given file is cut to the end of its last valid record.
        let lastPath = dir + "/spool-" + String(repeating: "0", count: 19) + "\(parts.count).log"
        if FileManager.default.fileExists(atPath: lastPath) {
            let kept = records.filter { Int($0.location.fileIndex) == parts.count }
            let validEnd = kept.last.map { Int($0.location.offset + UInt64($0.location.length)) } ?? 16
            Fuzz.check(Fuzz.readFile(lastPath).count == validEnd, "the last file was not cut to its valid end \(validEnd)")
        }
        spool.stop()
    } catch {
        Fuzz.expectTyped(error, "Spool.open")
    }
    return 0
}

func seeds() throws -> [(String, [UInt8])] {
    let segments = try TestSegments.sealed()
    func file(_ payloads: [[UInt8]], tornTail: Bool = false) -> [UInt8] {
        var f = Array("TMSPOOL1".utf8) + [1, 0, 0, 0, 0, 0, 0, 0]
        for p in payloads {
            var rh = [UInt8](repeating: 0, count: 16)
            Fuzz.putLE(&rh, 0, recordMagic)
            Fuzz.putLE(&rh, 4, UInt32(p.count))
            Fuzz.putLE(&rh, 8, p.withUnsafeBytes { crc32c($0) })
            f += rh + p
        }
        if tornTail { f += [0x54, 0x4D, 0x53, 0x52, 0xFF, 0, 0] }
        return f
    }
    let one = file([segments[0].1])
    let two = file(segments.prefix(3).map { $0.1 }, tornTail: true)
    return [
        ("one-record", [0] + one),
        ("three-records-torn-tail", [0] + two),
        ("fix-crc", [1] + file([segments[3].1, segments[4].1])),
        ("two-files", [2] + withUnsafeBytes(of: UInt32(one.count).littleEndian) { Array($0) } + one + two),
        ("empty-file", [0] + file([])),
    ]
}
