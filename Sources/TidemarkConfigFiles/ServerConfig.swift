import Foundation
import Yams

/// The process server's configuration: `/etc/tidemark/server.yaml` (or `--config FILE`), then
/// environment overrides. Every key is optional and has a default; the shipped file
/// `Packaging/server.yaml` lists them all at their defaults.
public struct ServerConfig: Sendable, Equatable {
    /// This server's identity (`server_id`): 1–64 characters of [A-Za-z0-9._-].
    /// Default "server-" + the host name; an empty value in the file means the default.
    public var serverID: String
    /// Address the TLS ingest listens on (`listen`, the part before `:port`); IPv6 without brackets.
    public var listenHost: String
    /// Port the TLS ingest listens on (`listen`); 0 asks the kernel for a free port.
    public var listenPort: UInt16
    /// CA certificate that signed the agents' certificates (`tls.ca`).
    public var tlsCAPath: String
    /// This server's certificate (`tls.cert`).
    public var tlsCertPath: String
    /// This server's private key (`tls.key`).
    public var tlsKeyPath: String
    /// Where `tls.key` was set, for errors found when the key file is
    /// checked (`file:line`); not part of equality.
    public var origins = ValueOrigins()
    /// Where received segments are spooled before upload (`spool_dir`).
    public var spoolDir: String
    /// Spool size at which agents are pushed back (`spool_max_bytes`): 64 MiB…1 TiB.
    public var spoolMaxBytes: UInt64
    /// Memory for received segments kept until they are in target storage
    /// (`upload_memory_bytes`): 0…4 GiB. The uploader writes them from memory;
    /// the ones that do not fit are read back from the spool. 0 reads every one back.
    public var uploadMemoryBytes: UInt64
    /// Target storage backend (`target.type`); only "local" for now.
    public var targetType: String
    /// Directory of the local target storage (`target.path`).
    public var targetPath: String
    /// How long recovery points are kept, in seconds (`retention`).
    public var retentionSeconds: Int
    /// How often expired recovery points are pruned, in seconds (`prune_interval`).
    public var pruneIntervalSeconds: Int
    /// Most agent connections served at once (`max_connections`): 1…4096.
    public var maxConnections: Int
    /// Incoming bandwidth cap over all agents in bytes per second (`bandwidth_limit`); 0 = unlimited.
    public var bandwidthLimitBytesPerSecond: UInt64
    /// `log_level`.
    public var logLevel: LogLevel

    public init(serverID: String = ServerConfig.defaults.serverID,
                listenHost: String = ServerConfig.defaults.listenHost,
                listenPort: UInt16 = ServerConfig.defaults.listenPort,
                tlsCAPath: String = ServerConfig.defaults.tlsCAPath,
                tlsCertPath: String = ServerConfig.defaults.tlsCertPath,
                tlsKeyPath: String = ServerConfig.defaults.tlsKeyPath,
                spoolDir: String = ServerConfig.defaults.spoolDir,
                spoolMaxBytes: UInt64 = ServerConfig.defaults.spoolMaxBytes,
                uploadMemoryBytes: UInt64 = ServerConfig.defaults.uploadMemoryBytes,
                targetType: String = ServerConfig.defaults.targetType,
                targetPath: String = ServerConfig.defaults.targetPath,
                retentionSeconds: Int = ServerConfig.defaults.retentionSeconds,
                pruneIntervalSeconds: Int = ServerConfig.defaults.pruneIntervalSeconds,
                maxConnections: Int = ServerConfig.defaults.maxConnections,
                bandwidthLimitBytesPerSecond: UInt64 = ServerConfig.defaults.bandwidthLimitBytesPerSecond,
                logLevel: LogLevel = ServerConfig.defaults.logLevel) {
        self.serverID = serverID
        self.listenHost = listenHost
        self.listenPort = listenPort
        self.tlsCAPath = tlsCAPath
        self.tlsCertPath = tlsCertPath
        self.tlsKeyPath = tlsKeyPath
        self.spoolDir = spoolDir
        self.spoolMaxBytes = spoolMaxBytes
        self.uploadMemoryBytes = uploadMemoryBytes
        self.targetType = targetType
        self.targetPath = targetPath
        self.retentionSeconds = retentionSeconds
        self.pruneIntervalSeconds = pruneIntervalSeconds
        self.maxConnections = maxConnections
        self.bandwidthLimitBytesPerSecond = bandwidthLimitBytesPerSecond
        self.logLevel = logLevel
    }

    private init(defaultsFor hostName: String) {
        serverID = hostDerivedID(prefix: "server-", hostName: hostName)
        listenHost = "0.0.0.0"
        listenPort = ServerConfig.defaultListenPort
        tlsCAPath = "/etc/tidemark/tls/ca.crt"
        tlsCertPath = "/etc/tidemark/tls/server.crt"
        tlsKeyPath = "/etc/tidemark/tls/server.key"
        spoolDir = "/var/lib/tidemark/spool"
        spoolMaxBytes = 1 << 30
        uploadMemoryBytes = 192 << 20
        targetType = "local"
        targetPath = "/var/lib/tidemark/target"
        retentionSeconds = 72 * 3600
        pruneIntervalSeconds = 10 * 60
        maxConnections = 256
        bandwidthLimitBytesPerSecond = 0
        logLevel = .info
    }

