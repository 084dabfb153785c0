import CTidemarkSystem
import Glibc

/// A byte range of a device or file: `length` bytes starting at `offset`.
public struct ByteExtent: Sendable, Equatable {
    public var offset: UInt64
    public var length: UInt64
    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }
}

/// How a `ChunkReader` issues its reads.
public enum ReadBackend: Sendable, Equatable, CustomStringConvertible {
    /// io_uring: up to `queueDepth` reads in flight.
    case ioUring
    /// Plain `pread(2)`, one read at a time.
    case pread

    public var description: String {
        switch self {
        case .ioUring: "io_uring"
        case .pread: "pread"
        }
    }
}

public struct ChunkReaderOptions: Sendable {
    /// Upper bound of `queueDepth` (reads in flight, io_uring submission entries).
    public static let maxQueueDepth = 256
    /// Bounds of `maxRequestBytes` (bytes per read): one 512-byte sector to 64 MiB.
    public static let minRequestBytes = 512
    public static let maxRequestBytesLimit = 64 << 20
    /// Upper bound of the reader's buffer pool (queueDepth buffers of about
    /// maxRequestBytes each), in bytes: 1 GiB.
    public static let maxBufferPoolBytes = 1 << 30

    /// io_uring submission entries and reads in flight (1...maxQueueDepth).
    /// The pread backend has one read in flight regardless.
    public var queueDepth: Int = 32
    /// One read is at most this many bytes; adjacent input is coalesced up
    /// to this. Also the most `body` receives at once.
    public var maxRequestBytes: Int = 1 << 20
    /// Open with O_DIRECT (bypass the page cache). Falls back to buffered
    /// reads, with a logged reason, when the filesystem refuses it.
    public var direct: Bool = true
    /// nil: io_uring if it works, else pread. `.ioUring`: the same, but the
    /// fallback is reported as a deviation. `.pread`: pread, as requested.
    public var preferredBackend: ReadBackend? = nil

    public init(
        queueDepth: Int = 32, maxRequestBytes: Int = 1 << 20, direct: Bool = true,
        preferredBackend: ReadBackend? = nil
    ) {
        self.queueDepth = queueDepth
        self.maxRequestBytes = maxRequestBytes
        self.direct = direct
        self.preferredBackend = preferredBackend
    }
}

/// Reads extents of a block device (or a regular file, in tests) in
/// ascending order, with io_uring and O_DIRECT, keeping at most `queueDepth`
/// reads in flight: straight into the caller's buffer (`read(_:into:_:)`),
/// or into aligned buffers of the reader's own, made when first needed and
/// reused (`read(_:_:)`, and pieces that cannot go straight to the caller's
/// buffer because they are not aligned).
///
/// Falls back to `pread` when io_uring is unavailable (ENOSYS, EPERM from a
/// seccomp filter or the `kernel.io_uring_disabled` sysctl, a kernel without
/// IORING_OP_READ) and to buffered reads when O_DIRECT is refused; each
/// fallback is logged and kept in `fallbackReason`.
///
/// Operators can force the pread backend by setting the environment variable
/// `TIDEMARK_DISABLE_IO_URING=1` (any value but empty or `0`); it is read
/// when a reader is created.
///
/// Not thread-safe: one `read` at a time, and `body` must not call back into
/// the same reader.
public final class ChunkReader {
    /// The environment variable that disables io_uring (see the type's documentation).
    public static let disableIOUringVariable = "TIDEMARK_DISABLE_IO_URING"
    /// The direct-I/O alignment assumed for regular files, in bytes: the
    /// page size, which satisfies every common filesystem's requirement.
    public static let regularFileDirectIOAlignmentBytes = 4096
    /// Alignment of the read buffers in memory, in bytes (O_DIRECT needs at
    /// least the logical block size; a page satisfies every device).
    public static let bufferAlignmentBytes = 4096
    /// How often one read is retried after a transient EINTR/EAGAIN completion.
    static let maxTransientRetriesPerRead = 16

