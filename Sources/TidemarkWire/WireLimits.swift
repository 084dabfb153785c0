/// Every hard limit of the wire format, in one place (docs/wire-format.md,
/// "Limits"). Decoders check each length field against these and against the
/// bytes actually present before allocating anything.
public enum WireLimits {
    /// Largest payload of a segment (the plaintext of its data extents).
    public static let segmentPayloadBytesMax = 8 << 20
    /// Largest number of extents in one segment (8 MiB of 4 KiB chunks).
    public static let extentsPerSegmentMax = 2048
    /// Largest UTF-8 length of a disk id, agent id, server id or point id.
    public static let stringBytesMax = 255
    /// Largest UTF-8 length of the message of an `error` frame (a writer
    /// cuts a longer message at a scalar boundary).
    public static let errorMessageBytesMax = 4096
    /// Largest number of chunk digests in one segment header (format
    /// version 2): one per data chunk, so 8 MiB of 4 KiB chunks.
    public static let chunkDigestsPerSegmentMax = 2048
    /// Largest segment header: the fixed part, the two strings, every
    /// extent, every chunk digest, the lineage and the header MAC (format 4).
    public static let segmentHeaderBytesMax =
        SegmentFormat.fixedBytes + 2 * stringBytesMax + extentsPerSegmentMax * SegmentFormat.extentBytes
        + chunkDigestsPerSegmentMax * SegmentFormat.chunkDigestBytes + SegmentLineage.encodedBytes + SegmentFormat.headerMACBytes
    /// Largest sealed segment: header, ciphertext (never longer than the
    /// payload: compression is skipped when it does not shrink), tag.
    public static let segmentBytesMax = segmentHeaderBytesMax + segmentPayloadBytesMax + SegmentFormat.tagBytes
    /// Largest frame payload of any message (a `segment` frame carries one
    /// sealed segment verbatim).
    public static let framePayloadBytesMax = (8 << 20) + (128 << 10)
    /// Largest chunk range one `digestRequest` may ask for, and so the
    /// largest `chunkDigests` answer (2048 chunks: 128 MiB of disk at 64 KiB).
    public static let digestsPerRequestMax = 2048
    /// Largest frame payload of a `chunkDigests` message: disk id, first
    /// chunk, sequence, count, a state byte and a digest per chunk.
    public static let chunkDigestsPayloadBytesMax = 1 + stringBytesMax + 8 + 8 + 4 + digestsPerRequestMax * (1 + SegmentFormat.chunkDigestBytes)
    /// Largest frame payload of every message other than `segment`.
    public static let controlPayloadBytesMax = 8 << 10
}
