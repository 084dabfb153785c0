import CTidemarkSystem
import Glibc

/// Writes to a file or device through io_uring, keeping up to `queueDepth`
/// writes in flight so the caller (reading the source at the same time) does
/// not wait for each one. Each piece is copied into one of `queueDepth`
/// reused, aligned buffers of `bufferBytes`: memory stays bounded at
/// queueDepth × bufferBytes. Aligned memory of the caller's can be written
/// with no copy instead (`write(_:at:keeping:)`). Falls back to synchronous
/// `pwrite` when io_uring is unavailable.
///
/// Writes are durable only after `flush()` and the caller's fdatasync. The
/// first failed write is reported by the next `write` or by `flush`, and the
/// writer refuses further use: the caller must not trust the target.
public final class AsyncWriter {
    public static let queueDepthMax = 64
    public let fd: FileDescriptor
    public let queueDepth: Int
    public let bufferBytes: Int
    private var ring: OpaquePointer?
    private let buffers: [AlignedBuffer]
    private var free: [Int]
    /// Per buffer: target offset, length, bytes already written.
    private var pending: [(offset: UInt64, length: Int, done: Int)]
    /// Writes from callers' memory (`write(_:at:keeping:)`), in slots
    /// `queueDepth ..< 2 × queueDepth` of the completions' user data: the
    /// memory, its keeper (held until the write completes), target offset,
    /// bytes already written.
    private var external: [(data: UnsafeRawBufferPointer, keeper: AnyObject?, offset: UInt64, done: Int)]
    private var freeExternal: [Int]
    private var inFlight = 0
    private var failure: SystemError?

    public init(fd: FileDescriptor, queueDepth: Int = 8, bufferBytes: Int = 1 << 20) throws {
        precondition(queueDepth >= 1 && queueDepth <= Self.queueDepthMax)
        precondition(bufferBytes >= 4096 && bufferBytes % 4096 == 0)
        self.fd = fd
        self.queueDepth = queueDepth
        self.bufferBytes = bufferBytes
        buffers = (0..<queueDepth).map { _ in AlignedBuffer(count: bufferBytes) }
        free = Array((0..<queueDepth).reversed())
        pending = Array(repeating: (0, 0, 0), count: queueDepth)
        external = Array(repeating: (UnsafeRawBufferPointer(start: nil, count: 0), nil, 0, 0), count: queueDepth)
        freeExternal = Array((0..<queueDepth).reversed())
        var r: OpaquePointer?
        if SystemEnvironment.variables["TIDEMARK_DISABLE_IO_URING"].map({ $0 != "" && $0 != "0" }) != true,
           tm_uring_create(UInt32(queueDepth), &r) == 0 {
            ring = r
        }
    }

    deinit {
        // Writes still in flight refer to our buffers: wait for them first.
        while inFlight > 0, let ring {
            var ud: UInt64 = 0
            var res: Int32 = 0
            if tm_uring_wait(ring, &ud, &res) != 0 { break }
            inFlight -= 1
        }
        if let ring { tm_uring_destroy(ring) }
    }

    public var usesIOUring: Bool { ring != nil }

