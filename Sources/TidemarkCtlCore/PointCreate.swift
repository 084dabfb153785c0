import Foundation
import Glibc
import TidemarkSystem

public enum PointCreateCommand {
    public static let defaultSocketPath = "/run/tidemark/agent.sock"
    /// The agent answers once the point is committed (up to 120 s); a little more.
    public static let replyTimeoutMs = 150_000
    static let replyBytesMax = 64 << 10

    /// `tidemarkctl point create`: asks the agent on this host (through its
    /// control socket) to tag a recovery point of `disk`, and returns the line
    /// to print: "point ID (CLASS) of DISK at sequence N, freeze X ms".
    public static func run(socketPath: String, disk: String, appConsistent: Bool) throws -> String {
        let reply = try ControlClient.request(socketPath: socketPath,
                                              ["op": "create-point", "disk": disk, "app_consistent": appConsistent ? "true" : "false"],
                                              timeoutMs: replyTimeoutMs)
        guard (reply["ok"] as? Bool) == true else {
            let why = reply["error"].map(text) ?? "the agent gave no reason"
            throw TidemarkError(.state, "no point of \(disk) was created: \(why)")
        }
        let field = { (k: String) in reply[k].map(text) ?? "?" }
        return "point \(field("id")) (\(field("class"))) of \(field("disk_id")) at sequence \(field("sequence")), freeze \(field("freeze_ms")) ms"
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
        do {
            _ = try syscall("connect", what) {
                withUnsafePointer(to: &addr) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, addrLen) }
                }
            }
        } catch let e as SystemError {
            switch e.errno {
            case ENOENT, ECONNREFUSED, ENOTDIR:
                throw TidemarkError(.notFound, "no agent is listening on \(path) (is tidemark-agent run running?)",
                                    hint: "start it (systemctl start tidemark-agent), or pass --socket with its control socket")
            case EACCES, EPERM:
                throw TidemarkError(.invalidArgument, "permission denied on the agent's control socket \(path)",
                                    hint: "run tidemarkctl as root (the socket is mode 0600)")
            default:
                throw e
            }
        }
        var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
        _ = setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var stv = timeval(tv_sec: 5, tv_usec: 0)
        _ = setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &stv, socklen_t(MemoryLayout<timeval>.size))

        var line = [UInt8](try JSONSerialization.data(withJSONObject: request, options: [.sortedKeys]))
        line.append(UInt8(ascii: "\n"))
        try sendAll(s, line, purpose: what)

        var reply = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n: Int
            do {
                n = try buf.withUnsafeMutableBytes { b in try syscall("recv", what) { Glibc.recv(s, b.baseAddress, b.count, 0) } }
            } catch let e as SystemError where e.errno == EAGAIN || e.errno == EWOULDBLOCK {
                throw TidemarkError(.io, "the agent on \(path) did not answer within \(timeoutMs / 1000) s",
                                    hint: "the agent log (journalctl -u tidemark-agent) says what it is doing")
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
