import Foundation
import Glibc
import Testing
import TidemarkTesting

/// Two loop disks with ext4, both protected by one agent, a real server:
/// machine points (every disk frozen together, one point id on each) and
/// what they guarantee that points of each disk do not.
final class MachineWorld: @unchecked Sendable {
    let h: Harness
    let tls: String
    let disks: [LoopDevice]
    let mounts: [String]
    var mounted: [String] = []
    var server: BackgroundProcess?
    var agent: BackgroundProcess?
    var serverPort: UInt16 = 0
    var loads: [BackgroundProcess] = []
    /// Run first by `close` (thaws, kills of hooks).
    var cleanups: [() -> Void] = []

    init(_ tag: String, diskMiB: UInt64 = 32) throws {
        h = try Harness(tag)
        tls = h.dir + "/tls"
        let certs = try run([FileManager.default.currentDirectoryPath + "/scripts/make-certs.sh", tls, "--agent", "agent-it"])
        guard certs.ok else { throw TestFailure("make-certs.sh failed: \(certs.stderr)") }
        disks = [try h.loop(sizeMiB: diskMiB, directIO: false), try h.loop(sizeMiB: diskMiB, directIO: false)]
        mounts = [h.dir + "/mnt-a", h.dir + "/mnt-b"]
        for (d, m) in zip(disks, mounts) {
            try sh("mkfs.ext4 -q -F \(d.path) && mkdir -p \(m) && mount \(d.path) \(m)")
            mounted.append(m)
        }
        // Ground truth: each disk's part of a point copies that disk while it is frozen.
        try setFrozenHook("dd if=\"$TIDEMARK_DISK\" of=\(h.dir)/truth-$(basename \"$TIDEMARK_DISK\").img bs=1M iflag=direct status=none")
    }

    func setFrozenHook(_ body: String) throws {
        try "#!/bin/sh\n\(body)\n".write(toFile: h.dir + "/frozen-hook.tmp", atomically: true, encoding: .utf8)
        try sh("chmod 755 \(h.dir)/frozen-hook.tmp && mv \(h.dir)/frozen-hook.tmp \(h.dir)/frozen-hook.sh")
    }

    var target: String { h.dir + "/target" }
    var socket: String { h.dir + "/agent.sock" }

    func startServer() throws {
        try """
        listen: 127.0.0.1:0
        tls:
          ca: \(tls)/ca.crt
          cert: \(tls)/server.crt
          key: \(tls)/server.key
        spool_dir: \(h.dir)/spool
        target:
          path: \(target)
        log_level: debug
        """.write(toFile: h.dir + "/server.yaml", atomically: true, encoding: .utf8)
        let s = try BackgroundProcess([TestEnv.binary("tidemark-server"), "run", "--config", h.dir + "/server.yaml"],
                                      env: h.env, logDir: h.dir)
        server = s
        try s.waitForOutput("listening on")
        let line = s.stdout.split(separator: "\n").first { $0.contains("listening on") }!
        serverPort = UInt16(line.split(separator: ":").last!)!
    }

