import Dispatch
import Glibc
import TidemarkStorage
import TidemarkSystem

/// One stored segment opened (decrypted, decompressed): its extents in
/// order, and the plaintext of its data extents in one buffer. With the
/// buffer page-aligned (as `Recover` allocates it), `materialize` writes the
/// image with O_DIRECT straight from it, with no copy.
public final class OpenedSegment: @unchecked Sendable {
    public struct Extent: Sendable {
        public var offset: UInt64
        public var length: UInt64
        /// Where the extent's bytes start in `data`; nil for a zero extent.
        public var dataStart: Int?
        public init(offset: UInt64, length: UInt64, dataStart: Int?) {
            self.offset = offset
            self.length = length
            self.dataStart = dataStart
        }
    }

    public let extents: [Extent]
    /// The data extents' bytes; valid while this object lives.
    public let data: UnsafeRawBufferPointer
    private let storage: AnyObject?

    /// `data` must stay valid while `storage` lives; every data extent must
    /// lie inside it.
    public init(extents: [Extent], data: UnsafeRawBufferPointer, storage: AnyObject?) throws {
        for e in extents {
            guard let start = e.dataStart else { continue }
            guard start >= 0, e.length <= UInt64(data.count), UInt64(start) <= UInt64(data.count) - e.length else {
                throw TidemarkError(.corrupt, "an opened extent at offset \(e.offset) (\(e.length) bytes from \(start)) lies outside the segment's \(data.count) plaintext bytes")
            }
        }
        self.extents = extents
        self.data = data
        self.storage = storage
    }
}

/// Opens one stored segment (sequence, stored bytes, valid only during the
/// call) for `materialize`.
public typealias SegmentOpen = @Sendable (UInt64, UnsafeRawBufferPointer) throws -> OpenedSegment
/// Proves what the target says of one sequence against the sealed header
/// (the segment's, or its tombstone's copy; nil for a tombstone that kept
/// none): throws when the two disagree or the header is not the agent's.
/// Called for every sequence from the point down to 1 before anything is
/// written (docs/target-layout.md section 7).
public typealias SegmentProver = (StoredSegment, SealedHeaderCopy?) throws -> Void
/// Extents in order, nil bytes for zero extents: what a simple `open` returns.
public typealias OpenedExtents = [(offset: UInt64, bytes: [UInt8]?, length: UInt64)]

public enum MaterializeLimits {
    /// Segments read and opened ahead of the writes, per opener (bounds the
    /// memory of a recovery to about this × openers × 2 segment sizes).
    public static let segmentsAheadPerOpener = 2
    /// Writeback of the image is started each time this much more was
    /// written, so the disk writes while segments are opened and the final
    /// fdatasync waits only for the tail.
    public static let writebackStartBytes: UInt64 = 64 << 20
    /// O_DIRECT writes of the image: in flight at once, and the size of each
    /// copied one (memory: the product of the two). A write straight from an
    /// opened segment's page-aligned buffer keeps that segment in memory
    /// until it completes: at most this many more segments.
    public static let directWritesInFlight = 8
    public static let directWriteBytes = 1 << 20
    /// Offset and length alignment a piece needs to go the O_DIRECT way.
    public static let directAlignmentBytes = 4096
}

