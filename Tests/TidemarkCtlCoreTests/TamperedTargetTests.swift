import Foundation
import Testing
import TidemarkCtlCore
import TidemarkSystem
import TidemarkTesting
import TidemarkWire
@testable import TidemarkTarget

/// Target storage edited by someone without the replication key (who can
/// write the target, or a compromised process server): every keyless field
/// of every stored object, changed with its keyless checksums recomputed,
/// must make `recover` fail clearly — never write a wrong image and succeed.
private let chunk: UInt32 = 65536
private let sizeBytes: UInt64 = 16 * 65536
private let diskID = "agent-a:disk-1"

@Suite(.serialized) struct TamperedTargetTests {
    /// A real history, sealed with a real key: 1: chunks 0–7; 2: chunks
    /// 4–11 and zeros 12–13; 3: point p1; 4: chunks 0–3; 5: chunks 8–9;
    /// 6: point p2; 7: chunks 14–15; 8: point p3. Sequences 1–4 are
    /// numbered in epoch A; the agent renumbered at 5 (epoch B, after A):
    /// before that, A had sealed a 5 of its own (chunks 10–11), which was
    /// never stored — `superseded`.
    final class World {
        let dir: String
        let keyPath: String
        let key: ReplicationKey
        var images: [String: [UInt8]] = [:]
        var superseded: [UInt8] = []
        let epochA = try! SegmentLineage.newEpoch(start: 1, previous: .none)
        var unknownPrevious = false
        lazy var epochB = SegmentLineage(epochID: Array(epochA.epochID.reversed()), epochStart: 5,
                                         previous: unknownPrevious ? .unknown : .known(id: epochA.epochID, start: 1))

        init(tag: String, unknownPrevious: Bool = false) throws {
            self.unknownPrevious = unknownPrevious
            dir = try TestEnv.tempDir(tag)
            keyPath = dir + "/replication.key"
            key = try ReplicationKey.generate(path: keyPath)
            let target = try TargetRepository(localDirectory: dir + "/template")
            try target.putDisk(DiskRecord(diskID: diskID, ownerAgentID: "agent-a", sizeBytes: sizeBytes, chunkSizeBytes: chunk, keyID: key.id))
            let sealer = try SegmentSealer(key: key, compressionLevel: 1)
            var disk = [UInt8](repeating: 0, count: Int(sizeBytes))
            var rng = SystemRandomNumberGenerator()
            var seq: UInt64 = 0
            func seal(_ runs: [(UInt64, UInt64, Bool)], at seq: UInt64, lineage: SegmentLineage) throws -> [UInt8] {
                var extents: [SegmentExtent] = []
                var payload: [UInt8] = []
                for (first, count, zero) in runs {
                    let off = Int(first) * Int(chunk), len = Int(count) * Int(chunk)
                    extents.append(SegmentExtent(offset: UInt64(off), length: UInt32(len), kind: zero ? .zero : .data))
                    if !zero { payload += (0..<len).map { _ in UInt8.random(in: 0...255) } }
                }
                return try payload.withUnsafeBytes {
                    try sealer.seal(kind: .data, diskID: diskID, sequence: seq, diskSizeBytes: sizeBytes, chunkSizeBytes: chunk,
                                    extents: extents, payload: $0, point: nil, lineage: lineage)
                }
            }
            func put(_ runs: [(UInt64, UInt64, Bool)], point: (String, Int64)? = nil) throws {
                seq += 1
                if seq == 5 { superseded = try seal([(10, 2, false)], at: 5, lineage: epochA) }
                var extents: [SegmentExtent] = []
                var payload: [UInt8] = []
                for (first, count, zero) in runs {
                    let off = Int(first) * Int(chunk), len = Int(count) * Int(chunk)
                    for i in off..<(off + len) { disk[i] = zero ? 0 : UInt8.random(in: 0...255, using: &rng) }
                    extents.append(SegmentExtent(offset: UInt64(off), length: UInt32(len), kind: zero ? .zero : .data))
                    if !zero { payload += disk[off..<(off + len)] }
                }
                let tag = point.map { PointTag(id: $0.0, pointClass: .crashConsistent, timeUnixMs: $0.1) }
                let sealed = try payload.withUnsafeBytes {
                    try sealer.seal(kind: tag == nil ? .data : .point, diskID: diskID, sequence: seq, diskSizeBytes: sizeBytes,
                                    chunkSizeBytes: chunk, extents: extents, payload: $0, point: tag,
                                    lineage: seq < 5 ? epochA : epochB)
                }
                let record = tag.map { PointRecord(id: $0.id, diskID: diskID, pointClass: $0.pointClass.rawValue, timeUnixMs: $0.timeUnixMs, sequence: seq) }
                let targetExtents = extents.map { TargetExtent(offset: $0.offset, length: UInt64($0.length), zero: $0.kind == .zero) }
                try sealed.withUnsafeBytes { try target.putSegment(diskID: diskID, sequence: seq, extents: targetExtents, point: record, bytes: $0) }
                if let point { images[point.0] = disk }
            }
            try put([(0, 8, false)])
            try put([(4, 8, false), (12, 2, true)])
            try put([], point: ("p1", 1000))
            try put([(0, 4, false)])
            try put([(8, 2, false)])
            try put([], point: ("p2", 2000))
            try put([(14, 2, false)])
            try put([], point: ("p3", 3000))
        }

