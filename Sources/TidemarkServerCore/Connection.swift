import Foundation
import Glibc
import TidemarkSystem
import TidemarkWire

/// One agent connection: the transport of one `ReplicationReceiver`
/// session. Its thread does every TLS read and write (OpenSSL does not
/// allow a read and a write on one stream from two threads): it waits for a
/// frame with a short poll, feeds what arrives to the receiver (through
/// `ProcessServer.feed`), and between frames sends what was queued for it
/// and carries out work the receiver addressed to its session from other
/// threads (queuing wakes the poll). Acknowledgements are cumulative, so
/// the queue keeps only the newest per disk: its size is bounded by the
/// disks the connection opened; other messages are replies to its own
/// frames, sent after each one, and work is at most one item (a session
/// waits for one thing at a time).
final class Connection: @unchecked Sendable {
    unowned let server: ProcessServer
    let id: ReplicationReceiver.SessionID
    let socket: TCPSocket
    let peer: String
    private let lock = NSLock()
    private var outbox: [WireMessage] = []
    private var durableAcks: [String: UInt64] = [:]
    private var committedAcks: [String: UInt64] = [:]
    private var work: [ReplicationReceiver.Effect] = []
    private var closed = false
    private var stream: TLSStream?
    /// The frame reader and writer, used by the connection's thread alone.
    private var reader: FrameReader?
    private var writer: FrameWriter?
    /// The hello was accepted (the connection's thread alone).
    private var authenticated = false
    /// Wakes the connection's thread from its wait for frames when another
    /// thread queues a message or work, so it goes out at once.
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

    /// The session ended without an error frame to send (the agent sent
    /// one, or the receiver closed it quietly).
    struct EndedQuietly: Error {}

