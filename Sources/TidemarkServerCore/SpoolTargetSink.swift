import Foundation
import Glibc
import TidemarkSystem
import TidemarkTarget
import TidemarkWire

/// The process server's `SegmentSink`: received segments go to the durable
/// spool ("durable" after its group fdatasync), then the uploader stores
/// them in target storage in batches ("committed"); disk records, digest
/// answers and pruning come from target storage. Every target-storage call
/// of the process server is in this file.
///
/// Threads: the spool's sync thread (`runSyncLoop`), the uploader
/// (`runUploader`) and the threads of `syncPool`; the connections' threads
/// call the `SegmentSink` methods. `reportLock` guards `discards` and
/// orders the reports of durability against losses (the contract of
/// `SegmentSink`); `lock` guards the rest. Memory: the spool's files are
/// bounded by `spoolMaxBytes`, the staged payloads by `uploadMemoryBytes`,
/// the upload queue by the spool's records; `discards` holds at most a few
/// ranges per disk (pruned as the uploader passes them).
public final class SpoolTargetSink: SegmentSink, @unchecked Sendable {
    let target: TargetRepository
    let spool: Spool
    /// The server's metrics (docs/metrics.md): segments received and
    /// committed, and the errors of spool, upload, digest index and prune.
    let metrics: ServerMetrics
    let uploads = UploadQueue()
    /// Threads that write and fsync the objects of an upload batch beside the uploader's.
    let syncPool = WorkerPool(threads: ServerLimits.uploadSyncThreads - 1)
    /// Received payloads kept in memory, each as its target object's aligned
    /// buffer, until committed (bounded by `uploadMemoryBytes`):
    /// the uploader writes them with O_DIRECT instead of reading the spool.
    let staging: SegmentStaging
    let serverID: String
    let spoolDir: String
    let targetPath: String
    public var onReport: @Sendable ([SinkReport]) -> Void = { _ in }

    private let lock = NSLock()
    /// Highest sequence per disk found in the spool at startup (not yet uploaded).
    private var spooledHighest: [String: UInt64] = [:]
    /// Chunk digest indexes of the disks opened so far (docs/target-layout.md section 9).
    private var digestIndexes: [String: DigestIndex] = [:]
    private let indexOpenLock = NSLock()
    /// Disks whose stored record is unusable, with the refusal to send (`storedDisk`).
    private var quarantined: [String: String] = [:]

    private let reportLock = NSLock()
    /// Per disk: spooled segments from `fromSequence` on that were appended
    /// before `before` (a spool position; nil while the loss is not yet
    /// forgotten: everything appended so far) are never reported durable
    /// nor uploaded (one of them could not be kept; the agent re-sends
    /// them). Guarded by `reportLock`.
    private var discards: [String: [DiscardRange]] = [:]
    struct DiscardRange {
        var fromSequence: UInt64
        var before: (fileIndex: UInt64, offset: UInt64)?
    }

    public init(serverID: String, spoolDir: String, spoolMaxBytes: UInt64, targetPath: String, uploadMemoryBytes: Int,
                metrics: ServerMetrics = ServerMetrics()) throws {
        self.serverID = serverID
        self.metrics = metrics
        self.spoolDir = spoolDir
        self.targetPath = targetPath
        self.target = try TargetRepository(localDirectory: targetPath)
        self.staging = SegmentStaging(bytesMax: uploadMemoryBytes, idleBuffersMax: ServerLimits.stagedIdleBuffersMax)
        let (spool, spooled) = try Spool.open(directory: spoolDir, maxBytes: spoolMaxBytes) { bytes in
            let (h, _) = try SegmentHeader.decode(bytes)
            return (h.diskID, h.sequence)
        }
        self.spool = spool
        // A record no server accepts today (an older server's, or damaged
        // yet with a valid checksum) is never uploaded nor counted.
        let (usable, unusable) = (spooled.filter { SegmentSequence.isValid($0.sequence) },
                                  spooled.filter { !SegmentSequence.isValid($0.sequence) })
        for r in unusable {
            Log.error("spool \(spoolDir): a record of \(r.diskID) has sequence \(r.sequence), outside \(SegmentSequence.min)...\(SegmentSequence.max); it is dropped (never uploaded)")
            spool.release(r)
        }
        let leftover = usable
        for r in leftover { spooledHighest[r.diskID] = max(spooledHighest[r.diskID] ?? 0, r.sequence) }
        if !leftover.isEmpty {
            Log.info("spool \(spoolDir): \(leftover.count) segments from an earlier run still to upload")
        }
        uploads.push(leftover)
        spool.onDurable = { [unowned self] records in self.recordsDurable(records) }
        spool.onDropped = { [unowned self] records in self.recordsDropped(records) }
    }

