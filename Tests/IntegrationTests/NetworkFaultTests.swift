import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting
import TidemarkTransport
import TidemarkWire

/// Issue 3's network and failure tests: real server and agent processes,
/// real TLS on loopback, ext4 on a real loop device under a write load.
/// Points taken through the faults recover byte-identical to the source as
/// it was frozen, fsck -n clean, with every sequence stored exactly once.
@Suite(.serialized) struct NetworkFaultTests {
    /// Connections cut again and again, stalled, silently dead, and a bit
    /// flipped inside the TLS stream: the agent reconnects every time (its
    /// io timeout detects the stalled and dead paths) and resumes where the
    /// server's durable sequence says.
    /// The process server comes back with its target and spool gone (a new,
    /// empty target): the agent sees that the target holds nothing of a disk
    /// it replicated, marks the whole disk, sends nothing before that, and a
    /// point taken afterwards recovers the whole disk identical, with every
    /// sequence of the new target stored once.
    @Test(.requiresRoot) func aLostTargetGetsTheWholeDiskAgain() throws {
        let w = try FaultWorld("lost-target")
        defer { w.close() }
        try w.startServer()
        try w.startAgent()
        let first = try w.point()
        try w.recoverAndCompare(first)
        _ = w.server?.stop()
        try sh("rm -rf \(w.target) \(w.spoolDir)")
        try sh("head -c 2M /dev/urandom > \(w.mnt)/after-loss && sync")
        try w.startServer(port: w.serverPort)
        try w.waitFor("the agent says the target was lost", timeoutSeconds: 60) {
            w.agent?.stderr.contains("sending the whole disk again") == true
        }
        let second = try w.point()
        try w.recoverAndCompare(second)
        try w.expectContiguous(try w.diskID())
    }

    @Test(.requiresRoot) func cutStalledDeadAndTamperedConnectionsResume() throws {
        let w = try FaultWorld("netfault")
        defer { w.close() }
        try w.startServer()
        try w.startProxy()
        let proxy = w.proxy!
        try w.startAgent(ioTimeoutMs: 1500)
        let disk = try w.diskID()
        var points: [String] = []
        _ = try w.churn(40, seed: 11)

        // Cut every connection every 250 ms, then after each 3 MiB sent.
        proxy.cutEvery(ms: 250)
        usleep(2_000_000)
        points.append(try w.point())
        proxy.cutEvery(ms: nil)
        proxy.cutAfter(bytes: 3 << 20)
        points.append(try w.point())
        proxy.cutAfter(bytes: nil)
        #expect(proxy.cut >= 8, "the proxy cut only \(proxy.cut) connections")

        // A stall of 4 s (nothing forwarded, connections open): longer than
        // the agent's io timeout, so it gives the connection up.
        let before = proxy.accepted
        proxy.stall(seconds: 4)
        points.append(try w.point())
        #expect(proxy.accepted > before, "the agent never reconnected after the stall\(w.logs)")

        // A path that dies silently: the open connection never forwards
        // again. Only the io timeout can notice; new connections pass.
        let before2 = proxy.accepted
        proxy.blackholeExisting()
        points.append(try w.point())
        #expect(proxy.accepted > before2)
        // Given up by the io timeout: nothing heard (pings unanswered), or a send without progress.
        let agentLog = w.agent!.stderr
        #expect(agentLog.contains("io_timeout_ms") || agentLog.contains("no progress for 1500 ms"),
                "the agent did not give the dead connection up by its io timeout\(w.logs)")

        // One bit flipped in the agent → server stream of the next connection:
        // TLS rejects the record, the server closes, the agent reconnects.
        _ = try w.churn(8, seed: 12)
        let logBefore = w.server!.stderr.count
        proxy.tamper(atByte: 100_000)
        proxy.cutAll()
        try w.waitFor("the proxy flipped a bit", timeoutSeconds: 30) { proxy.flipped == 1 }
        try w.waitFor("the server rejected the tampered TLS record", timeoutSeconds: 30) {
            let new = w.server!.stderr.dropFirst(logBefore).lowercased()
            return new.contains("bad record mac") || new.contains("decrypt")
        }
        for l in w.loads { l.stop(timeoutSeconds: 10) }
        points.append(try w.point())

