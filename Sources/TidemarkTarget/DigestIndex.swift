import Glibc
import TidemarkSystem

/// A keyed chunk digest as the target stores it: 16 opaque bytes computed by
/// the agent (docs/wire-format.md, "Chunk digests"), as two little-endian
/// words, and the format version of the segment that carried it, which says
/// how the agent computed it (2: HMAC-SHA-256, 3: AES of a GMAC tag).
/// Target storage cannot compute or check it; it only compares.
public struct StoredDigest: Hashable, Sendable {
    public var low: UInt64
    public var high: UInt64
    public var segmentVersion: UInt16
    public init(low: UInt64, high: UInt64, segmentVersion: UInt16) {
        precondition(DigestIndex.digestVersions.contains(segmentVersion), "StoredDigest: segment version \(segmentVersion) carries no digests")
        self.low = low
        self.high = high
        self.segmentVersion = segmentVersion
    }
}

/// What the newest stored segment that covers a chunk says about it.
public enum IndexedChunk: Equatable, Sendable {
    /// No segment with a digest covers it (never written, or written by a
    /// format version 1 segment): the agent must send it.
    case unknown
    /// The newest segment covering it wrote a zero extent.
    case zero
    /// The newest segment covering it wrote data with this digest.
    case data(StoredDigest)
}

/// The per-disk chunk digest index (docs/target-layout.md section 9): for
/// every chunk, the state the newest segment of sequence ≤ `sequence` left
/// it in. A derived cache beside the immutable objects, rebuilt from them
/// whenever it is missing, damaged or behind: never trusted blindly, since a
/// wrong entry would let an agent skip a chunk the target does not hold.
///
/// File `<disk-dir>/chunk-digests` in the repository's state directory
/// (the target directory of a local target): 4096-byte pages; page 0 is the header,
/// page p ≥ 1 holds chunks [(p−1)·240, p·240), 17 bytes each, and a 16-byte
/// check. Memory use is one page at a time, whatever the disk size.
/// Thread-safe (one lock per index); one open index per file at a time
/// (an exclusive flock, held until the object goes away).
public final class DigestIndex: @unchecked Sendable {
    public let disk: DiskRecord
    public let path: String
    private let lock = Lock()
    private var fd: FileDescriptor
    private let diskIDHash: [UInt8]
    private let chunkCount: UInt64
    /// Every segment 1...sequence is reflected (in the pages; the header on
    /// storage may name an older sequence until the next `flush`).
    private var applied: UInt64
    /// The sequence the header on storage names.
    private var flushed: UInt64 = 0

    static let pageBytes = 4096
    static let entryBytes = 17
    static let entriesPerPage: UInt64 = 240
    static let pageCheckOffset = 4080
    static let pageCheckBytes = 16
    static let headerCheckOffset = 4064
    static let magic: [UInt8] = Array("TMDIGIDX".utf8)
    /// Version 2 added state 3 (a digest of a format 3 segment); a version
    /// 1 file is read as it is and rewritten as version 2 at its next flush.
    public static let formatVersion: UInt16 = 2
    static let readableVersions: ClosedRange<UInt16> = 1...2
    /// Segment format versions whose digests the index holds; an entry's
    /// data state is the version (2 or 3).
    public static let digestVersions: ClosedRange<UInt16> = 2...3
    static let fileName = "chunk-digests"
    static let stateUnknown: UInt8 = 0, stateZero: UInt8 = 1
    /// Data states: the segment format version whose digest the entry holds.
    static let stateDataV2: UInt8 = 2, stateDataV3: UInt8 = 3

    /// The sequence the index reflects (every segment 1...sequence applied).
    public var sequence: UInt64 { lock.withLock { applied } }

    /// Opens the index of `disk` under `target`. A missing file is created
    /// empty (sequence 0); a header that does not verify, or describes
    /// another disk or geometry, is replaced by an empty index (to be caught
    /// up from the objects: `catchUp`). `damaged` hears why.
    init(target: TargetRepository, disk: DiskRecord, damaged: (String) -> Void) throws {
        guard let path = try target.statePath(disk.diskID, Self.fileName) else {
            throw TidemarkError(.unsupported, "disk '\(disk.diskID)': the target at \(target.rootLocation) has no state directory for its chunk digest index",
                                hint: "open the target with a state directory (a local directory target has one)")
        }
        self.disk = disk
        self.path = path
        diskIDHash = SHA256.hash(Array(disk.diskID.utf8))
        chunkCount = (disk.sizeBytes + UInt64(disk.chunkSizeBytes) - 1) / UInt64(disk.chunkSizeBytes)
        fd = try FileDescriptor(open: path, [.readWrite, .create, .noFollow], mode: 0o644, purpose: "opening the chunk digest index")
        applied = 0
        // One writer at a time: two writers applying different sequences
        // could leave a page with an older state under a newer header.
        guard try fd.tryLockExclusive() else {
            throw TidemarkError(.busy, "\(path) is in use by another process (another process server uploading disk '\(disk.diskID)')",
                                hint: "digest requests are answered 'unknown' meanwhile; it frees when that server closes the index")
        }
        if let problem = try readHeader() {
            damaged(problem)
            try reset()
        }
    }

