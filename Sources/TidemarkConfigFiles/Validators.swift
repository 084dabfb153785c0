import Foundation

/// Checks for the keys beyond the tracking basics (identities, endpoints, paths, sizes, durations),
/// shared by the agent and server configurations and by the YAML file and the environment.
extension Validate {
    static let identifierMaxLength = 64

    static func isIdentifierScalar(_ s: Unicode.Scalar) -> Bool {
        s.isASCII && (CharacterSet.alphanumerics.contains(s) || s == "." || s == "_" || s == "-")
    }

    /// An agent or server id: 1–64 characters of [A-Za-z0-9._-]. Empty means "the default" (nil).
    static func identifier(_ text: String, prefix: String) throws -> String? {
        if text.isEmpty { return nil }
        let hint = "use 1 to \(identifierMaxLength) letters, digits, '.', '_' or '-', e.g. \(prefix)db1,"
            + " or leave it empty for \(prefix)<host name>"
        guard text.unicodeScalars.count <= identifierMaxLength else {
            throw InvalidValue(message: "'\(text)' is longer than \(identifierMaxLength) characters", hint: hint)
        }
        if let bad = text.unicodeScalars.first(where: { !isIdentifierScalar($0) }) {
            let what = bad == " " ? "a space" : "'\(Character(bad))'"
            throw InvalidValue(message: "'\(text)' contains \(what)", hint: hint)
        }
        return text
    }

    // MARK: Endpoints

    static let serverHint = "write host:port or just host (port \(AgentConfig.defaultServerPort)),"
        + " e.g. dr.example.com:9443, or \"[::1]:9443\" (quoted) for IPv6"
    static let listenHint = "write address:port, e.g. 0.0.0.0:9443, or \"[::]:9443\" (quoted) for IPv6 (port 0 picks a free port)"