    /// The spool's group commit; returns once `stop()` was called.
    public func runSyncLoop() { spool.runSyncLoop() }

    /// Stops the uploader and the spool: what is not uploaded stays in the
    /// spool for the next start.
    public func stop() {
        uploads.stop()
        spool.stop()
    }

    /// After `stop()` and the uploader's end: a batch still being stored
    /// finishes on the uploader's own thread.
    public func shutdown() { syncPool.shutdown() }

    // MARK: SegmentSink

    public func lookUpDisk(_ diskID: String) throws -> ReplicationReceiver.DiskLookup {
        let record: DiskRecord?
        do {
            record = try storedDisk(diskID)
        } catch let v as ProtocolViolation {
            return .refused(v)
        }
        lock.lock()
        let held = spooledHighest[diskID] ?? 0
        lock.unlock()
        return .stored(record: record, committedSequence: try target.committedSequence(diskID: diskID), heldSequence: held)
    }

    public func createDisk(_ record: DiskRecord) throws {
        try target.putDisk(record)
    }

    /// A staged segment (its target object's buffer) for the segment of
    /// `segmentBytes` that `header` starts, for the connection to read into;
    /// nil when the staging budget is spent (the uploader then reads the
    /// segment back from the spool).
    public func buffer(for header: SegmentHeader, segmentBytes: Int) -> (any SegmentBuffer)? {
        let shape = Self.targetShape(header)
        return staging.reserve(diskID: header.diskID, extents: shape.extents, point: shape.point, payloadBytes: segmentBytes)
    }

    /// Appends a received segment to the spool (`buffer` rides with the
    /// record to the uploader); the durable report follows from the sync
    /// thread. While the spool's filesystem is full, waits and retries.
    public func append(_ header: SegmentHeader, bytes: UnsafeRawBufferPointer, buffer: (any SegmentBuffer)?, abandon: () -> Bool) throws {
        while true {
            do {
                _ = try spool.append(diskID: header.diskID, sequence: header.sequence, payload: bytes, retained: buffer, abandon: abandon)
                metrics.segmentReceived(bytes: bytes.count)
                return
            } catch let full as Spool.SpoolFull {
                metrics.error(.spoolFull)
                Log.warning("\(full.detail): holding back \(header.diskID) #\(header.sequence)")
                if abandon() { throw full }
                usleep(useconds_t(ServerLimits.spoolFullWaitMs * 1000 * 4))
            }
        }
    }

    /// Whatever was appended becomes durable (or is reported lost) before the
    /// agent is told how far the disk is; the digest index is brought up to
    /// the committed sequence now, not in the middle of the agent's first
    /// digest request.
    public func settle(diskID: String) throws {
        guard spool.syncAll() else { throw TidemarkError(.state, "the server is stopping") }
        do {
            _ = try digestIndex(diskID)
        } catch {
            Log.warning("\(diskID): the chunk digest index is unavailable: \(error); digest requests are answered 'unknown' (the agent sends those chunks)")
        }
    }