        #expect(w.server!.process.isRunning && w.agent!.process.isRunning)
        try w.expectContiguous(disk)
        #expect(try w.stored(disk).points.count == points.count)
        for p in points { try w.recoverAndCompare(p) }
    }

    /// A client with a valid certificate breaks the protocol in every way it
    /// can, and clients with bad certificates knock: each is refused with a
    /// clear error and its connection closed, nothing wrong lands in the
    /// target, and the legitimate agent keeps replicating throughout.
    @Test(.requiresRoot) func tamperedFramesAndForeignClientsAreRefused() throws {
        let w = try FaultWorld("frames", agents: ["agent-evil"], expiredAgents: ["agent-old"])
        defer { w.close() }
        try w.startServer()
        try w.startAgent()
        let legit = try w.diskID()
        let first = try w.point()
        _ = try w.churn(30, seed: 21)
        let port = w.serverPort

        // The evil agent's own disk, sealed with a key of its own.
        let evilKey = try ReplicationKey.generate(path: w.h.dir + "/evil.key")
        let sealer = try SegmentSealer(key: evilKey, compressionLevel: 1)
        // Of the form an agent's own disk ids take (docs/wire-format.md, session rule 8).
        let evilDisk = "agent-evil-vdz-0123456789ab"
        let size: UInt64 = 16 << 20, chunk: UInt32 = 64 << 10
        func seal(_ seq: UInt64, disk: String = evilDisk) throws -> [UInt8] {
            var rng = SplitMix64(seed: seq)   // incompressible: the segment is a full 64 KiB
            let payload = (0..<Int(chunk)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            return try payload.withUnsafeBytes {
                try sealer.seal(kind: .data, diskID: disk, sequence: seq, diskSizeBytes: size, chunkSizeBytes: chunk,
                                extents: [SegmentExtent(offset: UInt64(seq) * UInt64(chunk), length: chunk, kind: .data)],
                                payload: $0, point: nil)
            }
        }
        func evil() throws -> TestClient {
            let c = try TestClient(port: port, ca: w.tls + "/ca.crt", cert: w.tls + "/agent-evil.crt",
                                   key: w.tls + "/agent-evil.key")
            try c.hello("agent-evil")
            let state = try c.open(evilDisk, size: size, chunk: chunk, keyID: evilKey.id)
            guard case .diskState? = state else { throw TestFailure("openDisk answered \(String(describing: state))") }
            return c
        }
        let s1 = try seal(1), s2 = try seal(2), s3 = try seal(3)

        // A valid segment, then a replay of it: acknowledged, stored once.
        var c = try evil()
        try c.writer.send(.segment(s1))
        #expect(try c.awaitDurable(evilDisk) == 1)
        try c.writer.send(.segment(s1))
        #expect(try c.awaitDurable(evilDisk) == 1, "a replayed segment moved the durable sequence")
        // Two segments swapped: #3 before #2.
        try? c.writer.send(.segment(s3))
        var refusal = c.refusal()
        #expect(refusal.code == 409 && refusal.message.contains("out of order: expected #2"), "\(refusal)")
        #expect(refusal.closed)
        c.close()

        // A segment sealed for another disk (the legitimate agent's), valid in itself.
        c = try evil()
        try? c.writer.send(.segment(try seal(2, disk: legit)))
        refusal = c.refusal()
        #expect(refusal.code == 400 && refusal.message.contains("not opened"), "\(refusal)")
        #expect(refusal.closed)
        c.close()

        // A truncated segment inside a well-formed frame.
        c = try evil()
        try? c.writer.send(.segment(Array(s2.dropLast(100))))
        refusal = c.refusal()
        #expect(refusal.code == 400 && refusal.closed, "\(refusal)")
        c.close()

        // A malformed frame (bad magic).
        c = try evil()
        var frame = Self.frameHeader(type: 5, length: UInt32(s2.count)) + s2
        frame[0] ^= 0xFF
        try c.raw(frame)
        refusal = c.refusal()
        #expect(refusal.code == 400 && refusal.closed, "\(refusal)")
        c.close()

        // An oversized length field: refused before any payload is read.
        c = try evil()
        try c.raw(Self.frameHeader(type: 5, length: UInt32.max))
        refusal = c.refusal()
        #expect(refusal.code == 400 && refusal.closed, "\(refusal)")
        c.close()

        // A frame cut short: the stream ends inside it.
        c = try evil()
        try c.raw(Array((Self.frameHeader(type: 5, length: UInt32(s2.count)) + s2).prefix(5000)))
        c.stream.shutdown()
        c.close()
        try w.waitFor("the server logs the frame cut short", timeoutSeconds: 15) {
            w.server!.stderr.contains("connection ended")
        }

        // Another agent (valid certificate) opening the legitimate agent's disk.
        c = try TestClient(port: port, ca: w.tls + "/ca.crt", cert: w.tls + "/agent-evil.crt", key: w.tls + "/agent-evil.key")
        try c.hello("agent-evil")
        let answer = try c.open(legit, size: w.disk.sizeBytes, chunk: chunk, keyID: evilKey.id)
        guard case .error(let code, let message)? = answer else {
            Issue.record("openDisk of another agent's disk answered \(String(describing: answer))")
            return
        }
        #expect(code == 403 && message.contains("belongs to agent agent-it"), "\(message)")
        #expect(c.refusal().closed)
        c.close()

        // A hello naming another agent than the certificate.
        c = try TestClient(port: port, ca: w.tls + "/ca.crt", cert: w.tls + "/agent-evil.crt", key: w.tls + "/agent-evil.key")
        try c.writer.send(.hello(protocolVersion: WireProtocol.version, agentID: "agent-it"))
        refusal = c.refusal()
        #expect(refusal.code == 403 && refusal.closed, "\(refusal)")
        c.close()

        // An expired certificate and one from another CA: no hello answered.
        let rogue = w.h.dir + "/rogue"
        let certs = try run([FileManager.default.currentDirectoryPath + "/scripts/make-certs.sh", rogue, "--agent", "agent-it"])
        #expect(certs.ok, "\(certs.stderr)")
        for (cert, key, why) in [(w.tls + "/agent-old.crt", w.tls + "/agent-old.key", "expired"),
                                 (rogue + "/agent-it.crt", rogue + "/agent-it.key", "CA")] {
            let before = w.server!.stderr
            let answered: Bool
            do {
                let t = try TestClient(port: port, ca: w.tls + "/ca.crt", cert: cert, key: key)
                defer { t.close() }
                try? t.writer.send(.hello(protocolVersion: WireProtocol.version, agentID: "agent-it"))
                if case .helloOK? = try? t.reader.next() { answered = true } else { answered = false }
            } catch {
                answered = false
            }
            #expect(!answered, "the server answered a client with a bad (\(why)) certificate")
            try w.waitFor("the server logs the \(why) certificate", timeoutSeconds: 15) {
                w.server!.stderr.count > before.count && w.server!.stderr.dropFirst(before.count).contains(why)
            }
        }

        // Segment 1 of the evil disk (chunk 1) is indexed with its construction 3
        // digest. A current agent sees it as such; an agent of protocol 2 (an
        // older build) is served in protocol 2 and sees the chunk as unknown,
        // since it cannot compute that digest.
        func chunkStates(_ t: TestClient) throws -> [ChunkState] {
            try t.writer.send(.digestRequest(diskID: evilDisk, firstChunk: 0, count: 3))
            while let m = try t.reader.next() {
                if case .chunkDigests(_, _, _, let states) = m { return states }
            }
            throw TestFailure("connection closed before chunkDigests")
        }
        var payload1 = SplitMix64(seed: 1)
        let plain1 = (0..<Int(chunk)).map { _ in UInt8(truncatingIfNeeded: payload1.next()) }
        let digest1 = plain1.withUnsafeBytes { ChunkDigester(key: evilKey, diskID: evilDisk).digest(chunk: 1, $0) }
        c = try evil()
        try w.waitFor("segment 1 of \(evilDisk) is indexed", timeoutSeconds: 30) { try chunkStates(c)[1] != .unknown }
        #expect(try chunkStates(c) == [.unknown, .data(digest1, .gmacAES), .unknown])
        c.close()
        c = try TestClient(port: port, ca: w.tls + "/ca.crt", cert: w.tls + "/agent-evil.crt", key: w.tls + "/agent-evil.key")
        c.writer.version = 2
        try c.writer.send(.hello(protocolVersion: 2, agentID: "agent-evil"))
        c.reader.acceptedVersions = 2...2
        let hello2 = try c.reader.next()
        guard case .helloOK(2, _)? = hello2 else {
            Issue.record("a protocol 2 hello answered \(String(describing: hello2))")
            return
        }
        guard case .diskState? = try c.open(evilDisk, size: size, chunk: chunk, keyID: evilKey.id) else {
            Issue.record("a protocol 2 agent could not open its disk")
            return
        }
        #expect(try chunkStates(c) == [.unknown, .unknown, .unknown])
        c.close()

        // The server said why, each time, and keeps serving the legitimate agent.
        let log = w.server!.stderr
        for needle in ["out of order", "which this connection has not opened", "belongs to agent agent-it",
                       "does not match the certificate's name", "closing the connection"] {
            #expect(log.contains(needle), "server log lacks '\(needle)'\(w.logs)")
        }
        for l in w.loads { l.stop(timeoutSeconds: 10) }
        let last = try w.point()
        #expect(w.server!.process.isRunning)
        // Nothing wrong landed: the evil disk holds its one valid segment; the
        // legitimate disk is contiguous and both points recover identical.
        let evilStored = try w.stored(evilDisk).segments
        #expect(evilStored == [1], "\(evilStored)\(w.logs)")
        try w.expectContiguous(legit, checkLog: false)
        try w.recoverAndCompare(first)
        try w.recoverAndCompare(last)
    }

    /// The spool's filesystem fills up (ENOSPC), then the spool reaches its
    /// byte limit while target storage refuses writes: the agent is held
    /// back, nothing is dropped. A record damaged in the spool meanwhile is
    /// caught when it is read back for upload; the server discards it and
    /// what followed, and the agent re-sends them. Every point recovers
    /// identical. (With `upload_memory_bytes: 0`: a segment still held in
    /// memory is uploaded from there, and its spool copy is not read.)
    @Test(.requiresRoot) func fullSpoolHoldsTheAgentBackAndADamagedRecordIsResent() throws {
        let w = try FaultWorld("spoolfull", spoolTmpfsMiB: 96)
        defer { w.close() }
        try w.startServer(spoolMaxBytes: "64m", uploadMemoryBytes: "0")
        try w.startAgent(ioTimeoutMs: 3000)
        let disk = try w.diskID()
        var points = [try w.point()]

        // ENOSPC: a filler leaves the spool's tmpfs about 2 MiB.
        let filler = w.spoolMount! + "/filler"
        let free = try sh("df -B1 --output=avail \(w.spoolMount!) | tail -1")
        try sh("fallocate -l \(UInt64(free)! - (2 << 20)) \(filler)")
        let load = try w.churn(4, seed: 31)
        try w.waitFor("the server reports the spool's filesystem full", timeoutSeconds: 60) {
            w.server!.stderr.contains("no space left on the spool's filesystem")
        }
        load.stop(timeoutSeconds: 10)
        try sh("rm -f \(filler)")
        points.append(try w.point())

        // The spool's byte limit, with target storage refusing every write.
        let segments = w.target + "/disks/" + disk + "/segments"
        try sh("chattr +i \(segments)")
        let load2 = try w.churn(60, seed: 32)
        try w.waitFor("the spool is full (spool_max_bytes)", timeoutSeconds: 90) {
            w.server!.stderr.contains("is full (")
        }
        load2.stop(timeoutSeconds: 10)
        #expect(w.agent!.process.isRunning && w.server!.process.isRunning)
        // Damage a spooled record the uploader has not read yet (it is stuck
        // on the one after the last stored).
        let damaged = (try w.stored(disk).segments.last ?? 0) + 2
        try Self.damageSpoolRecord(in: w.spoolDir, sequence: damaged)
        try sh("chattr -i \(segments)")
        try w.waitFor("the server catches the damaged record #\(damaged)", timeoutSeconds: 60) {
            w.server!.stderr.contains("cannot be uploaded")
        }
        #expect(w.server!.stderr.contains("reads back damaged"), "\(w.logs)")
        // A point tagged before the agent learns of the loss is lost with it
        // (and said so); take this one after the agent has started re-sending.
        try w.waitFor("the agent re-sends what the server lost", timeoutSeconds: 60) {
            w.agent!.stderr.contains("re-sending all uncommitted chunks")
        }
        points.append(try w.point())

        let log = w.server!.stderr
        #expect(!log.contains("dropped"), "the server dropped segments\(w.logs)")
        #expect(w.agent!.stderr.contains("re-sending all uncommitted chunks"), "\(w.logs)")
        try w.expectContiguous(disk)
        #expect(try w.stored(disk).segments.contains(damaged))
        for p in points { try w.recoverAndCompare(p) }
    }

    /// Target storage refuses writes for a while: the uploader retries the
    /// segments it holds in memory (staged at ingest, the default), the
    /// agent is held back by the spool, and nothing is lost. A spooled record
    /// damaged meanwhile does not matter: the staged copy is uploaded, not
    /// the spool's. Every point recovers identical.
    @Test(.requiresRoot) func stagedUploadsRetryAndIgnoreSpoolDamage() throws {
        let w = try FaultWorld("staged")
        defer { w.close() }
        try w.startServer()
        try w.startAgent()
        let disk = try w.diskID()
        var points = [try w.point()]
        let segments = w.target + "/disks/" + disk + "/segments"
        try sh("chattr +i \(segments)")
        let load = try w.churn(6, seed: 41)
        try w.waitFor("the server retries an upload", timeoutSeconds: 60) {
            w.server!.stderr.contains("failed: ") && w.server!.stderr.contains("retrying in")
        }
        load.stop(timeoutSeconds: 10)
        // A record the uploader has not stored yet, damaged in the spool.
        let damaged = (try w.stored(disk).segments.last ?? 0) + 1
        try Self.damageSpoolRecord(in: w.spoolDir, sequence: damaged)
        try sh("chattr -i \(segments)")
        points.append(try w.point())
        let log = w.server!.stderr
        #expect(!log.contains("cannot be uploaded") && !log.contains("reads back damaged"), "\(w.logs)")
        try w.expectContiguous(disk)
        #expect(try w.stored(disk).segments.contains(damaged))
        for p in points { try w.recoverAndCompare(p) }
    }

    // MARK: Helpers

    static func frameHeader(type: UInt16, length: UInt32) -> [UInt8] {
        var b: [UInt8] = [0x54, 0x4D, 0x57, 0x46, UInt8(WireProtocol.version & 0xFF), UInt8(WireProtocol.version >> 8)]
        b += [UInt8(type & 0xFF), UInt8(type >> 8)]
        b += (0..<4).map { UInt8(truncatingIfNeeded: length >> (8 * $0)) }
        return b
    }

    /// Flips a byte (in the GCM tag) of the spooled record of `sequence`, in
    /// whichever spool file holds it; throws when no file does.
    static func damageSpoolRecord(in dir: String, sequence: UInt64) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".log") }.sorted()
        for name in names {
            let path = dir + "/" + name
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            var offset = 16
            while offset + 16 + 76 <= bytes.count {
                let length = (0..<4).reduce(0) { $0 | Int(bytes[offset + 4 + $1]) << (8 * $1) }
                let seq = (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + 16 + 32 + $1]) << (8 * UInt64($1)) }
                if seq == sequence, offset + 16 + length <= bytes.count {
                    let at = offset + 16 + length - 1
                    let fd = open(path, O_WRONLY)
                    defer { Glibc.close(fd) }
                    var b: UInt8 = bytes[at] ^ 0x01
                    guard pwrite(fd, &b, 1, off_t(at)) == 1 else { throw TestFailure("pwrite \(path): errno \(errno)") }
                    return
                }
                offset += 16 + length
            }
        }
        throw TestFailure("no spooled record of sequence \(sequence) in \(dir) (\(names))")
    }
}

