import Foundation
import Testing
import TidemarkTesting

/// The world of the fault tests: certificates from scripts/make-certs.sh, a
/// real server and agent process, ext4 on a real loop device with a frozen
/// hook that keeps the ground truth of each point, and optionally a TCP
/// proxy between them or a spool on its own small tmpfs. `close()` undoes
/// everything (processes by pid, proxy, mounts, loop devices, pins).
final class FaultWorld: @unchecked Sendable {
    let h: Harness
    let tls: String
    let disk: LoopDevice
    let mnt: String
    var spoolDir: String
    var spoolMount: String?
    var mounted = false
    var server: BackgroundProcess?
    var agent: BackgroundProcess?
    var proxy: TCPProxy?
    var serverPort: UInt16 = 0
    var loads: [BackgroundProcess] = []
    /// Everything a test may want to stop before the world goes.
    var cleanups: [() -> Void] = []
    /// With TIDEMARK_TEST_FTRACE=1 (diagnosis only): a tracefs instance
    /// recording every request issued and completed on the disk,
    /// independently of Tidemark's tracer; kept with a failed world.
    var ftraceInstance: String?

    /// `agents`: certificate names to issue besides the agent's own
    /// (`agent-it`); `expiredAgents`: names issued already expired.
    /// `filesystem`: "ext4" (default), "xfs", or "none" (a raw disk, no
    /// filesystem). `staleFreeSpace`: the device is filled with random bytes
    /// before mkfs (which then discards nothing), so free blocks hold old data.
    init(_ tag: String, agents: [String] = [], expiredAgents: [String] = [], spoolTmpfsMiB: Int? = nil, diskMiB: UInt64 = 64,
         filesystem: String = "ext4", staleFreeSpace: Bool = false) throws {
        h = try Harness(tag)
        tls = h.dir + "/tls"
        var args = [FileManager.default.currentDirectoryPath + "/scripts/make-certs.sh", tls, "--agent", "agent-it"]
        for a in agents { args += ["--agent", a] }
        for a in expiredAgents { args += ["--agent-expired", a] }
        let certs = try run(args)
        guard certs.ok else { throw TestFailure("make-certs.sh failed: \(certs.stderr)") }
        disk = try h.loop(sizeMiB: diskMiB, directIO: false)
        mnt = h.dir + "/mnt"
        spoolDir = h.dir + "/spool"
        if staleFreeSpace {
            try sh("dd if=/dev/urandom of=\(disk.path) bs=1M count=\(diskMiB) oflag=direct status=none")
        }
        switch filesystem {
        case "none":
            try sh("dd if=/dev/urandom of=\(disk.path) bs=1M count=8 oflag=direct status=none")
        case "xfs":
            try sh("mkfs.xfs -q -f -K \(disk.path) && mkdir -p \(mnt) && mount \(disk.path) \(mnt)")
            mounted = true
        default:
            try sh("mkfs.ext4 -q -F -E nodiscard \(disk.path) && mkdir -p \(mnt) && mount \(disk.path) \(mnt)")
            mounted = true
        }
        if mounted { try sh("cp -a /usr/include/linux \(mnt)/; sync") }
        if ProcessInfo.processInfo.environment["TIDEMARK_TEST_FTRACE"] == "1",
           let minor = Int(URL(fileURLWithPath: disk.path).lastPathComponent.dropFirst("loop".count)) {
            let inst = "/sys/kernel/tracing/instances/tidemark-\(getpid())-loop\(minor)"
            try sh("mkdir \(inst) && echo mono > \(inst)/trace_clock && echo 16384 > \(inst)/buffer_size_kb && for e in block_rq_issue block_rq_complete; do echo 'dev == \((7 << 20) | minor)' > \(inst)/events/block/$e/filter && echo 1 > \(inst)/events/block/$e/enable; done")
            ftraceInstance = inst
        }
        if let size = spoolTmpfsMiB {
            let m = h.dir + "/spoolfs"
            try sh("mkdir -p \(m) && mount -t tmpfs -o size=\(size)m tidemark-test-spool \(m)")
            spoolMount = m
            spoolDir = m + "/spool"
        }
        try "#!/bin/sh\ndd if=\"$TIDEMARK_DISK\" of=\(h.dir)/truth.img bs=1M iflag=direct status=none\n"
            .write(toFile: h.dir + "/frozen-hook.sh", atomically: true, encoding: .utf8)
        try sh("chmod 755 \(h.dir)/frozen-hook.sh")
    }

    var target: String { h.dir + "/target" }

