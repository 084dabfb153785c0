import Foundation
import Yams

/// Walks the YAML node tree of an agent configuration (through `ConfigReader`, which keeps
/// every value's line) so that each error can name `file:line` and the key.
struct ConfigParser {
    let path: String
    let text: String

    private var reader: ConfigReader {
        ConfigReader(path: path, text: text, schema: AgentConfig.schema, exampleEntry: "chunk_size: 64k")
    }

    func parse() throws -> AgentConfig {
        let reader = self.reader
        var config = AgentConfig.defaults
        guard let entries = try reader.topLevelEntries() else { return config }  // empty file: all defaults
        for entry in entries {
            let key = entry.key
            switch key {
            case "agent_id":
                config.agentID = try reader.optional(entry, key: key, expected: "an agent id") {
                    try Validate.identifier($0, prefix: "agent-")
                } ?? AgentConfig.defaults.agentID
            case "state_dir":
                config.stateDir = try reader.validated(entry, key: key, expected: "a directory path", Validate.stateDir)
            case "chunk_size":
                config.chunkSizeBytes = try reader.validated(entry, key: key, expected: "a size such as 64k",
                                                             Validate.chunkSize)
            case "disks":
                (config.disks, config.diskHooks) = try disks(entry.value, keyLine: entry.line)
            case "drain_interval_ms":
                config.drainIntervalMs = try reader.validated(entry, key: key, expected: "a number of milliseconds",
                                                              Validate.intervalMs)
            case "mirror":
                try mirror(entry, into: &config)
            case "replication":
                try replication(entry, into: &config)
            case "policy":
                try policy(entry, into: &config)
            case "control_socket":
                config.controlSocketPath = try reader.validated(entry, key: key, expected: "a socket path",
                                                                Validate.socketPath)
            case "log_level":
                config.logLevel = try reader.validated(entry, key: key, expected: "a log level", Validate.logLevel)
            default:
                throw reader.unknownKey(entry, section: nil)
            }
        }
        return config
    }

    // MARK: Sections

    /// `disks:` — each item a device path, or a map of `device` and that
    /// disk's own hooks (`pre_freeze_hook`, `post_thaw_hook`, `hook_timeout`,
    /// each replacing the policy's for it; an empty hook means none).
    private func disks(_ value: Node, keyLine: Int?) throws -> ([String], [String: DiskHooks]) {
        if reader.isNull(value) { return ([], [:]) }
        guard case .sequence(let sequence) = value else {
            var hint = "write a list, e.g. disks: [/dev/sdb, /dev/sdc1]"
            if case .scalar(let scalar) = value { hint = "write a list, e.g. disks: [\(scalar.string)]" }
            throw ConfigError(code: .wrongType, file: path, line: value.mark?.line ?? keyLine, key: "disks",
                              message: "expected a list of block devices, found \(reader.describe(value))", hint: hint)
        }
        var result: [String] = []
        var hooks: [String: DiskHooks] = [:]
        var firstLine: [String: Int] = [:]
        for item in sequence {
            var line = item.mark?.line ?? keyLine
            var own: DiskHooks?
            var device: String?
            if case .mapping = item {
                (device, line, own) = try diskEntry(item, line: line)
            } else if case .scalar(let scalar) = item, !reader.isNull(item) {
                device = scalar.string
            }
            guard let device else {
                throw ConfigError(code: .wrongType, file: path, line: line, key: "disks",
                                  message: "expected a block device path, found \(reader.describe(item))",
                                  hint: "name each block device by its path, e.g. /dev/sdb, or give a map such as {device: /dev/sdb, pre_freeze_hook: /usr/local/sbin/db-freeze}")
            }
            let disk: String
            do {
                disk = try Validate.disk(device)
            } catch let invalid as InvalidValue {
                throw ConfigError(code: .invalidValue, file: path, line: line, key: "disks",
                                  message: invalid.message, hint: invalid.hint)
            }
            if let first = firstLine[disk] {
                throw ConfigError(code: .invalidValue, file: path, line: line, key: "disks",
                                  message: "'\(disk)' is listed twice (also on line \(first))", hint: "list each disk once")
            }
            firstLine[disk] = line ?? 0
            result.append(disk)
            if let own { hooks[disk] = own }
        }
        return (result, hooks)
    }

