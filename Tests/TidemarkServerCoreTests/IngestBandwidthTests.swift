import Testing
@testable import TidemarkServerCore

/// The server's shared bandwidth cap, on an injected clock.
@Suite struct IngestBandwidthTests {
    static let second: UInt64 = 1_000_000_000

    @Test func unlimitedNeverWaits() {
        let b = IngestBandwidth(bytesPerSecond: 0, nowNs: 0)
        #expect(b.charge(UInt64.max, nowNs: 0) == 0)
    }

    @Test func aBurstOfOneSecondThenTheRate() {
        let b = IngestBandwidth(bytesPerSecond: 1_000_000, nowNs: 0)
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
        let b = IngestBandwidth(bytesPerSecond: 1_000, nowNs: 0)
        #expect(b.charge(1_000, nowNs: 100 * Self.second) == 0)
        #expect(b.charge(1_000, nowNs: 100 * Self.second) == Self.second)
    }

    @Test func aWaitIsBounded() {
        let b = IngestBandwidth(bytesPerSecond: 1, nowNs: 0)
        #expect(b.charge(1 << 30, nowNs: 0) == UInt64(IngestBandwidth.waitMsMax) * 1_000_000)
    }

    @Test func aClockThatGoesBackIsIgnored() {
        let b = IngestBandwidth(bytesPerSecond: 1_000, nowNs: 10 * Self.second)
        #expect(b.charge(1_000, nowNs: 5 * Self.second) == 0)
        #expect(b.charge(500, nowNs: 5 * Self.second) == Self.second / 2)
    }
}