    /// `replication.server`: empty means not set (nil).
    static func serverEndpoint(_ text: String) throws -> (host: String, port: UInt16)? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty { return nil }
        return try endpoint(trimmed, defaultPort: AgentConfig.defaultServerPort, allowPortZero: false, hint: serverHint)
    }

    /// `listen`: an address is required; port 0 asks the kernel for a free port.
    static func listenEndpoint(_ text: String) throws -> (host: String, port: UInt16) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard !trimmed.isEmpty else { throw InvalidValue(message: "must not be empty", hint: listenHint) }
        return try endpoint(trimmed, defaultPort: ServerConfig.defaultListenPort, allowPortZero: true, hint: listenHint)
    }

    /// `host:port`, `host`, `[v6]:port` or `[v6]`. The host comes back without brackets.
    static func endpoint(_ text: String, defaultPort: UInt16, allowPortZero: Bool,
                         hint: String) throws -> (host: String, port: UInt16) {
        let host: String
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else {
                throw InvalidValue(message: "'\(text)' has '[' without ']'", hint: hint)
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            let after = text[text.index(after: close)...]
            if after.hasPrefix(":") {
                portText = after.dropFirst()
            } else if !after.isEmpty {
                throw InvalidValue(message: "'\(text)' has '\(after)' after ']' where ':port' belongs", hint: hint)
            }
            guard host.contains(":"), host.unicodeScalars.allSatisfy({ s in
                s.isASCII && (CharacterSet.alphanumerics.contains(s) || ":.%_-".unicodeScalars.contains(s))
            }) else {
                throw InvalidValue(message: "'\(host)' is not an IPv6 address", hint: hint)
            }
        } else {
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            if parts.count > 2 {
                throw InvalidValue(message: "'\(text)' looks like an IPv6 address without brackets", hint: hint)
            }
            host = String(parts[0])
            if parts.count == 2 { portText = parts[1] }
            try hostName(host, hint: hint)
        }
        var port = defaultPort
        if let portText {
            guard let value = UInt16(portText), value > 0 || allowPortZero else {
                let range = allowPortZero ? "0..65535" : "1..65535"
                throw InvalidValue(message: "'\(portText)' is not a port number (\(range))", hint: hint)
            }
            port = value
        }
        return (host, port)
    }

    /// A DNS name or IPv4 address.
    @discardableResult
    static func hostName(_ text: String, hint: String) throws -> String {
        guard !text.isEmpty else { throw InvalidValue(message: "the host name is empty", hint: hint) }
        guard text.utf8.count <= 253 else {
            throw InvalidValue(message: "'\(text)' is longer than 253 characters, too long for a host name", hint: hint)
        }
        if let bad = text.unicodeScalars.first(where: { s in
            !(s.isASCII && (CharacterSet.alphanumerics.contains(s) || s == "." || s == "-" || s == "_"))
        }) {
            let what = bad == " " ? "a space" : "'\(Character(bad))'"
            throw InvalidValue(message: "'\(text)' contains \(what), not allowed in a host name", hint: hint)
        }
        return text
    }

    /// `replication.server_name`: empty means "use the server's host" (nil).
    static func serverName(_ text: String) throws -> String? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.isEmpty { return nil }
        return try hostName(trimmed, hint: "give the DNS name in the server's certificate, e.g. dr.example.com,"
                                + " or leave it empty to use the host of 'server'")
    }

    // MARK: Paths

    static func absolutePath(_ text: String, example: String) throws -> String {
        guard !text.isEmpty else {
            throw InvalidValue(message: "must not be empty", hint: "use an absolute path such as \(example)")
        }
        guard text.hasPrefix("/") else {
            throw InvalidValue(message: "'\(text)' is not an absolute path", hint: "use an absolute path such as \(example)")
        }
        return text
    }

    /// The path of a secret file (a replication key, a TLS private key).
    /// A wrong value is not quoted: someone may have pasted the key itself
    /// where its path belongs, and errors reach the log.
    static func secretPath(_ text: String, example: String) throws -> String {
        guard !text.isEmpty else {
            throw InvalidValue(message: "must not be empty", hint: "use an absolute path such as \(example)")
        }
        guard text.hasPrefix("/") else {
            throw InvalidValue(message: "the value (\(text.count) characters, not shown in case it is the key itself) is not an absolute path",
                               hint: "name the key file by its absolute path, such as \(example); the key stays in that file")
        }
        return text
    }

    /// A hook: the absolute path of an executable, or empty for none (nil). That it exists and is
    /// executable is checked here, when the configuration is loaded (start and reload), not first at
    /// a point's freeze; it is checked again when it runs (it may have been removed since).
    static func hook(_ text: String) throws -> String? {
        if text.isEmpty { return nil }
        guard text.hasPrefix("/") else {
            throw InvalidValue(message: "'\(text)' is not an absolute path",
                               hint: "give the absolute path of an executable, e.g. /usr/local/sbin/db-freeze, or leave it empty for none")
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: text, isDirectory: &isDirectory) else {
            throw InvalidValue(message: "'\(text)' does not exist",
                               hint: "install the hook there or correct the path; app-consistent points run it")
        }
        guard !isDirectory.boolValue else {
            throw InvalidValue(message: "'\(text)' is a directory", hint: "give the path of an executable file in it")
        }
        guard FileManager.default.isExecutableFile(atPath: text) else {
            throw InvalidValue(message: "'\(text)' is not executable", hint: "make it executable: chmod 755 \(text)")
        }
        return text
    }

    /// The largest path a Unix socket address holds (`sun_path` minus its terminating NUL).
    static let socketPathMaxBytes = 107

    static func socketPath(_ text: String) throws -> String {
        let path = try absolutePath(text, example: "/run/tidemark/agent.sock")
        guard path.utf8.count <= socketPathMaxBytes else {
            throw InvalidValue(message: "'\(path)' is \(path.utf8.count) bytes long; a Unix socket path holds at most \(socketPathMaxBytes)",
                               hint: "use a shorter path such as /run/tidemark/agent.sock")
        }
        return path
    }

    // MARK: Numbers

    static func integer(_ text: String, in range: ClosedRange<Int>, what: String, hint: String) throws -> Int {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let value = Int(trimmed) else {
            throw InvalidValue(message: "'\(text)' is not \(what)", hint: hint)
        }
        guard range.contains(value) else {
            throw InvalidValue(message: "\(value) is outside \(range.lowerBound)..\(range.upperBound)", hint: hint)
        }
        return value
    }

    static let compressionHint = "use auto (a level per segment), 0 for no compression, or a zstd level from "
        + "\(AgentConfig.compressionLevelMin) (fastest) to \(AgentConfig.compressionLevelMax) (smallest), e.g. 1"

    static func compressionLevel(_ text: String) throws -> CompressionSetting {
        if text.trimmingCharacters(in: .whitespaces) == "auto" { return .auto }
        return .fixed(Int32(try integer(text, in: Int(AgentConfig.compressionLevelMin)...Int(AgentConfig.compressionLevelMax),
                                        what: "a compression level", hint: compressionHint)))
    }

    static let freezeTimeoutHint = "use a whole number of milliseconds from \(AgentConfig.freezeTimeoutMsMin)"
        + " to \(AgentConfig.freezeTimeoutMsMax), e.g. 2000"

    static func freezeTimeoutMs(_ text: String) throws -> Int {
        try integer(text, in: AgentConfig.freezeTimeoutMsMin...AgentConfig.freezeTimeoutMsMax,
                    what: "a whole number of milliseconds", hint: freezeTimeoutHint)
    }

    static let ioTimeoutHint = "use a whole number of milliseconds from \(AgentConfig.ioTimeoutMsMin)"
        + " to \(AgentConfig.ioTimeoutMsMax), e.g. 30000"

    static func ioTimeoutMs(_ text: String) throws -> Int {
        try integer(text, in: AgentConfig.ioTimeoutMsMin...AgentConfig.ioTimeoutMsMax,
                    what: "a whole number of milliseconds", hint: ioTimeoutHint)
    }

    static let bandwidthHint = "use bytes per second with an optional unit, e.g. 100m for 100 MiB/s, or 0 for unlimited"

    /// Bytes per second; `100m`, `100m/s` and `0` (unlimited) are accepted.
    static func bandwidth(_ text: String) throws -> UInt64 {
        var trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.lowercased().hasSuffix("/s") { trimmed = String(trimmed.dropLast(2)) }
        guard let bytes = AgentConfig.parseSize(trimmed) else {
            throw InvalidValue(message: "'\(text)' is not a size", hint: bandwidthHint)
        }
        return bytes
    }

    /// A size within `range`, e.g. `'4k' is outside 64k..8m`.
    static func size(_ text: String, in range: ClosedRange<UInt64>, hint: String) throws -> UInt64 {
        guard let bytes = AgentConfig.parseSize(text) else {
            throw InvalidValue(message: "'\(text)' is not a size", hint: hint)
        }
        guard range.contains(bytes) else {
            throw InvalidValue(message: "'\(text)' is outside \(AgentConfig.formatSize(range.lowerBound))..\(AgentConfig.formatSize(range.upperBound))",
                               hint: hint)
        }
        return bytes
    }

    static let segmentSizeHint = "use a size from 64k to 8m, e.g. 4m"
    static let inflightHint = "use a size from 8m to 1g, e.g. 64m"

    static func segmentSize(_ text: String) throws -> UInt32 {
        UInt32(try size(text, in: UInt64(AgentConfig.segmentSizeBytesMin)...UInt64(AgentConfig.segmentSizeBytesMax),
                        hint: segmentSizeHint))
    }

    /// `hook_timeout` (of the policy or of one disk): 1 s to 1 h.
    static func hookTimeout(_ text: String) throws -> Int {
        try duration(text, in: AgentConfig.hookTimeoutSecondsMin...AgentConfig.hookTimeoutSecondsMax, zeroMeansOff: false, example: "60s")
    }

    static func hostInflightBytes(_ text: String) throws -> UInt64 {
        try size(text, in: AgentConfig.hostInflightBytesMin...AgentConfig.hostInflightBytesMaxLimit,
                 hint: "use a size from 16m to 4g, at least replication.inflight_bytes, e.g. 256m")
    }

    static func inflightBytes(_ text: String) throws -> UInt64 {
        try size(text, in: AgentConfig.inflightBytesMin...AgentConfig.inflightBytesMaxLimit, hint: inflightHint)
    }

    // MARK: Durations

    /// A duration in seconds within `range`, or 0 when `zeroMeansOff`.
    static func duration(_ text: String, in range: ClosedRange<Int>, zeroMeansOff: Bool, example: String) throws -> Int {
        let hint = "use seconds, or a number with s, m, h or d, e.g. \(example)" + (zeroMeansOff ? "; 0 turns it off" : "")
        guard let seconds = AgentConfig.parseDuration(text) else {
            throw InvalidValue(message: "'\(text)' is not a duration", hint: hint)
        }
        if seconds == 0, zeroMeansOff { return 0 }
        guard range.contains(seconds) else {
            let bounds = "\(AgentConfig.formatDuration(range.lowerBound))..\(AgentConfig.formatDuration(range.upperBound))"
            throw InvalidValue(message: "'\(text)' is outside \(zeroMeansOff ? "0 or " : "")\(bounds)", hint: hint)
        }
        return seconds
    }

    static func pointInterval(_ text: String, example: String) throws -> Int {
        try duration(text, in: AgentConfig.pointIntervalSecondsMin...AgentConfig.pointIntervalSecondsMax,
                     zeroMeansOff: true, example: example)
    }
}

extension AgentConfig {
    /// Parses `host:port` with the checks of `replication.server`, for the
    /// command-line override `--server`: one parser, one set of messages.
    public static func parseServerEndpoint(_ text: String) throws -> (host: String, port: UInt16) {
        guard let e = try Validate.serverEndpoint(text) else {
            throw InvalidValue(message: "must not be empty", hint: Validate.serverHint)
        }
        return e
    }
}

extension ServerConfig {
    /// Parses `address:port` with the checks of `listen`, for `--listen`.
    public static func parseListenEndpoint(_ text: String) throws -> (host: String, port: UInt16) {
        try Validate.listenEndpoint(text)
    }
}
