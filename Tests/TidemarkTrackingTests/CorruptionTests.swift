import Testing
import TidemarkSystem
@testable import TidemarkTracking

/// Damage the file the ways disks, crashes and people do, and check that it
/// is either absorbed by the A/B slots or reported — never trusted.
@Suite struct CorruptionTests {
    /// A file after one update that set chunk 40_000 (bitmap page 1), made
    /// at generation g0 = 1: the update wrote its intent header (g0 + 1,
    /// update in flight) to header slot 0, page 1 slot B (sequence 2), and the
    /// final header (g0 + 2, flag clear) to header slot 1. Page 1 slot A
    /// still holds sequence 1, no bits.
    func twoVersions(_ dir: TempDir) throws -> String {
        let f = try makeFile(dir)
        let g0 = f.header.generation
        try f.persistSet(SparseWords(chunks: [40_000]))
        // A page-changing update writes two headers: intent, then final.
        #expect(f.header.generation == g0 + 2 && f.currentHeaderSlot == Int((g0 + 2) % 2) && !f.header.updateInFlight)
        #expect(f.currentHeaderSlot == 1)
        #expect(f.currentSlot(ofBitmapPage: 1) == 1 && f.sequence(ofBitmapPage: 1) == 2)
        f.close()
        let intent = try #require(try headerInSlot(f.path, 0))
        #expect(intent.generation == g0 + 1 && intent.updateInFlight && intent.drainSeq == 0)
        return f.path
    }