    /// The value of every key when neither the file nor the environment sets it.
    public static let defaults = ServerConfig(defaultsFor: currentHostName())

    /// The file read when `--config` is not given.
    public static let defaultPath = "/etc/tidemark/server.yaml"

    // Limits, in one place. Relations are checked by tests.
    /// The port of `listen` when it names only an address; the agents' default server port.
    public static let defaultListenPort: UInt16 = 9443
    public static let spoolMaxBytesMin: UInt64 = 64 << 20
    public static let spoolMaxBytesMax: UInt64 = 1 << 40
    public static let uploadMemoryBytesMax: UInt64 = 4 << 30
    /// Retention: 1 minute to 10 years.
    public static let retentionSecondsMin = 60
    public static let retentionSecondsMax = 3650 * 86_400
    /// Prune interval: 1 second to 1 day.
    public static let pruneIntervalSecondsMin = 1
    public static let pruneIntervalSecondsMax = 86_400
    public static let maxConnectionsLimit = 4096
    /// The target storage types this build accepts.
    public static let targetTypes = ["local"]

    /// Every top-level key, in the order of the shipped file.
    public static let knownKeys = ["server_id", "listen", "tls", "spool_dir", "spool_max_bytes", "upload_memory_bytes", "target",
                                   "retention", "prune_interval", "max_connections", "bandwidth_limit", "log_level"]
    /// Every key under `tls:`.
    public static let knownTLSKeys = ["ca", "cert", "key"]
    /// Every key under `target:`.
    public static let knownTargetKeys = ["type", "path"]

    static let schema = ConfigSchema(topLevel: knownKeys, sections: [("tls", knownTLSKeys), ("target", knownTargetKeys)])

