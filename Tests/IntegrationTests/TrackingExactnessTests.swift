import Foundation
import Testing
import TidemarkTesting

/// The tracked set must equal exactly the chunks written: no chunk missing,
/// none extra. Real loop devices, the real agent, the real eBPF tracer.
@Suite(.serialized) struct TrackingExactnessTests {
    @Test(.requiresRoot) func directWritesDiscardsAndWriteZeroes() throws {
        let h = try Harness("exact")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 64)
        _ = try h.startTrack([d])
        var expected = Set<UInt64>()
        // Unaligned starts and ends, a write spanning many chunks, the last chunk.
        let writes: [(UInt64, UInt64)] = [(0, 4096), (65536 * 3 + 4096, 8192), (1 << 20, 3 << 20),
                                          (64 << 20 - 4096, 4096), (10 << 20 + 61440, 8192)]
        for (off, len) in writes {
            try h.writeDirect(d, offset: off, length: len)
            expected.formUnion(h.chunks(offset: off, length: len))
        }
        try sh("blkdiscard -o \(20 << 20) -l \(5 << 20) \(d.path)")
        expected.formUnion(h.chunks(offset: 20 << 20, length: 5 << 20))
        try sh("blkdiscard -z -o \(30 << 20) -l \(1 << 20) \(d.path)")
        expected.formUnion(h.chunks(offset: 30 << 20, length: 1 << 20))
        // Reads must not mark anything.
        try sh("dd if=\(d.path) of=/dev/null bs=1M count=64 iflag=direct status=none")
        h.settle()
        #expect(try h.dirtyChunks(d, chunk: 65536) == expected)
        // After the agent stops, everything is in the .hrl alone.
        h.agents[0].stop()
        #expect(try h.dirtyChunks(d, hrlOnly: true) == expected)
    }

    /// A filesystem under churn (files truncated and rewritten, syncs, on a
    /// buffered loop device as in the replication tests): between two frozen
    /// copies of the disk, every chunk whose bytes changed is marked.
    /// Tracking starts while the filesystem is frozen, right after the first
    /// copy, so nothing before it counts and nothing after it may be missed.
    @Test(.requiresRoot) func everyChunkAFilesystemChangesIsMarked() throws {
        let h = try Harness("fschurn")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 64, directIO: false)
        let mnt = h.dir + "/mnt"
        try sh("mkfs.ext4 -q -F \(d.path) && mkdir -p \(mnt) && mount \(d.path) \(mnt) && cp -a /usr/include/linux \(mnt)/ && sync")
        defer { _ = try? sh("fsfreeze -u \(mnt) 2>/dev/null; umount \(mnt)") }
        try sh("fsfreeze -f \(mnt) && dd if=\(d.path) of=\(h.dir)/a.img bs=1M iflag=direct status=none")
        _ = try h.startTrack([d])
        try sh("fsfreeze -u \(mnt)")
        try sh("""
            end=$(( $(date +%s) + 4 )); i=0
            while [ $(date +%s) -lt $end ]; do
              i=$((i+1)); head -c $(( (i * 7919 + 11) % 262144 + 4096 )) /dev/urandom > \(mnt)/churn-$((i % 40))
              if [ $((i % 10)) = 0 ]; then sync; fi
            done
            """)
        try sh("fsfreeze -f \(mnt) && dd if=\(d.path) of=\(h.dir)/b.img bs=1M iflag=direct status=none")
        h.settle()
        let marked = try h.dirtyChunks(d, chunk: h.chunk)
        try sh("fsfreeze -u \(mnt)")
        let a = try Data(contentsOf: URL(fileURLWithPath: h.dir + "/a.img"))
        let b = try Data(contentsOf: URL(fileURLWithPath: h.dir + "/b.img"))
        #expect(a.count == b.count && a.count == Int(d.sizeBytes))
        var changed = Set<UInt64>()
        let c = Int(h.chunk)
        for i in stride(from: 0, to: min(a.count, b.count), by: c) where a[i..<(i + c)] != b[i..<(i + c)] {
            changed.insert(UInt64(i / c))
        }
        #expect(changed.count > 50, "the churn changed only \(changed.count) chunks")
        let missed = changed.subtracting(marked).sorted()
        #expect(missed.isEmpty, "chunks changed but not marked: \(missed.prefix(20)) of \(changed.count) changed")
    }

    /// A discard of 200 GiB spans ~51 k full bitmap words, which the program
    /// fills with bpf_loop: every chunk, from a start inside a chunk to an
    /// end inside another, and nothing else.
    @Test(.requiresRoot) func hugeDiscardMarksEveryChunk() throws {
        let h = try Harness("bigdiscard")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 1 << 20) // 1 TiB, sparse
        _ = try h.startTrack([d])
        let off: UInt64 = (3 << 30) + 4096, len: UInt64 = 200 << 30
        try sh("blkdiscard -o \(off) -l \(len) \(d.path)")
        h.settle()
        let r = try h.bitmap(["extents", h.hrl(d), "--json"])
        #expect(r.ok, "\(r.stderr)")
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let extents = (obj["extents"] as! [[NSNumber]]).map { [$0[0].uint64Value, $0[1].uint64Value] }
        let first = off / h.chunk * h.chunk
        let end = (off + len + h.chunk - 1) / h.chunk * h.chunk
        #expect(extents == [[first, end - first]], "\(extents.prefix(4))")
    }

    /// With the agent stopped, tracking stays pinned: writes land in the
    /// kernel map only, and the debug tool shows them as undrained (and says
    /// so); --hrl-only does not. The next agent start drains them.
    @Test(.requiresRoot) func debugToolShowsUndrainedLiveBits() throws {
        let h = try Harness("live")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 32)
        let agent = try h.startTrack([d])
        try h.writeDirect(d, offset: 1 << 20, length: 65536)
        h.settle()
        agent.stop()
        try h.writeDirect(d, offset: 9 << 20, length: 131072) // no agent running
        let drainedChunks = h.chunks(offset: 1 << 20, length: 65536)
        let liveChunks = h.chunks(offset: 9 << 20, length: 131072)
        #expect(try h.dirtyChunks(d, hrlOnly: true) == drainedChunks)
        #expect(try h.dirtyChunks(d) == drainedChunks.union(liveChunks))
        let show = try h.bitmap(["show", h.hrl(d)])
        #expect(show.ok && show.stdout.contains("includes 2 undrained chunks from the live kernel map"), "\(show.stdout)")
        // A new agent drains them into the .hrl.
        _ = try h.startTrack([d])
        h.settle()
        #expect(try h.dirtyChunks(d, hrlOnly: true) == drainedChunks.union(liveChunks))
    }

    @Test(.requiresRoot) func bufferedWritesAndSync() throws {
        let h = try Harness("buffered")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 32, directIO: false)
        _ = try h.startTrack([d], chunkSize: "4k")
        var expected = Set<UInt64>()
        for (off, len) in [(UInt64(8192), UInt64(4096)), (1 << 20, 1 << 20), (7 << 20 + 4096, 12288)] {
            try sh("head -c \(len) /dev/urandom | dd of=\(d.path) bs=\(len) seek=\(off) oflag=seek_bytes iflag=fullblock conv=notrunc status=none")
            expected.formUnion(h.chunks(offset: off, length: len, chunk: 4096))
        }
        try sh("sync")
        h.settle()
        #expect(try h.dirtyChunks(d, chunk: 4096) == expected)
    }

    @Test(.requiresRoot) func severalDisksAtOnce() throws {
        let h = try Harness("multi")
        defer { h.close() }
        let a = try h.loop(sizeMiB: 16), b = try h.loop(sizeMiB: 16), c = try h.loop(sizeMiB: 16)
        _ = try h.startTrack([a, b])
        try h.writeDirect(a, offset: 1 << 20, length: 65536)
        try h.writeDirect(b, offset: 2 << 20, length: 131072)
        try h.writeDirect(c, offset: 3 << 20, length: 65536) // not tracked
        h.settle()
        #expect(try h.dirtyChunks(a) == h.chunks(offset: 1 << 20, length: 65536))
        #expect(try h.dirtyChunks(b) == h.chunks(offset: 2 << 20, length: 131072))
        #expect(!FileManager.default.fileExists(atPath: h.hrl(c)))
    }

    @Test(.requiresRoot) func partitionOffsetsAreSubtracted() throws {
        let h = try Harness("part")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 64)
        // Partition 1: from 8 MiB, 32 MiB long (sectors of 512 bytes).
        try sh("addpart \(d.path) 1 \(8 << 11) \(32 << 11)")
        defer { _ = try? sh("delpart \(d.path) 1") }
        let partPath = d.path + "p1"
        var waited = 0
        while !FileManager.default.fileExists(atPath: partPath) && waited < 100 { usleep(20_000); waited += 1 }
        let part = PartitionDevice(path: partPath, name: d.name + "p1")
        let p = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "track", "--state-dir", h.stateDir, "--disk", partPath],
                                      env: h.env, logDir: h.dir)
        h.agents.append(p)
        try p.waitForOutput("tracking")
        // Inside the partition at partition offset 1 MiB + 4 KiB.
        try sh("head -c 4096 /dev/urandom | dd of=\(partPath) bs=4096 seek=\((1 << 20) + 4096) oflag=direct,seek_bytes status=none")
        // On the whole disk, outside the partition: must not count.
        try h.writeDirect(d, offset: 1 << 20, length: 65536)
        try h.writeDirect(d, offset: 50 << 20, length: 65536)
        // On the whole disk, inside the partition (disk offset 8 MiB + 2 MiB).
        try h.writeDirect(d, offset: (8 << 20) + (2 << 20), length: 65536)
        h.settle()
        let got = try h.dirtyChunks(hrl: h.stateDir + "/" + part.name + ".hrl")
        #expect(got == Set([UInt64(16), UInt64(32)]))
        p.stop()
        _ = try? h.agent(["untrack", "--disk", partPath, "--state-dir", h.stateDir])
    }
}

struct PartitionDevice { var path: String; var name: String }

extension Harness {
    func dirtyChunks(hrl path: String) throws -> Set<UInt64> {
        let r = try bitmap(["extents", path, "--json"])
        guard r.ok else { throw TestFailure("tidemark-bitmap extents failed: \(r.stderr)") }
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let cs = (obj["chunk_size"] as! NSNumber).uint64Value
        var out = Set<UInt64>()
        for e in obj["extents"] as! [[NSNumber]] {
            for c in (e[0].uint64Value / cs)..<((e[0].uint64Value + e[1].uint64Value + cs - 1) / cs) { out.insert(c) }
        }
        return out
    }
}
