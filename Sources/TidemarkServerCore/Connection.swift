import Foundation
import Glibc
import TidemarkSystem
import TidemarkTransport
import TidemarkWire

/// One agent connection. Its thread does every TLS read and write (OpenSSL
/// does not allow a read and a write on one stream from two threads):
/// it waits for a frame with a short poll, and between frames sends the
/// acknowledgements other threads queued (queuing one wakes the poll). Acknowledgements are cumulative,
/// so the queue keeps only the newest per disk: its size is bounded by the
/// disks the connection opened.
final class Connection: @unchecked Sendable {
    unowned let server: ProcessServer
    let socket: TCPSocket
    let peer: String
    private let lock = NSLock()
    private var durableAcks: [String: UInt64] = [:]
    private var committedAcks: [String: UInt64] = [:]
    private var closed = false
    private var stream: TLSStream?
    /// Wakes the connection's thread from its wait for frames when another
    /// thread queues an acknowledgement, so it goes out at once.
    private let ackWake = WakeSignal()
    /// When the connection was accepted (monotonic).
    let acceptedNs: UInt64
    /// The peer's address without its port: the unit of the per-source
    /// bound on unauthenticated connections.
    let source: String
    /// What must be complete by when (monotonic ns), and its bound: the
    /// handshake and hello from the accept, then each whole frame from its
    /// first byte. The server's deadline thread cuts a connection past it
    /// (`expiredDeadline`). Guarded by `lock`.
    private var deadline: (ns: UInt64, what: String, limitMs: Int)?
    /// The agent id of the certificate, once the TLS handshake is done (for logs).
    private var name = "?"

    init(server: ProcessServer, socket: TCPSocket) {
        self.server = server
        self.socket = socket
        self.peer = socket.peerDescription
        self.source = Self.address(ofPeer: socket.peerDescription)
        let now = monotonicNanoseconds()
        self.acceptedNs = now
        self.deadline = (now + UInt64(ServerLimits.handshakeTimeoutMs) * 1_000_000, "the TLS handshake and hello",
                         ServerLimits.handshakeTimeoutMs)
    }

    /// "1.2.3.4:5" → "1.2.3.4", "[::1]:5" → "::1".
    static func address(ofPeer peer: String) -> String {
        if peer.hasPrefix("["), let end = peer.firstIndex(of: "]") {
            return String(peer[peer.index(after: peer.startIndex)..<end])
        }
        if let colon = peer.lastIndex(of: ":") { return String(peer[..<colon]) }
        return peer
    }

