import Testing
@testable import TidemarkAgentCore

/// The relations between the agent's limits hold for the built values, and
/// each one, broken, is named.
@Suite struct AgentLimitRelationsTests {
    @Test func theBuiltLimitsAreConsistent() {
        #expect(AgentLimitRelations().problem() == nil)
    }

    @Test func eachBrokenRelationIsNamed() {
        func problem(_ change: (inout AgentLimitRelations) -> Void) -> String {
            var r = AgentLimitRelations()
            change(&r)
            return r.problem() ?? "none"
        }
        #expect(problem { $0.pointBacklogBytesMax = $0.pointBacklogBytesLateMax + 1 }.hasPrefix("pointBacklogBytesMax"))
        #expect(problem { $0.pointPreferredWaitMs = $0.pointPrepareWaitMsMax }.hasPrefix("pointPreferredWaitMs"))
        #expect(problem { $0.pointReaderIdleWaitMsMax = $0.pointPrepareWaitMsMax }.hasPrefix("pointReaderIdleWaitMsMax"))
        #expect(problem { $0.watchdogReplyWaitMs = $0.pointPrepareWaitMsMax }.hasPrefix("FreezeGuardLimits.watchdogReplyWaitMs"))
        #expect(problem { $0.pointReadyPollMs = 0 }.hasPrefix("pointPrepareDrainMs and pointReadyPollMs"))
        #expect(problem { $0.pointResyncJudgeMs = 100 }.hasPrefix("pointResyncJudgeMs (100) must be at least 1 and below the smallest freeze bound (100 ms)"))
        #expect(problem { $0.reconnectDelayMsMin = $0.reconnectDelayMsMax + 1 }.hasPrefix("the reconnect delay"))
        #expect(problem { $0.compressionAutoStartLevel = $0.compressionAutoLevels.upperBound + 1 }.hasPrefix("compressionAutoStartLevel"))
        #expect(problem { $0.digestBaselinePollMs = $0.digestBaselineWaitMsMax }.hasPrefix("digestBaselinePollMs"))
        #expect(problem { $0.shutdownSealExtentsMax = 0 }.hasPrefix("shutdownSealFileBytes"))
        #expect(problem { $0.mirrorCycleBytesMax = UInt64($0.readRequestBytesMax) - 1 }.hasPrefix("mirrorCycleBytesMax"))
        #expect(problem { $0.hostInflightBytesMin = $0.sealedSegmentBytesMax - 1 }.hasPrefix("AgentConfig.hostInflightBytesMin"))
        #expect(problem { $0.hostBudgetPollMs = 0 }.hasPrefix("hostBudgetPollMs"))
    }
}
