import Foundation
import Testing
@testable import TidemarkConfigFiles

private let path = "/etc/tidemark/server.yaml"

private func parse(_ yaml: String, env: [String: String] = [:]) throws -> ServerConfig {
    try ServerConfig.parse(yaml: yaml, path: path, environment: env)
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

@Suite struct ServerDefaults {
    @Test func defaultValues() {
        let d = ServerConfig.defaults
        #expect(d.serverID == hostDerivedID(prefix: "server-", hostName: currentHostName()))
        #expect(d.listenHost == "0.0.0.0")
        #expect(d.listenPort == 9443)
        #expect(d.tlsCAPath == "/etc/tidemark/tls/ca.crt")
        #expect(d.tlsCertPath == "/etc/tidemark/tls/server.crt")
        #expect(d.tlsKeyPath == "/etc/tidemark/tls/server.key")
        #expect(d.spoolDir == "/var/lib/tidemark/spool")
        #expect(d.spoolMaxBytes == 1 << 30)
        #expect(d.targetType == "local")
        #expect(d.targetPath == "/var/lib/tidemark/target")
        #expect(d.retentionSeconds == 72 * 3600)
        #expect(d.pruneIntervalSeconds == 600)
        #expect(d.maxConnections == 256)
        #expect(d.bandwidthLimitBytesPerSecond == 0)
        #expect(d.logLevel == .info)
    }

    @Test func limitsAreConsistent() {
        let d = ServerConfig.defaults
        #expect((ServerConfig.spoolMaxBytesMin...ServerConfig.spoolMaxBytesMax).contains(d.spoolMaxBytes))
        #expect((ServerConfig.retentionSecondsMin...ServerConfig.retentionSecondsMax).contains(d.retentionSeconds))
        #expect((ServerConfig.pruneIntervalSecondsMin...ServerConfig.pruneIntervalSecondsMax).contains(d.pruneIntervalSeconds))
        #expect((1...ServerConfig.maxConnectionsLimit).contains(d.maxConnections))
        // The spool holds at least a full window of one agent.
        #expect(ServerConfig.spoolMaxBytesMin >= AgentConfig.defaults.inflightBytesMax)
        #expect(ServerConfig.targetTypes.contains(d.targetType))
    }

    @Test(arguments: ["", "\n", "# nothing\n", "~\n"])
    func emptyDocumentIsDefaults(yaml: String) throws {
        #expect(try parse(yaml) == .defaults)
    }

    @Test func shippedFileEqualsDefaults() throws {
        let shipped = repositoryRoot().appendingPathComponent("Packaging/server.yaml").path
        #expect(try ServerConfig.load(path: shipped, environment: [:]) == .defaults)
        let text = try String(contentsOfFile: shipped, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        expectEveryKeyCommented(lines: lines, topLevel: ServerConfig.knownKeys,
                                sections: [("tls", ServerConfig.knownTLSKeys), ("target", ServerConfig.knownTargetKeys)])
        // Every environment variable is documented in the header.
        for (variable, _) in ServerConfig.environmentOverrides {
            #expect(text.contains(variable), "\(variable) is not mentioned")
        }
    }

    @Test func shippedAgentFileMentionsEveryVariable() throws {
        let text = try String(contentsOfFile: repositoryRoot().appendingPathComponent("Packaging/agent.yaml").path, encoding: .utf8)
        for (variable, _) in AgentConfig.environmentOverrides {
            #expect(text.contains(variable), "\(variable) is not mentioned")
        }
    }
}

@Suite struct ServerKeys {
    @Test func everyKey() throws {
        let config = try parse("""
            server_id: ps-1
            listen: 127.0.0.1:19443
            tls:
              ca: /srv/tls/ca.pem
              cert: /srv/tls/ps.pem
              key: /srv/tls/ps.key
            spool_dir: /srv/spool
            spool_max_bytes: 10g
            upload_memory_bytes: 0
            target:
              type: local
              path: /srv/target
            retention: 7d
            prune_interval: 30s
            max_connections: 4096
            bandwidth_limit: 1g
            log_level: debug
            """)
        #expect(config == ServerConfig(serverID: "ps-1", listenHost: "127.0.0.1", listenPort: 19443,
                                       tlsCAPath: "/srv/tls/ca.pem", tlsCertPath: "/srv/tls/ps.pem", tlsKeyPath: "/srv/tls/ps.key",
                                       spoolDir: "/srv/spool", spoolMaxBytes: 10 << 30, uploadMemoryBytes: 0, targetType: "local",
                                       targetPath: "/srv/target", retentionSeconds: 7 * 86_400, pruneIntervalSeconds: 30,
                                       maxConnections: 4096, bandwidthLimitBytesPerSecond: 1 << 30, logLevel: .debug))
    }

    @Test(arguments: [("0.0.0.0:9443", "0.0.0.0", 9443), ("127.0.0.1:0", "127.0.0.1", 0), ("'[::]:9443'", "::", 9443),
                      ("localhost", "localhost", 9443), ("\"[::1]\"", "::1", 9443)] as [(String, String, UInt16)])
    func listenForms(text: String, host: String, port: UInt16) throws {
        let config = try parse("listen: \(text)\n")
        #expect(config.listenHost == host && config.listenPort == port)
    }

    @Test func boundsAndSpellings() throws {
        #expect(try parse("spool_max_bytes: 64m").spoolMaxBytes == 64 << 20)
        #expect(try parse("spool_max_bytes: 1t").spoolMaxBytes == 1 << 40)
        #expect(try parse("max_connections: 1").maxConnections == 1)
        #expect(try parse("upload_memory_bytes: 4g").uploadMemoryBytes == 4 << 30)
        #expect(ServerConfig.defaults.uploadMemoryBytes == 192 << 20)
        #expect(try parse("retention: 3600").retentionSeconds == 3600)
        #expect(try parse("retention: 1h30m").retentionSeconds == 5400)
        #expect(try parse("prune_interval: 1d").pruneIntervalSeconds == 86_400)
        #expect(try parse("target:\n  type: LOCAL\n").targetType == "local")
        #expect(try parse("server_id:\ntls:\ntarget:\n") == .defaults)
    }
}