/// A hand-driven client for the process server: real TLS with a given
/// certificate, frames written with the wire-format types (or raw bytes).
final class TestClient {
    let stream: TLSStream
    let reader: FrameReader
    let writer: FrameWriter

    init(port: UInt16, ca: String, cert: String, key: String) throws {
        let socket = try TCPSocket.connect(host: "127.0.0.1", port: port, timeoutMs: 5_000)
        try socket.setTimeouts(readMs: 10_000, writeMs: 10_000)
        let context = try TLSContext.client(TLSFiles(ca: ca, cert: cert, key: key))
        stream = try TLSStream.connect(socket, context, serverName: "127.0.0.1")
        reader = FrameReader(stream)
        writer = FrameWriter(stream)
    }

    func hello(_ id: String) throws {
        try writer.send(.hello(protocolVersion: WireProtocol.version, agentID: id))
        guard case .helloOK? = try reader.next() else { throw TestFailure("no helloOK for \(id)") }
    }

    func open(_ disk: String, size: UInt64, chunk: UInt32, keyID: UInt64) throws -> WireMessage? {
        try writer.send(.openDisk(diskID: disk, diskSizeBytes: size, chunkSizeBytes: chunk, keyID: keyID))
        return try reader.next()
    }

    /// Writes raw bytes; the server may close before it took them all (it
    /// refuses a frame by its header), which is not an error here.
    func raw(_ bytes: [UInt8]) throws {
        try? bytes.withUnsafeBytes { try stream.writeAll($0) }
    }

    /// Waits for an ackDurable of `disk`; returns its sequence.
    func awaitDurable(_ disk: String) throws -> UInt64 {
        while let m = try reader.next() {
            if case .ackDurable(disk, let s) = m { return s }
            if case .error(let code, let message) = m { throw TestFailure("error \(code): \(message)") }
        }
        throw TestFailure("connection closed before ackDurable")
    }

    /// Reads until the server closes: the error frame it sent, if any, and
    /// whether the connection ended (rather than timing out).
    func refusal() -> (code: UInt16, message: String, closed: Bool) {
        var code: UInt16 = 0, message = ""
        while true {
            do {
                guard let m = try reader.next() else { return (code, message, true) }
                if case .error(let c, let text) = m { (code, message) = (c, text) }
            } catch let e as SystemError where e.isTimeout {
                return (code, message, false)
            } catch {
                return (code, message, true)
            }
        }
    }

    func close() { stream.close() }
}
