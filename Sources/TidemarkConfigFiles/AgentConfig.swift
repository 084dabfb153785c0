import Foundation

/// How much the agent logs.
public enum LogLevel: String, Sendable, Equatable, CaseIterable, CustomStringConvertible {
    case debug, info, warning, error
    public var description: String { rawValue }
}

/// The agent's configuration: `/etc/tidemark/agent.yaml` (or `--config FILE`), then
/// environment overrides. Every key is optional and has a default; the shipped file
/// `Packaging/agent.yaml` lists them all at their defaults.
public struct AgentConfig: Sendable, Equatable {
    /// Where the key file paths were set (for errors about those files).
    public var origins = ValueOrigins()
    /// This agent's identity towards the servers (`agent_id`): 1–64 characters of [A-Za-z0-9._-].
    /// Default "agent-" + the host name; an empty value in the file means the default.
    public var agentID: String
    /// Where the `.hrl` change-tracking files live (`state_dir`).
    public var stateDir: String
    /// Tracking granularity in bytes (`chunk_size`): a power of two from 4 KiB to 1 MiB.
    public var chunkSizeBytes: UInt32
    /// Block devices to track (`disks`).
    public var disks: [String]
    /// Hooks of single disks (`disks:` items written as maps), by the path
    /// listed in `disks`: each set key replaces the policy's for that disk.
    public var diskHooks: [String: DiskHooks] = [:]
    /// How often the agent drains the kernel bitmap into the `.hrl` (`drain_interval_ms`).
    public var drainIntervalMs: Int
    /// Mirror target for `tidemark-agent mirror` (`mirror.to`); nil when not set.
    public var mirrorTo: String?
    /// Delta copy cadence of `tidemark-agent mirror` (`mirror.interval_ms`).
    public var mirrorIntervalMs: Int

    /// Process server host (`replication.server`, the part before `:port`); nil when not set.
    /// An IPv6 address is stored without brackets (`::1`).
    public var serverHost: String?
    /// Process server port (`replication.server`, the part after the host); 9443 when not given.
    public var serverPort: UInt16
    /// Name to verify in the server's certificate (`replication.server_name`); nil = use `serverHost`.
    public var serverName: String?
    /// CA certificate that signed the server's certificate (`replication.ca`).
    public var tlsCAPath: String
    /// This agent's certificate (`replication.cert`).
    public var tlsCertPath: String
    /// This agent's private key (`replication.key`).
    public var tlsKeyPath: String
    /// The replication (encryption) key file (`replication.replication_key`).
    public var replicationKeyPath: String
    /// zstd level (`replication.compression_level`): a fixed level (default
    /// 1; 0 = off, -7…-1 zstd's fast levels, 1…19), or `auto`.
    public var compressionLevel: CompressionSetting
    /// Outgoing bandwidth cap in bytes per second (`replication.bandwidth_limit`); 0 = unlimited.
    public var bandwidthLimitBytesPerSecond: UInt64
    /// Target size of a replication segment in bytes (`replication.segment_size`): 64 KiB…8 MiB.
    public var segmentSizeBytes: UInt32
    /// Most bytes of sealed segments not yet acknowledged durable (`replication.inflight_bytes`):
    /// 8 MiB…1 GiB. The reader stops once this much waits; segments already read and
    /// being sealed (at most 2 × CPUs + 1) still join the window.
    public var inflightBytesMax: UInt64
    /// Most bytes of segments being read, sealed or not yet acknowledged
    /// durable over all disks together (`replication.host_inflight_bytes`):
    /// 16 MiB…4 GiB, and at least `inflightBytesMax` (one disk can fill its
    /// window; when not set, it grows to that). Bounds the agent's memory
    /// per host, not per disk.
    public var hostInflightBytesMax: UInt64 = 96 << 20
    /// How long a connection to the process server may make no progress
    /// (`replication.io_timeout_ms`): a blocked send, or no frame received
    /// while pings are answered within it; then the agent reconnects. 1000…300000.
    public var ioTimeoutMs: Int