    private var fileBytes: UInt64 {
        UInt64(Self.pageBytes) * (1 + (chunkCount + Self.entriesPerPage - 1) / Self.entriesPerPage)
    }

    /// Reads and verifies the header; returns what is wrong, or nil (and sets `applied`).
    private func readHeader() throws -> String? {
        var page = [UInt8](repeating: 0, count: Self.pageBytes)
        let n = try page.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        if n == 0 { return "\(path) is empty (new index)" }
        guard n == Self.pageBytes else { return "\(path): header truncated (\(n) bytes)" }
        let check = SHA256.hash(Array(page[0..<Self.headerCheckOffset]))
        guard Array(page[Self.headerCheckOffset..<Self.pageBytes]) == check else { return "\(path): header checksum mismatch" }
        guard Array(page[0..<8]) == Self.magic else { return "\(path): bad magic" }
        let version = load16(page, 8)
        guard Self.readableVersions.contains(version) else { return "\(path): index format version \(version), this build reads \(Self.readableVersions)" }
        guard load16(page, 10) == 0, load32(page, 12) == disk.chunkSizeBytes, load64(page, 16) == disk.sizeBytes,
              Array(page[32..<64]) == diskIDHash else {
            return "\(path): describes another disk or geometry"
        }
        guard try fd.stat().st_size == off_t(fileBytes) else { return "\(path): size differs from the disk's \(fileBytes) bytes" }
        applied = load64(page, 24)
        flushed = applied
        return nil
    }

    private func writeHeader(sequence: UInt64) throws {
        var page = [UInt8](repeating: 0, count: Self.pageBytes)
        page.replaceSubrange(0..<8, with: Self.magic)
        store(&page, 8, UInt64(Self.formatVersion), 2)
        store(&page, 12, UInt64(disk.chunkSizeBytes), 4)
        store(&page, 16, disk.sizeBytes, 8)
        store(&page, 24, sequence, 8)
        page.replaceSubrange(32..<64, with: diskIDHash)
        page.replaceSubrange(Self.headerCheckOffset..<Self.pageBytes, with: SHA256.hash(Array(page[0..<Self.headerCheckOffset])))
        try page.withUnsafeBytes { try fd.write($0, at: 0) }
    }

    /// Empties the index: every chunk unknown, sequence 0 (all-zero pages).
    private func reset() throws {
        try fd.truncate(to: 0)
        try fd.truncate(to: fileBytes)
        try writeHeader(sequence: 0)
        try fd.dataSync()
        applied = 0
        flushed = 0
    }

    // MARK: Pages

    /// Reads and verifies data page p (≥ 1). A page of zeros is a valid
    /// page of unknown chunks; any other page must carry its check.
    private func readPage(_ p: UInt64) throws -> [UInt8] {
        var page = [UInt8](repeating: 0, count: Self.pageBytes)
        let n = try page.withUnsafeMutableBytes { try fd.read(into: $0, at: p * UInt64(Self.pageBytes)) }
        guard n == Self.pageBytes else {
            throw TidemarkError(.corrupt, "\(path): page \(p) truncated (\(n) bytes)", hint: "the index is rebuilt from the segment objects")
        }
        if page.allSatisfy({ $0 == 0 }) { return page }
        guard Array(page[Self.pageCheckOffset..<Self.pageBytes]) == pageCheck(p, page) else {
            throw TidemarkError(.corrupt, "\(path): page \(p) (chunks \((p - 1) * Self.entriesPerPage)...) fails its check: damaged, moved or edited",
                                hint: "the index is rebuilt from the segment objects")
        }
        for i in 0..<Int(Self.entriesPerPage) {
            let state = page[i * Self.entryBytes]
            guard state <= Self.stateDataV3,
                  state >= Self.stateDataV2 || page[(i * Self.entryBytes + 1)..<((i + 1) * Self.entryBytes)].allSatisfy({ $0 == 0 }) else {
                throw TidemarkError(.corrupt, "\(path): page \(p) entry \(i) is malformed (state \(state))",
                                    hint: "the index is rebuilt from the segment objects")
            }
        }
        return page
    }

