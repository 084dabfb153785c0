import Glibc
import TidemarkStorage
import TidemarkSystem
import TidemarkTracking

/// Where a mirror is written: a regular file (made sparse on a full copy) or
/// a block device at least as large as the source, through an `ImageWriter`
/// (O_DIRECT writes in flight while the source is read: buffered writes
/// followed by fdatasync run at a quarter of the device's direct write rate
/// here).
public final class MirrorTarget {
    public let path: String
    public let image: ImageWriter
    /// Names this target in the `.hrl` (target_id): a different target means a full copy.
    public let identity: String

    public var fd: FileDescriptor { image.descriptor }
    public var isBlockDevice: Bool { image.isBlockDevice }

    public init(path: String, sourceSizeBytes: UInt64) throws {
        self.path = path
        let isDevice = (try? BlockDeviceInfo.inspect(path)) != nil
        if !isDevice {
            let dir = parentDirectory(path)
            guard fileExists(dir) else {
                throw TidemarkError(.notFound, "the directory of mirror target \(path) does not exist",
                                    hint: "create \(dir) first")
            }
        }
        image = try ImageWriter(path: path, requiredSizeBytes: sourceSizeBytes, mode: .keep, role: "mirror target",
                                writesInFlight: Limits.writeQueueDepth, writeBufferBytes: Limits.writeBufferBytes) { deviceBytes in
            TidemarkError(.invalidArgument, "mirror target \(path) holds \(deviceBytes) bytes; the source needs \(sourceSizeBytes)",
                          hint: "use a larger device, or a file path")
        }
        if let dev = image.device {
            identity = "blockdev:\(dev.identity)"
        } else {
            identity = "file:\(realpathString(path) ?? path);ino=\(try image.descriptor.stat().st_ino)"
        }
        if !image.writesDirect {
            Log.info("\(path): O_DIRECT not available; the mirror writes through the page cache")
        }
    }

    /// Writes `data` at `offset`: with O_DIRECT when offset, length and
    /// memory are aligned, else buffered (made durable by `sync`).
    func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws {
        try image.write(data, at: offset)
    }

    /// The zero-copy read → write pipeline for a first copy, when the target
    /// takes O_DIRECT and io_uring works; nil otherwise.
    func copyPipeline(sourcePath: String) throws -> CopyPipeline? {
        guard let directFD = image.directDescriptor else { return nil }
        return try CopyPipeline(sourcePath: sourcePath, target: directFD, bufferedTarget: image.descriptor,
                                queueDepth: Limits.readQueueDepth, bufferBytes: Limits.readRequestBytesMax)
    }

    /// Makes every write durable.
    func sync() throws {
        try image.sync()
    }

    /// Before a full copy: a file becomes all holes of the source's size, so
    /// zero chunks need no write at all.
    func prepareForFullCopy(sizeBytes: UInt64) throws {
        try image.resetToHoles(sizeBytes: sizeBytes)
    }

    /// Makes a range read as zeros: a hole in a file, BLKZEROOUT on a device.
    func zero(offset: UInt64, length: UInt64) throws {
        try image.zero(offset: offset, length: length)
    }
}

/// Coalesces the zero chunks met during a first copy into runs, zeroed on a
/// block-device target (a fresh file target is all holes already).
struct ZeroRuns {
    let target: MirrorTarget
    var pending: (offset: UInt64, length: UInt64)?

    mutating func add(offset: UInt64, length: UInt64) throws {
        guard target.isBlockDevice else { return }
        if let p = pending, p.offset + p.length == offset {
            pending = (p.offset, p.length + length)
        } else {
            try flush()
            pending = (offset, length)
        }
    }

    mutating func flush() throws {
        if let p = pending { try target.zero(offset: p.offset, length: p.length) }
        pending = nil
    }
}

/// Keeps a target a continuous mirror of a tracked disk.
public final class Mirror {
    public let session: DiskSession
    public let target: MirrorTarget
    let reader: ChunkReader
    let chunkBytes: UInt64

    public struct Stats: Sendable, Equatable {
        public var bytesRead: UInt64 = 0
        public var bytesWritten: UInt64 = 0
        public var zeroChunksSkipped: UInt64 = 0
        public var chunksCopied: UInt64 = 0
    }
    public private(set) var stats = Stats()

    public init(session: DiskSession, targetPath: String, readOptions: ChunkReaderOptions? = nil) throws {
        self.session = session
        self.chunkBytes = UInt64(session.hrl.header.chunkSizeBytes)
        self.target = try MirrorTarget(path: targetPath, sourceSizeBytes: session.device.sizeBytes)
        var options = readOptions ?? ChunkReaderOptions()
        if readOptions == nil {
            options.queueDepth = Limits.readQueueDepth
            options.maxRequestBytes = Limits.readRequestBytesMax
        }
        self.reader = try ChunkReader(path: session.device.path, options: options) { Log.warning($0) }
    }

    /// True when the target does not hold a consistent copy to build on.
    public var needsFullCopy: Bool {
        let h = session.hrl.header
        return h.state == .resyncRequired || h.targetID != target.identity
    }

