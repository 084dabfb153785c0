import CTidemarkTransport
import Glibc
import Synchronization
import TidemarkSystem

// TLS 1.3 with mutual authentication over OpenSSL (C glue in tls.c).
// Agents and servers present certificates of one CA (scripts/make-certs.sh,
// docs/keys-and-certificates.md); the server requires and verifies the
// agent's, the agent verifies the server's against the name it dialed.

// ByteStream (read returns 0 at end of stream; writeAll) is in ByteStream.swift.

/// The PEM files of one side: the CA that issued the peers' certificates,
/// this side's certificate (chain) and its private key.
public struct TLSFiles: Sendable, Equatable {
    public var caPath: String
    public var certPath: String
    public var keyPath: String
    /// Where `keyPath` was configured ("replication.key in FILE:LINE"), for
    /// the errors about the key file; not part of equality.
    public var keyOrigin: String?

    public init(ca: String, cert: String, key: String, keyOrigin: String? = nil) {
        caPath = ca
        certPath = cert
        keyPath = key
        self.keyOrigin = keyOrigin
    }

    public static func == (a: TLSFiles, b: TLSFiles) -> Bool {
        a.caPath == b.caPath && a.certPath == b.certPath && a.keyPath == b.keyPath
    }
}

/// A TLS 1.3-only configuration with the CA, certificate and key loaded.
///
/// Thread-safety: immutable after creation; any number of threads may make
/// connections from one context at once (OpenSSL's SSL_CTX allows this).
public final class TLSContext: @unchecked Sendable {
    let raw: OpaquePointer
    public let files: TLSFiles
    public let isServer: Bool

    private init(raw: OpaquePointer, files: TLSFiles, isServer: Bool) {
        self.raw = raw
        self.files = files
        self.isServer = isServer
    }

    deinit { tm_tls_ctx_free(raw) }

    /// The server side: presents `files.certPath` and requires a client
    /// certificate issued by `files.caPath`.
    public static func server(_ files: TLSFiles) throws -> TLSContext {
        try make(files, isServer: true)
    }

    /// The client side: presents `files.certPath` and verifies the server's
    /// certificate against `files.caPath` and the name it connects to.
    public static func client(_ files: TLSFiles) throws -> TLSContext {
        try make(files, isServer: false)
    }

    private static func make(_ files: TLSFiles, isServer: Bool) throws -> TLSContext {
        // Name the file that is missing or unreadable before OpenSSL does it
        // vaguely. The certificates are public; the private key is a secret
        // file: a regular file that group and others cannot access (a FIFO
        // would hang OpenSSL's read, a world-readable key is a leaked key).
        for (path, what) in [(files.caPath, "the TLS CA certificate"), (files.certPath, "the TLS certificate")] {
            _ = try FileDescriptor(open: path, [.readOnly, .nonBlocking], purpose: "reading \(what)")
        }
        try SecretFile.check(files.keyPath, what: "the TLS private key", origin: files.keyOrigin)
        var which: Int32 = 0
        var msg = [CChar](repeating: 0, count: 2048)
        guard let raw = tm_tls_ctx_new(isServer ? 1 : 0, files.caPath, files.certPath, files.keyPath,
                                       &which, &msg, msg.count) else {
            let text = cArrayString(msg)
            let hint: String
            switch Int(which) {
            case TM_TLS_FILE_CA:
                hint = "\(files.caPath) must hold the PEM certificate of the CA that issued the peers' certificates (scripts/make-certs.sh makes one)"
            case TM_TLS_FILE_CERT:
                hint = "\(files.certPath) must hold this side's PEM certificate issued by the CA (scripts/make-certs.sh)"
            case TM_TLS_FILE_KEY:
                hint = "\(files.keyPath) must hold the PEM private key made together with \(files.certPath)"
            case TM_TLS_FILE_KEY_MISMATCH:
                hint = "a certificate and its key are made together (scripts/make-certs.sh writes NAME.crt and NAME.key side by side); configure the matching pair"
            default:
                hint = "check the OpenSSL installation (libssl3)"
            }
            throw TidemarkError(.invalidArgument, text, hint: hint)
        }
        return TLSContext(raw: raw, files: files, isServer: isServer)
    }
}

