import Foundation
import Glibc

/// A bandwidth cap as a token bucket: the agent's `replication.bandwidth_limit`
/// (one sender thread) and the process server's `bandwidth_limit` (shared by
/// every connection). A caller pays before it moves a frame's bytes by
/// sleeping off the debt; while it sleeps it reads or sends nothing, so TCP's
/// flow control holds the other side back; nothing is dropped or refused.
///
/// Thread-safe: the bucket is touched only under `lock`, the sleep happens
/// outside it. Memory: constant. The rate is fixed for the bucket's life.
public final class TokenBucket: @unchecked Sendable {
    /// Bytes per second; 0 = unlimited.
    public let bytesPerSecond: UInt64
    /// The longest one `take` sleeps, in milliseconds (the server starts a
    /// frame's deadline after the wait).
    public static let waitMsMax = 10_000
    private let lock = NSLock()
    private var tokens: Double
    private var lastNs: UInt64

    public init(bytesPerSecond: UInt64, nowNs: UInt64 = monotonicNanoseconds()) {
        self.bytesPerSecond = bytesPerSecond
        // A burst of one second's worth at most.
        tokens = Double(bytesPerSecond)
        lastNs = nowNs
    }

    /// Charges `bytes` at `nowNs` and returns how long the caller must wait,
    /// in nanoseconds, before reading them (0 when within the rate). Pure
    /// arithmetic on the bucket: the caller sleeps.
    public func charge(_ bytes: UInt64, nowNs: UInt64) -> UInt64 {
        guard bytesPerSecond > 0 else { return 0 }
        lock.lock()
        defer { lock.unlock() }
        let rate = Double(bytesPerSecond)
        let elapsed = nowNs > lastNs ? Double(nowNs - lastNs) / 1e9 : 0
        lastNs = max(lastNs, nowNs)
        tokens = min(rate, tokens + elapsed * rate) - Double(bytes)
        guard tokens < 0 else { return 0 }
        return UInt64(min(-tokens / rate, Double(Self.waitMsMax) / 1000) * 1e9)
    }

    /// Waits until `bytes` more fit within the rate.
    public func take(_ bytes: UInt64) {
        let waitNs = charge(bytes, nowNs: monotonicNanoseconds())
        if waitNs > 0 { usleep(useconds_t(waitNs / 1000)) }
    }
}
