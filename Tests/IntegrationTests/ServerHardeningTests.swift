import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting
import TidemarkWire

/// A real `tidemark-server` process against hostile clients over real TLS
/// (certificates from scripts/make-certs.sh), all on 127.0.0.1: values that
/// used to crash it, a bad disk record planted in its target, and disk ids
/// of another agent. After each attack
/// the server must still serve a well-formed client.
@Suite(.serialized) struct ServerHardeningTests {
    /// A server of its own: certificates for `agent-it` and `agent-b`, a
    /// spool and target under the test's directory. `close()` stops it.
    final class ServerWorld {
        let h: Harness
        let tls: String
        let server: BackgroundProcess
        let port: UInt16
        var target: String { h.dir + "/target" }

        init(_ tag: String, maxConnections: Int = 256, before: ((ServerWorld.Paths) throws -> Void)? = nil) throws {
            h = try Harness(tag)
            tls = h.dir + "/tls"
            let certs = try run([FileManager.default.currentDirectoryPath + "/scripts/make-certs.sh", tls,
                                 "--agent", "agent-it", "--agent", "agent-b"])
            guard certs.ok else { throw TestFailure("make-certs.sh failed: \(certs.stderr)") }
            try before?(Paths(target: h.dir + "/target"))
            try """
            listen: 127.0.0.1:0
            tls:
              ca: \(tls)/ca.crt
              cert: \(tls)/server.crt
              key: \(tls)/server.key
            spool_dir: \(h.dir)/spool
            target:
              path: \(h.dir)/target
            max_connections: \(maxConnections)
            log_level: debug
            """.write(toFile: h.dir + "/server.yaml", atomically: true, encoding: .utf8)
            server = try BackgroundProcess([TestEnv.binary("tidemark-server"), "run", "--config", h.dir + "/server.yaml"],
                                           env: h.env, logDir: h.dir)
            try server.waitForOutput("listening on")
            let line = server.stdout.split(separator: "\n").first { $0.contains("listening on") }!
            port = UInt16(line.split(separator: ":").last!)!
        }

        struct Paths { let target: String }

        func client(_ agent: String = "agent-it") throws -> TestClient {
            try TestClient(port: port, ca: tls + "/ca.crt", cert: tls + "/\(agent).crt", key: tls + "/\(agent).key")
        }

        /// The server is alive: its process runs, it never trapped, and a
        /// fresh well-formed client gets through hello, openDisk and a
        /// segment acknowledged durable.
        func expectServes(_ disk: String, sequence: UInt64 = 1, sourceLocation: SourceLocation = #_sourceLocation) throws {
            #expect(isRunning, "the server died\(logs)", sourceLocation: sourceLocation)
            #expect(!server.stderr.contains("Fatal error"), "the server trapped\(logs)", sourceLocation: sourceLocation)
            let c = try client()
            defer { c.close() }
            try c.hello("agent-it")
            let key = try ReplicationKey.load(path: tls + "/replication.key")
            guard case .diskState(_, let durable, _)? = try c.open(disk, size: 16 << 20, chunk: 65536, keyID: key.id) else {
                Issue.record("a well-formed openDisk was not answered with diskState\(logs)", sourceLocation: sourceLocation)
                return
            }
            #expect(durable == sequence - 1, sourceLocation: sourceLocation)
            try c.writer.send(.segment(try Self.seal(key, disk: disk, sequence: sequence)))
            #expect(try c.awaitDurable(disk) == sequence, sourceLocation: sourceLocation)
        }

        static func seal(_ key: ReplicationKey, disk: String, sequence: UInt64, size: UInt64 = 16 << 20) throws -> [UInt8] {
            let sealer = try SegmentSealer(key: key, compressionLevel: 1)
            let payload = [UInt8](repeating: UInt8(truncatingIfNeeded: sequence), count: 65536)
            return try payload.withUnsafeBytes {
                try sealer.seal(kind: .data, diskID: disk, sequence: sequence, diskSizeBytes: size, chunkSizeBytes: 65536,
                                extents: [SegmentExtent(offset: 0, length: 65536, kind: .data)], payload: $0, point: nil)
            }
        }

        var isRunning: Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(server.pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return false }
            let state = stat[stat.index(close, offsetBy: 2)]
            return state != "Z" && state != "X"
        }

        var logs: String { "\n--- server ---\n\(server.stderr.suffix(6000))" }