    func startAgent(freezeTimeoutMs: Int = 20_000, crashIntervalSeconds: Int = 0, env: [String: String] = [:],
                    hooks: (preFreeze: String, postThaw: String)? = nil, bandwidthLimit: String? = nil,
                    diskHooks: [(preFreeze: String, postThaw: String)]? = nil, replication: [String] = []) throws {
        // Disks with their own hooks are listed in the file as maps; else on the command line.
        let diskList = diskHooks.map { own in
            "disks:\n" + zip(disks, own).map { "  - device: \($0.path)\n    pre_freeze_hook: \($1.preFreeze)\n    post_thaw_hook: \($1.postThaw)" }
                .joined(separator: "\n")
        } ?? ""
        try """
        \(diskList)
        agent_id: agent-it
        state_dir: \(h.stateDir)
        drain_interval_ms: 50
        replication:
          server: 127.0.0.1:\(serverPort)
          ca: \(tls)/ca.crt
          cert: \(tls)/agent-it.crt
          key: \(tls)/agent-it.key
          replication_key: \(tls)/replication.key
          segment_size: 1m
          inflight_bytes: 16m
        \(bandwidthLimit.map { "  bandwidth_limit: \($0)" } ?? "")
        \(replication.map { "  " + $0 }.joined(separator: "\n"))
        policy:
          crash_consistent_interval: \(crashIntervalSeconds)
          app_consistent_interval: 0
          freeze_timeout_ms: \(freezeTimeoutMs)
        \(hooks.map { "  pre_freeze_hook: \($0.preFreeze)\n  post_thaw_hook: \($0.postThaw)" } ?? "")
        control_socket: \(socket)
        log_level: debug
        """.write(toFile: h.dir + "/agent.yaml", atomically: true, encoding: .utf8)
        let a = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "run", "--config", h.dir + "/agent.yaml"]
                                      + (diskHooks == nil ? ["--disk", disks[0].path, "--disk", disks[1].path] : []),
                                      env: h.env.merging(["TIDEMARK_TEST_FROZEN_HOOK": h.dir + "/frozen-hook.sh"].merging(env) { $1 }) { $1 },
                                      logDir: h.dir)
        agent = a
        try a.waitForOutput("replicating")
    }

    var logs: String {
        "\n--- agent ---\n\(agent?.stderr.suffix(6000) ?? "")\n--- server ---\n\(server?.stderr.suffix(3000) ?? "")"
    }

    func waitFor(_ what: String, timeoutSeconds: Double, _ condition: () throws -> Bool) throws {
        do {
            try IntegrationTests.waitFor(what, timeoutSeconds: timeoutSeconds, condition)
        } catch let e as TestFailure {
            throw TestFailure("\(e)\(logs)")
        }
    }

    /// The disk ids the agent uses, in disk order (from its log).
    func diskIDs() throws -> [String] {
        var ids: [String] = []
        try waitFor("the agent names its disks", timeoutSeconds: 30) {
            let lines = (agent?.stderr ?? "").split(separator: "\n").filter { $0.contains(" chunks to ") }
            ids = disks.map { d in
                lines.first { $0.contains("\(d.path): ") }.flatMap { line in
                    line.range(of: " as ", options: .backwards).map { String(line[$0.upperBound...].prefix { !$0.isWhitespace }) }
                } ?? ""
            }
            return !ids.contains("")
        }
        return ids
    }

    /// `tidemarkctl point create` (a machine point without `disk`); the id
    /// and the whole output. Keeps each disk's frozen copy as
    /// truth-ID-LOOP.img.
    func point(disk: LoopDevice? = nil, machineFlag: Bool = false, appConsistent: Bool = false) throws -> (id: String, output: String) {
        var args = [TestEnv.binary("tidemarkctl"), "point", "create", "--socket", socket]
        if let disk { args += ["--disk", disk.path] }
        if machineFlag { args.append("--machine") }
        if appConsistent { args.append("--app-consistent") }
        let r = try run(args)
        guard r.ok else { throw TestFailure("point create failed: \(r.stderr)\(logs)") }
        let id = String(r.stdout.split(separator: " ")[1])
        for d in disk.map({ [$0] }) ?? disks {
            try sh("mv \(h.dir)/truth-\(d.name).img \(h.dir)/truth-\(id)-\(d.name).img")
        }
        return (id, r.stdout)
    }

    /// The complete points of the target (`points list --json`).
    func listed() throws -> [String: Any] {
        let r = try run([TestEnv.binary("tidemarkctl"), "points", "list", "--target", target, "--json"])
        guard r.ok, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw TestFailure("points list failed: \(r.stdout) \(r.stderr)")
        }
        return o
    }

    /// Whether every id is a complete point of every disk in `diskIDs`.
    func committed(_ ids: [(id: String, diskID: String)]) throws -> Bool {
        let points = try listed()["points"] as? [[String: Any]] ?? []
        let have = Set(points.map { "\($0["id"] as? String ?? "") \($0["disk_id"] as? String ?? "")" })
        return ids.allSatisfy { have.contains("\($0.id) \($0.diskID)") }
    }

    /// Recovers disk `diskID` at point `id` to an image; returns its path.
    func recover(_ id: String, diskID: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> String {
        let out = h.dir + "/rec-\(id)-\(diskID).img"
        let r = try run([TestEnv.binary("tidemarkctl"), "recover", "--point", id, "--disk", diskID, "--to", out,
                         "--target", target, "--key", tls + "/replication.key"])
        guard r.ok else { throw TestFailure("recover \(id) --disk \(diskID): \(r.stderr)") }
        return out
    }

    /// The last number in /counter of an ext4 image (debugfs, no mount).
    static func counter(_ image: String) throws -> Int {
        let r = try run(["/sbin/debugfs", "-R", "cat /counter", image])
        guard r.ok else { throw TestFailure("debugfs \(image): \(r.stderr)") }
        let last = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        guard let n = Int(last.trimmingCharacters(in: .whitespaces)) else {
            throw TestFailure("no counter in \(image): '\(r.stdout.suffix(200))'")
        }
        return n
    }

    /// A writer that appends i to /counter of disk A, fsyncs, then the same
    /// i to /counter of disk B, fsyncs, i = 1, 2, …
    func startCounterWriter() throws -> BackgroundProcess {
        let p = try BackgroundProcess(["/bin/sh", "-c", """
            i=0
            while :; do
              i=$((i+1))
              printf '%d\\n' $i | dd of=\(mounts[0])/counter oflag=append conv=notrunc,fsync status=none || exit 1
              printf '%d\\n' $i | dd of=\(mounts[1])/counter oflag=append conv=notrunc,fsync status=none || exit 1
            done
            """], logDir: h.dir)
        loads.append(p)
        return p
    }

    var freezeRecords: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: h.sandbox.runDir)) ?? []).filter { $0.hasPrefix("frozen-") }
    }

    func close() {
        for c in cleanups.reversed() { c() }
        for m in mounts { _ = try? run(["/sbin/fsfreeze", "-u", m]) }
        for l in loads { l.stop(timeoutSeconds: 10) }
        agent?.stop()
        server?.stop()
        for m in mounted { _ = try? sh("umount \(m)") }
        h.close()
    }
}