    /// Seconds between crash-consistent recovery points (`policy.crash_consistent_interval`); 0 = off.
    public var crashConsistentIntervalSeconds: Int
    /// Seconds between app-consistent recovery points (`policy.app_consistent_interval`); 0 = off.
    public var appConsistentIntervalSeconds: Int
    /// Longest a filesystem stays frozen for an app-consistent point (`policy.freeze_timeout_ms`): 100…60000.
    public var freezeTimeoutMs: Int
    /// Executable run before freezing (`policy.pre_freeze_hook`); nil when not set.
    public var preFreezeHook: String?
    /// Executable run after thawing (`policy.post_thaw_hook`); nil when not set.
    public var postThawHook: String?
    /// A hook running longer is stopped and the point fails (`policy.hook_timeout`).
    public var hookTimeoutSeconds: Int

    /// The agent's local control socket (`control_socket`).
    public var controlSocketPath: String
    /// `log_level`.
    public var logLevel: LogLevel

    public init(agentID: String = AgentConfig.defaults.agentID,
                stateDir: String = AgentConfig.defaults.stateDir,
                chunkSizeBytes: UInt32 = AgentConfig.defaults.chunkSizeBytes,
                disks: [String] = AgentConfig.defaults.disks,
                drainIntervalMs: Int = AgentConfig.defaults.drainIntervalMs,
                mirrorTo: String? = AgentConfig.defaults.mirrorTo,
                mirrorIntervalMs: Int = AgentConfig.defaults.mirrorIntervalMs,
                serverHost: String? = AgentConfig.defaults.serverHost,
                serverPort: UInt16 = AgentConfig.defaults.serverPort,
                serverName: String? = AgentConfig.defaults.serverName,
                tlsCAPath: String = AgentConfig.defaults.tlsCAPath,
                tlsCertPath: String = AgentConfig.defaults.tlsCertPath,
                tlsKeyPath: String = AgentConfig.defaults.tlsKeyPath,
                replicationKeyPath: String = AgentConfig.defaults.replicationKeyPath,
                compressionLevel: CompressionSetting = AgentConfig.defaults.compressionLevel,
                bandwidthLimitBytesPerSecond: UInt64 = AgentConfig.defaults.bandwidthLimitBytesPerSecond,
                segmentSizeBytes: UInt32 = AgentConfig.defaults.segmentSizeBytes,
                inflightBytesMax: UInt64 = AgentConfig.defaults.inflightBytesMax,
                ioTimeoutMs: Int = AgentConfig.defaults.ioTimeoutMs,
                crashConsistentIntervalSeconds: Int = AgentConfig.defaults.crashConsistentIntervalSeconds,
                appConsistentIntervalSeconds: Int = AgentConfig.defaults.appConsistentIntervalSeconds,
                freezeTimeoutMs: Int = AgentConfig.defaults.freezeTimeoutMs,
                preFreezeHook: String? = AgentConfig.defaults.preFreezeHook,
                postThawHook: String? = AgentConfig.defaults.postThawHook,
                hookTimeoutSeconds: Int = AgentConfig.defaults.hookTimeoutSeconds,
                controlSocketPath: String = AgentConfig.defaults.controlSocketPath,
                logLevel: LogLevel = AgentConfig.defaults.logLevel,
                hostInflightBytesMax: UInt64 = AgentConfig.defaults.hostInflightBytesMax) {
        self.hostInflightBytesMax = hostInflightBytesMax
        self.agentID = agentID
        self.stateDir = stateDir
        self.chunkSizeBytes = chunkSizeBytes
        self.disks = disks
        self.drainIntervalMs = drainIntervalMs
        self.mirrorTo = mirrorTo
        self.mirrorIntervalMs = mirrorIntervalMs
        self.serverHost = serverHost
        self.serverPort = serverPort
        self.serverName = serverName
        self.tlsCAPath = tlsCAPath
        self.tlsCertPath = tlsCertPath
        self.tlsKeyPath = tlsKeyPath
        self.replicationKeyPath = replicationKeyPath
        self.compressionLevel = compressionLevel
        self.bandwidthLimitBytesPerSecond = bandwidthLimitBytesPerSecond
        self.segmentSizeBytes = segmentSizeBytes
        self.inflightBytesMax = inflightBytesMax
        self.ioTimeoutMs = ioTimeoutMs
        self.crashConsistentIntervalSeconds = crashConsistentIntervalSeconds
        self.appConsistentIntervalSeconds = appConsistentIntervalSeconds
        self.freezeTimeoutMs = freezeTimeoutMs
        self.preFreezeHook = preFreezeHook
        self.postThawHook = postThawHook
        self.hookTimeoutSeconds = hookTimeoutSeconds
        self.controlSocketPath = controlSocketPath
        self.logLevel = logLevel
    }

