import Foundation
import Testing
@testable import TidemarkConfigFiles

private let path = "/etc/tidemark/agent.yaml"

private func parse(_ yaml: String, env: [String: String] = [:]) throws -> AgentConfig {
    try AgentConfig.parse(yaml: yaml, path: path, environment: env)
}

/// Parses `yaml`, expects a ConfigError, and returns it.
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

private func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("tidemark-config-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

@Suite struct Defaults {
    @Test func defaultValues() {
        let d = AgentConfig.defaults
        #expect(d.stateDir == "/var/lib/tidemark")
        #expect(d.chunkSizeBytes == 65536)
        #expect(d.disks == [])
        #expect(d.drainIntervalMs == 1000)
        #expect(d.mirrorTo == nil)
        #expect(d.mirrorIntervalMs == 1000)
        #expect(d.logLevel == .info)
    }

    @Test func limitsAreConsistent() {
        #expect(AgentConfig.chunkSizeBytesMin < AgentConfig.chunkSizeBytesMax)
        #expect(AgentConfig.chunkSizeBytesMin.nonzeroBitCount == 1 && AgentConfig.chunkSizeBytesMax.nonzeroBitCount == 1)
        let d = AgentConfig.defaults
        #expect((AgentConfig.chunkSizeBytesMin...AgentConfig.chunkSizeBytesMax).contains(d.chunkSizeBytes))
        #expect((AgentConfig.intervalMsMin...AgentConfig.intervalMsMax).contains(d.drainIntervalMs))
        #expect((AgentConfig.intervalMsMin...AgentConfig.intervalMsMax).contains(d.mirrorIntervalMs))
    }

    @Test(arguments: ["", "\n\n", "# only a comment\n", "---\n", "~\n"])
    func emptyDocumentIsDefaults(yaml: String) throws {
        #expect(try parse(yaml) == .defaults)
    }

    @Test func shippedFileEqualsDefaults() throws {
        let shipped = repositoryRoot().appendingPathComponent("Packaging/agent.yaml").path
        #expect(try AgentConfig.load(path: shipped, environment: [:]) == .defaults)
        // Every key is present in the shipped file, each with a comment line above it.
        let text = try String(contentsOfFile: shipped, encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        expectEveryKeyCommented(lines: lines, topLevel: AgentConfig.knownKeys,
                                sections: [("mirror", AgentConfig.knownMirrorKeys),
                                           ("replication", AgentConfig.knownReplicationKeys),
                                           ("policy", AgentConfig.knownPolicyKeys)])
    }
}

@Suite struct Keys {
    @Test func everyKey() throws {
        let config = try parse("""
            state_dir: /srv/tidemark
            chunk_size: 128k
            disks: [/dev/sdb, /dev/sdc1]
            drain_interval_ms: 250
            mirror:
              to: /dev/sdd
              interval_ms: 500
            log_level: debug
            """)
        #expect(config == AgentConfig(stateDir: "/srv/tidemark", chunkSizeBytes: 131072, disks: ["/dev/sdb", "/dev/sdc1"],
                                      drainIntervalMs: 250, mirrorTo: "/dev/sdd", mirrorIntervalMs: 500, logLevel: .debug))
    }

    @Test func blockStyleDiskList() throws {
        let config = try parse("disks:\n  - /dev/sdb\n  - /dev/nvme0n1p2\n")
        #expect(config.disks == ["/dev/sdb", "/dev/nvme0n1p2"])
    }

    @Test(arguments: [("65536", 65536), ("64k", 65536), ("64K", 65536), ("64KiB", 65536), ("64kb", 65536),
                      ("1m", 1 << 20), ("1MiB", 1 << 20), ("4k", 4096), ("4096", 4096), ("'32k'", 32768)] as [(String, UInt32)])
    func chunkSizeSpellings(text: String, bytes: UInt32) throws {
        #expect(try parse("chunk_size: \(text)").chunkSizeBytes == bytes)
    }

    @Test func logLevelsAndCase() throws {
        for level in LogLevel.allCases {
            #expect(try parse("log_level: \(level.rawValue)").logLevel == level)
        }
        #expect(try parse("log_level: WARNING").logLevel == .warning)
    }

    @Test func nullsMeanEmptyOrUnset() throws {
        let config = try parse("disks:\nmirror:\n")
        #expect(config.disks == [] && config.mirrorTo == nil)
        #expect(try parse("mirror:\n  to:\n").mirrorTo == nil)
        #expect(try parse("mirror:\n  to: \"\"\n").mirrorTo == nil)
    }

    @Test func intervalBounds() throws {
        #expect(try parse("drain_interval_ms: 10").drainIntervalMs == 10)
        #expect(try parse("drain_interval_ms: 60000").drainIntervalMs == 60000)
        #expect(try parse("mirror: {interval_ms: 10}").mirrorIntervalMs == 10)
    }
}