        /// A fresh copy of the template, pruned (p1 expires: 1 and 3 become tombstones) or not.
        func copy(_ name: String, pruned: Bool) throws -> TargetRepository {
            let root = dir + "/" + name
            try? FileManager.default.removeItem(atPath: root)
            try FileManager.default.copyItem(atPath: dir + "/template", toPath: root)
            let t = try TargetRepository(localDirectory: root)
            if pruned {
                let report = try t.prune(diskID: diskID, retainAfterUnixMs: 1500)
                #expect(report.segmentsPruned == 2, "\(report)")
            }
            return t
        }

        func recover(_ t: TargetRepository, _ point: String, allowUnproven: Bool = false) throws -> [UInt8] {
            let out = dir + "/image-\(point)"
            try? FileManager.default.removeItem(atPath: out)
            _ = try RecoverCommand.run(pointID: point, diskID: diskID, to: out, targetDir: t.rootLocation, keyPath: keyPath,
                                       allowUnprovenHeaders: allowUnproven, progress: nil)
            return Array(try Data(contentsOf: URL(fileURLWithPath: out)))
        }

        func close() { try? FileManager.default.removeItem(atPath: dir) }
    }

    // MARK: editing objects as someone without the key would

    /// Rewrites an object: its metadata (and payload) changed by `edit`,
    /// its envelope re-encoded with fresh keyless checksums.
    func rewrite(_ path: String, kind: ObjectKind, sequence: UInt64, to newPath: String? = nil, newSequence: UInt64? = nil,
                        version: UInt16? = nil, edit: (inout [UInt8], inout [UInt8]) throws -> Void) throws {
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        let env = try bytes.withUnsafeBytes {
            try Envelope.decode($0, objectSize: UInt64(bytes.count), path: path, kind: kind, diskID: diskID, sequence: sequence)
        }
        var metadata = env.metadata
        var payload = Array(bytes[env.headerLength...])
        try edit(&metadata, &payload)
        let header = payload.withUnsafeBytes {
            Envelope.encodeHeader(kind: kind, diskID: diskID, sequence: newSequence ?? sequence, metadata: metadata, payload: $0,
                                  version: version ?? max(2, env.version))
        }
        try? FileManager.default.removeItem(atPath: path)
        #expect(FileManager.default.createFile(atPath: newPath ?? path, contents: Data(header + payload)))
    }

    func editSegment(_ t: TargetRepository, _ seq: UInt64, _ edit: (inout [TargetExtent], inout PointRecord?) -> Void) throws {
        try rewrite(t.segmentPath(diskID, seq), kind: .segment, sequence: seq) { m, _ in
            var r = ByteReader(m, path: "test")
            var (extents, point) = try Metadata.decodeSegment(&r, diskID: diskID)
            edit(&extents, &point)
            m = Metadata.encodeSegment(extents: extents, point: point)
        }
    }

    func editTombstone(_ t: TargetRepository, _ seq: UInt64, version: UInt16? = nil,
                              _ edit: (inout StoredSegment, inout [UInt8]) -> Void) throws {
        var info = try #require(try t.tombstone(diskID: diskID, sequence: seq))
        try rewrite(t.tombstonePath(diskID, seq), kind: .tombstone, sequence: seq, version: version) { m, payload in
            edit(&info, &payload)
            m = Metadata.encodeTombstone(info, prunedAtUnixMs: 5, deadAt: info.deadAtSequence ?? 0)
        }
    }

    func editManifest(_ t: TargetRepository, _ seq: UInt64, _ edit: (inout PointRecord) -> Void) throws {
        try rewrite(t.pointPath(diskID, seq), kind: .point, sequence: seq) { m, _ in
            var r = ByteReader(m, path: "test")
            var p = try Metadata.decodePoint(&r, diskID: diskID)
            edit(&p)
            m = Metadata.encodePointManifest(p)
        }
    }

