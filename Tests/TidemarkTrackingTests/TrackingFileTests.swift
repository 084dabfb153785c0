import Glibc
import Testing
import TidemarkSystem
@testable import TidemarkTracking

@Suite struct FormatBasicsTests {
    @Test func crc32cCheckValue() {
        let v = Array("123456789".utf8).withUnsafeBytes { crc32c($0) }
        #expect(v == 0xE306_9283)
    }

    @Test func layoutArithmetic() {
        // 16 TiB at 64 KiB: 2^28 chunks, 2^22 words, ceil(2^22 / 508) pages.
        let l = HRLFormat.layout(diskSizeBytes: 16 << 40, chunkSizeBytes: 65536)
        #expect(l.nrChunks == 1 << 28)
        #expect(l.bitmapPages == 8257)
        let one = HRLFormat.layout(diskSizeBytes: 1, chunkSizeBytes: 4096)
        #expect(one.nrChunks == 1 && one.bitmapPages == 1)
        // Exactly one full page of words, then one word more.
        #expect(HRLFormat.layout(diskSizeBytes: 508 * 64 * 4096, chunkSizeBytes: 4096).bitmapPages == 1)
        #expect(HRLFormat.layout(diskSizeBytes: 508 * 64 * 4096 + 1, chunkSizeBytes: 4096).bitmapPages == 2)
        // What stays in memory per bitmap page: 16 bytes per 4 KiB of bits, so a
        // 16 TiB disk at 64 KiB chunks needs 8257 × 16 = 132 KiB (budget: 32 MiB).
        #expect(MemoryLayout<TrackingFile.PageMeta>.stride == 16)
    }

    @Test func fieldValueTruncatesAtUTF8Boundary() {
        #expect(HRLFormat.fieldValue("abc", size: 64) == "abc")
        #expect(HRLFormat.fieldValue(String(repeating: "x", count: 100), size: 64).utf8.count == 63)
        // "é" is 2 bytes: 62 x's + é would need 64 bytes > 63, so é is dropped whole.
        #expect(HRLFormat.fieldValue(String(repeating: "x", count: 62) + "é", size: 64) == String(repeating: "x", count: 62))
        #expect(HRLFormat.fieldValue("a\u{0}b", size: 64) == "a")
    }

    @Test func descriptions() {
        #expect(TrackingState.resyncRequired.description == "resync-required")
        #expect(ResyncReason.tracerDetached.description == "tracer-detached")
        #expect(ResyncReason.neverSynchronized.description == "never-synchronized")
        let e = TrackingFileError(.corrupt, path: "/var/lib/tidemark/loop0.hrl", detail: "bitmap page 17: both slots fail their checksum")
        #expect(e.description == "/var/lib/tidemark/loop0.hrl: corrupt: bitmap page 17: both slots fail their checksum; the file cannot be trusted — tracking must be rebuilt by a resync")
    }

    @Test func sparseWordsAppendMergesAndCounts() {
        var s = SparseWords()
        s.append(wordIndex: 3, bits: 0b1)
        s.append(wordIndex: 3, bits: 0b10)
        s.append(wordIndex: 5, bits: 0)
        s.append(wordIndex: 9, bits: ~0)
        #expect(s.count == 2 && s.popcount == 66 && !s.isEmpty)
        #expect(s == SparseWords(chunks: [192, 193] + (576..<640).map { UInt64($0) }))
        var r = SparseWords()
        r.appendChunks(first: 62, count: 70)
        #expect(r.chunks == Array(62..<132))
    }
}

@Suite struct RoundTripTests {
    @Test func createThenOpenGivesTheSameHeader() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let longIdentity = String(repeating: "é", count: 200)  // 400 bytes: truncated to 255 → 127 é
        let f = try TrackingFile.create(at: path, identity: DiskIdentity(diskID: "sda", identity: longIdentity, sizeBytes: smallDisk.sizeBytes),
                                        chunkSizeBytes: smallChunk, state: .resyncRequired, reason: .neverSynchronized,
                                        reasonText: "first tracking")
        let h = f.header
        #expect(h.formatVersion == 2 && h.generation == 1)
        #expect(h.nrChunks == 100_003 && h.bitmapPages == 4)
        #expect(h.state == .resyncRequired && h.reason == .neverSynchronized && h.reasonText == "first tracking")
        #expect(h.diskIdentity == String(repeating: "é", count: 127))
        #expect(h.bootID == TrackingFile.bootID())
        #expect(h.fileUUID.count == 16 && h.fileUUID[6] >> 4 == 4)
        f.close()

