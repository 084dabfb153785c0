import Foundation
import Glibc
import TidemarkSystem

public enum PointCreateCommand {
    public static let defaultSocketPath = "/run/tidemark/agent.sock"
    /// The agent answers once the point is committed (up to 120 s); a little more.
    public static let replyTimeoutMs = 150_000
    static let replyBytesMax = 64 << 10

    /// `tidemarkctl point create`: asks the agent on this host (through its
    /// control socket) to tag a recovery point and returns what to print.
    /// With `disk`, a point of that disk: "point ID (CLASS) of DISK at
    /// sequence N, freeze X ms". Without it (or with `machine`), a machine
    /// point, every disk tagged at one instant under one id: "point ID
    /// (CLASS) of N disks at one instant, freeze X ms", then one line per
    /// disk, "  DISK_ID (DEV) at sequence N"; an agent with one disk answers
    /// a point of that disk.
    public static func run(socketPath: String, disk: String?, machine: Bool = false, appConsistent: Bool) throws -> String {
        if machine && disk != nil {
            throw TidemarkError(.invalidArgument, "--machine and --disk exclude each other: a machine point spans every disk of the agent",
                                hint: "leave out --disk for a machine point, or --machine for a point of one disk")
        }
        var request = ["op": "create-point", "app_consistent": appConsistent ? "true" : "false"]
        if let disk { request["disk"] = disk } else { request["scope"] = "machine" }
        let reply = try ControlClient.request(socketPath: socketPath, request, timeoutMs: replyTimeoutMs)
        guard (reply["ok"] as? Bool) == true else {
            let why = reply["error"].map(text) ?? "the agent gave no reason"
            throw TidemarkError(.state, disk.map { "no point of \($0) was created: \(why)" } ?? "no machine point was created: \(why)")
        }
        let field = { (k: String) in reply[k].map(text) ?? "?" }
        let disks = reply["disks"] as? [[String: Any]] ?? []
        guard reply["scope"].map(text) == "machine" else {
            // A point of one disk (an older agent says no scope).
            return "point \(field("id")) (\(field("class"))) of \(field("disk_id")) at sequence \(field("sequence")), freeze \(field("freeze_ms")) ms"
        }
        var out = "point \(field("id")) (\(field("class"))) of \(disks.count) disks at one instant, freeze \(field("freeze_ms")) ms"
        for d in disks {
            let v = { (k: String) in d[k].map(text) ?? "?" }
            out += "\n  \(v("disk_id")) (\(v("disk")), \(v("class"))) at sequence \(v("sequence"))"
        }
        return out
    }

    /// A reply value as text: strings as they are, whole numbers without a fraction.
    static func text(_ v: Any) -> String {
        if let s = v as? String { return s }
        if let n = v as? NSNumber {
            let d = n.doubleValue
            if d == d.rounded(), abs(d) < 1e15 { return String(n.int64Value) }
            return String(format: "%.1f", d)
        }
        return "\(v)"
    }
}

/// The client side of the agent's control socket: one JSON line out, one in.
enum ControlClient {
    static func request(socketPath path: String, _ request: [String: String], timeoutMs: Int) throws -> [String: Any] {
        let what = "talking to the agent on \(path)"
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let pathBytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !pathBytes.isEmpty, pathBytes.count < capacity else {
            throw TidemarkError(.invalidArgument, "control socket path '\(path)' is empty or longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
            raw[pathBytes.count] = 0
        }
        let addrLen = socklen_t(MemoryLayout<sa_family_t>.size + pathBytes.count + 1)
        let s = try syscall("socket", what) { Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        defer { Glibc.close(s) }
        while true {
            let r = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, addrLen) }
            }
            if r == 0 { break }
            let e = errno
            switch e {
            case EINTR: continue
            case ENOENT, ECONNREFUSED, ENOTDIR:
                throw TidemarkError(.notFound, "no agent is listening on \(path) (is tidemark-agent run running?)",
                                    hint: "start it (systemctl start tidemark-agent), or pass --socket with its control socket")
            case EACCES, EPERM:
                throw TidemarkError(.invalidArgument, "permission denied on the agent's control socket \(path)",
                                    hint: "run tidemarkctl as root (the socket is mode 0600)")
            default:
                throw SystemError(call: "connect", errno: e, context: what)
            }
        }
        var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
        _ = setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var stv = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &stv, socklen_t(MemoryLayout<timeval>.size))

        var line = [UInt8](try JSONSerialization.data(withJSONObject: request, options: [.sortedKeys]))
        line.append(UInt8(ascii: "\n"))
        var rest = line[...]
        while !rest.isEmpty {
            let n = rest.withUnsafeBytes { Glibc.send(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { throw SystemError(call: "send", errno: errno, context: what) }
            rest = rest.dropFirst(n)
        }

        var reply = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.recv(s, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                let e = errno
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK {
                    throw TidemarkError(.io, "the agent on \(path) did not answer within \(timeoutMs / 1000) s",
                                        hint: "the agent log (journalctl -u tidemark-agent) says what it is doing")
                }
                throw SystemError(call: "recv", errno: e, context: what)
            }
            if n == 0 { break }
            if let nl = buf[0..<n].firstIndex(of: UInt8(ascii: "\n")) {
                reply += buf[0..<nl]
                break
            }
            reply += buf[0..<n]
            guard reply.count <= PointCreateCommand.replyBytesMax else {
                throw TidemarkError(.corrupt, "the agent on \(path) sent a reply longer than \(PointCreateCommand.replyBytesMax) bytes")
            }
        }
        guard !reply.isEmpty else {
            throw TidemarkError(.io, "the agent on \(path) closed the connection without a reply",
                                hint: "the agent log (journalctl -u tidemark-agent) says why")
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(reply)), let dict = object as? [String: Any] else {
            throw TidemarkError(.corrupt, "the agent on \(path) sent a reply that is not a JSON object")
        }
        return dict
    }
}