    private init(defaultsFor hostName: String) {
        agentID = hostDerivedID(prefix: "agent-", hostName: hostName)
        stateDir = "/var/lib/tidemark"
        chunkSizeBytes = 64 * 1024
        disks = []
        drainIntervalMs = 1000
        mirrorTo = nil
        mirrorIntervalMs = 1000
        serverHost = nil
        serverPort = AgentConfig.defaultServerPort
        serverName = nil
        tlsCAPath = "/etc/tidemark/tls/ca.crt"
        tlsCertPath = "/etc/tidemark/tls/agent.crt"
        tlsKeyPath = "/etc/tidemark/tls/agent.key"
        replicationKeyPath = "/etc/tidemark/replication.key"
        compressionLevel = .fixed(1)
        bandwidthLimitBytesPerSecond = 0
        segmentSizeBytes = 4 << 20
        inflightBytesMax = 32 << 20
        ioTimeoutMs = 30_000
        crashConsistentIntervalSeconds = 5 * 60
        appConsistentIntervalSeconds = 60 * 60
        freezeTimeoutMs = 2000
        preFreezeHook = nil
        postThawHook = nil
        hookTimeoutSeconds = 60
        controlSocketPath = "/run/tidemark/agent.sock"
        logLevel = .info
    }

    /// The hooks that apply to `disk` (as listed in `disks`): its own where
    /// it sets them, else the policy's.
    public func hooks(for disk: String) -> (preFreeze: String?, postThaw: String?, timeoutSeconds: Int) {
        let own = diskHooks[disk] ?? DiskHooks()
        return (own.preFreezeHook ?? preFreezeHook, own.postThawHook ?? postThawHook, own.hookTimeoutSeconds ?? hookTimeoutSeconds)
    }

    /// The value of every key when neither the file nor the environment sets it.
    public static let defaults = AgentConfig(defaultsFor: currentHostName())

    /// The file read when `--config` is not given.
    public static let defaultPath = "/etc/tidemark/agent.yaml"

