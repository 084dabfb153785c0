// The chunk digest index file (docs/target-layout.md section 9) of a disk
// of 1 MiB in 4 KiB chunks (256 chunks: a header page and 2 data pages).
// Input: an options byte, a u16 length L, L bytes of index file, then the
// metadata of a segment object. Options: bit 0 makes the header describe
// this disk (magic, version 2, geometry, disk id hash), bit 1 fixes the
// header check, bit 2 fixes every non-zero data page's check (so decoding
// goes past the checks), bit 3 stores a segment object (valid envelope,
// the fuzzed metadata) as the next sequence and catches the index up from
// it, as the process server does after a restart.
// Invariants: opening never traps (a bad index is replaced), lookups of
// the whole disk give one state per chunk, equal on a second lookup; a
// data state read back matches the page bytes; errors are typed.
import Foundation
import FuzzSupport
import TidemarkSystem
@testable import TidemarkTarget

@_cdecl("fuzz_digest_index_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

let root = Fuzz.scratch + "/target"
let disk = DiskRecord(diskID: "vdb", ownerAgentID: "agent-1", sizeBytes: 1 << 20, chunkSizeBytes: 4096, keyID: 7)
nonisolated(unsafe) let target: TargetRepository = {
    Fuzz.resetDirectory(root)
    let t = try! TargetRepository(localDirectory: root)
    try! t.putDisk(disk)
    return t
}()
let chunkCount = 256
let pageBytes = 4096

func fixUp(_ f: inout [UInt8], options: UInt8) {
    let diskHash = SHA256.hash(Array("vdb".utf8))
    if f.count >= pageBytes {
        if options & 1 != 0 {
            f.replaceSubrange(0..<8, with: Array("TMDIGIDX".utf8))
            Fuzz.putLE(&f, 8, UInt16(2)); Fuzz.putLE(&f, 10, UInt16(0))
            Fuzz.putLE(&f, 12, UInt32(4096)); Fuzz.putLE(&f, 16, UInt64(1 << 20))
            f.replaceSubrange(32..<64, with: diskHash)
        }
        if options & 2 != 0 { f.replaceSubrange(4064..<4096, with: SHA256.hash(Array(f[0..<4064]))) }
    }
    if options & 4 != 0 {
        var p = 1
        while (p + 1) * pageBytes <= f.count {
            let page = Array(f[(p * pageBytes)..<((p + 1) * pageBytes)])
            if page.contains(where: { $0 != 0 }) {
                var input = [UInt8](repeating: 0, count: 8)
                Fuzz.putLE(&input, 0, UInt64(p))
                input += diskHash + page[0..<4080]
                f.replaceSubrange((p * pageBytes + 4080)..<((p + 1) * pageBytes), with: SHA256.hash(input)[0..<16])
            }
            p += 1
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard all.count >= 3 else { return 0 }
    let options = all[0]
    let n = min(Int(Fuzz.le(all, 1, as: UInt16.self)), all.count - 3)
    var file = Array(all[3..<(3 + n)])
    let metadata = Array(all[(3 + n)...])
    fixUp(&file, options: options)
    let path = target.diskDir("vdb") + "/chunk-digests"
    Fuzz.writeFile(path, file)
    for s in 1...2 { unlink(target.segmentPath("vdb", UInt64(s))) }
    do {
        var damaged = false
        let index = try target.digestIndex(diskID: "vdb") { _ in damaged = true }
        let (seq, states) = try index.lookup(first: 0, count: chunkCount)
        Fuzz.check(states.count == chunkCount, "lookup gave \(states.count) states for \(chunkCount) chunks")
        let (seq2, states2) = try index.lookup(first: 0, count: chunkCount)
        Fuzz.check(seq2 == seq && states2 == states, "lookup is not deterministic")
        if !damaged {
            for (c, st) in states.enumerated() {
                guard case .data(let d) = st else { continue }
                let at = (1 + c / 240) * pageBytes + (c % 240) * 17
                Fuzz.check(Int(d.segmentVersion) == Int(file[at]) && d.low == Fuzz.le(file, at + 1) && d.high == Fuzz.le(file, at + 9),
                           "chunk \(c)'s digest differs from its entry")
            }
        }
        if options & 8 != 0 {
            // The index file is fuzzed: its sequence may be anything.
            guard index.sequence < 2 else { return 0 }
            let next = index.sequence + 1
            // Extents beyond the disk were a bug here (Fuzz/crashes/README.md,
            // digest-index-*): they must now be refused with a typed error.
            let empty = UnsafeRawBufferPointer(start: nil, count: 0)
            let header = Envelope.encodeHeader(kind: .segment, diskID: "vdb", sequence: next, metadata: metadata, payload: empty)
            if next == 2 {
                // Sequence 1 as an empty segment, so that catching up starts at 1.
                let h1 = Envelope.encodeHeader(kind: .segment, diskID: "vdb", sequence: 1,
                                               metadata: Metadata.encodeSegment(extents: [], point: nil), payload: empty)
                Fuzz.writeFile(target.segmentPath("vdb", 1), h1)
            }
            Fuzz.writeFile(target.segmentPath("vdb", next), header)
            try index.catchUp(to: next, from: target) { _, _, _ in nil }
            _ = try index.lookup(first: 0, count: chunkCount)
        }
    } catch {
        Fuzz.expectTyped(error, "DigestIndex")
    }
    return 0
}


func seeds() throws -> [(String, [UInt8])] {
    // A real index: opened empty, then two segments applied.
    Fuzz.resetDirectory(root + "-seed")
    let t = try TargetRepository(localDirectory: root + "-seed")
    try t.putDisk(disk)
    let index = try t.digestIndex(diskID: "vdb")
    try index.apply(sequence: 1, extents: [TargetExtent(offset: 0, length: 8192, zero: false)],
                    digests: [StoredDigest(low: 1, high: 2, segmentVersion: 2), StoredDigest(low: 3, high: 4, segmentVersion: 3)])
    try index.apply(sequence: 2, extents: [TargetExtent(offset: 1_000 * 1024, length: 4096, zero: true)], digests: nil)
    let file = Fuzz.readFile(t.diskDir("vdb") + "/chunk-digests")
    func input(_ options: UInt8, _ f: [UInt8], _ meta: [UInt8] = []) -> [UInt8] {
        [options] + withUnsafeBytes(of: UInt16(f.count).littleEndian) { Array($0) } + f + meta
    }
    let meta = Metadata.encodeSegment(extents: [TargetExtent(offset: 4096, length: 4096, zero: true)], point: nil)
    return [
        ("index-two-segments", input(0, file)),
        ("index-fix-all", input(7, file)),
        ("empty-then-catch-up", input(8, [], meta)),
        ("index-then-catch-up", input(15, file, meta)),
    ]
}
