import Glibc
import TidemarkSystem
import TidemarkTarget
import TidemarkWire

public enum RecoverLimits {
    /// Segments are opened (decrypted, decompressed) on at most this many threads.
    public static let openersMax = 8
}

public enum RecoverCommand {
    public static let defaultKeyPath = "/etc/tidemark/replication.key"

    public struct Result: Sendable {
        public var point: PointRecord
        public var bytes: UInt64
        public var path: String
        /// Sequences whose headers could not be proven under the key (older
        /// formats), accepted because the caller allowed it; empty otherwise.
        public var unprovenSequences: [UInt64] = []
        /// Epoch starts below which the agent had lost its record of earlier
        /// epochs, so the owners of the sequences below were taken from the
        /// stored headers (`HeaderProver`).
        public var lineageInferredBelow: [UInt64] = []
        /// The line tidemarkctl prints.
        public var summary: String {
            var s = "recovered point \(point.id) of \(point.diskID) (\(bytes) bytes) to \(path)"
            if !unprovenSequences.isEmpty {
                s += "\nwarning: the headers of \(unprovenSequences.count) sequences (first: \(unprovenSequences.sorted().prefix(5).map(String.init).joined(separator: ", "))) predate header MACs and were not proven under the key; the segments that were opened were authenticated"
            }
            if let f = lineageInferredBelow.first {
                s += "\nnote: the agent had lost its record of earlier numbering epochs when it numbered sequence \(f)\(lineageInferredBelow.count > 1 ? " (and \(lineageInferredBelow.count - 1) more times)" : ""); every header below was proven under the key and agreed with the epoch stored there, but a superseded sealing put in place of a whole epoch could not be told apart"
            }
            return s
        }
    }

