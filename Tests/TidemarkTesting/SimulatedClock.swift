import Foundation
import TidemarkSystem

/// A clock that moves only when a test says so: the `TimeSource` handed to
/// code under test in place of `SystemClock()`. Both readings advance
/// together; the wall clock can also be set (jump) on its own, as NTP or an
/// operator would. Any thread (a lock guards the two readings).
public final class SimulatedClock: TimeSource, @unchecked Sendable {
    private let lock = NSLock()
    private var monotonic: UInt64
    private var wall: Int64

    public init(monotonicNs: UInt64 = 1_000_000_000, wallUnixNs: Int64 = 1_700_000_000_000_000_000) {
        monotonic = monotonicNs
        wall = wallUnixNs
    }

    public func monotonicNs() -> UInt64 { lock.withLock { monotonic } }
    public func wallUnixNs() -> Int64 { lock.withLock { wall } }

    /// Moves both clocks forward by `ns`.
    public func advance(ns: UInt64) {
        lock.withLock {
            monotonic += ns
            wall += Int64(ns)
        }
    }

    public func advance(ms: UInt64) { advance(ns: ms * 1_000_000) }

    /// Sets the wall clock alone; the monotonic clock does not move.
    public func setWall(unixNs: Int64) { lock.withLock { wall = unixNs } }
}
