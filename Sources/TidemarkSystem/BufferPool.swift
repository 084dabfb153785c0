import Glibc

/// Page-aligned buffers reused instead of allocated for every use: a large
/// buffer freshly allocated costs a page fault and a kernel-zeroed page per
/// 4 KiB each time it is touched. `take(n)` hands out a buffer of at least
/// n bytes (sizes are rounded up to `roundingBytes`, so buffers fit later
/// requests of similar size), uninitialized; it goes back to the pool when
/// the `PooledBuffer` is released. Bounded: the pool keeps at most
/// `keptMax` idle buffers and frees the rest; buffers in use are the
/// callers' to bound. Thread-safe.
public final class BufferPool: @unchecked Sendable {
    public let alignment: Int
    public let roundingBytes: Int
    public let keptMax: Int
    private var mutex = pthread_mutex_t()
    private var idle: [AlignedBuffer] = []

    public init(keptMax: Int, alignment: Int = 4096, roundingBytes: Int = 1 << 20) {
        precondition(keptMax >= 0 && roundingBytes > 0 && roundingBytes % alignment == 0)
        self.keptMax = keptMax
        self.alignment = alignment
        self.roundingBytes = roundingBytes
        pthread_mutex_init(&mutex, nil)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    /// A buffer of at least `count` (> 0) bytes, its contents undefined.
    public func take(_ count: Int) -> PooledBuffer {
        precondition(count > 0)
        pthread_mutex_lock(&mutex)
        var best: Int?
        for (i, b) in idle.enumerated() where b.count >= count && (best == nil || b.count < idle[best!].count) { best = i }
        let reused = best.map { idle.remove(at: $0) }
        pthread_mutex_unlock(&mutex)
        let size = (count + roundingBytes - 1) / roundingBytes * roundingBytes
        return PooledBuffer(reused ?? AlignedBuffer(count: size, alignment: alignment, zeroed: false), pool: self)
    }

    /// Frees every idle buffer (when nothing is expected to need one soon).
    public func trim() {
        pthread_mutex_lock(&mutex)
        let dropped = idle
        idle.removeAll()
        pthread_mutex_unlock(&mutex)
        _ = dropped   // freed here, outside the lock
    }

    /// Idle buffers held now (for tests).
    public var idleCount: Int {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return idle.count
    }

    fileprivate func giveBack(_ b: AlignedBuffer) {
        // The kernel may still write into it (ChunkReader could not reap a read).
        if b.isAbandoned { return }
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if idle.count < keptMax {
            idle.append(b)
        } else if let smallest = idle.indices.min(by: { idle[$0].count < idle[$1].count }), idle[smallest].count < b.count {
            idle[smallest] = b
        }
    }
}

/// A buffer on loan from a `BufferPool`, returned when this object goes.
public final class PooledBuffer: @unchecked Sendable {
    public let buffer: AlignedBuffer
    private let pool: BufferPool

    fileprivate init(_ buffer: AlignedBuffer, pool: BufferPool) {
        self.buffer = buffer
        self.pool = pool
    }

    deinit { pool.giveBack(buffer) }

    /// All of the buffer (at least the size asked for).
    public var bytes: UnsafeMutableRawBufferPointer { buffer.bytes }
}
