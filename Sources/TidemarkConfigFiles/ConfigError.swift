/// A problem with the agent's configuration, located as precisely as we can:
/// the file and line for a YAML key, or the environment variable that overrode it.
///
/// `description` is the one line an operator sees, e.g.
/// `/etc/tidemark/agent.yaml:7: key 'chunk_size': '65x' is not a size — use a power of two from 4k to 1m, e.g. 64k`
public struct ConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    /// What kind of problem this is, so callers and tests can branch without parsing text.
    /// A struct around a private enum so kinds can be added without breaking switches.
    public struct Code: Equatable, Hashable, Sendable, CustomStringConvertible {
        private enum Value: String, Sendable {
            case fileNotFound = "file-not-found"
            case unreadable
            case syntax
            case notAMap = "not-a-map"
            case unknownKey = "unknown-key"
            case duplicateKey = "duplicate-key"
            case wrongType = "wrong-type"
            case invalidValue = "invalid-value"
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// The file given explicitly does not exist.
        public static let fileNotFound = Code(.fileNotFound)
        /// The file exists but could not be read or is not UTF-8.
        public static let unreadable = Code(.unreadable)
        /// The YAML itself is malformed.
        public static let syntax = Code(.syntax)
        /// The document (or a section) is not a map of keys.
        public static let notAMap = Code(.notAMap)
        /// A key Tidemark does not know.
        public static let unknownKey = Code(.unknownKey)
        /// The same key twice in one map.
        public static let duplicateKey = Code(.duplicateKey)
        /// A list where a scalar was expected, a map where a list was expected, and so on.
        public static let wrongType = Code(.wrongType)
        /// The right type but an unacceptable value (out of range, not a power of two, ...).
        public static let invalidValue = Code(.invalidValue)

        public var description: String { value.rawValue }
    }

    public var code: Code
    /// The configuration file, or nil when the problem came from the environment alone.
    public var file: String?
    /// 1-based line in `file`, when known.
    public var line: Int?
    /// The key, dotted for nested keys (`mirror.interval_ms`).
    public var key: String?
    /// The environment variable that carried the bad value, when it came from the environment.
    public var environmentVariable: String?
    /// What is wrong, e.g. `'65x' is not a size`.
    public var message: String
    /// What to do about it, e.g. `use a power of two from 4k to 1m, e.g. 64k`.
    public var hint: String?

    public init(code: Code, file: String?, line: Int?, key: String?, environmentVariable: String? = nil,
                message: String, hint: String?) {
        self.code = code
        self.file = file
        self.line = line
        self.key = key
        self.environmentVariable = environmentVariable
        self.message = message
        self.hint = hint
    }

    public var description: String {
        var out = ""
        if let environmentVariable {
            out = "environment variable \(environmentVariable): "
        } else if let file {
            out = file
            if let line { out += ":\(line)" }
            out += ": "
        }
        if let key, environmentVariable == nil { out += "key '\(key)': " }
        out += message
        if let hint, !hint.isEmpty { out += " — \(hint)" }
        return out
    }
}
