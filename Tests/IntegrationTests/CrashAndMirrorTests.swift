import Foundation
import Testing
import TidemarkTesting

@Suite(.serialized) struct CrashAndMirrorTests {
    /// kill -9 of the agent during a write load, then restart: nothing missed,
    /// no resync.
    @Test(.requiresRoot) func killNineDuringLoadMissesNothing() throws {
        let h = try Harness("kill9")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 64)
        let mirror = h.dir + "/mirror.img"
        let first = try h.agent(["mirror", "--disk", d.path, "--to", mirror, "--state-dir", h.stateDir, "--once"])
        #expect(first.ok, "\(first.stderr)")
        var agent = try h.startTrack([d])
        // A writer that logs each offset after its O_DIRECT write completed.
        let log = h.dir + "/writes.log"
        let script = """
        for i in $(seq 1 150); do
          off=$(( (RANDOM * 32768 + RANDOM) % 16384 * 4096 ))
          dd if=/dev/urandom of=\(d.path) bs=4096 count=1 seek=$off oflag=direct,seek_bytes status=none && echo $off >> \(log)
        done
        echo done
        """
        let writer = try BackgroundProcess(["/bin/bash", "-c", script], logDir: h.dir)
        usleep(300_000)
        agent.stop(signal: SIGKILL)
        usleep(200_000)
        agent = try h.startTrack([d])
        try writer.waitForOutput("done", timeoutSeconds: 120)
        h.settle()
        let offsets = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").compactMap { UInt64($0) }
        #expect(offsets.count == 150)
        let expected = Set(offsets.map { $0 / h.chunk })
        #expect(try h.dirtyChunks(d) == expected)
        let header = try h.header(d)
        #expect(header["state"] as? String == "tracking", "\(header)")
        #expect(agent.stderr.contains("resumed pinned tracking"), "\(agent.stderr)")
    }

    /// A continuous mirror under a fio random-write load, then quiesce: the
    /// mirror is byte-identical.
    @Test(.requiresRoot) func mirrorUnderFioLoadIsIdentical() throws {
        let h = try Harness("mirror")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 128)
        try sh("dd if=/dev/urandom of=\(d.path) bs=1M count=24 seek=8 oflag=direct status=none")
        let target = h.dir + "/mirror.img"
        let m = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "mirror", "--disk", d.path, "--to", target,
                                       "--state-dir", h.stateDir], env: h.env, logDir: h.dir)
        h.agents.append(m)
        try m.waitForOutput("mirroring continuously", timeoutSeconds: 60)
        try sh("fio --name=churn --filename=\(d.path) --rw=randwrite --bsrange=4k-256k --direct=1 --ioengine=libaio --iodepth=16 --runtime=6 --time_based --size=128M --randrepeat=0 --output=/dev/null")
        #expect(m.stop() == 0, "\(m.stderr)")
        try sh("cmp \(d.path) \(target)")
        // Nothing left to copy.
        let again = try h.agent(["mirror", "--disk", d.path, "--to", target, "--state-dir", h.stateDir, "--once"])
        #expect(again.ok, "\(again.stderr)")
        #expect(again.stdout.contains("0 written"), "\(again.stdout)")
        try sh("cmp \(d.path) \(target)")
    }

    /// The first copy of a mostly empty disk writes only the non-zero chunks
    /// and leaves the rest as holes.
    @Test(.requiresRoot) func firstCopySkipsZeroChunks() throws {
        let h = try Harness("sparse")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 64)
        try h.writeDirect(d, offset: 5 << 20, length: 1 << 20)
        let target = h.dir + "/mirror.img"
        let r = try h.agent(["mirror", "--disk", d.path, "--to", target, "--state-dir", h.stateDir, "--once"])
        #expect(r.ok, "\(r.stderr)")
        try sh("cmp \(d.path) \(target)")
        let allocatedKiB = UInt64(try sh("du -k \(target) | cut -f1")) ?? .max
        #expect(allocatedKiB <= 1100, "mirror allocates \(allocatedKiB) KiB for 1 MiB of data")
        #expect(r.stdout.contains("1008 zero chunks skipped"), "\(r.stdout)")
    }

    /// Every copy path gives an identical mirror: the zero-copy io_uring
    /// pipeline (O_DIRECT target), the buffered path (tmpfs refuses O_DIRECT),
    /// and pread/pwrite when io_uring is disabled.
    @Test(.requiresRoot, arguments: ["pipeline", "tmpfs", "no-io-uring"])
    func everyCopyPathGivesAnIdenticalMirror(_ path: String) throws {
        let h = try Harness("paths")
        defer { h.close() }
        let d = try h.loop(sizeMiB: 48)
        try sh("dd if=/dev/urandom of=\(d.path) bs=1M count=5 seek=3 oflag=direct status=none")
        try h.writeDirect(d, offset: (20 << 20) + 65536, length: 4096)
        let target = path == "tmpfs" ? "/dev/shm/tidemark-test-\(getpid())-\(d.name).img" : h.dir + "/mirror.img"
        defer { try? FileManager.default.removeItem(atPath: target) }
        let env = path == "no-io-uring" ? ["TIDEMARK_DISABLE_IO_URING": "1"] : [:]
        let r = try h.agent(["mirror", "--disk", d.path, "--to", target, "--state-dir", h.stateDir, "--once"], extraEnv: env)
        #expect(r.ok, "\(r.stderr)")
        try sh("cmp \(d.path) \(target)")
        // A delta through the same path.
        try h.writeDirect(d, offset: 40 << 20, length: 8192)
        let again = try h.agent(["mirror", "--disk", d.path, "--to", target, "--state-dir", h.stateDir, "--once"], extraEnv: env)
        #expect(again.ok, "\(again.stderr)")
        #expect(again.stdout.contains("65536 written"), "\(again.stdout)")
        try sh("cmp \(d.path) \(target)")
    }
}
