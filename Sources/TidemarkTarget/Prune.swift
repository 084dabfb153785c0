import Glibc
import TidemarkStorage
import TidemarkSystem

extension TargetRepository {
    /// Expires points older than `retainAfterUnixMs` and deletes the segments
    /// no retained point needs (docs/target-layout.md section 6).
    ///
    /// - A point is retained when its time is >= `retainAfterUnixMs`, when
    ///   it is the newest complete point (sequence <= committed), or when it
    ///   is not complete yet. Every other point expires: its manifest is
    ///   removed (first, so the catalog never lists a point whose data is
    ///   being pruned).
    /// - Let S be the oldest retained point's sequence. A segment with
    ///   sequence <= S whose chunks are all overwritten by later segments
    ///   with sequence <= S is dead at S and at every later point: a
    ///   tombstone is written, then the segment deleted. Tag segments of
    ///   retained points are kept. Nothing above S is touched, and no
    ///   segment is rewritten.
    public func prune(diskID: String, retainAfterUnixMs: Int64) throws -> PruneReport {
        let record = try requireDisk(diskID)
        let pruneLock = try PruneLock(self, diskID: diskID)
        defer { withExtendedLifetime(pruneLock) {} }
        var report = PruneReport(diskID: diskID, expiredPoints: [], retainedPoints: [], oldestRetainedSequence: nil,
                                 segmentsExamined: 0, segmentsPruned: 0, segmentsKept: 0, bytesFreed: 0, tombstoneBytes: 0)
        // Left-overs of crashed writers (never visible as objects).
        try store.sweepLeftovers(prefix: Self.diskName(diskID) + "/", olderThanSeconds: PruneLimits.leftoverAgeSecondsMin)

        let committed = try committedSequence(diskID: diskID)
        let all = try allPoints(diskID: diskID)
        guard let newestComplete = all.last(where: { $0.sequence <= committed }) else {
            report.retainedPoints = all
            return report
        }
        for p in all {
            if p.sequence > committed || p.timeUnixMs >= retainAfterUnixMs || p.sequence == newestComplete.sequence {
                report.retainedPoints.append(p)
            } else {
                report.expiredPoints.append(p)
            }
        }
        let horizon = report.retainedPoints.map(\.sequence).min()!
        report.oldestRetainedSequence = horizon

        // One durability barrier for all of them, where the store has one.
        try store.delete(report.expiredPoints.map { pointName(diskID, $0.sequence) })

        // Reverse pass from the horizon down: a segment is dead when every
        // chunk it writes is already covered by a later one.
        let retainedTags = Set(report.retainedPoints.map(\.sequence))
        var covered = ChunkSet(sizeBytes: record.sizeBytes, chunkSizeBytes: record.chunkSizeBytes)
        let (segments, _) = try listSequences(diskID: diskID)
        let now = Self.nowUnixMs()
        var dead: [String] = []
        for seq in segments.reversed() where seq <= horizon {
            guard let info = try segmentInfo(diskID: diskID, sequence: seq), !info.pruned else { continue }
            report.segmentsExamined += 1
            let ranges = info.extents.map { covered.chunks(of: $0) }
            let isDead = ranges.allSatisfy { covered.containsAll($0) } && !retainedTags.contains(seq)
            for r in ranges { covered.insert(r) }
            guard isDead else {
                report.segmentsKept += 1
                continue
            }
            let name = segmentName(diskID, seq)
            let size = try store.stat(name)?.size ?? 0
            // The tombstone keeps the sealed header and tag, so that a
            // recovery can still prove what the segment held.
            var pruned = info
            // A payload that is not a sealed segment (damaged, or a test's)
            // leaves a tombstone without a copy, which a recovery refuses to
            // take on trust.
            pruned.sealedHeaderCopy = (try? ObjectReader.readSealedHeaderCopy(store, name, diskID: diskID, sequence: seq))??.1
            report.tombstoneBytes += try writeTombstone(diskID: diskID, info: pruned, deadAt: horizon, now: now)
            dead.append(name)
            report.segmentsPruned += 1
            report.bytesFreed += size
        }
        // Every tombstone is durable (each put is) before any segment goes;
        // the segments go together, with one durability barrier.
        try store.delete(dead)
        return report
    }

    /// Writes the tombstone of a segment (before the segment is deleted).
    /// Returns its size.
    private func writeTombstone(diskID: String, info: StoredSegment, deadAt: UInt64, now: Int64) throws -> UInt64 {
        let copy = info.sealedHeaderCopy?.encoded ?? []
        let (header, created) = try copy.withUnsafeBytes { payload in
            let header = Envelope.encodeHeader(kind: .tombstone, diskID: diskID, sequence: info.sequence,
                                               metadata: Metadata.encodeTombstone(info, prunedAtUnixMs: now, deadAt: deadAt), payload: payload,
                                               version: EnvelopeFormat.tombstoneVersion)
            do {
                try header.withUnsafeBytes { try store.put(tombstoneName(diskID, info.sequence), ObjectContent(head: $0, tail: payload)) }
                return (header, true)
            } catch let e as ObjectStoreError where e.kind == .exists {
                return (header, false)
            }
        }
        if !created {
            // Left by an interrupted prune: it must describe this very segment.
            guard let t = try tombstone(diskID: diskID, sequence: info.sequence),
                  t.payloadChecksum == info.payloadChecksum, t.checksumVersion == info.checksumVersion, t.payloadLength == info.payloadLength, t.extents == info.extents,
                  t.sealedHeaderCopy == nil || t.sealedHeaderCopy == info.sealedHeaderCopy else {
                throw TidemarkError(.corrupt, "\(tombstonePath(diskID, info.sequence)) does not describe the segment it stands for",
                                    hint: "inspect the disk directory; the segment was not deleted")
            }
        }
        return UInt64(header.count + copy.count)
    }

    static func nowUnixMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}

public enum PruneLimits {
    /// Unfinished writes older than this are left-overs of crashed writers,
    /// which prune removes (docs/target-layout.md section 2).
    public static let leftoverAgeSecondsMin = 3600
}

/// The exclusive prune lock of one disk, held while this object lives: an
/// flock on `prune.lock` in the state directory (so processes exclude each
/// other), or, without a state directory, a mark in the repository (this
/// process only).
final class PruneLock {
    private let fd: FileDescriptor?
    private let repository: TargetRepository
    private let diskID: String

    init(_ repository: TargetRepository, diskID: String) throws {
        self.repository = repository
        self.diskID = diskID
        if let path = try repository.statePath(diskID, "prune.lock") {
            let fd = try FileDescriptor(open: path, [.readWrite, .create], mode: 0o644, purpose: "opening the prune lock")
            guard try fd.tryLockExclusive() else {
                throw TidemarkError(.busy, "another prune of disk '\(diskID)' is running (\(fd.path) is locked)",
                                    hint: "wait for it to finish")
            }
            self.fd = fd
        } else {
            guard repository.startPruning(diskID) else {
                throw TidemarkError(.busy, "another prune of disk '\(diskID)' is running in this process", hint: "wait for it to finish")
            }
            self.fd = nil
        }
    }

    deinit {
        if fd == nil { repository.stopPruning(diskID) }
    }
}
