import Foundation
import Glibc
import Synchronization
import TidemarkSurface
import TidemarkSystem

/// The agent's local control socket (`tidemarkctl point create` talks to it).
///
/// A Unix stream socket, by default /run/tidemark/agent.sock: the parent
/// directory is created 0755 when absent, the socket file is 0600 (root
/// only). Protocol (TidemarkSurface/ControlProtocol.swift): the client
/// sends one `ControlRequest` as a JSON object on one line (at most
/// `requestBytesMax` bytes, within `readTimeoutMs`); the server answers
/// with one `ControlReply` on one line — the handler's, or a failure naming
/// what is wrong with the request (not JSON, another protocol version, an
/// unknown operation or field) — and closes the connection.
///
/// Threads: one accepts; each client gets a short-lived thread of its own,
/// at most `clientsMax` at once (a client beyond that is answered "busy" at
/// once). The handler runs on the client's thread and may take long (a point
/// waits for its commit); it must be thread-safe.
public final class ControlServer: @unchecked Sendable {
    public static let requestBytesMax = ControlProtocol.requestBytesMax
    public static let readTimeoutMs = 5_000
    /// Writing the reply: the client is waiting for it, so this is generous.
    public static let writeTimeoutMs = 5_000
    public static let clientsMax = 8

    public let path: String
    private let handler: @Sendable (ControlRequest) -> ControlReply
    private let fd: Int32
    /// Device and inode of the socket file we bound, so `stop` removes only ours.
    private let boundIdentity: (dev: UInt64, ino: UInt64)

    private struct State {
        var started = false
        var stopping = false
        var acceptRunning = false
        var clients = 0
        var closed = false
    }
    private let state = Mutex(State())
    /// Signalled when the accept thread has left.
    private let acceptDone = DispatchSemaphore(value: 0)

    /// Creates the socket and binds it (not yet accepting: see `start`).
    /// Replaces a stale socket file (nobody listening); refuses when another
    /// process listens on `path`, or when `path` is not a socket.
    public init(path: String, handler: @escaping @Sendable (ControlRequest) -> ControlReply) throws {
        self.path = path
        self.handler = handler
        let what = "opening the control socket \(path)"

        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity, !pathBytes.contains(0) else {
            throw TidemarkError(.invalidArgument, "control socket path '\(path)' is empty or longer than \(capacity - 1) bytes",
                                hint: "use a short absolute path such as /run/tidemark/agent.sock")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let addrLen = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + 1)

        try Self.makeParentDirectory(of: path)

        let s = try syscall("socket", what) {
            Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do {
            var attempt = 0
            while true {
                do {
                    _ = try syscall("bind", what) {
                        withUnsafePointer(to: &addr) { p in
                            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(s, $0, addrLen) }
                        }
                    }
                    break
                } catch let e as SystemError where e.errno == EADDRINUSE && attempt == 0 {
                    attempt += 1
                }
                try Self.removeStaleSocket(path, addr: addr, addrLen: addrLen)
            }
            // Mode before listen: until listen nobody can connect, so the
            // window between bind and chmod exposes nothing.
            _ = try syscall("chmod", "making the control socket \(path) mode 0600") { chmod(path, 0o600) }
            _ = try syscall("listen", what) { Glibc.listen(s, 16) }
            // Non-blocking, so an accept after poll never waits for a client that went away.
            let flags = try syscall("fcntl(F_GETFL)", what) { fcntl(s, F_GETFL) }
            _ = try syscall("fcntl(F_SETFL)", what) { fcntl(s, F_SETFL, flags | O_NONBLOCK) }
            var st = Glibc.stat()
            _ = try syscall("stat", what) { Glibc.lstat(path, &st) }
            boundIdentity = (UInt64(st.st_dev), UInt64(st.st_ino))
        } catch {
            Glibc.close(s)
            throw error
        }
        fd = s
    }

    deinit {
        stop()
    }

