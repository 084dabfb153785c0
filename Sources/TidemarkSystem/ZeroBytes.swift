/// True when every byte is zero (word at a time; the buffers are aligned).
@inlinable @inline(__always)
public func isAllZero(_ b: UnsafeRawBufferPointer) -> Bool {
    let words = b.count / 8
    if let base = b.baseAddress, Int(bitPattern: base) & 7 == 0 {
        let p = base.assumingMemoryBound(to: UInt64.self)
        var acc: UInt64 = 0
        var i = 0
        while i < words {
            acc |= p[i]
            if i & 511 == 511 && acc != 0 { return false }
            i += 1
        }
        if acc != 0 { return false }
        for j in words * 8..<b.count where b[j] != 0 { return false }
        return true
    }
    return !b.contains { $0 != 0 }
}
