import Foundation

/// The simulation's only source of randomness: SplitMix64 (the generator
/// of the tests' `SplitMix64`, which lives in a test-only target), so that
/// a run is a pure function of its seed. Everything random — timings,
/// writes, faults, epoch and point ids — is drawn from one stream in event
/// order.
public struct SimRandom: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in 0..<n (n ≥ 1).
    public mutating func below(_ n: Int) -> Int {
        precondition(n >= 1, "SimRandom.below: an empty range")
        return Int(next() % UInt64(n))
    }

    /// A value in lo...hi.
    public mutating func between(_ lo: UInt64, _ hi: UInt64) -> UInt64 {
        precondition(lo <= hi, "SimRandom.between: \(lo) > \(hi)")
        let span = hi - lo
        return span == .max ? next() : lo + next() % (span + 1)
    }

    /// True with probability `p` (0 … 1).
    public mutating func chance(_ p: Double) -> Bool {
        p > 0 && Double(next() >> 11) / Double(1 << 53) < p
    }

    /// An exponentially distributed delay with mean `meanNs` (a Poisson
    /// process's gap), at least 1 ns.
    public mutating func exponential(meanNs: UInt64) -> UInt64 {
        let u = (Double(next() >> 11) + 1) / Double(1 << 53)
        return max(1, UInt64(min(-Double(meanNs) * log(u), Double(UInt64.max / 4))))
    }

    public mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var v = next()
            for _ in 0..<8 where i < n {
                out[i] = UInt8(truncatingIfNeeded: v)
                v >>= 8
                i += 1
            }
        }
        return out
    }
}