    /// `twoVersions` as a crash left it after the update's page writes but
    /// before its final header: header slot 1 back to generation 1, so the
    /// intent header (generation 2, update in flight) is current. Page 1 slot B
    /// (sequence 2) was written; the caller may tear it.
    func crashedBeforeTheFinalHeader(_ dir: TempDir) throws -> String {
        let f = try makeFile(dir)
        f.close()
        let createdHeader = try readPage(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1))
        let path = try twoVersions(dir)
        try patchFile(path, at: TrackingFile.fileOffset(ofHeaderSlot: 1), createdHeader)
        let h = try TrackingFile.open(at: path, readOnly: true).header
        #expect(h.generation == 2 && h.updateInFlight)
        return path
    }

    @Test func oneCorruptHeaderSlotFallsBackToTheOther() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 0) + 200)  // the older one (the intent)
        #expect(try TrackingFile.open(at: path, readOnly: true).header.generation == 3)
        let report = TrackingFile.verifyReport(at: path)
        #expect(report.problems == [])
        #expect(report.notes.count == 1 && report.notes[0].contains("header slot 0: bad checksum"), "\(report.notes)")

        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 0) + 200)  // repair
        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 1) + 300)  // the current one
        // The older header is the update's intent: the pages keep their own versions.
        let r = try TrackingFile.open(at: path, readOnly: true)
        #expect(r.header.generation == 2 && r.header.updateInFlight)
        #expect(try r.dirtyWords() == SparseWords(chunks: [40_000]))
        r.close()
        do {
            // A writable open finishes the "interrupted" update: its header
            // (generation 3) goes to the damaged slot and repairs it.
            let f = try TrackingFile.open(at: path)
            #expect(f.header.generation == 3 && !f.header.updateInFlight && f.currentHeaderSlot == 1)
            #expect(try f.dirtyWords() == SparseWords(chunks: [40_000]))
            try f.setState(.clean, reason: .none, text: "")
            #expect(f.header.generation == 4)  // header-only: one header write
        }
        #expect(TrackingFile.verifyReport(at: path).notes == [])
        #expect(TrackingFile.verify(at: path) == [])

        // Both slots with the flag clear (generations 4 and 5): damage to the
        // current one falls back to the older, and the next header write repairs it.
        do {
            let f = try TrackingFile.open(at: path)
            try f.setTargetID("t")
            #expect(f.header.generation == 5 && f.currentHeaderSlot == 1)
        }
        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 1) + 300)
        let f = try TrackingFile.open(at: path)
        #expect(f.header.generation == 4 && !f.header.updateInFlight && f.header.targetID == "")
        try f.setState(.tracking, reason: .none, text: "")
        #expect(f.header.generation == 5)
        f.close()
        #expect(TrackingFile.verifyReport(at: path).notes == [])
        #expect(TrackingFile.verify(at: path) == [])
    }

    @Test func bothHeaderSlotsCorrupt() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        try flipByte(path, at: 4000)
        try flipByte(path, at: 4096 + 4000)
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: path) }
        #expect(e?.detail.hasPrefix("header: no valid slot") == true, "\(String(describing: e))")
        #expect(e?.description.contains("tracking must be rebuilt by a resync") == true)
    }

    @Test func oneCorruptBitmapSlotFallsBackToTheOtherOnlyAfterACrash() throws {
        // No update in flight: the damaged slot was written and synced, so the
        // file cannot tell which copy it lost. Here it is the older slot (A),
        // but the reader cannot know that: corrupt.
        do {
            let dir = TempDir()
            let path = try twoVersions(dir)
            try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 0) + 17)
            let before = try readFileBytes(path)
            for readOnly in [false, true] {
                let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: path, readOnly: readOnly) }
                #expect(e?.detail.hasPrefix("bitmap page 1 slot A: bad checksum") == true, "\(String(describing: e))")
                #expect(e?.detail.contains("no update was in flight") == true, "\(String(describing: e))")
            }
            let problems = TrackingFile.verify(at: path)
            #expect(problems.count == 1 && problems[0].hasPrefix("bitmap page 1 slot A: bad checksum"), "\(problems)")
            #expect(try readFileBytes(path) == before)  // a failed open writes nothing
        }
        // Update in flight (a crash before the final header): the damage is a
        // torn write, and the other slot (B, sequence 2) is used.
        let dir = TempDir()
        let path = try crashedBeforeTheFinalHeader(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 0) + 17)
        let report = TrackingFile.verifyReport(at: path)
        #expect(report.problems == [])
        #expect(report.notes.count == 1 && report.notes[0].hasPrefix("bitmap page 1 slot A: bad checksum"), "\(report.notes)")
        #expect(try TrackingFile.open(at: path, readOnly: true).dirtyWords() == SparseWords(chunks: [40_000]))
        do {
            let f = try TrackingFile.open(at: path)
            #expect(!f.header.updateInFlight && f.header.generation == 3)
            #expect(try f.dirtyWords() == SparseWords(chunks: [40_000]))
            // The repair copied sequence 2 to slot A as sequence 3.
            #expect(f.currentSlot(ofBitmapPage: 1) == 0 && f.sequence(ofBitmapPage: 1) == 3)
            try f.persistSet(SparseWords(chunks: [40_001]))
            #expect(f.currentSlot(ofBitmapPage: 1) == 1 && f.sequence(ofBitmapPage: 1) == 4)
        }
        #expect(TrackingFile.verifyReport(at: path).notes == [])
        #expect(TrackingFile.verify(at: path) == [])
        #expect(try TrackingFile.open(at: path).dirtyWords() == SparseWords(chunks: [40_000, 40_001]))
    }

    /// The hole the update-in-flight flag closes: damage to the current copy
    /// of a page must not silently bring back the older copy, whose missing
    /// bits the agent may already have cleared from the kernel map.
    @Test func currentBitmapSlotDamagedWithNoUpdateInFlightIsCorrupt() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1) + 4090)
        let before = try readFileBytes(path)
        for readOnly in [false, true] {
            let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: path, readOnly: readOnly) }
            #expect(e?.detail.hasPrefix("bitmap page 1 slot B: bad checksum") == true, "\(String(describing: e))")
            #expect(e?.detail.contains("and no update was in flight: the storage damaged a written page") == true, "\(String(describing: e))")
            #expect(e?.description.contains("tracking must be rebuilt by a resync") == true)
        }
        let problems = TrackingFile.verify(at: path)
        #expect(problems.count == 1 && problems[0].hasPrefix("bitmap page 1 slot B: bad checksum"), "\(problems)")
        #expect(try readFileBytes(path) == before)
    }

    /// Zeroed storage is damage too: a written slot never goes back to all
    /// zero, so "never written" beside a sequence above 1 is not a fresh page.
    @Test func zeroedBitmapSlotBesideAnUpdatedPageIsCorrupt() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        do {
            let f = try TrackingFile.open(at: path)
            try f.persistSet(SparseWords(chunks: [40_001]))  // page 1: A = sequence 3 (current), B = 2
        }
        let good = try readFileBytes(path)
        for (slot, name, besides) in [(0, "A", 2), (1, "B", 3)] {
            try writeFileBytes(path, good)
            try patchFile(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: slot), [UInt8](repeating: 0, count: pageSize))
            let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: path, readOnly: true) }
            #expect(e?.detail == "bitmap page 1 slot \(name): never written (all zero) beside sequence \(besides), and no update was in flight: the storage damaged a written page, which may have held its newest bits",
                    "\(String(describing: e))")
        }
        // Beside sequence 1 (never updated since creation) it is normal.
        #expect(TrackingFile.verifyReport(at: path).notes.isEmpty)
        try writeFileBytes(path, good)
        #expect(TrackingFile.verifyReport(at: path) .problems == [])
    }

    @Test func currentBitmapSlotTornDuringAnUpdateIsRepaired() throws {
        // The new copy of page 1 (slot B) torn, or written in full.
        for torn in [true, false] {
            let dir = TempDir()
            let path = try crashedBeforeTheFinalHeader(dir)
            if torn { try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1) + 4090) }
            let expected = torn ? SparseWords() : SparseWords(chunks: [40_000])
            let report = TrackingFile.verifyReport(at: path)
            #expect(report.problems == [])
            #expect(report.notes.count == (torn ? 1 : 0), "\(report.notes)")
            if torn { #expect(report.notes.first?.hasPrefix("bitmap page 1 slot B: bad checksum") == true, "\(report.notes)") }
            #expect(try TrackingFile.open(at: path, readOnly: true).dirtyWords() == expected)

            do {
                let f = try TrackingFile.open(at: path)
                #expect(!f.header.updateInFlight && f.header.generation == 3)
                #expect(try f.dirtyWords() == expected)
            }
            let after = TrackingFile.verifyReport(at: path)
            #expect(after.problems == [] && after.notes == [], "\(after)")
            #expect(after.header?.updateInFlight == false)
            // Every page has two valid slots holding the same bits.
            let bytes = try readFileBytes(path)
            let states = try bitmapSlots(path)
            for (page, pair) in states.enumerated() {
                #expect(pair.allSatisfy { if case .valid = $0 { true } else { false } }, "page \(page): \(pair)")
                let a = Int(TrackingFile.fileOffset(ofBitmapPage: UInt64(page), slot: 0))
                #expect(bytes[a..<(a + 4064)] == bytes[(a + pageSize)..<(a + pageSize + 4064)], "page \(page)")
            }
            #expect(try TrackingFile.open(at: path, readOnly: true).dirtyWords() == expected)
        }
    }

    @Test func readOnlyOpenOfAnInFlightFileDoesNotModifyIt() throws {
        let dir = TempDir()
        let path = try crashedBeforeTheFinalHeader(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1) + 100)  // the new copy, torn
        let before = try readFileBytes(path)
        let r = try TrackingFile.open(at: path, readOnly: true)
        #expect(r.header.updateInFlight && r.header.generation == 2)
        #expect(try r.dirtyWords() == SparseWords())
        #expect(try r.dirtyCount() == 0)
        #expect(try allExtents(r) == [])
        #expect(try r.readAllWords().allSatisfy { $0 == 0 })
        #expect(throws: TidemarkError.self) { try r.persistSet(SparseWords(chunks: [1])) }
        r.close()
        #expect(TrackingFile.verify(at: path) == [])
        #expect(try readFileBytes(path) == before)
        // And with the new copy intact, it reads the new bits, still writing nothing.
        try patchFile(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1) + 100, [before[Int(TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1)) + 100] ^ 0xFF])
        let intact = try readFileBytes(path)
        #expect(try TrackingFile.open(at: path, readOnly: true).dirtyWords() == SparseWords(chunks: [40_000]))
        #expect(try readFileBytes(path) == intact)
    }

    @Test func bothBitmapSlotsCorrupt() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 0) + 5)
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1) + 5)
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: path) }
        #expect(e?.detail == "bitmap page 1: both slots fail their checksum")
        #expect(e?.description == "\(path): corrupt: bitmap page 1: both slots fail their checksum; the file cannot be trusted — tracking must be rebuilt by a resync")
    }

    @Test func neverWrittenPlusCorruptIsCorrupt() throws {
        // After creation slot B of every page is all zero; damage slot A.
        let dir = TempDir()
        let f = try makeFile(dir)
        f.close()
        try flipByte(f.path, at: TrackingFile.fileOffset(ofBitmapPage: 3, slot: 0) + 100)
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.hasPrefix("bitmap page 3: no valid slot (slot A: bad checksum") == true)
        #expect(e?.detail.hasSuffix("slot B: never written)") == true)
    }

    @Test func bothSlotsNeverWrittenIsCorrupt() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        f.close()
        try patchFile(f.path, at: TrackingFile.fileOffset(ofBitmapPage: 2, slot: 0), [UInt8](repeating: 0, count: pageSize))
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.contains("bitmap page 2: no valid slot") == true)
    }

    @Test func truncatedFile() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        f.close()
        let bytes = try readFileBytes(f.path)
        try writeFileBytes(f.path, Array(bytes.dropLast(pageSize)))
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.contains("(truncated)") == true)
        let problems = TrackingFile.verify(at: f.path)
        #expect(problems.count == 2, "\(problems)")
        #expect(problems.last?.contains("bitmap page 3 is missing") == true)

        try writeFileBytes(f.path, Array(bytes.prefix(100)))
        expectTrackingError(.notATrackingFile) { _ = try TrackingFile.open(at: f.path) }
        try writeFileBytes(f.path, [])
        expectTrackingError(.notATrackingFile) { _ = try TrackingFile.open(at: f.path) }
    }

    @Test func extendedFile() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        f.close()
        try writeFileBytes(f.path, try readFileBytes(f.path) + [UInt8](repeating: 0, count: 512))
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.contains("(extended)") == true)
        #expect(TrackingFile.verify(at: f.path).count == 1)
    }

    @Test func wrongMagic() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        f.close()
        try patchFile(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1), Array("NOTHRL!!".utf8))
        let e = expectTrackingError(.notATrackingFile) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.contains("no .hrl magic") == true)
        // A file that has nothing to do with us.
        let other = dir.file("other")
        try writeFileBytes(other, Array(String(repeating: "hello world\n", count: 2000).utf8))
        expectTrackingError(.notATrackingFile) { _ = try TrackingFile.open(at: other) }
    }

    @Test func unsupportedVersion() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        f.close()
        try rewritePage(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1)) { putLE(&$0, 8, UInt32(3)) }
        let e = expectTrackingError(.unsupportedVersion) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.contains("format version 3") == true)
        #expect(TrackingFile.verify(at: f.path).count == 1)
    }

    @Test func semanticHeaderDamageBehindAValidChecksum() throws {
        let dir = TempDir()
        let cases: [(String, (inout [UInt8]) -> Void)] = [
            ("unsupported page size", { putLE(&$0, 12, UInt32(8192)) }),
            ("nr_chunks", { putLE(&$0, 40, UInt64(99)) }),
            ("bitmap_pages", { putLE(&$0, 48, UInt64(5)) }),
            ("chunk size", { putLE(&$0, 32, UInt32(12288)) }),
            ("unknown state", { putLE(&$0, 36, UInt32(7)) }),
            ("unknown reason", { putLE(&$0, 88, UInt32(99)) }),
            ("unknown flags 0x2 at offset 92", { putLE(&$0, 92, UInt32(2)) }),
            ("unknown flags 0x80000001 at offset 92", { putLE(&$0, 92, UInt32(0x8000_0001)) }),
            ("unused bytes", { $0[2000] = 1 }),
            ("seal_nonce is set but the state is", { $0[1010] = 1 }),
            ("generation 2 in slot 1", { putLE(&$0, 16, UInt64(2)) }),
            ("disk_id has bytes after", { $0[112 + 10] = 0x41 }),
            ("not valid UTF-8", { $0[112] = 0xFF }),
        ]
        for (i, (expected, change)) in cases.enumerated() {
            let f = try makeFile(dir, "h\(i).hrl")
            f.close()
            try rewritePage(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1), change)
            let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: f.path) }
            #expect(e?.detail.contains(expected) == true, "\(expected): \(String(describing: e))")
        }
        // Bit 0 alone is update_in_flight: legitimate, and a writable open clears it.
        let f = try makeFile(dir, "flag.hrl")
        f.close()
        try rewritePage(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1)) { putLE(&$0, 92, UInt32(1)) }
        #expect(TrackingFile.verify(at: f.path) == [])
        #expect(try TrackingFile.open(at: f.path, readOnly: true).header.updateInFlight)
        let g = try TrackingFile.open(at: f.path)
        #expect(!g.header.updateInFlight && g.header.generation == 2)
        g.close()
        #expect(TrackingFile.verifyReport(at: f.path).header?.updateInFlight == false)
        #expect(getLE(try readPage(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 0)), 92, as: UInt32.self) == 0)
    }

    @Test func semanticBitmapDamageBehindAValidChecksum() throws {
        let dir = TempDir()
        let lastPage: UInt64 = 3
        let cases: [(String, UInt64, (inout [UInt8]) -> Void)] = [
            // 100_003 chunks: the last word (1562, word 38 of page 3) holds chunks 99_968...100_002: bit 35 is chunk 100_003.
            ("bits set beyond nr_chunks", lastPage, { $0[38 * 8 + 4] = 0x08 }),
            ("bits set beyond nr_chunks", lastPage, { $0[39 * 8] = 1 }),
            ("bad page magic", 0, { $0[4064] = 0x41 }),
            ("reserved field", 0, { putLE(&$0, 4068, UInt32(1)) }),
            ("holds page index 2", 1, { putLE(&$0, 4072, UInt64(2)) }),
            ("belongs to another file", 0, { $0[4088] ^= 1 }),
            ("sequence 2 in slot A", 0, { putLE(&$0, 4080, UInt64(2)) }),
        ]
        for (i, (expected, page, change)) in cases.enumerated() {
            let f = try makeFile(dir, "b\(i).hrl")
            f.close()
            try rewritePage(f.path, at: TrackingFile.fileOffset(ofBitmapPage: page, slot: 0), change)
            let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: f.path) }
            #expect(e?.detail.hasPrefix("bitmap page \(page): no valid slot") == true, "\(String(describing: e))")
            #expect(e?.detail.contains(expected) == true, "\(expected): \(String(describing: e))")
        }
        // The last chunk itself is fine.
        let f = try makeFile(dir, "ok.hrl")
        f.close()
        try rewritePage(f.path, at: TrackingFile.fileOffset(ofBitmapPage: lastPage, slot: 0)) { $0[38 * 8 + 4] = 0x04 }
        #expect(try TrackingFile.open(at: f.path).dirtyWords().chunks == [100_002])
    }

    @Test func pageCopiedFromAnotherFileIsRejected() throws {
        let dir = TempDir()
        let a = try makeFile(dir, "a.hrl")
        let b = try makeFile(dir, "b.hrl")
        try a.persistSet(SparseWords(chunks: [7]))
        a.close()
        b.close()
        // Both slots of page 0 from a into b: valid checksums, wrong uuid binding.
        let off = TrackingFile.fileOffset(ofBitmapPage: 0, slot: 0)
        let pageA = try readPage(a.path, at: off) + readPage(a.path, at: off + 4096)
        try patchFile(b.path, at: off, pageA)
        let e = expectTrackingError(.corrupt) { _ = try TrackingFile.open(at: b.path) }
        #expect(e?.detail.contains("belongs to another file") == true)
    }

    @Test func verifyListsEveryProblem() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        try f.setState(.tracking, reason: .none, text: "")  // both header slots written
        f.close()
        try flipByte(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1) + 200)  // harmless: a note
        try flipByte(f.path, at: TrackingFile.fileOffset(ofBitmapPage: 0, slot: 0) + 1)
        try flipByte(f.path, at: TrackingFile.fileOffset(ofBitmapPage: 2, slot: 0) + 1)
        try rewritePage(f.path, at: TrackingFile.fileOffset(ofBitmapPage: 3, slot: 0)) { putLE(&$0, 4072, UInt64(0)) }
        let report = TrackingFile.verifyReport(at: f.path)
        #expect(report.problems.count == 3, "\(report.problems)")
        #expect(report.problems[0].hasPrefix("bitmap page 0:"))
        #expect(report.problems[1].hasPrefix("bitmap page 2:"))
        #expect(report.problems[2].hasPrefix("bitmap page 3:") && report.problems[2].contains("holds page index 0"))
        #expect(report.notes.count == 1)
        #expect(report.header?.generation == 2)
        #expect(TrackingFile.verify(at: dir.file("missing.hrl")).first?.contains("cannot read") == true)
    }

    enum UpdateKind: Sendable { case set, clear, header }
    /// Run in this order, each on the file the previous ones left.
    static let updates: [(name: String, kind: UpdateKind, run: @Sendable (TrackingFile) throws -> Void)] = [
        ("set over pages 0-2", .set, { try $0.persistSet(SparseWords(chunks: [5, 32_511, 32_512, 70_000])) }),
        ("clear", .clear, { try $0.persistClear(SparseWords(chunks: [32_511, 70_000])) }),
        ("set again", .set, { try $0.persistSet(SparseWords(chunks: [99_000, 100_002])) }),
        ("state", .header, { try $0.setState(.resyncRequired, reason: .operatorRequest, text: "because") }),
        ("mark all", .set, { try $0.markAllDirty() }),
        ("clear all", .clear, { try $0.clearAll() }),
    ]

    /// Crashes modelled on the update protocol: a page-changing update
    /// writes its intent header and syncs, writes its page slots and syncs,
    /// then writes its final header and syncs; a header-only update writes
    /// one header and syncs. A crash can lose or tear (any way) any subset of
    /// the writes issued since the last completed sync, never one before it.
    /// Every such state must open, give each page its old or new version
    /// whole, and be finished by a writable open into a clean file.
    /// One test case per update, run in parallel.
    @Test(arguments: updates.indices)
    func tornWritesLeaveThePreviousOrTheNextState(_ index: Int) throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        enum Outcome { case old, new, half, garbage }
        /// `image` with the write of `page` (new content from `after`) ending as `outcome`.
        func land(_ image: inout [UInt8], _ off: Int, _ outcome: Outcome, _ after: [UInt8]) {
            switch outcome {
            case .old: break
            case .new: image.replaceSubrange(off..<(off + pageSize), with: after[off..<(off + pageSize)])
            case .half: image.replaceSubrange(off..<(off + 2048), with: after[off..<(off + 2048)])  // first sectors new, rest old
            case .garbage: for k in 0..<pageSize { image[off + k] = UInt8(truncatingIfNeeded: (k &* 131) ^ 0x5A) }
            }
        }
        let f0 = try makeFile(dir)
        let nPages = Int(f0.header.bitmapPages)
        let wordCount = Int(f0.header.wordCount)
        for u in Self.updates[..<index] { try u.run(f0) }
        f0.close()
        var states = 0
        do {
            let (name, kind, update) = Self.updates[index]
            let before = try readFileBytes(path)
            let (beforeHeader, beforeWords) = try { let f = try TrackingFile.open(at: path, readOnly: true); return (f.header, try f.readAllWords()) }()
            let g = beforeHeader.generation
            let afterHeader: HRLHeader
            do {
                let f = try TrackingFile.open(at: path)
                try update(f)
                afterHeader = f.header
            }
            let after = try readFileBytes(path)
            let afterWords = try TrackingFile.open(at: path, readOnly: true).readAllWords()
            let changed = stride(from: 0, to: before.count, by: pageSize).filter {
                before[$0..<($0 + pageSize)] != after[$0..<($0 + pageSize)]
            }
            let headerWrites = changed.filter { $0 < 2 * pageSize }
            let pageWrites = changed.filter { $0 >= 2 * pageSize }
            // Crash images, each labelled; the phases follow the sync barriers.
            var images: [(String, [UInt8])] = []
            if kind == .header {
                #expect(afterHeader.generation == g + 1 && !afterHeader.updateInFlight, "\(name)")
                #expect(headerWrites == [Int((g + 1) % 2) * pageSize] && pageWrites.isEmpty, "\(name): \(changed)")
                for o in [Outcome.old, .half, .garbage, .new] {
                    var image = before
                    land(&image, headerWrites[0], o, after)
                    images.append(("header \(o)", image))
                }
            } else {
                let intentOff = Int((g + 1) % 2) * pageSize, finalOff = Int(g % 2) * pageSize
                #expect(afterHeader.generation == g + 2 && !afterHeader.updateInFlight, "\(name)")
                #expect(afterHeader.drainSeq == beforeHeader.drainSeq + (kind == .set ? 1 : 0), "\(name)")
                #expect(afterHeader.clearSeq == beforeHeader.clearSeq + (kind == .clear ? 1 : 0), "\(name)")
                #expect(headerWrites == [0, pageSize] && !pageWrites.isEmpty, "\(name): \(changed)")
                var expectedIntent = beforeHeader
                expectedIntent.generation = g + 1
                expectedIntent.updateInFlight = true
                #expect(headerInSlot(after, intentOff / pageSize) == expectedIntent, "\(name)")
                #expect(headerInSlot(after, finalOff / pageSize) == afterHeader, "\(name)")
                // Phase 1: the intent header write, nothing after it issued.
                for o in [Outcome.old, .half, .garbage] {
                    var image = before
                    land(&image, intentOff, o, after)
                    images.append(("intent \(o)", image))
                }
                // Phase 2: intent durable; each page write lost, done or torn.
                var intentDone = before
                land(&intentDone, intentOff, .new, after)
                var combos: [[Outcome]] = [[]]
                if pageWrites.count <= 2 {  // every combination
                    for _ in pageWrites { combos = combos.flatMap { c in [Outcome.old, .new, .half, .garbage].map { c + [$0] } } }
                } else {
                    // Kept fast: every pair of pages sees every pair of
                    // (lost, done, torn) — the 9 rows (a, b, a+b, a+2b) mod 3 —
                    // with both kinds of tear, plus all torn each way.
                    precondition(pageWrites.count <= 4)
                    combos = (0..<9).map { row in
                        let a = row / 3, b = row % 3
                        return [a, b, (a + b) % 3, (a + 2 * b) % 3].prefix(pageWrites.count).enumerated().map { i, v in
                            v == 0 ? Outcome.old : v == 1 ? .new : (row + i) % 2 == 0 ? .half : .garbage
                        }
                    }
                    combos += [Array(repeating: .half, count: pageWrites.count), Array(repeating: .garbage, count: pageWrites.count)]
                }
                for c in combos {
                    var image = intentDone
                    for (off, o) in zip(pageWrites, c) { land(&image, off, o, after) }
                    images.append(("pages \(c)", image))
                }
                // Phase 3: pages durable; the final header lost, torn or done.
                var pagesDone = intentDone
                for off in pageWrites { land(&pagesDone, off, .new, after) }
                #expect(pagesDone.enumerated().allSatisfy { $0.offset >= finalOff && $0.offset < finalOff + pageSize || $0.element == after[$0.offset] })
                for o in [Outcome.old, .half, .garbage, .new] {
                    var image = pagesDone
                    land(&image, finalOff, o, after)
                    images.append(("final \(o)", image))
                }
                // Why the pages are synced before the final header: were the
                // final header durable beside a torn page, the file would read
                // as damaged.
                var unordered = intentDone
                land(&unordered, finalOff, .new, after)
                land(&unordered, pageWrites[0], .half, after)
                try writeFileBytes(path, unordered)
                #expect(TrackingFile.verify(at: path).first?.contains("no update was in flight") == true, "\(name)")
            }

            for (label, image) in images {
                let what = "\(name), \(label)"
                states += 1
                try writeFileBytes(path, image)
                #expect(TrackingFile.verify(at: path) == [], "\(what)")
                let r = try TrackingFile.open(at: path, readOnly: true)
                let h = r.header
                let words = try r.readAllWords()
                r.close()
                var intentHeader = beforeHeader
                intentHeader.generation = g + 1
                intentHeader.updateInFlight = true
                #expect(h == beforeHeader || h == afterHeader || (kind != .header && h == intentHeader), "\(what): \(h)")
                // Each page whole: its old or its new version, never a mix.
                for p in 0..<nPages {
                    let range = (p * TrackingFile.wordsPerPage)..<min((p + 1) * TrackingFile.wordsPerPage, wordCount)
                    #expect(words[range] == beforeWords[range] || words[range] == afterWords[range], "\(what): page \(p)")
                }
                for i in words.indices {
                    switch kind {
                    case .set: #expect(words[i] & beforeWords[i] == beforeWords[i] && words[i] & ~afterWords[i] == 0, "\(what): word \(i)")
                    case .clear: #expect(words[i] & afterWords[i] == afterWords[i] && words[i] & ~beforeWords[i] == 0, "\(what): word \(i)")
                    case .header: #expect(words[i] == beforeWords[i], "\(what): word \(i)")
                    }
                }
                // The header's counters match the bits: with the flag clear the
                // update either never started or completed.
                if h == beforeHeader { #expect(words == beforeWords, "\(what)") }
                if h == afterHeader { #expect(words == afterWords, "\(what)") }

                // A writable open finishes an interrupted update, changing no bit.
                do {
                    let f = try TrackingFile.open(at: path)
                    #expect(!f.header.updateInFlight, "\(what)")
                    #expect(f.header.generation == h.generation + (h.updateInFlight ? 1 : 0), "\(what)")
                    #expect(try f.readAllWords() == words, "\(what)")
                }
                // Every bitmap slot is valid again; a torn header slot (the
                // intent's, when the crash hit it) stays until the next header write.
                let report = TrackingFile.verifyReport(at: path)
                #expect(report.problems == [], "\(what): \(report.problems)")
                #expect(report.notes.allSatisfy { $0.hasPrefix("header slot \((g + 1) % 2): ") }, "\(what): \(report.notes)")
                #expect(report.notes.isEmpty || label.hasPrefix("intent") || label.hasPrefix("header"), "\(what): \(report.notes)")
                for (page, pair) in try bitmapSlots(path).enumerated() {
                    #expect(pair.allSatisfy { if case .invalid = $0 { false } else { true } }, "\(what): page \(page): \(pair)")
                }
                #expect(report.header?.updateInFlight == false, "\(what)")
                // And the file takes the update again.
                do {
                    let f = try TrackingFile.open(at: path)
                    try update(f)
                    #expect(try f.readAllWords() == afterWords, "\(what)")
                }
                #expect(TrackingFile.verifyReport(at: path).problems == [], "\(what)")
                #expect(TrackingFile.verifyReport(at: path).notes == [], "\(what)")
            }
        }
        #expect(states >= 4)
    }

    /// The decoded header in `slot` of a file image, if that slot is valid.
    func headerInSlot(_ image: [UInt8], _ slot: Int) -> HRLHeader? {
        let page = Array(image[(slot * pageSize)..<((slot + 1) * pageSize)])
        return page.withUnsafeBytes { b in
            if case .valid(let h) = HRLFormat.decodeHeader(b, slot: slot) { h } else { nil }
        }
    }

    func headerInSlot(_ path: String, _ slot: Int) throws -> HRLHeader? {
        headerInSlot(try readFileBytes(path), slot)
    }

    /// Both slots of every bitmap page of a file, judged against its current header.
    func bitmapSlots(_ path: String) throws -> [[HRLFormat.BitmapSlot]] {
        let h = try TrackingFile.open(at: path, readOnly: true).header
        let context = HRLFormat.PageContext(binding: HRLFormat.binding(h.fileUUID), wordCount: h.wordCount, nrChunks: h.nrChunks)
        let bytes = try readFileBytes(path)
        return (0..<h.bitmapPages).map { page in
            (0...1).map { slot in
                let off = Int(TrackingFile.fileOffset(ofBitmapPage: page, slot: slot))
                return Array(bytes[off..<(off + pageSize)]).withUnsafeBytes { HRLFormat.checkBitmapSlot($0, page: page, slot: slot, context) }
            }
        }
    }
}
