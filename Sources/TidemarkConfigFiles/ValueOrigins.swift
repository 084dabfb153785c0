/// Where some values of a configuration came from, so that a later check of
/// the value (a key file that is world-readable, say) can name
/// `file:line` and the key like the parser does. Not part of equality: two
/// configurations with the same values are equal wherever they were written.
public struct ValueOrigins: Sendable, Equatable, CustomStringConvertible {
    /// The configuration file read (or that would have been read).
    public var file: String?
    /// Dotted key → 1-based line of the key in `file`.
    public var lines: [String: Int] = [:]
    /// Dotted key → environment variable that set it (overrides the file).
    public var variables: [String: String] = [:]

    public init(file: String? = nil) { self.file = file }

    public static func == (a: ValueOrigins, b: ValueOrigins) -> Bool { true }

    /// "replication.key at /etc/tidemark/agent.yaml:12", "replication.replication_key
    /// from TIDEMARK_REPLICATION_KEY", or "replication.key, the default (not set in FILE)".
    public func describe(_ key: String) -> String {
        if let v = variables[key] { return "\(key) from environment variable \(v)" }
        if let file, let line = lines[key] { return "\(key) at \(file):\(line)" }
        if let file { return "\(key), the default (not set in \(file))" }
        return "\(key), the default"
    }

    public var description: String { "origins of \(lines.count) keys in \(file ?? "no file")" }
}