    // Limits, in one place. Relations are checked by tests.
    public static let chunkSizeBytesMin: UInt32 = 4 * 1024
    public static let chunkSizeBytesMax: UInt32 = 1024 * 1024
    public static let intervalMsMin = 10
    public static let intervalMsMax = 60_000
    /// The process server port when `replication.server` names only a host.
    public static let defaultServerPort: UInt16 = 9443
    /// Fixed levels an operator may write: zstd's fast levels from
    /// `compressionLevelMin`, 0 (off), its normal levels up to
    /// `compressionLevelMax` (20…22 need far more memory per context).
    public static let compressionLevelMin: Int32 = -7
    public static let compressionLevelMax: Int32 = 19
    public static let segmentSizeBytesMin: UInt32 = 64 * 1024
    public static let segmentSizeBytesMax: UInt32 = 8 << 20
    public static let inflightBytesMin: UInt64 = 8 << 20
    public static let inflightBytesMaxLimit: UInt64 = 1 << 30
    public static let hostInflightBytesMin: UInt64 = 16 << 20
    public static let hostInflightBytesMaxLimit: UInt64 = 4 << 30
    public static let ioTimeoutMsMin = 1_000
    public static let ioTimeoutMsMax = 300_000
    /// Bounds of a recovery-point interval that is not 0 (off): 1 s to 30 days.
    public static let pointIntervalSecondsMin = 1
    public static let pointIntervalSecondsMax = 30 * 86_400
    public static let freezeTimeoutMsMin = 100
    public static let freezeTimeoutMsMax = 60_000
    /// Bounds of `policy.hook_timeout`: 1 s to 1 h.
    public static let hookTimeoutSecondsMin = 1
    public static let hookTimeoutSecondsMax = 3_600

    /// Every top-level key, in the order of the shipped file.
    public static let knownKeys = ["agent_id", "state_dir", "chunk_size", "disks", "drain_interval_ms", "mirror",
                                   "replication", "policy", "control_socket", "log_level"]
    /// Every key under `mirror:`.
    public static let knownMirrorKeys = ["to", "interval_ms"]
    /// Every key under `replication:`.
    public static let knownReplicationKeys = ["server", "server_name", "ca", "cert", "key", "replication_key",
                                              "compression_level", "bandwidth_limit", "segment_size", "inflight_bytes", "host_inflight_bytes",
                                              "io_timeout_ms"]
    /// Every key of a `disks:` item written as a map.
    public static let knownDiskKeys = ["device", "pre_freeze_hook", "post_thaw_hook", "hook_timeout"]
    /// Every key under `policy:`.
    public static let knownPolicyKeys = ["crash_consistent_interval", "app_consistent_interval", "freeze_timeout_ms",
                                         "pre_freeze_hook", "post_thaw_hook", "hook_timeout"]

    static let schema = ConfigSchema(topLevel: knownKeys, sections: [("mirror", knownMirrorKeys),
                                                                      ("replication", knownReplicationKeys),
                                                                      ("policy", knownPolicyKeys),
                                                                      ("disks", knownDiskKeys)])

