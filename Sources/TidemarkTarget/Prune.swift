import Glibc
import TidemarkSystem

extension LocalDirectoryTarget {
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
        let lockFD = try FileDescriptor(open: diskDir(diskID) + "/prune.lock", [.readWrite, .create], mode: 0o644,
                                        purpose: "opening the prune lock")
        guard try lockFD.tryLockExclusive() else {
            throw TidemarkError(.busy, "another prune of disk '\(diskID)' is running (\(lockFD.path) is locked)",
                                hint: "wait for it to finish")
        }
        var report = PruneReport(diskID: diskID, expiredPoints: [], retainedPoints: [], oldestRetainedSequence: nil,
                                 segmentsExamined: 0, segmentsPruned: 0, segmentsKept: 0, bytesFreed: 0, tombstoneBytes: 0)
        try removeStaleTemporaries(diskID: diskID)

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

        for p in report.expiredPoints {
            try ObjectFiles.remove(pointPath(diskID, p.sequence), syncDir: false)
        }
        if !report.expiredPoints.isEmpty { try ObjectFiles.syncDirectory(pointsDir(diskID)) }

        // Reverse pass from the horizon down: a segment is dead when every
        // chunk it writes is already covered by a later one.
        let retainedTags = Set(report.retainedPoints.map(\.sequence))
        var covered = ChunkSet(sizeBytes: record.sizeBytes, chunkSizeBytes: record.chunkSizeBytes)
        let (segments, _) = try listSequences(diskID: diskID)
        let now = Self.nowUnixMs()
        var deleted = false
        for seq in segments.reversed() where seq <= horizon {
            guard let info = try segmentInfo(diskID: diskID, sequence: seq), !info.pruned else { continue }
            report.segmentsExamined += 1
            let ranges = info.extents.map { covered.chunks(of: $0) }
            let dead = ranges.allSatisfy { covered.containsAll($0) } && !retainedTags.contains(seq)
            for r in ranges { covered.insert(r) }
            guard dead else {
                report.segmentsKept += 1
                continue
            }
            let path = segmentPath(diskID, seq)
            let size = try ObjectFiles.size(path) ?? 0
            // The tombstone keeps the sealed header and tag, so that a
            // recovery can still prove what the segment held.
            var pruned = info
            // A payload that is not a sealed segment (damaged, or a test's)
            // leaves a tombstone without a copy, which a recovery refuses to
            // take on trust.
            pruned.sealedHeaderCopy = (try? ObjectFiles.readSealedHeaderCopy(path, diskID: diskID, sequence: seq))??.1
            report.tombstoneBytes += try writeTombstone(diskID: diskID, info: pruned, deadAt: horizon, now: now)
            try ObjectFiles.remove(path, syncDir: false)
            deleted = true
            report.segmentsPruned += 1
            report.bytesFreed += size
        }
        if deleted { try ObjectFiles.syncDirectory(segmentsDir(diskID)) }
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
            return (header, try ObjectFiles.create(dir: tombstonesDir(diskID), name: Self.objectName(info.sequence, ".tomb"), header: header, payload: payload))
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

    /// Temporary files older than an hour are left-overs of crashed writers.
    private func removeStaleTemporaries(diskID: String) throws {
        let cutoff = time(nil) - 3600
        for dir in [diskDir(diskID), segmentsDir(diskID), tombstonesDir(diskID), pointsDir(diskID)] {
            for name in try ObjectFiles.list(dir) ?? [] where name.hasPrefix(ObjectFiles.tempPrefix) {
                var st = Glibc.stat()
                if lstat(dir + "/" + name, &st) == 0, st.st_mtim.tv_sec < cutoff {
                    _ = unlink(dir + "/" + name)
                }
            }
        }
    }

    static func nowUnixMs() -> Int64 { SystemClock.wallUnixMs() }
}
