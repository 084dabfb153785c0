import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting

/// The pinned tracer's lifecycle when several processes share it: a handle
/// opened before another process unpinned the tracer must never be used to
/// install a slot (its program is no longer attached: every write would go
/// unmarked) or to unpin a tracer loaded since. And a completion the kernel
/// skipped (recursion guard) must make the whole disk dirty.
@Suite(.serialized) struct TracerLifecycleTests {
    @Test(.requiresRoot) func staleHandleCannotAttachOrUnpinAndReopenedOneTracks() throws {
        let sandbox = TracerSandbox(tag: "lifecycle")
        defer { sandbox.cleanup() }
        let dir = try TestEnv.tempDir("lifecycle")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loop = try LoopDevice(sizeBytes: 16 << 20, in: dir)
        defer { loop.detach() }
        let device = try BlockDeviceInfo.inspect(loop.path)
        let hrl = dir + "/x.hrl"

        // Process A opens the tracer; process B (here: a second handle) finds
        // no slot in use and releases it, as a failed start does.
        guard let a = try Tracer.open(create: true, pinDir: sandbox.pinDir),
              let b = try Tracer.open(create: false, pinDir: sandbox.pinDir) else {
            throw TestFailure("the tracer did not open")
        }
        try b.releaseIfUnused()
        #expect(!FileManager.default.fileExists(atPath: sandbox.pinDir + "/link"))

        // A's handles are of a program that is no longer pinned: refused.
        #expect(throws: Tracer.Replaced.self) {
            _ = try a.attach(device, chunkSizeBytes: 65536, hrlPath: hrl)
        }

        // A new tracer (another agent's) must survive A's stale release.
        guard let c = try Tracer.open(create: true, pinDir: sandbox.pinDir) else { throw TestFailure("reopen failed") }
        guard case .attached(let slot) = try c.attach(device, chunkSizeBytes: 65536, hrlPath: hrl) else {
            throw TestFailure("expected a new slot")
        }
        try a.releaseIfUnused()
        try a.detach(slot)
        #expect(FileManager.default.fileExists(atPath: sandbox.pinDir + "/link"))
        #expect(try c.slots().map(\.slot) == [slot.slot])

        // The reopened handle tracks: a write lands in its bitmap.
        try sh("head -c 65536 /dev/urandom | dd of=\(loop.path) bs=65536 seek=5 oflag=direct status=none")
        let words = try c.mapBitmap(slot)
        #expect(words.load(0) == 1 << 5)
        // A new slot starts with the program's current miss count accounted for.
        let bitmap = try SlotBitmap(tracer: c, slot: slot)
        #expect(bitmap.recursionMissesSeen == (try c.recursionMisses()))
        try c.detach(slot)
        #expect(!FileManager.default.fileExists(atPath: sandbox.pinDir + "/link"))
    }

    /// A drain that finds the program's recursion-miss count above what the
    /// slot accounted for marks the whole disk dirty, durably, once.
    /// (Real misses cannot be provoked on demand; the agent's test switch
    /// TIDEMARK_TEST_FAKE_RECURSION_MISS makes its first drain see one.)
    @Test(.requiresRoot) func recursionMissMarksWholeDiskDirtyOnce() throws {
        let h = try Harness("recmiss")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let args = [TestEnv.binary("tidemark-agent"), "track", "--state-dir", h.stateDir, "--chunk-size", "64k", "--disk", d.path]
        let p = try BackgroundProcess(args, env: h.env.merging(["TIDEMARK_TEST_FAKE_RECURSION_MISS": "1"]) { $1 }, logDir: h.dir)
        h.agents.append(p)
        try p.waitForOutput("tracking")
        h.settle()
        let all = Set(UInt64(0)..<UInt64(16 << 20) / h.chunk)
        #expect(try h.dirtyChunks(d, hrlOnly: true) == all)
        p.stop()
        #expect((p.stdout + p.stderr).contains("skipped the tracer"), "\(p.stderr.suffix(2000))")
    }
}