    /// `tidemarkctl recover`: writes the image of a recovery point to a file
    /// or block device.
    ///
    /// `pointID` is a point id or "latest" (the highest sequence of the disk).
    /// A file is written under a temporary name beside `to` and renamed into
    /// place only when complete, so a failure never leaves a partial image
    /// behind; a block device that failed half way is reported as such.
    ///
    /// Before anything is written, the header of every sequence from the
    /// point down to 1 — stored segment or tombstone — is proven under the
    /// key (`HeaderProver`), and what the target's keyless metadata says of
    /// it (extents, point, geometry) must equal it; the segments read are
    /// then authenticated whole when opened. Headers of older formats carry
    /// no MAC: with `allowUnprovenHeaders` false they stop the recovery.
    public static func run(pointID: String, diskID: String?, to: String, targetDir: String, keyPath: String,
                           allowUnprovenHeaders: Bool = false, progress: ProgressReporter?) throws -> Result {
        guard let target = try TargetLocation.openExisting(targetDir) else {
            throw TidemarkError(.notFound, "target storage \(targetDir) is empty: it holds no recovery point",
                                hint: "check --target; points appear once the process server has uploaded a tagged segment")
        }
        let point = try choosePoint(pointID, diskID: diskID, target: target, targetDir: targetDir)
        guard let disk = try target.disk(point.diskID) else {
            throw TidemarkError(.corrupt, "point '\(point.id)' names disk '\(point.diskID)', which has no disk record in \(targetDir)")
        }
        let key = try loadKey(keyPath)
        guard disk.keyID == key.id else {
            throw TidemarkError(.invalidArgument,
                                "disk \(point.diskID) was sealed with key id \(Format.hex16(disk.keyID)), this key (\(keyPath)) is \(key.idHex)",
                                hint: "load the replication key the agent used for this disk: --key FILE")
        }
        // One opener (AES-GCM + zstd contexts) per core: segments are opened in parallel, ahead of the writes.
        let workers = max(1, min(RecoverLimits.openersMax, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))))
        let diskID = point.diskID
        // Plaintext buffers are reused: as many as are opened ahead or being written at once.
        let plaintext = BufferPool(keptMax: workers * MaterializeLimits.segmentsAheadPerOpener * 2 + MaterializeLimits.directWritesInFlight,
                                   alignment: MaterializeLimits.directAlignmentBytes)
        let openers: [SegmentOpen] = try (0..<workers).map { _ in
            let opener = try SegmentOpener(key: key)
            return { sequence, sealed in try openExtents(opener, sealed, diskID: diskID, sequence: sequence, buffers: plaintext) }
        }
        let destination = try Destination(to)
        let prover = HeaderProver(key: key, disk: disk, point: point, allowUnproven: allowUnprovenHeaders)

        StopSignal.install()
        do {
            try target.materialize(point: point, to: destination.writePath, openers: openers, prove: prover.prove) { done, total in
                progress?.update(done: done, total: total)
            }
            progress?.finish()
            try destination.commit()
        } catch {
            progress?.finish()
            throw destination.abandon(error)
        }
        return Result(point: point, bytes: disk.sizeBytes, path: to, unprovenSequences: prover.unproven,
                      lineageInferredBelow: prover.lineageInferredBelow)
    }

    /// Authenticates, decompresses and splits one segment into its extents.
    /// The plaintext goes into one page-aligned buffer, from which
    /// `materialize` writes the image with O_DIRECT, with no copy.
    static func openExtents(_ opener: SegmentOpener, _ sealed: UnsafeRawBufferPointer, diskID: String, sequence: UInt64,
                            buffers: BufferPool) throws -> OpenedSegment {
        if StopSignal.isRequested {
            throw TidemarkError(.state, "interrupted", hint: "run the recovery again")
        }
        var buffer: PooledBuffer?
        var length = 0
        let header = try opener.open(sealed, diskID: diskID, sequence: sequence) { n in
            length = n
            guard n > 0 else { return UnsafeMutableRawBufferPointer(start: nil, count: 0) }
            let b = buffers.take(n)
            buffer = b
            return b.bytes
        }
        let payload = buffer.map { UnsafeRawBufferPointer(rebasing: $0.bytes[0..<length]) } ?? UnsafeRawBufferPointer(start: nil, count: 0)
        var extents: [OpenedSegment.Extent] = []
        extents.reserveCapacity(header.extents.count)
        var pos = 0
        for e in header.extents {
            let n = Int(e.length)
            switch e.kind {
            case .zero:
                extents.append(.init(offset: e.offset, length: UInt64(e.length), dataStart: nil))
            case .data:
                guard pos + n <= payload.count else {
                    throw TidemarkError(.corrupt, "segment \(sequence) of disk \(diskID): its data extents need more than its \(payload.count) payload bytes")
                }
                extents.append(.init(offset: e.offset, length: UInt64(e.length), dataStart: pos))
                pos += n
            }
        }
        return try OpenedSegment(extents: extents, data: payload, storage: buffer)
    }

    static func choosePoint(_ wanted: String, diskID: String?, target: TargetRepository, targetDir: String) throws -> PointRecord {
        if let diskID, try target.disk(diskID) == nil {
            throw TidemarkError(.notFound, "target storage \(targetDir) has no disk '\(diskID)'",
                                hint: PointsCommand.knownDisksHint(target))
        }
        let complete = try target.points(diskID: diskID)
        if wanted == "latest" {
            let disks = Set(complete.map(\.diskID))
            if diskID == nil && disks.count > 1 {
                throw TidemarkError(.invalidArgument,
                                    "the target holds points of \(disks.count) disks (\(disks.sorted().prefix(5).joined(separator: ", "))); 'latest' needs --disk",
                                    hint: "tidemarkctl recover --point latest --disk ID ...; tidemarkctl points list shows the disks")
            }
            if let p = complete.max(by: { $0.sequence < $1.sequence }) { return p }
            let pending = try target.points(diskID: diskID, includeIncomplete: true)
            let scope = diskID.map { "disk '\($0)'" } ?? "any disk"
            if let p = pending.max(by: { $0.sequence < $1.sequence }) {
                let committed = try target.committedSequence(diskID: p.diskID)
                throw TidemarkError(.notFound,
                                    "no complete recovery point of \(scope) in \(targetDir): point '\(p.id)' (sequence \(p.sequence)) still misses segments after sequence \(committed)",
                                    hint: "the process server may still be uploading sequence \(committed + 1); try again later")
            }
            throw TidemarkError(.notFound, "no recovery point of \(scope) in \(targetDir)",
                                hint: "create one with tidemarkctl point create --disk DEV on the protected host")
        }
        let matches = complete.filter { $0.id == wanted }
        if matches.count > 1 {
            throw TidemarkError(.invalidArgument,
                                "point id '\(wanted)' exists for several disks (\(matches.map(\.diskID).joined(separator: ", ")))",
                                hint: "say which with --disk ID")
        }
        if let p = matches.first { return p }
        if let p = try target.points(diskID: diskID, includeIncomplete: true).first(where: { $0.id == wanted }) {
            let committed = try target.committedSequence(diskID: p.diskID)
            throw TidemarkError(.notFound,
                                "point '\(wanted)' of disk '\(p.diskID)' (sequence \(p.sequence)) cannot be materialized yet: the target holds every segment only up to sequence \(committed)",
                                hint: "the process server may still be uploading sequence \(committed + 1); if it was lost, choose an earlier point (tidemarkctl points list)")
        }
        throw TidemarkError(.notFound, "no recovery point '\(wanted)'" + (diskID.map { " of disk '\($0)'" } ?? "") + " in \(targetDir)",
                            hint: "tidemarkctl points list shows the points; --point latest picks the newest")
    }

    static func loadKey(_ path: String) throws -> ReplicationKey {
        do {
            return try ReplicationKey.load(path: path)
        } catch let e as SystemError where e.errno == ENOENT {
            throw TidemarkError(.notFound, "replication key \(path) does not exist",
                                hint: "pass --key FILE with the key the agents seal segments with; without it nothing can be recovered")
        } catch let e as SystemError where e.errno == EACCES {
            throw TidemarkError(.invalidArgument, "replication key \(path) is not readable by this user",
                                hint: "run tidemarkctl recover as root (the key file is mode 0600)")
        }
    }
}

