import Foundation
import Testing
import TidemarkTesting

/// An application-consistent point of a real PostgreSQL (Debian's) on a
/// protected ext4, its pre-freeze hook a `CHECKPOINT` (issue 19 §3): the
/// checkpoint's writes are read before the freeze, the point is made while
/// the database takes inserts, and the recovered disk starts as a database
/// holding every row committed before the point was asked for.
@Suite(.serialized) struct PostgresHookTests {
    static let bin = "/usr/lib/postgresql/15/bin"

    @Test(.requiresRoot, .requires("PostgreSQL 15 (Debian's postgresql; scripts/install-deps.sh installs it)",
                                    FileManager.default.isExecutableFile(atPath: bin + "/pg_ctl")))
    func aCheckpointHookMakesARecoverableDatabasePoint() throws {
        let w = try FaultWorld("pg-hook", diskMiB: 512)
        defer { w.close() }
        let data = w.mnt + "/pg", sock = w.mnt + "/pg-sock", port = 20_000 + Int(getpid() % 10_000)
        func pg(_ args: String) throws -> String {
            let r = try run(["/usr/sbin/runuser", "-u", "postgres", "--", "/bin/sh", "-c", args])
            guard r.ok else { throw TestFailure("\(args): \(r.stdout) \(r.stderr)") }
            return r.stdout
        }
        func sql(_ q: String, socket: String = sock, port: Int = port) throws -> String {
            try pg("\(Self.bin)/psql -X -q -t -A -h \(socket) -p \(port) -d postgres -c \"\(q)\"").trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // pg_ctl's postmaster would keep whatever descriptors it inherits
        // (the pipes of `run`): it is started with every one above 2 closed.
        func start(_ dir: String, socket: String, port: Int, _ options: String) throws {
            let args = ["/usr/sbin/runuser", "-u", "postgres", "--", Self.bin + "/pg_ctl", "-D", dir, "-l", socket + "/pg.log", "-w",
                        "-o", "-p \(port) -k \(socket) -c listen_addresses='' " + options, "start"]
            let r = try run(["/usr/bin/python3", "-c", "import os, subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True).returncode)"] + args)
            guard r.ok else { throw TestFailure("PostgreSQL on \(dir) did not start: \((try? String(contentsOfFile: socket + "/pg.log", encoding: .utf8)) ?? "")") }
        }
        try sh("chmod 755 \(w.h.dir) \(w.mnt) && mkdir -p \(data) \(sock) && chown postgres: \(data) \(sock)")
        _ = try pg("\(Self.bin)/initdb -D \(data) -A trust -N >/dev/null")
        try start(data, socket: sock, port: port, "-c shared_buffers=128MB -c max_wal_size=1GB -c checkpoint_timeout=1h")
        w.cleanups.append { _ = try? pg("\(Self.bin)/pg_ctl -D \(data) -m immediate stop >/dev/null 2>&1") }
        _ = try sql("CREATE TABLE t (id bigint PRIMARY KEY, pad text); INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 200000) g")

        // The hook: a checkpoint, which writes the dirty shared buffers.
        let hook = w.h.dir + "/checkpoint.sh"
        try """
            #!/bin/sh
            exec /usr/sbin/runuser -u postgres -- \(Self.bin)/psql -X -q -h \(sock) -p \(port) -d postgres -c CHECKPOINT
            """.write(toFile: hook, atomically: true, encoding: .utf8)
        try sh("chmod 755 \(hook)")
        try w.startServer()
        try w.startAgent(policy: ["pre_freeze_hook: \(hook)"])
        try w.waitFor("the initial copy", timeoutSeconds: 120) { w.agent!.stderr.contains("complete: ") }

        // More rows while the point is made: inserts keep committing.
        let before = Int(try sql("SELECT max(id) FROM t")) ?? 0
        let load = try BackgroundProcess(["/usr/sbin/runuser", "-u", "postgres", "--", "/bin/sh", "-c",
            "i=\(before); while [ $i -lt \(before + 400000) ]; do \(Self.bin)/psql -X -q -h \(sock) -p \(port) -d postgres -c \"INSERT INTO t SELECT g, repeat(md5(g::text), 8) FROM generate_series($((i+1)), $((i+2000))) g\" || exit 1; i=$((i+2000)); done"],
            env: [:], logDir: w.h.dir)
        w.loads.append(load)
        usleep(500_000)
        let asked = Int(try sql("SELECT max(id) FROM t")) ?? 0
        let r = try run([TestEnv.binary("tidemarkctl"), "point", "create", "--disk", w.disk.path, "--app-consistent", "--socket", w.h.dir + "/agent.sock"])
        #expect(r.ok, "app-consistent point: \(r.stderr)\(w.logs)")
        let id = String(r.stdout.split(separator: " ")[1])
        try sh("mv \(w.h.dir)/truth.img \(w.h.dir)/truth-\(id).img")
        load.stop(timeoutSeconds: 10)
        let line = try #require(w.agent!.stderr.split(separator: "\n").first { $0.contains("recovery point \(id)") && $0.contains("tagged at") }, "no tag line\(w.logs)")
        #expect(line.contains("pre-freeze hook") && line.contains("its writes read before the freeze"), "\(line)")

        // The recovered disk is a database that starts and holds every row
        // committed before the point was asked for, intact.
        let out = w.h.dir + "/rec.img", rmnt = w.h.dir + "/rec-mnt", rsock = w.h.dir + "/rec-sock"
        let rec = try run([TestEnv.binary("tidemarkctl"), "recover", "--point", id, "--to", out,
                           "--target", w.target, "--key", w.tls + "/replication.key"])
        #expect(rec.ok, "recover: \(rec.stderr)")
        // The lock file names the source's postmaster, which runs on this
        // host (after a real failover it would be another host's): remove it.
        try sh("mkdir -p \(rmnt) \(rsock) && mount -o loop \(out) \(rmnt) && chown postgres: \(rsock) && rm -f \(rmnt)/pg/postmaster.pid")
        w.cleanups.append { _ = try? sh("umount \(rmnt)") }
        try start(rmnt + "/pg", socket: rsock, port: port + 1, "")
        w.cleanups.append { _ = try? pg("\(Self.bin)/pg_ctl -D \(rmnt)/pg -m immediate stop >/dev/null 2>&1") }
        let rows = Int(try sql("SELECT count(*) FROM t WHERE id <= \(asked)", socket: rsock, port: port + 1)) ?? -1
        #expect(rows == asked, "the recovered database holds \(rows) of the \(asked) rows committed before the point")
        let bad = try sql("SELECT count(*) FROM t WHERE pad <> repeat(md5(id::text), 8)", socket: rsock, port: port + 1)
        #expect(bad == "0", "\(bad) rows differ")
        let contiguous = try sql("SELECT count(*) = max(id) FROM t", socket: rsock, port: port + 1)
        #expect(contiguous == "t", "the recovered table has gaps")
    }
}
