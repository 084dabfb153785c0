import MetricsTestKit
import Testing
@testable import TidemarkServerCore
import TidemarkSurface

/// The process server's metrics move as their events happen, with the
/// names and dimensions docs/metrics.md lists.
@Suite struct ServerMetricsTests {
    @Test func countersMove() throws {
        let backend = TestMetrics()
        let m = ServerMetrics(factory: backend)
        m.connectionAccepted()
        m.connectionAccepted()
        m.segmentReceived(bytes: 4096)
        m.segmentReceived(bytes: 100)
        m.segmentsCommitted(2)
        m.error(.protocolViolation)
        m.error(.upload)
        m.error(.upload)
        #expect(try backend.expectCounter(MetricName.serverConnectionsAccepted).totalValue == 2)
        #expect(try backend.expectCounter(MetricName.serverReceivedSegments).totalValue == 2)
        #expect(try backend.expectCounter(MetricName.serverReceivedBytes).totalValue == 4196)
        #expect(try backend.expectCounter(MetricName.serverCommittedSegments).totalValue == 2)
        #expect(try backend.expectCounter(MetricName.serverErrors, [("kind", "protocol")]).totalValue == 1)
        #expect(try backend.expectCounter(MetricName.serverErrors, [("kind", "upload")]).totalValue == 2)
    }

    @Test func gaugesFollowTheSample() throws {
        let backend = TestMetrics()
        let m = ServerMetrics(factory: backend)
        m.observe(.init(connections: 3, spoolBytes: 1 << 20, commitLagSegments: 7))
        #expect(try backend.expectGauge(MetricName.serverConnections).lastValue == 3)
        #expect(try backend.expectGauge(MetricName.serverSpoolBytes).lastValue == Double(1 << 20))
        #expect(try backend.expectGauge(MetricName.serverCommitLagSegments).lastValue == 7)
    }

    @Test func errorKindsAreSnakeCase() {
        for k in ServerErrorKind.allCases {
            #expect(k.rawValue.allSatisfy { $0.isLowercase || $0 == "_" }, "\(k.rawValue)")
        }
    }
}
