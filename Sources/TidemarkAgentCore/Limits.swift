/// Every limit of the agent's data path, in one place, units in the names.
/// Configuration defaults and bounds (chunk size, intervals) live with the
/// configuration, in `AgentConfig`.
public enum Limits {
    /// Times a start opens the pinned tracer again when another process
    /// unpinned it between opening and attaching (see docs/tracer.md).
    public static let tracerReopenAttemptsMax = 5
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
}
