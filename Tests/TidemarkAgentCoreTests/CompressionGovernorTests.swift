import Testing
@testable import TidemarkAgentCore

@Suite struct CompressionGovernorTests {
    /// Sealing-bound segments make it faster, one level per `stepSegments`
    /// in a row, skipping 0 (off in our configuration), down to the floor.
    @Test func sealingBoundStepsFasterToTheFloor() {
        var g = CompressionGovernor(levels: -3...4, start: 2, stepSegments: 3)
        var seen: [Int32] = []
        for _ in 0..<30 {
            if g.observe(.sealingBound) { seen.append(g.level) }
        }
        #expect(seen == [1, -1, -2, -3])
        #expect(g.level == -3 && g.stepsFaster == 4 && g.stepsSmaller == 0)
    }

    /// Downstream-bound segments make it smaller, up to the ceiling, again
    /// skipping 0.
    @Test func downstreamBoundStepsSmallerToTheCeiling() {
        var g = CompressionGovernor(levels: -3...4, start: -2, stepSegments: 2)
        var seen: [Int32] = []
        for _ in 0..<30 {
            if g.observe(.downstreamBound) { seen.append(g.level) }
        }
        #expect(seen == [-1, 1, 2, 3, 4])
        #expect(g.level == 4 && g.stepsSmaller == 5)
    }

    /// A level moves only when `stepSegments` segments in a row agree: a
    /// segment bound by neither, or by the other side, starts the count again.
    @Test func mixedSignalsHoldTheLevel() {
        var g = CompressionGovernor(levels: -5...6, start: 1, stepSegments: 4)
        let pattern: [CompressionGovernor.Signal] = [.sealingBound, .sealingBound, .sealingBound, .neither,
                                                     .downstreamBound, .downstreamBound, .downstreamBound, .sealingBound, .neither]
        var moved = 0
        for _ in 0..<100 {
            for signal in pattern where g.observe(signal) { moved += 1 }
        }
        #expect(moved == 0)
        #expect(g.level == 1)
        // Reading-bound (neither) forever: the level stays where it is.
        for _ in 0..<1000 { g.observe(.neither) }
        #expect(g.level == 1)
    }

    /// The shipped limits: a range around the start level that contains both
    /// fast (negative) and normal levels, within what zstd and the
    /// configuration accept.
    @Test func shippedLimits() {
        let g = CompressionGovernor()
        #expect(g.level == ReplicationLimits.compressionAutoStartLevel)
        #expect(ReplicationLimits.compressionAutoLevels.lowerBound < 0 && ReplicationLimits.compressionAutoLevels.upperBound > 1)
        #expect(ReplicationLimits.compressionAutoLevels.lowerBound >= -7 && ReplicationLimits.compressionAutoLevels.upperBound <= 19)
        #expect(ReplicationLimits.compressionStepSegments >= 2)
    }
}