    public let path: String
    public let options: ChunkReaderOptions
    public let backend: ReadBackend
    /// Why we are not on io_uring / not O_DIRECT; nil when all is as requested.
    public let fallbackReason: String?
    /// Device size (BLKGETSIZE64) or file size when opened, in bytes.
    public let sizeBytes: UInt64
    /// Whether reads bypass the page cache (O_DIRECT).
    public let isDirect: Bool
    /// Reads are aligned outward to this many bytes: the logical block size
    /// (BLKSSZGET) of a device or 4096 for a file under O_DIRECT, 1 otherwise.
    public let ioAlignmentBytes: Int

    private let fd: FileDescriptor
    private let log: @Sendable (String) -> Void
    /// The io_uring instance (backend == .ioUring). nil after a failure that
    /// forced a teardown; recreated by the next read.
    private var ring: OpaquePointer?
    /// One buffer per read in flight, `bufferBytes` each, allocated the
    /// first time its slot needs one (reads straight into a caller's
    /// buffer need none).
    private var buffers: [AlignedBuffer?]
    private let bufferBytes: Int
    private var reading = false
    /// Tests only: how many of the reader's own buffers exist (reads
    /// straight into a destination need none).
    var buffersAllocatedForTesting: Int { buffers.reduce(0) { $0 + ($1 == nil ? 0 : 1) } }
    /// Tests only: caps every read at this many bytes (rounded down to the
    /// alignment, at least one block), so that pieces take several reads
    /// and the short-read resubmission path runs on demand.
    var readLengthLimitForTesting: Int?

    /// Opens `path` (a block device or regular file) for reading.
    public convenience init(
        path: String, options: ChunkReaderOptions = .init(),
        log: @escaping @Sendable (String) -> Void = { _ in }
    ) throws {
        let disable = Glibc.getenv(ChunkReader.disableIOUringVariable).map { String(cString: $0) }
        try self.init(path: path, options: options, log: log, disableIOUringValue: disable)
    }

    /// `disableIOUringValue` stands for the value of TIDEMARK_DISABLE_IO_URING
    /// (tests pass it here instead of changing the shared process environment).
    init(
        path: String, options: ChunkReaderOptions, log: @escaping @Sendable (String) -> Void,
        disableIOUringValue: String?
    ) throws {
        try Self.validate(options)
        self.path = path
        self.options = options
        self.log = log
        var reasons: [String] = []

        // Open, with O_DIRECT if asked and the filesystem allows it.
        var fd: FileDescriptor
        var direct = false
        if options.direct {
            do {
                fd = try FileDescriptor(open: path, [.readOnly, .direct], purpose: "opening for reading")
                direct = true
            } catch let error as SystemError where error.errno == EINVAL {
                reasons.append("O_DIRECT refused by open (EINVAL: the filesystem does not support direct I/O); using buffered reads")
                fd = try FileDescriptor(open: path, .readOnly, purpose: "opening for reading")
            }
        } else {
            fd = try FileDescriptor(open: path, .readOnly, purpose: "opening for reading")
        }

        // Size and alignment.
        let st = try fd.stat()
        var size: UInt64 = 0
        var alignment = Self.regularFileDirectIOAlignmentBytes
        switch st.st_mode & S_IFMT {
        case S_IFBLK:
            try shimcall("ioctl(BLKGETSIZE64)", "getting the size of \(path)") { tm_blk_size_bytes(fd.rawValue, &size) }
            var sector: UInt32 = 0
            try shimcall("ioctl(BLKSSZGET)", "getting the logical sector size of \(path)") {
                tm_blk_logical_sector_size(fd.rawValue, &sector)
            }
            alignment = Int(sector)
            guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= Self.bufferAlignmentBytes else {
                throw TidemarkError(.unsupported, "\(path) reports a logical sector size of \(sector) bytes, which the reader does not support")
            }
        case S_IFREG:
            size = UInt64(st.st_size)
        default:
            throw TidemarkError(.invalidArgument, "\(path) is neither a block device nor a regular file",
                                hint: "give the path of the block device to replicate")
        }

        // Some filesystems accept O_DIRECT at open and refuse the reads: probe one block.
        if direct && size > 0 {
            let probe = AlignedBuffer(count: alignment, alignment: Self.bufferAlignmentBytes)
            var r: Int
            repeat { r = Glibc.pread(fd.rawValue, probe.pointer, alignment, 0) } while r < 0 && errno == EINTR
            if r < 0 && errno == EINVAL {
                reasons.append("O_DIRECT reads refused (pread: EINVAL); using buffered reads")
                fd = try FileDescriptor(open: path, .readOnly, purpose: "opening for reading")
                direct = false
            }
            // Any other error is left for the real reads to report with their offsets.
        }
        if !direct { alignment = 1 }

        // Backend.
        var backend = ReadBackend.pread
        var ring: OpaquePointer?
        if options.preferredBackend != .pread {
            if let value = disableIOUringValue, !value.isEmpty, value != "0" {
                reasons.append("io_uring disabled by \(Self.disableIOUringVariable)=\(value); using pread (one read in flight)")
            } else {
                let r = tm_uring_create(UInt32(options.queueDepth), &ring)
                if r == 0 {
                    backend = .ioUring
                } else {
                    reasons.append("io_uring unavailable (io_uring_setup: \(Self.errnoText(-r))\(Self.ioUringHint(-r))); using pread (one read in flight)")
                }
            }
        }

        // Buffers: a piece of up to maxRequestBytes starting anywhere in a
        // block spans at most roundUp(maxRequestBytes) + one block once aligned outward.
        let bufferBytes = alignment == 1
            ? options.maxRequestBytes
            : (options.maxRequestBytes + alignment - 1) / alignment * alignment + alignment
        let count = backend == .ioUring ? options.queueDepth : 1
        self.buffers = Array(repeating: nil, count: count)
        self.bufferBytes = bufferBytes
        self.fd = fd
        self.ring = ring
        self.backend = backend
        self.sizeBytes = size
        self.isDirect = direct
        self.ioAlignmentBytes = alignment
        self.fallbackReason = reasons.isEmpty ? nil : reasons.joined(separator: "; ")
        for reason in reasons { log("\(path): \(reason)") }
    }