    func startServer(spoolMaxBytes: String = "1g", uploadMemoryBytes: String = "192m", port: UInt16 = 0,
                     logLevel: String = "debug", cpus: String? = nil, bandwidthLimit: String = "0") throws {
        try """
        listen: 127.0.0.1:\(port)
        tls:
          ca: \(tls)/ca.crt
          cert: \(tls)/server.crt
          key: \(tls)/server.key
        spool_dir: \(spoolDir)
        spool_max_bytes: \(spoolMaxBytes)
        upload_memory_bytes: \(uploadMemoryBytes)
        bandwidth_limit: \(bandwidthLimit)
        target:
          path: \(target)
        log_level: \(logLevel)
        """.write(toFile: h.dir + "/server.yaml", atomically: true, encoding: .utf8)
        let s = try BackgroundProcess(Self.pinned(cpus) + [TestEnv.binary("tidemark-server"), "run", "--config", h.dir + "/server.yaml"],
                                      env: h.env, logDir: h.dir)
        server = s
        try s.waitForOutput("listening on")
        let line = s.stdout.split(separator: "\n").first { $0.contains("listening on") }!
        serverPort = UInt16(line.split(separator: ":").last!)!
    }

    /// `taskset -c CPUS` before a command (taskset execs it: the PID is the
    /// process's own), or nothing.
    static func pinned(_ cpus: String?) -> [String] { cpus.map { ["/usr/bin/taskset", "-c", $0] } ?? [] }

    /// Puts a proxy between the agent (started after this) and the server.
    func startProxy() throws {
        proxy = try TCPProxy(upstreamPort: serverPort)
    }

    /// `replication`: more lines under `replication:` (two-space indented keys).
    func startAgent(ioTimeoutMs: Int = 30_000, inflight: String = "16m", replication: [String] = [],
                    logLevel: String = "debug", cpus: String? = nil, freezeTimeoutMs: Int = 20_000, policy: [String] = []) throws {
        let port = proxy?.port ?? serverPort
        try """
        agent_id: agent-it
        state_dir: \(h.stateDir)
        drain_interval_ms: 50
        replication:
          server: 127.0.0.1:\(port)
          ca: \(tls)/ca.crt
          cert: \(tls)/agent-it.crt
          key: \(tls)/agent-it.key
          replication_key: \(tls)/replication.key
          segment_size: 1m
          inflight_bytes: \(inflight)
          io_timeout_ms: \(ioTimeoutMs)
        \(replication.map { "  " + $0 + "\n" }.joined())policy:
          crash_consistent_interval: 0
          app_consistent_interval: 0
          freeze_timeout_ms: \(freezeTimeoutMs)
        \(policy.map { "  " + $0 + "\n" }.joined())control_socket: \(h.dir)/agent.sock
        log_level: \(logLevel)
        """.write(toFile: h.dir + "/agent.yaml", atomically: true, encoding: .utf8)
        let a = try BackgroundProcess(Self.pinned(cpus) + [TestEnv.binary("tidemark-agent"), "run", "--config", h.dir + "/agent.yaml",
                                       "--disk", disk.path],
                                      env: h.env.merging(["TIDEMARK_TEST_FROZEN_HOOK": h.dir + "/frozen-hook.sh"]) { $1 },
                                      logDir: h.dir)
        agent = a
        try a.waitForOutput("replicating")
    }

    /// The disk id the agent uses (from its log).
    func diskID() throws -> String {
        try waitFor("the agent names its disk", timeoutSeconds: 30) { self.agentDiskID() != nil }
        return agentDiskID()!
    }

    private func agentDiskID() -> String? {
        // "<dev>: N chunks to replicate as ID" or "... to compare with the target as ID"
        guard let log = agent?.stderr, let line = log.split(separator: "\n").first(where: { $0.contains(" chunks to ") }),
              let r = line.range(of: " as ", options: .backwards) else { return nil }
        return String(line[r.upperBound...].prefix { !$0.isWhitespace })
    }

    /// The agent's status of its disk (`tidemarkctl status --json`).
    func diskStatus() throws -> [String: Any] {
        let r = try run([TestEnv.binary("tidemarkctl"), "status", "--json", "--socket", h.dir + "/agent.sock"])
        guard r.ok, let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
              let disk = (object["disks"] as? [[String: Any]])?.first else {
            throw TestFailure("tidemarkctl status failed: \(r.stdout) \(r.stderr)\(logs)")
        }
        return disk
    }

    var logs: String {
        "\n--- agent ---\n\(agent?.stderr.suffix(6000) ?? "")\n--- server ---\n\(server?.stderr.suffix(6000) ?? "")"
    }