    /// Queues `data` for writing at `offset` (copied; the caller may reuse
    /// `data` on return). Pieces longer than `bufferBytes` are split.
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64) throws {
        if let failure { throw failure }
        guard let ring else {
            try fd.write(data, at: offset)
            return
        }
        var done = 0
        while done < data.count {
            let n = min(bufferBytes, data.count - done)
            let slot = try takeFreeBuffer(ring)
            buffers[slot].pointer.copyMemory(from: data.baseAddress! + done, byteCount: n)
            pending[slot] = (offset + UInt64(done), n, 0)
            try submit(ring, slot)
            done += n
        }
    }

    /// Queues a write of `data` at `offset` straight from the caller's
    /// memory, with no copy: `data` must meet the file's O_DIRECT alignment
    /// (address, offset and length) and stay valid and unchanged while
    /// `keeper` lives; the writer holds `keeper` until the write has
    /// completed. Counts against the same `queueDepth` writes in flight.
    public func write(_ data: UnsafeRawBufferPointer, at offset: UInt64, keeping keeper: AnyObject) throws {
        if let failure { throw failure }
        guard data.count > 0 else { return }
        guard let ring else {
            try fd.write(data, at: offset)
            return
        }
        while inFlight >= queueDepth || freeExternal.isEmpty { try reap(ring) }
        if let failure { throw failure }
        let slot = freeExternal.removeLast()
        external[slot] = (data, keeper, offset, 0)
        try submitExternal(ring, slot)
    }

    /// Waits until every queued write has completed; throws the first failure.
    public func flush() throws {
        if let ring {
            while inFlight > 0 { try reap(ring) }
        }
        if let failure { throw failure }
    }

    private func takeFreeBuffer(_ ring: OpaquePointer) throws -> Int {
        while free.isEmpty || inFlight >= queueDepth { try reap(ring) }
        if let failure { throw failure }
        return free.removeLast()
    }

    private func submit(_ ring: OpaquePointer, _ slot: Int) throws {
        let p = pending[slot]
        let rc = tm_uring_prep_write(ring, fd.rawValue, buffers[slot].pointer + p.done, UInt32(p.length - p.done),
                                     p.offset + UInt64(p.done), UInt64(slot))
        precondition(rc == 0, "submission queue full with \(inFlight) of \(queueDepth) writes in flight")
        inFlight += 1
        try shimcall("io_uring_submit", "queueing a write to \(fd.path)") { tm_uring_submit(ring) }
    }

    private func submitExternal(_ ring: OpaquePointer, _ slot: Int) throws {
        let e = external[slot]
        let rc = tm_uring_prep_write(ring, fd.rawValue, e.data.baseAddress! + e.done,
                                     UInt32(e.data.count - e.done), e.offset + UInt64(e.done), UInt64(queueDepth + slot))
        precondition(rc == 0, "submission queue full with \(inFlight) of \(queueDepth) writes in flight")
        inFlight += 1
        try shimcall("io_uring_submit", "queueing a write to \(fd.path)") { tm_uring_submit(ring) }
    }

    /// Waits for one completion; resubmits the rest of a short write.
    private func reap(_ ring: OpaquePointer) throws {
        var ud: UInt64 = 0
        var res: Int32 = 0
        try shimcall("io_uring_wait_cqe", "waiting for writes to \(fd.path)") { tm_uring_wait(ring, &ud, &res) }
        inFlight -= 1
        if Int(ud) >= queueDepth {
            let slot = Int(ud) - queueDepth
            precondition(slot < queueDepth)
            var e = external[slot]
            if res < 0 || (res == 0 && e.done < e.data.count) {
                if failure == nil {
                    failure = SystemError(call: "io_uring write", errno: res < 0 ? -res : EIO,
                                          context: "writing \(e.data.count - e.done) bytes to \(fd.path) at \(e.offset + UInt64(e.done))")
                }
            } else {
                e.done += Int(res)
                external[slot] = e
                if e.done < e.data.count && failure == nil {
                    try submitExternal(ring, slot)
                    return
                }
            }
            external[slot] = (UnsafeRawBufferPointer(start: nil, count: 0), nil, 0, 0)
            freeExternal.append(slot)
            return
        }
        let slot = Int(ud)
        precondition(slot >= 0 && slot < queueDepth)
        var p = pending[slot]
        if res < 0 || (res == 0 && p.done < p.length) {
            if failure == nil {
                failure = SystemError(call: "io_uring write", errno: res < 0 ? -res : EIO,
                                      context: "writing \(p.length - p.done) bytes to \(fd.path) at \(p.offset + UInt64(p.done))")
            }
            free.append(slot)
            return
        }
        p.done += Int(res)
        pending[slot] = p
        if p.done < p.length && failure == nil {
            try submit(ring, slot)
        } else {
            free.append(slot)
        }
    }
}