    deinit {
        // Every read() reaps all it submitted, so nothing is in flight here.
        tm_uring_destroy(ring)
    }

    /// Reads every byte of `extents` (sorted or not; adjacent/overlapping
    /// ones are coalesced first) and calls `body(offset, bytes)` for each
    /// completed piece, in ascending offset order, each piece ≤
    /// maxRequestBytes, and never longer than the requested extents. Extents
    /// past end of device are clipped to sizeBytes.
    /// A short read (EOF in the middle of a requested range) or an I/O error
    /// throws a SystemError/TidemarkError naming the path, offset and length.
    /// The buffer passed to body is valid only during the call. An error
    /// thrown by `body` stops the read (after reaping reads in flight) and is
    /// rethrown.
    public func read(_ extents: [ByteExtent], _ body: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws {
        try run(extents, into: nil) { piece, bytes in
            try body(piece.offset, UnsafeRawBufferPointer(start: bytes, count: piece.length))
        }
    }

    /// Like `read(_:_:)`, but the bytes go to `destination`: the requested
    /// bytes one after the other in ascending offset order (the coalesced
    /// extents' bytes concatenated, from byte 0), and `body(offset, range)`
    /// is called for each completed piece with where its bytes are in
    /// `destination`. Reads go straight into `destination` where they can
    /// (a piece whose offset and length are aligned to `ioAlignmentBytes`
    /// and whose place in `destination` is aligned to `bufferAlignmentBytes`
    /// under O_DIRECT); other pieces are read into the reader's buffers and
    /// copied. `destination` must hold `requestedBytes(extents)`. Bytes of
    /// `destination` before the current piece's range are the caller's to
    /// change from `body` (reads in flight only write at or after it). When
    /// `read` returns or throws, no read into `destination` is in flight
    /// (if the reader cannot make sure of that, it keeps `destination`
    /// alive forever and marks it `isAbandoned`).
    public func read(_ extents: [ByteExtent], into destination: AlignedBuffer,
                     _ body: (UInt64, Range<Int>) throws -> Void) throws {
        let needed = requestedBytes(extents)
        precondition(needed <= destination.count,
                     "ChunkReader.read(into:): \(needed) bytes requested, the destination holds \(destination.count)")
        try run(extents, into: destination) { piece, _ in
            try body(piece.offset, piece.destinationOffset..<piece.destinationOffset + piece.length)
        }
    }

    /// The bytes `read` delivers for `extents`: their coalesced, clipped length.
    public func requestedBytes(_ extents: [ByteExtent]) -> Int {
        Self.coalesce(extents, clippedTo: sizeBytes).reduce(0) { $0 + Int($1.upperBound - $1.lowerBound) }
    }

    /// Reads the pieces of `extents` in order; `deliver` gets each completed
    /// piece and where its requested bytes are (in `destination` if given).
    private func run(_ extents: [ByteExtent], into destination: AlignedBuffer?,
                     _ deliver: (Piece, UnsafeMutableRawPointer) throws -> Void) throws {
        precondition(!reading, "ChunkReader.read is not reentrant: body called back into the reader of \(path)")
        reading = true
        defer { reading = false }
        var pieces = PieceIterator(
            ranges: Self.coalesce(extents, clippedTo: sizeBytes),
            maxRequestBytes: options.maxRequestBytes, alignment: ioAlignmentBytes)
        switch backend {
        case .pread: try readWithPread(&pieces, destination, deliver)
        case .ioUring: try readWithIOUring(&pieces, destination, deliver)
        }
    }

    /// The whole device (or file) from offset 0, sequentially: the first full copy.
    public func readAll(_ body: (UInt64, UnsafeRawBufferPointer) throws -> Void) throws {
        try read([ByteExtent(offset: 0, length: sizeBytes)], body)
    }

    // MARK: - Pieces

    /// One read: the requested bytes and the aligned range actually read.
    struct Piece: Equatable {
        /// First requested byte and requested length: what body gets.
        var offset: UInt64
        var length: Int
        /// The read, aligned outward (its length may pass EOF for a file whose size is unaligned).
        var ioOffset: UInt64
        var ioLength: Int
        /// Where the requested bytes go in a destination buffer: the
        /// requested bytes of every earlier piece, added up.
        var destinationOffset: Int = 0
        /// Bytes from ioOffset that must arrive before the piece is complete.
        var needed: Int { Int(offset - ioOffset) + length }
    }

    /// Splits coalesced ranges into pieces of at most maxRequestBytes,
    /// cutting at aligned offsets so consecutive reads do not overlap.
    /// Lazy: a full-device read does not materialize millions of pieces.
    struct PieceIterator: IteratorProtocol {
        let ranges: [Range<UInt64>]
        let maxRequestBytes: UInt64
        let alignment: UInt64
        var index = 0
        var cursor: UInt64
        var delivered = 0

        init(ranges: [Range<UInt64>], maxRequestBytes: Int, alignment: Int) {
            self.ranges = ranges
            self.maxRequestBytes = UInt64(maxRequestBytes)
            self.alignment = UInt64(alignment)
            self.cursor = ranges.first?.lowerBound ?? 0
        }

        mutating func next() -> Piece? {
            while index < ranges.count {
                let range = ranges[index]
                if cursor >= range.upperBound {
                    index += 1
                    if index < ranges.count { cursor = ranges[index].lowerBound }
                    continue
                }
                let start = cursor
                var end = min(range.upperBound, start + maxRequestBytes)
                if end < range.upperBound {
                    let down = end / alignment * alignment
                    if down > start { end = down }
                }
                cursor = end
                let ioStart = start / alignment * alignment
                let ioEnd = (end + alignment - 1) / alignment * alignment
                let piece = Piece(offset: start, length: Int(end - start), ioOffset: ioStart, ioLength: Int(ioEnd - ioStart),
                                  destinationOffset: delivered)
                delivered += piece.length
                return piece
            }
            return nil
        }
    }

    /// Drops empty extents, clips to `size`, sorts, and merges overlapping
    /// and adjacent ones.
    static func coalesce(_ extents: [ByteExtent], clippedTo size: UInt64) -> [Range<UInt64>] {
        var ranges: [Range<UInt64>] = extents.compactMap { e in
            guard e.length > 0, e.offset < size else { return nil }
            let end = e.length > size - e.offset ? size : e.offset + e.length
            return e.offset..<end
        }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<UInt64>] = []
        merged.reserveCapacity(ranges.count)
        for r in ranges {
            if let last = merged.last, r.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        return merged
    }

    // MARK: - pread

    private func readWithPread(_ pieces: inout PieceIterator, _ destination: AlignedBuffer?,
                               _ deliver: (Piece, UnsafeMutableRawPointer) throws -> Void) throws {
        let fd = fd.rawValue
        while let piece = pieces.next() {
            let (target, bounced) = placement(piece, destination, slot: 0)
            var valid = 0  // bytes from piece.ioOffset that have arrived
            while valid < piece.needed {
                let position = resumePosition(valid)
                let n = try syscall("pread", readContext(piece)) {
                    Glibc.pread(fd, target + position, readLength(piece.ioLength - position), off_t(piece.ioOffset) + off_t(position))
                }
                if n == 0 || position + n <= valid {
                    throw shortRead(piece, endOfFileAt: piece.ioOffset + UInt64(max(valid, position + n)))
                }
                valid = position + n
            }
            try deliver(piece, landed(piece, target: target, bounced: bounced, destination))
        }
    }

    /// Where the read of `piece` goes: straight into `destination` when the
    /// piece is aligned there (nothing read beyond its requested bytes, the
    /// memory aligned for O_DIRECT), else the slot's own buffer (`bounced`).
    private func placement(_ piece: Piece, _ destination: AlignedBuffer?, slot: Int) -> (UnsafeMutableRawPointer, bounced: Bool) {
        if let destination, piece.offset == piece.ioOffset, piece.length == piece.ioLength {
            let target = destination.pointer + piece.destinationOffset
            if !isDirect || Int(bitPattern: target) % Self.bufferAlignmentBytes == 0 { return (target, false) }
        }
        if let buffer = buffers[slot] { return (buffer.pointer, true) }
        let buffer = AlignedBuffer(count: bufferBytes, alignment: Self.bufferAlignmentBytes, zeroed: false)
        buffers[slot] = buffer
        return (buffer.pointer, true)
    }

    /// A completed piece's requested bytes: in `destination` (copied there
    /// from the slot's buffer if it was read there), or in the slot's buffer.
    private func landed(_ piece: Piece, target: UnsafeMutableRawPointer, bounced: Bool,
                        _ destination: AlignedBuffer?) -> UnsafeMutableRawPointer {
        let bytes = target + Int(piece.offset - piece.ioOffset)
        guard bounced, let destination else { return bytes }
        let place = destination.pointer + piece.destinationOffset
        place.copyMemory(from: bytes, byteCount: piece.length)
        return place
    }

    // MARK: - io_uring

    private struct Slot {
        var piece: Piece
        /// Where the read of piece.ioOffset goes, and whether that is the
        /// slot's buffer rather than the destination.
        var target: UnsafeMutableRawPointer
        var bounced: Bool
        /// Bytes from piece.ioOffset that have arrived.
        var valid = 0
        /// Where the read in flight starts, relative to piece.ioOffset.
        var position = 0
        var retries = 0
        /// The piece is complete (or failed) and can be handed over in order.
        var done = false
        /// A read error or short read, thrown when the piece's turn comes so
        /// that every piece before it is still delivered, as with pread.
        var failure: (any Error)?
    }

    private func readWithIOUring(_ pieces: inout PieceIterator, _ destination: AlignedBuffer?,
                                 _ deliver: (Piece, UnsafeMutableRawPointer) throws -> Void) throws {
        if ring == nil {
            var fresh: OpaquePointer?
            try shimcall("io_uring_setup", "setting up io_uring again to read \(path)") {
                tm_uring_create(UInt32(options.queueDepth), &fresh)
            }
            ring = fresh
        }
        let ring = ring!
        let fd = fd.rawValue
        let depth = options.queueDepth
        // Piece number n lives in slot n % depth; a slot is reused only once
        // its piece was delivered, so at most `depth` reads are in flight and
        // the submission queue (≥ depth entries) never fills.
        var slots = [Slot?](repeating: nil, count: depth)
        var started = 0    // pieces given a slot
        var delivered = 0  // pieces handed to body
        var exhausted = false
        var queued = 0     // prepared, not yet taken by the kernel
        var submitted = 0  // taken by the kernel, completion not yet reaped

        func queue(_ index: Int) throws {
            let slot = slots[index]!
            let buffer = slot.target + slot.position
            let length = UInt32(readLength(slot.piece.ioLength - slot.position))
            let offset = slot.piece.ioOffset + UInt64(slot.position)
            var r = tm_uring_prep_read(ring, fd, buffer, length, offset, UInt64(index))
            if r == -EBUSY {
                try submit()
                r = tm_uring_prep_read(ring, fd, buffer, length, offset, UInt64(index))
            }
            if r < 0 { throw SystemError(call: "io_uring_get_sqe", errno: -r, context: "queueing a read of \(path)") }
            queued += 1
        }

        func submit() throws {
            while queued > 0 {
                let r = tm_uring_submit(ring)
                if r > 0 {
                    submitted += Int(r)
                    queued -= Int(r)
                    continue
                }
                if r == -EINTR { continue }
                // Out of kernel resources (or nothing taken): reap completions first.
                if submitted > 0 && (r == 0 || r == -EAGAIN || r == -EBUSY || r == -ENOMEM) { return }
                throw SystemError(call: "io_uring_enter", errno: r == 0 ? EAGAIN : -r,
                                  context: "submitting \(queued) reads of \(path)")
            }
        }

        func complete(_ index: Int, _ result: Int32) throws {
            guard var slot = slots[index] else { preconditionFailure("io_uring completion for idle slot \(index)") }
            defer { slots[index] = slot }
            if result < 0 {
                let e = -result
                if (e == EINTR || e == EAGAIN) && slot.retries < Self.maxTransientRetriesPerRead {
                    slot.retries += 1
                    slots[index] = slot
                    return try queue(index)
                }
                slot.failure = SystemError(call: "read (io_uring)", errno: e, context: readContext(slot.piece))
                slot.done = true
                return
            }
            let end = slot.position + Int(result)
            if result == 0 || end <= slot.valid {
                slot.failure = shortRead(slot.piece, endOfFileAt: slot.piece.ioOffset + UInt64(max(end, slot.valid)))
                slot.done = true
                return
            }
            slot.valid = end
            if slot.valid >= slot.piece.needed {
                slot.done = true
            } else {
                // A short read in the middle of a range: read the rest.
                slot.position = resumePosition(slot.valid)
                slots[index] = slot
                try queue(index)
            }
        }

        do {
            while true {
                while !exhausted && started - delivered < depth {
                    guard let piece = pieces.next() else {
                        exhausted = true
                        break
                    }
                    let index = started % depth
                    let (target, bounced) = placement(piece, destination, slot: index)
                    slots[index] = Slot(piece: piece, target: target, bounced: bounced)
                    try queue(index)
                    started += 1
                }
                try submit()
                if exhausted && delivered == started { break }
                precondition(submitted > 0, "io_uring reader of \(path) waits with nothing in flight")

                var userData: UInt64 = 0
                var result: Int32 = 0
                try shimcall("io_uring_wait_cqe", "waiting for reads of \(path)") { tm_uring_wait(ring, &userData, &result) }
                submitted -= 1
                try complete(Int(userData), result)

                // Deliver in order; later pieces that completed early wait in their slots.
                while delivered < started, let slot = slots[delivered % depth], slot.done {
                    let index = delivered % depth
                    slots[index] = nil
                    delivered += 1
                    if let failure = slot.failure { throw failure }
                    try deliver(slot.piece, landed(slot.piece, target: slot.target, bounced: slot.bounced, destination))
                }
            }
        } catch {
            drain(queued: queued, submitted: submitted, destination: destination)
            throw error
        }
    }

    /// After an error: reaps every read still in flight so the ring and its
    /// buffers can be reused by the next call. If that is impossible, gives
    /// up the ring (and, if the kernel may still write into them, the
    /// buffers and `destination`: kept alive forever, and `destination`
    /// marked abandoned so that no pool hands it out again).
    private func drain(queued: Int, submitted: Int, destination: AlignedBuffer?) {
        guard let ring else { return }
        var queued = queued
        var submitted = submitted
        while queued > 0 || submitted > 0 {
            if queued > 0 {
                let r = tm_uring_submit(ring)
                if r > 0 {
                    queued -= Int(r)
                    submitted += Int(r)
                } else if r != -EINTR && submitted == 0 {
                    // Nothing in the kernel's hands: the ring can go, the buffers stay.
                    log("\(path): io_uring: \(queued) reads could not be submitted (\(Self.errnoText(-r))); recreating the ring")
                    tm_uring_destroy(ring)
                    self.ring = nil
                    return
                }
            }
            if submitted > 0 {
                var userData: UInt64 = 0
                var result: Int32 = 0
                let r = tm_uring_wait(ring, &userData, &result)
                if r == 0 {
                    submitted -= 1
                } else if r != -EINTR {
                    // The kernel may still write into these buffers: never free them.
                    log("\(path): io_uring: cannot reap \(submitted) reads in flight (\(Self.errnoText(-r))); abandoning the ring and its buffers")
                    for case let buffer? in buffers { _ = Unmanaged.passRetained(buffer) }
                    buffers = buffers.map { _ in nil }
                    if let destination {
                        _ = Unmanaged.passRetained(destination)
                        destination.abandon()
                    }
                    self.ring = nil  // not destroyed: teardown would not wait for those reads either
                    return
                }
            }
        }
    }

    // MARK: - Helpers

    /// Where to (re)issue a read once `valid` bytes of the piece have
    /// arrived: rounded down to the alignment (O_DIRECT offsets must be aligned).
    @inline(__always)
    private func resumePosition(_ valid: Int) -> Int { valid / ioAlignmentBytes * ioAlignmentBytes }

    @inline(__always)
    private func readLength(_ remaining: Int) -> Int {
        guard let limit = readLengthLimitForTesting else { return remaining }
        return min(remaining, max(ioAlignmentBytes, limit / ioAlignmentBytes * ioAlignmentBytes))
    }

    private func readContext(_ piece: Piece) -> String {
        "reading \(piece.length) bytes at offset \(piece.offset) of \(path)"
    }

    private func shortRead(_ piece: Piece, endOfFileAt eof: UInt64) -> TidemarkError {
        TidemarkError(
            .io,
            "short read of \(path): end of file at byte \(eof) while reading \(piece.length) bytes at offset \(piece.offset) (size was \(sizeBytes) bytes when opened)",
            hint: "the file or device shrank while being read")
    }

    /// The first line of a small /proc file, or nil.
    private static func readSysctl(_ path: String) -> String? {
        SmallFile.textIfReadable(path)?.split(separator: "\n").first.map(String.init)
    }

    private static func validate(_ o: ChunkReaderOptions) throws {
        guard (1...ChunkReaderOptions.maxQueueDepth).contains(o.queueDepth) else {
            throw TidemarkError(.invalidArgument, "queueDepth \(o.queueDepth) is out of range 1...\(ChunkReaderOptions.maxQueueDepth)")
        }
        let bytes = ChunkReaderOptions.minRequestBytes...ChunkReaderOptions.maxRequestBytesLimit
        guard bytes.contains(o.maxRequestBytes) else {
            throw TidemarkError(.invalidArgument, "maxRequestBytes \(o.maxRequestBytes) is out of range \(bytes.lowerBound)...\(bytes.upperBound) bytes")
        }
        // Checked for the io_uring case on every machine, so that a setting
        // does not fail only where io_uring happens to work.
        let worstBufferBytes = (o.maxRequestBytes + bufferAlignmentBytes - 1) / bufferAlignmentBytes * bufferAlignmentBytes + bufferAlignmentBytes
        guard worstBufferBytes * o.queueDepth <= ChunkReaderOptions.maxBufferPoolBytes else {
            throw TidemarkError(.invalidArgument,
                                "queueDepth \(o.queueDepth) × maxRequestBytes \(o.maxRequestBytes) needs more buffer memory than the \(ChunkReaderOptions.maxBufferPoolBytes)-byte limit",
                                hint: "lower queueDepth or maxRequestBytes")
        }
    }

    private static func errnoText(_ e: Int32) -> String {
        "\(String(cString: strerror(e))) (errno \(e))"
    }

    /// Why io_uring_setup may have failed, for the operator.
    private static func ioUringHint(_ e: Int32) -> String {
        if let value = readSysctl("/proc/sys/kernel/io_uring_disabled"), value != "0" {
            return "; kernel.io_uring_disabled=\(value)"
        }
        switch e {
        case ENOSYS: return "; kernel without io_uring, or a seccomp filter"
        case EPERM: return "; likely a seccomp filter (containers) or kernel.io_uring_disabled"
        case ENOMEM: return "; RLIMIT_MEMLOCK too low for the ring"
        case EOPNOTSUPP: return "; kernel lacks IORING_OP_READ (needs Linux 5.6+)"
        default: return ""
        }
    }
}
