import Foundation
import Testing
import TidemarkTesting

@Suite(.serialized) struct FailurePathTests {
    /// A torn or corrupt .hrl: verify fails clearly; the agent refuses to
    /// trust it and records resync-required with the reason.
    @Test(.requiresRoot, arguments: ["flip-header", "flip-bitmap", "truncate", "garbage"])
    func corruptTrackingFileIsNotTrusted(_ damage: String) throws {
        let h = try Harness("corrupt")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let mirror = h.dir + "/mirror.img"
        #expect(try h.agent(["mirror", "--disk", d.path, "--to", mirror, "--state-dir", h.stateDir, "--once"]).ok)
        let path = h.hrl(d)
        #expect(try h.bitmap(["verify", path]).ok)
        switch damage {
        case "flip-header": // both header slots: a single flip is survivable only when torn
            try sh("printf '\\xff' | dd of=\(path) bs=1 seek=30 conv=notrunc status=none")
            try sh("printf '\\xff' | dd of=\(path) bs=1 seek=\(4096 + 30) conv=notrunc status=none")
        case "flip-bitmap": // the current slot of the first bitmap page, no write in flight
            try sh("printf '\\x5a' | dd of=\(path) bs=1 seek=\(8192 + 100) conv=notrunc status=none")
            try sh("printf '\\x5a' | dd of=\(path) bs=1 seek=\(12288 + 100) conv=notrunc status=none")
        case "truncate":
            try sh("truncate -s 10000 \(path)")
        default:
            try sh("head -c 16384 /dev/urandom > \(path)")
        }
        let v = try h.bitmap(["verify", path])
        #expect(v.status == 1, "verify must fail: \(v.stdout)\(v.stderr)")
        #expect(!(v.stdout + v.stderr).isEmpty)
        // The agent does not trust it: resync-required with the reason.
        let agent = try h.startTrack([d])
        agent.stop()
        let header = try h.header(d)
        #expect(header["state"] as? String == "resync-required", "\(header)")
        #expect((header["reason"] as? [String: Any])?["name"] as? String == "tracking-file-corrupt", "\(header)")
        #expect(try sh("ls \(h.stateDir)").contains(".corrupt-"))
    }

    @Test(.requiresRoot) func diskSizeChangeForcesResync() throws {
        let h = try Harness("resize")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        #expect(try h.agent(["mirror", "--disk", d.path, "--to", h.dir + "/m.img", "--state-dir", h.stateDir, "--once"]).ok)
        try sh("truncate -s 32M \(d.backingFile) && losetup -c \(d.path)")
        let agent = try h.startTrack([d])
        agent.stop()
        let header = try h.header(d)
        #expect(header["state"] as? String == "resync-required")
        #expect((header["reason"] as? [String: Any])?["name"] as? String == "disk-size-changed", "\(header)")
    }

    @Test(.requiresRoot) func untrackThenTrackRequiresResync() throws {
        let h = try Harness("untrack")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        #expect(try h.agent(["mirror", "--disk", d.path, "--to", h.dir + "/m.img", "--state-dir", h.stateDir, "--once"]).ok)
        let u = try h.agent(["untrack", "--disk", d.path, "--state-dir", h.stateDir])
        #expect(u.ok, "\(u.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.sandbox.pinDir + "/link"), "the last untrack unpins the tracer")
        let header = try h.header(d)
        #expect(header["state"] as? String == "resync-required")
        #expect((header["reason"] as? [String: Any])?["name"] as? String == "tracer-detached")
    }