/// One TLS connection over a `TCPSocket`, which it owns from then on.
///
/// Thread-safety: one thread may `read` while another calls `writeAll`
/// (full duplex: the socket is non-blocking underneath and the OpenSSL
/// object is only touched under a lock that is never held while waiting).
/// `shutdown` and `close` may be called from any thread; they wake a blocked
/// read (which then returns 0) or write (which throws). Timeouts come from
/// the socket's `setTimeouts` (also after the handshake).
public final class TLSStream: ByteStream, @unchecked Sendable {
    private struct State {
        var closed = false
        var active = 0      // reads and writes in progress
        var released = false
    }
    private let socket: TCPSocket
    private let context: TLSContext
    private let tls: OpaquePointer
    private let state = Mutex(State())
    /// The remote end ("127.0.0.1:9443"), with the server name when the client dialed a name.
    public let peerDescription: String
    /// CN of the verified peer certificate (the agent id, or the server's name).
    public private(set) var peerCommonName: String = ""
    /// The negotiated protocol: "TLSv1.3".
    public private(set) var protocolVersion: String = ""
    /// The negotiated cipher suite: "TLS_AES_128_GCM_SHA256" unless the peer
    /// allows only another one.
    public private(set) var cipherSuite: String = ""

    private init(socket: TCPSocket, context: TLSContext, tls: OpaquePointer, peer: String) {
        self.socket = socket
        self.context = context
        self.tls = tls
        self.peerDescription = peer
    }

    deinit { release() }

    /// The server side of the handshake on an accepted socket. Throws when the
    /// client presents no certificate or one the CA did not issue or that expired.
    /// The handshake must finish within `handshakeTimeoutMs` (0 = no limit).
    public static func accept(_ s: TCPSocket, _ ctx: TLSContext, handshakeTimeoutMs: Int = 30_000) throws -> TLSStream {
        precondition(ctx.isServer, "TLSStream.accept needs a server context")
        return try start(s, ctx, serverName: nil, peer: s.peerDescription, timeoutMs: handshakeTimeoutMs)
    }

    /// The client side of the handshake. The server certificate must be issued
    /// by the CA and carry `serverName` (a DNS name or IP address) in its
    /// subjectAltName. Note: with TLS 1.3 the server judges the client's
    /// certificate after this returns; a rejection shows on the first read.
    public static func connect(_ s: TCPSocket, _ ctx: TLSContext, serverName: String,
                               handshakeTimeoutMs: Int = 30_000) throws -> TLSStream {
        precondition(!ctx.isServer, "TLSStream.connect needs a client context")
        let name = stripBrackets(serverName)
        let peer = s.peerDescription.hasPrefix(hostPort(name, 0).dropLast(1)) ? s.peerDescription
            : "\(name) (\(s.peerDescription))"
        return try start(s, ctx, serverName: name, peer: peer, timeoutMs: handshakeTimeoutMs)
    }

    private static func start(_ s: TCPSocket, _ ctx: TLSContext, serverName: String?, peer: String,
                              timeoutMs: Int) throws -> TLSStream {
        let what = "TLS handshake with \(peer)"
        try setNonBlocking(s.fd, true, what)
        var msg = [CChar](repeating: 0, count: 1024)
        guard let raw = tm_tls_new(ctx.raw, s.fd, serverName, &msg, msg.count) else {
            throw TidemarkError(.invalidArgument, "\(what) failed: \(cArrayString(msg))",
                                hint: "give the server as a host name or an IP address")
        }
        let stream = TLSStream(socket: s, context: ctx, tls: raw, peer: peer)
        let deadline = timeoutMs > 0 ? SystemClock.monotonicMs() + Int64(timeoutMs) : Int64.max
        while true {
            var errNo: Int32 = 0, problem: Int32 = 0
            let r = Int(tm_tls_handshake(raw, &errNo, &problem, &msg, msg.count))
            switch r {
            case TM_TLS_OK:
                var cn = [CChar](repeating: 0, count: 256)
                tm_tls_peer_common_name(raw, &cn, cn.count)
                stream.peerCommonName = cArrayString(cn)
                stream.protocolVersion = String(cString: tm_tls_protocol_version(raw))
                stream.cipherSuite = String(cString: tm_tls_cipher_name(raw))
                return stream
            case TM_TLS_WANT_READ, TM_TLS_WANT_WRITE:
                let left = deadline == Int64.max ? -1 : Int(max(0, deadline - SystemClock.monotonicMs()))
                let ready = try pollReady(s.fd, Int16(r == TM_TLS_WANT_READ ? POLLIN : POLLOUT), timeoutMs: left, what)
                if !ready {
                    stream.close()
                    throw SystemError(call: "SSL_do_handshake", errno: ETIMEDOUT,
                                      context: "\(what): not finished within \(timeoutMs) ms")
                }
            case TM_TLS_EOF:
                stream.close()
                throw TidemarkError(.io, "\(what) failed: the peer closed the connection",
                                    hint: "the peer may have rejected this side's certificate or may not be a Tidemark TLS endpoint; its log says why")
            case TM_TLS_SYSCALL:
                stream.close()
                throw SystemError(call: "SSL_do_handshake", errno: errNo, context: what)
            default:
                stream.close()
                throw TidemarkError(.io, "\(what) failed: \(cArrayString(msg))",
                                    hint: hint(Int(problem), ctx, serverName: serverName))
            }
        }
    }

