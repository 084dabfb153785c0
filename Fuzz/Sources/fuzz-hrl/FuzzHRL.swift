// The .hrl tracking file (docs/hrl-format.md). Mode (first byte, bit 0):
//  0  one page: HRLFormat.decodeHeader for the slot its generation names,
//     HRLFormat.checkBitmapSlot against a context made from the input.
//     Invariant: a valid header re-encodes (encodeHeader) to exactly its
//     page; a valid bitmap slot re-seals (sealBitmapPage) to its page.
//  1  a whole file: the full scan (HRLScanner, what verify runs) and
//     TrackingFile.open on it. Invariants: it opens only when the full scan
//     finds no problem; then the dirty count equals the bits of its words
//     and the dirty extents cover exactly those bits.
// Bit 1 recomputes the CRC32C of every page (so decoding goes past it).
import Foundation
import FuzzSupport
import TidemarkSystem
@testable import TidemarkTracking

@_cdecl("fuzz_hrl_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

let pageSize = 4096

func fixCRC(_ f: inout [UInt8]) {
    var o = 0
    while o + pageSize <= f.count {
        let crc = f.withUnsafeBytes { crc32c(UnsafeRawBufferPointer(rebasing: $0[o..<(o + 4092)])) }
        Fuzz.putLE(&f, o + 4092, crc)
        o += pageSize
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let mode = all.first else { return 0 }
    var body = Array(all.dropFirst())
    if mode & 1 == 0 {
        // Pad to a page; a longer input's tail gives the bitmap context.
        let tail = body.count > pageSize ? Array(body[pageSize...]) : []
        body = Array(body.prefix(pageSize)) + [UInt8](repeating: 0, count: max(0, pageSize - body.count))
        if mode & 2 != 0 { fixCRC(&body) }
        onePage(body, tail)
    } else {
        if mode & 2 != 0 { fixCRC(&body) }
        wholeFile(body)
    }
    return 0
}

func onePage(_ page: [UInt8], _ tail: [UInt8]) {
    page.withUnsafeBytes { b in
        let gen: UInt64 = Fuzz.le(page, 16)
        let slot = Int(gen % 2)
        if case .valid(let h) = HRLFormat.decodeHeader(b, slot: slot) {
            var out = [UInt8](repeating: 0xEE, count: pageSize)
            out.withUnsafeMutableBytes { HRLFormat.encodeHeader(h, into: $0) }
            Fuzz.check(out == page, "a valid header does not re-encode to its page")
        }
        let nr: UInt64 = Fuzz.le(tail, 0)
        let nrChunks = nr % (1 << 40)
        let ctx = HRLFormat.PageContext(binding: Fuzz.le(page, 4088), wordCount: nrChunks / 64 + (nrChunks % 64 == 0 ? 0 : 1),
                                        nrChunks: nrChunks)
        let index: UInt64 = Fuzz.le(page, 4072)
        guard nrChunks > 0, index < (nrChunks + HRLFormat.chunksPerPage - 1) / HRLFormat.chunksPerPage else { return }
        let seq: UInt64 = Fuzz.le(page, 4080)
        if case .valid(let s, _) = HRLFormat.checkBitmapSlot(b, page: index, slot: HRLFormat.bitmapSlot(forSequence: seq), ctx) {
            var out = page
            out.withUnsafeMutableBytes { HRLFormat.sealBitmapPage($0, page: index, sequence: s, binding: ctx.binding) }
            Fuzz.check(out == page, "a valid bitmap slot does not re-seal to its page")
        }
    }
}

func wholeFile(_ file: [UInt8]) {
    let path = Fuzz.scratch + "/fuzz.hrl"
    Fuzz.writeFile(path, file)
    // What verify does, without its retry sleeps (scanSettled waits 20 ms
    // per retry for a writer that is not there).
    var scanned: HRLScanner.Result? = nil
    do {
        let fd = try FileDescriptor(open: path, .readOnly, purpose: "fuzz")
        scanned = try HRLScanner.scan(fd: fd, path: path, stopAtFirstProblem: false, buildPageTable: false)
    } catch {
        Fuzz.expectTyped(error, "HRLScanner.scan")
    }
    do {
        let t = try TrackingFile.open(at: path)
        defer { t.close() }
        Fuzz.check(scanned?.problems.isEmpty ?? false, "open succeeds on a file the full scan rejects: \(scanned?.problems ?? [])")
        let words = try t.readAllWords()
        let bits = words.reduce(UInt64(0)) { $0 + UInt64($1.nonzeroBitCount) }
        let count = try t.dirtyCount()
        Fuzz.check(count == bits, "dirtyCount \(count) differs from the bits of the words (\(bits))")
        var covered: UInt64 = 0
        try t.forEachDirtyExtent(maxChunksPerExtent: 1000) { e in covered += e.chunkCount }
        Fuzz.check(covered == bits, "dirty extents cover \(covered) chunks, the words hold \(bits)")
    } catch {
        Fuzz.expectTyped(error, "TrackingFile.open", also: { $0 is TrackingFileError })
    }
}

func seeds() throws -> [(String, [UInt8])] {
    let dir = Fuzz.scratch + "/seeds"
    Fuzz.resetDirectory(dir)
    var out: [(String, [UInt8])] = []
    let sizes: [(String, UInt64, UInt32)] = [("1m-4k", 1 << 20, 4096), ("2g-64k", 2 << 30, 65536), ("odd-size", 123_456_789, 4096)]
    for (name, size, chunk) in sizes {
        let path = dir + "/\(name).hrl"
        let t = try TrackingFile.create(at: path, identity: DiskIdentity(diskID: "vdb", identity: "virtio-serial-123", sizeBytes: size),
                                        chunkSizeBytes: chunk, state: .tracking, reason: .none, reasonText: "")
        let clean = Fuzz.readFile(path)
        try t.markAllDirty()
        t.close()
        let dirty = Fuzz.readFile(path)
        out.append(("file-\(name)-clean", [1] + clean))
        out.append(("file-\(name)-dirty", [1] + dirty))
        out.append(("header-\(name)", [0] + Array(dirty[0..<pageSize])))
        if dirty.count >= 3 * pageSize {
            out.append(("bitmap-\(name)", [0] + Array(dirty[(2 * pageSize)..<(3 * pageSize)])
                        + withUnsafeBytes(of: (size / UInt64(chunk)).littleEndian) { Array($0) }))
        }
    }
    let path = dir + "/sealed.hrl"
    let t = try TrackingFile.create(at: path, identity: DiskIdentity(diskID: "vdb", identity: "id", sizeBytes: 1 << 20),
                                    chunkSizeBytes: 4096, state: .tracking, reason: .none, reasonText: "")
    try t.setClean(sealNonce: (1...16).map { UInt8($0) }, text: "orderly stop")
    t.close()
    let withNonce = Fuzz.readFile(path)
    out.append(("file-clean-with-seal-nonce", [1] + withNonce))
    // Format version 1 (no seal nonce): the header of the file above,
    // re-encoded as version 1 (older agents wrote it; it must still read).
    let slots = (0..<2).compactMap { slot -> HRLHeader? in
        withNonce.withUnsafeBytes {
            if case .valid(let h) = HRLFormat.decodeHeader(UnsafeRawBufferPointer(rebasing: $0[(slot * pageSize)..<((slot + 1) * pageSize)]), slot: slot) { return h }
            return nil
        }
    }
    if var h = slots.max(by: { $0.generation < $1.generation }) {
        h.formatVersion = 1
        h.sealNonce = [UInt8](repeating: 0, count: 16)
        var page = [UInt8](repeating: 0, count: pageSize)
        page.withUnsafeMutableBytes { HRLFormat.encodeHeader(h, into: $0) }
        out.append(("header-v1", [0] + page))
    }
    return out
}
