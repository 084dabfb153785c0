import Glibc

/// Where time comes from: the monotonic clock for durations and deadlines,
/// the wall clock for timestamps that people read or that are stored. Code
/// that should run under a simulated clock (tests, the seeded simulation)
/// takes a `TimeSource` and is given `SystemClock()` in production and a
/// `SimulatedClock` (Tests/TidemarkTesting) in tests; code at the operating
/// system's edge (poll deadlines, lock retries, spin bounds) calls the
/// static members of `SystemClock` directly.
public protocol TimeSource: Sendable {
    /// Nanoseconds since an arbitrary fixed instant (the boot): never goes
    /// backwards and does not jump when the wall clock is set.
    func monotonicNs() -> UInt64
    /// Nanoseconds since the Unix epoch by the wall clock, which may jump
    /// (NTP, an operator): for timestamps only, never for durations.
    func wallUnixNs() -> Int64
}

extension TimeSource {
    public func monotonicMs() -> Int64 { Int64(monotonicNs() / 1_000_000) }
    public func monotonicSeconds() -> Double { Double(monotonicNs()) / 1e9 }
    public func wallUnixMs() -> Int64 { wallUnixNs() / 1_000_000 }
    public func wallUnixSeconds() -> Int64 { wallUnixNs() / 1_000_000_000 }
}

/// The host's clocks: CLOCK_MONOTONIC and CLOCK_REALTIME (clock_gettime,
/// served by the vDSO without a system call). Stateless; any thread.
public struct SystemClock: TimeSource {
    public init() {}

    public func monotonicNs() -> UInt64 { Self.monotonicNs() }
    public func wallUnixNs() -> Int64 { Self.wallUnixNs() }

    @inlinable
    public static func monotonicNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    @inlinable
    public static func wallUnixNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    public static func monotonicMs() -> Int64 { Int64(monotonicNs() / 1_000_000) }
    public static func monotonicSeconds() -> Double { Double(monotonicNs()) / 1e9 }
    public static func wallUnixMs() -> Int64 { wallUnixNs() / 1_000_000 }
    public static func wallUnixSeconds() -> Int64 { wallUnixNs() / 1_000_000_000 }
}

/// Shorthands for `SystemClock`'s readings, for code at the operating
/// system's edge (I/O loops, tools, benchmarks); the only clock reads
/// outside Clock.swift go through these or `SystemClock`.
@inlinable public func monotonicNanoseconds() -> UInt64 { SystemClock.monotonicNs() }
@inlinable public func wallClockNanoseconds() -> Int64 { SystemClock.wallUnixNs() }