extension TargetRepository {
    /// `materialize` with the segments read and opened on one thread per
    /// opener (each opener is used by one thread at a time), ahead of the
    /// writes, which stay on the calling thread in the same order. Data in
    /// page-aligned buffers is written with O_DIRECT straight from them.
    public func materialize(point: PointRecord, to path: String, openers: [SegmentOpen], prove: SegmentProver? = nil,
                            progress: (UInt64, UInt64) -> Void) throws {
        precondition(!openers.isEmpty, "materialize needs at least one opener")
        try withoutActuallyEscaping(progress) { progress in try materialize(point: point, to: path, prove: prove, progress: progress) { steps, write in
            let diskID = point.diskID
            let perBatch = openers.count * MaterializeLimits.segmentsAheadPerOpener
            // Stored bytes are read into reused buffers (one per opener at a time).
            let readBuffers = BufferPool(keptMax: openers.count)
            func start(_ range: Range<Int>) -> OpenBatch {
                let batch = OpenBatch(count: range.count)
                let sequences = range.map { steps[$0] }
                DispatchQueue.global().async { [self] in
                    // Opener k handles batch items k, k + n, k + 2n...
                    DispatchQueue.concurrentPerform(iterations: openers.count) { k in
                        var i = k
                        while i < sequences.count, !batch.failed {
                            do {
                                let (buffer, length) = try self.readSegment(diskID: diskID, sequence: sequences[i], into: readBuffers)
                                let sealed = buffer.map { UnsafeRawBufferPointer(rebasing: $0.bytes[0..<length]) }
                                    ?? UnsafeRawBufferPointer(start: nil, count: 0)
                                batch.set(i, try withExtendedLifetime(buffer) { try openers[k](sequences[i], sealed) })
                            } catch {
                                batch.fail(error)
                            }
                            i += openers.count
                        }
                    }
                    batch.finish()
                }
                return batch
            }
            var next: OpenBatch? = steps.isEmpty ? nil : start(0..<min(perBatch, steps.count))
            var at = 0
            while let current = next {
                let opened = try current.wait()
                let from = at
                at += opened.count
                next = at < steps.count ? start(at..<min(at + perBatch, steps.count)) : nil
                for (k, o) in opened.enumerated() { try write(from + k, o) }
            }
        } }
    }


    /// Writes the disk image of `point` to `path` (docs/target-layout.md
    /// section 7).
    ///
    /// `path` is a regular file (created or truncated to the disk size; zero
    /// ranges stay holes) or an existing block device at least as large as
    /// the disk (zero ranges and never-written ranges are zeroed with
    /// BLKZEROOUT). Each byte is written once: a reverse pass from the point
    /// finds, per segment, the chunks no later segment overwrites; only those
    /// segments are read (checksum verified), handed to `open` (which
    /// decrypts and returns the segment's extents, nil bytes for zero
    /// extents) and their live parts written. `progress(done, total)` counts
    /// bytes of the image in place, total = the disk size.
    public func materialize(point: PointRecord, to path: String,
                            open: (UInt64, [UInt8]) throws -> [(offset: UInt64, bytes: [UInt8]?, length: UInt64)],
                            progress: (UInt64, UInt64) -> Void) throws {
        let diskID = point.diskID
        try withoutActuallyEscaping(progress) { progress in try materialize(point: point, to: path, prove: nil, progress: progress) { steps, write in
            for (i, seq) in steps.enumerated() {
                try write(i, try Self.segment(try open(seq, try readSegment(diskID: diskID, sequence: seq))))
            }
        } }
    }

    /// The extents a simple `open` returns, as an `OpenedSegment`.
    static func segment(_ extents: OpenedExtents) throws -> OpenedSegment {
        let total = extents.reduce(0) { $0 + ($1.bytes?.count ?? 0) }
        let buffer = total > 0 ? AlignedBuffer(count: total, zeroed: false) : nil
        var at = 0
        var out: [OpenedSegment.Extent] = []
        for e in extents {
            guard let bytes = e.bytes else {
                out.append(.init(offset: e.offset, length: e.length, dataStart: nil))
                continue
            }
            guard UInt64(bytes.count) == e.length else {
                throw TidemarkError(.corrupt, "opened extent at offset \(e.offset): \(bytes.count) bytes for a length of \(e.length)")
            }
            bytes.withUnsafeBytes { buffer!.slice(at, bytes.count).copyMemory(from: $0) }
            out.append(.init(offset: e.offset, length: e.length, dataStart: at))
            at += bytes.count
        }
        return try OpenedSegment(extents: out, data: buffer.map { UnsafeRawBufferPointer($0.bytes) } ?? UnsafeRawBufferPointer(start: nil, count: 0),
                                 storage: buffer)
    }

