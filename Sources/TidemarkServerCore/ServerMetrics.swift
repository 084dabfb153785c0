import CoreMetrics
import TidemarkSurface

/// The process server's metrics (docs/metrics.md).
///
/// Counters move where their event happens (a connection accepted, a
/// segment spooled or committed, an error); the gauges (open connections,
/// spool bytes, commit lag) are set from the server's state by
/// `ProcessServer.sampleMetrics`, once a second. Thread-safe: the metric
/// objects are, and nothing else here changes after init. Memory: one
/// handler per metric and dimension value (`ServerErrorKind` bounds the
/// error kinds).
public final class ServerMetrics: Sendable {
    let factory: MetricsFactory
    let connectionsAccepted: Counter
    let connections: Gauge
    let receivedSegments: Counter
    let receivedBytes: Counter
    let committedSegments: Counter
    let spoolBytes: Gauge
    let commitLagSegments: Gauge

    /// `factory`: the metrics backend (tests pass MetricsTestKit's).
    public init(factory: MetricsFactory = MetricsSystem.factory) {
        self.factory = factory
        connectionsAccepted = Counter(label: MetricName.serverConnectionsAccepted, factory: factory)
        connections = Gauge(label: MetricName.serverConnections, factory: factory)
        receivedSegments = Counter(label: MetricName.serverReceivedSegments, factory: factory)
        receivedBytes = Counter(label: MetricName.serverReceivedBytes, factory: factory)
        committedSegments = Counter(label: MetricName.serverCommittedSegments, factory: factory)
        spoolBytes = Gauge(label: MetricName.serverSpoolBytes, factory: factory)
        commitLagSegments = Gauge(label: MetricName.serverCommitLagSegments, factory: factory)
    }

    func connectionAccepted() { connectionsAccepted.increment() }

    /// A segment of `bytes` was written to the spool.
    func segmentReceived(bytes: Int) {
        receivedSegments.increment()
        receivedBytes.increment(by: Int64(bytes))
    }

    /// `count` segments were committed to target storage.
    func segmentsCommitted(_ count: Int) { committedSegments.increment(by: Int64(count)) }

    func error(_ kind: ServerErrorKind) {
        Counter(label: MetricName.serverErrors, dimensions: [("kind", kind.rawValue)], factory: factory).increment()
    }

    /// What the gauges show, read from the server at one moment.
    public struct Sample: Sendable, Equatable {
        public var connections: Int
        public var spoolBytes: UInt64
        public var commitLagSegments: UInt64
    }

    public func observe(_ s: Sample) {
        connections.record(s.connections)
        spoolBytes.record(Double(s.spoolBytes))
        commitLagSegments.record(Double(s.commitLagSegments))
    }
}

/// The kinds of `tidemark_server_errors_total` (its `kind` dimension).
public enum ServerErrorKind: String, Sendable, CaseIterable {
    /// An agent broke the wire protocol (docs/wire-format.md); the connection was closed.
    case protocolViolation = "protocol"
    /// A frame or value that does not decode; the connection was closed.
    case malformed
    /// A connection ended by an I/O or TLS error.
    case connection
    /// The spool was full: a segment was held back.
    case spoolFull = "spool_full"
    /// Writing a segment to target storage failed (retried).
    case upload
    /// A spooled segment could not be read back; the agent re-sends it.
    case unreadableSegment = "unreadable_segment"
    /// A disk's stored record is unusable; the disk is refused.
    case quarantine
    /// The chunk digest index failed (rebuilt, or answered 'unknown').
    case digestIndex = "digest_index"
    /// Pruning expired recovery points failed.
    case prune
}

extension ProcessServer {
    /// The gauges' values now: open connections, spool bytes, and the
    /// segments durable in the spool but not yet committed, over all disks.
    func metricsSample() -> ServerMetrics.Sample {
        lock.lock()
        let open = connections.count
        var lag: UInt64 = 0
        for id in receiver.openedDiskIDs {
            if let d = receiver.state(ofDisk: id), d.durable > d.committed { lag += d.durable - d.committed }
        }
        lock.unlock()
        return .init(connections: open, spoolBytes: sink.spool.bytesUsed, commitLagSegments: lag)
    }

    /// Sets the gauges (the daemon's metrics service calls it once a second).
    public func sampleMetrics() { metrics.observe(metricsSample()) }
}