    /// What to do about a TLS failure (TM_TLS_PROBLEM_*).
    static func hint(_ problem: Int, _ ctx: TLSContext, serverName: String?) -> String {
        let peerRole = ctx.isServer ? "agent's" : "server's"
        switch problem {
        case TM_TLS_PROBLEM_PEER_EXPIRED:
            return ctx.isServer
                ? "the agent's certificate has expired: issue it a new one from the CA (scripts/make-certs.sh DIR --agent NAME --force) and check both hosts' clocks (date -u)"
                : "the server's certificate has expired: renew it (scripts/make-certs.sh DIR --server-name NAME --force) and check both hosts' clocks (date -u)"
        case TM_TLS_PROBLEM_PEER_NOT_YET_VALID:
            return "the \(peerRole) certificate is not valid yet: check both hosts' clocks (date -u, NTP)"
        case TM_TLS_PROBLEM_PEER_UNTRUSTED:
            return "the \(peerRole) certificate was not issued by the CA in \(ctx.files.caPath): both sides need certificates of the same CA"
        case TM_TLS_PROBLEM_PEER_NAME_MISMATCH:
            let n = serverName ?? "?"
            return "the server's certificate does not list '\(n)' in its subjectAltName: connect with a name it lists (openssl x509 -in server.crt -noout -ext subjectAltName) or reissue it (scripts/make-certs.sh DIR --server-name \(n) --force)"
        case TM_TLS_PROBLEM_PEER_NO_CERT:
            return "the agent presented no certificate: every agent needs its own certificate and key issued by \(ctx.files.caPath)"
        case TM_TLS_PROBLEM_PEER_OTHER_VERIFY:
            return "check the \(peerRole) certificate: openssl verify -CAfile \(ctx.files.caPath) CERT"
        case TM_TLS_PROBLEM_REJECTED_EXPIRED:
            return "the peer says this side's certificate \(ctx.files.certPath) has expired: renew it and check this host's clock"
        case TM_TLS_PROBLEM_REJECTED_UNTRUSTED:
            return "the peer does not trust this side's certificate \(ctx.files.certPath): it must be issued by the CA the peer uses"
        case TM_TLS_PROBLEM_REJECTED_NO_CERT:
            return "the peer requires a client certificate: configure this side's certificate and key"
        case TM_TLS_PROBLEM_REJECTED_OTHER:
            return "the peer refused the connection; its log says why"
        case TM_TLS_PROBLEM_VERSION:
            return "Tidemark speaks TLS 1.3 only and the peer does not"
        case TM_TLS_PROBLEM_NOT_TLS:
            return "the peer does not speak TLS: check the host and port"
        default:
            return "check that both sides use certificates of the same CA and that the port is a Tidemark TLS endpoint"
        }
    }

    private func enter() -> Bool {
        state.withLock { s in
            if s.closed { return false }
            s.active += 1
            return true
        }
    }

    private func leave() {
        let last = state.withLock { s -> Bool in
            s.active -= 1
            return s.closed && s.active == 0
        }
        if last { release() }
    }

    private func release() {
        let doIt = state.withLock { s -> Bool in
            if s.released { return false }
            s.released = true
            return true
        }
        if doIt {
            tm_tls_free(tls)
            socket.close()
        }
    }

