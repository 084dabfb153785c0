// The agent's control socket (tidemarkctl ↔ agent): a ControlServer on a
// scratch Unix socket whose handler is the agent's own
// (AgentCommands.handleControl, with no disks replicating). Per input, one
// client sends the input and half-closes, then reads the reply.
// Invariants: the agent never traps; its reply is exactly one line holding
// a JSON object with a boolean "ok" (and "error" when it is false) and the
// protocol "version" (TidemarkSurface/ControlProtocol.swift).
import Foundation
import FuzzSupport
import Glibc
import TidemarkSystem
@testable import TidemarkAgentCore

@_cdecl("fuzz_control_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

nonisolated(unsafe) let socketPath: String = {
    Log.setLevel(.error)
    let dir = Fuzz.scratch + "/control"
    Fuzz.resetDirectory(dir)
    let path = dir + "/agent.sock"
    let server = try! ControlServer(path: path) { request in AgentCommands.handleControl(request, [:]) }
    server.start()
    keep = server
    return path
}()
nonisolated(unsafe) var keep: ControlServer?

func connectUnix(_ path: String) -> Int32 {
    let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    precondition(s >= 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        let b = Array(path.utf8)
        raw.copyBytes(from: b)
        raw[b.count] = 0
    }
    let r = withUnsafePointer(to: &addr) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    precondition(r == 0, "connect: \(errno)")
    var tv = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return s
}

/// One request: what the agent answered, bytes sent, recv's errno.
func exchange(_ input: [UInt8]) -> (reply: [UInt8], sent: Int, recvError: Int32) {
    let c = connectUnix(socketPath)
    defer { close(c) }
    var sent = 0
    while sent < input.count {
        let n = input[sent...].withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }   // the agent may answer and close before reading everything
        sent += n
    }
    shutdown(c, Int32(SHUT_WR))
    var reply: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    var recvError: Int32 = 0
    while true {
        let n = buf.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
        // libFuzzer's timeout timer (SIGALRM, no SA_RESTART) interrupts recv.
        if n < 0 && errno == EINTR { continue }
        if n < 0 { recvError = errno }
        if n <= 0 { break }
        reply += buf[0..<n]
    }
    return (reply, sent, recvError)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = Fuzz.bytes(data, size)
    let (reply, sent, recvError) = exchange(input)
    // An empty input is a probe: no reply. Otherwise one JSON line.
    if input.isEmpty { return 0 }
    Fuzz.check(reply.last == UInt8(ascii: "\n") && reply.filter { $0 == UInt8(ascii: "\n") }.count == 1,
               "the reply is not one line (\(sent) of \(input.count) bytes sent, recv errno \(recvError)): \(String(decoding: reply, as: UTF8.self))")
    let object = try? JSONSerialization.jsonObject(with: Data(reply.dropLast()))
    guard let dict = object as? [String: Any], let ok = dict["ok"] as? Bool else {
        Fuzz.check(false, "the reply is not a JSON object with a boolean ok: \(String(decoding: reply, as: UTF8.self))")
        return 0
    }
    Fuzz.check(ok || dict["error"] is String, "a failed reply without an error: \(dict)")
    Fuzz.check((dict["version"] as? Int) == 1, "a reply without the protocol version: \(dict)")
    return 0
}

func seeds() throws -> [(String, [UInt8])] {
    [
        ("status", Array(#"{"version":1,"op":"status"}"#.utf8) + [10]),
        ("create-point", Array(#"{"version":1,"op":"create-point","disk":"/dev/loop0","app_consistent":true}"#.utf8) + [10]),
        ("unknown-field", Array(#"{"version":1,"op":"status","disk":"/dev/loop0"}"#.utf8) + [10]),
        ("other-version", Array(#"{"version":2,"op":"status"}"#.utf8) + [10]),
        ("unversioned", Array(#"{"op":"create-point","disk":"/dev/loop0","app_consistent":"true"}"#.utf8) + [10]),
        ("not-a-string", Array(#"{"version":1,"op":1}"#.utf8) + [10]),
        ("crlf", Array(#"{"version":1,"op":"status"}"#.utf8) + [13, 10]),
        ("array", Array(#"["op"]"#.utf8)),
    ]
}
