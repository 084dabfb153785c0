import CTidemarkSystem
import Glibc
import Synchronization

/// An owned file descriptor, closed on deinit. The corresponding C calls are
/// `open`, `pread`, `pwrite`, `fdatasync`, `close`.
public final class FileDescriptor: @unchecked Sendable {
    public let rawValue: Int32
    public let path: String

    public struct Flags: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let readOnly = Flags([])
        public static let writeOnly = Flags(rawValue: O_WRONLY)
        public static let readWrite = Flags(rawValue: O_RDWR)
        public static let create = Flags(rawValue: O_CREAT)
        public static let exclusive = Flags(rawValue: O_EXCL)
        public static let truncate = Flags(rawValue: O_TRUNC)
        public static let direct = Flags(rawValue: tm_O_DIRECT)
        public static let noFollow = Flags(rawValue: O_NOFOLLOW)
        public static let directory = Flags(rawValue: O_DIRECTORY)
        /// Opening a FIFO does not wait for its other end.
        public static let nonBlocking = Flags(rawValue: O_NONBLOCK)
    }

    public init(takingOwnershipOf fd: Int32, path: String) {
        precondition(fd >= 0)
        self.rawValue = fd
        self.path = path
    }

    /// Opens `path`. The corresponding C function is `open` (with O_CLOEXEC).
    public convenience init(open path: String, _ flags: Flags, mode: mode_t = 0o600, purpose: String = "opening") throws {
        let fd = tm_open(path, flags.rawValue, mode)
        if fd < 0 {
            throw SystemError(call: "open", errno: -fd, context: "\(purpose) \(path)")
        }
        self.init(takingOwnershipOf: fd, path: path)
    }

    deinit { _ = Glibc.close(rawValue) }

    /// Reads exactly `buffer.count` bytes at `offset`, or fewer only at end of file.
    @discardableResult
    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws -> Int {
        var done = 0
        while done < buffer.count {
            let n = try syscall("pread", "reading \(path) at \(offset + UInt64(done))") {
                Glibc.pread(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            if n == 0 { break }
            done += n
        }
        return done
    }

    /// Writes all of `buffer` at `offset`.
    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws {
        var done = 0
        while done < buffer.count {
            let n = try syscall("pwrite", "writing \(path) at \(offset + UInt64(done))") {
                Glibc.pwrite(rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            }
            precondition(n > 0, "pwrite returned 0 for a non-empty buffer")
            done += n
        }
    }

    /// Makes written data durable. A failure here is fatal for the data
    /// written since the last successful sync: callers must not retry and
    /// trust it (the kernel may have dropped the dirty pages).
    public func dataSync() throws {
        _ = try syscall("fdatasync", "flushing \(path) to stable storage") { Glibc.fdatasync(rawValue) }
    }

    public func sync() throws {
        _ = try syscall("fsync", "flushing \(path) to stable storage") { Glibc.fsync(rawValue) }
    }

    /// Turns O_DIRECT on or off for this open file (`fcntl(F_SETFL)`).
    public func setDirect(_ on: Bool) throws {
        let flags = try syscall("fcntl(F_GETFL)", "inspecting \(path)") { fcntl(rawValue, F_GETFL) }
        _ = try syscall("fcntl(F_SETFL)", "switching direct I/O \(on ? "on" : "off") for \(path)") {
            fcntl(rawValue, F_SETFL, on ? flags | tm_O_DIRECT : flags & ~tm_O_DIRECT)
        }
    }

    public func truncate(to size: UInt64) throws {
        _ = try syscall("ftruncate", "resizing \(path) to \(size) bytes") { Glibc.ftruncate(rawValue, off_t(size)) }
    }

    public func stat() throws -> Glibc.stat {
        var st = Glibc.stat()
        _ = try syscall("fstat", "inspecting \(path)") { Glibc.fstat(rawValue, &st) }
        return st
    }

    /// Like `tryLockExclusive()`, but keeps trying for up to `graceMs`: a
    /// lock released by closing a descriptor stays held while a child being
    /// spawned at that instant still shares the open file (between fork and
    /// exec), so a holder that just let go is not mistaken for a live one.
    public func tryLockExclusive(graceMs: Int) throws -> Bool {
        let deadline = monotonicNanoseconds() + UInt64(graceMs) * 1_000_000
        while true {
            if try tryLockExclusive() { return true }
            if monotonicNanoseconds() >= deadline { return false }
            usleep(2_000)
        }
    }

    /// Takes an exclusive advisory lock without waiting; returns false if
    /// another open file description holds it. The corresponding C call is
    /// `flock(LOCK_EX|LOCK_NB)`.
    public func tryLockExclusive() throws -> Bool {
        while true {
            let r = tm_flock_exclusive_nb(rawValue)
            if r == 0 { return true }
            let e = -r
            if e == EINTR { continue }
            if e == EWOULDBLOCK { return false }
            throw SystemError(call: "flock", errno: e, context: "locking \(path)")
        }
    }

    /// Zeroes a range of a block device (BLKZEROOUT).
    /// Freezes the filesystem this (directory) descriptor is on: writes
    /// block until `thawFilesystem`. The corresponding C call is `ioctl(FIFREEZE)`.
    public func freezeFilesystem() throws {
        try shimcall("ioctl(FIFREEZE)", "freezing the filesystem at \(path)") { tm_fs_freeze(rawValue) }
    }

    /// Writes back the dirty data of the filesystem this descriptor is on. The corresponding C call is `syncfs`.
    public func syncFilesystem() throws {
        try shimcall("syncfs", "syncing the filesystem at \(path)") { tm_syncfs(rawValue) }
    }

    /// Starts writeback of the file's dirty pages without waiting for it
    /// (a later fdatasync has less to do). The corresponding C call is
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`.
    public func startWriteback() throws {
        try shimcall("sync_file_range", "starting writeback of \(path)") { tm_start_writeback(rawValue) }
    }

    /// The corresponding C call is `ioctl(FITHAW)`.
    public func thawFilesystem() throws {
        try shimcall("ioctl(FITHAW)", "thawing the filesystem at \(path)") { tm_fs_thaw(rawValue) }
    }

    public func zeroOut(offset: UInt64, length: UInt64) throws {
        try shimcall("ioctl(BLKZEROOUT)", "zeroing \(length) bytes of \(path) at \(offset)") {
            tm_blk_zeroout(rawValue, offset, length)
        }
    }

    /// Punches a hole (keeps the size): the range reads back as zeros.
    public func punchHole(at offset: UInt64, length: UInt64) throws {
        try shimcall("fallocate(PUNCH_HOLE)", "deallocating \(length) bytes of \(path) at \(offset)") {
            tm_punch_hole(rawValue, offset, length)
        }
    }
}

/// A page-aligned buffer, reused across I/Os (O_DIRECT needs alignment).
public final class AlignedBuffer: @unchecked Sendable {
    public let count: Int
    public let alignment: Int
    public let pointer: UnsafeMutableRawPointer

    /// With `zeroed: false` the bytes are left as the allocator gave them:
    /// for a buffer the caller fills completely before reading it.
    /// A buffer of 2 MiB or more is aligned to 2 MiB and asks for
    /// transparent huge pages (MADV_HUGEPAGE: Debian's kernels give them
    /// only to regions that ask): a segment's buffer is then 2 pages instead
    /// of 1024, which the CPU's TLB and the kernel's pinning of O_DIRECT
    /// pages both see (about 1–2 CPU-s of ~20 per initial replication of
    /// the benchmark's disk, BENCHMARKS.md).
    public init(count: Int, alignment: Int = 4096, zeroed: Bool = true) {
        precondition(count > 0 && alignment > 0 && alignment & (alignment - 1) == 0)
        let huge = 2 << 20
        let aligned = count >= huge ? max(alignment, huge) : alignment
        self.count = count
        self.alignment = aligned
        self.pointer = UnsafeMutableRawPointer.allocate(byteCount: count, alignment: aligned)
        if count >= huge {
            // Advice only: where the kernel has no huge pages it uses small ones.
            _ = madvise(pointer, count / huge * huge, 14 /* MADV_HUGEPAGE */)
        }
        if zeroed { self.pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count) }
    }

    deinit { pointer.deallocate() }

    /// Set when the kernel may still write into the buffer (a read that
    /// could not be reaped, see `ChunkReader`): it is kept alive forever
    /// and a `BufferPool` never hands it out again.
    public var isAbandoned: Bool { abandoned.load(ordering: .acquiring) }
    private let abandoned = Atomic<Bool>(false)
    func abandon() { abandoned.store(true, ordering: .releasing) }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: count) }
    public func slice(_ offset: Int, _ length: Int) -> UnsafeMutableRawBufferPointer {
        precondition(offset >= 0 && length >= 0 && offset + length <= count)
        return UnsafeMutableRawBufferPointer(start: pointer + offset, count: length)
    }
}
