import CTidemarkTransport
import Glibc
import Synchronization
import TidemarkSystem

// Blocking TCP over IPv4 and IPv6: a listener whose accept can be interrupted
// from another thread, and a connected socket with connect/read/write
// timeouts. TLS runs on top (TLS.swift).

/// The NUL-terminated string in a C buffer.
func cArrayString(_ a: [CChar]) -> String {
    a.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}

/// "[::1]" -> "::1"; other names unchanged.
func stripBrackets(_ host: String) -> String {
    if host.hasPrefix("["), host.hasSuffix("]") { return String(host.dropFirst().dropLast()) }
    return host
}

/// "127.0.0.1:9443" or "[::1]:9443".
func hostPort(_ host: String, _ port: UInt16) -> String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
}

/// Numeric "address:port" of a socket address.
func describe(_ addr: UnsafePointer<sockaddr>, _ len: socklen_t) -> String {
    var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
    var serv = [CChar](repeating: 0, count: Int(NI_MAXSERV))
    let r = getnameinfo(addr, len, &host, socklen_t(host.count), &serv, socklen_t(serv.count), NI_NUMERICHOST | NI_NUMERICSERV)
    guard r == 0 else { return "?" }
    return hostPort(cArrayString(host), UInt16(cArrayString(serv)) ?? 0)
}

/// getaddrinfo for a TCP endpoint; `host` nil or empty = any address (passive).
func resolve(_ host: String?, _ port: UInt16, passive: Bool) throws -> [(family: Int32, addr: [UInt8], len: socklen_t)] {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
    var list: UnsafeMutablePointer<addrinfo>?
    let node = host.map(stripBrackets).flatMap { $0.isEmpty || $0 == "*" ? nil : $0 }
    let r = getaddrinfo(node, String(port), &hints, &list)
    guard r == 0, let list else {
        let why = r == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(r))
        throw TidemarkError(.notFound, "cannot resolve the address '\(host ?? "*")' (port \(port)): \(why)",
                            hint: "check the host name (DNS, /etc/hosts) or give an IP address")
    }
    defer { freeaddrinfo(list) }
    var out: [(family: Int32, addr: [UInt8], len: socklen_t)] = []
    var p: UnsafeMutablePointer<addrinfo>? = list
    while let a = p {
        let bytes = [UInt8](UnsafeRawBufferPointer(start: a.pointee.ai_addr, count: Int(a.pointee.ai_addrlen)))
        out.append((a.pointee.ai_family, bytes, a.pointee.ai_addrlen))
        p = a.pointee.ai_next
    }
    // Any address: prefer the IPv6 wildcard, which also accepts IPv4 (dual stack).
    if node == nil { out.sort { $0.family == AF_INET6 && $1.family != AF_INET6 } }
    return out
}

func setIntOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ what: String, _ context: String) throws {
    var v = value
    _ = try syscall("setsockopt(\(what))", context) {
        setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
    }
}

func setNonBlocking(_ fd: Int32, _ on: Bool, _ context: String) throws {
    let flags = try syscall("fcntl(F_GETFL)", context) { fcntl(fd, F_GETFL) }
    _ = try syscall("fcntl(F_SETFL)", context) { fcntl(fd, F_SETFL, on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK) }
}

/// A listening TCP socket.
///
/// Thread-safety: `accept` may run on one or more threads while another
/// calls `close`; `close` wakes every blocked `accept` (through a pipe) and
/// the descriptors are closed once the last `accept` has left.
public final class TCPListener: @unchecked Sendable {
    private struct State {
        var closed = false
        var active = 0      // accepts in progress
        var released = false
    }
    private let fd: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let state = Mutex(State())
    /// The bound address, "0.0.0.0:9443" or "[::]:9443".
    public let localDescription: String
    /// The bound port (the kernel's choice when 0 was asked for).
    public let port: UInt16

