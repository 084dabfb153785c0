import Foundation
import Glibc

/// A TCP proxy on 127.0.0.1 for fault tests: agent → proxy → server, with
/// the faults a network makes. Threads and blocking sockets, in-process.
///
/// - pass: bytes are forwarded both ways;
/// - `cutAll()` / `cutEvery(ms:)` / `cutAfter(bytes:)`: connections are
///   dropped (both sockets shut down), now, repeatedly, or after a number of
///   agent → server bytes;
/// - `stall(seconds:)`: nothing is forwarded either way for a while, the
///   connections stay open (a stalled path);
/// - `blackholeExisting()`: the open connections never forward again but stay
///   open (a path that died silently); new connections pass;
/// - `tamper(atByte:)`: one bit is flipped in the agent → server stream of
///   the next connection, at that offset from its start.
final class TCPProxy: @unchecked Sendable {
    private final class Pair: @unchecked Sendable {
        let agent: Int32
        let server: Int32
        var closed = false
        var blackholed = false
        var upBytes = 0
        var tamperAt: Int?
        var pumpsLeft = 2
        init(agent: Int32, server: Int32) {
            self.agent = agent
            self.server = server
        }
    }

    let port: UInt16
    private let upstreamPort: UInt16
    private let listenFD: Int32
    private let lock = NSLock()
    private var pairs: [Pair] = []
    private var stalledUntil = 0.0
    private var cutAfterBytes: Int?
    private var pendingTamper: Int?
    private var cutTimerMs: Int?
    private var stopped = false
    private var threadsRunning = 0
    private(set) var accepted = 0
    private(set) var cut = 0
    private(set) var flipped = 0

    init(upstreamPort: UInt16) throws {
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailureProxy("socket: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = Self.loopback(port: 0)
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0, listen(fd, 64) == 0 else {
            Glibc.close(fd)
            throw TestFailureProxy("bind/listen: errno \(errno)")
        }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        listenFD = fd
        port = UInt16(bigEndian: bound.sin_port)
        spawn { self.acceptLoop() }
        spawn { self.cutTimerLoop() }
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        lock.lock()
        threadsRunning += 1
        lock.unlock()
        let t = Thread {
            body()
            self.lock.lock()
            self.threadsRunning -= 1
            self.lock.unlock()
        }
        t.start()
    }

    private var isStopped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopped
    }

    // MARK: Faults

    func cutAll() {
        lock.lock()
        let open = pairs.filter { !$0.closed }
        lock.unlock()
        for p in open { close(p, counted: true) }
    }

    /// Cuts every connection every `ms` milliseconds; nil stops it.
    func cutEvery(ms: Int?) {
        lock.lock()
        cutTimerMs = ms
        lock.unlock()
    }

    /// Cuts each connection once it has carried `bytes` from agent to server; nil stops it.
    func cutAfter(bytes: Int?) {
        lock.lock()
        cutAfterBytes = bytes
        lock.unlock()
    }

    func stall(seconds: Double) {
        lock.lock()
        stalledUntil = ProcessInfo.processInfo.systemUptime + seconds
        lock.unlock()
    }

    func blackholeExisting() {
        lock.lock()
        for p in pairs { p.blackholed = true }
        lock.unlock()
    }

    func tamper(atByte offset: Int) {
        lock.lock()
        pendingTamper = offset
        lock.unlock()
    }

    var openConnections: Int {
        lock.lock()
        defer { lock.unlock() }
        return pairs.filter { !$0.closed && !$0.blackholed }.count
    }

    // MARK: Plumbing

    private func acceptLoop() {
        while !isStopped {
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) > 0 else { continue }
            let a = accept(listenFD, nil, nil)
            if a < 0 { continue }
            let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = Self.loopback(port: upstreamPort)
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if r != 0 {
                Glibc.close(a)
                Glibc.close(s)
                continue
            }
            let p = Pair(agent: a, server: s)
            lock.lock()
            accepted += 1
            p.tamperAt = pendingTamper
            pendingTamper = nil
            pairs.removeAll { $0.closed && $0.pumpsLeft == 0 }
            pairs.append(p)
            lock.unlock()
            spawn { self.pump(p, up: true) }
            spawn { self.pump(p, up: false) }
        }
    }

    private func cutTimerLoop() {
        var last = ProcessInfo.processInfo.systemUptime
        while !isStopped {
            usleep(10_000)
            lock.lock()
            let every = cutTimerMs
            lock.unlock()
            let now = ProcessInfo.processInfo.systemUptime
            guard let every else { last = now; continue }
            if (now - last) * 1000 >= Double(every) {
                last = now
                cutAll()
            }
        }
    }

    private func close(_ p: Pair, counted: Bool) {
        lock.lock()
        let first = !p.closed
        p.closed = true
        if first && counted { cut += 1 }
        lock.unlock()
        if first {
            shutdown(p.agent, Int32(SHUT_RDWR))
            shutdown(p.server, Int32(SHUT_RDWR))
        }
    }

    private func pump(_ p: Pair, up: Bool) {
        let from = up ? p.agent : p.server
        let to = up ? p.server : p.agent
        var buf = [UInt8](repeating: 0, count: 64 << 10)
        loop: while true {
            lock.lock()
            let closed = p.closed || stopped
            let hold = p.blackholed || ProcessInfo.processInfo.systemUptime < stalledUntil
            lock.unlock()
            if closed { break }
            if hold {
                usleep(10_000)
                continue
            }
            var pfd = pollfd(fd: from, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 20) > 0 else { continue }
            // Re-check: a stall may have begun while polling.
            lock.lock()
            let holdNow = p.blackholed || ProcessInfo.processInfo.systemUptime < stalledUntil
            lock.unlock()
            if holdNow { continue }
            let n = buf.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            if up {
                lock.lock()
                let start = p.upBytes
                p.upBytes += n
                if let t = p.tamperAt, t >= start, t < start + n {
                    buf[t - start] ^= 0x10
                    p.tamperAt = nil
                    flipped += 1
                }
                let limit = cutAfterBytes
                lock.unlock()
                if let limit, p.upBytes >= limit {
                    close(p, counted: true)
                    break
                }
            }
            var off = 0
            while off < n {
                let w = buf.withUnsafeBytes { send(to, $0.baseAddress! + off, n - off, Int32(MSG_NOSIGNAL)) }
                if w <= 0 { break loop }
                off += w
            }
        }
        close(p, counted: false)
        lock.lock()
        p.pumpsLeft -= 1
        let last = p.pumpsLeft == 0
        lock.unlock()
        if last {
            Glibc.close(p.agent)
            Glibc.close(p.server)
        }
    }

    /// Closes every connection and the listener; returns once every thread ended.
    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
        cutAll()
        let deadline = ProcessInfo.processInfo.systemUptime + 10
        while ProcessInfo.processInfo.systemUptime < deadline {
            lock.lock()
            let n = threadsRunning
            lock.unlock()
            if n == 0 { break }
            usleep(10_000)
        }
        Glibc.close(listenFD)
    }
}

struct TestFailureProxy: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = "TCPProxy: " + d }
}
