import Glibc
import Synchronization

/// A small leveled logger writing one line per message to standard error,
/// with an ISO-8601 UTC timestamp: journald adds its own, but the agent also
/// runs in terminals and tests. Shared by every Tidemark program.
public enum Log {
    public enum Level: Int, Sendable, Comparable {
        case debug = 0, info, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
        public var tag: String { ["debug", "info", "warning", "error"][rawValue] }
    }

    private static let threshold = Atomic<Int>(Level.info.rawValue)
    public static func setLevel(_ l: Level) { threshold.store(l.rawValue, ordering: .relaxed) }

    /// The program name on each line; set once at startup, before threads.
    nonisolated(unsafe) public static var program = "tidemark-agent"

    public static func debug(_ m: @autoclosure () -> String) { emit(.debug, m) }
    public static func info(_ m: @autoclosure () -> String) { emit(.info, m) }
    public static func warning(_ m: @autoclosure () -> String) { emit(.warning, m) }
    public static func error(_ m: @autoclosure () -> String) { emit(.error, m) }

    private static func emit(_ level: Level, _ m: () -> String) {
        guard level.rawValue >= threshold.load(ordering: .relaxed) else { return }
        var t = time(nil)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [CChar](repeating: 0, count: 32)
        strftime(&buf, buf.count, "%Y-%m-%dT%H:%M:%SZ", &tmv)
        let line = "\(String(cString: buf)) \(program)[\(getpid())] \(level.tag): \(m())\n"
        // One write(2) per line, so lines from threads never interleave.
        _ = line.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}
