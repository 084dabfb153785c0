import TidemarkConfigFiles
import TidemarkWire

/// Every limit of the agent's data path, in one place, units in the names.
/// Configuration defaults and bounds (chunk size, intervals) live with the
/// configuration, in `AgentConfig`.
public enum Limits {
    /// Times a start opens the pinned tracer again when another process
    /// unpinned it between opening and attaching (see docs/tracer.md).
    public static let tracerReopenAttemptsMax = 5
    /// Completion cross-check (docs/tracer.md): samples taken, this far
    /// apart, to establish a slot's offset between the kernel's sector
    /// statistics and the program's count.
    public static let crossCheckBaselineSamples = 5
    public static let crossCheckBaselineSampleGapUs: UInt32 = 1_000
    /// Issue record (docs/tracer.md): the two readings that find a disk
    /// still are this far apart.
    public static let stillSampleGapUs: UInt32 = 1_000
    /// A deficit answered from the issue record is confirmed when the disk
    /// is next still; if it is not still for this long (nor under a point's
    /// freeze, which settles it at once), the whole disk counts as dirty.
    public static let deficitConfirmWaitMsMax = 300_000
    /// Reads in flight while copying (io_uring queue depth).
    public static let readQueueDepth = 8
    /// One read request at most this long; with the queue depth, this bounds
    /// the reader's buffers to 8 MiB.
    public static let readRequestBytesMax = 1 << 20
    /// Mirror target writes in flight, and the size of each write buffer:
    /// together 8 MiB of copies, beside the reader's 8 MiB.
    public static let writeQueueDepth = 8
    public static let writeBufferBytes = 1 << 20
    /// One delta copy cycle copies at most this much before it syncs the
    /// mirror and clears the bits it covered, so progress is durable in steps.
    public static let mirrorCycleBytesMax: UInt64 = 256 << 20
    /// `mirror --once` gives up converging after this many delta cycles in a
    /// row that each still found new writes (the disk never went quiet).
    public static let mirrorOnceCyclesMax = 10_000
    /// Resync: the scan waits this long for the server's answer to a digest
    /// request before it asks again (over a new connection if need be).
    public static let digestReplyWaitMsMax = 30_000
    /// Resync: while the server's digests reflect fewer segments than it held
    /// when the agent connected (an earlier run's segments still uploading),
    /// the scan asks again every `digestBaselinePollMs`, for at most this long
    /// per window before it logs and retries the window.
    public static let digestBaselineWaitMsMax = 60_000
    public static let digestBaselinePollMs = 200

    // Shutdown seal and early-boot attach (docs/shutdown-seal.md).
    /// Size of the preallocated seal file; fixes its layout.
    public static let shutdownSealFileBytes = 1 << 20
    /// Tracked disks one seal can describe (disk entries in pages 1–15 of
    /// the armed region, 1024 bytes each).
    public static let shutdownSealDisksMax = 60
    /// Extents the seal file may have on its device; more and no seal is armed.
    public static let shutdownSealFileExtentsMax = 16
    /// Chunk extents one sealed record holds for all disks together (16 bytes
    /// each, in the pages after the sealed header); a disk that does not fit
    /// is sealed `incomplete` (a resync after the reboot).
    public static let shutdownSealExtentsMax = (shutdownSealFileBytes - 69_632) / 16
    /// Early in boot, how often the agent checks whether its state directory
    /// has become writable (the root filesystem remounted read-write).
    public static let stateDirWritablePollMs = 200
}