    @Test(.requiresRoot) func badInputIsRefusedAndChangesNothing() throws {
        let h = try Harness("badinput")
        defer { h.close() }
        // Missing device.
        var r = try h.agent(["track", "--disk", "/dev/does-not-exist", "--state-dir", h.stateDir])
        #expect(r.status == 1 && r.stderr.contains("/dev/does-not-exist: no such device"), "\(r.stderr)")
        // A regular file where a block device is needed.
        let file = h.dir + "/plain.img"
        try sh("truncate -s 1M \(file)")
        r = try h.agent(["track", "--disk", file, "--state-dir", h.stateDir])
        #expect(r.status == 1 && r.stderr.contains("is a regular file; a block device is needed"), "\(r.stderr)")
        #expect(r.stderr.contains("losetup"))
        // A bad chunk size.
        let d = try h.loop(sizeMiB: 16)
        r = try h.agent(["track", "--disk", d.path, "--state-dir", h.stateDir, "--chunk-size", "3k"])
        #expect(r.status == 1 && r.stderr.contains("--chunk-size '3k'"), "\(r.stderr)")
        // Nothing was created or pinned by any of these.
        #expect(!FileManager.default.fileExists(atPath: h.stateDir + "/" + d.name + ".hrl"))
        #expect(!FileManager.default.fileExists(atPath: h.sandbox.pinDir + "/link"))
        // A bad config line names file, line and key.
        let cfg = h.dir + "/agent.yaml"
        try "state_dir: \(h.stateDir)\nchunk_size: 65x\n".write(toFile: cfg, atomically: true, encoding: .utf8)
        r = try h.agent(["track", "--disk", d.path, "--config", cfg])
        #expect(r.status == 1 && r.stderr.contains("\(cfg):2:") && r.stderr.contains("chunk_size"), "\(r.stderr)")
    }

    /// A start that fails after the tracer was loaded (here: the .hrl cannot
    /// be created) says why and leaves no idle tracer attached.
    @Test(.requiresRoot) func failedStartLeavesNoTracerLoaded() throws {
        let h = try Harness("failedstart")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let locked = h.dir + "/immutable-state"
        try sh("mkdir -p \(locked) && chattr +i \(locked)")
        defer { _ = try? sh("chattr -i \(locked)") }
        let r = try h.agent(["track", "--disk", d.path, "--state-dir", locked])
        #expect(r.status == 1 && r.stderr.contains(locked), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.sandbox.pinDir + "/link"), "an idle tracer stayed loaded")
    }

    @Test(.requiresRoot) func diskTrackedByAnotherAgentIsRefused() throws {
        let h = try Harness("owned")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let first = try h.startTrack([d])
        // A second agent process while the first runs.
        var r = try h.agent(["track", "--disk", d.path, "--state-dir", h.stateDir])
        #expect(r.status == 1 && r.stderr.contains("already being tracked by another agent process (pid \(first.pid))"), "\(r.stderr)")
        first.stop()
        // Another agent with another state dir while tracking stays pinned.
        let other = h.dir + "/other-state"
        r = try h.agent(["track", "--disk", d.path, "--state-dir", other])
        #expect(r.status == 1 && r.stderr.contains("already tracked by another agent (state file"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: other + "/" + d.name + ".hrl"))
    }

    /// A kernel without BPF (the bpf() system call answering ENOSYS, through a
    /// seccomp filter): a clear error, nothing changed.
    @Test(.requiresRoot) func kernelWithoutBPFGivesAClearError() throws {
        let h = try Harness("nobpf")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 16)
        let wrapper = """
        import errno, os, sys, seccomp
        f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "bpf")
        f.load()
        os.execv(sys.argv[1], sys.argv[1:])
        """
        let script = h.dir + "/nobpf.py"
        try wrapper.write(toFile: script, atomically: true, encoding: .utf8)
        let r = try run(["/usr/bin/python3", script, TestEnv.binary("tidemark-agent"), "track", "--disk", d.path,
                         "--state-dir", h.stateDir], env: h.env)
        #expect(r.status == 1, "\(r.stdout)\(r.stderr)")
        #expect(r.stderr.contains("eBPF tracer") && r.stderr.contains("hint:"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: h.stateDir + "/" + d.name + ".hrl"))
    }
}