    /// Loads the file given explicitly (`--config FILE`): a missing file is an error.
    /// Environment overrides are applied on top.
    public static func load(path: String,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AgentConfig {
        let yaml = try readConfigFile(path, daemon: "agent", defaultPath: defaultPath)
        return try parse(yaml: yaml, path: path, environment: environment)
    }

    /// Loads `/etc/tidemark/agent.yaml` (or `path`) when it exists, the defaults when it does not;
    /// environment overrides are applied either way. For the case where no `--config` was given.
    public static func loadDefault(path: String = AgentConfig.defaultPath,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AgentConfig {
        if !configFileExists(path) {
            var config = AgentConfig.defaults
            config.origins.file = nil
            try config.applyEnvironment(environment, path: path)
            return config
        }
        return try load(path: path, environment: environment)
    }

    /// Parses YAML text (`path` is used only in error messages), then applies environment overrides.
    /// An empty document (or one with only comments) yields the defaults.
    public static func parse(yaml: String, path: String,
                             environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AgentConfig {
        var config = try ConfigParser(path: path, text: yaml).parse()
        config.origins.file = path
        try config.applyEnvironment(environment, path: path)
        return config
    }

    // MARK: Environment

    /// The environment variables that override keys, and the key each overrides.
    public static let environmentOverrides: [(variable: String, key: String)] = [
        ("TIDEMARK_AGENT_ID", "agent_id"),
        ("TIDEMARK_STATE_DIR", "state_dir"),
        ("TIDEMARK_CHUNK_SIZE", "chunk_size"),
        ("TIDEMARK_DISKS", "disks"),
        ("TIDEMARK_DRAIN_INTERVAL_MS", "drain_interval_ms"),
        ("TIDEMARK_SERVER", "replication.server"),
        ("TIDEMARK_REPLICATION_KEY", "replication.replication_key"),
        ("TIDEMARK_CONTROL_SOCKET", "control_socket"),
        ("TIDEMARK_LOG_LEVEL", "log_level"),
    ]

    mutating func applyEnvironment(_ environment: [String: String], path: String) throws {
        func fail(_ variable: String, _ key: String, _ invalid: InvalidValue) -> ConfigError {
            ConfigError(code: .invalidValue, file: path, line: nil, key: key, environmentVariable: variable,
                        message: invalid.message, hint: invalid.hint)
        }
        for (variable, key) in Self.environmentOverrides {
            guard let value = environment[variable] else { continue }
            do {
                switch key {
                case "agent_id": agentID = try Validate.identifier(value, prefix: "agent-") ?? Self.defaults.agentID
                case "state_dir": stateDir = try Validate.stateDir(value)
                case "chunk_size": chunkSizeBytes = try Validate.chunkSize(value)
                case "disks":
                    let items = value.split(separator: ",", omittingEmptySubsequences: false)
                        .map { $0.trimmingCharacters(in: .whitespaces) }
                    var seen = Set<String>()
                    var result: [String] = []
                    // An empty variable means "no disks"; an empty item between commas is a typo.
                    if !(items.count == 1 && items[0].isEmpty) {
                        for item in items {
                            let disk = try Validate.disk(item)
                            guard seen.insert(disk).inserted else {
                                throw InvalidValue(message: "'\(disk)' is listed twice", hint: "list each disk once")
                            }
                            result.append(disk)
                        }
                    }
                    disks = result
                case "drain_interval_ms": drainIntervalMs = try Validate.intervalMs(value)
                case "replication.server":
                    let endpoint = try Validate.serverEndpoint(value)
                    serverHost = endpoint?.host
                    serverPort = endpoint?.port ?? Self.defaultServerPort
                case "replication.replication_key":
                    replicationKeyPath = try Validate.secretPath(value, example: "/etc/tidemark/replication.key")
                    origins.variables[key] = variable
                case "control_socket": controlSocketPath = try Validate.socketPath(value)
                case "log_level": logLevel = try Validate.logLevel(value)
                default: preconditionFailure("environment override for unknown key \(key)")
                }
            } catch let invalid as InvalidValue {
                throw fail(variable, key, invalid)
            }
        }
    }

    // MARK: Sizes

    /// Parses a byte size: `65536`, `64k`, `64K`, `64KiB`, `64KB`, `1m`, `1MiB`, `2g`, `1t`, optionally with a
    /// space before the unit. Units are binary (k = 1024). Returns nil for anything else or on overflow.
    public static func parseSize(_ s: String) -> UInt64? {
        let text = s.trimmingCharacters(in: .whitespaces)
        let digits = text.prefix(while: { $0.isASCII && $0.isNumber })
        guard !digits.isEmpty, let number = UInt64(digits) else { return nil }
        let unit = text.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let shift: UInt64
        switch unit {
        case "", "b": shift = 0
        case "k", "kb", "kib": shift = 10
        case "m", "mb", "mib": shift = 20
        case "g", "gb", "gib": shift = 30
        case "t", "tb", "tib": shift = 40
        default: return nil
        }
        let (result, overflow) = number.multipliedReportingOverflow(by: UInt64(1) << shift)
        return overflow ? nil : result
    }

    /// Formats a byte count the way the configuration accepts it: `64k`, `1m`, `4096` → `4k`.
    public static func formatSize(_ bytes: UInt64) -> String {
        let units: [(UInt64, String)] = [(1 << 40, "t"), (1 << 30, "g"), (1 << 20, "m"), (1 << 10, "k")]
        for (scale, suffix) in units where bytes >= scale && bytes % scale == 0 {
            return "\(bytes / scale)\(suffix)"
        }
        return "\(bytes)"
    }

    // MARK: Durations

    /// Parses a duration in seconds: `300` (plain seconds), `300s`, `5m`, `1h`, `3d`, or a sum such as
    /// `1h30m`; `0` is 0. Units: s, m (minutes), h, d. Returns nil for anything else or on overflow.
    public static func parseDuration(_ s: String) -> Int? {
        let text = s.trimmingCharacters(in: .whitespaces).lowercased()
        guard !text.isEmpty else { return nil }
        if text.allSatisfy({ $0.isASCII && $0.isNumber }) { return Int(text) }
        var rest = Substring(text)
        var total = 0
        while !rest.isEmpty {
            let digits = rest.prefix(while: { $0.isASCII && $0.isNumber })
            guard !digits.isEmpty, let number = Int(digits) else { return nil }
            rest = rest.dropFirst(digits.count)
            guard let unit = rest.first else { return nil }
            rest = rest.dropFirst()
            let scale: Int
            switch unit {
            case "s": scale = 1
            case "m": scale = 60
            case "h": scale = 3600
            case "d": scale = 86_400
            default: return nil
            }
            let (product, overflow1) = number.multipliedReportingOverflow(by: scale)
            let (sum, overflow2) = total.addingReportingOverflow(product)
            if overflow1 || overflow2 { return nil }
            total = sum
        }
        return total
    }

    /// Formats seconds the way the configuration accepts them, in the largest whole unit: `300` → `5m`,
    /// `3600` → `1h`, `259200` → `3d`, `90` → `90s`, `0` → `0`.
    public static func formatDuration(_ seconds: Int) -> String {
        if seconds == 0 { return "0" }
        for (scale, suffix) in [(86_400, "d"), (3600, "h"), (60, "m")] where seconds % scale == 0 {
            return "\(seconds / scale)\(suffix)"
        }
        return "\(seconds)s"
    }
}

/// A value that is the right type but not acceptable; the caller adds where it came from.
public struct InvalidValue: Error, Sendable {
    public var message: String
    public var hint: String?
}

/// Checks shared by the YAML file and the environment, so both give the same messages.
enum Validate {
    static let chunkSizeHint = "use a power of two from 4k to 1m, e.g. 64k"
    static let intervalHint = "use a whole number of milliseconds from \(AgentConfig.intervalMsMin) to \(AgentConfig.intervalMsMax), e.g. 1000"

    static func chunkSize(_ text: String) throws -> UInt32 {
        guard let bytes = AgentConfig.parseSize(text) else {
            throw InvalidValue(message: "'\(text)' is not a size", hint: chunkSizeHint)
        }
        guard bytes >= AgentConfig.chunkSizeBytesMin, bytes <= AgentConfig.chunkSizeBytesMax else {
            throw InvalidValue(message: "'\(text)' is outside 4k..1m", hint: chunkSizeHint)
        }
        guard bytes & (bytes - 1) == 0 else {
            throw InvalidValue(message: "'\(text)' is not a power of two", hint: chunkSizeHint)
        }
        return UInt32(bytes)
    }

    static func intervalMs(_ text: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let value = Int(trimmed) else {
            throw InvalidValue(message: "'\(text)' is not a whole number of milliseconds", hint: intervalHint)
        }
        guard value >= AgentConfig.intervalMsMin, value <= AgentConfig.intervalMsMax else {
            throw InvalidValue(message: "\(value) is outside \(AgentConfig.intervalMsMin)..\(AgentConfig.intervalMsMax)",
                               hint: intervalHint)
        }
        return value
    }

    static func stateDir(_ text: String) throws -> String {
        guard !text.isEmpty else {
            throw InvalidValue(message: "must not be empty", hint: "use an absolute path such as /var/lib/tidemark")
        }
        guard text.hasPrefix("/") else {
            throw InvalidValue(message: "'\(text)' is not an absolute path", hint: "use an absolute path such as /var/lib/tidemark")
        }
        return text
    }

    static func disk(_ text: String) throws -> String {
        guard !text.isEmpty else {
            throw InvalidValue(message: "a disk is empty", hint: "name each block device by its path, e.g. /dev/sdb")
        }
        guard text.hasPrefix("/") else {
            throw InvalidValue(message: "'\(text)' is not an absolute path", hint: "name each block device by its path, e.g. /dev/sdb")
        }
        return text
    }

    static func mirrorTarget(_ text: String) throws -> String? {
        if text.isEmpty { return nil }
        guard text.hasPrefix("/") else {
            throw InvalidValue(message: "'\(text)' is not an absolute path",
                               hint: "give the target file or block device by absolute path, e.g. /dev/sdc")
        }
        return text
    }

    static func logLevel(_ text: String) throws -> LogLevel {
        if let level = LogLevel(rawValue: text.lowercased()) { return level }
        let names = LogLevel.allCases.map(\.rawValue)
        var hint = "use one of \(names.joined(separator: ", "))"
        if let close = closestMatch(text.lowercased(), among: names) { hint = "did you mean '\(close)'? (\(hint))" }
        throw InvalidValue(message: "'\(text)' is not a log level", hint: hint)
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a plausible typo.
func closestMatch(_ word: String, among candidates: [String]) -> String? {
    let normalized = word.lowercased().replacingOccurrences(of: "-", with: "_")
    var best: (candidate: String, distance: Int)?
    for candidate in candidates {
        let d = editDistance(normalized, candidate)
        if best == nil || d < best!.distance { best = (candidate, d) }
    }
    guard let best else { return nil }
    // A one-letter slip is the likeliest explanation.
    if best.distance <= 1 { return best.candidate }
    // Then a missing or extra trailing word ("spool_max" for "spool_max_bytes", "chunk" for
    // "chunk_size"), which a plain edit distance may match to a different key ("spool_dir").
    if let prefixed = candidates.first(where: { $0.hasPrefix(normalized) || normalized.hasPrefix($0) }),
       min(normalized.count, prefixed.count) >= 3 {
        return prefixed
    }
    // A typo changes a few letters; allow more for longer names.
    let limit = max(2, best.candidate.count / 3)
    return best.distance <= limit ? best.candidate : nil
}

/// Levenshtein distance over Unicode scalars.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var previous = Array(0...b.count)
    var current = [Int](repeating: 0, count: b.count + 1)
    for i in 1...a.count {
        current[0] = i
        for j in 1...b.count {
            let cost = a[i - 1] == b[j - 1] ? 0 : 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
        }
        swap(&previous, &current)
    }
    return previous[b.count]
}

/// `replication.compression_level`: one zstd level for every segment, or
/// `auto`, a level per segment chosen by what holds replication back
/// (faster while compressing is the bottleneck, smaller while the network,
/// the bandwidth limit or the process server is).
public enum CompressionSetting: Equatable, Sendable, CustomStringConvertible {
    /// 0 = no compression; -7…-1 are zstd's fast levels; 1…19 its normal ones.
    case fixed(Int32)
    case auto

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .fixed(let level): return String(level)
        }
    }
}

/// One disk's own hooks (a `disks:` item written as a map). nil: not set
/// there, the policy's applies; `.some(nil)` for a hook: none for this disk.
public struct DiskHooks: Sendable, Equatable {
    public var preFreezeHook: String??
    public var postThawHook: String??
    public var hookTimeoutSeconds: Int?
    public init(preFreezeHook: String?? = nil, postThawHook: String?? = nil, hookTimeoutSeconds: Int? = nil) {
        self.preFreezeHook = preFreezeHook
        self.postThawHook = postThawHook
        self.hookTimeoutSeconds = hookTimeoutSeconds
    }
}
