import Foundation
import Testing
import TidemarkSystem
import TidemarkTracking
@testable import TidemarkBitmapTool

private let chunk: UInt64 = 65536

@Suite struct Show {
    @Test func textShowsHeaderStateAndCounts() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [0, 1, 2, 10, 63])
        let r = BitmapTool.show(path: p, hrlOnly: true)
        #expect(r.exitCode == 0)
        #expect(r.errorOutput.isEmpty)
        let out = r.output
        #expect(out.hasPrefix(p + "\n"))
        for expected in ["format         v2 (header generation", "state          tracking",
                         "resync reason  0 none — no resync is pending", "disk id        sdb",
                         "disk identity  wwn-0x5000c500a1b2c3d4", "disk size      4194304 bytes (4 MiB)",
                         "chunk size     65536 bytes (64 KiB)", "chunks         64 (1 bitmap page)",
                         "dirty in .hrl  5 chunks (7.81%), 327680 bytes (320 KiB)", "drain seq      1",
                         "clear seq      0", "target id      (none)", "live tracking  not consulted (--hrl-only)"] {
            #expect(out.contains(expected), "missing \(expected) in\n\(out)")
        }
        // ISO 8601 UTC times.
        #expect(out.range(of: #"created        \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"#, options: .regularExpression) != nil)
    }

    @Test func resyncReasonCodeAndText() throws {
        let fx = try Fixture()
        let p = try fx.hrl(state: .resyncRequired, reason: .uncleanShutdown, reasonText: "boot id changed")
        let out = BitmapTool.show(path: p, hrlOnly: true).output
        #expect(out.contains("state          resync-required"))
        #expect(out.contains("resync reason  7 unclean-shutdown — the host went down while tracking"))
        #expect(out.contains("reason text    boot id changed"))
        #expect(out.contains("State is resync-required"))
    }

    @Test func liveMapIsUnionedAndSaidSo() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [0, 1, 2])
        let live = liveContext(nrChunks: 64, dirty: [2, 3, 40])
        let out = BitmapTool.show(path: p, context: live).output
        #expect(out.contains("live tracking  tracked on /dev/block/8:16"))
        #expect(out.contains("kernel map     3 undrained chunks, 2 of them not yet in the .hrl"))
        #expect(out.contains("dirty in .hrl  3 chunks"))
        #expect(out.contains("dirty (total)  5 chunks (7.81%), 327680 bytes (320 KiB) — includes 2 undrained chunks from the live kernel map"))
        // --hrl-only never asks.
        let asked = BitmapTool.show(path: p, hrlOnly: true, context: ToolContext(liveMap: { _ in
            Issue.record("--hrl-only consulted the kernel map")
            return nil
        }))
        #expect(!asked.output.contains("dirty (total)"))
    }

    /// A drain between the tool's two reads moves bits from the kernel map
    /// into the file. The tool reads the map first, so they show up in the
    /// file it reads second; the other order would lose them.
    @Test func bitsDrainedWhileReadingAreNotLost() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [1])
        let drainingAgent = ToolContext(liveMap: { path in
            // What the kernel map held when read: chunk 9, undrained.
            var words = [UInt64](repeating: 0, count: 1)
            words[0] = 1 << 9
            let map = LiveMap(words: words, overflow: false, chunkSizeBytes: 65536, nrChunks: 64, devicePath: "/dev/block/8:16")
            // Then the agent drains: chunk 9 and a newer chunk 20 go into the
            // file and leave the kernel map.
            let file = try TrackingFile.open(at: path)
            try file.persistSet(SparseWords(chunks: [9, 20]))
            file.close()
            return map
        })
        let r = BitmapTool.extents(path: p, json: true, context: drainingAgent)
        let o = try jsonObject(r)
        #expect(extentPairs(o["extents"]) == [[65536, 65536], [9 * 65536, 65536], [20 * 65536, 65536]])
    }

    @Test func overflowMeansWholeDisk() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [5])
        let out = BitmapTool.show(path: p, context: liveContext(nrChunks: 64, dirty: [], overflow: true)).output
        #expect(out.contains("dirty (total)  64 chunks (100.00%), 4194304 bytes (4 MiB) — the tracer overflowed: the whole disk counts as dirty"))
        #expect(out.contains("overflow flag is set"))
    }

    @Test func liveMapOfOtherGeometryIsNotCombined() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [1])
        let r = BitmapTool.show(path: p, json: true, context: liveContext(nrChunks: 128, chunkSizeBytes: 32768, dirty: [7]))
        let o = try jsonObject(r)
        #expect(o["live"] as? Bool == false)
        #expect(uint(o["dirty_chunks"]) == 1)
        #expect((o["kernel"] as? [String: Any])?["mismatch"] != nil)
        let text = BitmapTool.show(path: p, context: liveContext(nrChunks: 128, chunkSizeBytes: 32768, dirty: [7])).output
        #expect(text.contains("not combined, geometry differs"))
    }

    @Test func liveErrorsDegradeToFileOnly() throws {
        struct Denied: Error, CustomStringConvertible { var description: String { "permission denied" } }
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [1])
        let r = BitmapTool.show(path: p, context: ToolContext(liveMap: { _ in throw Denied() }))
        #expect(r.exitCode == 0)
        #expect(r.output.contains("live tracking  unavailable (permission denied); counts are the .hrl's alone"))
    }

    @Test func json() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [3, 4], state: .resyncRequired, reason: .tracerDetached, reasonText: "quote \" and \\ here")
        let o = try jsonObject(BitmapTool.show(path: p, json: true, context: liveContext(nrChunks: 64, dirty: [4, 9])))
        #expect(o["path"] as? String == p)
        #expect(uint(o["format_version"]) == 2)
        #expect(o["state"] as? String == "resync-required")
        let reason = try #require(o["reason"] as? [String: Any])
        #expect(uint(reason["code"]) == 8)
        #expect(reason["name"] as? String == "tracer-detached")
        #expect(reason["text"] as? String == "quote \" and \\ here")
        #expect(o["disk_id"] as? String == "sdb")
        #expect(uint(o["disk_size"]) == 64 * chunk)
        #expect(uint(o["chunk_size"]) == chunk)
        #expect(uint(o["nr_chunks"]) == 64)
        #expect(uint(o["hrl_dirty_chunks"]) == 2)
        #expect(o["live"] as? Bool == true)
        #expect(uint((o["kernel"] as? [String: Any])?["undrained_chunks"]) == 1)
        #expect(uint(o["dirty_chunks"]) == 3)
        #expect(uint(o["dirty_bytes"]) == 3 * chunk)
        #expect((o["created"] as? String)?.hasSuffix("Z") == true)
        #expect((o["file_uuid"] as? String)?.count == 36)
    }

    @Test func partialLastChunkCountsOnlyItsBytes() throws {
        let fx = try Fixture()
        // 10 chunks and 1000 bytes: chunk 10 holds only 1000 bytes.
        let p = try fx.hrl(sizeBytes: 10 * chunk + 1000, dirty: [10])
        let o = try jsonObject(BitmapTool.show(path: p, hrlOnly: true, json: true))
        #expect(uint(o["nr_chunks"]) == 11)
        #expect(uint(o["dirty_bytes"]) == 1000)
    }
}

