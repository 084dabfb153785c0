import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting

/// The completion cross-check (docs/tracer.md): the kernel's own count of
/// written sectors against the tracer program's. This kernel skips a probe
/// on block:block_rq_complete now and then (under heavy direct I/O, and
/// often while other probes are attached to or detached from the
/// tracepoint), without counting a recursion miss;
/// such a completion must end in its chunk marked dirty — from the issue
/// record, or with the whole disk when that cannot be bounded — never in a
/// chunk that is silently not dirty.
@Suite(.serialized) struct CompletionCrossCheckTests {
    /// A deficit of 8 sectors whose request the issue record still holds (a
    /// write the completion probe skipped: its record stays, the kernel
    /// counted it; made here by adding the record and lowering the slot's
    /// offset, as the skipped 4 KiB write would leave them): only that
    /// write's chunk is marked, the balance confirms it once the disk is
    /// still, and the whole disk is not touched. Then a deficit the issue
    /// record missed too (the balance's base lowered by the same 8 sectors)
    /// marks the whole disk dirty, durably, and says why.
    @Test(.requiresRoot) func aDeficitMarksOnlyTheIssueRecordsChunksUnlessBothRecordsMissed() throws {
        let h = try Harness("xcheck")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let p = try h.startTrack([d])
        try h.writeDirect(d, offset: 65536 * 3, length: 4096)
        h.settle()
        #expect(try h.dirtyChunks(d) == [3], "a write the tracer saw is not a deficit")

        guard let tracer = try Tracer.open(create: false, pinDir: h.sandbox.pinDir),
              let slot = try tracer.slot(for: BlockDeviceInfo.inspect(d.path)) else {
            Issue.record("no pinned slot for \(d.path)")
            return
        }
        let bitmap = try SlotBitmap(tracer: tracer, slot: slot)
        let offset = try #require(bitmap.sectorOffset, "the agent established no offset")
        #expect(bitmap.sectorDeficit() == nil)
        #expect(bitmap.balanceBase != nil, "the disk was still, yet the issue record has no balance")
        // Chunk 9, 4 KiB into it: a skipped completion's record.
        try tracer.insertIssueRecord(key: 0xdead_0000_0000, wholeDev: slot.wholeDev, sector: (65536 * 9 + 4096) / 512, sectors: 8)
        bitmap.setSectorOffset(offset &- 8)
        h.settle()
        #expect(try h.dirtyChunks(d, hrlOnly: true) == [3, 9], "only the record's chunk is added")
        #expect(bitmap.sectorDeficit() == nil, "the deficit was not taken as the new offset")
        #expect(bitmap.pendingSectors == 0, "the answer was not confirmed though the disk is still")

        // Both records missed 8 sectors: the whole disk.
        let base = try #require(bitmap.balanceBase)
        bitmap.setBalanceBase(base &- 8)
        bitmap.setSectorOffset(try #require(bitmap.sectorOffset) &- 8)
        h.settle()
        let all = Set(UInt64(0)..<UInt64(16 << 20) / h.chunk)
        #expect(try h.dirtyChunks(d, hrlOnly: true) == all)
        #expect(bitmap.balanceBase == base, "the balance was not taken as the new base")
        p.stop()
        let log = p.stdout + p.stderr
        #expect(log.contains("marking the 1 chunk(s) of the writes the issue record holds"), "\(log.suffix(2000))")
        #expect(log.contains("confirmed: the 8 sectors"), "\(log.suffix(2000))")
        #expect(log.contains("both probes skipped") && log.contains("the whole disk counts as dirty"), "\(log.suffix(2000))")
    }

    /// Writes while the kernel keeps no statistics are counted by the
    /// program only; the offset from before would then hide later misses of
    /// that size. The agent drops it, says so, and establishes a new one
    /// when statistics are back, without marking the disk dirty.
    @Test(.requiresRoot) func statisticsTurnedOffAndOnRenewTheOffset() throws {
        let h = try Harness("xstats")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let iostats = "/sys/block/\(d.name)/queue/iostats"
        let p = try h.startTrack([d])
        guard let tracer = try Tracer.open(create: false, pinDir: h.sandbox.pinDir),
              let slot = try tracer.slot(for: BlockDeviceInfo.inspect(d.path)) else {
            Issue.record("no pinned slot for \(d.path)")
            return
        }
        let bitmap = try SlotBitmap(tracer: tracer, slot: slot)
        let before = try #require(bitmap.sectorOffset)
        try sh("echo 0 > \(iostats)")
        defer { _ = try? sh("echo 1 > \(iostats)") }
        try h.writeDirect(d, offset: 65536 * 5, length: 65536)
        h.settle()
        #expect(bitmap.sectorOffset == nil, "the offset survived a time without statistics")
        try sh("echo 1 > \(iostats)")
        h.settle()
        let after = try #require(bitmap.sectorOffset, "no new offset once statistics were back")
        #expect(after != before)
        // The issue record's balance went with the offset (the program
        // counted issues the kernel did not) and is back too.
        #expect(bitmap.balanceBase != nil, "no balance once statistics were back")
        // A miss after that is still seen.
        bitmap.setSectorOffset(after &- 8)
        h.settle()
        #expect(bitmap.sectorDeficit() == nil)
        #expect(p.stderr.contains("the tracer did not see"), "\(p.stderr.suffix(1500))")
        p.stop()
        #expect(p.stderr.contains("stopped keeping I/O statistics") && p.stderr.contains("cross-check resumed"), "\(p.stderr.suffix(1500))")
    }

    /// While replicating: a deficit the issue record answers re-sends only
    /// the record's chunks; one both records missed makes the agent compare
    /// the whole disk with the target (digest resync) instead of sending all
    /// of it; and the next point still recovers identical to the frozen source.
    @Test(.requiresRoot) func deficitWhileReplicatingResendsTheRecordOrResyncsByDigest() throws {
        let w = try FaultWorld("xrepl")
        defer { w.close() }
        try w.startServer()
        try w.startAgent()
        let load = try w.churn(3, seed: 41)
        try w.recoverAndCompare(try w.point())
        load.stop(timeoutSeconds: 10)
        try w.waitFor("the first resync to finish", timeoutSeconds: 60) { w.agent!.stderr.contains("resync of") && w.agent!.stderr.contains("complete") }
        let completedBefore = w.agent!.stderr.components(separatedBy: "complete:").count

        guard let tracer = try Tracer.open(create: false, pinDir: w.h.sandbox.pinDir),
              let slot = try tracer.slot(for: BlockDeviceInfo.inspect(w.disk.path)) else {
            Issue.record("no pinned slot for \(w.disk.path)")
            return
        }
        let bitmap = try SlotBitmap(tracer: tracer, slot: slot)
        try w.waitFor("a balance for the issue record", timeoutSeconds: 30) { bitmap.balanceBase != nil }
        let offset = try #require(bitmap.sectorOffset, "the agent established no offset")
        try tracer.insertIssueRecord(key: 0xdead_0000_0000, wholeDev: slot.wholeDev, sector: 65536 * 5 / 512, sectors: 8)
        bitmap.setSectorOffset(offset &- 8)
        try w.waitFor("the answer from the issue record", timeoutSeconds: 30) { w.agent!.stderr.contains("confirmed: the 8 sectors") }
        #expect(!w.agent!.stderr.contains("comparing it with the target"), "\(w.logs)")
        #expect(w.agent!.stderr.contains("marking the 1 chunk(s)"), "\(w.logs)")

        let base = try #require(bitmap.balanceBase)
        bitmap.setBalanceBase(base &- 8)
        bitmap.setSectorOffset(try #require(bitmap.sectorOffset) &- 8)
        try w.waitFor("the digest resync after the deficit", timeoutSeconds: 60) {
            w.agent!.stderr.components(separatedBy: "complete:").count > completedBefore
        }
        let log = w.agent!.stderr
        #expect(log.contains("both probes skipped"), "\(w.logs)")
        #expect(log.contains("comparing it with the target"), "\(w.logs)")
        // Compared, not re-sent, and only the chunks ext4 uses.
        let last = log.components(separatedBy: "\n").last { $0.contains("resync of") && $0.contains("complete:") } ?? ""
        let reads = log.components(separatedBy: "\n").last { $0.contains("the resync reads used blocks only") } ?? ""
        let used = reads.range(of: #"(\d+) of 1024 chunks"#, options: .regularExpression).map { String(reads[$0].split(separator: " ")[0]) }
        #expect(used != nil && last.contains("\(used!) chunks compared"), "\(reads) / \(last)")
        _ = try w.churn(2, seed: 42)
        try w.recoverAndCompare(try w.point())
    }

    /// The real thing: ftrace probes on block_rq_complete switched on and off
    /// as fast as possible in three tracefs instances while, for 15 s, writes
    /// of 4 KiB land on distinct chunks. Without the cross-check, each of 4 runs
    /// here lost 1 to 4 writes; with it, every written chunk is dirty, and
    /// with the issue record, the disk is not dirty beyond that.
    @Test(.requiresRoot, .requiresTracefs) func writesCompletedWhileProbesChangeAreNeverLost() throws {
        let h = try Harness("xchurn")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16 << 10, directIO: false)
        let p = try h.startTrack([d])
        let stop = h.dir + "/stop-togglers"
        var instances: [String] = []
        var togglers: [BackgroundProcess] = []
        defer {
            FileManager.default.createFile(atPath: stop, contents: nil)
            for t in togglers { t.stop(timeoutSeconds: 10) }
            for i in instances { _ = try? sh("echo 0 > \(i)/events/block/block_rq_complete/enable; rmdir \(i)") }
        }
        for k in 0..<3 {
            let inst = "/sys/kernel/tracing/instances/tidemark-xchurn-\(getpid())-\(k)"
            try sh("mkdir \(inst)")
            instances.append(inst)
            let e = inst + "/events/block/block_rq_complete/enable"
            togglers.append(try BackgroundProcess(["/bin/sh", "-c", "while [ ! -e \(stop) ]; do echo 1 > \(e); echo 0 > \(e); done"], logDir: h.dir))
        }
        let written = h.dir + "/written"
        try sh("""
            python3 - \(d.path) \(written) <<'PY'
            import os, sys, random, mmap, time
            fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)
            buf = mmap.mmap(-1, 4096); buf.write(os.urandom(4096))
            order = list(range(262144)); random.shuffle(order)
            end = time.monotonic() + 15; n = 0
            while n < len(order) and (n % 256 or time.monotonic() < end):
                os.pwrite(fd, buf, order[n] * 65536 + random.randrange(16) * 4096); n += 1
            open(sys.argv[2], 'w').write(' '.join(map(str, order[:n])))
            PY
            """)
        FileManager.default.createFile(atPath: stop, contents: nil)
        for t in togglers { t.stop(timeoutSeconds: 10) }
        h.settle()
        p.stop()
        let chunks = Set(try String(contentsOfFile: written, encoding: .utf8).split(separator: " ").compactMap { UInt64($0) })
        #expect(chunks.count > 10000, "only \(chunks.count) writes")
        let dirty = try h.dirtyChunks(d, hrlOnly: true)
        let lost = chunks.subtracting(dirty).sorted()
        #expect(lost.isEmpty, "written but not dirty: \(lost.prefix(10)); agent: \(p.stderr.suffix(1500))")
        // How the deficits were answered: from the issue record, the dirty
        // set is what was written (plus the few chunks of writes in flight),
        // not the whole disk, so the check above means something.
        let lines = p.stderr.split(separator: "\n")
        let fromRecord = lines.filter { $0.contains("chunk(s) of the writes the issue record holds") }.count
        let wholeDisk = lines.filter { $0.contains("the whole disk counts as dirty") }.count
        print("xchurn: \(chunks.count) chunks written, \(dirty.count) dirty; deficits answered from the issue record \(fromRecord), by the whole disk \(wholeDisk)")
        if wholeDisk == 0 {
            #expect(dirty.count < 262144, "the whole disk is dirty without a whole-disk answer")
        }
    }
}