    /// The plan and the writes; `fetch(sequences, write)` opens the segments
    /// of `sequences` (oldest first) and calls `write(index, opened)` for
    /// each, in order, on the calling thread.
    private func materialize(point: PointRecord, to path: String, prove: SegmentProver?, progress: @escaping (UInt64, UInt64) -> Void,
                             fetch: ([UInt64], (Int, OpenedSegment) throws -> Void) throws -> Void) throws {
        let record = try requireDisk(point.diskID)
        let diskID = point.diskID
        let s = point.sequence
        let committed = try committedSequence(diskID: diskID)
        guard committed >= s else {
            throw TidemarkError(.notFound,
                                "cannot materialize point '\(point.id)' of disk '\(diskID)' (sequence \(s)): missing objects: sequence \(committed + 1) is neither stored nor pruned",
                                hint: "wait for the process server to upload it, or choose an earlier point")
        }

        // 1. Plan: reverse pass with a chunk bitmap of what later segments cover.
        var covered = ChunkSet(sizeBytes: record.sizeBytes, chunkSizeBytes: record.chunkSizeBytes)
        var plan: [(sequence: UInt64, extents: [TargetExtent], live: [[Range<UInt64>]])] = []
        var seq = s
        while seq >= 1 {
            let found: StoredSegment?
            if let prove {
                let withCopy = try segmentInfoWithSealedHeader(diskID: diskID, sequence: seq)
                if let (info, copy) = withCopy { try prove(info, copy) }
                found = withCopy?.0
            } else {
                found = try segmentInfo(diskID: diskID, sequence: seq)
            }
            guard let info = found else {
                throw TidemarkError(.notFound, "cannot materialize point '\(point.id)' of disk '\(diskID)': missing objects: sequence \(seq) is neither stored nor pruned (no \(segmentPath(diskID, seq)))",
                                    hint: "the target lost an object; choose a later point or restore the object")
            }
            if seq == s, let tag = info.point, tag.id != point.id {
                throw TidemarkError(.invalidArgument, "sequence \(s) of disk '\(diskID)' is the tag of point '\(tag.id)', not '\(point.id)'")
            }
            if info.pruned {
                for e in info.extents where !covered.containsAll(covered.chunks(of: e)) {
                    throw TidemarkError(.notFound,
                                        "cannot materialize point '\(point.id)' of disk '\(diskID)' (sequence \(s)): sequence \(seq) was pruned (dead from sequence \(info.deadAtSequence ?? 0) on) but its extent at offset \(e.offset) is still live at \(s)",
                                        hint: "this point is older than the retention horizon; choose a point at or after sequence \(info.deadAtSequence ?? 0)")
                }
            } else {
                var live = [[Range<UInt64>]]()
                var any = false
                for e in info.extents {
                    let runs = covered.missingRuns(covered.chunks(of: e)).map { covered.bytes($0, diskSize: record.sizeBytes) }
                    if !runs.isEmpty { any = true }
                    live.append(runs)
                    covered.insert(covered.chunks(of: e))
                }
                if any { plan.append((seq, info.extents, live)) }
            }
            seq -= 1
        }

        // 2. The destination: a fresh file is all holes; a device must be
        // large enough. Data goes through O_DIRECT writes where the
        // destination takes them (ImageWriter).
        let image = try ImageWriter(path: path, requiredSizeBytes: record.sizeBytes, mode: .holes(sizeBytes: record.sizeBytes),
                                    role: "recovery destination", writesInFlight: MaterializeLimits.directWritesInFlight,
                                    writeBufferBytes: MaterializeLimits.directWriteBytes) { deviceBytes in
            TidemarkError(.invalidArgument, "\(path) holds \(deviceBytes) bytes, disk '\(diskID)' needs \(record.sizeBytes)",
                          hint: "use a block device at least as large as the protected disk")
        }

        // 3. Zeros first. A fresh file is all holes: zero ranges and
        // never-written chunks are in place already. A device needs them zeroed.
        let total = record.sizeBytes
        var done: UInt64 = 0
        var zeroRanges = [Range<UInt64>]()
        for step in plan {
            for (e, runs) in zip(step.extents, step.live) where e.zero { zeroRanges += runs }
        }
        zeroRanges += covered.missingRuns(0..<covered.chunkCount).map { covered.bytes($0, diskSize: record.sizeBytes) }
        for r in zeroRanges {
            try image.zeroFresh(offset: r.lowerBound, length: UInt64(r.count))
            done += UInt64(r.count)
        }
        progress(done, total)

        // 4. Data, oldest segment first (ranges are disjoint, order is free).
        let steps = Array(plan.reversed())
        var writebackStartedAt = done
        try fetch(steps.map(\.sequence)) { index, opened in
            let step = steps[index]
            let where_ = "disk '\(diskID)' sequence \(step.sequence)"
            guard opened.extents.count == step.extents.count else {
                throw TidemarkError(.corrupt, "\(where_): the opened segment has \(opened.extents.count) extents, its stored metadata \(step.extents.count)")
            }
            for (i, e) in step.extents.enumerated() {
                let o = opened.extents[i]
                guard o.offset == e.offset, o.length == e.length, (o.dataStart == nil) == e.zero else {
                    throw TidemarkError(.corrupt, "\(where_) extent \(i): opened as offset \(o.offset) length \(o.length) \(o.dataStart == nil ? "zero" : "data"), stored metadata says offset \(e.offset) length \(e.length) \(e.zero ? "zero" : "data")",
                                        hint: "the segment's plaintext metadata does not match its sealed content; it is not used")
                }
                guard let start = o.dataStart else { continue }
                for r in step.live[i] {
                    let from = start + Int(r.lowerBound - e.offset)
                    // Straight from the opened segment's buffer where aligned (the writer keeps it until written).
                    try image.write(UnsafeRawBufferPointer(rebasing: opened.data[from..<(from + r.count)]), at: r.lowerBound, keeping: opened)
                    done += UInt64(r.count)
                }
            }
            if !image.writesDirect, done - writebackStartedAt >= MaterializeLimits.writebackStartBytes {
                writebackStartedAt = done
                try image.startWriteback()
            }
            progress(done, total)
        }
        try image.sync()
        guard done == total else {
            throw TidemarkError(.state, "materializing point '\(point.id)' of disk '\(diskID)' placed \(done) of \(total) bytes (a bug)")
        }
        progress(done, total)
    }
}

/// The opened segments of one read-ahead batch, filled by worker threads.
final class OpenBatch: @unchecked Sendable {
    private let cond = BatchMonitor()
    private var results: [OpenedSegment?]
    private var error: Error?
    private var done = false

    init(count: Int) { results = Array(repeating: nil, count: count) }

    var failed: Bool { cond.locked { error != nil } }
    func set(_ i: Int, _ o: OpenedSegment) { cond.locked { results[i] = o } }
    func fail(_ e: Error) { cond.locked { if error == nil { error = e } } }
    func finish() { cond.locked { done = true }; cond.signal() }

    /// Waits for the batch; the first error of any worker is thrown.
    func wait() throws -> [OpenedSegment] {
        cond.waitUntil { done }
        if let error { throw error }
        return results.map { $0! }
    }
}

/// A mutex and condition (pthread), without Foundation.
final class BatchMonitor: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }
    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }
    func locked<T>(_ body: () throws -> T) rethrows -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
    func signal() {
        pthread_mutex_lock(&mutex)
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }
    func waitUntil(_ ready: () -> Bool) {
        pthread_mutex_lock(&mutex)
        while !ready() { pthread_cond_wait(&condition, &mutex) }
        pthread_mutex_unlock(&mutex)
    }
}
