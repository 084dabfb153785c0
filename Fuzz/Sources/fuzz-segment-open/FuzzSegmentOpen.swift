// Opening sealed segments with a fixed test key (TestSegments.key).
// Mode byte (first input byte % 4):
//  0  open the rest as a segment, expecting its own disk id and sequence;
//  1  re-seal the rest's ciphertext with the test key (the target knows the
//     key: it fixes the key id and computes the GCM tag), so that what
//     follows authentication (zstd decompression, length checks) sees
//     fuzzed bytes;
//  2  seal a payload and extents derived from the rest with SegmentSealer,
//     open it: the payload and header must come back unchanged;
//  3  a replication key file (ReplicationKey.parse).
import Foundation
import FuzzSupport
import TidemarkSystem
@testable import TidemarkWire
import TidemarkCrypto

@_cdecl("fuzz_segment_open_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

nonisolated(unsafe) let opener = try! SegmentOpener(key: TestSegments.key)
nonisolated(unsafe) let sealers = [try! SegmentSealer(key: TestSegments.key, compressionLevel: 0),
                                   try! SegmentSealer(key: TestSegments.key, compressionLevel: 1)]
nonisolated(unsafe) let gcm = try! AES256GCM(key: TestSegments.key.bytes)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let mode = all.first else { return 0 }
    let rest = Array(all.dropFirst())
    switch mode % 4 {
    case 0: open(rest)
    case 1: resealAndOpen(rest)
    case 2: sealAndOpen(rest, mode: mode)
    default:
        do { _ = try ReplicationKey.parse(rest, path: "fuzz.key") } catch { Fuzz.expectTyped(error, "ReplicationKey.parse") }
    }
    return 0
}

func open(_ segment: [UInt8]) {
    segment.withUnsafeBytes { b in
        var disk = "vdb", seq: UInt64 = 1
        if let (h, _) = try? SegmentHeader.decode(b) { disk = h.diskID; seq = h.sequence }
        do {
            let (h, payload) = try opener.open(b, diskID: disk, sequence: seq)
            Fuzz.check(payload.count == Int(h.plainLength), "payload of \(payload.count) bytes, header says \(h.plainLength)")
        } catch {
            Fuzz.expectTyped(error, "SegmentOpener.open")
        }
    }
}

func resealAndOpen(_ input: [UInt8]) {
    guard var (h, n) = try? input.withUnsafeBytes({ try SegmentHeader.decode($0) }) else { return open(input) }
    h.keyID = TestSegments.key.id
    let header = h.encode()
    guard header.count == n else { return }
    var cipher = Array(input[n..<(n + Int(h.cipherLength))])
    var tag = [UInt8](repeating: 0, count: SegmentFormat.tagBytes)
    do {
        try cipher.withUnsafeMutableBytes { c in
            try h.nonce.withUnsafeBytes { nonce in
                try header.withUnsafeBytes { aad in
                    try tag.withUnsafeMutableBytes { t in try gcm.seal(c, nonce: nonce, aad: aad, tag: t) }
                }
            }
        }
    } catch {
        Fuzz.check(false, "sealing with the test key failed: \(error)")
    }
    open(header + cipher + tag)
}

/// Extents and payload from the input: chunk size 4096, disk 1 MiB.
func sealAndOpen(_ input: [UInt8], mode: UInt8) {
    var extents: [SegmentExtent] = []
    var i = 0
    var offset: UInt64 = 0
    var payloadBytes = 0
    let version = UInt16(1 + (mode >> 2) % 3)
    while i + 3 <= input.count && extents.count < 8 {
        let gap = UInt64(input[i] & 0x0F) * 4096
        let chunks = UInt32(input[i + 1] % 4) + 1
        let kind: ExtentKind = input[i + 2] & 1 == 0 ? .data : .zero
        offset += gap
        let e = SegmentExtent(offset: offset, length: chunks * 4096, kind: kind)
        extents.append(e)
        offset += UInt64(e.length)
        if kind == .data { payloadBytes += Int(e.length) }
        i += 3
        if input[i - 1] & 0x80 != 0 { break }
    }
    let seed = input[i...]
    var payload = [UInt8](repeating: 0, count: payloadBytes)
    if !seed.isEmpty {
        for k in 0..<payloadBytes { payload[k] = seed[seed.startIndex + (k / 64) % seed.count] &+ UInt8(truncatingIfNeeded: k & (mode & 0x40 != 0 ? 0 : 1)) }
    }
    let isPoint = mode & 0x20 != 0
    let point = isPoint ? PointTag(id: "p-\(input.count)", pointClass: .appConsistent, timeUnixMs: Int64(input.count)) : nil
    let sealer = sealers[Int(mode >> 7)]
    do {
        let segment = try payload.withUnsafeBytes {
            try sealer.seal(kind: isPoint ? .point : .data, diskID: "vdb", sequence: UInt64(input.count) + 1, diskSizeBytes: 1 << 20,
                            chunkSizeBytes: 4096, extents: extents, payload: $0, point: point, formatVersion: version)
        }
        let (h, back) = try segment.withUnsafeBytes { try opener.open($0, diskID: "vdb", sequence: UInt64(input.count) + 1) }
        Fuzz.check(back == payload, "the payload does not survive seal and open")
        Fuzz.check(h.extents == extents && h.point == point && h.version == version, "the header does not survive seal and open")
    } catch {
        Fuzz.expectTyped(error, "seal/open")
    }
}

func seeds() throws -> [(String, [UInt8])] {
    var out: [(String, [UInt8])] = []
    for (name, s) in try TestSegments.sealed() {
        out.append(("open-" + name, [0] + s))
        out.append(("reseal-" + name, [1] + s))
    }
    out.append(("seal-two-extents", [2, 0x00, 0x01, 0x00, 0x02, 0x00, 0x81] + Array("payload".utf8)))
    out.append(("seal-v3-compressible", [0x86, 0x01, 0x03, 0x80, 0x61]))
    out.append(("key-hex", [3] + Array((String(repeating: "0123456789abcdef", count: 4) + "\n").utf8)))
    out.append(("key-raw", [3] + TestSegments.key.bytes))
    return out
}