    /// Seals the loss reported for the disk: segments of it from
    /// `fromSequence` on appended until now are never uploaded (the disk is
    /// quiet: nothing of it is being appended).
    public func forget(diskID: String, fromSequence: UInt64) {
        let position = spool.appendPosition
        reportLock.lock()
        if let i = discards[diskID]?.firstIndex(where: { $0.before == nil }) {
            discards[diskID]![i].before = position
        }
        reportLock.unlock()
        lock.lock()
        if let h = spooledHighest[diskID] { spooledHighest[diskID] = min(h, fromSequence - 1) }
        lock.unlock()
    }

    // MARK: Spool reports

    private func isDiscardedLocked(_ record: Spool.Record) -> Bool {
        guard let ranges = discards[record.diskID] else { return false }
        return ranges.contains { record.sequence >= $0.fromSequence && ($0.before.map { record.location.isBefore($0) } ?? true) }
    }

    private func isDiscarded(_ record: Spool.Record) -> Bool {
        reportLock.lock()
        defer { reportLock.unlock() }
        return isDiscardedLocked(record)
    }

    /// Marks everything of the disk from `fromSequence` on appended so far
    /// as discarded (the open range, sealed by `forget`). Under `reportLock`.
    private func markLostLocked(_ diskID: String, from: UInt64) {
        var ranges = discards[diskID] ?? []
        if let i = ranges.firstIndex(where: { $0.before == nil }) {
            ranges[i].fromSequence = min(ranges[i].fromSequence, from)
        } else {
            ranges.append(DiscardRange(fromSequence: from, before: nil))
        }
        discards[diskID] = ranges
    }

    /// The sync thread: records durable in the spool. Those of a discarded
    /// range are not reported (under `reportLock`, so that no loss comes
    /// between the check and the report); all go to the uploader, which
    /// releases the discarded ones.
    private func recordsDurable(_ records: [Spool.Record]) {
        reportLock.lock()
        var highest: [String: UInt64] = [:]
        for r in records where !isDiscardedLocked(r) { highest[r.diskID] = max(highest[r.diskID] ?? 0, r.sequence) }
        if !highest.isEmpty {
            onReport(highest.sorted { $0.key < $1.key }.map { .durable(diskID: $0.key, sequence: $0.value) })
        }
        reportLock.unlock()
        uploads.push(records)
    }

    /// The sync thread: a failed fdatasync dropped these records (never
    /// durable). Each disk loses everything from its lowest dropped
    /// sequence: the agent re-sends from its durable sequence.
    private func recordsDropped(_ records: [Spool.Record]) {
        reportLock.lock()
        var lowest: [String: UInt64] = [:]
        // Those of a range discarded already are lost already.
        for r in records where !isDiscardedLocked(r) { lowest[r.diskID] = min(lowest[r.diskID] ?? r.sequence, r.sequence) }
        for (diskID, from) in lowest { markLostLocked(diskID, from: from) }
        reportLock.unlock()
        if !lowest.isEmpty {
            onReport(lowest.sorted { $0.key < $1.key }.map { .lost(diskID: $0.key, fromSequence: $0.value) })
        }
    }

    // MARK: Upload

