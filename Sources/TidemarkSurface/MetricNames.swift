/// The names of every metric the agent and the process server record
/// (swift-metrics; docs/metrics.md explains each). Names follow the
/// Prometheus conventions: `tidemark_<program>_<what>_<unit>`, with
/// `_total` on counters, and base units (bytes, seconds).
///
/// One list, so docs/metrics.md can be checked against it
/// (TidemarkSurfaceTests) and an exporter added later names nothing new.
public enum MetricName {
    // MARK: Agent (dimension `disk_id` on each)

    /// Counter: bytes of sealed segments sent to the process server.
    public static let agentSentBytes = "tidemark_agent_sent_bytes_total"
    /// Counter: segments sent to the process server (a re-send counts again).
    public static let agentSentSegments = "tidemark_agent_sent_segments_total"
    /// Gauge: the recovery point objective, the age of the committed-through time.
    public static let agentRPO = "tidemark_agent_rpo_seconds"
    /// Gauge: bytes changed on the disk and not yet committed at the target.
    public static let agentBacklog = "tidemark_agent_backlog_bytes"
    /// Counter (dimension `reason`): digest resyncs started.
    public static let agentResyncs = "tidemark_agent_resyncs_total"
    /// Counter: drains whose completion cross-check found writes the tracer missed.
    public static let agentCompletionDeficits = "tidemark_agent_completion_deficits_total"
    /// Counter (dimension `answer`: `issue_record` or `whole_disk`): how
    /// completion deficits were answered.
    public static let agentDeficitAnswers = "tidemark_agent_deficit_answers_total"
    /// Counter (dimension `answer`): chunks marked dirty by those answers.
    public static let agentDeficitChunks = "tidemark_agent_deficit_chunks_total"
    /// Counter (dimension `class`): recovery points committed.
    public static let agentPointsCreated = "tidemark_agent_points_created_total"
    /// Counter: recovery points refused or abandoned before they were committed.
    public static let agentPointsAbandoned = "tidemark_agent_points_abandoned_total"
    /// Timer: how long the filesystem was frozen for a point.
    public static let agentFreezeDuration = "tidemark_agent_freeze_duration_seconds"

    // MARK: Process server

    /// Counter: TCP connections accepted.
    public static let serverConnectionsAccepted = "tidemark_server_connections_accepted_total"
    /// Gauge: connections open now (authenticated or not).
    public static let serverConnections = "tidemark_server_connections"
    /// Counter: segments received and written to the spool.
    public static let serverReceivedSegments = "tidemark_server_received_segments_total"
    /// Counter: bytes of the segments received.
    public static let serverReceivedBytes = "tidemark_server_received_bytes_total"
    /// Gauge: bytes the spool holds.
    public static let serverSpoolBytes = "tidemark_server_spool_bytes"
    /// Gauge: segments durable in the spool and not yet committed to target storage.
    public static let serverCommitLagSegments = "tidemark_server_commit_lag_segments"
    /// Counter: segments committed to target storage.
    public static let serverCommittedSegments = "tidemark_server_committed_segments_total"
    /// Counter (dimension `kind`): errors, by kind (`ServerErrorKind`).
    public static let serverErrors = "tidemark_server_errors_total"

    /// Every name above, for the documentation check.
    public static let all: [String] = [
        agentSentBytes, agentSentSegments, agentRPO, agentBacklog, agentResyncs, agentCompletionDeficits,
        agentDeficitAnswers, agentDeficitChunks,
        agentPointsCreated, agentPointsAbandoned, agentFreezeDuration,
        serverConnectionsAccepted, serverConnections, serverReceivedSegments, serverReceivedBytes, serverSpoolBytes,
        serverCommitLagSegments, serverCommittedSegments, serverErrors,
    ]
}
