import Glibc
import TidemarkSystem

/// Builds a data segment's extents and payload in the buffer its chunks were
/// read into, in place: the chunks arrive one after the other in the buffer
/// (`ChunkReader.read(_:into:_:)`); each all-zero chunk becomes (part of) a
/// zero extent and leaves no payload bytes, each data chunk's bytes move
/// down over the room left by zero chunks before it (only then: with no
/// zero chunk before it a chunk stays where it was read). At the end
/// `buffer[0..<payloadBytes]` is the data extents' bytes concatenated.
///
/// Adjacent chunks of the same kind share an extent (up to `UInt32.max`
/// bytes). A piece is cut into chunks of `chunkBytes` from its start; the
/// last may be shorter (the end of the device).
public struct SegmentPayloadCompactor {
    public let chunkBytes: Int
    public private(set) var extents: [SegmentExtent] = []
    /// Payload bytes so far: `buffer[0..<payloadBytes]`.
    public private(set) var payloadBytes = 0
    public private(set) var zeroChunks: UInt64 = 0
    /// Where the next piece may start in the buffer (pieces come in order).
    private var consumed = 0

    public init(chunkBytes: Int) {
        precondition(chunkBytes > 0)
        self.chunkBytes = chunkBytes
    }

    /// Takes the piece of device bytes at `offset` that was read into
    /// `buffer[range]` (after every earlier piece's range).
    public mutating func add(offset: UInt64, range: Range<Int>, in buffer: UnsafeMutableRawBufferPointer) {
        precondition(range.lowerBound >= consumed && range.upperBound <= buffer.count,
                     "pieces must come in order, within the buffer")
        consumed = range.upperBound
        guard let base = buffer.baseAddress else { return }
        var pos = range.lowerBound
        while pos < range.upperBound {
            let n = min(chunkBytes, range.upperBound - pos)
            let zero = isAllZero(UnsafeRawBufferPointer(start: base + pos, count: n))
            let off = offset + UInt64(pos - range.lowerBound)
            let kind: ExtentKind = zero ? .zero : .data
            if var last = extents.last, last.kind == kind, last.offset + UInt64(last.length) == off,
               UInt64(last.length) + UInt64(n) <= UInt64(UInt32.max) {
                last.length += UInt32(n)
                extents[extents.count - 1] = last
            } else {
                extents.append(SegmentExtent(offset: off, length: UInt32(n), kind: kind))
            }
            if zero {
                zeroChunks += 1
            } else {
                if payloadBytes != pos { memmove(base + payloadBytes, base + pos, n) }
                payloadBytes += n
            }
            pos += n
        }
    }
}