    /// Reads what is there (at least one byte); 0 at end of stream: the peer
    /// closed, or `shutdown`/`close` was called. A read timeout throws a
    /// `SystemError` with `isTimeout`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0 else { return 0 }
        guard enter() else { return 0 }
        defer { leave() }
        var msg = [CChar](repeating: 0, count: 1024)
        while true {
            var done = 0, errNo: Int32 = 0, problem: Int32 = 0
            let r = state.withLock { _ in
                Int(tm_tls_read(tls, buffer.baseAddress, buffer.count, &done, &errNo, &problem, &msg, msg.count))
            }
            switch r {
            case TM_TLS_OK: return done
            case TM_TLS_EOF: return 0
            case TM_TLS_WANT_READ, TM_TLS_WANT_WRITE:
                try wait(r == TM_TLS_WANT_READ ? POLLIN : POLLOUT, reading: true)
            case TM_TLS_SYSCALL:
                throw SystemError(call: "recv", errno: errNo, context: "reading from TLS peer \(peerDescription)")
            default:
                throw TidemarkError(.io, "reading from TLS peer \(peerDescription) failed: \(cArrayString(msg))",
                                    hint: Self.hint(Int(problem), context, serverName: nil))
            }
        }
    }

    /// Writes all of `buffer`. Throws when the peer is gone, after
    /// `shutdown`/`close`, or (`isTimeout`) when the write timeout passes
    /// without progress.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        guard enter() else {
            throw SystemError(call: "send", errno: EPIPE, context: "writing to TLS peer \(peerDescription) after close")
        }
        defer { leave() }
        var msg = [CChar](repeating: 0, count: 1024)
        var offset = 0
        while offset < buffer.count {
            var done = 0, errNo: Int32 = 0, problem: Int32 = 0
            let r = state.withLock { _ in
                Int(tm_tls_write(tls, buffer.baseAddress! + offset, buffer.count - offset, &done, &errNo, &problem,
                                 &msg, msg.count))
            }
            switch r {
            case TM_TLS_OK: offset += done
            case TM_TLS_WANT_READ, TM_TLS_WANT_WRITE:
                try wait(r == TM_TLS_WANT_READ ? POLLIN : POLLOUT, reading: false)
            case TM_TLS_EOF:
                throw SystemError(call: "send", errno: EPIPE, context: "writing to TLS peer \(peerDescription): it closed the connection")
            case TM_TLS_SYSCALL:
                throw SystemError(call: "send", errno: errNo, context: "writing to TLS peer \(peerDescription)")
            default:
                throw TidemarkError(.io, "writing to TLS peer \(peerDescription) failed: \(cArrayString(msg))",
                                    hint: Self.hint(Int(problem), context, serverName: nil))
            }
        }
    }

    /// Waits up to `timeoutMs` (0 = just look, negative = no limit) until a
    /// `read` has something to return: buffered data, bytes on the socket, end
    /// of stream, or this stream closed. Lets one thread serve reads between
    /// other work. A true answer means the next read does not wait for new
    /// bytes to begin, though it may wait (within the read timeout) for the
    /// rest of a record that has partly arrived.
    /// With `wake`, a `WakeSignal` given meanwhile ends the wait early
    /// (false, unless data came too); the caller clears it.
    public func waitReadable(timeoutMs: Int, wake: WakeSignal? = nil) throws -> Bool {
        guard enter() else { return true }
        defer { leave() }
        if state.withLock({ _ in tm_tls_has_pending(tls) }) != 0 { return true }
        return try pollReady(socket.fd, Int16(POLLIN), timeoutMs: timeoutMs, wake: wake?.fd,
                           "waiting for data from TLS peer \(peerDescription)")
    }

    private func wait(_ event: Int32, reading: Bool) throws {
        let t = socket.timeouts
        let limit = reading ? t.readMs : t.writeMs
        let ok = try pollReady(socket.fd, Int16(event), timeoutMs: limit > 0 ? limit : -1,
                             "\(reading ? "reading from" : "writing to") TLS peer \(peerDescription)")
        if !ok {
            throw reading
                ? SystemError(call: "recv", errno: ETIMEDOUT, context: "reading from TLS peer \(peerDescription): nothing for \(limit) ms")
                : SystemError(call: "send", errno: ETIMEDOUT, context: "writing to TLS peer \(peerDescription): no progress for \(limit) ms")
        }
    }

    /// shutdown(2) of the socket: a read blocked on another thread returns 0,
    /// a blocked write throws, the peer sees end of stream. No close_notify
    /// (that would touch the TLS state another thread may be using).
    public func shutdown() {
        state.withLock { s in
            if !s.released { socket.shutdown() }
        }
    }

    /// Sends close_notify (best effort), shuts the socket down and frees the
    /// connection once no read or write is in progress. Idempotent.
    public func close() {
        let now = state.withLock { s -> Bool in
            if s.closed { return false }
            s.closed = true
            if !s.released {
                tm_tls_close_notify(tls)
                socket.shutdown()
            }
            return s.active == 0
        }
        if now { release() }
    }
}