@Suite(.serialized) struct MachinePointTests {
    /// The writer appends i to A, then i to B, each fsynced: at any one
    /// instant B holds i - 1 or i when A holds i. Machine points recover to
    /// such an instant on every disk; points of each disk taken one after
    /// the other do not (measured and printed). Each machine point's images
    /// equal the disks as they were frozen, and fsck finds them clean.
    @Test(.requiresRoot) func machinePointsAreConsistentAcrossDisks() throws {
        let w = try MachineWorld("machine-consistent")
        defer { w.close() }
        try w.startServer()
        try w.startAgent()
        let ids = try w.diskIDs()
        let writer = try w.startCounterWriter()
        try w.waitFor("the writer is under way", timeoutSeconds: 30) {
            ((try? String(contentsOfFile: w.mounts[1] + "/counter", encoding: .utf8)) ?? "").split(separator: "\n").count >= 20
        }
        let rounds = 4
        var machinePoints: [String] = []
        var diskPairs: [(a: String, b: String)] = []
        for round in 0..<rounds {
            let (id, out) = try w.point(machineFlag: round == 0)
            #expect(id.hasPrefix("m2-"), "\(out)")
            #expect(out.contains("of 2 disks at one instant") && out.contains(ids[0]) && out.contains(ids[1]), "\(out)")
            machinePoints.append(id)
            usleep(200_000)
            // Points of each disk, one right after the other.
            let a = try w.point(disk: w.disks[0]).id
            let b = try w.point(disk: w.disks[1]).id
            #expect(a.hasPrefix("p-") && b.hasPrefix("p-"))
            diskPairs.append((a, b))
            usleep(200_000)
        }
        #expect(writer.process.isRunning, "the writer stopped: \(writer.stderr)")
        writer.stop(timeoutSeconds: 10)

        var wanted = machinePoints.flatMap { id in ids.map { (id, $0) } }
        wanted += diskPairs.flatMap { [($0.a, ids[0]), ($0.b, ids[1])] }
        try w.waitFor("every point is committed", timeoutSeconds: 120) { try w.committed(wanted) }

        for id in machinePoints {
            var counters: [Int] = []
            for (i, d) in w.disks.enumerated() {
                let image = try w.recover(id, diskID: ids[i])
                let cmp = try run(["/usr/bin/cmp", image, w.h.dir + "/truth-\(id)-\(d.name).img"])
                #expect(cmp.ok, "machine point \(id) of \(d.path) does not match the disk as it was frozen: \(cmp.stdout)\(w.logs)")
                let fsck = try run(["/sbin/fsck.ext4", "-n", "-f", image])
                #expect(fsck.ok, "fsck -n on \(id) of \(d.path): \(fsck.stdout) \(fsck.stderr)")
                counters.append(try MachineWorld.counter(image))
                try? FileManager.default.removeItem(atPath: image)
            }
            let (a, b) = (counters[0], counters[1])
            #expect(a == b || a == b + 1, "machine point \(id): disk A's counter \(a), disk B's \(b) — not one instant\(w.logs)")
        }
        var violations: [Int] = []
        for (pa, pb) in diskPairs {
            let a = try MachineWorld.counter(try w.recover(pa, diskID: ids[0]))
            let b = try MachineWorld.counter(try w.recover(pb, diskID: ids[1]))
            if !(a == b || a == b + 1) { violations.append(a - b) }
        }
        print("machine points: \(machinePoints.count) of \(machinePoints.count) consistent across both disks; points of each disk taken one after the other: \(violations.count) of \(diskPairs.count) pairs inconsistent (A - B = \(violations))")

        // Grouped in the listing, whole; recover needs --disk.
        let list = try w.listed()
        let groups = list["machine_points"] as? [[String: Any]] ?? []
        for id in machinePoints {
            let g = groups.first { $0["id"] as? String == id }
            #expect(g?["complete"] as? Bool == true && g?["disks_expected"] as? Int == 2, "\(String(describing: g))")
            #expect(Set((g?["disks"] as? [[String: Any]] ?? []).compactMap { $0["disk_id"] as? String }) == Set(ids))
        }
        let diskPointGrouped = groups.contains { g in diskPairs.contains { $0.a == g["id"] as? String || $0.b == g["id"] as? String } }
        #expect(!diskPointGrouped, "a point of one disk is listed as a machine point: \(groups)")
        let text = try run([TestEnv.binary("tidemarkctl"), "points", "list", "--target", w.target])
        #expect(text.ok && text.stdout.contains("MACHINE POINT") && text.stdout.contains("2 of 2"), "\(text.stdout)")
        let both = try run([TestEnv.binary("tidemarkctl"), "point", "create", "--machine", "--disk", w.disks[0].path, "--socket", w.socket])
        #expect(!both.ok && both.stderr.contains("exclude each other"), "\(both.stderr)")
        let bare = try run([TestEnv.binary("tidemarkctl"), "recover", "--point", machinePoints[0], "--to", w.h.dir + "/x.img",
                            "--target", w.target, "--key", w.tls + "/replication.key"])
        #expect(!bare.ok && bare.stderr.contains("is a machine point of 2 disks") && bare.stderr.contains("--disk"), "\(bare.stderr)")
    }