    /// The TLS handshake is complete (the peer showed a certificate of the
    /// CA); the hello may still be missing.
    var pastTLSHandshake: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stream != nil
    }

    var logName: String {
        lock.lock()
        defer { lock.unlock() }
        return "\(peer) (\(name))"
    }

    private func setDeadline(fromNs start: UInt64, ms: Int, _ what: String) {
        lock.lock()
        deadline = (start + UInt64(ms) * 1_000_000, what, ms)
        lock.unlock()
    }

    private func clearDeadline() {
        lock.lock()
        deadline = nil
        lock.unlock()
    }

    /// What was late and its bound when the deadline has passed (once; the
    /// caller logs it, then closes the connection), nil otherwise.
    func expiredDeadline(nowNs: UInt64) -> (what: String, limitMs: Int)? {
        lock.lock()
        defer { lock.unlock() }
        guard let d = deadline, nowNs >= d.ns, !closed else { return nil }
        deadline = nil
        return (d.what, d.limitMs)
    }

    var isClosed: Bool {
        lock.lock()
        defer { lock.unlock() }
        return closed
    }

    func queueAck(disk: String, durable: UInt64) {
        lock.lock()
        durableAcks[disk] = max(durableAcks[disk] ?? 0, durable)
        lock.unlock()
        ackWake.signal()
    }

    func queueAck(disk: String, committed: UInt64) {
        lock.lock()
        committedAcks[disk] = max(committedAcks[disk] ?? 0, committed)
        lock.unlock()
        ackWake.signal()
    }

    /// Closes from any thread: the connection's own thread wakes and ends.
    /// Before the TLS stream exists the socket is only shut down (its thread
    /// may be in the handshake on it, which then fails and closes it).
    func close() {
        lock.lock()
        closed = true
        let s = stream
        lock.unlock()
        if let s { s.shutdown() } else { socket.shutdown() }
    }

    func serve() {
        var agentID = "?"
        do {
            // One deadline from the accept for the handshake and the hello
            // (the deadline thread cuts the connection at it); these are the
            // bounds of each single wait within it.
            let leftMs = ServerLimits.handshakeTimeoutMs - Int((monotonicNanoseconds() - acceptedNs) / 1_000_000)
            try socket.setTimeouts(readMs: ServerLimits.handshakeTimeoutMs, writeMs: ServerLimits.frameReadTimeoutMs)
            let s = try TLSStream.accept(socket, server.tlsContext, handshakeTimeoutMs: max(1, leftMs))
            lock.lock()
            stream = s
            let wasClosed = closed
            name = s.peerCommonName
            lock.unlock()
            defer { s.close() }
            if wasClosed { return }
            let reader = FrameReader(s)
            reader.acceptedVersions = WireProtocol.acceptedVersions
            let writer = FrameWriter(s)
            agentID = s.peerCommonName
            do {
                try handle(stream: s, reader: reader, writer: writer, certName: agentID)
            } catch let v as ProtocolViolation {
                let line = "\(peer) (\(agentID)): \(v.message); closing the connection"
                if v.logged { Log.debug(line) } else { Log.warning(line) }
                try? writer.send(.error(code: v.code, message: v.message))
            } catch let e as TidemarkError where e.kind == .corrupt || e.kind == .invalidArgument {
                // .invalidArgument: target storage refused a value from the agent (a disk id it cannot name).
                Log.warning("\(peer) (\(agentID)): malformed input: \(e.message); closing the connection")
                try? writer.send(.error(code: 400, message: e.message))
            }
        } catch {
            if !isClosed { Log.warning("\(peer) (\(agentID)): connection ended: \(error)") }
        }
    }

    private func handle(stream s: TLSStream, reader: FrameReader, writer: FrameWriter, certName: String) throws {
        guard case .hello(let version, let agentID)? = try reader.next() else {
            throw ProtocolViolation(code: 400, "expected hello as the first message")
        }
        guard WireProtocol.acceptedVersions.contains(version) else {
            throw ProtocolViolation(code: 426, "protocol version \(version) is not supported; this server speaks \(WireProtocol.acceptedVersions.lowerBound) to \(WireProtocol.acceptedVersions.upperBound)")
        }
        guard !certName.isEmpty, agentID == certName else {
            throw ProtocolViolation(code: 403, "agent id '\(agentID)' does not match the certificate's name '\(certName)'; an agent's hello names the agent id its certificate was issued for (docs/wire-format.md, session rule 1)")
        }
        // The agent's version, which this server speaks too.
        writer.version = version
        reader.acceptedVersions = version...version
        if let refusal = server.authenticated(self) {
            throw ProtocolViolation(code: 503, refusal)
        }
        try writer.send(.helloOK(protocolVersion: version, serverID: server.options.serverID))
        clearDeadline()
        try socket.setTimeouts(readMs: ServerLimits.frameReadTimeoutMs, writeMs: ServerLimits.frameReadTimeoutMs)
        Log.info("\(peer): agent \(agentID) connected")
        var opened: Set<String> = []
        var lastFrame = monotonicNanoseconds()
        while !isClosed && !server.isStopped {
            // Cleared before the flush: an acknowledgement queued after it
            // ends the wait below at once.
            ackWake.clear()
            try flushAcks(writer)
            guard try reader.hasBufferedBytes || s.waitReadable(timeoutMs: ServerLimits.connectionPollMs, wake: ackWake) else {
                let idleMs = Int((monotonicNanoseconds() - lastFrame) / 1_000_000)
                if idleMs >= ServerLimits.idleTimeoutMs {
                    throw ProtocolViolation(code: 408, "idle for \(idleMs / 1000) s")
                }
                continue
            }
            lastFrame = monotonicNanoseconds()
            // The whole frame, from its first byte, within its deadline.
            setDeadline(fromNs: lastFrame, ms: ServerLimits.frameDeadlineBaseMs, "a frame")
            guard let frame = try reader.nextFrame() else {
                Log.info("\(peer): agent \(agentID) disconnected")
                return
            }
            let message: WireMessage
            switch frame {
            case .segment(let length):
                setDeadline(fromNs: lastFrame, ms: ServerLimits.frameDeadlineMs(payloadBytes: length),
                            "a segment frame of \(length) bytes")
                try receiveSegment(length: length, reader: reader, opened: opened)
                continue
            case .message(let m):
                clearDeadline()
                message = m
            }
            switch message {
            case .openDisk(let diskID, let size, let chunk, let keyID):
                if !opened.contains(diskID) && opened.count >= ServerLimits.disksPerConnectionMax {
                    throw ProtocolViolation(code: 400, "more than \(ServerLimits.disksPerConnectionMax) disks on one connection")
                }
                let state = try server.openDisk(self, agentID: agentID, diskID: diskID, sizeBytes: size,
                                                chunkSizeBytes: chunk, keyID: keyID)
                opened.insert(diskID)
                try writer.send(.diskState(diskID: diskID, durableSequence: state.durable, committedSequence: state.committed))
            case .digestRequest(let diskID, let first, let count):
                guard opened.contains(diskID) else {
                    throw ProtocolViolation(code: 400, "digest request for disk \(diskID), which this connection has not opened")
                }
                var (sequence, states) = try server.chunkStates(diskID: diskID, first: first, count: Int(count))
                if version < 3 {
                    // A version 2 agent computes only construction 2 digests.
                    states = states.map { if case .data(_, .gmacAES) = $0 { .unknown } else { $0 } }
                }
                try writer.send(.chunkDigests(diskID: diskID, firstChunk: first, sequence: sequence, states: states))
            case .ping(let n):
                try writer.send(.pong(n))
            case .pong:
                break
            case .error(let code, let text):
                Log.warning("\(peer): agent \(agentID) reports error \(code): \(text)")
                return
            default:
                throw ProtocolViolation(code: 400, "unexpected message \(message.type) from an agent")
            }
        }
        try flushAcks(writer)
    }

    /// Reads a segment frame's `length` bytes: its header first (the fixed
    /// part says how long the whole header is), which is checked, then the
    /// rest straight into the buffer its target object will be written from
    /// (no copy), or into memory of its own when the staging budget is spent.
    private func receiveSegment(length: Int, reader: FrameReader, opened: Set<String>) throws {
        var head = [UInt8](repeating: 0, count: min(length, SegmentFormat.fixedBytes))
        try head.withUnsafeMutableBytes { try reader.readPayload(into: $0) }
        if length > head.count {
            let declared = try head.withUnsafeBytes { try SegmentHeader.declaredHeaderBytes($0) }
            let more = min(declared, length) - head.count
            if more > 0 {
                let from = head.count
                head += [UInt8](repeating: 0, count: more)
                try head.withUnsafeMutableBytes { try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: $0[from...])) }
            }
        }
        let header = try head.withUnsafeBytes { try SegmentHeader.decode($0, segmentBytes: length).0 }
        guard opened.contains(header.diskID) else {
            throw ProtocolViolation(code: 400, "segment for disk \(header.diskID), which this connection has not opened")
        }
        if let staged = server.stage(header, segmentBytes: length) {
            let into = staged.payloadToFill
            head.withUnsafeBytes { into.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: head.count) }
            try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: into[head.count...]))
            clearDeadline()
            try server.ingest(self, header: header, bytes: staged.payload, staged: staged)
        } else {
            let from = head.count
            head += [UInt8](repeating: 0, count: length - from)
            try head.withUnsafeMutableBytes { try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: $0[from...])) }
            clearDeadline()
            try head.withUnsafeBytes { try server.ingest(self, header: header, bytes: $0, staged: nil) }
        }
    }

    private func flushAcks(_ writer: FrameWriter) throws {
        lock.lock()
        let d = durableAcks
        let c = committedAcks
        durableAcks.removeAll(keepingCapacity: true)
        committedAcks.removeAll(keepingCapacity: true)
        lock.unlock()
        for (disk, seq) in d { try writer.send(.ackDurable(diskID: disk, sequence: seq)) }
        for (disk, seq) in c { try writer.send(.ackCommitted(diskID: disk, sequence: seq)) }
    }
}
