import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting
import TidemarkTracking

/// The orderly-reboot path (docs/shutdown-seal.md) with real parts: two loop
/// devices, ext4 on A holding the state directory, the agent (`track`), the
/// shutdown hook's command (`shutdown-seal`) and the pinned tracer. A reboot
/// is simulated as the kernel would see it: the sandbox's pins and run
/// directory go away (the tracer is unloaded, /run is empty), the
/// filesystem is unmounted and mounted again read-only, and the next agent
/// runs with another boot id (TIDEMARK_TEST_BOOT_ID, a test-only override).
/// The first boot of every test is the host's real one.
@Suite(.serialized) struct ShutdownSealTests {
    final class World: @unchecked Sendable {
        let dir: String
        let mnt: String
        let sandbox: TracerSandbox
        let a: LoopDevice
        let b: LoopDevice
        var stateDir: String { mnt + "/state" }
        var agents: [BackgroundProcess] = []
        var mounted = false

        init(_ tag: String) throws {
            dir = try TestEnv.tempDir(tag)
            mnt = dir + "/mnt"
            sandbox = TracerSandbox(tag: tag)
            a = try LoopDevice(sizeBytes: 64 << 20, in: dir)
            b = try LoopDevice(sizeBytes: 16 << 20, in: dir)
            try sh("mkfs.ext4 -q -F -b 4096 \(a.path)")
            try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
            try sh("mount \(a.path) \(mnt)")
            mounted = true
            try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        }

        func env(boot: String?) -> [String: String] {
            var e = sandbox.env
            e["TIDEMARK_DRAIN_INTERVAL_MS"] = "50"
            if let boot { e["TIDEMARK_TEST_BOOT_ID"] = boot }
            return e
        }

        /// `track` of A and B; does not wait.
        func start(boot: String?) throws -> BackgroundProcess {
            let args = [TestEnv.binary("tidemark-agent"), "track", "--state-dir", stateDir, "--chunk-size", "64k",
                        "--disk", a.path, "--disk", b.path]
            let p = try BackgroundProcess(args, env: env(boot: boot), logDir: dir)
            agents.append(p)
            return p
        }

        func startTracking(boot: String?) throws -> BackgroundProcess {
            let p = try start(boot: boot)
            try p.waitForOutput("tracking")
            return p
        }

        /// SIGTERM; the agent must exit 0.
        func stop(_ p: BackgroundProcess) throws {
            let status = p.stop()
            guard status == 0 else { throw TestFailure("agent exited \(status): \(p.stderr)") }
        }

        /// First tracking of a disk is resync-required (never synchronized);
        /// a finished resync leaves the `.hrl` in state `tracking` (the
        /// replicator's `setState(.tracking)`), which `track` never does: so
        /// the test puts both files there, with the agent stopped and the
        /// slots pinned, in the host's real boot.
        func prepareTracking() throws {
            let p = try startTracking(boot: nil)
            try writeFiles("early", count: 4)
            try sh("head -c 1048576 /dev/urandom | dd of=\(b.path) bs=65536 seek=10 oflag=direct iflag=fullblock status=none")
            usleep(300_000)
            try stop(p)
            for d in [a, b] {
                let f = try TrackingFile.open(at: hrl(d))
                try f.setState(.tracking, reason: .none, text: "")
                f.close()
            }
        }

        func hrl(_ d: LoopDevice) -> String { stateDir + "/" + d.name + ".hrl" }

        func writeFiles(_ prefix: String, count: Int) throws {
            for i in 0..<count {
                try sh("head -c \(200_000 + i * 70_000) /dev/urandom > \(mnt)/\(prefix)-\(i) && sync")
            }
        }

        /// What the shutdown still writes after the agent stopped: files on
        /// A's filesystem, raw writes to B, then the final remount read-only.
        func lateWritesAndRemountReadOnly() throws {
            try writeFiles("late", count: 3)
            try sh("rm -f \(mnt)/early-1 && sync")
            try sh("head -c 131072 /dev/urandom | dd of=\(b.path) bs=65536 seek=100 oflag=direct iflag=fullblock status=none")
            try sh("head -c 4096 /dev/urandom | dd of=\(b.path) bs=4096 seek=3000 oflag=direct iflag=fullblock status=none")
            try sh("sync && mount -o remount,ro \(mnt)")
        }

        func hook(boot: String? = nil) throws -> ProcessResult {
            try run([TestEnv.binary("tidemark-agent"), "shutdown-seal"], env: env(boot: boot))
        }