    /// One disk cannot be tagged in time (its part under the freeze takes
    /// longer than the bound): the machine point fails naming that disk, no
    /// disk holds it, both filesystems are thawed, and the next machine
    /// point is made — with no gap in either disk's sequences.
    @Test(.requiresRoot) func aDiskThatCannotBeTaggedAbandonsTheMachinePointOnEveryDisk() throws {
        let w = try MachineWorld("machine-abandon")
        defer { w.close() }
        try w.startServer()
        try w.startAgent(freezeTimeoutMs: 1_500)
        let ids = try w.diskIDs()
        let slow = w.disks[1]
        try w.setFrozenHook("""
            case "$TIDEMARK_DISK" in \(slow.path)) sleep 3;; esac
            dd if="$TIDEMARK_DISK" of=\(w.h.dir)/truth-$(basename "$TIDEMARK_DISK").img bs=1M iflag=direct status=none
            """)
        try sh("echo before > \(w.mounts[0])/f && echo before > \(w.mounts[1])/f && sync")
        let r = try run([TestEnv.binary("tidemarkctl"), "point", "create", "--socket", w.socket])
        #expect(!r.ok, "the point was made: \(r.stdout)")
        #expect(r.stderr.contains("no machine point was created"), "\(r.stderr)")
        #expect(r.stderr.contains("before \(slow.path) (\(ids[1])) (still draining under the freeze) could be tagged"), "the slow disk is named, and why: \(r.stderr)")
        #expect(!r.stderr.contains("before \(w.disks[0].path)"), "the ready disk is not blamed: \(r.stderr)")
        #expect(r.stderr.contains("was abandoned on all 2 disks (none was tagged)"), "\(r.stderr)")
        let failed = try #require(r.stderr.split(separator: " ").first { $0.hasPrefix("m2-") }.map(String.init), "no point id in \(r.stderr)")
        // Thawed: both filesystems take writes.
        try sh("timeout 10 sh -c 'echo after > \(w.mounts[0])/f && echo after > \(w.mounts[1])/f && sync'")

        try w.setFrozenHook("dd if=\"$TIDEMARK_DISK\" of=\(w.h.dir)/truth-$(basename \"$TIDEMARK_DISK\").img bs=1M iflag=direct status=none")
        let (next, _) = try w.point()
        try w.waitFor("the next machine point is committed", timeoutSeconds: 60) { try w.committed(ids.map { (next, $0) }) }
        let points = try w.listed()["points"] as? [[String: Any]] ?? []
        let holding = points.filter { $0["id"] as? String == failed }
        #expect(holding.isEmpty, "a disk holds the abandoned point \(failed): \(holding)")
        for id in ids {
            let base = w.target + "/disks/" + id
            let segs = try FileManager.default.contentsOfDirectory(atPath: base + "/segments").compactMap { UInt64($0.dropLast(4)) }.sorted()
            #expect(!segs.isEmpty && segs == Array(1...UInt64(segs.count)), "\(id): stored sequences have a gap: \(segs)")
        }
        let serverLog = w.server?.stderr ?? ""
        #expect(!serverLog.contains("out of order"), "the server saw a sequence out of order\(w.logs)")
        for (i, d) in w.disks.enumerated() {
            let image = try w.recover(next, diskID: ids[i])
            let cmp = try run(["/usr/bin/cmp", image, w.h.dir + "/truth-\(next)-\(d.name).img"])
            #expect(cmp.ok, "\(next) of \(d.path): \(cmp.stdout)")
        }
    }