    /// One `disks:` item written as a map: its device (and the line to name
    /// for it) and its own hooks.
    private func diskEntry(_ item: Node, line: Int?) throws -> (String, Int?, DiskHooks) {
        let reader = self.reader
        let entries = try reader.sectionEntries(item, name: "disks", keyLine: line,
                                                example: "- device: /dev/sdb\n  pre_freeze_hook: /usr/local/sbin/db-freeze") ?? []
        var device: (String, Int?)?
        var hooks = DiskHooks()
        for entry in entries {
            let key = "disks.\(entry.key)"
            switch entry.key {
            case "device":
                device = (try reader.validated(entry, key: key, expected: "a block device path") { $0 }, entry.value.mark?.line ?? entry.line)
            case "pre_freeze_hook":
                hooks.preFreezeHook = .some(try reader.optional(entry, key: key, expected: "an executable's path", Validate.hook))
            case "post_thaw_hook":
                hooks.postThawHook = .some(try reader.optional(entry, key: key, expected: "an executable's path", Validate.hook))
            case "hook_timeout":
                hooks.hookTimeoutSeconds = try reader.validated(entry, key: key, expected: "a duration such as 60s", Validate.hookTimeout)
            default:
                throw reader.unknownKey(entry, section: "disks")
            }
        }
        guard let device else {
            throw ConfigError(code: .invalidValue, file: path, line: line, key: "disks",
                              message: "this disk's map has no 'device'",
                              hint: "name its block device, e.g. '- device: /dev/sdb'")
        }
        return (device.0, device.1, hooks)
    }

    private func mirror(_ section: ConfigEntry, into config: inout AgentConfig) throws {
        let reader = self.reader
        guard let entries = try reader.sectionEntries(section.value, name: "mirror", keyLine: section.line,
                                                      example: "mirror:\n  to: /dev/sdc") else { return }
        for entry in entries {
            let key = "mirror.\(entry.key)"
            switch entry.key {
            case "to":
                config.mirrorTo = try reader.optional(entry, key: key, expected: "a file or block device path",
                                                      Validate.mirrorTarget)
            case "interval_ms":
                config.mirrorIntervalMs = try reader.validated(entry, key: key, expected: "a number of milliseconds",
                                                               Validate.intervalMs)
            default:
                throw reader.unknownKey(entry, section: "mirror")
            }
        }
    }