    /// Listens on `host` ("" or "*" = every address, IPv6 and IPv4) and `port`
    /// (0 = any free port) with SO_REUSEADDR.
    public init(host: String, port: UInt16, backlog: Int32 = 64) throws {
        let what = "listening on \(hostPort(host.isEmpty ? "*" : stripBrackets(host), port))"
        var lastError: Error?
        var bound: Int32 = -1
        for a in try resolve(host, port, passive: true) {
            let s = Glibc.socket(a.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if s < 0 { lastError = SystemError(call: "socket", errno: errno, context: what); continue }
            do {
                try setIntOption(s, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR", what)
                if a.family == AF_INET6 {
                    try setIntOption(s, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 0, "IPV6_V6ONLY", what)
                }
                _ = try a.addr.withUnsafeBytes { b in
                    try syscall("bind", what) { Glibc.bind(s, b.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.len) }
                }
                _ = try syscall("listen", what) { Glibc.listen(s, backlog) }
                try setNonBlocking(s, true, what)
                bound = s
                break
            } catch {
                lastError = error
                Glibc.close(s)
            }
        }
        guard bound >= 0 else {
            throw lastError ?? TidemarkError(.notFound, "\(what): no address to listen on")
        }
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let desc = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> String in
                getsockname(bound, sa, &len) == 0 ? describe(sa, len) : "?"
            }
        }
        var pipeFds: [Int32] = [-1, -1]
        let pr = tm_pipe_cloexec_nonblock(&pipeFds)
        if pr != 0 {
            Glibc.close(bound)
            throw SystemError(call: "pipe2", errno: -pr, context: what)
        }
        fd = bound
        wakeRead = pipeFds[0]
        wakeWrite = pipeFds[1]
        localDescription = desc
        let portString = desc.split(separator: ":").last.map(String.init) ?? "0"
        self.port = UInt16(portString) ?? port
    }

    deinit { release() }

    private func release() {
        let doIt = state.withLock { s -> Bool in
            if s.released { return false }
            s.released = true
            return true
        }
        if doIt {
            Glibc.close(fd)
            Glibc.close(wakeRead)
            Glibc.close(wakeWrite)
        }
    }

    /// Waits for the next connection (TCP_NODELAY set, blocking, no timeouts).
    /// Returns nil once `close` was called, also when it is called while this
    /// call waits.
    public func accept() throws -> TCPSocket? {
        let entered = state.withLock { s -> Bool in
            if s.closed { return false }
            s.active += 1
            return true
        }
        guard entered else { return nil }
        defer {
            let last = state.withLock { s -> Bool in
                s.active -= 1
                return s.closed && s.active == 0
            }
            if last { release() }
        }
        let what = "accepting a connection on \(localDescription)"
        while true {
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let r = poll(&fds, 2, -1)
            if r < 0 {
                let e = errno
                if e == EINTR { continue }
                throw SystemError(call: "poll", errno: e, context: what)
            }
            if state.withLock({ $0.closed }) || fds[1].revents != 0 { return nil }
            if fds[0].revents == 0 { continue }
            var storage = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let c = withUnsafeMutablePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    tm_accept_cloexec(fd, sa, &len)
                }
            }
            if c < 0 {
                let e = -c
                switch e {
                case EINTR, EAGAIN, EWOULDBLOCK, ECONNABORTED, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN,
                     ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH:
                    continue  // this connection went away before we took it: wait for the next
                default:
                    throw SystemError(call: "accept4", errno: e, context: what)
                }
            }
            let peer = withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { describe($0, len) }
            }
            let sock = TCPSocket(fd: c, peer: peer)
            try? setIntOption(c, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY", "connection from \(peer)")
            return sock
        }
    }

    /// Stops listening. Blocked and later `accept` calls return nil. Idempotent.
    public func close() {
        let release = state.withLock { s -> Bool in
            if s.closed { return false }
            s.closed = true
            var one: UInt8 = 1
            _ = Glibc.write(wakeWrite, &one, 1)
            return s.active == 0
        }
        if release { self.release() }
    }
}

/// A connected TCP socket (blocking).
///
/// Thread-safety: `read` and `writeAll` may run on two different threads at
/// once; `shutdown` may be called from any thread to unblock them. `close`
/// must not race with other calls on the socket (call `shutdown` first and
/// let the other threads leave).
public final class TCPSocket: ByteStream, @unchecked Sendable {
    private struct State {
        var closed = false
        var readTimeoutMs = 0
        var writeTimeoutMs = 0
    }
    /// The file descriptor (for TLSStream); -1 after close.
    let fd: Int32
    private let state = Mutex(State())
    /// The remote end, "127.0.0.1:40312" or "[::1]:40312".
    public let peerDescription: String

    init(fd: Int32, peer: String) {
        self.fd = fd
        self.peerDescription = peer
    }

    deinit { close() }