    /// A resync that starts under the freeze (here: every drain under a
    /// freeze sees a skipped kernel probe, through the test switch) is
    /// waited for while it can end within the freeze — on these small disks
    /// it does, and the point is made and equals the frozen disks — and
    /// otherwise abandons the point at once, long before the bound, naming
    /// the resync on each disk (here: the server is stopped, so the
    /// comparison cannot move); both filesystems are thawed, and the next
    /// point is made once the server is back.
    @Test(.requiresRoot) func aResyncUnderTheFreezeIsWaitedForOnlyWhileItCanEndWithinIt() throws {
        let w = try MachineWorld("machine-resync")
        defer { w.close() }
        try w.startServer()
        try w.startAgent(freezeTimeoutMs: 20_000, env: ["TIDEMARK_TEST_FAKE_RECURSION_MISS": "freeze"])
        let ids = try w.diskIDs()
        try w.waitFor("the initial copies are done", timeoutSeconds: 120) {
            (w.agent?.stderr ?? "").components(separatedBy: "resync of ").filter { $0.contains(" complete") }.count >= 2
        }
        func resyncsStarted() -> Int { (w.agent?.stderr ?? "").components(separatedBy: "the whole disk counts as dirty").count - 1 }
        func pointMadeAndEqual(_ what: String) throws {
            let before = resyncsStarted()
            var made: String?
            try w.waitFor(what, timeoutSeconds: 120) {
                // Refused while an earlier resync still compares.
                do { made = try w.point().id } catch { return false }
                return true
            }
            let id = try #require(made)
            #expect(resyncsStarted() >= before + 2, "each disk's drain under the freeze started a resync\(w.logs)")
            try w.waitFor("\(what): committed", timeoutSeconds: 60) { try w.committed(ids.map { (id, $0) }) }
            for (i, d) in w.disks.enumerated() {
                let image = try w.recover(id, diskID: ids[i])
                let cmp = try run(["/usr/bin/cmp", image, w.h.dir + "/truth-\(id)-\(d.name).img"])
                #expect(cmp.ok, "\(id) of \(d.path): \(cmp.stdout)")
            }
        }
        try sh("echo one > \(w.mounts[0])/f && echo one > \(w.mounts[1])/f && sync")
        try pointMadeAndEqual("a point whose resyncs end within the freeze")

        // The server stopped: the comparison cannot move.
        try sh("echo two > \(w.mounts[0])/f && echo two > \(w.mounts[1])/f && sync")
        Thread.sleep(forTimeInterval: 1) // sent and acknowledged (drains every 50 ms)
        let server = try #require(w.server)
        kill(server.pid, SIGSTOP)
        defer { kill(server.pid, SIGCONT) }
        let t0 = Date()
        let r = try run([TestEnv.binary("tidemarkctl"), "point", "create", "--socket", w.socket])
        let seconds = Date().timeIntervalSince(t0)
        #expect(!r.ok, "the point was made: \(r.stdout)")
        #expect(r.stderr.contains("cannot be tagged under this freeze") && r.stderr.contains("a resync compares the disk with the target"), "\(r.stderr)\(w.logs)")
        #expect(r.stderr.contains("it compared nothing in"), "\(r.stderr)")
        for d in w.disks { #expect(r.stderr.contains("\(d.path) ("), "\(d.path) is named: \(r.stderr)") }
        #expect(r.stderr.contains("thawed at once") && r.stderr.contains("abandoned on all 2 disks (none was tagged)"), "\(r.stderr)")
        #expect(r.stderr.contains("once the resync is done"), "\(r.stderr)")
        #expect(seconds < 15, "the point held on for \(seconds) s: the freeze bound is 20 s, the abandon should not wait for it")
        #expect(w.agent?.stderr.contains("cannot be tagged under this freeze") == true, "the agent's log says why\(w.logs)")
        try sh("timeout 10 sh -c 'echo three > \(w.mounts[0])/f && echo three > \(w.mounts[1])/f && sync'")
        kill(server.pid, SIGCONT)

        try pointMadeAndEqual("a point once the server is back")
    }

    /// An app-consistent point whose pre-freeze hook makes the application
    /// write 256 MiB (a database's checkpoint): what it wrote is read after
    /// the hook and before the freeze, so little is left to read under the
    /// freeze; the hooks learn the point's id, class and disks; the
    /// post-thaw hook runs once; the point equals the frozen disk.
    @Test(.requiresRoot) func whatThePreFreezeHookWritesIsReadBeforeTheFreeze() throws {
        let w = try MachineWorld("app-settle", diskMiB: 384)
        defer { w.close() }
        let hookEnv = w.h.dir + "/hook-env"
        try """
            #!/bin/sh
            env | grep '^TIDEMARK_' | sort > \(hookEnv)
            dd if=/dev/urandom of=\(w.mounts[0])/checkpoint bs=1M count=256 status=none
            """.write(toFile: w.h.dir + "/pre-freeze.sh", atomically: true, encoding: .utf8)
        try "#!/bin/sh\necho thawed >> \(w.h.dir)/post-thaw-ran\n".write(toFile: w.h.dir + "/post-thaw.sh", atomically: true, encoding: .utf8)
        try sh("chmod 755 \(w.h.dir)/pre-freeze.sh \(w.h.dir)/post-thaw.sh")
        try w.startServer()
        // A link of 32 MB/s: the hook's 256 MiB take about 7 s to send, so
        // what is not read before the freeze would be read under it.
        try w.startAgent(hooks: (w.h.dir + "/pre-freeze.sh", w.h.dir + "/post-thaw.sh"), bandwidthLimit: "32m")
        let ids = try w.diskIDs()
        let disk = w.disks[0]
        let (id, output) = try w.point(disk: disk, appConsistent: true)
        #expect(output.contains("app-consistent"), "\(output)")
        let line = try #require((w.agent?.stderr ?? "").split(separator: "\n").first { $0.contains("recovery point \(id)") && $0.contains("tagged at") },
                                "no tag line\(w.logs)")
        #expect(line.contains("its writes read before the freeze in"), "\(line)")
        let underFreeze = try #require(line.components(separatedBy: "; ").last?.split(separator: " ").first.flatMap { UInt64($0) }, "\(line)")
        #expect(underFreeze < 64 << 20, "\(underFreeze) bytes were left to read under the freeze; the hook's 256 MiB should have been read before it: \(line)")
        let env = try String(contentsOfFile: hookEnv, encoding: .utf8)
        #expect(env.contains("TIDEMARK_POINT_ID=\(id)\n") && env.contains("TIDEMARK_POINT_CLASS=app-consistent\n")
                && env.contains("TIDEMARK_DISK=\(disk.path)\n") && env.contains("TIDEMARK_DISK_IDS=\(ids[0])\n"), "\(env)")
        #expect(try String(contentsOfFile: w.h.dir + "/post-thaw-ran", encoding: .utf8) == "thawed\n", "the post-thaw hook runs once")
        try w.waitFor("the point is committed", timeoutSeconds: 120) { try w.committed([(id, ids[0])]) }
        let image = try w.recover(id, diskID: ids[0])
        let cmp = try run(["/usr/bin/cmp", image, w.h.dir + "/truth-\(id)-\(disk.name).img"])
        #expect(cmp.ok, "\(id): \(cmp.stdout)")
    }

    /// Each disk's own hooks: each runs once with its disk in its
    /// environment; a failing pre-freeze hook fails the point, and the
    /// post-thaw hook of the disk whose pre-freeze hook had run runs too;
    /// once both succeed, the point is made and both post-thaw hooks run.
    @Test(.requiresRoot) func eachDiskRunsItsOwnHooks() throws {
        let w = try MachineWorld("disk-hooks")
        defer { w.close() }
        let dir = w.h.dir
        for i in 0..<2 {
            try """
                #!/bin/sh
                env | grep '^TIDEMARK_' | sort > \(dir)/env-\(i)
                echo pre >> \(dir)/ran-\(i)
                [ -e \(dir)/fail-\(i) ] && exit 3
                exit 0
                """.write(toFile: dir + "/pre-\(i).sh", atomically: true, encoding: .utf8)
            try "#!/bin/sh\necho post >> \(dir)/ran-\(i)\n".write(toFile: dir + "/post-\(i).sh", atomically: true, encoding: .utf8)
        }
        try sh("chmod 755 \(dir)/pre-*.sh \(dir)/post-*.sh && touch \(dir)/fail-1")
        try w.startServer()
        try w.startAgent(diskHooks: (0..<2).map { (dir + "/pre-\($0).sh", dir + "/post-\($0).sh") })
        let ids = try w.diskIDs()
        func ran(_ i: Int) -> String { (try? String(contentsOfFile: dir + "/ran-\(i)", encoding: .utf8)) ?? "" }

        let failed = try run([TestEnv.binary("tidemarkctl"), "point", "create", "--socket", w.socket, "--app-consistent"])
        #expect(!failed.ok && failed.stderr.contains("pre-freeze hook \(dir)/pre-1.sh failed"), "\(failed.stderr)")
        // Disk 0's application was quiesced: its post-thaw hook ran; disk 1's hook failed: its did not.
        #expect(ran(0) == "pre\npost\n" && ran(1) == "pre\n", "\(ran(0)) | \(ran(1))")
        let env0 = try String(contentsOfFile: dir + "/env-0", encoding: .utf8)
        #expect(env0.contains("TIDEMARK_HOOK_DISKS=\(w.disks[0].path)\n") && env0.contains("TIDEMARK_DISK=\(w.disks[0].path)\n")
                && env0.contains("TIDEMARK_DISKS=\(w.disks[0].path) \(w.disks[1].path)\n"), "\(env0)")
        let env1 = try String(contentsOfFile: dir + "/env-1", encoding: .utf8)
        #expect(env1.contains("TIDEMARK_DISK=\(w.disks[1].path)\n") && env1.contains("TIDEMARK_DISK_ID=\(ids[1])\n"), "\(env1)")

        try sh("rm \(dir)/fail-1 \(dir)/ran-0 \(dir)/ran-1")
        let (id, output) = try w.point(appConsistent: true)
        #expect(output.contains("app-consistent"), "\(output)")
        #expect(ran(0) == "pre\npost\n" && ran(1) == "pre\npost\n", "\(ran(0)) | \(ran(1))")
        try w.waitFor("the point is committed", timeoutSeconds: 120) { try w.committed([(id, ids[0]), (id, ids[1])]) }
    }

    /// The host's budget (`replication.host_inflight_bytes`) bounds the
    /// segments both disks hold together, though each disk's own window
    /// would allow as much again: over a link too slow for what is written,
    /// the held bytes reach the budget and never pass it, both disks keep
    /// committing, and a point afterwards equals the frozen disks.
    @Test(.requiresRoot) func theHostBudgetBoundsWhatAllDisksHold() throws {
        let w = try MachineWorld("host-budget", diskMiB: 128)
        defer { w.close() }
        try w.startServer()
        // Each disk's window 16 MiB, the host's 16 MiB; each link 4 MB/s.
        try w.startAgent(bandwidthLimit: "4m", replication: ["host_inflight_bytes: 16m"])
        let ids = try w.diskIDs()
        let budget: UInt64 = 16 << 20
        try sh("for m in \(w.mounts[0]) \(w.mounts[1]); do dd if=/dev/urandom of=$m/big bs=1M count=40 status=none; done; sync")
        var peakHeld: UInt64 = 0, peakWindows: UInt64 = 0
        var committed: [[UInt64]] = [[], []]
        let end = Date().addingTimeInterval(6)
        while Date() < end {
            let r = try run([TestEnv.binary("tidemarkctl"), "status", "--json", "--socket", w.socket])
            let status = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stderr)")
            let host = try #require(status["host_inflight"] as? [String: Any], "\(status)")
            #expect((host["budget_bytes"] as? NSNumber)?.uint64Value == budget)
            let held = (host["held_bytes"] as? NSNumber)?.uint64Value ?? 0
            peakHeld = max(peakHeld, (host["peak_bytes"] as? NSNumber)?.uint64Value ?? 0)
            let disks = status["disks"] as? [[String: Any]] ?? []
            let windows = disks.reduce(UInt64(0)) { $0 + (($1["window_bytes"] as? NSNumber)?.uint64Value ?? 0) }
            peakWindows = max(peakWindows, windows)
            #expect(held <= budget && windows <= budget, "held \(held), windows \(windows)")
            for d in disks {
                if let i = ids.firstIndex(of: d["disk_id"] as? String ?? "") {
                    committed[i].append((d["committed_sequence"] as? NSNumber)?.uint64Value ?? 0)
                }
            }
            usleep(100_000)
        }
        // The budget was what held the disks back, and it held.
        #expect(peakHeld <= budget && peakHeld >= budget / 2, "peak \(peakHeld) of \(budget)")
        #expect(peakWindows >= budget / 4, "the windows held at most \(peakWindows) bytes together")
        // Neither disk was starved: both committed more while the other was busy.
        for i in 0..<2 { #expect((committed[i].last ?? 0) > (committed[i].first ?? 0), "disk \(i): \(committed[i])") }
        let (id, _) = try w.point()
        try w.waitFor("the point is committed", timeoutSeconds: 120) { try w.committed([(id, ids[0]), (id, ids[1])]) }
        for (i, d) in w.disks.enumerated() {
            let image = try w.recover(id, diskID: ids[i])
            let cmp = try run(["/usr/bin/cmp", image, w.h.dir + "/truth-\(id)-\(d.name).img"])
            #expect(cmp.ok, "\(id) disk \(i): \(cmp.stdout)")
        }
    }

    /// With several disks, the policy's cadence makes machine points.
    @Test(.requiresRoot) func thePolicyMakesMachinePoints() throws {
        let w = try MachineWorld("machine-policy")
        defer { w.close() }
        try w.startServer()
        try w.startAgent(crashIntervalSeconds: 2)
        let ids = try w.diskIDs()
        try sh("echo x > \(w.mounts[0])/f && echo y > \(w.mounts[1])/f")
        try w.waitFor("two machine points of the policy are committed", timeoutSeconds: 60) {
            let groups = try w.listed()["machine_points"] as? [[String: Any]] ?? []
            return groups.filter { $0["complete"] as? Bool == true }.count >= 2
        }
        let groups = try w.listed()["machine_points"] as? [[String: Any]] ?? []
        for g in groups where g["complete"] as? Bool == true {
            #expect(Set((g["disks"] as? [[String: Any]] ?? []).compactMap { $0["disk_id"] as? String }) == Set(ids))
        }
        let points = try w.listed()["points"] as? [[String: Any]] ?? []
        let diskPoints = points.filter { ($0["id"] as? String ?? "").hasPrefix("p-") }
        #expect(diskPoints.isEmpty, "the policy made a point of one disk: \(diskPoints)")
    }
}

