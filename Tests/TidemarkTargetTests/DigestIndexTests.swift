import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// The chunk digest index (docs/target-layout.md section 9) against a model:
/// for every chunk, the state the newest segment covering it left.
/// "Digests" here are the first 16 bytes of SHA-256(chunk index ‖ plaintext),
/// computed from the unsealed object bytes, so a rebuild really reads the
/// objects; even chunks play digests of format 3 segments, odd ones of
/// format 2, so the index keeps both kinds apart.
@Suite struct DigestIndexTests {
    static func digest(_ chunk: UInt64, _ bytes: ArraySlice<UInt8>) -> StoredDigest {
        var input = withUnsafeBytes(of: chunk.littleEndian) { Array($0) }
        input += bytes
        let h = SHA256.hash(input)
        let word = { (at: Int) in (0..<8).reduce(UInt64(0)) { $0 | UInt64(h[at + $1]) << (8 * UInt64($1)) } }
        return StoredDigest(low: word(0), high: word(8), segmentVersion: chunk % 2 == 0 ? 3 : 2)
    }

    /// The digests of a segment's data chunks, in extent order, from its plaintext.
    static func digests(_ f: TargetFixture, extents: [TargetExtent], plain: [UInt8]) -> [StoredDigest] {
        var out: [StoredDigest] = []
        var at = 0
        for e in extents where !e.zero {
            var off: UInt64 = 0
            while off < e.length {
                let n = Int(min(f.chunk, e.length - off))
                out.append(digest((e.offset + off) / f.chunk, plain[at..<(at + n)]))
                at += n
                off += UInt64(n)
            }
        }
        return out
    }

    /// `digestsOf` for catch-up: opens the stored bytes (the fixture's XOR
    /// "sealing") and digests them; `v1` plays segments without digests.
    static func digestsOf(_ f: TargetFixture, v1: Set<UInt64> = []) -> (UInt64, [UInt8], [TargetExtent]) throws -> [StoredDigest]? {
        { seq, sealed, extents in
            if v1.contains(seq) { return nil }
            return digests(f, extents: extents, plain: TargetFixture.seal(sealed))
        }
    }

    /// The expected state of every chunk after the stored sequences.
    static func model(_ f: TargetFixture, v1: Set<UInt64> = []) -> [IndexedChunk] {
        var states = [IndexedChunk](repeating: .unknown, count: Int(f.chunkCount))
        for seq in f.stored.keys.sorted() {
            let s = f.stored[seq]!
            let ds = digests(f, extents: s.extents, plain: s.plain)
            var di = 0
            for e in s.extents {
                var c = e.offset / f.chunk
                while c * f.chunk < e.end {
                    if e.zero {
                        states[Int(c)] = .zero
                    } else {
                        states[Int(c)] = v1.contains(seq) ? .unknown : .data(ds[di])
                        di += 1
                    }
                    c += 1
                }
            }
        }
        return states
    }

    /// A varied history: overlapping data, zeros over data, data over
    /// zeros, a segment across a page boundary (240 chunks per page), points;
    /// segment 1 is overwritten whole by later ones (prune removes it).
    /// Final: chunks 0-1 zero, 2-12 data, 13 zero, 230 data, 231-233 zero,
    /// 234-249 data, 300 and 499 data, the rest never written.
    static func history(_ f: TargetFixture) throws {
        try f.put([(0, 8, false), (10, 4, true)])
        try f.put([(4, 8, false)], point: ("a", 1000))
        try f.put([(0, 2, true), (230, 20, false)])
        try f.put([(300, 1, false), (499, 1, false)], point: ("b", 2000))
        try f.put([(11, 2, false), (231, 3, true)])
        try f.put([(2, 2, false), (13, 1, true)])
        try f.put([], point: ("c", 3000))
    }

    func lookupAll(_ index: DigestIndex, _ f: TargetFixture) throws -> [IndexedChunk] {
        var out: [IndexedChunk] = []
        var c: UInt64 = 0
        while c < f.chunkCount {
            let n = Int(min(97, f.chunkCount - c))  // odd windows, across pages
            out += try index.lookup(first: c, count: n).states
            c += UInt64(n)
        }
        return out
    }