    /// `waitFor`, with both processes' logs in the failure: a wait that
    /// times out says what the agent and the server were doing.
    func waitFor(_ what: String, timeoutSeconds: Double, _ condition: () throws -> Bool) throws {
        do {
            try IntegrationTests.waitFor(what, timeoutSeconds: timeoutSeconds, condition)
        } catch let e as TestFailure {
            throw TestFailure("\(e)\(logs)")
        }
    }

    /// Takes a point; keeps the frozen copy as truth-ID.img; returns the id.
    func point() throws -> String {
        let r = try run([TestEnv.binary("tidemarkctl"), "point", "create", "--disk", disk.path, "--socket", h.dir + "/agent.sock"])
        guard r.ok else { throw TestFailure("point create failed: \(r.stderr)\(logs)") }
        let id = String(r.stdout.split(separator: " ")[1])
        try sh("mv \(h.dir)/truth.img \(h.dir)/truth-\(id).img")
        return id
    }

    /// Recovers point `id` from the target and compares it with its frozen truth; fsck -n.
    func recoverAndCompare(_ id: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let out = h.dir + "/rec-\(id).img"
        let r = try run([TestEnv.binary("tidemarkctl"), "recover", "--point", id, "--to", out,
                         "--target", target, "--key", tls + "/replication.key"])
        #expect(r.ok, "recover \(id): \(r.stderr)", sourceLocation: sourceLocation)
        let cmp = try run(["/usr/bin/cmp", out, h.dir + "/truth-\(id).img"])
        if !cmp.ok {
            // Evidence: which 64 KiB chunks differ and by how many bytes, the
            // logs, and with TIDEMARK_TEST_KEEP_FAILED=1 a copy of the world.
            let chunks = (try? run(["/bin/sh", "-c", "cmp -l \(out) \(h.dir)/truth-\(id).img | awk '{print int(($1-1)/65536)}' | uniq -c | head -20"]))?.stdout ?? "?"
            var kept = ""
            if ProcessInfo.processInfo.environment["TIDEMARK_TEST_KEEP_FAILED"] == "1" {
                let keep = "/tmp/tidemark-failed-\(id)"
                _ = try? run(["/bin/sh", "-c", "mkdir -p \(keep) && cp -a \(out) \(h.dir)/truth-\(id).img \(h.dir)/*.log \(h.dir)/*.yaml \(target) \(h.stateDir) \(tls) \(keep)/ 2>/dev/null; for f in \(h.dir)/*; do case $f in *.out|*.err) cp $f \(keep)/;; esac; done"])
                if let inst = ftraceInstance { _ = try? sh("cat \(inst)/trace > \(keep)/ftrace.txt") }
                kept = "\nkept in \(keep)"
            }
            Issue.record("point \(id) does not match the frozen source: \(cmp.stdout)differing bytes per chunk (count chunk):\n\(chunks)\(kept)\(logs)",
                         sourceLocation: sourceLocation)
        }
        let fsck = try run(["/sbin/fsck.ext4", "-n", "-f", out])
        #expect(fsck.ok, "fsck -n on point \(id): \(fsck.stdout) \(fsck.stderr)", sourceLocation: sourceLocation)
        try? FileManager.default.removeItem(atPath: out)
        try? FileManager.default.removeItem(atPath: h.dir + "/truth-\(id).img")
    }