        /// The kernel loses the pinned tracer and /run; the filesystem is
        /// mounted again (read-only, as early in boot, unless `readWrite`).
        func reboot(readWrite: Bool = false) throws {
            for p in agents where p.process.isRunning { throw TestFailure("an agent still runs at the simulated reboot") }
            sandbox.cleanup()
            try sh("umount \(mnt)")
            mounted = false
            try sh("mount -o \(readWrite ? "rw" : "ro") \(a.path) \(mnt)")
            mounted = true
        }

        /// Starts the agent with the filesystem read-only: it must attach,
        /// say it waits, and go on once the filesystem is writable.
        func startEarly(boot: String) throws -> BackgroundProcess {
            let p = try start(boot: boot)
            let deadline = Date().addingTimeInterval(30)
            while !p.stderr.contains("waiting for") {
                guard Date() < deadline, p.process.isRunning else {
                    throw TestFailure("the agent did not wait for the read-only state dir\nstdout: \(p.stdout)\nstderr: \(p.stderr)")
                }
                usleep(20_000)
            }
            #expect(!p.stdout.contains("tracking"))
            #expect(FileManager.default.fileExists(atPath: sandbox.pinDir + "/link"), "the tracer is attached while it waits")
            try sh("mount -o remount,rw \(mnt)")
            try p.waitForOutput("tracking")
            return p
        }

        func header(_ d: LoopDevice) throws -> [String: Any] {
            let r = try run([TestEnv.binary("tidemark-bitmap"), "show", hrl(d), "--json", "--hrl-only"], env: sandbox.env)
            guard r.ok else { throw TestFailure("tidemark-bitmap show failed: \(r.stderr)") }
            return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        }

        func state(_ d: LoopDevice) throws -> (state: String, reason: String, text: String) {
            let h = try header(d)
            let r = h["reason"] as! [String: Any]
            return (h["state"] as! String, r["name"] as! String, r["text"] as! String)
        }

        /// Dirty chunks, kernel map ∪ `.hrl`, as the debug tool reports them.
        func dirty(_ d: LoopDevice) throws -> Set<UInt64> {
            let r = try run([TestEnv.binary("tidemark-bitmap"), "extents", hrl(d), "--json"], env: sandbox.env)
            guard r.ok else { throw TestFailure("tidemark-bitmap extents failed: \(r.stderr)") }
            let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
            let cs = (obj["chunk_size"] as! NSNumber).uint64Value
            var out = Set<UInt64>()
            for e in obj["extents"] as! [[NSNumber]] {
                let off = e[0].uint64Value, len = e[1].uint64Value
                for c in (off / cs)..<((off + len + cs - 1) / cs) { out.insert(c) }
            }
            return out
        }

        func image(_ d: LoopDevice, _ name: String) throws -> String {
            let path = dir + "/" + name
            try sh("sync && cp \(d.backingFile) \(path)")
            return path
        }