        #expect(try readFileBytes(path).count == Int(h.fileSizeBytes))
        #expect(TrackingFile.verify(at: path) == [])
        let g = try TrackingFile.open(at: path)
        #expect(g.header == h)
        #expect(try g.dirtyCount() == 0)
        #expect(try allExtents(g).isEmpty)
        try g.setTargetID("target-42")
        try g.setState(.tracking, reason: .none, text: "")
        let h2 = g.header
        #expect(h2.generation == 3 && h2.targetID == "target-42" && h2.state == .tracking)
        #expect(h2.stateChangedUnixNs >= h.stateChangedUnixNs)
        g.close()
        #expect(try TrackingFile.open(at: path, readOnly: true).header == h2)
        // No temporary file is left behind.
        #expect(try directoryNames(dir.path) == ["disk.hrl"])
    }

    @Test func createRejectsBadArguments() throws {
        let dir = TempDir()
        for chunk: UInt32 in [0, 2048, 3 * 4096, 2 << 20] {
            #expect(throws: TidemarkError.self) { try makeFile(dir, chunk: chunk) }
        }
        #expect(throws: TidemarkError.self) {
            try makeFile(dir, identity: DiskIdentity(diskID: "x", identity: "y", sizeBytes: 0))
        }
        #expect(try directoryNames(dir.path) == [])
    }

    @Test func createReplacesAnExistingFile() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        try f.persistSet(SparseWords(chunks: [1, 2, 3]))
        let uuid = f.header.fileUUID
        // Refused while a writer holds it.
        #expect(throws: TidemarkError.self) { try makeFile(dir) }
        f.close()
        let g = try makeFile(dir)
        #expect(g.header.fileUUID != uuid)
        #expect(try g.dirtyCount() == 0)
    }

    @Test func setAndClearAcrossPagesAndTheLastPartialWord() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let f = try makeFile(dir)
        let perPage = UInt64(TrackingFile.wordsPerPage * 64)  // 32512 chunks
        let nr = f.header.nrChunks
        // A run over the page 0/1 boundary, one over 1/2, single bits, and the very last chunks.
        var set = SparseWords()
        set.appendChunks(first: perPage - 70, count: 140)
        set.appendChunks(first: 2 * perPage - 1, count: 2)
        set.append(wordIndex: (2 * perPage + 64 * 7) / 64, bits: 0x8000_0000_0000_0001)
        set.appendChunks(first: nr - 3, count: 3)
        try f.persistSet(set)
        #expect(f.header.drainSeq == 1)
        #expect(try f.dirtyCount() == 140 + 2 + 2 + 3)
        #expect(try f.dirtyWords() == set)
        let words = try f.readAllWords()
        #expect(words.count == Int(f.header.wordCount))
        #expect(chunks(of: words) == set.chunks)
        #expect(try allExtents(f) == [
            ChunkExtent(firstChunk: perPage - 70, chunkCount: 140),
            ChunkExtent(firstChunk: 2 * perPage - 1, chunkCount: 2),
            ChunkExtent(firstChunk: 2 * perPage + 64 * 7, chunkCount: 1),
            ChunkExtent(firstChunk: 2 * perPage + 64 * 7 + 63, chunkCount: 1),
            ChunkExtent(firstChunk: nr - 3, chunkCount: 3),
        ])

        // Clear the middle of the first run (across the boundary) and the last chunk.
        var clear = SparseWords()
        clear.appendChunks(first: perPage - 10, count: 20)
        clear.appendChunks(first: nr - 1, count: 1)
        try f.persistClear(clear)
        #expect(f.header.clearSeq == 1 && f.header.drainSeq == 1)
        f.close()

        let g = try TrackingFile.open(at: path)
        let expected = Set(set.chunks).subtracting(clear.chunks).sorted()
        #expect(chunks(of: try g.readAllWords()) == expected)
        #expect(try allExtents(g) == extents(ofSorted: expected))
        #expect(try g.dirtyCount() == UInt64(expected.count))
    }

    @Test func noOpUpdatesWriteNothing() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let f = try makeFile(dir)
        try f.persistSet(SparseWords(chunks: [5, 6]))
        let before = try readFileBytes(path)
        let gen = f.header.generation
        try f.persistSet(SparseWords(chunks: [5]))
        try f.persistSet(SparseWords())
        try f.persistClear(SparseWords(chunks: [7, 70_000]))
        #expect(f.header.generation == gen && f.header.drainSeq == 1 && f.header.clearSeq == 0)
        #expect(try readFileBytes(path) == before)
    }

    @Test func badArgumentsChangeNothing() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let f = try makeFile(dir)
        let nr = f.header.nrChunks
        let before = try readFileBytes(path)
        // Beyond the last chunk, in the last (partial) word and beyond it.
        var past = SparseWords(chunks: [1])
        past.append(wordIndex: (nr - 1) / 64, bits: UInt64(1) << (nr % 64))
        #expect(throws: TidemarkError.self) { try f.persistSet(past) }
        #expect(throws: TidemarkError.self) { try f.persistClear(past) }
        #expect(throws: TidemarkError.self) { try f.persistSet(SparseWords(chunks: [f.header.wordCount * 64])) }
        // Out of order (built by hand, bypassing append's check).
        var unordered = SparseWords()
        unordered.entries = [(wordIndex: 9, bits: 1), (wordIndex: 2, bits: 1)]
        #expect(throws: TidemarkError.self) { try f.persistSet(unordered) }
        #expect(throws: TidemarkError.self) { try f.forEachDirtyExtent(maxChunksPerExtent: 0) { _ in } }
        #expect(try readFileBytes(path) == before)
        // The handle is still usable.
        try f.persistSet(SparseWords(chunks: [nr - 1]))
        #expect(try f.dirtyCount() == 1)
    }

    @Test func markAllDirtyAndClearAll() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let f = try makeFile(dir)
        let nr = f.header.nrChunks
        try f.persistSet(SparseWords(chunks: [10]))
        try f.markAllDirty()
        #expect(try f.dirtyCount() == nr)
        #expect(try allExtents(f) == [ChunkExtent(firstChunk: 0, chunkCount: nr)])
        #expect(try allExtents(f, max: 40_000) == [
            ChunkExtent(firstChunk: 0, chunkCount: 40_000), ChunkExtent(firstChunk: 40_000, chunkCount: 40_000),
            ChunkExtent(firstChunk: 80_000, chunkCount: nr - 80_000),
        ])
        let gen = f.header.generation
        try f.markAllDirty()  // already all dirty: nothing to write
        #expect(f.header.generation == gen && f.header.drainSeq == 2)
        f.close()
        #expect(TrackingFile.verify(at: path) == [])
        let g = try TrackingFile.open(at: path)
        #expect(try g.dirtyCount() == nr)
        try g.clearAll()
        #expect(try g.dirtyCount() == 0 && g.header.clearSeq == 1)
        g.close()
        #expect(try TrackingFile.open(at: path).dirtyCount() == 0)
    }

    @Test func extentsBodyMayClearAndStopEarly() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        var s = SparseWords()
        s.appendChunks(first: 100, count: 10)
        s.appendChunks(first: 40_000, count: 10)
        s.appendChunks(first: 90_000, count: 10)
        try f.persistSet(s)
        struct Stop: Error {}
        var seen: [ChunkExtent] = []
        do {
            try f.forEachDirtyExtent { e in
                seen.append(e)
                var c = SparseWords()
                c.appendChunks(first: e.firstChunk, count: e.chunkCount)
                try f.persistClear(c)
                if seen.count == 2 { throw Stop() }
            }
        } catch is Stop {}
        #expect(seen == [ChunkExtent(firstChunk: 100, chunkCount: 10), ChunkExtent(firstChunk: 40_000, chunkCount: 10)])
        #expect(try allExtents(f) == [ChunkExtent(firstChunk: 90_000, chunkCount: 10)])
    }

    @Test func writableOpenIsExclusiveAndReadOnlyIsNot() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let f = try makeFile(dir)
        #expect(throws: TidemarkError.self) { try TrackingFile.open(at: path) }
        let r = try TrackingFile.open(at: path, readOnly: true)
        #expect(throws: TidemarkError.self) { try r.persistSet(SparseWords(chunks: [1])) }
        #expect(throws: TidemarkError.self) { try r.setState(.clean, reason: .none, text: "") }
        // A read-only handle follows a writer that moved on.
        try f.persistSet(SparseWords(chunks: [1, 50_000]))
        try f.persistSet(SparseWords(chunks: [2]))
        #expect(try r.dirtyWords() == SparseWords(chunks: [1, 2, 50_000]))
        f.close()
        #expect(throws: TidemarkError.self) { try f.dirtyCount() }
        _ = try TrackingFile.open(at: path)
    }

    @Test func readOnlyOpenDoesNotModifyTheFile() throws {
        let dir = TempDir()
        let path = dir.file("disk.hrl")
        let f = try makeFile(dir)
        try f.persistSet(SparseWords(chunks: [3, 33_000, 99_999]))
        f.close()
        let before = try readFileBytes(path)
        let r = try TrackingFile.open(at: path, readOnly: true)
        _ = try r.dirtyWords()
        _ = try r.readAllWords()
        _ = try allExtents(r)
        _ = TrackingFile.verify(at: path)
        _ = TrackingFile.verifyReport(at: path)
        r.close()
        #expect(try readFileBytes(path) == before)
    }

    @Test func identityChecks() throws {
        let dir = TempDir()
        let f = try makeFile(dir)
        #expect(f.identityMismatch(smallDisk, chunkSizeBytes: smallChunk) == nil)
        var other = smallDisk
        other.diskID = "vdc"  // kernel names move; not a mismatch
        #expect(f.identityMismatch(other, chunkSizeBytes: smallChunk) == nil)
        other.sizeBytes += 4096
        #expect(f.identityMismatch(other, chunkSizeBytes: smallChunk)?.reason == .diskSizeChanged)
        other = smallDisk
        other.identity = "serial-OTHER"
        #expect(f.identityMismatch(other, chunkSizeBytes: smallChunk)?.reason == .diskIdentityChanged)
        #expect(f.identityMismatch(smallDisk, chunkSizeBytes: 8192)?.reason == .chunkSizeChanged)
        expectTrackingError(.wrongIdentity) { try f.requireIdentity(other, chunkSizeBytes: smallChunk) }
    }

    /// A large disk: many scan batches, and memory independent of the bits.
    @Test func oneTebibyteDisk() throws {
        let dir = TempDir()
        let path = dir.file("big.hrl")
        let nrExpected: UInt64 = 1 << 24
        let f = try TrackingFile.create(at: path, identity: DiskIdentity(diskID: "big", identity: "big", sizeBytes: 1 << 40),
                                        chunkSizeBytes: 65536, state: .tracking, reason: .none, reasonText: "")
        #expect(f.header.nrChunks == nrExpected && f.header.bitmapPages == 517)
        try f.persistSet(SparseWords(chunks: [0, 1 << 20, nrExpected - 1]))
        f.close()
        let g = try TrackingFile.open(at: path)
        #expect(try allExtents(g).map(\.firstChunk) == [0, 1 << 20, nrExpected - 1])
    }
}

func directoryNames(_ path: String) throws -> [String] {
    guard let dir = opendir(path) else { throw SystemError(call: "opendir", errno: errno, context: path) }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if name != "." && name != ".." { names.append(name) }
    }
    return names.sorted()
}
