import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct ClockTests {
    /// The system clock's monotonic reading never goes backwards and its
    /// derived units agree; the wall clock is after 2020.
    @Test func systemClock() {
        let clock: any TimeSource = SystemClock()
        let a = clock.monotonicNs()
        let b = clock.monotonicNs()
        #expect(b >= a)
        #expect(clock.monotonicMs() >= Int64(a / 1_000_000))
        #expect(clock.wallUnixSeconds() > 1_577_836_800)
        #expect(monotonicNanoseconds() >= b, "the shorthand reads the same clock")
    }

    /// Code handed a simulated clock sees time only when the test moves it,
    /// and a wall-clock jump leaves durations alone.
    @Test func simulatedClockMovesOnlyWhenTold() {
        let clock = SimulatedClock(monotonicNs: 5_000_000_000, wallUnixNs: 1_000_000_000_000)
        let source: any TimeSource = clock
        #expect(source.monotonicMs() == 5_000)
        #expect(source.monotonicMs() == 5_000)
        clock.advance(ms: 250)
        #expect(source.monotonicMs() == 5_250)
        #expect(source.wallUnixMs() == 1_000_250)
        clock.setWall(unixNs: 0)
        #expect(source.wallUnixMs() == 0)
        #expect(source.monotonicSeconds() == 5.25)
    }
}
