/// True when every byte is zero. Aligned buffers are tested a 4 KiB block at
/// a time: a branch-free OR of its 512 words (which the compiler turns into
/// vector instructions), then one test, so data is rejected within its first
/// block and an all-zero chunk costs about a memory read.
@inlinable @inline(__always)
public func isAllZero(_ b: UnsafeRawBufferPointer) -> Bool {
    guard let base = b.baseAddress, Int(bitPattern: base) & 7 == 0 else { return !b.contains { $0 != 0 } }
    let words = b.count / 8
    let p = base.assumingMemoryBound(to: UInt64.self)
    var i = 0
    while i + 512 <= words {
        var acc: UInt64 = 0
        for j in i..<(i + 512) { acc |= p[j] }
        if acc != 0 { return false }
        i += 512
    }
    var acc: UInt64 = 0
    while i < words {
        acc |= p[i]
        i += 1
    }
    if acc != 0 { return false }
    for j in words * 8..<b.count where b[j] != 0 { return false }
    return true
}