        func close() {
            _ = server.stop()
            h.close()
        }
    }

    static let hex = "0123456789ab"

    // MARK: A. Values that used to crash the server

    @Test func overflowingValuesAreRefusedAndTheServerLives() throws {
        guard TestEnv.requireRoot("server hardening") else { return }
        let w = try ServerWorld("harden-overflow")
        defer { w.close() }
        let key = try ReplicationKey.load(path: w.tls + "/replication.key")
        let disk = "agent-it-sdz-\(Self.hex)"

        // openDisk with geometries that overflowed or were stored unchecked.
        let geometries: [(String, UInt64, UInt32, String)] = [
            ("agent-it-sdy-\(Self.hex)", UInt64.max, 65536, "disk size"),
            ("agent-it-sdx-\(Self.hex)", UInt64.max - 1, 4096, "disk size"),
            ("agent-it-sdw-\(Self.hex)", 8 << 60, 65536, "disk size"),
            ("agent-it-sdv-\(Self.hex)", 16 << 20, 3, "chunk size 3"),
            ("agent-it-sdu-\(Self.hex)", 16 << 20, 0, "chunk size 0"),
            ("agent-it-sdt-\(Self.hex)", 0, 65536, "disk size 0"),
        ]
        for (id, size, chunk, what) in geometries {
            let c = try w.client()
            try c.hello("agent-it")
            let answer = try c.open(id, size: size, chunk: chunk, keyID: key.id)
            guard case .error(let code, let message)? = answer else {
                Issue.record("openDisk \(id) size \(size) chunk \(chunk) answered \(String(describing: answer))\(w.logs)")
                c.close()
                continue
            }
            #expect(code == 400 && message.contains(what) && message.contains("nothing was stored"), "\(code) \(message)")
            #expect(c.refusal().closed)
            c.close()
            // Nothing was written to the target for it.
            #expect(!FileManager.default.fileExists(atPath: w.target + "/disks/" + id), "a record of \(id) was stored")
        }

        // A digest request near 2^64, and other ranges outside the disk.
        for (first, count): (UInt64, UInt32) in [(UInt64.max, 1), (UInt64.max - 1, 2), (UInt64.max - 2047, 2048), (256, 1), (255, 2)] {
            let c = try w.client()
            try c.hello("agent-it")
            guard case .diskState? = try c.open(disk, size: 16 << 20, chunk: 65536, keyID: key.id) else {
                throw TestFailure("openDisk \(disk) failed\(w.logs)")
            }
            try c.writer.send(.digestRequest(diskID: disk, firstChunk: first, count: count))
            let r = c.refusal()
            #expect(r.code == 400 && r.message.contains("which has 256 chunks") && r.closed, "\(first)+\(count): \(r)")
            c.close()
        }

        // Segments numbered 0 and 2^64 - 1.
        for sequence in [UInt64(0), UInt64.max, SegmentSequence.max + 1] {
            let c = try w.client()
            try c.hello("agent-it")
            guard case .diskState? = try c.open(disk, size: 16 << 20, chunk: 65536, keyID: key.id) else {
                throw TestFailure("openDisk \(disk) failed\(w.logs)")
            }
            try? c.writer.send(.segment(try ServerWorld.seal(key, disk: disk, sequence: sequence)))
            let r = c.refusal()
            #expect(r.code == 400 && r.message.contains("sequence numbers are 1 to") && r.closed, "#\(sequence): \(r)")
            c.close()
        }

        // Still alive, and serving.
        try w.expectServes(disk)
        try w.expectServes(disk, sequence: 2)
    }

    /// A record of an older server (which stored what it was sent) or a
    /// damaged one: the server starts, quarantines the disk with one log
    /// line naming the problem, the file and what to do, refuses it with a
    /// clear error each time, and serves other disks.
    @Test func badDiskRecordIsQuarantined() throws {
        guard TestEnv.requireRoot("server hardening") else { return }
        let huge = "agent-it-sdy-\(Self.hex)", odd = "agent-it-sdv-\(Self.hex)"
        let w = try ServerWorld("harden-quarantine") { paths in
            try Self.plantDiskRecord(target: paths.target, diskID: huge, owner: "agent-it", sizeBytes: UInt64.max, chunkSizeBytes: 65536)
            try Self.plantDiskRecord(target: paths.target, diskID: odd, owner: "agent-it", sizeBytes: 16 << 20, chunkSizeBytes: 3)
        }
        defer { w.close() }
        let key = try ReplicationKey.load(path: w.tls + "/replication.key")
        for (id, size, chunk): (String, UInt64, UInt32) in [(huge, UInt64.max, 65536), (odd, 16 << 20, 3)] {
            // The geometry a well-behaved agent reports, then (twice) the stored one.
            for (s, ch) in [(UInt64(16 << 20), UInt32(65536)), (size, chunk), (size, chunk)] {
                let c = try w.client()
                try c.hello("agent-it")
                let answer = try c.open(id, size: s, chunk: ch, keyID: key.id)
                guard case .error(let code, let message)? = answer else {
                    Issue.record("openDisk of \(id) (size \(s), chunk \(ch)) answered \(String(describing: answer))\(w.logs)")
                    c.close()
                    continue
                }
                if s == 16 << 20 && ch == 65536 {
                    #expect(code == 500 && message.contains("quarantined") && message.contains("record is unusable"), "\(code) \(message)")
                } else {
                    // Refused for its own geometry before the record is even read.
                    #expect(code == 400 || code == 500, "\(code) \(message)")
                }
                #expect(c.refusal().closed)
                c.close()
            }
            let lines = w.server.stderr.split(separator: "\n").filter { $0.contains("disk \(id) quarantined") }
            #expect(lines.count == 1, "one log line per quarantined disk: \(lines)\(w.logs)")
            if let line = lines.first {
                #expect(line.contains("/disks/\(id)/disk") && line.contains("To replicate it afresh, move"), "\(line)")
            }
        }
        try w.expectServes("agent-it-sdz-\(Self.hex)")
    }

    /// Writes a disk record (target layout version 1, envelope version 1)
    /// with whatever geometry, as a server that checked nothing would have.
    static func plantDiskRecord(target: String, diskID: String, owner: String, sizeBytes: UInt64, chunkSizeBytes: UInt32) throws {
        try FileManager.default.createDirectory(atPath: target + "/disks/" + diskID + "/segments", withIntermediateDirectories: true)
        for sub in ["tombstones", "points"] {
            try FileManager.default.createDirectory(atPath: target + "/disks/" + diskID + "/" + sub, withIntermediateDirectories: true)
        }
        try "tidemark-target layout 1\n".write(toFile: target + "/TIDEMARK-TARGET", atomically: true, encoding: .utf8)
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        var metadata = le(sizeBytes) + le(chunkSizeBytes) + le(UInt64(1))
        metadata += le(UInt16(owner.utf8.count)) + Array(owner.utf8)
        let id = Array(diskID.utf8)
        var h: [UInt8] = Array("TMTARGET".utf8) + le(UInt16(1)) + [1, 0]
        h += le(UInt32(102 + id.count + metadata.count)) + le(UInt64(0)) + le(UInt64(0))
        h += [UInt8]().withUnsafeBytes { SHA256.hash($0) }
        h += le(UInt16(id.count)) + id + le(UInt32(metadata.count)) + metadata
        h += h.withUnsafeBytes { SHA256.hash($0) }
        try Data(h).write(to: URL(fileURLWithPath: target + "/disks/" + diskID + "/disk"))
    }

    // MARK: C. Disk ids bound to identities

    /// Agent B (its own valid certificate) cannot open, nor write, a disk id
    /// of agent A's form, whether A's disk exists yet or not.
    @Test func anotherAgentsDiskIDIsRefused() throws {
        guard TestEnv.requireRoot("server hardening") else { return }
        let w = try ServerWorld("harden-namespace")
        defer { w.close() }
        let key = try ReplicationKey.load(path: w.tls + "/replication.key")
        let aDisk = "agent-it-sdz-\(Self.hex)"

        // Not existing yet: B may not claim it.
        var c = try w.client("agent-b")
        try c.hello("agent-b")
        var answer = try c.open(aDisk, size: 16 << 20, chunk: 65536, keyID: key.id)
        if case .error(let code, let message)? = answer {
            #expect(code == 403 && message.contains("is not one agent agent-b may use")
                    && message.contains("'agent-b-<kernel device name>-<12 lowercase hex digits>'"), "\(code) \(message)")
        } else {
            Issue.record("agent-b opening \(aDisk) answered \(String(describing: answer))")
        }
        #expect(c.refusal().closed)
        c.close()
        #expect(!FileManager.default.fileExists(atPath: w.target + "/disks/" + aDisk), "a record was stored for agent-b")

        // B's segment for it, without an open: refused.
        c = try w.client("agent-b")
        try c.hello("agent-b")
        try? c.writer.send(.segment(try ServerWorld.seal(key, disk: aDisk, sequence: 1)))
        let r = c.refusal()
        #expect(r.code == 400 && r.message.contains("not opened") && r.closed, "\(r)")
        c.close()

        // A's own open works; afterwards B is still refused.
        try w.expectServes(aDisk)
        c = try w.client("agent-b")
        try c.hello("agent-b")
        answer = try c.open(aDisk, size: 16 << 20, chunk: 65536, keyID: key.id)
        if case .error(let code, let message)? = answer {
            #expect(code == 403 && message.contains("belongs to agent agent-it"), "\(code) \(message)")
        } else {
            Issue.record("agent-b opening \(aDisk) answered \(String(describing: answer))")
        }
        c.close()

        // B's own form works for B.
        c = try w.client("agent-b")
        try c.hello("agent-b")
        answer = try c.open("agent-b-sdz-\(Self.hex)", size: 16 << 20, chunk: 65536, keyID: key.id)
        guard case .diskState? = answer else {
            Issue.record("agent-b opening its own disk answered \(String(describing: answer))\(w.logs)")
            return
        }
        c.close()
    }
}
