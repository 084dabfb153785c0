import MetricsTestKit
import Testing
@testable import TidemarkAgentCore
import TidemarkSurface

/// The agent's per-disk metrics move as their events happen, with the
/// names and dimensions docs/metrics.md lists.
@Suite struct DiskMetricsTests {
    static func status(rpoMs: Int64, backlogBytes: UInt64) -> DiskStatus {
        DiskStatus(disk: "/dev/sdb", diskID: "d1", rpoMs: rpoMs, committedThroughUnixMs: nil, committedSequence: 0,
                   durableSequence: 0, nextSequence: 1, backlogBytes: backlogBytes, toReadBytes: 0, windowBytes: 0,
                   bytesRead: 0, bytesSent: 0, segmentsSent: 0, zeroChunks: 0, compressionLevel: 1, compressionAuto: false,
                   compressionStepsFaster: 0, compressionStepsSmaller: 0, lastFreezeMs: nil)
    }

    @Test func countersMove() throws {
        let backend = TestMetrics()
        let m = DiskMetrics(diskID: "d1", factory: backend)
        let disk = [("disk_id", "d1")]
        m.segmentSent(bytes: 1000)
        m.segmentSent(bytes: 24)
        #expect(try backend.expectCounter(MetricName.agentSentBytes, disk).totalValue == 1024)
        #expect(try backend.expectCounter(MetricName.agentSentSegments, disk).totalValue == 2)

        m.resyncStarted(.newTarget)
        m.resyncStarted(.tracerOverflow)
        m.resyncStarted(.tracerOverflow)
        #expect(try backend.expectCounter(MetricName.agentResyncs, [("disk_id", "d1"), ("reason", "tracer_overflow")]).totalValue == 2)
        #expect(try backend.expectCounter(MetricName.agentResyncs, [("disk_id", "d1"), ("reason", "new_target")]).totalValue == 1)

        m.completionDeficit()
        #expect(try backend.expectCounter(MetricName.agentCompletionDeficits, disk).totalValue == 1)

        m.pointCreated(pointClass: "crash-consistent")
        m.pointAbandoned()
        #expect(try backend.expectCounter(MetricName.agentPointsCreated, [("disk_id", "d1"), ("class", "crash-consistent")]).totalValue == 1)
        #expect(try backend.expectCounter(MetricName.agentPointsAbandoned, disk).totalValue == 1)

        m.frozen(ms: 2.5)
        #expect(try backend.expectTimer(MetricName.agentFreezeDuration, disk).lastValue == 2_500_000)
    }

    @Test func gaugesFollowTheStatus() throws {
        let backend = TestMetrics()
        let m = DiskMetrics(diskID: "d1", factory: backend)
        let disk = [("disk_id", "d1")]
        // Nothing committed yet: the RPO is unknown, and no number is recorded for it.
        m.observe(Self.status(rpoMs: -1, backlogBytes: 1 << 20))
        #expect(try backend.expectGauge(MetricName.agentBacklog, disk).lastValue == Double(1 << 20))
        #expect(try backend.expectGauge(MetricName.agentRPO, disk).lastValue == nil)
        m.observe(Self.status(rpoMs: 1500, backlogBytes: 0))
        #expect(try backend.expectGauge(MetricName.agentRPO, disk).lastValue == 1.5)
        #expect(try backend.expectGauge(MetricName.agentBacklog, disk).lastValue == 0)
    }
}
