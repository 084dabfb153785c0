import Foundation
import Glibc
import Testing
import TidemarkTesting

/// `tidemark-agent run` refuses secret files it must not use, at once and
/// with the reason: a TLS private key readable by others, a replication key
/// that is a FIFO (which used to hang the agent forever).
@Suite(.serialized) struct KeyFileTests {
    /// As root the agent gets a real disk (a loop device, in a tracer
    /// sandbox), so that nothing but the key files can stop it: before the
    /// checks, the agent read the replication key only after inspecting the
    /// disks, and blocked there on a FIFO. Otherwise the disk is /dev/null
    /// (refused after the key checks).
    final class World {
        let dir: String
        let tls: String
        let harness: Harness?
        let disk: String
        let env: [String: String]
        init(_ tag: String, realDisk: Bool = true) throws {
            if realDisk && TestEnv.isRoot && FileManager.default.fileExists(atPath: "/sbin/losetup") {
                let h = try Harness(tag)
                harness = h
                dir = h.dir
                disk = try h.loop(sizeMiB: 16).path
                env = h.env
            } else {
                harness = nil
                dir = try TestEnv.tempDir(tag)
                disk = "/dev/null"
                env = ["TIDEMARK_RUN_DIR": dir + "/run", "TIDEMARK_BPF_PIN_DIR": dir + "/pins"]
            }
            tls = dir + "/tls"
            let certs = try run([FileManager.default.currentDirectoryPath + "/scripts/make-certs.sh", tls, "--agent", "agent-it"])
            guard certs.ok else { throw TestFailure("make-certs.sh failed: \(certs.stderr)") }
        }
        deinit {
            if let h = harness { h.close() } else { try? FileManager.default.removeItem(atPath: dir) }
        }

        /// Writes the config (the TLS key on line 7, the replication key on line 8).
        func config(key: String, replicationKey: String) throws -> String {
            let path = dir + "/agent.yaml"
            try """
            agent_id: agent-it
            state_dir: \(dir)/state
            replication:
              server: 127.0.0.1:1
              ca: \(tls)/ca.crt
              cert: \(tls)/agent-it.crt
              key: \(key)
              replication_key: \(replicationKey)
            control_socket: \(dir)/agent.sock
            """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        /// Runs the agent; it must exit within `seconds` (killed otherwise).
        func runAgent(_ configPath: String, seconds: Double = 10) throws -> (status: Int32?, stderr: String, elapsed: Double) {
            let p = try BackgroundProcess([TestEnv.binary("tidemark-agent"), "run", "--config", configPath, "--disk", disk],
                                          env: env, logDir: dir)
            let start = Date()
            while p.process.isRunning && Date().timeIntervalSince(start) < seconds { usleep(20_000) }
            let elapsed = Date().timeIntervalSince(start)
            if p.process.isRunning {
                p.stop(signal: SIGKILL)
                return (nil, p.stderr, elapsed)
            }
            return (p.process.terminationStatus, p.stderr, elapsed)
        }
    }

    @Test func worldReadableTLSKeyIsRefusedAtStart() throws {
        let w = try World("keyfile-tls")
        let key = w.tls + "/agent-it.key"
        #expect(chmod(key, 0o644) == 0)
        let config = try w.config(key: key, replicationKey: w.tls + "/replication.key")
        let r = try w.runAgent(config)
        #expect(r.status != nil, "the agent did not exit within 10 s: \(r.stderr)")
        #expect(r.status != 0)
        #expect(r.stderr.contains("the TLS private key \(key) (replication.key at \(config):7) is accessible by group or others (mode 0644)"), "\(r.stderr)")
        #expect(r.stderr.contains("hint: chmod 600 \(key)"), "\(r.stderr)")
    }

    @Test func fifoReplicationKeyIsRefusedWithoutHanging() throws {
        let w = try World("keyfile-fifo")
        let fifo = w.dir + "/replication.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let config = try w.config(key: w.tls + "/agent-it.key", replicationKey: fifo)
        let r = try w.runAgent(config)
        #expect(r.status != nil, "the agent hung on the FIFO (killed after 10 s): \(r.stderr)")
        #expect(r.status != 0)
        #expect(r.stderr.contains("the replication key \(fifo) (replication.replication_key at \(config):8) is a FIFO (named pipe), not a regular file"), "\(r.stderr)")
    }

    /// The server's TLS private key likewise: `tidemark-server run` with a
    /// key of mode 0640 exits 1 at once, naming the key and the fix.
    @Test func serverRefusesAGroupReadableTLSKey() throws {
        let w = try World("keyfile-server", realDisk: false)
        let key = w.tls + "/server.key"
        #expect(chmod(key, 0o640) == 0)
        let config = w.dir + "/server.yaml"
        try """
        listen: 127.0.0.1:0
        tls:
          ca: \(w.tls)/ca.crt
          cert: \(w.tls)/server.crt
          key: \(key)
        spool_dir: \(w.dir)/spool
        target:
          path: \(w.dir)/target
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let p = try BackgroundProcess([TestEnv.binary("tidemark-server"), "run", "--config", config], env: w.env, logDir: w.dir)
        let start = Date()
        while p.process.isRunning && Date().timeIntervalSince(start) < 10 { usleep(20_000) }
        let running = p.process.isRunning
        if running { p.stop(signal: SIGKILL) }
        #expect(!running, "the server accepted the key and kept running: \(p.stderr)")
        #expect(p.process.terminationStatus != 0)
        #expect(p.stderr.contains("the TLS private key \(key) (tls.key at \(config):5) is accessible by group or others (mode 0640)"), "\(p.stderr)")
        #expect(p.stderr.contains("hint: chmod 600 \(key)"), "\(p.stderr)")
    }

    /// The accepted modes, 0600 and 0400, go past the key checks (the run
    /// then fails later, on the disk /dev/null, which is not a block device).
    @Test func ownerOnlyKeysPassTheChecks() throws {
        let w = try World("keyfile-ok", realDisk: false)
        let key = w.tls + "/agent-it.key"
        #expect(chmod(key, 0o400) == 0)
        let config = try w.config(key: key, replicationKey: w.tls + "/replication.key")
        let r = try w.runAgent(config)
        #expect(r.status != nil && r.status != 0)
        #expect(!r.stderr.contains("private key") && !r.stderr.contains("replication key"), "\(r.stderr)")
        #expect(r.stderr.contains("/dev/null"), "\(r.stderr)")
    }
}