    private func writePage(_ p: UInt64, _ page: inout [UInt8]) throws {
        page.replaceSubrange(Self.pageCheckOffset..<Self.pageBytes, with: pageCheck(p, page))
        try page.withUnsafeBytes { try fd.write($0, at: p * UInt64(Self.pageBytes)) }
    }

    /// First 16 bytes of SHA-256(u64 page number ‖ SHA-256(disk id) ‖ entries).
    private func pageCheck(_ p: UInt64, _ page: [UInt8]) -> [UInt8] {
        var input = [UInt8](repeating: 0, count: 8)
        store(&input, 0, p, 8)
        input += diskIDHash
        input += page[0..<Self.pageCheckOffset]
        return Array(SHA256.hash(input)[0..<Self.pageCheckBytes])
    }

    // MARK: Reading

    /// The states of chunks [first, first + count). Throws .corrupt when a
    /// page fails its check (the caller rebuilds), .invalidArgument for a
    /// range outside the disk.
    public func lookup(first: UInt64, count: Int) throws -> (sequence: UInt64, states: [IndexedChunk]) {
        guard count >= 0, first <= chunkCount, UInt64(count) <= chunkCount - first else {
            throw TidemarkError(.invalidArgument, "disk '\(disk.diskID)': chunks \(first)..<\(first + UInt64(max(count, 0))) lie outside its \(chunkCount) chunks")
        }
        return try lock.withLock {
            var out: [IndexedChunk] = []
            out.reserveCapacity(count)
            var c = first
            let end = first + UInt64(count)
            while c < end {
                let p = c / Self.entriesPerPage + 1
                let page = try readPage(p)
                while c < end && c / Self.entriesPerPage + 1 == p {
                    let at = Int(c % Self.entriesPerPage) * Self.entryBytes
                    switch page[at] {
                    case Self.stateZero: out.append(.zero)
                    case Self.stateDataV2, Self.stateDataV3:
                        out.append(.data(StoredDigest(low: load64(page, at + 1), high: load64(page, at + 9), segmentVersion: UInt16(page[at]))))
                    default: out.append(.unknown)
                    }
                    c += 1
                }
            }
            return (applied, out)
        }
    }

    // MARK: Updating

    /// Applies segment `sequence` (which must be `self.sequence + 1`; an
    /// earlier one is ignored): its zero extents' chunks become zero, its
    /// data extents' chunks the given digests (one per data chunk, in extent
    /// order) or unknown when the segment has none (`digests` nil).
    ///
    /// The pages are written at once; with `sync` they are made durable and
    /// then the header names the new sequence, otherwise the header waits
    /// for a later `flush`. Either way the header on storage never names a
    /// sequence whose pages are not durable, so after a crash re-applying the
    /// sequences after the header's repairs the index (section 9.2 of
    /// docs/target-layout.md).
    public func apply(sequence: UInt64, extents: [TargetExtent], digests: [StoredDigest]?, sync: Bool = true) throws {
        try lock.withLock {
            if sequence <= applied { return }
            guard sequence == applied + 1 else {
                throw TidemarkError(.state, "\(path): segment \(sequence) applied after \(applied) (a gap)",
                                    hint: "catch the index up from the objects first")
            }
            try applyLocked(sequence: sequence, extents: extents, digests: digests, sync: sync)
        }
    }