/// The freeze bound holds for a machine point as for a point of one disk
/// (docs/points-and-freeze.md): one freeze record and one watchdog arm list
/// every filesystem of every disk; the agent killed (or stopped) while
/// both are frozen, both thaw within the bound.
@Suite(.serialized) struct MachinePointFreezeSafetyTests {
    static let freezeTimeoutMs = 2_000
    static let marginSeconds = 1.5

    /// Starts server and agent with a frozen hook that records its pid and
    /// blocks (one per disk), asks for a machine point in the background and
    /// waits until both hooks run: both filesystems are frozen from then on.
    func freezeBoth(_ w: MachineWorld) throws -> Date {
        try w.setFrozenHook("echo $$ > \(w.h.dir)/hook-$(basename \"$TIDEMARK_DISK\").tmp && mv \(w.h.dir)/hook-$(basename \"$TIDEMARK_DISK\").tmp \(w.h.dir)/hook-$(basename \"$TIDEMARK_DISK\").pid\nexec sleep 300")
        w.cleanups.append {
            for d in w.disks {
                if let s = try? String(contentsOfFile: w.h.dir + "/hook-\(d.name).pid", encoding: .utf8), let pid = Int32(s.trimmingCharacters(in: .whitespacesAndNewlines)) {
                    kill(pid, SIGKILL)
                }
            }
        }
        try w.startServer()
        try w.startAgent(freezeTimeoutMs: Self.freezeTimeoutMs)
        let ctl = try BackgroundProcess([TestEnv.binary("tidemarkctl"), "point", "create", "--socket", w.socket], logDir: w.h.dir)
        w.loads.append(ctl)
        try w.waitFor("both frozen hooks run (both filesystems are frozen)", timeoutSeconds: 120) {
            if w.disks.allSatisfy({ FileManager.default.fileExists(atPath: w.h.dir + "/hook-\($0.name).pid") }) { return true }
            if !ctl.process.isRunning { throw TestFailure("the point ended before the frozen hooks ran: \(ctl.stdout)\(ctl.stderr)") }
            return false
        }
        return Date()
    }

