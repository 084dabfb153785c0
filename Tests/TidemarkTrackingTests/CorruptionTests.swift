import Testing
import TidemarkSystem
@testable import TidemarkTracking

/// Damage the file the ways disks, crashes and people do, and check that it
/// is either absorbed by the A/B slots or reported — never trusted.
@Suite struct CorruptionTests {
    /// A file where header slot 0 holds generation 2 and slot 1 generation 1,
    /// and bitmap page 1 has slot A = seq 1 (no bits), slot B = seq 2 (chunk 40_000).
    func twoVersions(_ dir: TempDir) throws -> String {
        let f = try makeFile(dir)
        try f.persistSet(SparseWords(chunks: [40_000]))  // header generation 2 → slot 0
        #expect(f.header.generation == 2 && f.currentHeaderSlot == 0)
        #expect(f.currentSlot(ofBitmapPage: 1) == 1 && f.sequence(ofBitmapPage: 1) == 2)
        f.close()
        return f.path
    }

    @Test func oneCorruptHeaderSlotFallsBackToTheOther() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 1) + 200)  // the older one
        #expect(try TrackingFile.open(at: path, readOnly: true).header.generation == 2)
        let report = TrackingFile.verifyReport(at: path)
        #expect(report.problems == [])
        #expect(report.notes.count == 1 && report.notes[0].contains("header slot 1: bad checksum"))

        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 1) + 200)  // repair
        try flipByte(path, at: TrackingFile.fileOffset(ofHeaderSlot: 0) + 300)  // the current one
        let f = try TrackingFile.open(at: path)
        #expect(f.header.generation == 1)
        // The next header write goes to the damaged slot and repairs it.
        try f.setState(.clean, reason: .none, text: "")
        #expect(f.header.generation == 2)
        f.close()
        #expect(TrackingFile.verifyReport(at: path).notes == [])
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

    @Test func oneCorruptBitmapSlotFallsBackToTheOther() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        // The older slot (A) damaged: nothing lost.
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 0) + 17)
        do {
            let f = try TrackingFile.open(at: path)
            #expect(try f.dirtyWords() == SparseWords(chunks: [40_000]))
            // The next write of page 1 goes to slot A, over the damage.
            try f.persistSet(SparseWords(chunks: [40_001]))
            #expect(f.currentSlot(ofBitmapPage: 1) == 0 && f.sequence(ofBitmapPage: 1) == 3)
        }
        #expect(TrackingFile.verifyReport(at: path).notes == [])
        #expect(try TrackingFile.open(at: path).dirtyWords() == SparseWords(chunks: [40_000, 40_001]))
    }

    @Test func currentBitmapSlotCorruptGivesThePreviousVersion() throws {
        let dir = TempDir()
        let path = try twoVersions(dir)
        try flipByte(path, at: TrackingFile.fileOffset(ofBitmapPage: 1, slot: 1) + 4090)
        let f = try TrackingFile.open(at: path)
        #expect(try f.dirtyCount() == 0)  // the version before the update
        #expect(f.currentSlot(ofBitmapPage: 1) == 0)
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
        try rewritePage(f.path, at: TrackingFile.fileOffset(ofHeaderSlot: 1)) { putLE(&$0, 8, UInt32(2)) }
        let e = expectTrackingError(.unsupportedVersion) { _ = try TrackingFile.open(at: f.path) }
        #expect(e?.detail.contains("format version 2") == true)
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
            ("reserved", { putLE(&$0, 92, UInt32(1)) }),
            ("unused bytes", { $0[2000] = 1 }),
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

    /// A crash in the middle of a write leaves the slot being written torn —
    /// and that is always the non-current slot, so the state before the
    /// update must come back, intact and valid.
    @Test func tornWritesLeaveThePreviousState() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let updates: [(String, (TrackingFile) throws -> Void)] = [
            ("set over pages 0-2", { try $0.persistSet(SparseWords(chunks: [5, 32_511, 32_512, 70_000])) }),
            ("clear", { try $0.persistClear(SparseWords(chunks: [32_511, 70_000])) }),
            ("set again", { try $0.persistSet(SparseWords(chunks: [99_000, 100_002])) }),
            ("state", { try $0.setState(.resyncRequired, reason: .operatorRequest, text: "because") }),
            ("mark all", { try $0.markAllDirty() }),
            ("clear all", { try $0.clearAll() }),
        ]
        _ = try makeFile(dir)
        for (name, update) in updates {
            let before = try readFileBytes(path)
            let (beforeHeader, beforeWords) = try { let f = try TrackingFile.open(at: path, readOnly: true); return (f.header, try f.readAllWords()) }()
            do {
                let f = try TrackingFile.open(at: path)
                try update(f)
            }
            let after = try readFileBytes(path)
            let changed = stride(from: 0, to: before.count, by: pageSize).filter {
                before[$0..<($0 + pageSize)] != after[$0..<($0 + pageSize)]
            }
            #expect(!changed.isEmpty, "\(name)")
            for tear in ["half", "garbage"] {
                // Every written page torn at once: the most a crash can do.
                var torn = after
                for off in changed {
                    switch tear {
                    case "half":  // the first sectors new, the rest old
                        torn.replaceSubrange((off + 2048)..<(off + pageSize), with: before[(off + 2048)..<(off + pageSize)])
                    default:
                        for k in 0..<pageSize { torn[off + k] = UInt8(truncatingIfNeeded: (k &* 131) ^ 0x5A) }
                    }
                }
                try writeFileBytes(path, torn)
                #expect(TrackingFile.verify(at: path) == [], "\(name) \(tear)")
                let f = try TrackingFile.open(at: path, readOnly: true)
                #expect(f.header == beforeHeader, "\(name) \(tear)")
                #expect(try f.readAllWords() == beforeWords, "\(name) \(tear)")
            }
            // And a torn file accepts the update again.
            do {
                let f = try TrackingFile.open(at: path)
                try update(f)
            }
            #expect(TrackingFile.verify(at: path) == [])
            #expect(TrackingFile.verifyReport(at: path).notes == [])
            try writeFileBytes(path, after)
        }
    }
}