/// Every limit of the replication data path, in one place, units in the names.
public enum ReplicationLimits {
    /// Progress of an initial copy or resync is logged this often when the
    /// agent's standard error is a terminal, and this often otherwise.
    public static let progressTerminalIntervalMs = 2_000
    public static let progressLogIntervalMs = 30_000
    public static let connectTimeoutMs = 5_000
    /// While a disk is written, the main loop drains it this often instead
    /// of at the drain interval: after a drain that found chunks, and after
    /// the tracer counted a write completion, looked at every
    /// `writeWatchMs` (DiskReplicator.waitForNextDrain). An idle disk is
    /// drained at the configured interval.
    public static let busyDrainIntervalMs = 100
    public static let writeWatchMs = 20
    /// The reader gives its read buffers back after this long without work
    /// (an idle agent does not keep the memory of its last burst).
    public static let readerIdleReleaseMs = 5_000
    /// A reader waiting for room in the host's budget (HostShare) looks
    /// again after this long, should the broadcast of the disk that freed
    /// room have come just before it waited.
    public static let hostBudgetPollMs = 20
    /// Segments numbered and not yet acknowledged durable, at most (the
    /// send window's count bound, beside `replication.inflight_bytes`): the
    /// byte bound alone lets segments that seal small (compressible or zero
    /// data) put many gigabytes of chunks in flight, each to re-read after a
    /// renumbering. It is the largest `inflight_bytes` over the smallest
    /// `segment_size` (1 GiB / 64 KiB), so it never binds before the byte
    /// bound for full segments that do not compress.
    public static let inflightSegmentsMax: UInt64 = 16_384
    /// `compression_level: auto` (CompressionGovernor): the zstd levels it
    /// may use (zstd's fast levels below 0; 0 itself is skipped), where it
    /// starts, and how many segments in a row must agree before it moves
    /// one level (16 MiB of 4 MiB segments). The ceiling is zstd's default
    /// level, 3: above it each sealer's context grows by megabytes and its
    /// speed falls by half or more, for a few percent fewer bytes.
    public static let compressionAutoLevels: ClosedRange<Int32> = -5...3
    public static let compressionAutoStartLevel: Int32 = 1
    public static let compressionStepSegments = 4
    /// With nothing to send, the sender waits this long at most for an
    /// acknowledgement (a queued segment or digest request wakes it at once),
    /// then looks at its pings and timeouts again.
    public static let idlePollMs = 20
    public static let reconnectDelayMsMin = 100
    public static let reconnectDelayMsMax = 5_000
    /// Before freezing for a point, wait (up to this long) until the backlog
    /// of unread chunks is at most `pointBacklogBytesMax`, so the freeze is short:
    /// everything unread when the freeze begins is read while frozen.
    public static let pointPrepareWaitMsMax = 30_000
    public static let pointBacklogBytesMax: UInt64 = 1 << 20
    /// After `pointPreferredWaitMs` without reaching that, a point freezes as
    /// soon as at most `pointBacklogBytesLateMax` is unread (a slow or
    /// flapping link), and gives up at `pointPrepareWaitMsMax`.
    public static let pointPreferredWaitMs = 5_000
    public static let pointBacklogBytesLateMax: UInt64 = 8 << 20
    /// While preparing a point the agent drains this often (not at the drain interval).
    public static let pointPrepareDrainMs = 5
    /// Before freezing, the filesystems are synced (syncfs) so that FIFREEZE's
    /// own flush of dirty pages is small; repeated, up to this many rounds,
    /// until one syncfs takes at most `pointSyncQuietMs` (little was dirty).
    public static let pointSyncRoundsMax = 3
    public static let pointSyncQuietMs = 20.0
    /// After the backlog is small, wait at most this long for the reader to
    /// seal what it already took, so no large batch is read under the freeze
    /// (best effort: the freeze goes ahead after this).
    public static let pointReaderIdleWaitMsMax = 2_000
    /// Under the freeze, the point's coordinator looks at least this often
    /// whether every disk is ready to be tagged (the readers also wake it
    /// when they run out of work).
    public static let pointReadyPollMs = 5
    /// Reading and tagging under the freeze slower than this is logged with
    /// what the tags waited for (at most `pointWaitTraceEntriesMax` changes).
    public static let pointSlowTagLogMs = 50
    public static let pointWaitTraceEntriesMax = 32
    /// A resync that starts under a point's freeze is watched this long
    /// before its pace decides whether it can end within the freeze (less
    /// than the smallest freeze bound, 100 ms, so the judgement comes in time).
    public static let pointResyncJudgeMs = 50
    /// A point request waits this long for its tag to be committed.
    public static let pointCommitWaitMsMax = 120_000
    /// Point requests waiting for a disk's main loop (each point takes one
    /// place in the queue of each of its disks).
    public static let pointRequestsQueuedMax = 16
    /// RPO checkpoints (drain time, sequence) not yet committed; when the
    /// server stalls the newest is folded forward (the RPO only reads older).
    public static let rpoCheckpointsMax = 4_096
    /// How often the metrics gauges (RPO, backlog) are set from each disk's
    /// status: a status takes the replicator's lock for a few microseconds.
    public static let metricsSampleIntervalMs = 1_000
}

/// The relations between the agent's limits. Each limit is a constant
/// above; what one promises often depends on another (a preferred wait
/// shorter than the longest, a start level inside the range), and a change
/// of one must not silently break the other. The values are copied here so
/// a test can break one and see the problem named; `run`, `track` and
/// `mirror` check the real ones at start (`check()`).
struct AgentLimitRelations {
    var pointBacklogBytesMax = ReplicationLimits.pointBacklogBytesMax
    var pointBacklogBytesLateMax = ReplicationLimits.pointBacklogBytesLateMax
    var pointPreferredWaitMs = ReplicationLimits.pointPreferredWaitMs
    var pointPrepareWaitMsMax = ReplicationLimits.pointPrepareWaitMsMax
    var pointReaderIdleWaitMsMax = ReplicationLimits.pointReaderIdleWaitMsMax
    var pointPrepareDrainMs = ReplicationLimits.pointPrepareDrainMs
    var pointReadyPollMs = ReplicationLimits.pointReadyPollMs
    var pointResyncJudgeMs = ReplicationLimits.pointResyncJudgeMs
    var freezeTimeoutMsMin = AgentConfig.freezeTimeoutMsMin
    var reconnectDelayMsMin = ReplicationLimits.reconnectDelayMsMin
    var reconnectDelayMsMax = ReplicationLimits.reconnectDelayMsMax
    var compressionAutoLevels = ReplicationLimits.compressionAutoLevels
    var compressionAutoStartLevel = ReplicationLimits.compressionAutoStartLevel
    var digestBaselinePollMs = Limits.digestBaselinePollMs
    var digestBaselineWaitMsMax = Limits.digestBaselineWaitMsMax
    var watchdogReplyWaitMs = FreezeGuardLimits.watchdogReplyWaitMs
    var shutdownSealFileBytes = Limits.shutdownSealFileBytes
    var shutdownSealExtentsMax = Limits.shutdownSealExtentsMax
    var readRequestBytesMax = Limits.readRequestBytesMax
    var mirrorCycleBytesMax = Limits.mirrorCycleBytesMax
    var hostInflightBytesMin = AgentConfig.hostInflightBytesMin
    var sealedSegmentBytesMax = UInt64(WireLimits.sealedSegmentBytesMax(payloadBytes: Int(AgentConfig.segmentSizeBytesMax)))
    var hostBudgetPollMs = ReplicationLimits.hostBudgetPollMs

