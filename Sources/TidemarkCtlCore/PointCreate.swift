import Foundation
import Glibc
import TidemarkSurface
import TidemarkSystem

public enum PointCreateCommand {
    public static let defaultSocketPath = "/run/tidemark/agent.sock"
    /// The agent answers once the point is committed (up to 120 s); a little more.
    public static let replyTimeoutMs = 150_000
    static let replyBytesMax = ControlProtocol.replyBytesMax

    /// `tidemarkctl point create`: asks the agent on this host (through its
    /// control socket) to tag a recovery point and returns what to print.
    /// With `disk`, a point of that disk: "point ID (CLASS) of DISK at
    /// sequence N, freeze X ms". Without it (or with `machine`), a machine
    /// point, every disk tagged at one instant under one id: "point ID
    /// (CLASS) of N disks at one instant, freeze X ms", then one line per
    /// disk, "  DISK_ID (DEV, CLASS) at sequence N"; an agent with one disk
    /// answers a point of that disk. With `json`, the point as one JSON
    /// object (`CreatedPoint`).
    public static func run(socketPath: String, disk: String?, machine: Bool = false, appConsistent: Bool, json: Bool = false) throws -> String {
        if machine && disk != nil {
            throw TidemarkError(.invalidArgument, "--machine and --disk exclude each other: a machine point spans every disk of the agent",
                                hint: "leave out --disk for a machine point, or --machine for a point of one disk")
        }
        let reply = try ControlClient.request(socketPath: socketPath, .createPoint(disk: disk, appConsistent: appConsistent),
                                              timeoutMs: replyTimeoutMs)
        guard reply.ok, let p = reply.point else {
            let why = reply.error ?? "the agent gave no reason"
            throw TidemarkError(.state, disk.map { "no point of \($0) was created: \(why)" } ?? "no machine point was created: \(why)")
        }
        return json ? try JSONOutput.line(p) : text(p) + "\n"
    }

    /// The line `point create` prints.
    static func text(_ p: CreatedPoint) -> String {
        let freeze = String(format: "%.1f", p.freezeMs)
        guard p.scope == "machine" else {
            return "point \(p.id) (\(p.pointClass)) of \(p.diskID ?? p.disks.first?.diskID ?? "?") at sequence \(p.sequence ?? p.disks.first?.sequence ?? 0), freeze \(freeze) ms"
        }
        var out = "point \(p.id) (\(p.pointClass)) of \(p.disks.count) disks at one instant, freeze \(freeze) ms"
        for d in p.disks { out += "\n  \(d.diskID) (\(d.disk), \(d.pointClass)) at sequence \(d.sequence)" }
        return out
    }
}

/// The client side of the agent's control socket: one request line out,
/// one reply line in (TidemarkSurface/ControlProtocol.swift).
enum ControlClient {
    static func request(socketPath path: String, _ request: ControlRequest, timeoutMs: Int) throws -> ControlReply {
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

        var line = [UInt8](try request.encoded())
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
        do {
            return try ControlReply.decode(Data(reply), agent: path)
        } catch {
            throw TidemarkError(.corrupt, error.message)
        }
    }
}