/// Where an image goes. A regular file (or a new one) is written to a
/// temporary name in the same directory and renamed over the destination
/// when complete; a block device is written in place.
struct Destination {
    let path: String
    /// The file materialize writes (the temporary name for a file).
    let writePath: String
    /// The path renamed onto (the symlink's target for a symlink).
    let finalPath: String
    let isBlockDevice: Bool

    init(_ path: String) throws {
        self.path = path
        guard !path.isEmpty, !path.hasSuffix("/") else {
            throw TidemarkError(.invalidArgument, "--to '\(path)' is not a file or block device path")
        }
        var st = Glibc.stat()
        var lst = Glibc.stat()
        let exists = stat(path, &st) == 0
        let statErrno = errno
        let isLink = lstat(path, &lst) == 0 && lst.st_mode & S_IFMT == S_IFLNK
        if !exists && statErrno != ENOENT {
            throw SystemError(call: "stat", errno: statErrno, context: "inspecting the recovery destination \(path)")
        }
        if exists && st.st_mode & S_IFMT == S_IFBLK {
            isBlockDevice = true
            writePath = path
            finalPath = path
            return
        }
        isBlockDevice = false
        if exists && st.st_mode & S_IFMT != S_IFREG {
            throw TidemarkError(.invalidArgument, "\(path) is neither a regular file nor a block device",
                                hint: "--to takes an image file (created or replaced) or a block device")
        }
        if isLink && !exists {
            throw TidemarkError(.invalidArgument, "\(path) is a dangling symbolic link", hint: "remove it or give the real path")
        }
        var final = path
        if isLink, let resolved = realpath(path, nil) {
            final = String(cString: resolved)
            free(resolved)
        }
        finalPath = final
        let slash = final.lastIndex(of: "/")
        let dir = slash.map { $0 == final.startIndex ? "/" : String(final[..<$0]) } ?? "."
        let base = slash.map { String(final[final.index(after: $0)...]) } ?? final
        var dst = Glibc.stat()
        guard stat(dir, &dst) == 0, dst.st_mode & S_IFMT == S_IFDIR else {
            throw TidemarkError(.notFound, "the directory \(dir) of \(path) does not exist", hint: "create it first")
        }
        writePath = (dir == "/" ? "" : dir) + "/." + base + ".tidemark-partial-\(getpid())"
    }