    private func replication(_ section: ConfigEntry, into config: inout AgentConfig) throws {
        let reader = self.reader
        guard let entries = try reader.sectionEntries(section.value, name: "replication", keyLine: section.line,
                                                      example: "replication:\n  server: dr.example.com:9443") else { return }
        var hostInflightLine: Int?
        for entry in entries {
            let key = "replication.\(entry.key)"
            switch entry.key {
            case "server":
                let endpoint = try reader.optional(entry, key: key, expected: "host:port", Validate.serverEndpoint)
                config.serverHost = endpoint?.host
                config.serverPort = endpoint?.port ?? AgentConfig.defaultServerPort
            case "server_name":
                config.serverName = try reader.optional(entry, key: key, expected: "a host name", Validate.serverName)
            case "ca":
                config.tlsCAPath = try reader.validated(entry, key: key, expected: "a file path") {
                    try Validate.absolutePath($0, example: "/etc/tidemark/tls/ca.crt")
                }
            case "cert":
                config.tlsCertPath = try reader.validated(entry, key: key, expected: "a file path") {
                    try Validate.absolutePath($0, example: "/etc/tidemark/tls/agent.crt")
                }
            case "key":
                config.tlsKeyPath = try reader.validated(entry, key: key, expected: "a file path") {
                    try Validate.secretPath($0, example: "/etc/tidemark/tls/agent.key")
                }
                config.origins.lines[key] = entry.line
            case "replication_key":
                config.replicationKeyPath = try reader.validated(entry, key: key, expected: "a file path") {
                    try Validate.secretPath($0, example: "/etc/tidemark/replication.key")
                }
                config.origins.lines[key] = entry.line
            case "compression_level":
                config.compressionLevel = try reader.validated(entry, key: key, expected: "a compression level",
                                                               Validate.compressionLevel)
            case "bandwidth_limit":
                config.bandwidthLimitBytesPerSecond = try reader.validated(entry, key: key,
                                                                           expected: "a size per second such as 100m",
                                                                           Validate.bandwidth)
            case "segment_size":
                config.segmentSizeBytes = try reader.validated(entry, key: key, expected: "a size such as 4m",
                                                               Validate.segmentSize)
            case "inflight_bytes":
                config.inflightBytesMax = try reader.validated(entry, key: key, expected: "a size such as 64m",
                                                               Validate.inflightBytes)
            case "host_inflight_bytes":
                config.hostInflightBytesMax = try reader.validated(entry, key: key, expected: "a size such as 256m",
                                                                   Validate.hostInflightBytes)
                hostInflightLine = entry.line
            case "io_timeout_ms":
                config.ioTimeoutMs = try reader.validated(entry, key: key, expected: "a whole number of milliseconds",
                                                          Validate.ioTimeoutMs)
            default:
                throw reader.unknownKey(entry, section: "replication")
            }
        }
        // One disk must be able to fill its own window within the host's:
        // not set, the budget grows to the window; set, it must hold it.
        if config.hostInflightBytesMax < config.inflightBytesMax {
            guard hostInflightLine != nil else {
                config.hostInflightBytesMax = config.inflightBytesMax
                return
            }
            throw ConfigError(code: .invalidValue, file: path, line: hostInflightLine,
                              key: "replication.host_inflight_bytes",
                              message: "replication.host_inflight_bytes (\(config.hostInflightBytesMax >> 20) MiB, over all disks) is below replication.inflight_bytes (\(config.inflightBytesMax >> 20) MiB, one disk's window)",
                              hint: "raise replication.host_inflight_bytes to at least replication.inflight_bytes, or lower inflight_bytes")
        }
    }

    private func policy(_ section: ConfigEntry, into config: inout AgentConfig) throws {
        let reader = self.reader
        guard let entries = try reader.sectionEntries(section.value, name: "policy", keyLine: section.line,
                                                      example: "policy:\n  crash_consistent_interval: 5m") else { return }
        for entry in entries {
            let key = "policy.\(entry.key)"
            switch entry.key {
            case "crash_consistent_interval":
                config.crashConsistentIntervalSeconds = try reader.validated(entry, key: key, expected: "a duration such as 5m") {
                    try Validate.pointInterval($0, example: "5m")
                }
            case "app_consistent_interval":
                config.appConsistentIntervalSeconds = try reader.validated(entry, key: key, expected: "a duration such as 1h") {
                    try Validate.pointInterval($0, example: "60m")
                }
            case "freeze_timeout_ms":
                config.freezeTimeoutMs = try reader.validated(entry, key: key, expected: "a number of milliseconds",
                                                              Validate.freezeTimeoutMs)
            case "pre_freeze_hook":
                config.preFreezeHook = try reader.optional(entry, key: key, expected: "an executable's path", Validate.hook)
            case "post_thaw_hook":
                config.postThawHook = try reader.optional(entry, key: key, expected: "an executable's path", Validate.hook)
            case "hook_timeout":
                config.hookTimeoutSeconds = try reader.validated(entry, key: key, expected: "a duration such as 60s", Validate.hookTimeout)
            default:
                throw reader.unknownKey(entry, section: "policy")
            }
        }
    }
}
