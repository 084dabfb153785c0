import Glibc
import TidemarkSystem

extension LocalDirectoryTarget {
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
            guard let info = try segmentInfo(diskID: diskID, sequence: seq) else {
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

        // 2. The destination.
        var st = Glibc.stat()
        let exists = stat(path, &st) == 0
        let isBlock = exists && st.st_mode & S_IFMT == S_IFBLK
        let fd: FileDescriptor
        if isBlock {
            let info = try BlockDeviceInfo.inspect(path)
            guard info.sizeBytes >= record.sizeBytes else {
                throw TidemarkError(.invalidArgument, "\(path) holds \(info.sizeBytes) bytes, disk '\(diskID)' needs \(record.sizeBytes)",
                                    hint: "use a block device at least as large as the protected disk")
            }
            fd = try FileDescriptor(open: path, .readWrite, purpose: "opening the recovery device")
        } else {
            guard !exists || st.st_mode & S_IFMT == S_IFREG else {
                throw TidemarkError(.invalidArgument, "\(path) is neither a regular file nor a block device")
            }
            fd = try FileDescriptor(open: path, [.readWrite, .create, .truncate], mode: 0o600, purpose: "creating the recovery image")
            try fd.truncate(to: record.sizeBytes)
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
            if isBlock { try fd.zeroOut(offset: r.lowerBound, length: UInt64(r.count)) }
            done += UInt64(r.count)
        }
        progress(done, total)

        // 4. Data, oldest segment first (ranges are disjoint, order is free).
        for step in plan.reversed() {
            let sealed = try readSegment(diskID: diskID, sequence: step.sequence)
            let opened = try open(step.sequence, sealed)
            let where_ = "disk '\(diskID)' sequence \(step.sequence)"
            guard opened.count == step.extents.count else {
                throw TidemarkError(.corrupt, "\(where_): the opened segment has \(opened.count) extents, its stored metadata \(step.extents.count)")
            }
            for (i, e) in step.extents.enumerated() {
                let o = opened[i]
                guard o.offset == e.offset, o.length == e.length, (o.bytes == nil) == e.zero,
                      o.bytes.map({ UInt64($0.count) == e.length }) ?? true else {
                    throw TidemarkError(.corrupt, "\(where_) extent \(i): opened as offset \(o.offset) length \(o.length) \(o.bytes == nil ? "zero" : "data (\(o.bytes!.count) bytes)"), stored metadata says offset \(e.offset) length \(e.length) \(e.zero ? "zero" : "data")",
                                        hint: "the segment's plaintext metadata does not match its sealed content; it is not used")
                }
                guard let bytes = o.bytes else { continue }
                try bytes.withUnsafeBytes { buf in
                    for r in step.live[i] {
                        let from = Int(r.lowerBound - e.offset)
                        try fd.write(UnsafeRawBufferPointer(rebasing: buf[from..<(from + r.count)]), at: r.lowerBound)
                        done += UInt64(r.count)
                    }
                }
            }
            progress(done, total)
        }
        try fd.dataSync()
        guard done == total else {
            throw TidemarkError(.state, "materializing point '\(point.id)' of disk '\(diskID)' placed \(done) of \(total) bytes (a bug)")
        }
        progress(done, total)
    }
}
