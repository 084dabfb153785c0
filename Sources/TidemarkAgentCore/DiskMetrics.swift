import CoreMetrics
import Dispatch
import TidemarkSurface

/// The metrics of one replicated disk (docs/metrics.md), each with the
/// dimension `disk_id`.
///
/// Counters move where their event happens (a segment sent, a point
/// committed); the gauges (RPO, backlog) are set from the disk's status by
/// `observe`, which the agent's sampling service (a `PeriodicService` in
/// `RunCommand.swift`) calls once a second. Thread-safe: the
/// metric objects are, and nothing else here changes after init. Memory:
/// one handler per metric and dimension value, held by the metrics backend.
public final class DiskMetrics: Sendable {
    public let diskID: String
    let factory: MetricsFactory
    let sentBytes: Counter
    let sentSegments: Counter
    let rpoSeconds: Gauge
    let backlogBytes: Gauge
    let completionDeficits: Counter
    let pointsAbandoned: Counter
    let freezeDuration: CoreMetrics.Timer

    /// `factory`: the metrics backend (tests pass MetricsTestKit's).
    public init(diskID: String, factory: MetricsFactory = MetricsSystem.factory) {
        self.diskID = diskID
        self.factory = factory
        let d = [("disk_id", diskID)]
        sentBytes = Counter(label: MetricName.agentSentBytes, dimensions: d, factory: factory)
        sentSegments = Counter(label: MetricName.agentSentSegments, dimensions: d, factory: factory)
        rpoSeconds = Gauge(label: MetricName.agentRPO, dimensions: d, factory: factory)
        backlogBytes = Gauge(label: MetricName.agentBacklog, dimensions: d, factory: factory)
        completionDeficits = Counter(label: MetricName.agentCompletionDeficits, dimensions: d, factory: factory)
        pointsAbandoned = Counter(label: MetricName.agentPointsAbandoned, dimensions: d, factory: factory)
        freezeDuration = CoreMetrics.Timer(label: MetricName.agentFreezeDuration, dimensions: d,
                                           preferredDisplayUnit: .milliseconds, factory: factory)
    }

    /// A segment of `bytes` went to the process server.
    func segmentSent(bytes: Int) {
        sentBytes.increment(by: Int64(bytes))
        sentSegments.increment()
    }

    /// Why a digest resync started (the `reason` dimension).
    public enum ResyncReason: String, Sendable, CaseIterable {
        /// The `.hrl` said resync-required (its header names why: unclean stop, lost tracker, ...).
        case resyncRequired = "resync_required"
        /// The disk is new to this target (or the `.hrl` tracked for another).
        case newTarget = "new_target"
        /// The tracer overflowed, was skipped, or missed completions: every chunk may have changed.
        case tracerOverflow = "tracer_overflow"
        /// The target lost everything of a disk it had.
        case targetLost = "target_lost"
    }

    func resyncStarted(_ reason: ResyncReason) {
        Counter(label: MetricName.agentResyncs, dimensions: [("disk_id", diskID), ("reason", reason.rawValue)],
                factory: factory).increment()
    }

    /// A drain's completion cross-check found writes the tracer did not see.
    func completionDeficit() { completionDeficits.increment() }

    /// A deficit was answered from the issue record (marking `chunks`), or
    /// with the whole disk (`chunks` the disk's).
    func deficitAnswered(fromIssueRecord: Bool, chunks: UInt64) {
        let d = [("disk_id", diskID), ("answer", fromIssueRecord ? "issue_record" : "whole_disk")]
        Counter(label: MetricName.agentDeficitAnswers, dimensions: d, factory: factory).increment()
        Counter(label: MetricName.agentDeficitChunks, dimensions: d, factory: factory).increment(by: Int64(chunks))
    }

    /// A point of `pointClass` was committed after a freeze of `freezeMs`.
    func pointCreated(pointClass: String) {
        Counter(label: MetricName.agentPointsCreated, dimensions: [("disk_id", diskID), ("class", pointClass)],
                factory: factory).increment()
    }

    /// A point order ended without a committed point.
    func pointAbandoned() { pointsAbandoned.increment() }

    /// The filesystem was frozen `ms` milliseconds for a point.
    func frozen(ms: Double) {
        freezeDuration.recordNanoseconds(Int64((ms * 1_000_000).rounded()))
    }

    /// Sets the gauges from the disk's status: the RPO (not set until the
    /// first checkpoint is committed: an unknown RPO is no number) and the backlog.
    public func observe(_ s: DiskStatus) {
        if s.rpoMs >= 0 { rpoSeconds.record(Double(s.rpoMs) / 1000) }
        backlogBytes.record(Double(s.backlogBytes))
    }
}