    /// Stores spooled segments in target storage in batches (bounded by
    /// `ServerLimits.uploadBatchSegmentsMax` and `uploadBatchBytesMax`): the
    /// objects of a batch are fsynced in parallel and their directories once
    /// (`TargetRepository.putSegments`), and "committed" is acknowledged
    /// only for the segments of the batch that are durable there. A failure
    /// is handled as if the segments had been uploaded one at a time: those
    /// before the first one that failed are committed, it is retried (or
    /// discarded when it is damaged), the later ones wait for it.
    public func runUploader() {
        var delayMs = ServerLimits.uploadRetryDelayMsMin
        while let batch = uploads.nextBatch(countMax: ServerLimits.uploadBatchSegmentsMax,
                                            bytesMax: ServerLimits.uploadBatchBytesMax) {
            if let first = batch.first { pruneDiscards(passed: first.location) }
            // Read back in spool order, up to a record that cannot be read.
            var items: [UploadItem] = []
            var unread: (index: Int, error: Error)?
            for (i, record) in batch.enumerated() {
                if isDiscarded(record) {
                    // Numbered after a segment that could not be kept: the agent re-sends it.
                    uploads.done()
                    spool.release(record)
                    continue
                }
                do {
                    items.append(try prepareUpload(record))
                } catch {
                    unread = (i, error)
                    break
                }
            }
            let (stored, failure) = target.putSegments(items.map(\.put), pool: syncPool)
            committed(items[..<stored])
            // Not stored, in order: the rest of the items, then what was not read.
            var waiting = items[stored...].map(\.record) + batch[(unread?.index ?? batch.count)...]
            guard let error = failure?.error ?? unread?.error else {
                delayMs = ServerLimits.uploadRetryDelayMsMin
                continue
            }
            let record = waiting.removeFirst()
            if let e = error as? TidemarkError, e.kind == .corrupt {
                uploads.done()
                discardUnreadable(record, e)
                uploads.requeueFront(waiting[...])
                continue
            }
            metrics.error(.upload)
            Log.error("uploading \(record.diskID) #\(record.sequence) to \(targetPath) failed: \(error); retrying in \(delayMs) ms (the segment stays in the spool)")
            uploads.requeueFront(([record] + waiting)[...])
            usleep(useconds_t(delayMs * 1000))
            delayMs = min(delayMs * 2, ServerLimits.uploadRetryDelayMsMax)
        }
    }

    /// The uploader takes records in spool order, and every record reaches
    /// it after its durable report: once it takes one at `position`, no
    /// record before a sealed range's end is reported or uploaded any more,
    /// and the range can go.
    private func pruneDiscards(passed position: Spool.Location) {
        reportLock.lock()
        defer { reportLock.unlock() }
        for (diskID, ranges) in discards {
            let kept = ranges.filter { r in r.before.map { position.isBefore($0) } ?? true }
            discards[diskID] = kept.isEmpty ? nil : kept
        }
    }

    /// A spooled segment that does not verify when read back (its storage
    /// failed) is never uploaded, and neither is anything spooled after it for
    /// its disk: the target must not get a gap, nor segments the agent will
    /// number again. The loss is reported: the receiver closes the disk's
    /// connection, then asks to `forget` (seal) it; the agent reconnects,
    /// learns the lower durable sequence and re-sends everything from there,
    /// read again from its change-tracking bits (docs/wire-format.md, resume rules).
    private func discardUnreadable(_ record: Spool.Record, _ error: TidemarkError) {
        metrics.error(.unreadableSegment)
        Log.error("\(record.diskID) #\(record.sequence) cannot be uploaded: \(error.message); it and every later spooled segment of \(record.diskID) are discarded and the agent is asked to re-send from #\(record.sequence)")
        spool.release(record)
        reportLock.lock()
        markLostLocked(record.diskID, from: record.sequence)
        reportLock.unlock()
        onReport([.lost(diskID: record.diskID, fromSequence: record.sequence)])
    }

    /// A spooled segment ready for upload.
    struct UploadItem {
        var record: Spool.Record
        var header: SegmentHeader
        var put: SegmentPut
    }

    /// What target storage records of a segment besides its bytes.
    public static func targetShape(_ header: SegmentHeader) -> (extents: [TargetExtent], point: PointRecord?) {
        let extents = header.extents.map {
            TargetExtent(offset: $0.offset, length: UInt64($0.length), zero: $0.kind == .zero)
        }
        var point: PointRecord?
        if header.kind == .point, let tag = header.point {
            point = PointRecord(id: tag.id, diskID: header.diskID, pointClass: tag.pointClass.rawValue,
                                timeUnixMs: tag.timeUnixMs, sequence: header.sequence)
        }
        return (extents, point)
    }

