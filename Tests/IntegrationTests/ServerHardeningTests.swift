import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting
import TidemarkWire

/// A real `tidemark-server` process against hostile clients over real TLS
/// (certificates from scripts/make-certs.sh), all on 127.0.0.1: values that
/// used to crash it, a bad disk record planted in its target, slow and
/// flooding connections, and disk ids of another agent. After each attack
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
            try before?(Paths(target: h.dir + "/target", spool: h.dir + "/spool", tls: tls))
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

        struct Paths { let target: String, spool: String, tls: String }

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
                // Sequence 0 has no format 4 header (its lineage would start
                // after it): format 3 still reaches the server's own check.
                try sealer.seal(kind: .data, diskID: disk, sequence: sequence, diskSizeBytes: size, chunkSizeBytes: 65536,
                                extents: [SegmentExtent(offset: 0, length: 65536, kind: .data)], payload: $0, point: nil,
                                formatVersion: sequence == 0 ? 3 : SegmentFormat.version)
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

    /// Writes `bytes` one byte per second until the server closes the
    /// connection or `limitSeconds` pass; returns the seconds from `start`
    /// to the close (nil: still open). `closed(ms)` waits up to ms for the
    /// server and says whether it closed (throwing counts as closed).
    static func dribble(_ bytes: [UInt8], over stream: ByteStream, start: Date, limitSeconds: Double,
                        closed: (Int) throws -> Bool) -> Double? {
        var i = 0
        while Date().timeIntervalSince(start) < limitSeconds {
            if i < bytes.count {
                let ok = (try? [bytes[i]].withUnsafeBytes { try stream.writeAll($0) }) != nil
                if !ok { return Date().timeIntervalSince(start) }
                i += 1
            }
            // A second for the server to close (or answer).
            let waitUntil = Date().addingTimeInterval(1)
            while Date() < waitUntil {
                do {
                    if try closed(100) { return Date().timeIntervalSince(start) }
                } catch {
                    return Date().timeIntervalSince(start)
                }
            }
        }
        return nil
    }

    /// `closed` for a TLS stream: up to ms for something to read; end of
    /// stream is a close, data is noted in `answered`.
    static func tlsClosed(_ stream: TLSStream, _ ms: Int, answered: inout Bool) throws -> Bool {
        guard try stream.waitReadable(timeoutMs: ms) else { return false }
        var b = [UInt8](repeating: 0, count: 4096)
        let n = try b.withUnsafeMutableBytes { try stream.read(into: $0) }
        if n > 0 { answered = true }
        return n == 0
    }

    // MARK: A. Values that used to crash the server

    @Test(.requiresRoot) func overflowingValuesAreRefusedAndTheServerLives() throws {
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

        // A segment whose header describes another geometry than the disk's.
        for (size, what) in [(UInt64(32 << 20), "describes another disk geometry")] {
            let c = try w.client()
            try c.hello("agent-it")
            guard case .diskState? = try c.open(disk, size: 16 << 20, chunk: 65536, keyID: key.id) else {
                throw TestFailure("openDisk \(disk) failed\(w.logs)")
            }
            try? c.writer.send(.segment(try ServerWorld.seal(key, disk: disk, sequence: 1, size: size)))
            let r = c.refusal()
            #expect(r.code == 409 && r.message.contains(what) && r.closed, "\(r)")
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
    @Test(.requiresRoot) func badDiskRecordIsQuarantined() throws {
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

    /// A spooled segment numbered 2^64 - 1 (a damaged spool, or one an
    /// older server wrote) is dropped at start with a log line: the disk's
    /// durable sequence stays 0, so the agent is not told that segments it
    /// never sent are durable.
    @Test(.requiresRoot) func spooledSegmentWithAnImpossibleSequenceIsDropped() throws {
        let disk = "agent-it-sdz-\(Self.hex)"
        let w = try ServerWorld("harden-spool") { paths in
            let key = try ReplicationKey.load(path: paths.tls + "/replication.key")
            let segment = try ServerWorld.seal(key, disk: disk, sequence: UInt64.max)
            func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
            var file: [UInt8] = Array("TMSPOOL1".utf8) + le(UInt32(1)) + le(UInt32(0))
            file += le(UInt32(0x5253_4D54)) + le(UInt32(segment.count)) + le(segment.withUnsafeBytes { crc32c($0) }) + le(UInt32(0))
            file += segment
            try FileManager.default.createDirectory(atPath: paths.spool, withIntermediateDirectories: true)
            try Data(file).write(to: URL(fileURLWithPath: paths.spool + "/spool-00000000000000000001.log"))
        }
        defer { w.close() }
        #expect(w.server.stderr.contains("has sequence \(UInt64.max), outside 1...\(SegmentSequence.max); it is dropped"), "\(w.logs)")
        try w.expectServes(disk)
    }

    // MARK: B. Slow and flooding connections

    /// A segment frame dribbled at 1 byte/s after openDisk is cut at its
    /// whole-frame deadline (15 s plus its payload at 32 KiB/s), not left open.
    @Test(.requiresRoot) func dribbledSegmentFrameIsCut() throws {
        let w = try ServerWorld("harden-slowframe")
        defer { w.close() }
        let key = try ReplicationKey.load(path: w.tls + "/replication.key")
        let disk = "agent-it-sdz-\(Self.hex)"
        let c = try w.client()
        try c.hello("agent-it")
        guard case .diskState? = try c.open(disk, size: 16 << 20, chunk: 65536, keyID: key.id) else {
            throw TestFailure("openDisk failed\(w.logs)")
        }
        let segment = try ServerWorld.seal(key, disk: disk, sequence: 1)
        var header: [UInt8] = WireProtocol.magic
        header += withUnsafeBytes(of: WireProtocol.version.littleEndian) { Array($0) }
        header += withUnsafeBytes(of: UInt16(5).littleEndian) { Array($0) }
        header += withUnsafeBytes(of: UInt32(segment.count).littleEndian) { Array($0) }
        let bound = 15.0 + Double(segment.count) / 32768.0
        let start = Date()
        var answered = false
        let cutAfter = Self.dribble(header + segment, over: c.stream, start: start, limitSeconds: bound + 30) {
            try Self.tlsClosed(c.stream, $0, answered: &answered)
        }
        c.close()
        guard let cutAfter else {
            Issue.record("a segment frame dribbled at 1 byte/s was still open after \(Int(bound + 30)) s\(w.logs)")
            return
        }
        #expect(cutAfter >= bound - 1.5 && cutAfter <= bound + 3, "cut after \(cutAfter) s; the bound is \(bound) s")
        try waitFor("the server logs the cut", timeoutSeconds: 5) {
            w.server.stderr.contains("a segment frame of \(segment.count) bytes did not complete within")
        }
        try w.expectServes(disk)
    }

    /// The TLS handshake dribbled at 1 byte/s, and a hello dribbled after a
    /// prompt handshake, are both cut 10 s after the accept.
    @Test(.requiresRoot) func dribbledHandshakeAndHelloAreCut() throws {
        let w = try ServerWorld("harden-slowhello")
        defer { w.close() }
        let bound = 10.0

        // The TLS handshake: the start of a ClientHello record, byte by byte.
        var start = Date()
        let socket = try TCPSocket.connect(host: "127.0.0.1", port: w.port, timeoutMs: 5_000)
        let clientHello: [UInt8] = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03] + [UInt8](repeating: 0x42, count: 64)
        try socket.setTimeouts(readMs: 100, writeMs: 5_000)
        var cutAfter = Self.dribble(clientHello, over: socket, start: start, limitSeconds: bound + 20) { _ in
            var b = [UInt8](repeating: 0, count: 4096)
            do {
                return try b.withUnsafeMutableBytes { try socket.read(into: $0) } == 0
            } catch let e as SystemError where e.isTimeout {
                return false
            }
        }
        socket.close()
        if let cutAfter {
            #expect(cutAfter <= bound + 2.5, "the dribbled handshake was cut after \(cutAfter) s")
        } else {
            Issue.record("a TLS handshake dribbled at 1 byte/s was still open after \(Int(bound + 20)) s\(w.logs)")
        }

        // The hello, after a prompt handshake.
        let logBefore = w.server.stderr.count
        start = Date()
        let c = try w.client()
        var hello = ByteWriterForTests()
        hello.frame(type: 1, payload: withUnsafeBytes(of: WireProtocol.version.littleEndian) { Array($0) } + [8] + Array("agent-it".utf8))
        var answered = false
        cutAfter = Self.dribble(hello.bytes, over: c.stream, start: start, limitSeconds: bound + 25) {
            try Self.tlsClosed(c.stream, $0, answered: &answered)
        }
        c.close()
        if let cutAfter {
            #expect(cutAfter <= bound + 2.5, "the dribbled hello was cut after \(cutAfter) s")
        } else {
            Issue.record("a hello dribbled at 1 byte/s was still open after \(Int(bound + 25)) s\(w.logs)")
        }
        #expect(!answered, "the server answered a hello that took longer than its deadline")
        // The hello's cut is logged (the handshake's may be logged by the TLS
        // layer's own timeout, which ends at the same moment).
        try waitFor("the server logs the hello's cut", timeoutSeconds: 5) {
            w.server.stderr.dropFirst(logBefore).contains("the TLS handshake and hello did not complete within 10000 ms")
        }
        try w.expectServes("agent-it-sdz-\(Self.hex)")
    }

    /// A flood of plain TCP connections that send nothing, more than
    /// `max_connections` and more than the unauthenticated pool: an agent
    /// with a valid certificate still gets in within a few seconds.
    @Test(.requiresRoot) func floodDoesNotKeepAnAgentOut() throws {
        let w = try ServerWorld("harden-flood", maxConnections: 8)
        defer { w.close() }
        var flood: [TCPSocket] = []
        defer { for s in flood { s.close() } }
        for _ in 0..<100 {
            if let s = try? TCPSocket.connect(host: "127.0.0.1", port: w.port, timeoutMs: 2_000) { flood.append(s) }
        }
        #expect(flood.count >= 80, "only \(flood.count) flood connections opened")
        usleep(300_000)
        // And it goes on while the agent connects: 50 more, one per 20 ms.
        let more = FloodThread(port: w.port, count: 50, intervalMs: 20)
        defer { more.finish() }
        let start = Date()
        var got: TestClient?
        var lastError = ""
        while got == nil && Date().timeIntervalSince(start) < 5 {
            do {
                let c = try w.client()
                try c.hello("agent-it")
                got = c
            } catch {
                lastError = "\(error)"
                usleep(100_000)
            }
        }
        let elapsed = Date().timeIntervalSince(start)
        guard let c = got else {
            Issue.record("an agent could not get in within 5 s of a flood of \(flood.count) idle connections: \(lastError)\(w.logs)")
            return
        }
        #expect(elapsed < 3, "the agent got in only after \(elapsed) s")
        let key = try ReplicationKey.load(path: w.tls + "/replication.key")
        let disk = "agent-it-sdz-\(Self.hex)"
        guard case .diskState? = try c.open(disk, size: 16 << 20, chunk: 65536, keyID: key.id) else {
            throw TestFailure("openDisk failed\(w.logs)")
        }
        c.close()
        let lines = w.server.stderr.split(separator: "\n").filter { $0.contains("closed to make room") }
        #expect(!lines.isEmpty, "\(w.logs)")
        #expect(lines.count <= 2, "the displaced connections flood the log: \(lines.count) lines")
    }

    /// `max_connections` bounds authenticated agents: one more is refused
    /// after its hello with error 503 saying so; when one leaves, the next
    /// gets in.
    @Test(.requiresRoot) func maxConnectionsBoundsAuthenticatedAgents() throws {
        let w = try ServerWorld("harden-maxconn", maxConnections: 2)
        defer { w.close() }
        let a = try w.client(), b = try w.client("agent-b")
        try a.hello("agent-it")
        try b.hello("agent-b")
        let c = try w.client()
        try c.writer.send(.hello(protocolVersion: WireProtocol.version, agentID: "agent-it"))
        let r = c.refusal()
        #expect(r.code == 503 && r.message.contains("2 agent connections already (max_connections)") && r.closed, "\(r)")
        c.close()
        b.close()
        try waitFor("the server lets the next agent in", timeoutSeconds: 10) {
            guard let d = try? w.client() else { return false }
            defer { d.close() }
            return (try? d.hello("agent-it")) != nil
        }
        a.close()
    }

    // MARK: C. Disk ids bound to identities

    /// Agent B (its own valid certificate) cannot open, nor write, a disk id
    /// of agent A's form, whether A's disk exists yet or not.
    @Test(.requiresRoot) func anotherAgentsDiskIDIsRefused() throws {
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

/// Frame bytes by hand (for dribbling them).
struct ByteWriterForTests {
    var bytes: [UInt8] = []
    mutating func frame(type: UInt16, payload: [UInt8]) {
        bytes += WireProtocol.magic
        bytes += withUnsafeBytes(of: WireProtocol.version.littleEndian) { Array($0) }
        bytes += withUnsafeBytes(of: type.littleEndian) { Array($0) }
        bytes += withUnsafeBytes(of: UInt32(payload.count).littleEndian) { Array($0) }
        bytes += payload
    }
}

/// Opens `count` idle TCP connections to 127.0.0.1:`port`, one per
/// `intervalMs`, on a thread of its own; `finish()` waits for it and closes them.
final class FloodThread: @unchecked Sendable {
    private let lock = NSLock()
    private var sockets: [TCPSocket] = []
    private let done = DispatchSemaphore(value: 0)

    init(port: UInt16, count: Int, intervalMs: Int) {
        Thread {
            for _ in 0..<count {
                if let s = try? TCPSocket.connect(host: "127.0.0.1", port: port, timeoutMs: 2_000) {
                    self.lock.lock()
                    self.sockets.append(s)
                    self.lock.unlock()
                }
                usleep(useconds_t(intervalMs * 1000))
            }
            self.done.signal()
        }.start()
    }

    func finish() {
        done.wait()
        lock.lock()
        for s in sockets { s.close() }
        sockets.removeAll()
        lock.unlock()
    }
}