@Suite struct Errors {
    @Test func descriptionFormatMatchesSpec() throws {
        let error = try #require(failure("""
            # comment
            state_dir: /var/lib/tidemark


            disks: []

            chunk_size: 65x
            """))
        #expect(error.line == 7)
        #expect(error.key == "chunk_size")
        #expect(error.code == .invalidValue)
        #expect(error.description
            == "/etc/tidemark/agent.yaml:7: key 'chunk_size': '65x' is not a size — use a power of two from 4k to 1m, e.g. 64k")
    }

    @Test(arguments: [("48k", "is not a power of two"), ("2k", "is outside 4k..1m"), ("2m", "is outside 4k..1m"),
                      ("0", "is outside 4k..1m"), ("64q", "is not a size"), ("-64k", "is not a size"),
                      ("99999999999999999999k", "is not a size")])
    func badChunkSizes(text: String, message: String) throws {
        let error = try #require(failure("log_level: info\nchunk_size: \(text)\n"))
        #expect(error.line == 2)
        #expect(error.message == "'\(text)' \(message)")
        #expect(error.hint == "use a power of two from 4k to 1m, e.g. 64k")
    }

    @Test func unknownKeySuggestsClosest() throws {
        let error = try #require(failure("state_dir: /x\nchunksize: 64k\n"))
        #expect(error.code == .unknownKey)
        #expect(error.line == 2)
        #expect(error.key == "chunksize")
        #expect(error.description.contains("did you mean 'chunk_size'?"))
        #expect(failure("Log-Level: info")?.hint == "did you mean 'log_level'?")
        #expect(failure("disk: [/dev/sdb]")?.hint == "did you mean 'disks'?")
        #expect(failure("drain_interval: 5")?.hint == "did you mean 'drain_interval_ms'?")
    }

    @Test func unknownKeyWithoutCloseMatchListsKnownKeys() throws {
        let error = try #require(failure("\n\nfrobnicate: zstd\n"))
        #expect(error.line == 3)
        #expect(error.hint == "known keys: agent_id, state_dir, chunk_size, disks, drain_interval_ms, mirror, replication, policy, control_socket, log_level")
        // A key that is close to one in a section points there.
        #expect(failure("compression: zstd\n")?.hint == "did you mean 'replication.compression_level'?")
    }

    @Test func unknownKeyInMirror() throws {
        let error = try #require(failure("mirror:\n  to: /dev/sdc\n  intervl_ms: 5\n"))
        #expect(error.line == 3)
        #expect(error.key == "mirror.intervl_ms")
        #expect(error.hint == "did you mean 'mirror.interval_ms'?")
    }

    @Test func misplacedKeysSayWhereTheyBelong() throws {
        #expect(failure("to: /dev/sdc\n")?.hint == "'to' belongs under 'mirror:'")
        #expect(failure("mirror:\n  log_level: info\n")?.hint == "'log_level' is a top-level key; move it out of 'mirror:'")
    }

    @Test func wrongTypes() throws {
        let mapForList = try #require(failure("state_dir: /x\ndisks:\n  a: /dev/sdb\n"))
        #expect(mapForList.code == .wrongType)
        #expect(mapForList.key == "disks")
        #expect(mapForList.line == 3)
        #expect(mapForList.message == "expected a list of block devices, found a map")

        let scalarForList = try #require(failure("disks: /dev/sdb\n"))
        #expect(scalarForList.code == .wrongType && scalarForList.line == 1)
        #expect(scalarForList.hint == "write a list, e.g. disks: [/dev/sdb]")

        let listForScalar = try #require(failure("\nchunk_size: [64k]\n"))
        #expect(listForScalar.code == .wrongType && listForScalar.line == 2 && listForScalar.key == "chunk_size")
        #expect(listForScalar.message == "expected a size such as 64k, found a list")

        let mapForScalar = try #require(failure("log_level:\n  level: info\n"))
        #expect(mapForScalar.code == .wrongType && mapForScalar.line == 2 && mapForScalar.key == "log_level")

        let scalarForMap = try #require(failure("mirror: /dev/sdc\n"))
        #expect(scalarForMap.code == .wrongType && scalarForMap.key == "mirror" && scalarForMap.line == 1)

        let nestedListItem = try #require(failure("disks:\n  - /dev/sdb\n  - [/dev/sdc]\n"))
        #expect(nestedListItem.code == .wrongType && nestedListItem.line == 3)

        let rootList = try #require(failure("- a\n- b\n"))
        #expect(rootList.code == .notAMap && rootList.line == 1)

        // A key file given as the configuration: named, never quoted.
        let keyHex = "1426a5f46d77c0eaa1ca05ccc1728147420b75a9a117dcd997493f8239dfff92"
        let keyFile = try #require(failure(keyHex + "\n"))
        #expect(keyFile.code == .notAMap && keyFile.line == 1)
        #expect(!"\(keyFile)".contains(keyHex.prefix(8)) && keyFile.message.contains("a single value of 64 characters"), "\(keyFile)")
        let pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIK7LjleJ/2K4LSMsu1wXgxjJ4LF3KQVCBviM/Vk9NZ10oAoGCCqGSM49\n-----END EC PRIVATE KEY-----\n"
        let pemFile = try #require(failure(pem))
        #expect(pemFile.code == .notAMap && !"\(pemFile)".contains("MHcCAQEE"), "\(pemFile)")
    }

    @Test func badValues() throws {
        let cases: [(String, Int, String, String)] = [
            ("state_dir: relative/dir", 1, "state_dir", "'relative/dir' is not an absolute path"),
            ("state_dir: ''", 1, "state_dir", "must not be empty"),
            ("state_dir:", 1, "state_dir", "has no value"),
            ("disks: [/dev/sdb, sdc]", 1, "disks", "'sdc' is not an absolute path"),
            ("disks:\n  - /dev/sdb\n  - /dev/sdc\n  - /dev/sdb\n", 4, "disks", "'/dev/sdb' is listed twice (also on line 2)"),
            ("drain_interval_ms: 5", 1, "drain_interval_ms", "5 is outside 10..60000"),
            ("drain_interval_ms: 60001", 1, "drain_interval_ms", "60001 is outside 10..60000"),
            ("drain_interval_ms: 1s", 1, "drain_interval_ms", "'1s' is not a whole number of milliseconds"),
            ("mirror:\n  to: mirror.img\n", 2, "mirror.to", "'mirror.img' is not an absolute path"),
            ("mirror:\n  to: /m.img\n  interval_ms: 0\n", 3, "mirror.interval_ms", "0 is outside 10..60000"),
            ("log_level: loud", 1, "log_level", "'loud' is not a log level"),
        ]
        for (yaml, line, key, message) in cases {
            let error = try #require(failure(yaml))
            #expect(error.code == .invalidValue, "\(yaml)")
            #expect(error.line == line, "\(yaml)")
            #expect(error.key == key, "\(yaml)")
            #expect(error.message == message, "\(yaml)")
        }
        #expect(failure("log_level: warn")?.hint == "did you mean 'warning'? (use one of debug, info, warning, error)")
    }

    @Test func duplicateKeyNamesBothLines() throws {
        let error = try #require(failure("chunk_size: 64k\nlog_level: info\nchunk_size: 128k\n"))
        #expect(error.code == .duplicateKey)
        #expect(error.key == "chunk_size")
        #expect(error.line == 3)
        #expect(error.message == "is set more than once (first on line 1)")

        let nested = try #require(failure("mirror:\n  to: /a\n  interval_ms: 10\n  to: /b\nlog_level: info\n"))
        #expect(nested.code == .duplicateKey && nested.key == "to" && nested.line == 4)
    }

    @Test func syntaxErrorsCarryYamlLine() throws {
        let badIndent = try #require(failure("state_dir: /x\nchunk_size: 64k\n  disks: []\n"))
        #expect(badIndent.code == .syntax)
        #expect(badIndent.line == 3)
        #expect(badIndent.description.hasPrefix("/etc/tidemark/agent.yaml:3: YAML syntax error: "))

        let unclosed = try #require(failure("state_dir: /x\n\ndisks: [/dev/sdb\n"))
        #expect(unclosed.code == .syntax)
        #expect(unclosed.line == 4 || unclosed.line == 3)

        let tab = try #require(failure("mirror:\n\tto: /x\n"))
        #expect(tab.code == .syntax && tab.line == 2)
        #expect(tab.hint == "YAML does not allow tabs for indentation; use spaces")

        let twoDocuments = try #require(failure("chunk_size: 64k\n---\nlog_level: info\n"))
        #expect(twoDocuments.code == .syntax && twoDocuments.line == 2)
    }
}

@Suite struct Environment {
    @Test func everyOverride() throws {
        let config = try parse("chunk_size: 4k\nlog_level: error\n", env: [
            "TIDEMARK_STATE_DIR": "/tmp/state",
            "TIDEMARK_CHUNK_SIZE": "256KiB",
            "TIDEMARK_DISKS": "/dev/sdb, /dev/sdc1",
            "TIDEMARK_DRAIN_INTERVAL_MS": "20",
            "TIDEMARK_LOG_LEVEL": "debug",
            "UNRELATED": "x",
        ])
        #expect(config == AgentConfig(stateDir: "/tmp/state", chunkSizeBytes: 262144, disks: ["/dev/sdb", "/dev/sdc1"],
                                      drainIntervalMs: 20, logLevel: .debug))
    }

    @Test func emptyDiskVariableClearsTheList() throws {
        #expect(try parse("disks: [/dev/sdb]", env: ["TIDEMARK_DISKS": ""]).disks == [])
    }

    @Test func badValuesNameTheVariable() throws {
        let cases: [(String, String, String)] = [
            ("TIDEMARK_CHUNK_SIZE", "65x", "environment variable TIDEMARK_CHUNK_SIZE: '65x' is not a size — use a power of two from 4k to 1m, e.g. 64k"),
            ("TIDEMARK_STATE_DIR", "rel", "environment variable TIDEMARK_STATE_DIR: 'rel' is not an absolute path — use an absolute path such as /var/lib/tidemark"),
            ("TIDEMARK_DISKS", "/dev/sdb,,/dev/sdc", "environment variable TIDEMARK_DISKS: a disk is empty — name each block device by its path, e.g. /dev/sdb"),
            ("TIDEMARK_DISKS", "/dev/sdb,/dev/sdb", "environment variable TIDEMARK_DISKS: '/dev/sdb' is listed twice — list each disk once"),
            ("TIDEMARK_DRAIN_INTERVAL_MS", "fast", "environment variable TIDEMARK_DRAIN_INTERVAL_MS: 'fast' is not a whole number of milliseconds — use a whole number of milliseconds from 10 to 60000, e.g. 1000"),
            ("TIDEMARK_LOG_LEVEL", "verbose", "environment variable TIDEMARK_LOG_LEVEL: 'verbose' is not a log level — use one of debug, info, warning, error"),
        ]
        for (variable, value, description) in cases {
            let error = try #require(failure("", env: [variable: value]))
            #expect(error.environmentVariable == variable)
            #expect(error.line == nil)
            #expect(error.description == description)
        }
    }
}

@Suite struct Files {
    @Test func loadReadsFileAndAppliesEnvironment() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("agent.yaml").path
        try "chunk_size: 1m\ndisks: [/dev/vdb]\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try AgentConfig.load(path: file, environment: ["TIDEMARK_LOG_LEVEL": "warning"])
        #expect(config.chunkSizeBytes == 1 << 20 && config.disks == ["/dev/vdb"] && config.logLevel == .warning)
    }

    @Test func errorsNameTheRealFile() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("agent.yaml").path
        try "\nchunk_size: 3k\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(throws: ConfigError.self) { try AgentConfig.load(path: file, environment: [:]) }
        do {
            _ = try AgentConfig.load(path: file, environment: [:])
        } catch let error as ConfigError {
            #expect(error.description.hasPrefix("\(file):2: key 'chunk_size': '3k' is outside 4k..1m"))
        }
    }

    @Test func missingExplicitFileIsAnError() throws {
        let missing = "/nonexistent-\(UUID().uuidString)/agent.yaml"
        do {
            _ = try AgentConfig.load(path: missing, environment: [:])
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.code == .fileNotFound)
            #expect(error.description.hasPrefix("\(missing): no such file — check the path given to --config"))
        }
    }

    @Test func missingDefaultFileMeansDefaults() throws {
        let missing = "/nonexistent-\(UUID().uuidString)/agent.yaml"
        #expect(try AgentConfig.loadDefault(path: missing, environment: [:]) == .defaults)
        #expect(try AgentConfig.loadDefault(path: missing, environment: ["TIDEMARK_CHUNK_SIZE": "8k"]).chunkSizeBytes == 8192)
    }

    @Test func directoryAndNonUTF8AreUnreadable() throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(throws: ConfigError.self) { try AgentConfig.load(path: dir.path, environment: [:]) }
        let binary = dir.appendingPathComponent("bin.yaml")
        try Data([0xff, 0xfe, 0x00, 0xc3]).write(to: binary)
        do {
            _ = try AgentConfig.load(path: binary.path, environment: [:])
            Issue.record("expected an error")
        } catch let error as ConfigError {
            #expect(error.code == .unreadable)
        }
    }
}

@Suite struct Sizes {
    @Test func parseSize() {
        #expect(AgentConfig.parseSize("65536") == 65536)
        #expect(AgentConfig.parseSize("64k") == 65536)
        #expect(AgentConfig.parseSize("64K") == 65536)
        #expect(AgentConfig.parseSize("64KiB") == 65536)
        #expect(AgentConfig.parseSize("64 KiB") == 65536)
        #expect(AgentConfig.parseSize("1m") == 1 << 20)
        #expect(AgentConfig.parseSize("2G") == 2 << 30)
        #expect(AgentConfig.parseSize("1t") == 1 << 40)
        #expect(AgentConfig.parseSize("0") == 0)
        for bad in ["", "k", "64x", "1.5m", "-1", "0x10", "64 k b", "20000000t"] {
            #expect(AgentConfig.parseSize(bad) == nil, "\(bad)")
        }
    }

    @Test func formatSize() {
        #expect(AgentConfig.formatSize(65536) == "64k")
        #expect(AgentConfig.formatSize(1 << 20) == "1m")
        #expect(AgentConfig.formatSize(1000) == "1000")
    }

    @Test func editDistanceBasics() {
        #expect(editDistance("kitten", "sitting") == 3)
        #expect(editDistance("", "abc") == 3)
        #expect(closestMatch("zzzzzz", among: AgentConfig.knownKeys) == nil)
    }
}