@Suite struct ServerErrors {
    @Test func retentionNotADuration() throws {
        let error = try #require(failure("listen: 0.0.0.0:9443\n\nretention: 3 weeks\n"))
        #expect(error.code == .invalidValue)
        #expect(error.line == 3)
        #expect(error.key == "retention")
        #expect(error.description == "/etc/tidemark/server.yaml:3: key 'retention': '3 weeks' is not a duration"
            + " — use seconds, or a number with s, m, h or d, e.g. 72h")
    }

    @Test func badValues() throws {
        let cases: [(String, Int, String, String)] = [
            ("server_id: 'ps 1'", 1, "server_id", "'ps 1' contains a space"),
            ("listen: 0.0.0.0:notaport", 1, "listen", "'notaport' is not a port number (0..65535)"),
            ("listen: 0.0.0.0:70000", 1, "listen", "'70000' is not a port number (0..65535)"),
            ("listen: ''", 1, "listen", "must not be empty"),
            ("listen: ':::9443'", 1, "listen", "':::9443' looks like an IPv6 address without brackets"),
            ("tls:\n  ca: ca.crt\n", 2, "tls.ca", "'ca.crt' is not an absolute path"),
            ("tls:\n  cert: ''\n", 2, "tls.cert", "must not be empty"),
            ("tls:\n  key:\n", 2, "tls.key", "has no value"),
            ("tls:\n  key: server.key\n", 2, "tls.key", "the value (10 characters, not shown in case it is the key itself) is not an absolute path"),
            ("spool_dir: spool", 1, "spool_dir", "'spool' is not an absolute path"),
            ("spool_max_bytes: 32m", 1, "spool_max_bytes", "'32m' is outside 64m..1t"),
            ("spool_max_bytes: 2t", 1, "spool_max_bytes", "'2t' is outside 64m..1t"),
            ("spool_max_bytes: lots", 1, "spool_max_bytes", "'lots' is not a size"),
            ("upload_memory_bytes: 5g", 1, "upload_memory_bytes", "'5g' is outside 0..4g"),
            ("upload_memory_bytes: some", 1, "upload_memory_bytes", "'some' is not a size"),
            ("target:\n  type: s3\n", 2, "target.type", "'s3' is not supported yet"),
            ("target:\n  type: nfs\n", 2, "target.type", "'nfs' is not a target type"),
            ("target:\n  path: target\n", 2, "target.path", "'target' is not an absolute path"),
            ("retention: 0", 1, "retention", "'0' is outside 1m..3650d"),
            ("retention: 30s", 1, "retention", "'30s' is outside 1m..3650d"),
            ("prune_interval: 2d", 1, "prune_interval", "'2d' is outside 1s..1d"),
            ("prune_interval: soon", 1, "prune_interval", "'soon' is not a duration"),
            ("max_connections: 0", 1, "max_connections", "0 is outside 1..4096"),
            ("max_connections: 5000", 1, "max_connections", "5000 is outside 1..4096"),
            ("max_connections: many", 1, "max_connections", "'many' is not a whole number"),
            ("bandwidth_limit: 1x", 1, "bandwidth_limit", "'1x' is not a size"),
            ("log_level: loud", 1, "log_level", "'loud' is not a log level"),
        ]
        for (yaml, line, key, message) in cases {
            let error = try #require(failure(yaml))
            #expect(error.code == .invalidValue, "\(yaml)")
            #expect(error.line == line, "\(yaml)")
            #expect(error.key == key, "\(yaml)")
            #expect(error.message == message, "\(yaml)")
        }
        #expect(failure("target:\n  type: s3\n")?.hint
            == "only 'local' is available for now; S3-compatible storage (s3) comes in a later release")
        #expect(failure("target:\n  type: locl\n")?.hint
            == "did you mean 'local'? (only 'local' is available for now; S3-compatible storage (s3) comes in a later release)")
    }

    @Test func unknownKeys() throws {
        let error = try #require(failure("listen: 0.0.0.0:9443\nspool_max: 1g\n"))
        #expect(error.code == .unknownKey && error.line == 2 && error.key == "spool_max")
        #expect(error.description == "/etc/tidemark/server.yaml:2: key 'spool_max': not a known key — did you mean 'spool_max_bytes'?")
        #expect(failure("tls:\n  certificate: /x\n")?.hint == "did you mean 'tls.cert'?")
        #expect(failure("target:\n  pth: /x\n")?.hint == "did you mean 'target.path'?")
        #expect(failure("cert: /x\n")?.hint == "'cert' belongs under 'tls:'")
        #expect(failure("target:\n  retention: 1h\n")?.hint == "'retention' is a top-level key; move it out of 'target:'")
        #expect(failure("zzz: 1\n")?.hint == "known keys: server_id, listen, tls, spool_dir, spool_max_bytes, upload_memory_bytes, target, retention,"
            + " prune_interval, max_connections, bandwidth_limit, log_level")
        // Agent keys are not server keys.
        #expect(failure("state_dir: /x\n")?.code == .unknownKey)
    }

    @Test func wrongTypesAndSyntax() throws {
        let scalarForSection = try #require(failure("target: /srv/target\n"))
        #expect(scalarForSection.code == .wrongType && scalarForSection.key == "target" && scalarForSection.line == 1)
        #expect(scalarForSection.message == "expected a map with 'type' and 'path', found '/srv/target'")
        let listForScalar = try #require(failure("\nlisten: [a, b]\n"))
        #expect(listForScalar.code == .wrongType && listForScalar.line == 2 && listForScalar.key == "listen")
        let rootList = try #require(failure("- a\n"))
        #expect(rootList.code == .notAMap && rootList.hint == "write one 'key: value' per line, e.g. 'listen: 0.0.0.0:9443'")
        let duplicate = try #require(failure("retention: 1h\nlisten: x\nretention: 2h\n"))
        #expect(duplicate.code == .duplicateKey && duplicate.line == 3 && duplicate.message == "is set more than once (first on line 1)")
        let tab = try #require(failure("tls:\n\tca: /x\n"))
        #expect(tab.code == .syntax && tab.line == 2)
    }
}