        func close() {
            for p in agents { p.stop() }
            if mounted { _ = try? sh("umount \(mnt)") }
            sandbox.cleanup()
            a.detach()
            b.detach()
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Chunks (64 KiB) that differ between two images.
    static func changedChunks(_ x: String, _ y: String) throws -> Set<UInt64> {
        let dx = try Data(contentsOf: URL(fileURLWithPath: x)), dy = try Data(contentsOf: URL(fileURLWithPath: y))
        #expect(dx.count == dy.count)
        let chunk = 65536
        var out = Set<UInt64>()
        var off = 0
        while off < min(dx.count, dy.count) {
            let n = min(chunk, dx.count - off)
            if dx[off..<(off + n)] != dy[off..<(off + n)] { out.insert(UInt64(off / chunk)) }
            off += n
        }
        return out
    }

    static func newBoot() -> String { "test-boot-\(UUID().uuidString.lowercased())" }

    /// An orderly stop, late shutdown writes, the hook, a reboot, an early
    /// start while the filesystem is read-only: no resync, and every chunk
    /// that changed after the agent's last drain is dirty. A copy of a
    /// `.hrl` from before that reboot, restored later, meets a consumed seal.
    @Test(.requiresRoot) func orderlyRebootNeedsNoResyncAndLosesNoWrite() throws {
        let w = try World("seal-ok")
        defer { w.close() }
        try w.prepareTracking()
        let p1 = try w.startTracking(boot: nil)
        try w.writeFiles("steady", count: 2)
        usleep(300_000)
        try w.stop(p1)
        #expect(p1.stderr.contains("shutdown seal armed"), "\(p1.stderr)")
        for d in [w.a, w.b] {
            #expect(try w.state(d).state == "clean")
            #expect((try w.header(d)["seal_nonce"] as? String)?.count == 32, "the clean .hrl names the seal")
        }
        let a0 = try w.image(w.a, "a0.img"), b0 = try w.image(w.b, "b0.img")

        try w.lateWritesAndRemountReadOnly()
        let hook = try w.hook()
        #expect(hook.ok, "\(hook.stderr)")
        #expect(hook.stdout.contains("shutdown seal written"), "\(hook.stdout)")
        let a1 = try w.image(w.a, "a1.img"), b1 = try w.image(w.b, "b1.img")
        let changedA = try Self.changedChunks(a0, a1), changedB = try Self.changedChunks(b0, b1)
        #expect(!changedA.isEmpty && changedB.count >= 3)
        // Kept for the second part: the state files as the stop left them.
        try sh("cp \(w.hrl(w.a)) \(w.dir)/a.hrl.copy && cp \(w.hrl(w.b)) \(w.dir)/b.hrl.copy")

        try w.reboot()
        let boot2 = Self.newBoot()
        let p2 = try w.startEarly(boot: boot2)
        usleep(300_000)
        for d in [w.a, w.b] {
            let s = try w.state(d)
            #expect(s.state == "tracking" && s.reason == "none", "\(d.name): \(s)")
        }
        #expect(p2.stderr.contains("merged"), "\(p2.stderr)")
        let dirtyA = try w.dirty(w.a), dirtyB = try w.dirty(w.b)
        #expect(changedA.subtracting(dirtyA).isEmpty, "chunks of A changed after the last drain but not dirty: \(changedA.subtracting(dirtyA).sorted())")
        #expect(changedB.subtracting(dirtyB).isEmpty, "chunks of B changed after the last drain but not dirty: \(changedB.subtracting(dirtyB).sorted())")

        // A seal is never trusted twice: the agent dies (no new seal), the
        // old state files come back, the host reboots.
        w.agents.removeAll { $0 === p2 }
        p2.stop(signal: SIGKILL)
        try sh("cp \(w.dir)/a.hrl.copy \(w.hrl(w.a)) && cp \(w.dir)/b.hrl.copy \(w.hrl(w.b)) && sync")
        try w.reboot(readWrite: true)
        let p3 = try w.startTracking(boot: Self.newBoot())
        for d in [w.a, w.b] {
            let s = try w.state(d)
            #expect(s.state == "resync-required" && s.reason == "unclean-shutdown" && s.text.contains("already used"), "\(d.name): \(s)")
        }
        try w.stop(p3)
    }

    /// The host stopped after the agent but the hook never ran (power loss,
    /// forced reboot): resync, saying so.
    @Test(.requiresRoot) func withoutTheHookAResyncIsRequired() throws {
        let w = try World("seal-nohook")
        defer { w.close() }
        try w.prepareTracking()
        try w.stop(try w.startTracking(boot: nil))
        try w.lateWritesAndRemountReadOnly()
        try w.reboot()
        let p = try w.startEarly(boot: Self.newBoot())
        for d in [w.a, w.b] {
            let s = try w.state(d)
            #expect(s.state == "resync-required" && s.reason == "unclean-shutdown" && s.text.contains("never written"), "\(d.name): \(s)")
        }
        try w.stop(p)
    }

    /// Writes the tracer did not see before the hook ran (a deficit in the
    /// completion cross-check, made here by lowering B's stored offset) make
    /// the hook seal B incomplete: B resyncs, A does not.
    @Test(.requiresRoot) func unseenCompletionsSealTheDiskIncomplete() throws {
        let w = try World("seal-deficit")
        defer { w.close() }
        try w.prepareTracking()
        try w.stop(try w.startTracking(boot: nil))
        try w.lateWritesAndRemountReadOnly()
        guard let tracer = try Tracer.open(create: false, pinDir: w.sandbox.pinDir),
              let slot = try tracer.slot(for: BlockDeviceInfo.inspect(w.b.path)) else {
            Issue.record("no pinned slot for \(w.b.path)")
            return
        }
        let bitmap = try SlotBitmap(tracer: tracer, slot: slot)
        let offset = try #require(bitmap.sectorOffset)
        bitmap.setSectorOffset(offset &- 8)
        let r = try w.hook()
        #expect(r.ok, "\(r.stderr)")
        try w.reboot()
        let p = try w.startEarly(boot: Self.newBoot())
        let sa = try w.state(w.a), sb = try w.state(w.b)
        #expect(sa.state == "tracking", "A: \(sa)")
        #expect(sb.state == "resync-required" && sb.text.contains("did not see"), "B: \(sb)")
        try w.stop(p)
    }

    /// A disk whose filesystem was already mounted read-write when the
    /// tracer was attached is not tracked from the start of the boot; the
    /// raw disk B, never mounted, is.
    @Test(.requiresRoot) func attachAfterAReadWriteMountRequiresAResync() throws {
        let w = try World("seal-late")
        defer { w.close() }
        try w.prepareTracking()
        try w.stop(try w.startTracking(boot: nil))
        try w.lateWritesAndRemountReadOnly()
        #expect(try w.hook().ok)
        try w.reboot(readWrite: true)
        let p = try w.startTracking(boot: Self.newBoot())
        let a = try w.state(w.a)
        #expect(a.state == "resync-required" && a.reason == "late-attach" && a.text.contains("mounted read-write"), "\(a)")
        let b = try w.state(w.b)
        #expect(b.state == "tracking" && b.reason == "none", "\(b)")
        try w.stop(p)
    }

    /// Changed seal bytes, and a seal sealed for another stop, are refused.
    @Test(.requiresRoot) func damagedOrForeignSealRequiresAResync() throws {
        let w = try World("seal-bad")
        defer { w.close() }
        let seal = w.stateDir + "/shutdown.seal"
        try w.prepareTracking()

        // Stop 1 is sealed; its sealed record is kept (read past the cache).
        try w.stop(try w.startTracking(boot: nil))
        try w.lateWritesAndRemountReadOnly()
        #expect(try w.hook().ok)
        try sh("dd if=\(seal) of=\(w.dir)/sealed-1 bs=1M iflag=direct status=none")
        // Same boot: the agent restarts (no resync) and stops again, arming
        // a new seal; the old sealed record is put back instead of the hook.
        try sh("mount -o remount,rw \(w.mnt)")
        let again = try w.startTracking(boot: nil)
        #expect(try w.state(w.a).state == "tracking")
        try w.stop(again)
        try sh("dd if=\(w.dir)/sealed-1 of=\(seal) bs=4096 skip=16 seek=16 conv=notrunc oflag=direct status=none && sync")
        try sh("mount -o remount,ro \(w.mnt)")
        try w.reboot()
        let boot2 = Self.newBoot()
        let p = try w.startEarly(boot: boot2)
        for d in [w.a, w.b] {
            let s = try w.state(d)
            #expect(s.state == "resync-required" && s.text.contains("another shutdown"), "\(d.name): \(s)")
        }
        try w.stop(p)
    }

    /// In the same boot, `clean` is only as good as the pinned slot: a
    /// restart resumes it, but with the slot gone (pins removed while the
    /// agent was stopped) writes went unseen.
    @Test(.requiresRoot) func cleanWithTheSlotGoneInTheSameBootRequiresAResync() throws {
        let w = try World("seal-sameboot")
        defer { w.close() }
        try w.prepareTracking()
        try w.stop(try w.startTracking(boot: nil))
        let restarted = try w.startTracking(boot: nil)
        for d in [w.a, w.b] { #expect(try w.state(d).state == "tracking", "a restart in the same boot resumes") }
        try w.stop(restarted)
        #expect(try w.state(w.a).state == "clean")
        w.sandbox.cleanup()
        try w.writeFiles("unseen", count: 1)
        let p = try w.startTracking(boot: nil)
        for d in [w.a, w.b] {
            let s = try w.state(d)
            #expect(s.state == "resync-required" && s.reason == "tracer-detached", "\(d.name): \(s)")
        }
        try w.stop(p)
    }

    @Test(.requiresRoot) func changedSealBytesRequireAResync() throws {
        let w = try World("seal-changed")
        defer { w.close() }
        let seal = w.stateDir + "/shutdown.seal"
        try w.prepareTracking()
        try w.stop(try w.startTracking(boot: nil))
        try w.lateWritesAndRemountReadOnly()
        #expect(try w.hook().ok)
        // One byte of the first sealed extent changes on the way to the next boot.
        try sh("umount \(w.mnt) && mount \(w.a.path) \(w.mnt)")
        try sh("dd if=\(seal) of=\(w.dir)/page bs=4096 skip=17 count=1 iflag=direct status=none")
        try sh("printf '\\377' | dd of=\(w.dir)/page bs=1 seek=2 conv=notrunc status=none")
        try sh("dd if=\(w.dir)/page of=\(seal) bs=4096 seek=17 conv=notrunc oflag=direct status=none && sync")
        try sh("mount -o remount,ro \(w.mnt)")
        try w.reboot()
        let p = try w.startEarly(boot: Self.newBoot())
        for d in [w.a, w.b] {
            let s = try w.state(d)
            #expect(s.state == "resync-required" && s.reason == "unclean-shutdown" && s.text.contains("damaged"), "\(d.name): \(s)")
        }
        try w.stop(p)
    }
}