    /// Connects to `host` (name, IPv4 or IPv6 address, "[::1]") and `port`,
    /// trying each address in turn within `timeoutMs` in all. TCP_NODELAY is
    /// set. A timeout throws a `SystemError` with `isTimeout`.
    public static func connect(host: String, port: UInt16, timeoutMs: Int) throws -> TCPSocket {
        let target = hostPort(stripBrackets(host), port)
        let deadline = SystemClock.monotonicMs() + Int64(max(0, timeoutMs))
        var lastError: Error?
        for a in try resolve(host, port, passive: false) {
            let addrText = a.addr.withUnsafeBytes { describe($0.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.len) }
            let what = addrText == target ? "connecting to \(target)" : "connecting to \(target) (\(addrText))"
            let s = Glibc.socket(a.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            if s < 0 { lastError = SystemError(call: "socket", errno: errno, context: what); continue }
            do {
                let r = a.addr.withUnsafeBytes { Glibc.connect(s, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), a.len) }
                if r != 0 {
                    let e = errno
                    guard e == EINPROGRESS || e == EINTR else { throw SystemError(call: "connect", errno: e, context: what) }
                    let left = Int(max(0, deadline - SystemClock.monotonicMs()))
                    guard try pollReady(s, Int16(POLLOUT), timeoutMs: left, what) else {
                        throw SystemError(call: "connect", errno: ETIMEDOUT, context: "\(what): no answer within \(timeoutMs) ms")
                    }
                    var soError: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    _ = try syscall("getsockopt(SO_ERROR)", what) { getsockopt(s, SOL_SOCKET, SO_ERROR, &soError, &len) }
                    if soError != 0 { throw SystemError(call: "connect", errno: soError, context: what) }
                }
                try setNonBlocking(s, false, what)
                try setIntOption(s, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY", what)
                return TCPSocket(fd: s, peer: addrText)
            } catch {
                lastError = error
                Glibc.close(s)
                if SystemClock.monotonicMs() >= deadline { break }
            }
        }
        throw lastError ?? TidemarkError(.notFound, "connecting to \(target): the name has no address")
    }

    /// Read and write timeouts in milliseconds (0 = wait forever), as
    /// SO_RCVTIMEO/SO_SNDTIMEO; TLSStream applies the same limits. A read or
    /// write that times out throws a `SystemError` with `isTimeout`.
    public func setTimeouts(readMs: Int, writeMs: Int) throws {
        precondition(readMs >= 0 && writeMs >= 0, "timeouts are non-negative")
        func tv(_ ms: Int) -> timeval { timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000) }
        let what = "setting timeouts on the connection with \(peerDescription)"
        var r = tv(readMs), w = tv(writeMs)
        let len = socklen_t(MemoryLayout<timeval>.size)
        _ = try syscall("setsockopt(SO_RCVTIMEO)", what) { setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, len) }
        _ = try syscall("setsockopt(SO_SNDTIMEO)", what) { setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &w, len) }
        state.withLock { $0.readTimeoutMs = readMs; $0.writeTimeoutMs = writeMs }
    }

    /// The limits set by `setTimeouts` (0 = none).
    public var timeouts: (readMs: Int, writeMs: Int) {
        state.withLock { ($0.readTimeoutMs, $0.writeTimeoutMs) }
    }

    /// Reads what is there (at least one byte), or 0 at end of stream.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0 else { return 0 }
        while true {
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 { return n }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK {
                throw SystemError(call: "recv", errno: ETIMEDOUT,
                                  context: "reading from \(peerDescription): nothing for \(timeouts.readMs) ms")
            }
            throw SystemError(call: "recv", errno: e, context: "reading from \(peerDescription)")
        }
    }

    /// Writes all of `buffer` (no SIGPIPE: a closed peer is EPIPE).
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < buffer.count {
            let n = send(fd, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL))
            if n >= 0 { done += n; continue }
            let e = errno
            if e == EINTR { continue }
            if e == EAGAIN || e == EWOULDBLOCK {
                throw SystemError(call: "send", errno: ETIMEDOUT,
                                  context: "writing to \(peerDescription): no progress for \(timeouts.writeMs) ms")
            }
            throw SystemError(call: "send", errno: e, context: "writing to \(peerDescription)")
        }
    }

    /// shutdown(SHUT_RDWR): the peer sees end of stream and blocked reads and
    /// writes on this socket return at once. Safe from any thread until `close`.
    public func shutdown() {
        state.withLock { s in
            if !s.closed { _ = Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Closes the descriptor. Idempotent.
    public func close() {
        let doIt = state.withLock { s -> Bool in
            if s.closed { return false }
            s.closed = true
            return true
        }
        if doIt { Glibc.close(fd) }
    }
}