    private func applyLocked(sequence: UInt64, extents: [TargetExtent], digests: [StoredDigest]?, sync: Bool) throws {
        let chunk = UInt64(disk.chunkSizeBytes)
        // Per chunk, in order: (chunk, state, digest).
        var updates: [(UInt64, UInt8, low: UInt64, high: UInt64)] = []
        var di = 0
        for e in extents {
            // Checked before expanding: an extent is expanded chunk by chunk.
            let (end, overflow) = e.offset.addingReportingOverflow(e.length)
            guard !overflow, end <= disk.sizeBytes else {
                throw TidemarkError(.invalidArgument, "disk '\(disk.diskID)' sequence \(sequence): an extent (offset \(e.offset), length \(e.length)) lies beyond the disk")
            }
            var c = e.offset / chunk
            while c * chunk < e.end {
                if e.zero {
                    updates.append((c, Self.stateZero, 0, 0))
                } else if let digests {
                    guard di < digests.count else {
                        throw TidemarkError(.corrupt, "disk '\(disk.diskID)' sequence \(sequence): \(digests.count) chunk digests for more data chunks")
                    }
                    updates.append((c, UInt8(digests[di].segmentVersion), digests[di].low, digests[di].high))
                    di += 1
                } else {
                    updates.append((c, Self.stateUnknown, 0, 0))
                }
                c += 1
            }
        }
        guard digests == nil || di == digests!.count else {
            throw TidemarkError(.corrupt, "disk '\(disk.diskID)' sequence \(sequence): \(digests!.count) chunk digests for \(di) data chunks")
        }
        guard updates.allSatisfy({ $0.0 < chunkCount }) else {
            throw TidemarkError(.invalidArgument, "disk '\(disk.diskID)' sequence \(sequence): an extent lies beyond the disk")
        }
        var i = 0
        while i < updates.count {
            let p = updates[i].0 / Self.entriesPerPage + 1
            // A damaged page throws: rewriting it would keep its wrong
            // entries; the caller rebuilds the index instead.
            var page = try readPage(p)
            while i < updates.count && updates[i].0 / Self.entriesPerPage + 1 == p {
                let (c, state, low, high) = updates[i]
                let at = Int(c % Self.entriesPerPage) * Self.entryBytes
                page[at] = state
                store(&page, at + 1, low, 8)
                store(&page, at + 9, high, 8)
                i += 1
            }
            try writePage(p, &page)
        }
        applied = sequence
        if sync { try flushLocked() }
    }

    /// Makes the pages durable, then names the applied sequence in the header.
    public func flush() throws {
        try lock.withLock { try flushLocked() }
    }

    private func flushLocked() throws {
        guard flushed != applied else { return }
        try fd.dataSync()
        try writeHeader(sequence: applied)
        flushed = applied
    }

    /// Applies every sequence after the index's up to `committed`, reading
    /// the objects: a pruned sequence is skipped (prune removes only
    /// segments whose every chunk a later segment ≤ the horizon overwrites,
    /// so the newest state of each chunk is always in a stored segment).
    /// `digestsOf(sequence, sealed segment bytes)` returns the segment's
    /// chunk digests (nil when its format has none); it must check that the
    /// sealed header's extents are the stored ones.
    public func catchUp(to committed: UInt64, from target: TargetRepository,
                        digestsOf: (UInt64, [UInt8], [TargetExtent]) throws -> [StoredDigest]?) throws {
        try lock.withLock {
            guard applied < committed else { return }
            // A closed range: no `s += 1` past a committed sequence of UInt64.max.
            for s in (applied + 1)...committed {
                guard let info = try target.segmentInfo(diskID: disk.diskID, sequence: s) else {
                    throw TidemarkError(.notFound, "disk '\(disk.diskID)' sequence \(s) is neither stored nor pruned; the digest index stops at \(applied)")
                }
                if info.pruned {
                    try applyLocked(sequence: s, extents: [], digests: nil, sync: false)
                } else {
                    var digests: [StoredDigest]? = []
                    if info.extents.contains(where: { !$0.zero }) {
                        digests = try digestsOf(s, try target.readSegment(diskID: disk.diskID, sequence: s), info.extents)
                    }
                    try applyLocked(sequence: s, extents: info.extents, digests: digests, sync: false)
                }
            }
            try flushLocked()
        }
    }

    /// Throws the index away and starts from sequence 0 (then `catchUp`).
    public func clear() throws {
        try lock.withLock { try reset() }
    }
}

extension TargetRepository {
    /// Opens the chunk digest index of a disk (creating it empty when
    /// absent or unusable; `damaged` hears why it was replaced).
    public func digestIndex(diskID: String, damaged: (String) -> Void = { _ in }) throws -> DigestIndex {
        try DigestIndex(target: self, disk: try requireDisk(diskID), damaged: damaged)
    }
}

private func load16(_ b: [UInt8], _ at: Int) -> UInt16 { UInt16(b[at]) | UInt16(b[at + 1]) << 8 }
private func load32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[at + $1]) << (8 * $1) } }
private func load64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * $1) } }
private func store(_ b: inout [UInt8], _ at: Int, _ v: UInt64, _ n: Int) {
    for i in 0..<n { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
}
