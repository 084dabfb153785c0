/// The protected disk: its bytes and the tracer's kernel map of chunks
/// written since they were last drained. Both belong to the host, not the
/// agent process: they survive an agent crash (the tracer's map is pinned).
/// Writes are held while the filesystems are frozen for a point.
///
/// Memory: the disk's bytes and one flag per chunk.
final class SimDisk {
    let chunkBytes: Int
    let chunkCount: Int
    let sizeBytes: Int
    private(set) var bytes: [UInt8]
    /// The kernel map: chunks written since the agent last drained them.
    private(set) var kernelBits: [Bool]
    /// The filesystems are frozen: the workload holds its writes.
    var frozen = false
    private(set) var writes: UInt64 = 0

    /// A disk of `chunkCount` chunks, the last `tailBytes` short of a whole
    /// chunk (0: all whole), all zero.
    init(chunkBytes: Int, chunkCount: Int, tailBytes: Int) {
        precondition(chunkCount >= 1 && tailBytes >= 0 && tailBytes < chunkBytes, "SimDisk: a bad geometry")
        self.chunkBytes = chunkBytes
        self.chunkCount = chunkCount
        sizeBytes = chunkCount * chunkBytes - tailBytes
        bytes = [UInt8](repeating: 0, count: sizeBytes)
        kernelBits = [Bool](repeating: false, count: chunkCount)
    }

    /// Writes `data` at `offset` (inside the disk) and marks its chunks in
    /// the kernel map, as the tracer does when the write completes.
    func write(at offset: Int, _ data: [UInt8]) {
        precondition(!frozen, "a write while the filesystems are frozen")
        precondition(offset >= 0 && offset + data.count <= sizeBytes && !data.isEmpty, "SimDisk.write outside the disk")
        bytes.replaceSubrange(offset..<(offset + data.count), with: data)
        for c in (offset / chunkBytes)...((offset + data.count - 1) / chunkBytes) { kernelBits[c] = true }
        writes += 1
    }

    /// The drain's snapshot and clear of the kernel map: the chunks marked,
    /// as (word, bits) like the tracer's words.
    func takeKernelBits() -> [(UInt64, UInt64)] {
        var words: [(UInt64, UInt64)] = []
        var c = 0
        while c < chunkCount {
            var bits: UInt64 = 0
            for b in 0..<64 where c + b < chunkCount && kernelBits[c + b] {
                bits |= 1 << UInt64(b)
                kernelBits[c + b] = false
            }
            if bits != 0 { words.append((UInt64(c / 64), bits)) }
            c += 64
        }
        return words
    }

    /// The bytes of chunk `c` (the last may be short).
    func chunk(_ c: Int) -> ArraySlice<UInt8> {
        bytes[(c * chunkBytes)..<min((c + 1) * chunkBytes, sizeBytes)]
    }

    func chunkLength(_ c: Int) -> Int { min(chunkBytes, sizeBytes - c * chunkBytes) }
}
