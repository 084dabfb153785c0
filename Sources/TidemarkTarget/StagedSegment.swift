import Synchronization
import TidemarkStorage
import TidemarkSystem

/// A segment's target object assembled in memory as it arrives: a
/// page-aligned buffer holding room for the object's envelope header, then
/// the payload, then padding to the direct-I/O alignment. The uploader fills
/// in the header and hands the store the object as this one buffer
/// (`ObjectContent(padded:count:)`), which a local store writes with
/// O_DIRECT: no copy through the page cache, and no read-back of the
/// payload from the spool.
///
/// Made by `SegmentStaging.stage`, which bounds the bytes all staged
/// segments hold together; the buffer goes back when the last reference to
/// the staged segment goes.
public final class StagedSegment: @unchecked Sendable {
    private let buffer: PooledBuffer
    private let staging: SegmentStaging
    /// The envelope header's length for this segment's metadata.
    public let headerBytes: Int
    public let payloadCount: Int

    fileprivate init(buffer: PooledBuffer, staging: SegmentStaging, headerBytes: Int, payloadCount: Int) {
        self.buffer = buffer
        self.staging = staging
        self.headerBytes = headerBytes
        self.payloadCount = payloadCount
    }

    deinit { staging.released(buffer.bytes.count) }

    /// The payload bytes (valid while this object lives).
    public var payload: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(buffer.buffer.slice(headerBytes, payloadCount))
    }

    /// Where the payload goes, for a segment reserved with
    /// `SegmentStaging.reserve` and filled by its caller (valid while this
    /// object lives; filled before it is shared).
    public var payloadToFill: UnsafeMutableRawBufferPointer {
        buffer.buffer.slice(headerBytes, payloadCount)
    }

    /// Header room + payload + zero padding to `alignment`, with `header`
    /// (exactly `headerBytes` long) copied into the room. Returns the whole
    /// padded object; the object's real size is `headerBytes + payloadCount`.
    func assemble(header: [UInt8], alignment: Int) -> UnsafeRawBufferPointer {
        precondition(header.count == headerBytes)
        let length = headerBytes + payloadCount
        let padded = (length + alignment - 1) / alignment * alignment
        precondition(padded <= buffer.bytes.count)
        header.withUnsafeBytes { buffer.bytes.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: headerBytes) }
        (buffer.bytes.baseAddress! + length).initializeMemory(as: UInt8.self, repeating: 0, count: padded - length)
        return UnsafeRawBufferPointer(start: buffer.bytes.baseAddress, count: padded)
    }
}

/// Stages segments for `TargetRepository.putSegments` in reused aligned
/// buffers, at most `bytesMax` bytes of buffers at a time: `stage` returns
/// nil when that budget is spent (the caller then keeps the payload some
/// other way, e.g. reads it back from the spool). Thread-safe.
public final class SegmentStaging: @unchecked Sendable {
    public let bytesMax: Int
    private let pool: BufferPool
    private let held = Mutex<Int>(0)

    public init(bytesMax: Int, idleBuffersMax: Int) {
        self.bytesMax = bytesMax
        self.pool = BufferPool(keptMax: idleBuffersMax, alignment: ObjectContent.alignmentBytes)
    }

    /// Bytes of buffers held by staged segments now.
    public var heldBytes: Int { held.withLock { $0 } }

    /// Copies `payload` into a new staged segment whose header room fits the
    /// envelope of a segment object of `diskID` with these extents and
    /// point; nil when the budget is spent.
    public func stage(diskID: String, extents: [TargetExtent], point: PointRecord?,
                      payload: UnsafeRawBufferPointer) -> StagedSegment? {
        guard let staged = reserve(diskID: diskID, extents: extents, point: point, payloadBytes: payload.count) else { return nil }
        if payload.count > 0 {
            staged.payloadToFill.baseAddress!.copyMemory(from: payload.baseAddress!, byteCount: payload.count)
        }
        return staged
    }

    /// A staged segment of `payloadBytes` whose payload the caller fills in
    /// (`StagedSegment.payloadToFill`), e.g. by reading it from the network
    /// straight into place; nil when the budget is spent.
    public func reserve(diskID: String, extents: [TargetExtent], point: PointRecord?,
                        payloadBytes: Int) -> StagedSegment? {
        guard !diskID.utf8.isEmpty, diskID.utf8.count <= EnvelopeFormat.diskIDBytesMax,
              payloadBytes >= 0, UInt64(payloadBytes) <= EnvelopeFormat.payloadBytesMax else { return nil }
        let h = Envelope.headerBytes(diskID: diskID, metadataCount: Metadata.encodeSegment(extents: extents, point: point).count)
        let a = ObjectContent.alignmentBytes
        let need = (h + payloadBytes + a - 1) / a * a
        let size = (need + pool.roundingBytes - 1) / pool.roundingBytes * pool.roundingBytes
        let granted = held.withLock { (held: inout Int) -> Bool in
            guard held + size <= bytesMax else { return false }
            held += size
            return true
        }
        guard granted else { return nil }
        let buffer = pool.take(need)
        if buffer.bytes.count != size {
            // A reused buffer bigger than this size class: count what it is.
            held.withLock { $0 += buffer.bytes.count - size }
        }
        return StagedSegment(buffer: buffer, staging: self, headerBytes: h, payloadCount: payloadBytes)
    }

    fileprivate func released(_ bytes: Int) {
        held.withLock { $0 -= bytes }
    }
}