@Suite struct ServerEnvironment {
    @Test func everyOverride() throws {
        let config = try parse("listen: 1.2.3.4:1\nspool_dir: /a\ntarget:\n  path: /b\nlog_level: error\n", env: [
            "TIDEMARK_SERVER_ID": "ps-env",
            "TIDEMARK_LISTEN": "[::1]:0",
            "TIDEMARK_SPOOL_DIR": "/tmp/spool",
            "TIDEMARK_TARGET_PATH": "/tmp/target",
            "TIDEMARK_LOG_LEVEL": "debug",
            "TIDEMARK_AGENT_ID": "ignored-by-the-server",
        ])
        #expect(config == ServerConfig(serverID: "ps-env", listenHost: "::1", listenPort: 0, spoolDir: "/tmp/spool",
                                       targetPath: "/tmp/target", logLevel: .debug))
        #expect(try parse("server_id: x", env: ["TIDEMARK_SERVER_ID": ""]).serverID == ServerConfig.defaults.serverID)
    }

    @Test func badValuesNameTheVariable() throws {
        let cases: [(String, String, String, String)] = [
            ("TIDEMARK_SERVER_ID", "a/b", "server_id", "environment variable TIDEMARK_SERVER_ID: 'a/b' contains '/'"
                + " — use 1 to 64 letters, digits, '.', '_' or '-', e.g. server-db1, or leave it empty for server-<host name>"),
            ("TIDEMARK_LISTEN", "0.0.0.0:x", "listen", "environment variable TIDEMARK_LISTEN: 'x' is not a port number (0..65535)"
                + " — write address:port, e.g. 0.0.0.0:9443, or \"[::]:9443\" (quoted) for IPv6 (port 0 picks a free port)"),
            ("TIDEMARK_SPOOL_DIR", "spool", "spool_dir", "environment variable TIDEMARK_SPOOL_DIR: 'spool' is not an absolute path"
                + " — use an absolute path such as /var/lib/tidemark/spool"),
            ("TIDEMARK_TARGET_PATH", "", "target.path", "environment variable TIDEMARK_TARGET_PATH: must not be empty"
                + " — use an absolute path such as /var/lib/tidemark/target"),
            ("TIDEMARK_LOG_LEVEL", "warn", "log_level", "environment variable TIDEMARK_LOG_LEVEL: 'warn' is not a log level"
                + " — did you mean 'warning'? (use one of debug, info, warning, error)"),
        ]
        for (variable, value, key, description) in cases {
            let error = try #require(failure("", env: [variable: value]))
            #expect(error.environmentVariable == variable)
            #expect(error.key == key)
            #expect(error.line == nil)
            #expect(error.description == description)
        }
    }
}

@Suite struct ServerFiles {
    @Test func loadAndLoadDefault() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tidemark-server-config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("server.yaml").path
        try "retention: 24h\n\nmax_connections: 9000\n".write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try ServerConfig.load(path: file, environment: [:])
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.description.hasPrefix("\(file):3: key 'max_connections': 9000 is outside 1..4096"))
        }
        try "retention: 24h\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try ServerConfig.loadDefault(path: file, environment: ["TIDEMARK_LISTEN": "127.0.0.1:0"])
        #expect(config.retentionSeconds == 86_400 && config.listenHost == "127.0.0.1" && config.listenPort == 0)

        let missing = dir.appendingPathComponent("missing.yaml").path
        #expect(try ServerConfig.loadDefault(path: missing, environment: [:]) == .defaults)
        #expect(try ServerConfig.loadDefault(path: missing, environment: ["TIDEMARK_SPOOL_DIR": "/s"]).spoolDir == "/s")
        do {
            _ = try ServerConfig.load(path: missing, environment: [:])
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.code == .fileNotFound)
            #expect(error.hint == "check the path given to --config (without --config the server reads /etc/tidemark/server.yaml)")
        }
    }
}
