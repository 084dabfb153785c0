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
    /// Where the `.hrl` change-tracking files live (`state_dir`).
    public var stateDir: String
    /// Tracking granularity in bytes (`chunk_size`): a power of two from 4 KiB to 1 MiB.
    public var chunkSizeBytes: UInt32
    /// Block devices to track (`disks`).
    public var disks: [String]
    /// How often the agent drains the kernel bitmap into the `.hrl` (`drain_interval_ms`).
    public var drainIntervalMs: Int
    /// Mirror target for `tidemark-agent mirror` (`mirror.to`); nil when not set.
    public var mirrorTo: String?
    /// Delta copy cadence of `tidemark-agent mirror` (`mirror.interval_ms`).
    public var mirrorIntervalMs: Int
    /// `log_level`.
    public var logLevel: LogLevel

    public init(stateDir: String = AgentConfig.defaults.stateDir,
                chunkSizeBytes: UInt32 = AgentConfig.defaults.chunkSizeBytes,
                disks: [String] = AgentConfig.defaults.disks,
                drainIntervalMs: Int = AgentConfig.defaults.drainIntervalMs,
                mirrorTo: String? = AgentConfig.defaults.mirrorTo,
                mirrorIntervalMs: Int = AgentConfig.defaults.mirrorIntervalMs,
                logLevel: LogLevel = AgentConfig.defaults.logLevel) {
        self.stateDir = stateDir
        self.chunkSizeBytes = chunkSizeBytes
        self.disks = disks
        self.drainIntervalMs = drainIntervalMs
        self.mirrorTo = mirrorTo
        self.mirrorIntervalMs = mirrorIntervalMs
        self.logLevel = logLevel
    }

    private init(defaultsStateDir: String) {
        stateDir = defaultsStateDir
        chunkSizeBytes = 64 * 1024
        disks = []
        drainIntervalMs = 1000
        mirrorTo = nil
        mirrorIntervalMs = 1000
        logLevel = .info
    }

    /// The value of every key when neither the file nor the environment sets it.
    public static let defaults = AgentConfig(defaultsStateDir: "/var/lib/tidemark")

    /// The file read when `--config` is not given.
    public static let defaultPath = "/etc/tidemark/agent.yaml"

    // Limits, in one place. Relations are checked by tests.
    public static let chunkSizeBytesMin: UInt32 = 4 * 1024
    public static let chunkSizeBytesMax: UInt32 = 1024 * 1024
    public static let intervalMsMin = 10
    public static let intervalMsMax = 60_000

    /// Every top-level key, in the order of the shipped file.
    public static let knownKeys = ["state_dir", "chunk_size", "disks", "drain_interval_ms", "mirror", "log_level"]
    /// Every key under `mirror:`.
    public static let knownMirrorKeys = ["to", "interval_ms"]

    /// Loads the file given explicitly (`--config FILE`): a missing file is an error.
    /// Environment overrides are applied on top.
    public static func load(path: String,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AgentConfig {
        let yaml = try readFile(path)
        return try parse(yaml: yaml, path: path, environment: environment)
    }

    /// Loads `/etc/tidemark/agent.yaml` (or `path`) when it exists, the defaults when it does not;
    /// environment overrides are applied either way. For the case where no `--config` was given.
    public static func loadDefault(path: String = AgentConfig.defaultPath,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AgentConfig {
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) {
            var config = AgentConfig.defaults
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
        try config.applyEnvironment(environment, path: path)
        return config
    }

    private static func readFile(_ path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConfigError(code: .fileNotFound, file: path, line: nil, key: nil,
                              message: "no such file",
                              hint: "check the path given to --config (without --config the agent reads \(defaultPath))")
        }
        if isDirectory.boolValue {
            throw ConfigError(code: .unreadable, file: path, line: nil, key: nil,
                              message: "is a directory, not a configuration file",
                              hint: "give the path of the YAML file, e.g. \(defaultPath)")
        }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConfigError(code: .unreadable, file: path, line: nil, key: nil,
                              message: "cannot be read (\(error.localizedDescription))",
                              hint: "check the file's permissions")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError(code: .unreadable, file: path, line: nil, key: nil,
                              message: "is not UTF-8 text",
                              hint: "the configuration must be a UTF-8 YAML file")
        }
        return text
    }

    // MARK: Environment

    /// The environment variables that override keys, and the key each overrides.
    public static let environmentOverrides: [(variable: String, key: String)] = [
        ("TIDEMARK_STATE_DIR", "state_dir"),
        ("TIDEMARK_CHUNK_SIZE", "chunk_size"),
        ("TIDEMARK_DISKS", "disks"),
        ("TIDEMARK_DRAIN_INTERVAL_MS", "drain_interval_ms"),
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
}

/// A value that is the right type but not acceptable; the caller adds where it came from.
struct InvalidValue: Error {
    var message: String
    var hint: String?
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
    // A typo changes a few letters; allow more for longer names. Also accept a
    // missing or extra separator-delimited word ("chunk" for "chunk_size").
    let limit = max(2, best.candidate.count / 3)
    if best.distance <= limit { return best.candidate }
    if let prefixed = candidates.first(where: { $0.hasPrefix(normalized) || normalized.hasPrefix($0) }),
       min(normalized.count, prefixed.count) >= 3 {
        return prefixed
    }
    return nil
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
