// Target objects (docs/target-layout.md): the envelope, disk records,
// segment metadata, point manifests and tombstones.
// Input: a selector byte, then the object. Selector bits 0-1: the object's
// place (0 disk record, 1 segment, 2 point manifest, 3 tombstone) of disk
// "vdb", sequence 1; bit 2: recompute the payload checksum; bit 3:
// recompute the header checksum (so decoding goes past the checksums).
// 1. In memory: Envelope.decode expecting what the object itself claims,
//    then the metadata decoder of its kind. Invariant: metadata that decodes
//    re-encodes to the same bytes (Metadata.encode*), deterministically.
// 2. On files: the object is written where a TargetRepository over a local directory looks
//    for it and read through the target's own readers (disk, segmentInfo,
//    readSegment, readPoint, tombstone). Errors must be typed.
import Foundation
import FuzzSupport
import TidemarkSystem
@testable import TidemarkTarget

@_cdecl("fuzz_envelope_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

let root = Fuzz.scratch + "/target"
nonisolated(unsafe) let setUp: Bool = {
    Fuzz.resetDirectory(root)
    let t = try! TargetRepository(localDirectory: root)
    try! t.putDisk(DiskRecord(diskID: "vdb", ownerAgentID: "agent-1", sizeBytes: 1 << 20, chunkSizeBytes: 4096, keyID: 7))
    return true
}()

func fixChecksums(_ o: inout [UInt8], payload: Bool, header: Bool) {
    guard o.count >= 16 else { return }
    let h = Int(Fuzz.le(o, 12, as: UInt32.self))
    guard h >= 66 + 32, h <= o.count else { return }
    if payload {
        let version: UInt16 = Fuzz.le(o, 8)
        let digest = ObjectDigest.payload(Array(o[h...]), version: version)
        o.replaceSubrange(32..<64, with: digest)
    }
    if header { o.replaceSubrange((h - 32)..<h, with: ObjectDigest.sha256(Array(o[0..<(h - 32)]))) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    _ = setUp
    let all = Fuzz.bytes(data, size)
    guard let selector = all.first else { return 0 }
    var object = Array(all.dropFirst())
    fixChecksums(&object, payload: selector & 4 != 0, header: selector & 8 != 0)
    inMemory(object)
    onFiles(object, place: Int(selector & 3))
    return 0
}

func inMemory(_ o: [UInt8]) {
    guard o.count >= 66 else { return }
    let kind = ObjectKind(rawValue: o[10]) ?? .segment
    let d = Int(Fuzz.le(o, 64, as: UInt16.self))
    let diskID = o.count >= 66 + d ? String(decoding: o[66..<(66 + d)], as: UTF8.self) : "vdb"
    let sequence: UInt64 = Fuzz.le(o, 16)
    let env: Envelope
    do {
        env = try o.withUnsafeBytes {
            try Envelope.decode($0, objectSize: UInt64(o.count), path: "obj", kind: kind, diskID: diskID, sequence: sequence)
        }
    } catch {
        return Fuzz.expectTyped(error, "Envelope.decode")
    }
    let again = try? o.withUnsafeBytes {
        try Envelope.decode($0, objectSize: UInt64(o.count), path: "obj", kind: kind, diskID: diskID, sequence: sequence)
    }
    Fuzz.check(again == env, "Envelope.decode is not deterministic")
    Fuzz.check(env.headerLength == Envelope.headerBytes(diskID: env.diskID, metadataCount: env.metadata.count),
               "header length \(env.headerLength) is not what encodeHeader makes")
    let m = env.metadata
    func fits(_ strings: String?...) -> Bool { strings.allSatisfy { ($0?.utf8.count ?? 0) <= EnvelopeFormat.stringBytesMax } }
    do {
        switch env.kind {
        case .disk:
            let rec = try Metadata.decodeDisk(m, diskID: env.diskID, path: "obj")
            if fits(rec.ownerAgentID) { Fuzz.check(Metadata.encodeDisk(rec) == m, "disk record metadata does not re-encode") }
        case .segment:
            var r = ByteReader(m, path: "obj")
            let (extents, point) = try Metadata.decodeSegment(&r, diskID: env.diskID)
            try r.end()
            if fits(point?.id, point?.pointClass) {
                Fuzz.check(Metadata.encodeSegment(extents: extents, point: point) == m, "segment metadata does not re-encode")
            }
        case .point:
            var r = ByteReader(m, path: "obj")
            let p = try Metadata.decodePoint(&r, diskID: env.diskID)
            try r.end()
            if fits(p.id, p.pointClass) { Fuzz.check(Metadata.encodePointManifest(p) == m, "point manifest does not re-encode") }
        case .tombstone:
            break  // decoded on files (TargetRepository.tombstone) below
        }
    } catch {
        Fuzz.expectTyped(error, "Metadata")
    }
}

func onFiles(_ o: [UInt8], place: Int) {
    let t: TargetRepository
    do { t = try TargetRepository(localDirectory: root) } catch { return Fuzz.check(false, "reopening the target: \(error)") }
    let path = [t.diskRecordPath("vdb"), t.segmentPath("vdb", 1), t.pointPath("vdb", 1), t.tombstonePath("vdb", 1)][place]
    let saved = place == 0 ? Fuzz.readFile(path) : []
    Fuzz.writeFile(path, o)
    defer {
        if place == 0 { Fuzz.writeFile(path, saved) } else { unlink(path) }
    }
    do {
        switch place {
        case 0:
            _ = try t.disk("vdb")
        case 1:
            let info = try t.segmentInfo(diskID: "vdb", sequence: 1)
            Fuzz.check(info != nil, "a stored segment has no info")
            let payload = try t.readSegment(diskID: "vdb", sequence: 1)
            Fuzz.check(UInt64(payload.count) == info!.payloadLength, "segment payload length")
        case 2:
            _ = try t.readPoint(diskID: "vdb", sequence: 1)
        default:
            if let s = try t.tombstone(diskID: "vdb", sequence: 1) {
                // Round trip: the tombstone's metadata re-encodes (version 2 envelopes).
                let env = try o.withUnsafeBytes {
                    try Envelope.decode($0, objectSize: UInt64(o.count), path: path, kind: .tombstone, diskID: "vdb", sequence: 1)
                }
                let prunedAt = Int64(bitPattern: Fuzz.le(env.metadata, 0, as: UInt64.self))
                if env.version >= 2 && (s.point.map { $0.id.utf8.count <= 4096 && $0.pointClass.utf8.count <= 4096 } ?? true) {
                    Fuzz.check(Metadata.encodeTombstone(s, prunedAtUnixMs: prunedAt, deadAt: s.deadAtSequence ?? 0) == env.metadata,
                               "tombstone metadata does not re-encode")
                }
            }
        }
    } catch {
        Fuzz.expectTyped(error, "TargetRepository read")
    }
}

func seeds() throws -> [(String, [UInt8])] {
    let empty = UnsafeRawBufferPointer(start: nil, count: 0)
    let extents = [TargetExtent(offset: 0, length: 4096, zero: false), TargetExtent(offset: 65536, length: 8192, zero: true)]
    let point = PointRecord(id: "p-1", diskID: "vdb", pointClass: "crash-consistent", timeUnixMs: 1_796_000_000_000, sequence: 1)
    let payload = Array("segment payload bytes".utf8)
    let segHeader = payload.withUnsafeBytes {
        Envelope.encodeHeader(kind: .segment, diskID: "vdb", sequence: 1,
                              metadata: Metadata.encodeSegment(extents: extents, point: point), payload: $0)
    }
    let stored = StoredSegment(sequence: 1, extents: extents, point: nil, payloadLength: UInt64(payload.count),
                               payloadChecksum: ObjectDigest.payload(payload, version: 2), checksumVersion: 2, pruned: false,
                               deadAtSequence: nil)
    // Envelope version 1 (SHA-256 payload checksum): the segment above as
    // an older server wrote it; selector bits 2 and 3 recompute the checksums.
    var v1 = segHeader + payload
    v1[8] = 1
    return [
        ("segment-v1", [1 | 4 | 8] + v1),
        ("disk", [0] + Envelope.encodeHeader(kind: .disk, diskID: "vdb", sequence: 0, metadata: Metadata.encodeDisk(
            DiskRecord(diskID: "vdb", ownerAgentID: "agent-1", sizeBytes: 1 << 20, chunkSizeBytes: 4096, keyID: 7)), payload: empty)),
        ("segment", [1] + segHeader + payload),
        ("segment-no-point", [1] + payload.withUnsafeBytes {
            Envelope.encodeHeader(kind: .segment, diskID: "vdb", sequence: 1, metadata: Metadata.encodeSegment(extents: extents, point: nil), payload: $0)
        } + payload),
        ("point", [2] + Envelope.encodeHeader(kind: .point, diskID: "vdb", sequence: 1, metadata: Metadata.encodePointManifest(point), payload: empty)),
        ("tombstone", [3] + Envelope.encodeHeader(kind: .tombstone, diskID: "vdb", sequence: 1,
                                                  metadata: Metadata.encodeTombstone(stored, prunedAtUnixMs: 1_796_000_000_500, deadAt: 5), payload: empty)),
    ]
}
