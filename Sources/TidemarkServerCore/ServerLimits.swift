import TidemarkWire

/// Every limit of the process server, in one place, units in the names.
/// Configurable values (spool size, connections, retention) live in
/// `ServerConfig`; these are the fixed bounds around them.
public enum ServerLimits {
    /// A spool file is closed for appends once it reaches this size; it is
    /// deleted when every record in it is committed to target storage.
    public static let spoolFileBytesMax: UInt64 = 64 << 20
    /// The TLS handshake and the hello together must finish within this
    /// time from the connection's accept (one deadline, however slowly the
    /// bytes come); a connection still short of its `helloOK` then is cut.
    public static let handshakeTimeoutMs = 10_000
    /// A connection that sends nothing (not even a ping) for this long is closed.
    public static let idleTimeoutMs = 120_000
    /// Once a frame has begun, each read of its remaining bytes may wait this long.
    public static let frameReadTimeoutMs = 30_000
    /// A whole frame, from the moment its first byte is readable to its
    /// last byte, must arrive within `frameDeadlineMs(payloadBytes:)`:
    /// this base plus its payload at `frameBytesPerSecondMin`. A connection
    /// that falls behind is cut, however steadily its bytes trickle in.
    public static let frameDeadlineBaseMs = 15_000
    /// The slowest average rate a frame's payload may arrive at (256 kbit/s):
    /// a `segment` frame of the largest size has 15 s + 260 s.
    public static let frameBytesPerSecondMin = 32 << 10
    /// The whole-frame deadline of a frame of `payloadBytes` (at most
    /// `WireLimits.framePayloadBytesMax`, which the frame header checks first).
    public static func frameDeadlineMs(payloadBytes: Int) -> Int {
        frameDeadlineBaseMs + Int((Int64(max(0, payloadBytes)) * 1000) / Int64(frameBytesPerSecondMin))
    }
    /// Connections that have not yet completed the handshake and hello
    /// (unauthenticated) have a pool of their own, apart from
    /// `max_connections` (which counts authenticated agents only): at most
    /// this many at once, and at most `unauthenticatedPerSourceMax` from one
    /// source address. A new connection that would exceed either bound
    /// displaces the oldest unauthenticated connection (of its source, or
    /// of all; one still in the TLS handshake before one past it), which is
    /// closed: a flood of idle or slow connections keeps cycling through
    /// the pool and cannot hold it against an agent that completes its
    /// handshake.
    public static let unauthenticatedConnectionsMax = 64
    public static let unauthenticatedPerSourceMax = 16
    /// How often the deadlines of the connections are checked (a cut comes
    /// at most this much after its deadline).
    public static let deadlineCheckMs = 100
    /// Unauthenticated connections displaced from the pool, or cut at the
    /// handshake deadline, are logged at most once per this interval (with
    /// the count since the last line): a flood must not flood the log.
    public static let displacedLogIntervalMs = 5_000
    /// How long a connection thread waits in one poll before it looks at
    /// whether it should stop (a queued acknowledgement wakes it at once).
    public static let connectionPollMs = 50
    /// Disks one connection may open.
    public static let disksPerConnectionMax = 64
    /// While the spool is full, an append waits in steps of this long for the
    /// uploader to free space, logging each time it has waited this many steps.
    public static let spoolFullWaitMs = 50
    public static let spoolFullLogEverySteps = 100
    /// An upload to target storage that fails is retried after this long,
    /// doubling up to the maximum; the record stays in the spool meanwhile.
    public static let uploadRetryDelayMsMin = 100
    public static let uploadRetryDelayMsMax = 10_000
    /// At a stop, the server waits this long for its own threads (spool
    /// sync, uploader, pruner, deadlines) to end: longer than an upload
    /// retry's sleep, so a batch being stored is finished, not cut; a thread
    /// stuck in the kernel longer is named and left (the spool keeps its
    /// segments for the next start).
    public static let stopThreadsWaitMs = 30_000
    /// The uploader stores the spooled segments waiting for it in batches of
    /// at most this many segments and this many payload bytes (a larger
    /// segment goes alone): one directory fsync per batch, and "committed"
    /// for the whole batch once it is durable. The bytes bound the memory
    /// the batch holds (it is read back from the spool whole).
    public static let uploadBatchSegmentsMax = 32
    public static let uploadBatchBytesMax: UInt64 = 64 << 20
    /// Received segments are kept in memory, as their target objects'
    /// aligned buffers, from ingest until committed (up to the
    /// `upload_memory_bytes` of the configuration); of the buffers that
    /// become free, at most this many are kept for reuse.
    public static let stagedIdleBuffersMax = 16
    /// Threads that write and fsync a batch's objects at once, the
    /// uploader's own included (fsync mostly waits for the device).
    public static let uploadSyncThreads = 4
    /// The chunk digest index of a disk is made durable (fdatasync, then its
    /// header names the sequence) after this many committed segments, not
    /// after each: a crash costs re-applying at most this many from the
    /// objects, an fsync per segment would slow every upload.
    public static let digestIndexFlushEverySegments: UInt64 = 64
    /// How often the metrics gauges (connections, spool bytes, commit lag)
    /// are read from the server: a look under its lock.
    public static let metricsSampleIntervalMs = 1_000

    /// The relations between these limits, which the unit tests check and
    /// the server asserts at start: nil when they hold.
    public static func relationProblem() -> String? {
        if handshakeTimeoutMs >= idleTimeoutMs { return "the handshake deadline must be shorter than the idle timeout" }
        if frameDeadlineMs(payloadBytes: WireLimits.controlPayloadBytesMax) >= idleTimeoutMs {
            return "a control frame's whole-frame deadline must be shorter than the idle timeout"
        }
        if frameDeadlineBaseMs > frameReadTimeoutMs { return "the whole-frame deadline base must not exceed the per-read timeout" }
        if deadlineCheckMs * 10 > handshakeTimeoutMs { return "deadlines must be checked at least ten times within the handshake deadline" }
        if stopThreadsWaitMs <= uploadRetryDelayMsMax { return "a stop must wait longer than an upload retry's sleep, or it cuts a batch being stored" }
        if unauthenticatedPerSourceMax < 1 || unauthenticatedPerSourceMax > unauthenticatedConnectionsMax {
            return "the per-source pool of unauthenticated connections must be 1 … the whole pool"
        }
        return nil
    }
}