    var directory: String {
        guard let slash = finalPath.lastIndex(of: "/") else { return "." }
        return slash == finalPath.startIndex ? "/" : String(finalPath[..<slash])
    }

    /// Puts a complete image in place.
    func commit() throws {
        guard !isBlockDevice else { return }
        _ = try syscall("rename", "moving the recovered image \(writePath) to \(finalPath)") { rename(writePath, finalPath) }
        let dir = try FileDescriptor(open: directory, .readOnly, purpose: "opening \(directory) to persist the new image's name")
        try dir.sync()
    }

    /// Cleans up after a failure; returns the error to report.
    func abandon(_ error: Error) -> Error {
        if isBlockDevice {
            return NotedError(underlying: error, note: "\(path) may have been partly overwritten: do not use it before a recovery to it succeeds")
        }
        unlink(writePath)
        return error
    }
}

/// Proves, for each sequence a recovery walks, that the target's keyless
/// metadata tells the truth: the sealed header (the segment's own, or the
/// copy its tombstone keeps) must be the one the agent sealed for this disk
/// at this sequence under this key (header MAC, format 4), and the
/// envelope's extents and point, the disk record's geometry and the point
/// manifest must all equal what it says. Anyone who can write the target
/// can recompute its keyless checksums, but not a header MAC.
final class HeaderProver: @unchecked Sendable {
    let key: ReplicationKey
    let mac: SegmentHeaderMAC
    let disk: DiskRecord
    let point: PointRecord
    let allowUnproven: Bool
    /// Sequences accepted without a proof (only with `allowUnproven`).
    private(set) var unproven: [UInt64] = []
    /// The epoch that owns the sequences being walked (`SegmentLineage`):
    /// the point's, then, below its start, the one its headers name as
    /// previous. nil before the point's header is seen.
    private var owner: (id: [UInt8], start: UInt64, previous: SegmentLineage.Previous?)?
    /// Epoch starts below which the agent had lost its record of the
    /// epochs (its state directory) when it numbered them: there the owner
    /// is taken from the stored header and the walk goes on from it.
    private(set) var lineageInferredBelow: [UInt64] = []

    init(key: ReplicationKey, disk: DiskRecord, point: PointRecord, allowUnproven: Bool) {
        self.key = key
        self.mac = SegmentHeaderMAC(key: key)
        self.disk = disk
        self.point = point
        self.allowUnproven = allowUnproven
    }