    /// Copies the whole disk, skipping zero chunks, then marks the mirror
    /// current as of the copy's start. Writes during the copy stay in the
    /// kernel map and are copied by the next delta cycle.
    public func fullCopy() throws {
        let size = session.device.sizeBytes
        try session.drain()
        // The copy is only trusted once complete: until then the state stays
        // resync-required (or becomes it, if the target changed).
        if session.hrl.header.state != .resyncRequired {
            try session.hrl.setState(.resyncRequired, reason: .targetChanged, text: "full copy to \(target.path) in progress")
        }
        try session.hrl.setTargetID("")
        try target.prepareForFullCopy(sizeBytes: size)
        var zeros = ZeroRuns(target: target)
        if let pipeline = try target.copyPipeline(sourcePath: session.device.path) {
            try pipeline.run(sizeBytes: size) { offset, bytes in
                try dataRuns(offset, bytes, &zeros)
            }
        } else {
            try reader.read([ByteExtent(offset: 0, length: size)]) { offset, bytes in
                for r in try dataRuns(offset, bytes, &zeros) {
                    try target.write(UnsafeRawBufferPointer(rebasing: bytes[r]), at: offset + UInt64(r.lowerBound))
                }
            }
        }
        try zeros.flush()
        try target.sync()
        // No drain ran during the copy, so the .hrl holds exactly the bits from
        // before it began: all covered by the copy.
        try session.hrl.clearAll()
        try session.hrl.setTargetID(target.identity)
        try session.hrl.setState(.tracking, reason: .none, text: "")
        Log.info("\(session.device.path): full copy to \(target.path) done: \(stats.bytesWritten) bytes written, \(stats.zeroChunksSkipped) zero chunks skipped")
    }

    /// The runs of non-zero chunks of a piece of the source (to be written),
    /// counting what is skipped; zero chunks are holes in a fresh file, and
    /// are zeroed explicitly (in coalesced runs) on a block device.
    private func dataRuns(_ offset: UInt64, _ bytes: UnsafeRawBufferPointer, _ zeros: inout ZeroRuns) throws -> [Range<Int>] {
        stats.bytesRead += UInt64(bytes.count)
        let chunk = Int(chunkBytes)
        var runs: [Range<Int>] = []
        var runStart = -1
        var pos = 0
        while pos < bytes.count {
            let n = min(chunk, bytes.count - pos)
            if isAllZero(UnsafeRawBufferPointer(rebasing: bytes[pos..<pos + n])) {
                if runStart >= 0 { runs.append(runStart..<pos); runStart = -1 }
                stats.zeroChunksSkipped += 1
                try zeros.add(offset: offset + UInt64(pos), length: UInt64(n))
            } else {
                if runStart < 0 { runStart = pos }
                stats.chunksCopied += 1
            }
            pos += n
        }
        if runStart >= 0 { runs.append(runStart..<bytes.count) }
        for r in runs { stats.bytesWritten += UInt64(r.count) }
        return runs
    }

    private struct StopIteration: Error {}

    /// One delta cycle: drain, copy up to `Limits.mirrorCycleBytesMax` of
    /// dirty chunks, sync the target, clear those bits. Returns the chunks
    /// drained from the kernel and the chunks copied.
    @discardableResult
    public func deltaCycle() throws -> (drained: UInt64, copied: UInt64) {
        let drained = try session.drain().chunks
        var extents: [ChunkExtent] = []
        var bytes: UInt64 = 0
        let maxChunks = max(1, Limits.mirrorCycleBytesMax / chunkBytes)
        do {
            try session.hrl.forEachDirtyExtent(maxChunksPerExtent: maxChunks) { e in
                extents.append(e)
                bytes += e.chunkCount * chunkBytes
                if bytes >= Limits.mirrorCycleBytesMax { throw StopIteration() }
            }
        } catch is StopIteration {}
        guard !extents.isEmpty else { return (drained, 0) }
        let size = session.device.sizeBytes
        let byteExtents = extents.map { e -> ByteExtent in
            let off = e.firstChunk * chunkBytes
            return ByteExtent(offset: off, length: min(e.chunkCount * chunkBytes, size - off))
        }
        try reader.read(byteExtents) { offset, data in
            stats.bytesRead += UInt64(data.count)
            try target.write(data, at: offset)
            stats.bytesWritten += UInt64(data.count)
        }
        try target.sync()
        var clear = SparseWords()
        var copied: UInt64 = 0
        for e in extents {
            copied += e.chunkCount
            clear.appendChunks(first: e.firstChunk, count: e.chunkCount)
        }
        try session.hrl.persistClear(clear)
        stats.chunksCopied += copied
        return (drained, copied)
    }

    /// Copies until the mirror is current: a full copy if needed, then delta
    /// cycles until one finds nothing new.
    public func runOnce() throws {
        if needsFullCopy { try fullCopy() }
        for _ in 0..<Limits.mirrorOnceCyclesMax {
            let r = try deltaCycle()
            if try r.copied == 0 && r.drained == 0 && session.hrl.dirtyCount() == 0 { return }
            if StopSignal.isRequested { return }
        }
        throw TidemarkError(.state, "the mirror did not converge after \(Limits.mirrorOnceCyclesMax) cycles: the disk keeps changing",
                            hint: "run without --once to mirror continuously")
    }

    /// Mirrors continuously until SIGTERM/SIGINT.
    public func runContinuously(intervalMs: Int) throws {
        if needsFullCopy { try fullCopy() }
        println("\(session.device.path) → \(target.path): mirror current; mirroring continuously")
        while !StopSignal.isRequested {
            let r = try deltaCycle()
            if r.copied > 0 { Log.debug("\(session.device.path): copied \(r.copied) chunks") }
            if r.copied == 0 { StopSignal.sleep(milliseconds: intervalMs) }
        }
        try deltaCycle()
    }
}