    /// Starts the accept thread. Idempotent; does nothing after `stop`.
    public func start() {
        let go = state.withLock { st -> Bool in
            if st.started || st.stopping { return false }
            st.started = true
            st.acceptRunning = true
            return true
        }
        guard go else { return }
        let t = Thread { [self] in
            self.acceptLoop()
            self.state.withLock { $0.acceptRunning = false }
            self.acceptDone.signal()
        }
        t.name = "control-accept"
        t.start()
        Log.info("control socket listening on \(path)")
    }

    /// Stops accepting, waits for the accept thread, closes the socket and
    /// removes the socket file (when it is still the one this server bound).
    /// Clients already being served finish on their own threads. Idempotent.
    public func stop() {
        let (first, waitAccept) = state.withLock { st -> (Bool, Bool) in
            if st.stopping { return (false, false) }
            st.stopping = true
            return (true, st.acceptRunning)
        }
        guard first else { return }
        if waitAccept { acceptDone.wait() }
        var st = Glibc.stat()
        if Glibc.lstat(path, &st) == 0, UInt64(st.st_dev) == boundIdentity.dev, UInt64(st.st_ino) == boundIdentity.ino {
            unlink(path)
        }
        state.withLock { $0.closed = true }
        Glibc.close(fd)
    }

    // MARK: - Setup

    private static func makeParentDirectory(of path: String) throws {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
        let parent = String(path[..<slash])
        var prefix = parent.hasPrefix("/") ? "" : "."
        for part in parent.split(separator: "/") {
            prefix += "/" + part
            _ = try makeDirectory(prefix, mode: 0o755, purpose: "creating the control socket's directory")
        }
    }