    /// A record and what target storage needs of it: its payload as staged
    /// at ingest, or else read back from the spool (verified).
    private func prepareUpload(_ record: Spool.Record) throws -> UploadItem {
        // A quarantined disk's segments are never stored (storedDisk logs why).
        do {
            guard try storedDisk(record.diskID) != nil else {
                throw TidemarkError(.state, "disk \(record.diskID) has no record in the target")
            }
        } catch let v as ProtocolViolation {
            throw TidemarkError(.corrupt, v.message)
        }
        let staged = record.retained as? StagedSegment
        let bytes = staged == nil ? try spool.read(record) : []
        let (header, _) = try (staged?.payload).map { try SegmentHeader.decode($0) }
            ?? bytes.withUnsafeBytes { try SegmentHeader.decode($0) }
        guard header.diskID == record.diskID, header.sequence == record.sequence else {
            throw TidemarkError(.corrupt, "spool record of \(record.diskID) #\(record.sequence) holds \(header.diskID) #\(header.sequence)")
        }
        let (extents, point) = Self.targetShape(header)
        let put = staged.map { SegmentPut(diskID: header.diskID, sequence: header.sequence, extents: extents, point: point, staged: $0) }
            ?? SegmentPut(diskID: header.diskID, sequence: header.sequence, extents: extents, point: point, bytes: bytes)
        return UploadItem(record: record, header: header, put: put)
    }

    /// The items are durable in target storage: index their digests, then
    /// report "committed" (one report per disk, the highest sequence) and
    /// let the spool forget them.
    private func committed(_ items: ArraySlice<UploadItem>) {
        guard !items.isEmpty else { return }
        var highest: [String: UInt64] = [:]
        for item in items {
            updateDigestIndex(item.header, extents: item.put.extents)
            if let point = item.put.point {
                Log.info("\(point.diskID): recovery point \(point.id) (\(point.pointClass)) committed at #\(point.sequence)")
            }
            highest[item.record.diskID] = max(highest[item.record.diskID] ?? 0, item.record.sequence)
        }
        onReport(highest.sorted { $0.key < $1.key }.map { .committed(diskID: $0.key, sequence: $0.value) })
        metrics.segmentsCommitted(items.count)
        uploads.done(items.count)
        for item in items { spool.release(item.record) }
    }

    // MARK: Disk records

    /// The stored record of a disk (nil: none yet), checked. A record that
    /// cannot be used — damaged, or with a geometry no server accepts today
    /// (written by an older one) — quarantines the disk: one log line says
    /// what is wrong, where and what to do, and the disk is refused (error
    /// 500) until the server restarts with the target fixed. Its files are
    /// left as they are. Never a crash: nothing is computed from such a record.
    func storedDisk(_ diskID: String) throws -> DiskRecord? {
        lock.lock()
        let known = quarantined[diskID]
        lock.unlock()
        if let known { throw ProtocolViolation(code: 500, known, logged: true) }
        var problem: String?
        var record: DiskRecord?
        do {
            record = try target.disk(diskID)
            if let r = record { problem = RequestChecks.storedRecordProblem(r) }
        } catch let e as TidemarkError where e.kind == .corrupt {
            problem = e.message
        }
        guard let problem else { return record }
        let message = "disk \(diskID) is quarantined on process server \(serverID): its stored record is unusable (\(problem)); the operator must repair the target (see the server's log); replication of this disk stops until then"
        lock.lock()
        let first = quarantined[diskID] == nil
        quarantined[diskID] = message
        lock.unlock()
        if first {
            metrics.error(.quarantine)
            Log.error("disk \(diskID) quarantined: its record \(target.diskRecordPath(diskID)) is unusable: \(problem). This server refuses the disk (error 500) and changes none of its files. To replicate it afresh, move \(target.diskDir(diskID)) out of \(targetPath)/disks (keep it for inspection) and restart tidemark-server, then the agent sends the whole disk again; or restore the record from a backup of the target and restart tidemark-server")
        }
        throw ProtocolViolation(code: 500, message, logged: true)
    }

    // MARK: Chunk digests

