/// Every limit of the process server, in one place, units in the names.
/// Configurable values (spool size, connections, retention) live in
/// `ServerConfig`; these are the fixed bounds around them.
public enum ServerLimits {
    /// A spool file is closed for appends once it reaches this size; it is
    /// deleted when every record in it is committed to target storage.
    public static let spoolFileBytesMax: UInt64 = 64 << 20
    /// The TLS handshake and the hello must finish within this time.
    public static let handshakeTimeoutMs = 10_000
    /// A connection that sends nothing (not even a ping) for this long is closed.
    public static let idleTimeoutMs = 120_000
    /// Once a frame has begun, each read of its remaining bytes may wait this long.
    public static let frameReadTimeoutMs = 30_000
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
}
