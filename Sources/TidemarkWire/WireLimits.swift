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
    public static let segmentBytesMax = sealedSegmentBytesMax(payloadBytes: segmentPayloadBytesMax)
    /// Largest sealed segment of at most `payloadBytes` of payload.
    public static func sealedSegmentBytesMax(payloadBytes: Int) -> Int { segmentHeaderBytesMax + payloadBytes + SegmentFormat.tagBytes }
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

/// The geometry of a disk as an agent declares it in `openDisk` and as
/// every segment header repeats it (docs/wire-format.md, section 6, "Disk
/// geometry"): checked before anything derived from it is computed or
/// stored, so that every later computation on it (chunk counts, extent
/// ends, offsets of chunks) fits in 64 bits.
public enum DiskGeometry {
    /// Smallest and largest chunk size; a chunk size is a power of two in
    /// between (the agent's `chunk_size` and the `.hrl` allow the same).
    public static let chunkSizeBytesMin: UInt32 = 4 << 10
    public static let chunkSizeBytesMax: UInt32 = 1 << 20
    /// Largest disk: 256 TiB. With the smallest chunk size that is 2^36
    /// chunks, so a chunk count, a chunk index times the chunk size and an
    /// offset plus a segment's length never come near 2^64.
    public static let sizeBytesMax: UInt64 = 256 << 40
    /// The largest chunk count a disk can have (256 TiB of 4 KiB chunks).
    public static let chunkCountMax: UInt64 = sizeBytesMax / UInt64(chunkSizeBytesMin)

    /// What is wrong with a disk geometry, nil when it is valid: size
    /// 1 … `sizeBytesMax`, chunk size a power of two in
    /// `chunkSizeBytesMin` … `chunkSizeBytesMax`.
    public static func problem(sizeBytes: UInt64, chunkSizeBytes: UInt32) -> String? {
        guard chunkSizeBytes >= chunkSizeBytesMin, chunkSizeBytes <= chunkSizeBytesMax,
              chunkSizeBytes.nonzeroBitCount == 1 else {
            return "chunk size \(chunkSizeBytes) is not a power of two from \(chunkSizeBytesMin) to \(chunkSizeBytesMax) bytes"
        }
        guard sizeBytes >= 1, sizeBytes <= sizeBytesMax else {
            return "disk size \(sizeBytes) is not 1 to \(sizeBytesMax) bytes (256 TiB)"
        }
        return nil
    }

    /// The number of chunks of a valid geometry (the last may be short).
    /// Call only after `problem` returned nil.
    public static func chunkCount(sizeBytes: UInt64, chunkSizeBytes: UInt32) -> UInt64 {
        precondition(problem(sizeBytes: sizeBytes, chunkSizeBytes: chunkSizeBytes) == nil, "chunkCount of an unchecked geometry")
        let chunk = UInt64(chunkSizeBytes)
        return sizeBytes / chunk + (sizeBytes % chunk == 0 ? 0 : 1)
    }
}

/// Sequence numbers of a disk's segments (docs/wire-format.md, session
/// rule 2 and section 6): 1 … `max`, so that a sequence plus one, and a
/// sequence as a signed 64-bit number anywhere it is shown, never overflows.
public enum SegmentSequence {
    public static let min: UInt64 = 1
    public static let max: UInt64 = UInt64(Int64.max) - 1

    public static func isValid(_ s: UInt64) -> Bool { s >= min && s <= max }
}

/// Which disk ids an agent may use (docs/wire-format.md, session rule 8):
/// the ids an agent makes are `<agent id>-<kernel device name>-<12 hex
/// digits>` (`Replicator.diskID(agentID:device:)`), and a process server
/// accepts from an agent only ids of that form with its own agent id (the
/// name in its certificate). The kernel device name is one or more
/// characters from [A-Za-z0-9_.!:+] starting with a letter, optionally
/// followed by groups of '-' and digits (`dm-0`); the digits are lowercase
/// hex. The form is unambiguous: no id is of the form for two agent ids.
public enum DiskNamespace {
    public static let digestHexDigits = 12

    /// True when `diskID` is one of the ids agent `agentID` can make.
    public static func belongs(_ diskID: String, to agentID: String) -> Bool {
        guard !agentID.isEmpty, diskID.utf8.count <= WireLimits.stringBytesMax else { return false }
        let prefix = Array(agentID.utf8) + [UInt8(ascii: "-")]
        let bytes = Array(diskID.utf8)
        guard bytes.count > prefix.count + 1 + digestHexDigits, bytes.starts(with: prefix) else { return false }
        let rest = bytes[prefix.count...]
        let hex = rest.suffix(digestHexDigits)
        guard hex.allSatisfy({ ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "f")) })
        else { return false }
        let kernelAndDash = rest.dropLast(digestHexDigits)
        guard kernelAndDash.last == UInt8(ascii: "-") else { return false }
        return isKernelName(kernelAndDash.dropLast())
    }

    /// [A-Za-z][A-Za-z0-9_.!:+]* ( '-' [0-9]+ )*
    static func isKernelName(_ name: ArraySlice<UInt8>) -> Bool {
        let groups = name.split(separator: UInt8(ascii: "-"), omittingEmptySubsequences: false)
        guard let first = groups.first, let lead = first.first, isLetter(lead) else { return false }
        guard first.allSatisfy({ isLetter($0) || isDigit($0) || "_.!:+".utf8.contains($0) }) else { return false }
        return groups.dropFirst().allSatisfy { !$0.isEmpty && $0.allSatisfy(isDigit) }
    }

    private static func isLetter(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
    }

    private static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    /// What an agent's disk ids look like, for error messages.
    public static func form(of agentID: String) -> String {
        "'\(agentID)-<kernel device name>-<12 lowercase hex digits>'"
    }
}
