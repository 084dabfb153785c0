import Glibc
import TidemarkSystem

/// Recovery progress on standard error: a redrawn bar on a terminal, else
/// one "recovering: N%" line at most once per second (logs stay short).
public final class ProgressReporter {
    private let label: String
    private let isTTY: Bool
    private var lastEmitMs: Int64 = -1
    private var lastPercent = -1
    private var drawn = false

    public init(label: String, isTTY: Bool = isatty(2) == 1) {
        self.label = label
        self.isTTY = isTTY
    }

    private static func nowMs() -> Int64 { SystemClock.monotonicMs() }

    public func update(done: UInt64, total: UInt64) {
        let percent = total == 0 ? 100 : Int(Double(done) / Double(total) * 100)
        let now = Self.nowMs()
        let final = done >= total
        if isTTY {
            guard final || lastEmitMs < 0 || now - lastEmitMs >= 100 else { return }
            if final && lastPercent == 100 && drawn { return }
            let width = 30
            let filled = min(width, Int(Double(width) * Double(percent) / 100))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let pad = percent < 10 ? "  " : percent < 100 ? " " : ""
            writeAll(2, "\r\(label) [\(bar)] \(pad)\(percent)%  \(Format.bytes(done)) of \(Format.bytes(total))\u{1B}[K")
            drawn = true
        } else {
            guard final ? lastPercent != 100 : (lastEmitMs < 0 || now - lastEmitMs >= 1000) && percent != lastPercent else { return }
            writeAll(2, "\(label): \(percent)% (\(done) of \(total) bytes)\n")
        }
        lastEmitMs = now
        lastPercent = percent
    }

    /// Ends the bar's line (terminal only).
    public func finish() {
        if isTTY && drawn {
            writeAll(2, "\n")
            drawn = false
        }
    }
}