    /// Loads the file given explicitly (`--config FILE`): a missing file is an error.
    /// Environment overrides are applied on top.
    public static func load(path: String,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ServerConfig {
        let yaml = try readConfigFile(path, daemon: "server", defaultPath: defaultPath)
        return try parse(yaml: yaml, path: path, environment: environment)
    }

    /// Loads `/etc/tidemark/server.yaml` (or `path`) when it exists, the defaults when it does not;
    /// environment overrides are applied either way. For the case where no `--config` was given.
    public static func loadDefault(path: String = ServerConfig.defaultPath,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ServerConfig {
        if !configFileExists(path) {
            var config = ServerConfig.defaults
            try config.applyEnvironment(environment, path: path)
            return config
        }
        return try load(path: path, environment: environment)
    }

    /// Parses YAML text (`path` is used only in error messages), then applies environment overrides.
    /// An empty document (or one with only comments) yields the defaults.
    public static func parse(yaml: String, path: String,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> ServerConfig {
        var config = try ServerConfigParser(path: path, text: yaml).parse()
        try config.applyEnvironment(environment, path: path)
        return config
    }

    // MARK: Environment

    /// The environment variables that override keys, and the key each overrides.
    public static let environmentOverrides: [(variable: String, key: String)] = [
        ("TIDEMARK_SERVER_ID", "server_id"),
        ("TIDEMARK_LISTEN", "listen"),
        ("TIDEMARK_SPOOL_DIR", "spool_dir"),
        ("TIDEMARK_TARGET_PATH", "target.path"),
        ("TIDEMARK_LOG_LEVEL", "log_level"),
    ]

    mutating func applyEnvironment(_ environment: [String: String], path: String) throws {
        for (variable, key) in Self.environmentOverrides {
            guard let value = environment[variable] else { continue }
            do {
                switch key {
                case "server_id": serverID = try Validate.identifier(value, prefix: "server-") ?? Self.defaults.serverID
                case "listen": (listenHost, listenPort) = try Validate.listenEndpoint(value)
                case "spool_dir": spoolDir = try Validate.absolutePath(value, example: "/var/lib/tidemark/spool")
                case "target.path": targetPath = try Validate.absolutePath(value, example: "/var/lib/tidemark/target")
                case "log_level": logLevel = try Validate.logLevel(value)
                default: preconditionFailure("environment override for unknown key \(key)")
                }
            } catch let invalid as InvalidValue {
                throw ConfigError(code: .invalidValue, file: path, line: nil, key: key, environmentVariable: variable,
                                  message: invalid.message, hint: invalid.hint)
            }
        }
    }
}

extension Validate {
    static func targetType(_ text: String) throws -> String {
        let normalized = text.trimmingCharacters(in: .whitespaces).lowercased()
        if ServerConfig.targetTypes.contains(normalized) { return normalized }
        let available = "only 'local' is available for now; S3-compatible storage (s3) comes in a later release"
        if normalized == "s3" {
            throw InvalidValue(message: "'\(text)' is not supported yet", hint: available)
        }
        var hint = available
        if let close = closestMatch(normalized, among: ServerConfig.targetTypes) { hint = "did you mean '\(close)'? (\(hint))" }
        throw InvalidValue(message: "'\(text)' is not a target type", hint: hint)
    }

    static let spoolMaxHint = "use a size from 64m to 1t, e.g. 1g"
    static let uploadMemoryHint = "use a size from 0 to 4g, e.g. 192m"
    static let connectionsHint = "use a whole number from 1 to \(ServerConfig.maxConnectionsLimit), e.g. 256"
}

/// Walks the YAML node tree of a server configuration through `ConfigReader`.
struct ServerConfigParser {
    let path: String
    let text: String

    func parse() throws -> ServerConfig {
        let reader = ConfigReader(path: path, text: text, schema: ServerConfig.schema, exampleEntry: "listen: 0.0.0.0:9443")
        var config = ServerConfig.defaults
        config.origins.file = path
        guard let entries = try reader.topLevelEntries() else { return config }  // empty file: all defaults
        for entry in entries {
            let key = entry.key
            switch key {
            case "server_id":
                config.serverID = try reader.optional(entry, key: key, expected: "a server id") {
                    try Validate.identifier($0, prefix: "server-")
                } ?? ServerConfig.defaults.serverID
            case "listen":
                (config.listenHost, config.listenPort) = try reader.validated(entry, key: key, expected: "address:port",
                                                                              Validate.listenEndpoint)
            case "tls":
                guard let section = try reader.sectionEntries(entry.value, name: "tls", keyLine: entry.line,
                                                              example: "tls:\n  cert: /etc/tidemark/tls/server.crt") else { break }
                for item in section {
                    let dotted = "tls.\(item.key)"
                    switch item.key {
                    case "ca":
                        config.tlsCAPath = try reader.validated(item, key: dotted, expected: "a file path") {
                            try Validate.absolutePath($0, example: "/etc/tidemark/tls/ca.crt")
                        }
                    case "cert":
                        config.tlsCertPath = try reader.validated(item, key: dotted, expected: "a file path") {
                            try Validate.absolutePath($0, example: "/etc/tidemark/tls/server.crt")
                        }
                    case "key":
                        config.tlsKeyPath = try reader.validated(item, key: dotted, expected: "a file path") {
                            try Validate.secretPath($0, example: "/etc/tidemark/tls/server.key")
                        }
                        config.origins.lines[dotted] = item.line
                    default:
                        throw reader.unknownKey(item, section: "tls")
                    }
                }
            case "spool_dir":
                config.spoolDir = try reader.validated(entry, key: key, expected: "a directory path") {
                    try Validate.absolutePath($0, example: "/var/lib/tidemark/spool")
                }
            case "spool_max_bytes":
                config.spoolMaxBytes = try reader.validated(entry, key: key, expected: "a size such as 1g") {
                    try Validate.size($0, in: ServerConfig.spoolMaxBytesMin...ServerConfig.spoolMaxBytesMax,
                                      hint: Validate.spoolMaxHint)
                }
            case "upload_memory_bytes":
                config.uploadMemoryBytes = try reader.validated(entry, key: key, expected: "a size such as 192m") {
                    try Validate.size($0, in: 0...ServerConfig.uploadMemoryBytesMax, hint: Validate.uploadMemoryHint)
                }
            case "target":
                guard let section = try reader.sectionEntries(entry.value, name: "target", keyLine: entry.line,
                                                              example: "target:\n  path: /var/lib/tidemark/target") else { break }
                for item in section {
                    let dotted = "target.\(item.key)"
                    switch item.key {
                    case "type":
                        config.targetType = try reader.validated(item, key: dotted, expected: "a target type",
                                                                 Validate.targetType)
                    case "path":
                        config.targetPath = try reader.validated(item, key: dotted, expected: "a directory path") {
                            try Validate.absolutePath($0, example: "/var/lib/tidemark/target")
                        }
                    default:
                        throw reader.unknownKey(item, section: "target")
                    }
                }
            case "retention":
                config.retentionSeconds = try reader.validated(entry, key: key, expected: "a duration such as 72h") {
                    try Validate.duration($0, in: ServerConfig.retentionSecondsMin...ServerConfig.retentionSecondsMax,
                                          zeroMeansOff: false, example: "72h")
                }
            case "prune_interval":
                config.pruneIntervalSeconds = try reader.validated(entry, key: key, expected: "a duration such as 10m") {
                    try Validate.duration($0, in: ServerConfig.pruneIntervalSecondsMin...ServerConfig.pruneIntervalSecondsMax,
                                          zeroMeansOff: false, example: "10m")
                }
            case "max_connections":
                config.maxConnections = try reader.validated(entry, key: key, expected: "a number of connections") {
                    try Validate.integer($0, in: 1...ServerConfig.maxConnectionsLimit, what: "a whole number",
                                         hint: Validate.connectionsHint)
                }
            case "bandwidth_limit":
                config.bandwidthLimitBytesPerSecond = try reader.validated(entry, key: key,
                                                                           expected: "a size per second such as 100m",
                                                                           Validate.bandwidth)
            case "log_level":
                config.logLevel = try reader.validated(entry, key: key, expected: "a log level", Validate.logLevel)
            default:
                throw reader.unknownKey(entry, section: nil)
            }
        }
        return config
    }
}
