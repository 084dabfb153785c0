// Configuration files: agent.yaml and server.yaml (first byte bit 0 picks
// which), parsed as the daemons do, with no environment overrides.
// Invariants: errors are ConfigError with a file:line inside the text (or
// no line), parsing is deterministic, and the size/duration syntax round
// trips (parseSize(formatSize(x)) == x, parseDuration(formatDuration(x)) == x).
import Foundation
import FuzzSupport
import TidemarkConfigFiles

@_cdecl("fuzz_config_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

func checkError(_ error: any Error, _ text: String) {
    guard let e = error as? ConfigError else { return Fuzz.expectTyped(error, "config parse") }
    // Lines as YAML (libyaml) counts them: LF, CRLF, a lone CR, NEL, LS, PS
    // each end one. (A file with bare CR line ends is one line to many
    // editors, but its errors name YAML's line numbers.)
    var lines = 1
    var previousCR = false
    for u in text.unicodeScalars {
        switch u.value {
        case 0x0A: if !previousCR { lines += 1 }
        case 0x0D, 0x85, 0x2028, 0x2029: lines += 1
        default: break
        }
        previousCR = u.value == 0x0D
    }
    if let line = e.line { Fuzz.check(line >= 1 && line <= lines + 1, "error at line \(line) of a \(lines)-line file: \(e)") }
    Fuzz.check(e.file == "fuzz.yaml", "error names file \(String(describing: e.file))")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let mode = all.first else { return 0 }
    let text = String(decoding: all.dropFirst(), as: UTF8.self)
    if mode & 1 == 0 {
        do {
            let c = try AgentConfig.parse(yaml: text, path: "fuzz.yaml", environment: [:])
            let again = try AgentConfig.parse(yaml: text, path: "fuzz.yaml", environment: [:])
            Fuzz.check(again == c, "agent config parse is not deterministic")
        } catch { checkError(error, text) }
    } else {
        do {
            let c = try ServerConfig.parse(yaml: text, path: "fuzz.yaml", environment: [:])
            let again = try ServerConfig.parse(yaml: text, path: "fuzz.yaml", environment: [:])
            Fuzz.check(again == c, "server config parse is not deterministic")
        } catch { checkError(error, text) }
    }
    if let v = AgentConfig.parseSize(text) { Fuzz.check(AgentConfig.parseSize(AgentConfig.formatSize(v)) == v, "size \(v) does not round trip") }
    if let v = AgentConfig.parseDuration(text), v >= 0 {
        Fuzz.check(AgentConfig.parseDuration(AgentConfig.formatDuration(v)) == v, "duration \(v) does not round trip")
    }
    return 0
}

func seeds() throws -> [(String, [UInt8])] {
    var out: [(String, [UInt8])] = []
    // The packaged files, every key with its default and a comment.
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/../../.."
    for (mode, name) in [(0, "agent.yaml"), (1, "server.yaml")] {
        if let d = FileManager.default.contents(atPath: root + "/Packaging/" + name) {
            out.append(("packaged-" + name, [UInt8(mode)] + [UInt8](d)))
        }
    }
    let agent = """
        agent_id: host-1
        state_dir: /var/lib/tidemark
        chunk_size: 64k
        disks: [/dev/vdb, /dev/vdc1]
        replication:
          server: backup.example:9443
          segment_size: 4m
        policy:
          crash_consistent_interval: 5m
          app_consistent_interval: 1h30m
        """
    let server = """
        server_id: pserver-1
        listen: 0.0.0.0:9443
        spool_max_bytes: 10g
        target:
          type: local
          path: /srv/tidemark
        retention: 7d
        """
    out.append(("agent-small", [0] + Array(agent.utf8)))
    out.append(("server-small", [1] + Array(server.utf8)))
    out.append(("agent-bad-line", [0] + Array("agent_id: a\nchunk_size: 65x\n".utf8)))
    out.append(("size", [0] + Array("64KiB".utf8)))
    out.append(("duration", [1] + Array("1h30m".utf8)))
    return out
}