    @Test(arguments: StoreKind.allCases) func updatedPerCommitMatchesTheModelAndSurvivesReopen(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "digest-apply", kind, sizeBytes: 500 * 4096)
        var held: DigestIndex? = try f.target.digestIndex(diskID: f.disk.diskID)
        #expect(held!.sequence == 0)
        #expect(try lookupAll(held!, f).allSatisfy { $0 == .unknown })
        try Self.history(f)
        for seq in f.stored.keys.sorted() {
            let s = f.stored[seq]!
            try held!.apply(sequence: seq, extents: s.extents, digests: Self.digests(f, extents: s.extents, plain: s.plain))
        }
        #expect(held!.sequence == 7)
        let want = Self.model(f)
        #expect(try lookupAll(held!, f) == want)
        #expect(want.filter { if case .data = $0 { true } else { false } }.count == 30)
        #expect(want[0] == .zero && want[13] == .zero && want[231] == .zero && want[14] == .unknown && want[499] != .unknown)
        // Re-applying an old sequence changes nothing; a gap is refused.
        try held!.apply(sequence: 2, extents: f.stored[2]!.extents, digests: nil)
        #expect(try lookupAll(held!, f) == want)
        let gap = tidemarkError { try held!.apply(sequence: 9, extents: [], digests: nil) }
        #expect(gap?.kind == .state && gap?.message.contains("gap") == true)
        // One writer at a time: a second opener is refused while the first holds it.
        let busy = tidemarkError { _ = try f.target.digestIndex(diskID: f.disk.diskID) }
        #expect(busy?.kind == .busy && busy?.message.contains("in use by another process") == true)
        // The next opener sees the same index.
        held = nil
        var damaged: [String] = []
        let again = try f.target.digestIndex(diskID: f.disk.diskID) { damaged.append($0) }
        #expect(damaged.isEmpty && again.sequence == 7)
        #expect(try lookupAll(again, f) == want)
        // Ranges outside the disk are refused.
        #expect(tidemarkError { _ = try again.lookup(first: 499, count: 2) }?.kind == .invalidArgument)
        // Digest counts must match the data chunks.
        let bad = tidemarkError { try again.apply(sequence: 8, extents: f.extents([(0, 2, false)]), digests: [StoredDigest(low: 1, high: 2, segmentVersion: 3)]) }
        #expect(bad?.kind == .corrupt)
    }

    @Test(arguments: StoreKind.allCases) func rebuiltFromTheObjectsAloneEvenAfterPrune(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "digest-rebuild", kind, sizeBytes: 500 * 4096)
        try Self.history(f)
        // Segment 4 was written by an older agent (format 1, no digests).
        let v1: Set<UInt64> = [4]
        // No index yet: built from the objects.
        let index = try f.target.digestIndex(diskID: f.disk.diskID)
        try index.catchUp(to: f.target.committedSequence(diskID: f.disk.diskID), from: f.target, digestsOf: Self.digestsOf(f, v1: v1))
        #expect(index.sequence == 7)
        let want = Self.model(f, v1: v1)
        #expect(try lookupAll(index, f) == want)
        #expect(want[300] == .unknown && want[230] != .unknown)

        // Prune: the newest state of every chunk stays in stored segments, so
        // a rebuild after prune gives the same index.
        let report = try f.target.prune(diskID: f.disk.diskID, retainAfterUnixMs: 2500)
        #expect(report.segmentsPruned > 0)
        try FileManager.default.removeItem(atPath: index.path)
        let rebuilt = try f.target.digestIndex(diskID: f.disk.diskID)
        #expect(rebuilt.sequence == 0)
        try rebuilt.catchUp(to: 7, from: f.target, digestsOf: Self.digestsOf(f, v1: v1))
        #expect(try lookupAll(rebuilt, f) == want)

        // Catching up after more commits applies only the new ones.
        try f.put([(100, 3, false)])
        try rebuilt.catchUp(to: 8, from: f.target, digestsOf: Self.digestsOf(f, v1: v1))
        #expect(rebuilt.sequence == 8)
        #expect(try lookupAll(rebuilt, f) == Self.model(f, v1: v1))
        // A sequence that is neither stored nor pruned stops the catch-up.
        let missing = tidemarkError { try rebuilt.catchUp(to: 10, from: f.target, digestsOf: Self.digestsOf(f)) }
        #expect(missing?.kind == .notFound && missing?.message.contains("sequence 9") == true)
    }

    /// A version 1 file (written before state 3 existed) is read as it is
    /// and its header becomes version 2 at the next flush; a state byte
    /// beyond 3 is damage.
    @Test(arguments: StoreKind.allCases) func version1FilesStayReadable(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "digest-v1", kind, sizeBytes: 500 * 4096)
        try Self.history(f)
        var held: DigestIndex? = try f.target.digestIndex(diskID: f.disk.diskID)
        try held!.catchUp(to: 7, from: f.target, digestsOf: Self.digestsOf(f))
        try held!.flush()
        let path = held!.path
        held = nil
        // Relabel the header as version 1, with a valid check.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(bytes[8] == 2 && bytes[9] == 0)
        bytes[8] = 1
        bytes.replaceSubrange(4064..<4096, with: SHA256.hash(Array(bytes[0..<4064])))
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        var damaged: [String] = []
        let again = try f.target.digestIndex(diskID: f.disk.diskID) { damaged.append($0) }
        #expect(damaged.isEmpty && again.sequence == 7)
        #expect(try lookupAll(again, f) == Self.model(f))
        // Both data states are present (even chunks digested as format 3).
        let versions: [UInt16] = try again.lookup(first: 2, count: 2).states.map { state -> UInt16 in
            if case .data(let d) = state { return d.segmentVersion }
            return 0
        }
        #expect(versions == [3, 2])
        try f.put([(20, 1, false)])
        try again.catchUp(to: 8, from: f.target, digestsOf: Self.digestsOf(f))
        try again.flush()
        let after = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(after[8] == 2 && after[9] == 0)
    }

    @Test(arguments: StoreKind.allCases) func damageAndTamperingAreDetected(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "digest-tamper", kind, sizeBytes: 500 * 4096)
        try Self.history(f)
        var held: DigestIndex? = try f.target.digestIndex(diskID: f.disk.diskID)
        try held!.catchUp(to: 7, from: f.target, digestsOf: Self.digestsOf(f))
        let path = held!.path
        let pristine = try Data(contentsOf: URL(fileURLWithPath: path))
        func restore() throws { try pristine.write(to: URL(fileURLWithPath: path)) }

        // One flipped bit in a data page (chunk 4's digest): the lookup refuses the page.
        try flipByte(path, at: 4096 + 4 * 17 + 5)
        let e = tidemarkError { _ = try held!.lookup(first: 0, count: 8) }
        #expect(e?.kind == .corrupt && e?.message.contains("page 1") == true, "\(e?.message ?? "-")")
        // Pages of other chunks are still served.
        #expect(try held!.lookup(first: 300, count: 1).states == [Self.model(f)[300]])
        try restore()
        #expect(try held!.lookup(first: 0, count: 8).states == Array(Self.model(f)[0..<8]))

        // Swapping two pages (each is valid on its own) is detected: the check binds the page number.
        var swapped = pristine
        let p1 = swapped[4096..<8192], p2 = swapped[8192..<12288]
        swapped.replaceSubrange(4096..<8192, with: p2)
        swapped.replaceSubrange(8192..<12288, with: p1)
        try swapped.write(to: URL(fileURLWithPath: path))
        #expect(tidemarkError { _ = try held!.lookup(first: 0, count: 1) }?.kind == .corrupt)
        #expect(tidemarkError { _ = try held!.lookup(first: 240, count: 1) }?.kind == .corrupt)
        try restore()

        // A page zeroed by the file system is "unknown", never "zero" or a digest.
        var zeroed = pristine
        zeroed.replaceSubrange(4096..<8192, with: [UInt8](repeating: 0, count: 4096))
        try zeroed.write(to: URL(fileURLWithPath: path))
        #expect(try held!.lookup(first: 0, count: 240).states.allSatisfy { $0 == .unknown })
        try restore()

        // A damaged header: the index is replaced by an empty one (sequence 0), the reason is told.
        try flipByte(path, at: 24)
        held = nil
        var damaged: [String] = []
        let reopened = try f.target.digestIndex(diskID: f.disk.diskID) { damaged.append($0) }
        #expect(damaged.count == 1 && damaged[0].contains("header checksum"), "\(damaged)")
        let afterReset = try lookupAll(reopened, f)
        #expect(reopened.sequence == 0 && afterReset.allSatisfy { $0 == .unknown })
        try reopened.catchUp(to: 7, from: f.target, digestsOf: Self.digestsOf(f))
        #expect(try lookupAll(reopened, f) == Self.model(f))

        // Another disk's index copied over this one's: refused (the header binds the disk id).
        let other = DiskRecord(diskID: "host-b:sdc", ownerAgentID: "agent-1", sizeBytes: 500 * 4096, chunkSizeBytes: 4096, keyID: 0x1234)
        try f.target.putDisk(other)
        let otherIndex = try f.target.digestIndex(diskID: other.diskID)
        try FileManager.default.removeItem(atPath: otherIndex.path)
        try FileManager.default.copyItem(atPath: path, toPath: otherIndex.path)
        damaged = []
        let copied = try f.target.digestIndex(diskID: other.diskID) { damaged.append($0) }
        #expect(damaged.first?.contains("another disk") == true && copied.sequence == 0)
    }

    /// Applies without a flush write pages but leave the header behind (a
    /// crash then): another opener sees the old sequence and catching up
    /// from the objects repairs it; a flush makes the header current.
    @Test(arguments: StoreKind.allCases) func headerLagsUntilFlushAndCatchUpRepairs(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "digest-flush", kind, sizeBytes: 500 * 4096)
        try Self.history(f)
        var index: DigestIndex? = try f.target.digestIndex(diskID: f.disk.diskID)
        for seq in f.stored.keys.sorted() {
            let s = f.stored[seq]!
            try index!.apply(sequence: seq, extents: s.extents, digests: Self.digests(f, extents: s.extents, plain: s.plain), sync: seq == 3)
        }
        #expect(index!.sequence == 7)
        index = nil  // "crash": never flushed after 3
        var crashed: DigestIndex? = try f.target.digestIndex(diskID: f.disk.diskID)
        #expect(crashed!.sequence == 3, "the header names the last flushed sequence")
        try crashed!.catchUp(to: 7, from: f.target, digestsOf: Self.digestsOf(f))
        #expect(crashed!.sequence == 7)
        #expect(try lookupAll(crashed!, f) == Self.model(f))
        crashed = nil  // catch-up flushed
        #expect(try f.target.digestIndex(diskID: f.disk.diskID).sequence == 7)
    }

    /// Segments without digests (format 1) make their data chunks unknown,
    /// also when they overwrite chunks that had digests.
    @Test(arguments: StoreKind.allCases) func segmentsWithoutDigestsMakeChunksUnknown(_ kind: StoreKind) throws {
        let f = try TargetFixture(tag: "digest-v1", kind, sizeBytes: 64 * 4096)
        try f.put([(0, 4, false)])
        try f.put([(2, 4, false), (8, 2, true)])
        let index = try f.target.digestIndex(diskID: f.disk.diskID)
        try index.catchUp(to: 2, from: f.target, digestsOf: Self.digestsOf(f, v1: [2]))
        let states = try index.lookup(first: 0, count: 10).states
        #expect(states[0] != .unknown && states[1] != .unknown)
        #expect(states[2...5].allSatisfy { $0 == .unknown })
        #expect(states[8] == .zero && states[9] == .zero && states[6] == .unknown)
    }
}
