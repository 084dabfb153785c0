import Testing
import TidemarkSystem

/// The bandwidth cap of agent and server, on an injected clock.
@Suite struct TokenBucketTests {
    static let second: UInt64 = 1_000_000_000

    @Test func unlimitedNeverWaits() {
        let b = TokenBucket(bytesPerSecond: 0, nowNs: 0)
        #expect(b.charge(UInt64.max, nowNs: 0) == 0)
    }

    @Test func aBurstOfOneSecondThenTheRate() {
        let b = TokenBucket(bytesPerSecond: 1_000_000, nowNs: 0)
        // One second's worth passes at once.
        #expect(b.charge(1_000_000, nowNs: 0) == 0)
        // The next 500 kB wait half a second; the one after, another half
        // (the debt is shared: whoever comes next pays for what is owed).
        #expect(b.charge(500_000, nowNs: 0) == Self.second / 2)
        #expect(b.charge(500_000, nowNs: 0) == Self.second)
        // Two seconds later the debt is paid and one second's worth is back.
        #expect(b.charge(1_000_000, nowNs: 3 * Self.second) == 0)
    }

    @Test func idleTimeRefillsNoMoreThanOneSecond() {
        let b = TokenBucket(bytesPerSecond: 1_000, nowNs: 0)
        #expect(b.charge(1_000, nowNs: 100 * Self.second) == 0)
        #expect(b.charge(1_000, nowNs: 100 * Self.second) == Self.second)
    }

    @Test func aWaitIsBounded() {
        let b = TokenBucket(bytesPerSecond: 1, nowNs: 0)
        #expect(b.charge(1 << 30, nowNs: 0) == UInt64(TokenBucket.waitMsMax) * 1_000_000)
    }

    @Test func aClockThatGoesBackIsIgnored() {
        let b = TokenBucket(bytesPerSecond: 1_000, nowNs: 10 * Self.second)
        #expect(b.charge(1_000, nowNs: 5 * Self.second) == 0)
        #expect(b.charge(500, nowNs: 5 * Self.second) == Self.second / 2)
    }
}