    func prove(_ info: StoredSegment, _ copy: SealedHeaderCopy?) throws {
        let seq = info.sequence
        let what = "disk '\(disk.diskID)' sequence \(seq)\(info.pruned ? " (pruned)" : "")"
        func mismatch(_ detail: String) -> TidemarkError {
            TidemarkError(.corrupt, "\(what): the target's metadata does not match the sealed header: \(detail)",
                          hint: "someone or something changed target storage; this point cannot be recovered from it as it is. Restore the object from a copy, or choose another point")
        }
        guard let copy else {
            try unprovable(seq, "\(what): its tombstone predates envelope version 3 and kept no sealed header")
            return
        }
        let proof = try copy.header.withUnsafeBytes {
            try SegmentHeaderProof.check($0, segmentBytes: Int(clamping: copy.segmentBytes), diskID: disk.diskID, sequence: seq, key: key, mac: mac)
        }
        let h = proof.header
        guard h.diskSizeBytes == disk.sizeBytes, h.chunkSizeBytes == disk.chunkSizeBytes else {
            throw mismatch("sealed for a disk of \(h.diskSizeBytes) bytes in chunks of \(h.chunkSizeBytes), the disk record says \(disk.sizeBytes) and \(disk.chunkSizeBytes)")
        }
        let sealed = h.extents.map { TargetExtent(offset: $0.offset, length: UInt64($0.length), zero: $0.kind == .zero) }
        guard sealed == info.extents else {
            throw mismatch("\(info.extents.count) extents in the target's metadata, \(sealed.count) sealed\(Array(zip(info.extents, sealed)).firstIndex { $0.0 != $0.1 }.map { " (first difference at extent \($0))" } ?? "")")
        }
        let sealedPoint = h.point.map { PointRecord(id: $0.id, diskID: disk.diskID, pointClass: $0.pointClass.rawValue, timeUnixMs: $0.timeUnixMs, sequence: seq) }
        guard sealedPoint == info.point else {
            throw mismatch("the target's metadata names point \(info.point.map { "'\($0.id)' (\($0.pointClass), \($0.timeUnixMs))" } ?? "none"), the sealed header \(sealedPoint.map { "'\($0.id)' (\($0.pointClass), \($0.timeUnixMs))" } ?? "none")")
        }
        if seq == point.sequence {
            guard let sealedPoint, sealedPoint == point else {
                throw mismatch("the point manifest names point '\(point.id)' (\(point.pointClass), \(point.timeUnixMs)) at this sequence, the sealed header \(sealedPoint.map { "'\($0.id)' (\($0.pointClass), \($0.timeUnixMs))" } ?? "no point")")
            }
        }
        if !proof.authenticated {
            try unprovable(seq, "\(what) is of segment format \(h.version), whose header carries no MAC")
            return
        }
        try checkLineage(h, what: what, mismatch: mismatch)
    }

    /// The walk goes from the point down: the header at each sequence must
    /// be sealed by the epoch that owns it. A sealing of an older epoch at
    /// a sequence a later epoch renumbered was never stored: one put in
    /// place of the stored segment is refused here.
    private func checkLineage(_ h: SegmentHeader, what: String, mismatch: (String) -> TidemarkError) throws {
        guard let lineage = h.lineage else { return }
        let seq = h.sequence
        if owner == nil {
            guard seq == point.sequence else { throw mismatch("the walk did not start at the point's sequence") }
            owner = (lineage.epochID, lineage.epochStart, lineage.previous)
        }
        while let o = owner, seq < o.start {
            switch o.previous {
            case .known(let id, let start)?: owner = (id, start, nil)
            case .unknown?:
                // Every header below is still proven and must agree with the
                // epoch taken here; only a superseded sealing put in place of
                // a whole epoch would go unnoticed (reported in the result).
                lineageInferredBelow.append(o.start)
                owner = (lineage.epochID, lineage.epochStart, nil)
            case .none?, nil:
                throw mismatch("sequence \(seq) lies below the epoch starting at \(o.start), which names no earlier epoch")
            }
        }
        guard let o = owner, lineage.epochID == o.id, lineage.epochStart == o.start else {
            throw mismatch("sealed by the numbering epoch \(lineage.epochID.prefix(4).map { String($0, radix: 16) }.joined())… starting at \(lineage.epochStart), but the epoch that owns this sequence starts at \(owner?.start ?? 0): a superseded sealing (one the agent replaced before it was stored) was put in place of the stored one")
        }
        if let known = o.previous {
            guard known == lineage.previous else { throw mismatch("its epoch names a different previous epoch than the rest of the epoch") }
        } else {
            owner?.previous = lineage.previous
        }
    }

    private func unprovable(_ seq: UInt64, _ reason: String) throws {
        guard allowUnproven else {
            throw TidemarkError(.corrupt, "\(reason): recovery cannot prove that the target's record of it is the agent's",
                                hint: "this target holds objects written before Tidemark proved segment headers; if you trust that nobody altered it, recover with --allow-unproven-headers (the segments that are opened are still authenticated)")
        }
        unproven.append(seq)
    }
}