    /// The disk's digest index, opened on first use and caught up from the
    /// objects with `upTo` (default: the committed sequence); a missing or
    /// damaged index is rebuilt this way.
    func digestIndex(_ diskID: String, upTo: UInt64? = nil) throws -> DigestIndex {
        // One opener at a time: two index objects must never write one file.
        indexOpenLock.lock()
        defer { indexOpenLock.unlock() }
        lock.lock()
        let existing = digestIndexes[diskID]
        lock.unlock()
        let index = try existing ?? target.digestIndex(diskID: diskID) { problem in
            Log.warning("\(diskID): rebuilding the chunk digest index from the segment objects: \(problem)")
        }
        try index.catchUp(to: try upTo ?? target.committedSequence(diskID: diskID), from: target, digestsOf: sealedDigests)
        lock.lock()
        let kept = digestIndexes[diskID] ?? index
        digestIndexes[diskID] = kept
        lock.unlock()
        return kept
    }

    /// The chunk digests in a stored sealed segment's header (nil for format
    /// version 1), after checking that the header is the stored object's.
    func sealedDigests(_ sequence: UInt64, _ bytes: [UInt8], _ extents: [TargetExtent]) throws -> [StoredDigest]? {
        let (h, _) = try bytes.withUnsafeBytes { try SegmentHeader.decode($0) }
        let sealedExtents = h.extents.map { TargetExtent(offset: $0.offset, length: UInt64($0.length), zero: $0.kind == .zero) }
        guard h.sequence == sequence, sealedExtents == extents else {
            throw TidemarkError(.corrupt, "segment \(h.diskID) #\(sequence): its sealed header (sequence \(h.sequence), \(h.extents.count) extents) differs from the stored metadata",
                                hint: "the object is damaged or misplaced; restore it from a copy")
        }
        return Self.storedDigests(h)
    }

    /// A segment's chunk digests as the index keeps them (nil for format
    /// version 1, which has none).
    static func storedDigests(_ h: SegmentHeader) -> [StoredDigest]? {
        guard let construction = DigestConstruction(segmentVersion: h.version) else { return nil }
        return h.chunkDigests.map { StoredDigest(low: $0.low, high: $0.high, segmentVersion: construction.segmentVersion) }
    }

    /// After a commit: records the segment's chunks in the digest index. A
    /// failure only costs digest comparisons (the index is rebuilt on the
    /// next request), never data, so it is logged, not retried.
    private func updateDigestIndex(_ header: SegmentHeader, extents: [TargetExtent]) {
        do {
            // Caught up to the segment before, so this one is applied from
            // the bytes at hand, not read back from storage.
            let index = try digestIndex(header.diskID, upTo: header.sequence - 1)
            let digests = Self.storedDigests(header)
            try index.apply(sequence: header.sequence, extents: extents, digests: digests,
                            sync: header.sequence % ServerLimits.digestIndexFlushEverySegments == 0)
        } catch {
            metrics.error(.digestIndex)
            Log.warning("\(header.diskID) #\(header.sequence): updating the chunk digest index failed: \(error); it will be rebuilt from the objects")
            dropDigestIndex(header.diskID)
        }
    }

    private func dropDigestIndex(_ diskID: String) {
        indexOpenLock.lock()
        defer { indexOpenLock.unlock() }
        lock.lock()
        let index = digestIndexes.removeValue(forKey: diskID)
        lock.unlock()
        do { try index?.clear() } catch { Log.warning("\(diskID): clearing the chunk digest index failed: \(error)") }
    }

