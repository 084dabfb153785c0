import Foundation
import Testing
@testable import TidemarkConfigFiles

// The agent keys beyond tracking: identity, replication, policy, control socket.

private let path = "/etc/tidemark/agent.yaml"

private func parse(_ yaml: String, env: [String: String] = [:]) throws -> AgentConfig {
    try AgentConfig.parse(yaml: yaml, path: path, environment: env)
}

private func failure(_ yaml: String, env: [String: String] = [:],
                     sourceLocation: SourceLocation = #_sourceLocation) -> ConfigError? {
    do {
        let config = try parse(yaml, env: env)
        Issue.record("expected an error, got \(config)", sourceLocation: sourceLocation)
        return nil
    } catch let error as ConfigError {
        return error
    } catch {
        Issue.record("expected ConfigError, got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

@Suite struct AgentReplicationDefaults {
    @Test func defaultValues() {
        let d = AgentConfig.defaults
        #expect(d.agentID == hostDerivedID(prefix: "agent-", hostName: currentHostName()))
        #expect(d.agentID.hasPrefix("agent-"))
        #expect(d.serverHost == nil)
        #expect(d.serverPort == 9443)
        #expect(d.serverName == nil)
        #expect(d.tlsCAPath == "/etc/tidemark/tls/ca.crt")
        #expect(d.tlsCertPath == "/etc/tidemark/tls/agent.crt")
        #expect(d.tlsKeyPath == "/etc/tidemark/tls/agent.key")
        #expect(d.replicationKeyPath == "/etc/tidemark/replication.key")
        #expect(d.compressionLevel == .fixed(1))
        #expect(d.bandwidthLimitBytesPerSecond == 0)
        #expect(d.segmentSizeBytes == 4 << 20)
        #expect(d.inflightBytesMax == 32 << 20)
        #expect(d.crashConsistentIntervalSeconds == 300)
        #expect(d.appConsistentIntervalSeconds == 3600)
        #expect(d.freezeTimeoutMs == 2000)
        #expect(d.preFreezeHook == nil)
        #expect(d.postThawHook == nil)
        #expect(d.controlSocketPath == "/run/tidemark/agent.sock")
    }

    @Test func limitsAreConsistent() {
        let d = AgentConfig.defaults
        #expect((AgentConfig.segmentSizeBytesMin...AgentConfig.segmentSizeBytesMax).contains(d.segmentSizeBytes))
        #expect((AgentConfig.inflightBytesMin...AgentConfig.inflightBytesMaxLimit).contains(d.inflightBytesMax))
        // A full window always holds at least one segment of the largest size.
        #expect(AgentConfig.inflightBytesMin >= UInt64(AgentConfig.segmentSizeBytesMax))
        #expect(AgentConfig.compressionLevelMin < 0 && AgentConfig.compressionLevelMax > 0)
        #expect((AgentConfig.freezeTimeoutMsMin...AgentConfig.freezeTimeoutMsMax).contains(d.freezeTimeoutMs))
        let points = AgentConfig.pointIntervalSecondsMin...AgentConfig.pointIntervalSecondsMax
        #expect(points.contains(d.crashConsistentIntervalSeconds) && points.contains(d.appConsistentIntervalSeconds))
        #expect(d.controlSocketPath.utf8.count <= Validate.socketPathMaxBytes)
        #expect(AgentConfig.defaultServerPort == ServerConfig.defaultListenPort)
    }

    @Test func hostDerivedIDsAreValidIdentifiers() throws {
        #expect(hostDerivedID(prefix: "agent-", hostName: "db1.example.com") == "agent-db1.example.com")
        #expect(hostDerivedID(prefix: "agent-", hostName: "weird host/name") == "agent-weird-host-name")
        #expect(hostDerivedID(prefix: "agent-", hostName: "") == "agent-localhost")
        let long = hostDerivedID(prefix: "agent-", hostName: String(repeating: "h", count: 100))
        #expect(long.count == 64)
        #expect(try Validate.identifier(long, prefix: "agent-") == long)
        #expect(try Validate.identifier(AgentConfig.defaults.agentID, prefix: "agent-") == AgentConfig.defaults.agentID)
    }
}

@Suite struct AgentReplicationKeys {
    @Test func everyNewKey() throws {
        let config = try parse("""
            agent_id: db1.prod_eu-2
            replication:
              server: dr.example.com:10443
              server_name: ingest.example.com
              ca: /srv/tls/ca.pem
              cert: /srv/tls/db1.pem
              key: /srv/tls/db1.key
              replication_key: /srv/keys/repl.key
              compression_level: 19
              bandwidth_limit: 100m
              segment_size: 1m
              inflight_bytes: 256m
              host_inflight_bytes: 512m
            policy:
              crash_consistent_interval: 30s
              app_consistent_interval: 2h
              freeze_timeout_ms: 500
              pre_freeze_hook: /usr/bin/true
              post_thaw_hook: /usr/bin/false
              hook_timeout: 2m
            control_socket: /run/tm.sock
            """)
        #expect(config == AgentConfig(agentID: "db1.prod_eu-2", serverHost: "dr.example.com", serverPort: 10443,
                                      serverName: "ingest.example.com", tlsCAPath: "/srv/tls/ca.pem",
                                      tlsCertPath: "/srv/tls/db1.pem", tlsKeyPath: "/srv/tls/db1.key",
                                      replicationKeyPath: "/srv/keys/repl.key", compressionLevel: .fixed(19),
                                      bandwidthLimitBytesPerSecond: 100 << 20, segmentSizeBytes: 1 << 20,
                                      inflightBytesMax: 256 << 20, crashConsistentIntervalSeconds: 30,
                                      appConsistentIntervalSeconds: 7200, freezeTimeoutMs: 500,
                                      preFreezeHook: "/usr/bin/true", postThawHook: "/usr/bin/false", hookTimeoutSeconds: 120,
                                      controlSocketPath: "/run/tm.sock", hostInflightBytesMax: 512 << 20))
    }

    @Test(arguments: [("dr.example.com:10443", "dr.example.com", 10443), ("dr.example.com", "dr.example.com", 9443),
                      ("10.0.0.7:443", "10.0.0.7", 443), ("10.0.0.7", "10.0.0.7", 9443), ("\"[::1]:9443\"", "::1", 9443),
                      ("'[::1]'", "::1", 9443), ("'[fe80::1%eth0]:1'", "fe80::1%eth0", 1), ("h:65535", "h", 65535),
                      ("\"localhost:20000\"", "localhost", 20000)] as [(String, String, UInt16)])
    func serverForms(text: String, host: String, port: UInt16) throws {
        let config = try parse("replication:\n  server: \(text)\n")
        #expect(config.serverHost == host)
        #expect(config.serverPort == port)
    }

    @Test func emptyValuesMeanNotSetOrDefault() throws {
        let config = try parse("""
            agent_id:
            replication:
              server: ""
              server_name:
            policy:
              pre_freeze_hook: ""
              post_thaw_hook: ~
            """)
        #expect(config == .defaults)
        #expect(try parse("replication:\npolicy:\n") == .defaults)
    }

    @Test func zeroTurnsThingsOff() throws {
        let config = try parse("""
            replication:
              compression_level: 0
              bandwidth_limit: 0
            policy:
              crash_consistent_interval: 0
              app_consistent_interval: "0"
            """)
        #expect(config.compressionLevel == .fixed(0) && config.bandwidthLimitBytesPerSecond == 0)
        #expect(config.crashConsistentIntervalSeconds == 0 && config.appConsistentIntervalSeconds == 0)
    }

    @Test(arguments: [("300", 300), ("300s", 300), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2d", 172_800),
                      ("30d", 2_592_000), ("1s", 1), ("5M", 300)] as [(String, Int)])
    func intervalSpellings(text: String, seconds: Int) throws {
        #expect(try parse("policy:\n  crash_consistent_interval: \(text)\n").crashConsistentIntervalSeconds == seconds)
    }

    @Test(arguments: [("100m", 100 << 20), ("100m/s", 100 << 20), ("1g", 1 << 30), ("12500000", 12_500_000),
                      ("64 KiB", 65536)] as [(String, UInt64)])
    func bandwidthSpellings(text: String, bytes: UInt64) throws {
        #expect(try parse("replication: {bandwidth_limit: \(text)}").bandwidthLimitBytesPerSecond == bytes)
    }

    @Test func sizeBounds() throws {
        #expect(try parse("replication:\n  segment_size: 64k\n").segmentSizeBytes == 65536)
        #expect(try parse("replication:\n  segment_size: 8m\n").segmentSizeBytes == 8 << 20)
        #expect(try parse("replication:\n  inflight_bytes: 8m\n").inflightBytesMax == 8 << 20)
        #expect(try parse("replication:\n  inflight_bytes: 1g\n").inflightBytesMax == 1 << 30)
        #expect(try parse("policy:\n  freeze_timeout_ms: 100\n").freezeTimeoutMs == 100)
        #expect(try parse("policy:\n  freeze_timeout_ms: 60000\n").freezeTimeoutMs == 60000)
        #expect(try parse("replication:\n  io_timeout_ms: 1000\n").ioTimeoutMs == 1000)
        #expect(try parse("replication:\n  io_timeout_ms: 300000\n").ioTimeoutMs == 300_000)
        #expect(AgentConfig.defaults.ioTimeoutMs == 30_000)
    }
}

@Suite struct AgentReplicationErrors {
    @Test func badServerNamesFileLineAndKey() throws {
        let error = try #require(failure("""
            state_dir: /var/lib/tidemark
            replication:
              compression_level: 1
              server: "host:notaport"
            """))
        #expect(error.code == .invalidValue)
        #expect(error.line == 4)
        #expect(error.key == "replication.server")
        #expect(error.description == "/etc/tidemark/agent.yaml:4: key 'replication.server': 'notaport' is not a port number (1..65535)"
            + " — write host:port or just host (port 9443), e.g. dr.example.com:9443, or \"[::1]:9443\" (quoted) for IPv6")
    }

    @Test func compressionLevelOutOfRange() throws {
        let error = try #require(failure("\nreplication:\n  compression_level: 25\n"))
        #expect(error.line == 3)
        #expect(error.key == "replication.compression_level")
        #expect(error.description == "/etc/tidemark/agent.yaml:3: key 'replication.compression_level': 25 is outside -7..19"
            + " — use auto (a level per segment), 0 for no compression, or a zstd level from -7 (fastest) to 19 (smallest), e.g. 1")
    }

    @Test func compressionLevels() throws {
        for (text, want) in [("auto", CompressionSetting.auto), ("0", .fixed(0)), ("-7", .fixed(-7)), ("-1", .fixed(-1)),
                             ("3", .fixed(3)), ("19", .fixed(19))] {
            let config = try parse("replication:\n  compression_level: \(text)\n")
            #expect(config.compressionLevel == want, "\(text)")
        }
    }

    @Test func badValues() throws {
        let long = String(repeating: "a", count: 65)
        let longSocket = "/run/" + String(repeating: "s", count: 103)
        let cases: [(String, Int, String, String)] = [
            ("agent_id: bad id", 1, "agent_id", "'bad id' contains a space"),
            ("agent_id: db/1", 1, "agent_id", "'db/1' contains '/'"),
            ("agent_id: \(long)", 1, "agent_id", "'\(long)' is longer than 64 characters"),
            ("replication:\n  server: host:0\n", 2, "replication.server", "'0' is not a port number (1..65535)"),
            ("replication:\n  server: host:65536\n", 2, "replication.server", "'65536' is not a port number (1..65535)"),
            ("replication:\n  server: 'host:'\n", 2, "replication.server", "'' is not a port number (1..65535)"),
            ("replication:\n  server: ':9443'\n", 2, "replication.server", "the host name is empty"),
            ("replication:\n  server: '::1'\n", 2, "replication.server", "'::1' looks like an IPv6 address without brackets"),
            ("replication:\n  server: '[::1:9443'\n", 2, "replication.server", "'[::1:9443' has '[' without ']'"),
            ("replication:\n  server: '[::1]9443'\n", 2, "replication.server", "'[::1]9443' has '9443' after ']' where ':port' belongs"),
            ("replication:\n  server: '[dr.example]:1'\n", 2, "replication.server", "'dr.example' is not an IPv6 address"),
            ("replication:\n  server: dr example:1\n", 2, "replication.server", "'dr example' contains a space, not allowed in a host name"),
            ("replication:\n  server_name: a/b\n", 2, "replication.server_name", "'a/b' contains '/', not allowed in a host name"),
            ("replication:\n  ca: tls/ca.crt\n", 2, "replication.ca", "'tls/ca.crt' is not an absolute path"),
            ("replication:\n  cert: ''\n", 2, "replication.cert", "must not be empty"),
            ("replication:\n  key:\n", 2, "replication.key", "has no value"),
            ("replication:\n  replication_key: repl.key\n", 2, "replication.replication_key", "the value (8 characters, not shown in case it is the key itself) is not an absolute path"),
            ("replication:\n  key: \(String(repeating: "ab", count: 32))\n", 2, "replication.key", "the value (64 characters, not shown in case it is the key itself) is not an absolute path"),
            ("replication:\n  compression_level: -8\n", 2, "replication.compression_level", "-8 is outside -7..19"),
            ("replication:\n  compression_level: fast\n", 2, "replication.compression_level", "'fast' is not a compression level"),
            ("replication:\n  bandwidth_limit: fast\n", 2, "replication.bandwidth_limit", "'fast' is not a size"),
            ("replication:\n  bandwidth_limit: -5m\n", 2, "replication.bandwidth_limit", "'-5m' is not a size"),
            ("replication:\n  segment_size: 32k\n", 2, "replication.segment_size", "'32k' is outside 64k..8m"),
            ("replication:\n  segment_size: 16m\n", 2, "replication.segment_size", "'16m' is outside 64k..8m"),
            ("replication:\n  inflight_bytes: 4m\n", 2, "replication.inflight_bytes", "'4m' is outside 8m..1g"),
            ("replication:\n  inflight_bytes: 2g\n", 2, "replication.inflight_bytes", "'2g' is outside 8m..1g"),
            ("replication:\n  io_timeout_ms: 999\n", 2, "replication.io_timeout_ms", "999 is outside 1000..300000"),
            ("replication:\n  io_timeout_ms: 5s\n", 2, "replication.io_timeout_ms", "'5s' is not a whole number of milliseconds"),
            ("policy:\n  crash_consistent_interval: 3 weeks\n", 2, "policy.crash_consistent_interval", "'3 weeks' is not a duration"),
            ("policy:\n  crash_consistent_interval: 31d\n", 2, "policy.crash_consistent_interval", "'31d' is outside 0 or 1s..30d"),
            ("policy:\n  app_consistent_interval: -1h\n", 2, "policy.app_consistent_interval", "'-1h' is not a duration"),
            ("policy:\n  app_consistent_interval: 1.5h\n", 2, "policy.app_consistent_interval", "'1.5h' is not a duration"),
            ("policy:\n  freeze_timeout_ms: 50\n", 2, "policy.freeze_timeout_ms", "50 is outside 100..60000"),
            ("policy:\n  freeze_timeout_ms: 2s\n", 2, "policy.freeze_timeout_ms", "'2s' is not a whole number of milliseconds"),
            ("policy:\n  pre_freeze_hook: hooks/freeze\n", 2, "policy.pre_freeze_hook", "'hooks/freeze' is not an absolute path"),
            ("policy:\n  post_thaw_hook: thaw.sh\n", 2, "policy.post_thaw_hook", "'thaw.sh' is not an absolute path"),
            ("policy:\n  pre_freeze_hook: /nonexistent/db-freeze\n", 2, "policy.pre_freeze_hook", "'/nonexistent/db-freeze' does not exist"),
            ("policy:\n  post_thaw_hook: /tmp\n", 2, "policy.post_thaw_hook", "'/tmp' is a directory"),
            ("policy:\n  pre_freeze_hook: /etc/passwd\n", 2, "policy.pre_freeze_hook", "'/etc/passwd' is not executable"),
            ("policy:\n  hook_timeout: 0\n", 2, "policy.hook_timeout", "'0' is outside 1s..1h"),
            ("policy:\n  hook_timeout: 2h\n", 2, "policy.hook_timeout", "'2h' is outside 1s..1h"),
            ("policy:\n  hook_timeout: soon\n", 2, "policy.hook_timeout", "'soon' is not a duration"),
            ("control_socket: agent.sock", 1, "control_socket", "'agent.sock' is not an absolute path"),
            ("control_socket: \(longSocket)", 1, "control_socket",
             "'\(longSocket)' is 108 bytes long; a Unix socket path holds at most 107"),
        ]
        for (yaml, line, key, message) in cases {
            let error = try #require(failure(yaml))
            #expect(error.code == .invalidValue, "\(yaml)")
            #expect(error.line == line, "\(yaml)")
            #expect(error.key == key, "\(yaml)")
            #expect(error.message == message, "\(yaml)")
        }
        #expect(failure("policy:\n  crash_consistent_interval: 3 weeks\n")?.hint
            == "use seconds, or a number with s, m, h or d, e.g. 5m; 0 turns it off")
    }

    @Test func unknownKeysInNewSections() throws {
        let sever = try #require(failure("replication:\n  ca: /etc/ca.crt\n  sever: dr.example.com\n"))
        #expect(sever.code == .unknownKey)
        #expect(sever.line == 3)
        #expect(sever.key == "replication.sever")
        #expect(sever.description == "/etc/tidemark/agent.yaml:3: key 'replication.sever': not a known key — did you mean 'replication.server'?")
        #expect(failure("policy:\n  freeze_timeout: 100\n")?.hint == "did you mean 'policy.freeze_timeout_ms'?")
        #expect(failure("replication:\n  compresion_level: 3\n")?.hint == "did you mean 'replication.compression_level'?")
        #expect(failure("agentid: x")?.hint == "did you mean 'agent_id'?")
        #expect(failure("control_sock: /x")?.hint == "did you mean 'control_socket'?")
        #expect(failure("policy:\n  zzz: 1\n")?.hint == "known keys: policy.crash_consistent_interval, policy.app_consistent_interval,"
            + " policy.freeze_timeout_ms, policy.pre_freeze_hook, policy.post_thaw_hook, policy.hook_timeout")
    }

    @Test func misplacedKeysSayWhereTheyBelong() throws {
        #expect(failure("server: dr.example.com\n")?.hint == "'server' belongs under 'replication:'")
        #expect(failure("freeze_timeout_ms: 100\n")?.hint == "'freeze_timeout_ms' belongs under 'policy:'")
        #expect(failure("policy:\n  agent_id: x\n")?.hint == "'agent_id' is a top-level key; move it out of 'policy:'")
        // Close to a key of another section.
        #expect(failure("mirror:\n  sever: x\n")?.hint == "did you mean 'replication.server'?")
    }

    @Test func wrongTypes() throws {
        let scalarForSection = try #require(failure("replication: dr.example.com\n"))
        #expect(scalarForSection.code == .wrongType && scalarForSection.line == 1 && scalarForSection.key == "replication")
        #expect(scalarForSection.hint == "write it indented under 'replication:', e.g. 'replication:\\n  server: dr.example.com:9443'")
        let listForScalar = try #require(failure("policy:\n  crash_consistent_interval: [5m]\n"))
        #expect(listForScalar.code == .wrongType && listForScalar.line == 2 && listForScalar.key == "policy.crash_consistent_interval")
        let listForServer = try #require(failure("replication:\n  server: [a, b]\n"))
        #expect(listForServer.code == .wrongType && listForServer.key == "replication.server")
    }

    @Test func unquotedIPv6SaysToQuote() throws {
        let withPort = try #require(failure("replication:\n  server: [::1]:9443\n"))
        #expect(withPort.code == .syntax && withPort.line == 2)
        #expect(withPort.hint == "put an IPv6 address in brackets inside quotes, e.g. \"[::1]:9443\"; unquoted, [ ] is a YAML list")
        let bare = try #require(failure("replication:\n  server: [::1]  # local\n"))
        #expect(bare.code == .syntax && bare.line == 2)
        #expect(bare.hint == "put an IPv6 address in brackets inside quotes, e.g. \"[::1]\"; unquoted, [ ] is a YAML list")
    }

    @Test func duplicateInSection() throws {
        let error = try #require(failure("replication:\n  server: a\n  compression_level: 3\n  server: b\n"))
        #expect(error.code == .duplicateKey && error.key == "server" && error.line == 4)
    }
}

@Suite struct AgentReplicationEnvironment {
    @Test func newOverrides() throws {
        let config = try parse("replication:\n  server: a:1\n  replication_key: /a.key\ncontrol_socket: /a.sock\n", env: [
            "TIDEMARK_AGENT_ID": "env-agent",
            "TIDEMARK_SERVER": "[2001:db8::5]:7000",
            "TIDEMARK_REPLICATION_KEY": "/run/secrets/repl.key",
            "TIDEMARK_CONTROL_SOCKET": "/tmp/agent.sock",
        ])
        #expect(config.agentID == "env-agent")
        #expect(config.serverHost == "2001:db8::5" && config.serverPort == 7000)
        #expect(config.replicationKeyPath == "/run/secrets/repl.key")
        #expect(config.controlSocketPath == "/tmp/agent.sock")
    }

    @Test func emptyServerVariableUnsetsTheServer() throws {
        let config = try parse("replication:\n  server: a:1\n", env: ["TIDEMARK_SERVER": ""])
        #expect(config.serverHost == nil && config.serverPort == 9443)
        #expect(try parse("agent_id: x", env: ["TIDEMARK_AGENT_ID": ""]).agentID == AgentConfig.defaults.agentID)
        #expect(try parse("", env: ["TIDEMARK_SERVER": "dr"]).serverHost == "dr")
    }

    @Test func badValuesNameTheVariable() throws {
        let cases: [(String, String, String)] = [
            ("TIDEMARK_AGENT_ID", "a b", "environment variable TIDEMARK_AGENT_ID: 'a b' contains a space"
                + " — use 1 to 64 letters, digits, '.', '_' or '-', e.g. agent-db1, or leave it empty for agent-<host name>"),
            ("TIDEMARK_SERVER", "host:notaport", "environment variable TIDEMARK_SERVER: 'notaport' is not a port number (1..65535)"
                + " — write host:port or just host (port 9443), e.g. dr.example.com:9443, or \"[::1]:9443\" (quoted) for IPv6"),
            ("TIDEMARK_REPLICATION_KEY", "repl.key", "environment variable TIDEMARK_REPLICATION_KEY: the value (8 characters, not shown in case it is the key itself) is not an absolute path"
                + " — name the key file by its absolute path, such as /etc/tidemark/replication.key; the key stays in that file"),
            ("TIDEMARK_CONTROL_SOCKET", "", "environment variable TIDEMARK_CONTROL_SOCKET: must not be empty"
                + " — use an absolute path such as /run/tidemark/agent.sock"),
        ]
        for (variable, value, description) in cases {
            let error = try #require(failure("", env: [variable: value]))
            #expect(error.environmentVariable == variable)
            #expect(error.line == nil)
            #expect(error.description == description)
        }
        #expect(failure("", env: ["TIDEMARK_SERVER": "h:0"])?.key == "replication.server")
        #expect(failure("", env: ["TIDEMARK_REPLICATION_KEY": "x"])?.key == "replication.replication_key")
    }
}

@Suite struct Durations {
    @Test func parseDuration() {
        #expect(AgentConfig.parseDuration("300") == 300)
        #expect(AgentConfig.parseDuration("300s") == 300)
        #expect(AgentConfig.parseDuration("5m") == 300)
        #expect(AgentConfig.parseDuration("1h") == 3600)
        #expect(AgentConfig.parseDuration("72h") == 259_200)
        #expect(AgentConfig.parseDuration("3d") == 259_200)
        #expect(AgentConfig.parseDuration("1h30m") == 5400)
        #expect(AgentConfig.parseDuration(" 10m ") == 600)
        #expect(AgentConfig.parseDuration("0") == 0)
        #expect(AgentConfig.parseDuration("0s") == 0)
        for bad in ["", "s", "3 weeks", "5 m", "1.5h", "-1", "5w", "h5", "5mm", "1h 30m", "99999999999999999999", "9999999999999999d"] {
            #expect(AgentConfig.parseDuration(bad) == nil, "\(bad)")
        }
    }

    @Test func formatDuration() {
        #expect(AgentConfig.formatDuration(0) == "0")
        #expect(AgentConfig.formatDuration(90) == "90s")
        #expect(AgentConfig.formatDuration(300) == "5m")
        #expect(AgentConfig.formatDuration(3600) == "1h")
        #expect(AgentConfig.formatDuration(259_200) == "3d")
        for seconds in [1, 59, 60, 61, 3599, 86_400, 90_000] {
            #expect(AgentConfig.parseDuration(AgentConfig.formatDuration(seconds)) == seconds)
        }
    }
}

@Suite struct PerDiskHooks {
    @Test func aDiskWrittenAsAMapHasItsOwnHooks() throws {
        let config = try parse("""
            disks:
              - /dev/sdb
              - device: /dev/sdc
                pre_freeze_hook: /usr/bin/true
                hook_timeout: 5m
              - device: /dev/sdd
                pre_freeze_hook: ""
            policy:
              pre_freeze_hook: /usr/bin/false
              post_thaw_hook: /usr/bin/true
            """)
        #expect(config.disks == ["/dev/sdb", "/dev/sdc", "/dev/sdd"])
        #expect(config.diskHooks == ["/dev/sdc": DiskHooks(preFreezeHook: .some("/usr/bin/true"), hookTimeoutSeconds: 300),
                                     "/dev/sdd": DiskHooks(preFreezeHook: .some(nil))])
        // The policy's hooks where the disk sets none; an empty hook is none.
        #expect(config.hooks(for: "/dev/sdb") == ("/usr/bin/false", "/usr/bin/true", 60))
        #expect(config.hooks(for: "/dev/sdc") == ("/usr/bin/true", "/usr/bin/true", 300))
        #expect(config.hooks(for: "/dev/sdd") == (nil, "/usr/bin/true", 60))
    }

    @Test func badDiskMapsSayWhereAndWhat() throws {
        let noDevice = try #require(failure("disks:\n  - pre_freeze_hook: /usr/bin/true\n"))
        #expect(noDevice.line == 2)
        #expect(noDevice.message == "this disk's map has no 'device'")
        let unknown = try #require(failure("disks:\n  - device: /dev/sdb\n    pre_freze_hook: /usr/bin/true\n"))
        #expect(unknown.code == .unknownKey)
        #expect(unknown.line == 3)
        #expect(unknown.hint == "did you mean 'disks.pre_freeze_hook'?")
        let notExecutable = try #require(failure("disks:\n  - device: /dev/sdb\n    post_thaw_hook: /etc/passwd\n"))
        #expect(notExecutable.line == 3)
        #expect(notExecutable.key == "disks.post_thaw_hook")
        #expect(notExecutable.message == "'/etc/passwd' is not executable")
        let timeout = try #require(failure("disks:\n  - device: /dev/sdb\n    hook_timeout: 2h\n"))
        #expect(timeout.message == "'2h' is outside 1s..1h")
        let twice = try #require(failure("disks:\n  - /dev/sdb\n  - device: /dev/sdb\n    hook_timeout: 1m\n"))
        #expect(twice.line == 3)
        #expect(twice.message == "'/dev/sdb' is listed twice (also on line 2)")
    }
}

@Suite struct HostInflightBytes {
    @Test func theHostBudgetIsReadAndMustHoldOneDisksWindow() throws {
        #expect(AgentConfig.defaults.hostInflightBytesMax == 96 << 20)
        #expect(try parse("replication:\n  host_inflight_bytes: 256m\n").hostInflightBytesMax == 256 << 20)
        let below = try #require(failure("replication:\n  inflight_bytes: 64m\n  host_inflight_bytes: 32m\n"))
        #expect(below.line == 3 && below.key == "replication.host_inflight_bytes")
        #expect(below.message == "replication.host_inflight_bytes (32 MiB, over all disks) is below replication.inflight_bytes (64 MiB, one disk's window)")
        // Not set, the budget grows to one disk's window.
        #expect(try parse("replication:\n  inflight_bytes: 128m\n").hostInflightBytesMax == 128 << 20)
        #expect(failure("replication:\n  host_inflight_bytes: 8m\n")?.message == "'8m' is outside 16m..4g")
    }
}

@Suite struct DiskErrorsNameTheConfigFile {
    /// Found by the config fuzzer: a bad disk path was given as the file.
    @Test func aBadDiskNamesTheFileNotTheDisk() throws {
        let relative = try #require(failure("disks:\n  - dev/vdc1\n"))
        #expect(relative.file == path && relative.line == 2, "\(relative)")
        let inMap = try #require(failure("disks:\n  - device: dev/vdc1\n"))
        #expect(inMap.file == path && inMap.line == 2, "\(inMap)")
    }
}