    /// A writer on each frozen filesystem; checks that both are held.
    func blockedWriters(_ w: MachineWorld) throws -> [BackgroundProcess] {
        let writers = try w.mounts.map { m in
            try BackgroundProcess(["/bin/sh", "-c", "echo after > \(m)/written-while-frozen && echo written"], logDir: w.h.dir)
        }
        w.loads += writers
        usleep(300_000)
        for (m, p) in zip(w.mounts, writers) { #expect(p.process.isRunning, "the writer on \(m) was not held: not frozen") }
        return writers
    }

    func finish(_ writers: [BackgroundProcess], by deadline: Date) -> Bool {
        while writers.contains(where: { $0.process.isRunning }) && Date() < deadline { usleep(10_000) }
        return !writers.contains { $0.process.isRunning }
    }

    @Test(.requiresRoot) func agentKilledWhileBothDisksAreFrozenThawsBoth() throws {
        let w = try MachineWorld("machine-freeze-kill")
        defer { w.close() }
        let frozenSince = try freezeBoth(w)
        let records = w.freezeRecords
        #expect(records.count == 1, "one freeze record for the machine point: \(records)")
        if let r = records.first {
            let text = (try? String(contentsOfFile: w.h.sandbox.runDir + "/" + r, encoding: .utf8)) ?? ""
            for m in w.mounts { #expect(text.contains("\t\(m)\n"), "the record lacks \(m): \(text)") }
        }
        let writers = try blockedWriters(w)
        kill(w.agent!.pid, SIGKILL)
        let done = finish(writers, by: frozenSince.addingTimeInterval(Double(Self.freezeTimeoutMs) / 1000 + Self.marginSeconds))
        #expect(done, "a filesystem stayed frozen \(String(format: "%.1f", Date().timeIntervalSince(frozenSince))) s after the agent was killed\(w.logs)")
        if done { for p in writers { #expect(p.stdout.contains("written")) } }
        let log = w.agent?.stderr ?? ""
        for m in w.mounts { #expect(log.contains("freeze watchdog: thawed \(m) ("), "\(m) not thawed by the watchdog\(w.logs)") }
        #expect(log.contains("the agent is gone"), "\(w.logs)")
        try w.waitFor("the watchdog removed the freeze record", timeoutSeconds: 5) { w.freezeRecords.isEmpty }
    }

    @Test(.requiresRoot) func hungAgentThawsBothDisksAtTheBound() throws {
        let w = try MachineWorld("machine-freeze-hang")
        var stopped: Int32?
        w.cleanups.append { if let p = stopped { kill(p, SIGCONT) } }
        defer { w.close() }
        let frozenSince = try freezeBoth(w)
        kill(w.agent!.pid, SIGSTOP)
        stopped = w.agent!.pid
        let writers = try blockedWriters(w)
        let done = finish(writers, by: frozenSince.addingTimeInterval(Double(Self.freezeTimeoutMs) / 1000 + 0.2 + Self.marginSeconds))
        #expect(done, "a filesystem stayed frozen \(String(format: "%.1f", Date().timeIntervalSince(frozenSince))) s with the agent stopped\(w.logs)")
        #expect(Date().timeIntervalSince(frozenSince) >= Double(Self.freezeTimeoutMs) / 1000 / 2, "thawed long before the bound")
        kill(w.agent!.pid, SIGCONT)
        stopped = nil
        let log = w.agent?.stderr ?? ""
        for m in w.mounts { #expect(log.contains("freeze watchdog: thawed \(m) ("), "\(m)\(w.logs)") }
    }
}