    /// Recovers every point still listed and checks the class invariant:
    /// an error, or the image exactly as the disk was. Returns the errors.
    func outcomes(_ w: World, _ t: TargetRepository, points: [String]) -> [String: String] {
        var errors: [String: String] = [:]
        for p in points {
            do {
                let got = try w.recover(t, p)
                #expect(got == w.images[p], "point \(p) recovered a WRONG image with success")
            } catch {
                errors[p] = "\(error)"
            }
        }
        return errors
    }

    // MARK: the tests

    @Test func untouchedTargetsRecoverEveryPoint() throws {
        let w = try World(tag: "tamper-clean")
        defer { w.close() }
        let plain = try w.copy("plain", pruned: false)
        for p in ["p1", "p2", "p3"] { #expect(try w.recover(plain, p) == w.images[p]) }
        let pruned = try w.copy("pruned", pruned: true)
        for p in ["p2", "p3"] { #expect(try w.recover(pruned, p) == w.images[p]) }
        // The tombstones keep each pruned segment's sealed header and tag.
        for seq: UInt64 in [1, 3] {
            let tomb = try #require(try pruned.tombstone(diskID: diskID, sequence: seq))
            #expect(tomb.sealedHeaderCopy != nil)
        }
    }

    /// Every kind of edit to the keyless metadata of segment objects.
    @Test(arguments: [false, true]) func editedSegmentMetadataIsRefused(pruned: Bool) throws {
        let w = try World(tag: "tamper-seg-\(pruned)")
        defer { w.close() }
        let points = pruned ? ["p2", "p3"] : ["p1", "p2", "p3"]
        typealias Edit = (inout [TargetExtent], inout PointRecord?) -> Void
        let edits: [(String, UInt64, Edit)] = [
            ("extent list emptied (segment never opened)", 4, { e, _ in e = [] }),
            ("extent list emptied (partly live)", 2, { e, _ in e = [] }),
            ("an extent dropped", 2, { e, _ in e.removeLast() }),
            ("an extent shortened", 4, { e, _ in e[0].length -= UInt64(chunk) }),
            ("an extent moved", 5, { e, _ in e[0].offset += UInt64(chunk) }),
            ("a zero extent relabelled data", 2, { e, _ in e[1].zero = false }),
            ("a data extent relabelled zero", 7, { e, _ in e[0].zero = true }),
            ("an extent added", 6, { e, _ in e = [TargetExtent(offset: 0, length: UInt64(chunk), zero: true)] }),
            ("point record removed", 6, { _, p in p = nil }),
            ("point class changed", 8, { _, p in p?.pointClass = "app-consistent" }),
            ("point time changed", 8, { _, p in p?.timeUnixMs += 1 }),
            ("point id changed", 6, { _, p in p?.id = "p9" }),
            ("point added to a data segment", 7, { _, p in p = PointRecord(id: "px", diskID: diskID, pointClass: "crash-consistent", timeUnixMs: 1, sequence: 7) }),
        ]
        for (what, seq, edit) in edits {
            let t = try w.copy("case", pruned: pruned)
            try editSegment(t, seq, edit)
            let errors = outcomes(w, t, points: points)
            // Every point at or above the edited sequence depends on it.
            for p in points where (["p1": 3, "p2": 6, "p3": 8] as [String: UInt64])[p]! >= seq {
                #expect(errors[p] != nil, "\(what) at sequence \(seq): point \(p) recovered without an error")
            }
        }
    }

    /// A segment object moved to another sequence, or two swapped.
    @Test func relabelledSegmentsAreRefused() throws {
        let w = try World(tag: "tamper-relabel")
        defer { w.close() }
        let t = try w.copy("swap", pruned: false)
        let (a, b) = (t.segmentPath(diskID, 4), t.segmentPath(diskID, 5))
        try FileManager.default.moveItem(atPath: a, toPath: a + ".x")
        try rewrite(b, kind: .segment, sequence: 5, to: a, newSequence: 4) { _, _ in }
        try rewrite(a + ".x", kind: .segment, sequence: 4, to: b, newSequence: 5) { _, _ in }
        let errors = outcomes(w, t, points: ["p1", "p2", "p3"])
        #expect(errors["p2"] != nil && errors["p3"] != nil, "\(errors)")
        #expect(errors["p2"]?.contains("sequence") == true, "\(errors)")
        // A segment of another disk's history (here: a data segment copied over a point's tag).
        let t2 = try w.copy("copy", pruned: false)
        try? FileManager.default.removeItem(atPath: t2.segmentPath(diskID, 6))
        try rewrite(t2.segmentPath(diskID, 7), kind: .segment, sequence: 7, to: t2.segmentPath(diskID, 6), newSequence: 6) { _, _ in }
        try FileManager.default.copyItem(atPath: w.dir + "/template/" + String(t2.segmentPath(diskID, 7).dropFirst(t2.rootLocation.count + 1)),
                                         toPath: t2.segmentPath(diskID, 7))
        let errors2 = outcomes(w, t2, points: ["p2", "p3"])
        #expect(errors2["p2"] != nil && errors2["p3"] != nil, "\(errors2)")
    }

    /// Point manifests: every field.
    @Test func editedManifestsAreRefused() throws {
        let w = try World(tag: "tamper-manifest")
        defer { w.close() }
        let edits: [(String, (inout PointRecord) -> Void)] = [
            ("class", { $0.pointClass = "app-consistent" }),
            ("time", { $0.timeUnixMs = 999 }),
            ("id", { $0.id = "p7" }),
        ]
        for (what, edit) in edits {
            let t = try w.copy("case", pruned: false)
            try editManifest(t, 6, edit)
            let listed = try t.points(diskID: diskID).first { $0.sequence == 6 }!
            do {
                _ = try w.recover(t, listed.id)
                Issue.record("a manifest with its \(what) changed recovered without an error")
            } catch {
                #expect("\(error)".contains("manifest"), "\(what): \(error)")
            }
        }
        // A manifest moved to another sequence (a data segment's).
        let t = try w.copy("moved", pruned: false)
        try rewrite(t.pointPath(diskID, 6), kind: .point, sequence: 6, to: t.pointPath(diskID, 5), newSequence: 5) { m, _ in
            var r = ByteReader(m, path: "test")
            var p = try Metadata.decodePoint(&r, diskID: diskID)
            p.sequence = 5
            m = Metadata.encodePointManifest(p)
        }
        #expect(throws: TidemarkError.self) { _ = try w.recover(t, "p2") }
    }

    /// Tombstones: their extents, their copy of the sealed header, and a
    /// tombstone put in place of a live segment.
    @Test func editedTombstonesAreRefused() throws {
        let w = try World(tag: "tamper-tomb")
        defer { w.close() }
        let edits: [(String, UInt64, UInt16?, (inout StoredSegment, inout [UInt8]) -> Void)] = [
            ("extents emptied", 1, nil, { s, _ in s.extents = [] }),
            ("an extent shortened", 1, nil, { s, _ in s.extents[0].length -= UInt64(chunk) }),
            ("point record changed", 3, nil, { s, _ in s.point?.timeUnixMs = 7 }),
            ("copy of the header damaged", 1, nil, { _, p in p[40] ^= 1 }),
            ("copy of the header removed (an older tombstone)", 1, 2, { _, p in p = [] }),
        ]
        for (what, seq, version, edit) in edits {
            let t = try w.copy("case", pruned: true)
            try editTombstone(t, seq, version: version, edit)
            let errors = outcomes(w, t, points: ["p2", "p3"])
            #expect(errors["p2"] != nil && errors["p3"] != nil, "\(what): \(errors)")
        }
        // A live segment (2, chunks 4–7 live at p2) replaced by a tombstone
        // that claims nothing of it is live: with its true header, the plan
        // finds it live; with a header claiming fewer extents, the MAC fails.
        let t = try w.copy("fake-tomb", pruned: true)
        var info = try #require(try t.segmentInfo(diskID: diskID, sequence: 2))
        info.sealedHeaderCopy = try t.sealedHeaderCopy(diskID: diskID, sequence: 2)
        let meta = Metadata.encodeTombstone(info, prunedAtUnixMs: 1, deadAt: 6)
        let copy = info.sealedHeaderCopy!.header + info.sealedHeaderCopy!.tag
        let header = copy.withUnsafeBytes {
            Envelope.encodeHeader(kind: .tombstone, diskID: diskID, sequence: 2, metadata: meta, payload: $0, version: 3)
        }
        #expect(FileManager.default.createFile(atPath: t.tombstonePath(diskID, 2), contents: Data(header + copy)))
        try FileManager.default.removeItem(atPath: t.segmentPath(diskID, 2))
        let errors = outcomes(w, t, points: ["p2", "p3"])
        #expect(errors["p2"] != nil && errors["p3"] != nil, "\(errors)")
        // Older tombstones are taken only when the operator says so.
        let old = try w.copy("old", pruned: true)
        try editTombstone(old, 1, version: 2) { _, p in p = [] }
        #expect(try w.recover(old, "p3", allowUnproven: true) == w.images["p3"])
    }

    /// The disk record's geometry.
    @Test func editedDiskRecordsAreRefused() throws {
        let w = try World(tag: "tamper-disk")
        defer { w.close() }
        for (what, size, chunkSize) in [("size", sizeBytes + UInt64(chunk), chunk), ("size", sizeBytes - UInt64(chunk), chunk), ("chunk size", sizeBytes, chunk / 2)] {
            let t = try w.copy("case", pruned: false)
            try rewrite(t.diskDir(diskID) + "/disk", kind: .disk, sequence: 0) { m, _ in
                var d = try Metadata.decodeDisk(m, diskID: diskID, path: "test")
                d.sizeBytes = size
                d.chunkSizeBytes = chunkSize
                m = Metadata.encodeDisk(d)
            }
            let errors = outcomes(w, t, points: ["p1", "p2", "p3"])
            #expect(errors.count == 3, "disk record \(what) changed: \(errors)")
        }
    }

    /// A sealing the agent made of a sequence and then replaced when it
    /// renumbered (never stored; a process server saw it) put in place of
    /// the stored one: its header is genuine, its epoch does not own the
    /// sequence.
    @Test func aSupersededSealingIsRefused() throws {
        let w = try World(tag: "tamper-superseded")
        defer { w.close() }
        let t = try w.copy("superseded", pruned: false)
        let sealed = w.superseded
        let extents = [TargetExtent(offset: 10 * UInt64(chunk), length: 2 * UInt64(chunk), zero: false)]
        try FileManager.default.removeItem(atPath: t.segmentPath(diskID, 5))
        try sealed.withUnsafeBytes { try t.putSegment(diskID: diskID, sequence: 5, extents: extents, point: nil, bytes: $0) }
        let errors = outcomes(w, t, points: ["p1", "p2", "p3"])
        #expect(errors["p1"] == nil, "p1 does not depend on sequence 5: \(errors)")
        #expect(errors["p2"]?.contains("superseded") == true && errors["p3"]?.contains("superseded") == true, "\(errors)")
    }

    /// The walk crosses epochs by the previous epoch each names; an epoch
    /// whose previous the agent no longer knew takes the owner from the
    /// stored headers below and says so.
    @Test func epochsAreWalkedAndAnUnknownPreviousIsReported() throws {
        let w = try World(tag: "tamper-epochs")
        defer { w.close() }
        let t = try w.copy("epochs", pruned: false)
        let r = try RecoverCommand.run(pointID: "p3", diskID: diskID, to: w.dir + "/img", targetDir: t.rootLocation, keyPath: w.keyPath, progress: nil)
        #expect(r.lineageInferredBelow.isEmpty && r.unprovenSequences.isEmpty)
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: w.dir + "/img"))) == w.images["p3"])

        let u = try World(tag: "tamper-epochs-unknown", unknownPrevious: true)
        defer { u.close() }
        let tu = try u.copy("epochs", pruned: false)
        let ru = try RecoverCommand.run(pointID: "p3", diskID: diskID, to: u.dir + "/img", targetDir: tu.rootLocation, keyPath: u.keyPath, progress: nil)
        #expect(ru.lineageInferredBelow == [5] && ru.summary.contains("lost its record of earlier numbering epochs"), "\(ru.summary)")
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: u.dir + "/img"))) == u.images["p3"])
        // Below an inferred owner, every header must still agree with it.
        let mixed = try u.copy("mixed", pruned: false)
        try FileManager.default.removeItem(atPath: mixed.segmentPath(diskID, 2))
        let other = try SegmentSealer(key: u.key, compressionLevel: 1)
        let payload = [UInt8](repeating: 7, count: 8 * Int(chunk))
        let foreign = try payload.withUnsafeBytes {
            try other.seal(kind: .data, diskID: diskID, sequence: 2, diskSizeBytes: sizeBytes, chunkSizeBytes: chunk,
                           extents: [SegmentExtent(offset: 4 * UInt64(chunk), length: 8 * chunk, kind: .data)], payload: $0, point: nil,
                           lineage: try SegmentLineage.newEpoch(start: 1, previous: .none))
        }
        try foreign.withUnsafeBytes {
            try mixed.putSegment(diskID: diskID, sequence: 2, extents: [TargetExtent(offset: 4 * UInt64(chunk), length: 8 * UInt64(chunk), zero: false)],
                                 point: nil, bytes: $0)
        }
        #expect(throws: TidemarkError.self) {
            _ = try RecoverCommand.run(pointID: "p3", diskID: diskID, to: u.dir + "/img2", targetDir: mixed.rootLocation, keyPath: u.keyPath, progress: nil)
        }
    }
}
