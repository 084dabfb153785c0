import Foundation
import Testing
import TidemarkTesting

/// SIGHUP (`systemctl reload`) on the real server and agent processes while
/// the agent replicates: reloadable keys apply, restart-only keys are named, a broken
/// file changes nothing, and replication goes on throughout.
@Suite(.serialized) struct ReloadTests {
    @Test(.requiresRoot) func reloadAppliesWhatItCanAndRefusesABrokenFile() throws {
        let w = try FaultWorld("reload")
        defer { w.close() }
        try w.startServer()
        try w.startAgent()
        let server = try #require(w.server)
        let first = try w.point()
        let config = w.h.dir + "/server.yaml"
        var text = try String(contentsOfFile: config, encoding: .utf8)

        // Reloadable: retention and max_connections; restart-only: spool_max_bytes.
        text += "\nretention: 48h\nmax_connections: 100\n"
        text = text.replacingOccurrences(of: "spool_max_bytes: 1g", with: "spool_max_bytes: 2g")
        try text.write(toFile: config, atomically: true, encoding: .utf8)
        kill(server.pid, SIGHUP)
        try waitFor("the server logs the reload", timeoutSeconds: 10) { server.stderr.contains("reloaded \(config)") }
        let line = server.stderr.split(separator: "\n").first { $0.contains("reloaded \(config)") }.map(String.init) ?? ""
        #expect(line.contains("retention") && line.contains("max_connections") && line.contains("tls"), "\(line)")
        #expect(line.contains("after a restart") && line.contains("spool_max_bytes"), "\(line)")

        // A broken file: refused with file:line, the running configuration stays.
        try text.replacingOccurrences(of: "retention: 48h", with: "retention: forever")
            .write(toFile: config, atomically: true, encoding: .utf8)
        kill(server.pid, SIGHUP)
        try waitFor("the server refuses the broken file", timeoutSeconds: 10) { server.stderr.contains("reload of \(config) refused") }
        let refusal = server.stderr.split(separator: "\n").first { $0.contains("refused") }.map(String.init) ?? ""
        #expect(refusal.contains("server.yaml:"), "the refusal names file:line: \(refusal)")

        // Still serving: a point taken after both reloads commits and recovers identical.
        let second = try w.point()
        try w.recoverAndCompare(first)
        try w.recoverAndCompare(second)
        #expect(kill(server.pid, 0) == 0, "the server is still running")

        // The agent: log_level applies, the rest is named; it keeps replicating.
        let agent = try #require(w.agent)
        let agentConfig = w.h.dir + "/agent.yaml"
        var agentText = try String(contentsOfFile: agentConfig, encoding: .utf8)
        agentText = agentText.replacingOccurrences(of: "log_level: debug", with: "log_level: info")
            .replacingOccurrences(of: "segment_size: 1m", with: "segment_size: 2m")
        try agentText.write(toFile: agentConfig, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        try waitFor("the agent logs the reload", timeoutSeconds: 10) { agent.stderr.contains("reloaded \(agentConfig)") }
        let agentLine = agent.stderr.split(separator: "\n").first { $0.contains("reloaded \(agentConfig)") }.map(String.init) ?? ""
        #expect(agentLine.contains("applied log_level") && agentLine.contains("after a restart") && agentLine.contains("replication.segment_size"),
                "\(agentLine)")
        try agentText.replacingOccurrences(of: "segment_size: 2m", with: "segment_size: huge")
            .write(toFile: agentConfig, atomically: true, encoding: .utf8)
        kill(agent.pid, SIGHUP)
        try waitFor("the agent refuses the broken file", timeoutSeconds: 10) { agent.stderr.contains("reload of \(agentConfig) refused") }
        let third = try w.point()
        try w.recoverAndCompare(third)
        #expect(kill(agent.pid, 0) == 0, "the agent is still running")
    }
}
