import Foundation
import Glibc
import Testing
@testable import TidemarkAgentCore
@testable import TidemarkCtlCore
import TidemarkSurface
import TidemarkSystem

/// The control socket end to end, without disks: the agent's ControlServer
/// with its own handler, and tidemarkctl's client and commands.
@Suite struct ControlSocketTests {
    /// A control server on a fresh socket, answering as an agent that replicates nothing.
    final class Agent {
        let dir: String
        let path: String
        let server: ControlServer
        init() throws {
            dir = FileManager.default.temporaryDirectory.appendingPathComponent("tidemark-control-\(UUID().uuidString.prefix(8))").path
            path = dir + "/agent.sock"
            server = try ControlServer(path: path) { AgentCommands.handleControl($0, [:]) }
            server.start()
        }
        deinit {
            server.stop()
            try? FileManager.default.removeItem(atPath: dir)
        }

        /// Sends `line` as it is and returns the reply line.
        func raw(_ line: String) throws -> String {
            let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(s) }
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
            guard r == 0 else { throw TidemarkError(.io, "connect \(path): errno \(errno)") }
            let bytes = Array((line + "\n").utf8)
            _ = bytes.withUnsafeBytes { send(s, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            var reply = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(s, $0.baseAddress, $0.count, 0) }
                if n <= 0 { break }
                reply += buf[0..<n]
            }
            return String(decoding: reply, as: UTF8.self)
        }
    }

    @Test func statusThroughTidemarkctl() throws {
        let agent = try Agent()
        let json = try StatusCommand.run(socketPath: agent.path, json: true)
        let status = try JSONDecoder().decode(AgentStatus.self, from: Data(json.utf8))
        #expect(status.disks.isEmpty)
        #expect(status.rssBytes > 0)
        #expect(json.hasSuffix("}\n") && json.filter { $0 == "\n" }.count == 1)
        let text = try StatusCommand.run(socketPath: agent.path, json: false)
        #expect(text.hasPrefix("agent RSS "))
    }

    @Test func pointOfAnUnknownDiskIsRefusedWithTheAgentsReason() throws {
        let agent = try Agent()
        #expect {
            _ = try PointCreateCommand.run(socketPath: agent.path, disk: "/dev/not-replicated", appConsistent: false, json: true)
        } throws: { error in
            "\(error)".contains("no point of /dev/not-replicated was created: disk '/dev/not-replicated' is not replicated by this agent")
        }
    }

    @Test func everyReplyIsOneVersionedLine() throws {
        let agent = try Agent()
        let cases: [(String, String)] = [
            (#"{"version":1,"op":"status"}"#, #""ok":true"#),
            (#"{"op":"status"}"#, #"the request has no \"version\""#),
            (#"{"op":"create-point","disk":"/dev/loop0","app_consistent":"true"}"#, #"the request has no \"version\""#),
            (#"{"version":1,"op":"create-point","disk":"/dev/loop0","app_consistent":"true"}"#, #"request field \"app_consistent\" is not true or false"#),
            (#"{"version":1,"op":"status","verbose":true}"#, #"unknown field \"verbose\" in a 'status' request"#),
            (#"{"version":1,"op":"format-disk"}"#, "unknown request 'format-disk' (known: create-point, status)"),
            ("hello", "the request is not JSON"),
            (String(repeating: "x", count: ControlProtocol.requestBytesMax + 10), "request longer than \(ControlProtocol.requestBytesMax) bytes"),
        ]
        for (request, expected) in cases {
            let reply = try agent.raw(request)
            #expect(reply.hasSuffix("\n") && reply.filter { $0 == "\n" }.count == 1, "reply to \(request.prefix(60)): \(reply)")
            #expect(reply.contains(expected), "reply to \(request.prefix(60)): \(reply)")
            let decoded = try ControlReply.decode(Data(reply.utf8.dropLast()), agent: agent.path)
            #expect(decoded.ok == (expected == #""ok":true"#))
            #expect(decoded.ok || decoded.error != nil)
        }
    }

    @Test func aMissingAgentIsNamed() throws {
        #expect {
            _ = try StatusCommand.run(socketPath: "/run/tidemark-test-nobody-\(getpid()).sock", json: false)
        } throws: { error in
            "\(error)".contains("no agent is listening on")
        }
    }
}
