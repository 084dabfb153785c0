import Glibc
import Logging
import Synchronization

/// Tidemark's logging: swift-log `Logger`s whose handler is
/// `TidemarkLogHandler`, and `Log`, a facade over one shared `Logger`.
///
/// Why a facade stays: about two hundred call sites say `Log.info("...")`
/// with the whole message in words (the device, what happened, what to do)
/// and no metadata; rewriting each as `logger.info(...)` through an
/// injected `Logger` would change every file of the daemons (several of
/// which other work is restructuring) and gain nothing a reader sees. New
/// code that has context to attach (a disk, a connection) makes its own
/// `Logger` with `Log.logger(_:)` and sets metadata on it; the service
/// lifecycle logs through `Log.logger` too. Every one of them shares the
/// process-wide level (`setLevel`, from `log_level` or TIDEMARK_LOG_LEVEL,
/// changed by a reload) and the output format below.
///
/// Secrets are never logged: no call site logs a key's bytes, and key
/// types print as their file path or id only (ReplicationKey, TLSFiles).
public enum Log {
    /// The levels the configuration names (`log_level`).
    public enum Level: Int, Sendable, Comparable {
        case debug = 0, info, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        public var tag: String { ["debug", "info", "warning", "error"][rawValue] }

        /// The swift-log level of the same name.
        public var loggerLevel: Logger.Level {
            switch self {
            case .debug: .debug
            case .info: .info
            case .warning: .warning
            case .error: .error
            }
        }
    }

    /// The process-wide level, as an index into `Logger.Level.allCases`.
    private static let threshold = Atomic<Int>(levelIndex(.info))

    private static func levelIndex(_ l: Logger.Level) -> Int { Logger.Level.allCases.firstIndex(of: l) ?? 2 }

    /// Sets the process-wide level: every `Logger` whose own level was not
    /// set follows it at once (a reload applies `log_level` this way).
    public static func setLevel(_ l: Level) { setLevel(swiftLog: l.loggerLevel) }
    /// The same with a swift-log level (trace and notice, too).
    public static func setLevel(swiftLog l: Logger.Level) { threshold.store(levelIndex(l), ordering: .relaxed) }

    /// The process-wide level now.
    public static var level: Logger.Level { Logger.Level.allCases[threshold.load(ordering: .relaxed)] }

    /// The program name on each line; set once at startup, before threads.
    nonisolated(unsafe) public static var program = "tidemark-agent"

    /// A logger for one part of the program (`label` names it, e.g.
    /// "tidemark.control"); attach metadata to it where it helps.
    public static func logger(_ label: String) -> Logger {
        Logger(label: label) { TidemarkLogHandler(label: $0) }
    }

    /// The facade's logger.
    private static let shared = logger("tidemark")

    /// Makes `TidemarkLogHandler` the handler of every `Logger(label:)`
    /// the process creates, libraries' included. Called once by each
    /// program's entry point, before threads start; `program` names the
    /// program on each line.
    public static func bootstrap(program: String) {
        Log.program = program
        LoggingSystem.bootstrap { TidemarkLogHandler(label: $0) }
    }

    /// Writes a program's last words (`tidemark-agent: error: ...`, before
    /// exit status 1) to standard error with one write(2). Under the journal
    /// each line carries priority 3 (error), so `journalctl -p err` shows
    /// why a daemon stopped or did not start; elsewhere the text is as given.
    public static func writeFatal(_ text: String) {
        let out = fatalText(text, journal: TidemarkLogHandler.stderrIsJournal)
        _ = out.withCString { Glibc.write(2, $0, strlen($0)) }
    }

    /// The text `writeFatal` writes: with `journal`, `<3>` before each line.
    public static func fatalText(_ text: String, journal: Bool) -> String {
        guard journal else { return text }
        let body = text.hasSuffix("\n") ? String(text.dropLast()) : text
        return body.split(separator: "\n", omittingEmptySubsequences: false).map { "<3>" + $0 }.joined(separator: "\n") + "\n"
    }

    public static func debug(_ m: @autoclosure () -> String) { shared.debug("\(m())") }
    public static func info(_ m: @autoclosure () -> String) { shared.info("\(m())") }
    public static func warning(_ m: @autoclosure () -> String) { shared.warning("\(m())") }
    public static func error(_ m: @autoclosure () -> String) { shared.error("\(m())") }
}

/// The swift-log handler of every Tidemark program: one line per message on
/// standard error, written with one write(2) so lines from threads never
/// interleave.
///
/// Two formats. Under systemd, when standard error is the journal
/// (JOURNAL_STREAM names its device and inode, sd_journal_stream_fd(3)),
/// each line starts with the syslog priority, `<3>` for an error to `<7>`
/// for debug, which journald stores as the entry's priority (`journalctl
/// -p warning` filters on it); journald adds the time and program itself.
/// Elsewhere (a terminal, a test's pipe) each line carries an ISO-8601 UTC
/// time, the program and pid, and the level in words, as before swift-log.
///
/// The level: unless a `Logger` sets its own, the handler follows the
/// process-wide `Log.level`. Metadata follows the message as `key=value`.
public struct TidemarkLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    /// This logger's own level, when set (nil: the process-wide one).
    private var ownLevel: Logger.Level?

    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.metadataProvider = metadataProvider
    }

    public var logLevel: Logger.Level {
        get { ownLevel ?? Log.level }
        set { ownLevel = newValue }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Standard error is the journal: its device and inode are those
    /// JOURNAL_STREAM names ("DEV:INO"), so a redirection of it does not
    /// inherit the journal's format.
    static let stderrIsJournal: Bool = {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        return streamMatches(journalStream: value, fd: 2)
    }()

    /// `journalStream` ("DEV:INO", decimal) names the file open on `fd`.
    static func streamMatches(journalStream: String, fd: Int32) -> Bool {
        let parts = journalStream.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// The syslog priority of a level (sd-daemon(3): `<N>` prefixes).
    public static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// The text written for one event: `journal` selects the journald format.
    public static func format(level: Logger.Level, message: String, metadata: Logger.Metadata,
                              journal: Bool, program: String, pid: Int32, unixSeconds: Int) -> String {
        var text = message
        if !metadata.isEmpty {
            text += " " + metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        if journal {
            // journald splits a message at newlines: each line gets the priority.
            let prefix = "<\(syslogPriority(level))>"
            return text.split(separator: "\n", omittingEmptySubsequences: false).map { prefix + $0 }.joined(separator: "\n") + "\n"
        }
        var t = time_t(unixSeconds)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &tmv)
        let stamp = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return "\(stamp) \(program)[\(pid)] \(level.rawValue): \(text)\n"
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { own, _ in own } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let line = Self.format(level: event.level, message: event.message.description, metadata: all,
                               journal: Self.stderrIsJournal, program: Log.program, pid: getpid(), unixSeconds: time(nil))
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}