    /// Answers a digest request (its range checked by the receiver): the
    /// states of chunks [first, first + count) and the sequence they
    /// reflect. A damaged index is rebuilt from the objects and asked
    /// again; if that fails too, every chunk is 'unknown' (the agent then
    /// sends them all: slower, never wrong).
    public func chunkStates(diskID: String, firstChunk first: UInt64, count: Int) throws -> (sequence: UInt64, states: [ChunkState]) {
        for attempt in 0..<2 {
            do {
                let (seq, states) = try digestIndex(diskID).lookup(first: first, count: count)
                return (seq, states.map {
                    switch $0 {
                    case .unknown: .unknown
                    case .zero: .zero
                    case .data(let d):
                        // Written only by segments of a readable version (2 or 3).
                        .data(ChunkDigest(low: d.low, high: d.high), DigestConstruction(segmentVersion: d.segmentVersion)!)
                    }
                })
            } catch let e as TidemarkError where e.kind == .busy {
                Log.warning("\(diskID): chunk digest index: \(e); answering 'unknown'")
                break
            } catch {
                Log.warning("\(diskID): chunk digest index: \(error)\(attempt == 0 ? "; rebuilding it from the segment objects" : "; answering 'unknown'")")
                dropDigestIndex(diskID)
            }
        }
        return (try target.committedSequence(diskID: diskID), [ChunkState](repeating: .unknown, count: count))
    }

    // MARK: Prune

    /// Expires recovery points older than `retentionSeconds` on each disk.
    func prune(diskIDs: [String], retentionSeconds: Int) {
        let cutoff = SystemClock.wallUnixMs() - Int64(retentionSeconds) * 1000
        for id in diskIDs {
            do {
                let report = try target.prune(diskID: id, retainAfterUnixMs: cutoff)
                Log.debug("\(id): prune: \(report)")
            } catch {
                metrics.error(.prune)
                Log.error("\(id): pruning expired recovery points failed: \(error)")
            }
        }
    }
}

/// The staged buffer a connection reads a segment into.
extension StagedSegment: SegmentBuffer {
    public var bytesToFill: UnsafeMutableRawBufferPointer { payloadToFill }
}

/// Durable records waiting for upload, in order. Its size is bounded by the
/// spool's: every entry is a record in a spool file.
final class UploadQueue: @unchecked Sendable {
    private let cond = NSCondition()
    private var queue: [Spool.Record] = []
    private var head = 0
    private var stopped = false
    private var inFlight = 0

    func push(_ records: [Spool.Record]) {
        guard !records.isEmpty else { return }
        cond.lock()
        queue.append(contentsOf: records)
        cond.broadcast()
        cond.unlock()
    }

    /// The oldest records waiting, in order: at least one, at most
    /// `countMax`, and no more than `bytesMax` of payload unless the first
    /// alone is larger. Waits while there is none; nil once stopped.
    func nextBatch(countMax: Int, bytesMax: UInt64) -> [Spool.Record]? {
        cond.lock()
        defer { cond.unlock() }
        while head == queue.count && !stopped { cond.wait() }
        // Stopping leaves the rest in the spool: the next start uploads it.
        if stopped { return nil }
        var batch: [Spool.Record] = []
        var bytes: UInt64 = 0
        while head < queue.count, batch.count < countMax {
            let r = queue[head]
            if !batch.isEmpty && bytes + UInt64(r.location.length) > bytesMax { break }
            batch.append(r)
            bytes += UInt64(r.location.length)
            // The taken slot stays until trimmed: it must not keep the staged payload alive.
            queue[head].retained = nil
            head += 1
        }
        inFlight += batch.count
        if head > 4096 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return batch
    }

    func done(_ count: Int = 1) {
        cond.lock()
        inFlight -= count
        cond.broadcast()
        cond.unlock()
    }

    /// Puts records taken by `nextBatch` back at the head, in their order.
    func requeueFront(_ records: ArraySlice<Spool.Record>) {
        guard !records.isEmpty else { return }
        cond.lock()
        inFlight -= records.count
        if head >= records.count {
            head -= records.count
            queue.replaceSubrange(head..<(head + records.count), with: records)
        } else {
            queue.replaceSubrange(0..<head, with: records)
            head = 0
        }
        cond.unlock()
    }

    func stop() {
        cond.lock()
        stopped = true
        cond.broadcast()
        cond.unlock()
    }
}