    /// The first relation that does not hold, in words, or nil.
    func problem() -> String? {
        if pointBacklogBytesMax > pointBacklogBytesLateMax {
            return "pointBacklogBytesMax (\(pointBacklogBytesMax)) exceeds pointBacklogBytesLateMax (\(pointBacklogBytesLateMax)): the late bound must allow at least the preferred one"
        }
        if pointPreferredWaitMs >= pointPrepareWaitMsMax {
            return "pointPreferredWaitMs (\(pointPreferredWaitMs)) is not below pointPrepareWaitMsMax (\(pointPrepareWaitMsMax)): a point would give up before it ever accepts the late bound"
        }
        if pointReaderIdleWaitMsMax >= pointPrepareWaitMsMax {
            return "pointReaderIdleWaitMsMax (\(pointReaderIdleWaitMsMax)) is not below pointPrepareWaitMsMax (\(pointPrepareWaitMsMax))"
        }
        if watchdogReplyWaitMs >= pointPrepareWaitMsMax {
            return "FreezeGuardLimits.watchdogReplyWaitMs (\(watchdogReplyWaitMs)) is not below pointPrepareWaitMsMax (\(pointPrepareWaitMsMax)): arming the watchdog could outlast the preparation"
        }
        if pointPrepareDrainMs < 1 || pointReadyPollMs < 1 {
            return "pointPrepareDrainMs and pointReadyPollMs must be at least 1 ms (a zero poll spins)"
        }
        if pointResyncJudgeMs < 1 || pointResyncJudgeMs >= freezeTimeoutMsMin {
            return "pointResyncJudgeMs (\(pointResyncJudgeMs)) must be at least 1 and below the smallest freeze bound (\(freezeTimeoutMsMin) ms): a resync under the freeze is judged before the bound"
        }
        if reconnectDelayMsMin < 1 || reconnectDelayMsMin > reconnectDelayMsMax {
            return "the reconnect delay must be 1 ms ≤ reconnectDelayMsMin (\(reconnectDelayMsMin)) ≤ reconnectDelayMsMax (\(reconnectDelayMsMax))"
        }
        if !compressionAutoLevels.contains(compressionAutoStartLevel) {
            return "compressionAutoStartLevel (\(compressionAutoStartLevel)) is outside compressionAutoLevels (\(compressionAutoLevels))"
        }
        if digestBaselinePollMs < 1 || digestBaselinePollMs >= digestBaselineWaitMsMax {
            return "digestBaselinePollMs (\(digestBaselinePollMs)) must be at least 1 ms and below digestBaselineWaitMsMax (\(digestBaselineWaitMsMax))"
        }
        if shutdownSealExtentsMax < 1 {
            return "shutdownSealFileBytes (\(shutdownSealFileBytes)) leaves no room for an extent after the seal's fixed part"
        }
        if mirrorCycleBytesMax < UInt64(readRequestBytesMax) {
            return "mirrorCycleBytesMax (\(mirrorCycleBytesMax)) is below readRequestBytesMax (\(readRequestBytesMax)): a mirror cycle could not hold one read"
        }
        if hostInflightBytesMin < sealedSegmentBytesMax {
            return "AgentConfig.hostInflightBytesMin (\(hostInflightBytesMin)) is below the largest sealed segment (\(sealedSegmentBytesMax)): the host's budget could not admit one segment"
        }
        if hostBudgetPollMs < 1 {
            return "hostBudgetPollMs must be at least 1 ms (a zero poll spins)"
        }
        return nil
    }

    /// Stops the agent at start when a relation does not hold: a build with
    /// inconsistent limits must not run (like `ServerLimits.relationProblem`).
    static func check() {
        if let problem = AgentLimitRelations().problem() { preconditionFailure("agent limits: \(problem)") }
    }
}
