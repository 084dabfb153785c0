import Glibc
import TidemarkSystem

/// Writes a disk image to a regular file or a block device: the agent's
/// mirror, a recovery's materialize, and later failback.
///
/// Data goes through O_DIRECT writes with several in flight (an
/// `AsyncWriter`: no copy through the page cache, no writeback storm at the
/// end) when the destination takes them, for pieces whose offset and length
/// are multiples of `directAlignmentBytes`; other pieces (a disk's odd
/// tail), and every piece where O_DIRECT is refused (tmpfs), are written
/// buffered. Zero ranges become holes in a file and are zeroed
/// (BLKZEROOUT) on a device. Nothing is durable before `sync()`.
///
/// Used by one thread at a time. Memory: `writesInFlight × writeBufferBytes`
/// of write buffers, plus the callers' buffers written without a copy
/// (held until written).
public final class ImageWriter {
    /// What to do with a regular file on opening.
    public enum FileMode: Sendable {
        /// Open it, creating it empty when missing; keep its contents.
        case keep
        /// Create it or cut it to nothing, then extend it to this many
        /// bytes: all holes, so every range reads as zeros.
        case holes(sizeBytes: UInt64)
    }

    /// Offset, length and (for writes without a copy) memory alignment a
    /// piece needs to go the O_DIRECT way.
    public static let directAlignmentBytes = 4096

    public let path: String
    public let isBlockDevice: Bool
    /// The device, for a block device.
    public let device: BlockDeviceInfo?
    /// The destination opened for buffered I/O.
    public let descriptor: FileDescriptor
    /// The destination opened with O_DIRECT; nil where refused.
    public let directDescriptor: FileDescriptor?
    private let writer: AsyncWriter?

    /// Opens `path`: an existing block device of at least
    /// `requiredSizeBytes` (else the error `tooSmall(device size)`), or a
    /// regular file (created when missing, mode 0600) treated per `mode`.
    /// `role` names the destination in messages ("mirror target").
    public init(path: String, requiredSizeBytes: UInt64, mode: FileMode, role: String,
                writesInFlight: Int, writeBufferBytes: Int, tooSmall: (UInt64) -> any Error) throws {
        self.path = path
        var st = Glibc.stat()
        let exists = stat(path, &st) == 0
        if exists && st.st_mode & S_IFMT == S_IFBLK {
            let info = try BlockDeviceInfo.inspect(path)
            guard info.sizeBytes >= requiredSizeBytes else { throw tooSmall(info.sizeBytes) }
            descriptor = try FileDescriptor(open: path, .readWrite, purpose: "opening the \(role)")
            isBlockDevice = true
            device = info
        } else {
            guard !exists || st.st_mode & S_IFMT == S_IFREG else {
                throw TidemarkError(.invalidArgument, "\(role) \(path) is neither a regular file nor a block device")
            }
            switch mode {
            case .keep:
                descriptor = try FileDescriptor(open: path, [.readWrite, .create], mode: 0o600, purpose: "opening the \(role)")
            case .holes(let size):
                descriptor = try FileDescriptor(open: path, [.readWrite, .create, .truncate], mode: 0o600, purpose: "creating the \(role)")
                try descriptor.truncate(to: size)
            }
            // Checked on the open file too: the path may have changed since stat.
            let opened = try descriptor.stat()
            guard opened.st_mode & S_IFMT == S_IFREG else {
                throw TidemarkError(.invalidArgument, "\(role) \(path) is neither a regular file nor a block device")
            }
            isBlockDevice = false
            device = nil
        }
        directDescriptor = try? FileDescriptor(open: path, [.readWrite, .direct], purpose: "opening the \(role) for direct I/O")
        writer = try directDescriptor.map { try AsyncWriter(fd: $0, queueDepth: writesInFlight, bufferBytes: writeBufferBytes) }
    }

    /// True when aligned pieces go through O_DIRECT.
    public var writesDirect: Bool { writer != nil }

    /// Writes `data` at `offset`: with O_DIRECT when offset and length are
    /// aligned (copied into the writer's buffers), else buffered.
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws {
        let a = Self.directAlignmentBytes
        if let writer, offset % UInt64(a) == 0, data.count % a == 0 {
            try writer.write(data, at: offset)
            return
        }
        try descriptor.write(data, at: offset)
    }

    /// As `write`, but memory aligned too is written straight from `data`,
    /// with no copy: `data` must stay valid and unchanged while `keeper`
    /// lives; the writer holds `keeper` until the write has completed.
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, keeping keeper: AnyObject) throws {
        let a = Self.directAlignmentBytes
        guard let writer, offset % UInt64(a) == 0, data.count % a == 0 else {
            try descriptor.write(data, at: offset)
            return
        }
        if let base = data.baseAddress, UInt(bitPattern: base) % UInt(a) == 0 {
            try writer.write(data, at: offset, keeping: keeper)
        } else {
            try writer.write(data, at: offset)
        }
    }

    /// Makes a range read as zeros: a hole in a file, BLKZEROOUT on a device.
    public func zero(offset: UInt64, length: UInt64) throws {
        guard length > 0 else { return }
        if isBlockDevice {
            try descriptor.zeroOut(offset: offset, length: length)
        } else {
            try descriptor.punchHole(at: offset, length: length)
        }
    }

    /// Makes a range of an image just made all holes read as zeros: nothing
    /// to do in a file, BLKZEROOUT on a device.
    public func zeroFresh(offset: UInt64, length: UInt64) throws {
        if isBlockDevice, length > 0 { try descriptor.zeroOut(offset: offset, length: length) }
    }

    /// Makes a file all holes of `sizeBytes` (cut to nothing, then
    /// extended); a device is left as it is (its zero ranges need
    /// `zeroFresh`).
    public func resetToHoles(sizeBytes: UInt64) throws {
        guard !isBlockDevice else { return }
        try descriptor.truncate(to: 0)
        try descriptor.truncate(to: sizeBytes)
    }

    /// Starts writeback of buffered writes without waiting for it, so a
    /// later `sync` has less to do.
    public func startWriteback() throws {
        try descriptor.startWriteback()
    }

    /// Makes every write durable (direct writes too: fdatasync also covers
    /// the block allocations they made).
    public func sync() throws {
        try writer?.flush()
        try descriptor.dataSync()
    }
}