@Suite struct Extents {
    @Test func textLines() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [0, 1, 2, 10, 63])
        let r = BitmapTool.extents(path: p, hrlOnly: true)
        #expect(r.exitCode == 0)
        #expect(r.output == """
            0 196608 (chunks 0-2)
            655360 65536 (chunks 10-10)
            4128768 65536 (chunks 63-63)

            """)
    }

    @Test func jsonMergedSortedAndClipped() throws {
        let fx = try Fixture()
        let size = 200 * chunk + 4096
        // Runs across a word boundary (60...70) and up to the partial last chunk (198...200).
        let p = try fx.hrl(sizeBytes: size, dirty: Array(60...70) + [5] + [198, 199, 200])
        let o = try jsonObject(BitmapTool.extents(path: p, hrlOnly: true, json: true))
        #expect(uint(o["chunk_size"]) == chunk)
        #expect(uint(o["disk_size"]) == size)
        #expect(o["live"] as? Bool == false)
        #expect(uint(o["dirty_chunks"]) == 15)
        #expect(extentPairs(o["extents"]) == [[5 * chunk, chunk], [60 * chunk, 11 * chunk], [198 * chunk, 2 * chunk + 4096]])
        #expect(uint(o["dirty_bytes"]) == 14 * chunk + 4096)
    }

    @Test func liveBitsAreMergedIn() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [1, 2])
        let o = try jsonObject(BitmapTool.extents(path: p, json: true, context: liveContext(nrChunks: 64, dirty: [3, 20])))
        #expect(o["live"] as? Bool == true)
        #expect(uint(o["dirty_chunks"]) == 4)
        #expect(extentPairs(o["extents"]) == [[chunk, 3 * chunk], [20 * chunk, chunk]])
        let fileOnly = try jsonObject(BitmapTool.extents(path: p, hrlOnly: true, json: true,
                                                         context: liveContext(nrChunks: 64, dirty: [3, 20])))
        #expect(extentPairs(fileOnly["extents"]) == [[chunk, 2 * chunk]])
    }

    @Test func overflowIsOneWholeDiskExtent() throws {
        let fx = try Fixture()
        let p = try fx.hrl(sizeBytes: 64 * chunk - 512, dirty: [])
        let r = BitmapTool.extents(path: p, context: liveContext(nrChunks: 64, dirty: [], overflow: true))
        #expect(r.output == "0 \(64 * chunk - 512) (chunks 0-63)\n")
        #expect(r.errorOutput.contains("whole disk counts as dirty"))
    }

    @Test func cleanFileHasNoExtents() throws {
        let fx = try Fixture()
        let p = try fx.hrl()
        #expect(BitmapTool.extents(path: p, hrlOnly: true).output == "")
        let o = try jsonObject(BitmapTool.extents(path: p, hrlOnly: true, json: true))
        #expect(extentPairs(o["extents"]).isEmpty)
    }
}

@Suite struct Diff {
    @Test func text() throws {
        let fx = try Fixture()
        let a = try fx.hrl("a.hrl", dirty: [0, 1, 2, 3, 10])
        let b = try fx.hrl("b.hrl", dirty: [2, 3, 4, 20])
        let r = BitmapTool.diff(a, b)
        #expect(r.exitCode == 0)
        #expect(r.output.contains("A: \(a) (5 dirty)\nB: \(b) (4 dirty)\n"))
        #expect(r.output.contains("only in A: 3 chunks, 196608 bytes (192 KiB)\n  0 131072 (chunks 0-1)\n  655360 65536 (chunks 10-10)\n"))
        #expect(r.output.contains("only in B: 2 chunks, 131072 bytes (128 KiB)\n  262144 65536 (chunks 4-4)\n  1310720 65536 (chunks 20-20)\n"))
        #expect(r.output.contains("in both: 2 chunks, 131072 bytes (128 KiB)\n  131072 131072 (chunks 2-3)\n"))
        #expect(!r.output.contains("note:"))
    }

    @Test func json() throws {
        let fx = try Fixture()
        let a = try fx.hrl("a.hrl", dirty: [0, 1, 2, 3, 10])
        let b = try fx.hrl("b.hrl", dirty: [2, 3, 4, 20], identity: "other-disk")
        let o = try jsonObject(BitmapTool.diff(a, b, json: true))
        #expect(uint(o["chunk_size"]) == chunk)
        #expect(o["same_disk_identity"] as? Bool == false)
        let onlyA = try #require(o["only_a"] as? [String: Any])
        let onlyB = try #require(o["only_b"] as? [String: Any])
        let both = try #require(o["both"] as? [String: Any])
        #expect(uint(onlyA["chunks"]) == 3 && uint(onlyB["chunks"]) == 2 && uint(both["chunks"]) == 2)
        #expect(extentPairs(onlyA["extents"]) == [[0, 2 * chunk], [10 * chunk, chunk]])
        #expect(extentPairs(onlyB["extents"]) == [[4 * chunk, chunk], [20 * chunk, chunk]])
        #expect(extentPairs(both["extents"]) == [[2 * chunk, 2 * chunk]])
    }

    @Test func refusesDifferentGeometry() throws {
        let fx = try Fixture()
        let a = try fx.hrl("a.hrl", dirty: [1])
        let smallChunks = try fx.hrl("b.hrl", chunkSizeBytes: 4096, dirty: [1])
        let bigger = try fx.hrl("c.hrl", sizeBytes: 128 * chunk, dirty: [1])
        let r1 = BitmapTool.diff(a, smallChunks)
        #expect(r1.exitCode == 1)
        #expect(r1.output.isEmpty)
        #expect(r1.errorOutput.contains("cannot compare \(a) and \(smallChunks): chunk size differs (A: 64 KiB, B: 4 KiB)"))
        let r2 = BitmapTool.diff(a, bigger, json: true)
        #expect(r2.exitCode == 1)
        #expect(r2.errorOutput.contains("disk size differs (A: 4194304 bytes, B: 8388608 bytes)"))
    }

    @Test func missingSecondFile() throws {
        let fx = try Fixture()
        let a = try fx.hrl("a.hrl")
        let r = BitmapTool.diff(a, fx.path("nope.hrl"))
        #expect(r.exitCode == 2)
        #expect(r.errorOutput.contains(fx.path("nope.hrl") + ": no such file"))
    }
}

@Suite struct Verify {
    @Test func okFile() throws {
        let fx = try Fixture()
        let p = try fx.hrl(dirty: [1, 2, 3])
        let r = BitmapTool.verify(path: p)
        #expect(r.exitCode == 0)
        #expect(r.output.hasPrefix("\(p): OK (format v2, 64 chunks of 64 KiB, 1 bitmap page, state tracking)"))
        let o = try jsonObject(BitmapTool.verify(path: p, json: true))
        #expect(o["ok"] as? Bool == true && o["tracking_file"] as? Bool == true)
        #expect(o["path"] as? String == p)
        #expect(uint(o["format_version"]) == 2 && uint(o["nr_chunks"]) == 64 && uint(o["chunk_size"]) == chunk && uint(o["bitmap_pages"]) == 1)
        #expect(o["state"] as? String == "tracking")
        #expect((o["problems"] as? [Any])?.isEmpty == true)
    }

    @Test func corruptPageIsNamed() throws {
        let fx = try Fixture()
        // 4096 chunks of 4 KiB = 64 words: still one page; use 40000 chunks for two pages.
        let p = try fx.hrl(sizeBytes: 40_000 * 4096, chunkSizeBytes: 4096, dirty: [5, 35_000])
        // Flip a byte in the words of both slots of page 1: neither checksum matches any more.
        // (One damaged slot alone is a torn update the other slot absorbs.)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: p))
        for slot in 0..<2 {
            let offset = TrackingFile.fileOffset(ofBitmapPage: 1, slot: slot) + 100
            try handle.seek(toOffset: offset)
            let byte = try #require(try handle.read(upToCount: 1)).first!
            try handle.seek(toOffset: offset)
            try handle.write(contentsOf: Data([byte ^ 0xFF]))
        }
        try handle.close()

        let r = BitmapTool.verify(path: p)
        #expect(r.exitCode == 1)
        #expect(r.output.hasPrefix("\(p): 1 problem — the agent will not trust this file and will resync the disk\n"))
        #expect(r.output.contains("page 1"), "\(r.output)")
        #expect(!r.output.contains("page 0"), "\(r.output)")
        let j = BitmapTool.verify(path: p, json: true)
        #expect(j.exitCode == 1)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(j.output.utf8)) as? [String: Any])
        #expect(o["ok"] as? Bool == false && o["tracking_file"] as? Bool == true)
        let problems = try #require(o["problems"] as? [String])
        #expect(problems.count == 1 && problems[0].contains("page 1"), "\(problems)")

        // The other commands refuse it with a pointer to verify.
        let s = BitmapTool.show(path: p, hrlOnly: true)
        #expect(s.exitCode == 1)
        #expect(s.errorOutput.contains("corrupt"))
        #expect(s.errorOutput.contains("tidemark-bitmap verify \(p)"))
    }

    @Test func notATrackingFile() throws {
        let fx = try Fixture()
        let p = try fx.write("notes.txt", Array(String(repeating: "hello, world\n", count: 700).utf8))
        let v = BitmapTool.verify(path: p)
        #expect(v.exitCode == 1)
        #expect(v.output.hasPrefix("\(p): not a Tidemark tracking (.hrl) file — "))
        #expect(v.output.contains("no .hrl magic"), "\(v.output)")
        let j = BitmapTool.verify(path: p, json: true)
        #expect(j.exitCode == 1)
        let o = try #require(try JSONSerialization.jsonObject(with: Data(j.output.utf8)) as? [String: Any])
        #expect(o["ok"] as? Bool == false && o["tracking_file"] as? Bool == false)
        #expect(o["format_version"] is NSNull && o["nr_chunks"] is NSNull)
        #expect((o["problems"] as? [String])?.contains { $0.contains("no .hrl magic") } == true)
        for run in [BitmapTool.show(path: p, hrlOnly: true), BitmapTool.extents(path: p, hrlOnly: true),
                    BitmapTool.map(path: p, hrlOnly: true)] {
            #expect(run.exitCode == 1)
            #expect(run.output.isEmpty)
            #expect(run.errorOutput.contains("\(p): not a Tidemark tracking (.hrl) file"), "\(run.errorOutput)")
            #expect(run.errorOutput.contains("state_dir"))
        }
        let empty = try fx.write("empty.hrl", [])
        #expect(BitmapTool.verify(path: empty).exitCode == 1)
        #expect(BitmapTool.show(path: empty, hrlOnly: true).exitCode == 1)
    }

    @Test func missingFileAndDirectory() throws {
        let fx = try Fixture()
        let missing = fx.path("sdz.hrl")
        for run in [BitmapTool.verify(path: missing), BitmapTool.show(path: missing), BitmapTool.extents(path: missing),
                    BitmapTool.map(path: missing)] {
            #expect(run.exitCode == 2)
            #expect(run.errorOutput == "tidemark-bitmap: \(missing): no such file — .hrl files live in the agent's state_dir (default /var/lib/tidemark), one per disk, named <disk-id>.hrl\n")
        }
        let dir = BitmapTool.verify(path: fx.dir)
        #expect(dir.exitCode == 2)
        #expect(dir.errorOutput.contains("is a directory"))
    }
}
