import CTidemarkSystem
import Glibc

/// Copies a device sequentially into a target with one io_uring and no
/// copy in memory: each buffer is read from the source (O_DIRECT), handed to
/// `plan`, which says which byte ranges of it to write, and those ranges are
/// written to the target straight from the same buffer. The buffer is read
/// into again only when all its writes completed. Reads and writes of
/// different buffers proceed together; memory is queueDepth × bufferBytes.
///
/// Used for a mirror's first copy (ranges = the non-zero chunks). Ranges that
/// are not 4096-aligned go to `bufferedTarget` with pwrite.
public final class CopyPipeline {
    public static let alignmentBytes = 4096
    /// Ranges of one buffer written asynchronously; more are written at once.
    public static let asyncWritesPerBufferMax = 8
    let ring: OpaquePointer
    let source: FileDescriptor
    let target: FileDescriptor
    let bufferedTarget: FileDescriptor
    let buffers: [AlignedBuffer]
    let bufferBytes: Int

    /// Nil when io_uring is unavailable (the caller copies another way).
    public init?(sourcePath: String, target: FileDescriptor, bufferedTarget: FileDescriptor,
                 queueDepth: Int, bufferBytes: Int) throws {
        precondition(queueDepth >= 1 && queueDepth <= 64 && bufferBytes % Self.alignmentBytes == 0)
        if SystemEnvironment.variables["TIDEMARK_DISABLE_IO_URING"].map({ $0 != "" && $0 != "0" }) == true { return nil }
        var r: OpaquePointer?
        // A buffer is either being read (one entry) or written (at most
        // asyncWritesPerBufferMax entries): that bounds the ring.
        guard tm_uring_create(UInt32(queueDepth * Self.asyncWritesPerBufferMax), &r) == 0, let r else { return nil }
        ring = r
        source = try FileDescriptor(open: sourcePath, [.readOnly, .direct], purpose: "opening the source for the first copy")
        self.target = target
        self.bufferedTarget = bufferedTarget
        self.bufferBytes = bufferBytes
        buffers = (0..<queueDepth).map { _ in AlignedBuffer(count: bufferBytes) }
    }

    deinit { tm_uring_destroy(ring) }

    private enum Op: UInt64 { case read = 0, write = 1 }
    private struct Slot {
        var offset: UInt64 = 0
        var length = 0
        var readDone = 0
        var writesInFlight = 0
        var writes: [(start: Int, length: Int, done: Int)] = []
    }

    /// Copies [0, sizeBytes). `plan(offset, bytes)` returns the ranges of
    /// `bytes` to write (ascending, disjoint); it runs on this thread, in
    /// ascending offset order. Throws the first read or write failure after
    /// waiting for everything in flight.
    public func run(sizeBytes: UInt64, plan: (UInt64, UnsafeRawBufferPointer) throws -> [Range<Int>]) throws {
        var slots = [Slot](repeating: Slot(), count: buffers.count)
        var nextOffset: UInt64 = 0
        var inFlight = 0
        var failure: Error?
        var idle = Array((0..<buffers.count).reversed())
        // Buffers whose read completed, waiting to be planned in offset order.
        var readyByOffset: [UInt64: Int] = [:]
        var nextToPlan: UInt64 = 0

        func tag(_ slot: Int, _ op: Op, _ write: Int = 0) -> UInt64 { UInt64(slot) | op.rawValue << 8 | UInt64(write) << 9 }
        func submitRead(_ s: Int) throws {
            let remaining = slots[s].length - slots[s].readDone
            let rc = tm_uring_prep_read(ring, source.rawValue, buffers[s].pointer + slots[s].readDone, UInt32(remaining),
                                        slots[s].offset + UInt64(slots[s].readDone), tag(s, .read))
            precondition(rc == 0, "submission queue full")
            inFlight += 1
        }
        func submitWrite(_ s: Int, _ w: Int) {
            let wr = slots[s].writes[w]
            let rc = tm_uring_prep_write(ring, target.rawValue, buffers[s].pointer + wr.start + wr.done, UInt32(wr.length - wr.done),
                                         slots[s].offset + UInt64(wr.start + wr.done), tag(s, .write, w))
            precondition(rc == 0, "submission queue full")
            inFlight += 1
        }
        func startReads() throws {
            while failure == nil, nextOffset < sizeBytes, let s = idle.popLast() {
                let len = Int(min(UInt64(bufferBytes), sizeBytes - nextOffset))
                // O_DIRECT wants whole logical blocks; device sizes are multiples of 512.
                slots[s] = Slot(offset: nextOffset, length: len)
                nextOffset += UInt64(len)
                try submitRead(s)
            }
        }
        func planReady() throws {
            while let s = readyByOffset.removeValue(forKey: nextToPlan) {
                let slot = slots[s]
                nextToPlan += UInt64(slot.length)
                let bytes = UnsafeRawBufferPointer(start: buffers[s].pointer, count: slot.length)
                let ranges = try plan(slot.offset, bytes)
                var writes: [(Int, Int, Int)] = []
                for r in ranges {
                    precondition(r.lowerBound >= 0 && r.upperBound <= slot.length)
                    let a = Self.alignmentBytes
                    if r.lowerBound % a == 0 && r.count % a == 0 {
                        if writes.count < Self.asyncWritesPerBufferMax {
                            writes.append((r.lowerBound, r.count, 0))
                        } else {
                            try target.write(UnsafeRawBufferPointer(rebasing: bytes[r]), at: slot.offset + UInt64(r.lowerBound))
                        }
                    } else {
                        try bufferedTarget.write(UnsafeRawBufferPointer(rebasing: bytes[r]), at: slot.offset + UInt64(r.lowerBound))
                    }
                }
                slots[s].writes = writes
                slots[s].writesInFlight = writes.count
                if writes.isEmpty { idle.append(s) }
                for w in writes.indices { submitWrite(s, w) }
            }
        }

        try startReads()
        _ = tm_uring_submit(ring)
        while inFlight > 0 {
            var ud: UInt64 = 0
            var res: Int32 = 0
            try shimcall("io_uring_wait_cqe", "copying \(source.path) to \(target.path)") { tm_uring_wait(ring, &ud, &res) }
            inFlight -= 1
            let s = Int(ud & 0xFF)
            if ud >> 8 & 1 == Op.read.rawValue {
                if res <= 0 {
                    failure = failure ?? SystemError(call: "io_uring read", errno: res < 0 ? -res : EIO,
                                                     context: "reading \(source.path) at \(slots[s].offset + UInt64(slots[s].readDone))")
                } else {
                    slots[s].readDone += Int(res)
                    if slots[s].readDone < slots[s].length { try submitRead(s) } else { readyByOffset[slots[s].offset] = s }
                }
            } else {
                let w = Int(ud >> 9)
                if res <= 0 {
                    failure = failure ?? SystemError(call: "io_uring write", errno: res < 0 ? -res : EIO,
                                                     context: "writing \(target.path) at \(slots[s].offset + UInt64(slots[s].writes[w].start))")
                    slots[s].writesInFlight -= 1
                } else {
                    slots[s].writes[w].done += Int(res)
                    if slots[s].writes[w].done < slots[s].writes[w].length { submitWrite(s, w) } else { slots[s].writesInFlight -= 1 }
                }
                if slots[s].writesInFlight == 0 { idle.append(s) }
            }
            if failure == nil {
                do { try planReady() } catch { failure = error }
                try startReads()
            }
            _ = tm_uring_submit(ring)
        }
        if let failure { throw failure }
        precondition(nextToPlan == sizeBytes, "copy ended at \(nextToPlan) of \(sizeBytes) bytes")
    }
}