    /// Recovers point `id` and compares what a user can see with its frozen
    /// truth: the recovered filesystem is clean (`fsck -n` / `xfs_repair -n`)
    /// and every file is identical (both mounted read-only, `diff -r`). The
    /// free space need not match: the source's may hold old data. Returns the
    /// number of 64 KiB chunks of the recovered image that are not all zeros.
    @discardableResult
    func recoverAndCompareFiles(_ id: String, filesystem: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
        let out = h.dir + "/rec-\(id).img", truth = h.dir + "/truth-\(id).img"
        let r = try run([TestEnv.binary("tidemarkctl"), "recover", "--point", id, "--to", out,
                         "--target", target, "--key", tls + "/replication.key"])
        #expect(r.ok, "recover \(id): \(r.stderr)", sourceLocation: sourceLocation)
        let a = h.dir + "/mnt-rec", b = h.dir + "/mnt-truth"
        try sh("mkdir -p \(a) \(b)")
        if filesystem == "xfs" {
            // A frozen XFS keeps changes in its log, which `xfs_repair -n`
            // does not replay: mounting once does, as a recovery would.
            try sh("mount -o loop,nouuid \(out) \(a) && umount \(a) && mount -o loop,nouuid \(truth) \(b) && umount \(b)")
        }
        let check = filesystem == "xfs" ? ["/usr/sbin/xfs_repair", "-n", "-f", out] : ["/sbin/fsck.ext4", "-n", "-f", out]
        let fsck = try run(check)
        if !fsck.ok {
            let truthCheck = try run(Array(check.dropLast()) + [truth])
            Issue.record("\(check[0]) on point \(id): \(fsck.stdout) \(fsck.stderr); on the frozen source: \(truthCheck.status) \(truthCheck.stdout) \(truthCheck.stderr)", sourceLocation: sourceLocation)
        }
        let opts = filesystem == "xfs" ? "ro,nouuid" : "ro,noload"
        try sh("mount -o loop,\(opts) \(out) \(a) && mount -o loop,\(opts) \(truth) \(b)")
        defer { _ = try? sh("umount \(a); umount \(b)") }
        let diff = try run(["/usr/bin/diff", "-r", "--no-dereference", a, b])
        #expect(diff.ok, "files of point \(id) differ from the frozen source: \(diff.stdout.prefix(2000))", sourceLocation: sourceLocation)
        let nonZero = try run(["/usr/bin/python3", "-c", """
            import sys
            n = 0
            with open(sys.argv[1], 'rb') as f:
                while True:
                    b = f.read(65536)
                    if not b: break
                    n += b.count(0) != len(b)
            print(n)
            """, out])
        return Int(nonZero.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    /// The sequences stored in the target for `diskID`, and its points' sequences.
    func stored(_ diskID: String) throws -> (segments: [UInt64], points: [UInt64]) {
        let base = target + "/disks/" + diskID
        func seqs(_ dir: String, _ ext: String) throws -> [UInt64] {
            guard FileManager.default.fileExists(atPath: dir) else { return [] }
            return try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(ext) }
                .compactMap { UInt64($0.dropLast(ext.count)) }.sorted()
        }
        return (try seqs(base + "/segments", ".seg"), try seqs(base + "/points", ".point"))
    }

    /// Nothing applied twice, nothing missing: the stored sequences are 1…N
    /// without a gap, and the server never refused the agent's numbering.
    func expectContiguous(_ diskID: String, checkLog: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let (segments, points) = try stored(diskID)
        #expect(!segments.isEmpty, sourceLocation: sourceLocation)
        #expect(segments == Array(1...UInt64(max(1, segments.count))), "stored sequences have a gap: \(segments.prefix(50))…",
                sourceLocation: sourceLocation)
        #expect(points.allSatisfy { segments.contains($0) }, sourceLocation: sourceLocation)
        guard checkLog else { return }
        let log = server?.stderr ?? ""
        #expect(!log.contains("out of order"), "the server saw a sequence out of order\(logs)", sourceLocation: sourceLocation)
        #expect(!log.contains("does not match"), "\(logs)", sourceLocation: sourceLocation)
    }

    /// Writes files on the mounted disk for `seconds` (a background shell).
    func churn(_ seconds: Double, seed: Int) throws -> BackgroundProcess {
        let p = try BackgroundProcess(["/bin/sh", "-c", """
            end=$(( $(date +%s) + \(Int(seconds.rounded(.up))) )); i=0
            while [ $(date +%s) -lt $end ]; do
              i=$((i+1)); head -c $(( (i * 7919 + \(seed)) % 262144 + 4096 )) /dev/urandom > \(mnt)/churn-\(seed)-$((i % 40))
              [ $((i % 10)) = 0 ] && sync
            done
            """], logDir: h.dir)
        loads.append(p)
        return p
    }

    func close() {
        for c in cleanups.reversed() { c() }
        for l in loads { l.stop(timeoutSeconds: 10) }
        agent?.stop()
        proxy?.stop()
        server?.stop()
        if mounted { _ = try? sh("umount \(mnt)") }
        if let inst = ftraceInstance { _ = try? sh("echo 0 > \(inst)/tracing_on; for e in block_rq_issue block_rq_complete; do echo 0 > \(inst)/events/block/$e/enable; done; rmdir \(inst)") }
        if let m = spoolMount { _ = try? sh("umount \(m)") }
        _ = try? sh("chattr -R -i \(target) 2>/dev/null; true")
        h.close()
    }
}

/// Polls `condition` every 50 ms until it holds; throws after the deadline.
func waitFor(_ what: String, timeoutSeconds: Double, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    while Date() < deadline {
        if try condition() { return }
        usleep(50_000)
    }
    throw TestFailure("timed out after \(timeoutSeconds) s waiting until \(what)")
}