    /// `path` is in use: remove it when it is a socket nobody listens on;
    /// refuse when it is not a socket or a process accepts connections on it.
    private static func removeStaleSocket(_ path: String, addr: sockaddr_un, addrLen: socklen_t) throws {
        var st = Glibc.stat()
        _ = try syscall("lstat", "inspecting \(path)") { Glibc.lstat(path, &st) }
        guard st.st_mode & S_IFMT == S_IFSOCK else {
            throw TidemarkError(.invalidArgument, "\(path) exists and is not a socket",
                                hint: "remove it or choose another control socket path")
        }
        let probe = try syscall("socket", "probing \(path)") {
            Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        defer { Glibc.close(probe) }
        var a = addr
        let listening: Bool
        do {
            _ = try syscall("connect", "probing the existing control socket \(path)") {
                withUnsafePointer(to: &a) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(probe, $0, addrLen) }
                }
            }
            listening = true
        } catch let e as SystemError where e.errno == EAGAIN || e.errno == EINPROGRESS {
            // EAGAIN: the listener's backlog is full, so somebody is listening.
            listening = true
        } catch let e as SystemError where e.errno == ECONNREFUSED {
            listening = false
        }
        if listening {
            throw TidemarkError(.busy, "another agent is listening on \(path)",
                                hint: "stop the other tidemark-agent first (systemctl stop tidemark-agent), or give this one another control socket")
        }
        Log.info("replacing the stale control socket \(path)")
        try removeFile(path, purpose: "removing the stale control socket")
    }

    // MARK: - Serving

    private func acceptLoop() {
        while !state.withLock({ $0.stopping }) {
            do {
                guard try pollReady(fd, Int16(POLLIN), timeoutMs: 200, "control socket \(path)") else { continue }
            } catch {
                Log.error("\(error); no longer accepting")
                return
            }
            let c: Int32
            do {
                c = try syscall("accept", "control socket \(path)") { Glibc.accept(fd, nil, nil) }
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)  // hook scripts must not inherit it
            } catch let error as SystemError {
                let e = error.errno
                switch e {
                case EAGAIN, EWOULDBLOCK, ECONNABORTED, EPROTO:
                    continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    Log.warning("control socket \(path): accept failed: \(String(cString: strerror(e))); retrying")
                    usleep(100_000)
                    continue
                default:
                    Log.error("control socket \(path): accept failed: \(String(cString: strerror(e))); no longer accepting")
                    return
                }
            } catch {
                Log.error("control socket \(path): accept failed: \(error); no longer accepting")
                return
            }
            Self.setTimeout(c, SO_RCVTIMEO, Self.readTimeoutMs)
            Self.setTimeout(c, SO_SNDTIMEO, Self.writeTimeoutMs)
            let admitted = state.withLock { st -> Bool in
                guard st.clients < Self.clientsMax else { return false }
                st.clients += 1
                return true
            }
            guard admitted else {
                Self.reply(c, .failure("the agent is busy: \(Self.clientsMax) control requests are in progress; try again"))
                Glibc.close(c)
                continue
            }
            let t = Thread { [self] in
                self.serve(c)
                Glibc.close(c)
                self.state.withLock { $0.clients -= 1 }
            }
            t.name = "control-client"
            t.start()
        }
    }

    private func serve(_ c: Int32) {
        let request: ControlRequest
        switch Self.readRequest(c) {
        case .closed:
            return   // a probe (another agent checking the socket is live), or a client that gave up
        case .failure(let message):
            Log.warning("control socket \(path): bad request: \(message)")
            Self.reply(c, .failure(message))
            return
        case .success(let r):
            request = r
        }
        var response = handler(request)
        if !response.ok && response.error == nil { response.error = "internal error: the agent's reply says neither what nor why" }
        Self.reply(c, response)
    }

    private enum ReadResult {
        case success(ControlRequest)
        case closed
        case failure(String)
    }

    /// Reads one line (up to `requestBytesMax` bytes before its newline) and
    /// decodes it as a `ControlRequest`.
    private static func readRequest(_ c: Int32) -> ReadResult {
        var line = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 1024)
        while true {
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { b in try syscall("recv", "reading the request") { Glibc.recv(c, b.baseAddress, b.count, 0) } }
            } catch let e as SystemError where e.errno == EAGAIN || e.errno == EWOULDBLOCK {
                return .failure("no complete request line within \(readTimeoutMs / 1000) s")
            } catch let e as SystemError {
                return .failure("reading the request: \(String(cString: strerror(e.errno)))")
            } catch {
                return .failure("reading the request: \(error)")
            }
            if n == 0 {
                if line.isEmpty { return .closed }
                break   // a last line without newline is accepted
            }
            if let nl = buf[0..<n].firstIndex(of: UInt8(ascii: "\n")) {
                line += buf[0..<nl]
                break
            }
            line += buf[0..<n]
            if line.count > requestBytesMax { break }
        }
        if line.last == UInt8(ascii: "\r") { line.removeLast() }
        guard line.count <= requestBytesMax else {
            return .failure("request longer than \(requestBytesMax) bytes")
        }
        do {
            return .success(try ControlRequest.decode(Data(line)))
        } catch {
            return .failure(error.message)
        }
    }

    /// Writes one JSON line; failures (client gone, timeout) are logged only.
    private static func reply(_ c: Int32, _ response: ControlReply) {
        var data: Data
        do {
            data = try JSONOutput.encode(response)
        } catch {
            // Only a number JSON cannot hold (a NaN freeze time) gets here;
            // a failure reply holds strings only, which always encode.
            Log.error("control socket: the reply cannot be written as JSON: \(error)")
            do {
                data = try JSONOutput.encode(ControlReply.failure("internal error: the agent's reply cannot be written as JSON: \(error)"))
            } catch {
                return   // the client reports the connection closed without a reply
            }
        }
        data.append(UInt8(ascii: "\n"))
        do {
            try sendAll(c, [UInt8](data), purpose: "sending the reply")
        } catch {
            Log.warning("control socket: could not send the reply: \(error)")
        }
    }

    private static func setTimeout(_ c: Int32, _ option: Int32, _ ms: Int) {
        var tv = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        _ = setsockopt(c, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}