    init(server: ProcessServer, id: ReplicationReceiver.SessionID, socket: TCPSocket) {
        self.server = server
        self.id = id
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

    var logName: String {
        lock.lock()
        defer { lock.unlock() }
        return "\(peer) (\(name))"
    }

    /// The certificate's name (the agent id once its hello is accepted).
    var agentName: String {
        lock.lock()
        defer { lock.unlock() }
        return name
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

    /// Queues a message for this connection's thread to send (from any thread).
    func post(_ message: WireMessage) {
        lock.lock()
        switch message {
        case .ackDurable(let disk, let seq): durableAcks[disk] = max(durableAcks[disk] ?? 0, seq)
        case .ackCommitted(let disk, let seq): committedAcks[disk] = max(committedAcks[disk] ?? 0, seq)
        default: outbox.append(message)
        }
        lock.unlock()
        ackWake.signal()
    }

    /// Queues work the receiver addressed to this session (from another thread).
    func post(work effect: ReplicationReceiver.Effect) {
        lock.lock()
        work.append(effect)
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

    /// The receiver accepted the hello: frames now carry its version, and
    /// the handshake deadline gives way to per-frame deadlines.
    func didAuthenticate(agentID: String, protocolVersion version: UInt16) throws {
        writer?.version = version
        reader?.acceptedVersions = version...version
        authenticated = true
        clearDeadline()
        try socket.setTimeouts(readMs: ServerLimits.frameReadTimeoutMs, writeMs: ServerLimits.frameReadTimeoutMs)
        Log.info("\(peer): agent \(agentID) connected")
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
            self.reader = reader
            self.writer = writer
            agentID = s.peerCommonName
            do {
                try server.feed(.tlsEstablished(id, certificateName: agentID), from: self)
                try handle(stream: s, reader: reader, writer: writer)
            } catch let v as ProtocolViolation {
                let line = "\(peer) (\(agentID)): \(v.message); closing the connection"
                if v.logged { Log.debug(line) } else { Log.warning(line) }
                try? writer.send(.error(code: v.code, message: v.message))
            } catch let e as TidemarkError where e.kind == .corrupt || e.kind == .invalidArgument {
                // .invalidArgument: target storage refused a value from the agent (a disk id it cannot name).
                Log.warning("\(peer) (\(agentID)): malformed input: \(e.message); closing the connection")
                try? writer.send(.error(code: 400, message: e.message))
            } catch is EndedQuietly {
                // Said in the log where it was decided.
            }
        } catch {
            if !isClosed { Log.warning("\(peer) (\(agentID)): connection ended: \(error)") }
        }
    }

    private func handle(stream s: TLSStream, reader: FrameReader, writer: FrameWriter) throws {
        var lastFrame = monotonicNanoseconds()
        while !isClosed && !server.isStopped {
            // Cleared before the queue is looked at: anything queued after
            // it ends the wait below at once.
            ackWake.clear()
            try runPostedWork()
            try flush(writer)
            if server.isBusy(self) {
                // It waits for another session's append or a loss to be
                // forgotten; reading frames meanwhile would feed it messages
                // it must not get yet (the agent waits for diskState too).
                waitForWake(timeoutMs: ServerLimits.connectionPollMs)
                continue
            }
            guard try reader.hasBufferedBytes || s.waitReadable(timeoutMs: ServerLimits.connectionPollMs, wake: ackWake) else {
                let idleMs = Int((monotonicNanoseconds() - lastFrame) / 1_000_000)
                // Before the hello, the handshake deadline is the bound.
                if authenticated && idleMs >= ServerLimits.idleTimeoutMs {
                    throw ProtocolViolation(code: 408, "idle for \(idleMs / 1000) s")
                }
                continue
            }
            lastFrame = monotonicNanoseconds()
            // The whole frame, from its first byte, within its deadline.
            if authenticated { setDeadline(fromNs: lastFrame, ms: ServerLimits.frameDeadlineBaseMs, "a frame") }
            guard let frame = try reader.nextFrame() else {
                Log.info("\(peer): agent \(agentName) disconnected")
                return
            }
            switch frame {
            case .segment(let length):
                if authenticated {
                    setDeadline(fromNs: lastFrame, ms: ServerLimits.frameDeadlineMs(payloadBytes: length),
                                "a segment frame of \(length) bytes")
                }
                try receiveSegment(length: length, reader: reader)
            case .message(let m):
                if authenticated { clearDeadline() }
                try server.feed(.message(id, m), from: self)
            }
        }
        try flush(writer)
    }

    /// Reads a segment frame's `length` bytes: its header first (the fixed
    /// part says how long the whole header is), which is checked, then the
    /// rest straight into the buffer its sink offers (the target object's:
    /// no copy), or into memory of its own when the sink offers none; then
    /// the receiver decides.
    private func receiveSegment(length: Int, reader: FrameReader) throws {
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
        guard server.mayReceiveSegments(self, diskID: header.diskID) else {
            // Refused before its payload is read: the receiver says why.
            try server.feed(.segment(id, header), from: self)
            throw EndedQuietly()
        }
        if let buffer = server.sink.buffer(for: header, segmentBytes: length) {
            let into = buffer.bytesToFill
            head.withUnsafeBytes { into.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: head.count) }
            try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: into[head.count...]))
            clearDeadline()
            try server.feed(.segment(id, header), from: self,
                            segment: .init(header: header, bytes: UnsafeRawBufferPointer(into), buffer: buffer))
        } else {
            let from = head.count
            head += [UInt8](repeating: 0, count: length - from)
            try head.withUnsafeMutableBytes { try reader.readPayload(into: UnsafeMutableRawBufferPointer(rebasing: $0[from...])) }
            clearDeadline()
            try head.withUnsafeBytes { try server.feed(.segment(id, header), from: self, segment: .init(header: header, bytes: $0, buffer: nil)) }
        }
    }

    /// Carries out the work other threads queued for this session.
    private func runPostedWork() throws {
        lock.lock()
        let todo = work
        work.removeAll()
        lock.unlock()
        for effect in todo { try server.performPosted(effect, on: self) }
    }

    /// Waits until something is queued for this connection, at most `timeoutMs`.
    private func waitForWake(timeoutMs: Int) {
        var p = pollfd(fd: ackWake.fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, Int32(timeoutMs))
    }

    /// Sends what was queued: replies in order, then the newest
    /// acknowledgements (a disk's after its diskState: the receiver
    /// acknowledges only disks it answered).
    private func flush(_ writer: FrameWriter) throws {
        lock.lock()
        let messages = outbox
        let d = durableAcks
        let c = committedAcks
        outbox.removeAll(keepingCapacity: true)
        durableAcks.removeAll(keepingCapacity: true)
        committedAcks.removeAll(keepingCapacity: true)
        lock.unlock()
        for m in messages { try writer.send(m) }
        for (disk, seq) in d { try writer.send(.ackDurable(diskID: disk, sequence: seq)) }
        for (disk, seq) in c { try writer.send(.ackCommitted(diskID: disk, sequence: seq)) }
    }
}
