import CTidemarkSystem
import Glibc

/// Every system call goes through here (as in swift-nio's System.swift):
/// errno is read at once, EINTR is retried here, EBADF and EFAULT are bugs,
/// everything else is thrown as a `SystemError` naming the call.
@inline(__always)
public func syscall<T: FixedWidthInteger>(
    _ name: String, _ context: @autoclosure () -> String,
    file: String = #fileID, line: Int = #line,
    _ body: () -> T
) throws -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        precondition(e != EBADF && e != EFAULT, "\(name): \(e == EBADF ? "EBADF" : "EFAULT") is a bug (\(context()))")
        throw SystemError(call: name, errno: e, context: context(), file: file, line: line)
    }
}

/// Like `syscall` for shim functions that return 0 or -errno instead of
/// setting errno.
@inline(__always)
public func shimcall(
    _ name: String, _ context: @autoclosure () -> String,
    file: String = #fileID, line: Int = #line,
    _ body: () -> Int32
) throws {
    while true {
        let r = body()
        if r >= 0 { return }
        if -r == EINTR { continue }
        throw SystemError(call: name, errno: -r, context: context(), file: file, line: line)
    }
}

/// CRC32C (Castagnoli) of a byte buffer; hardware-accelerated on x86-64.
@inlinable
public func crc32c(_ buffer: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
    tm_crc32c(seed, buffer.baseAddress, buffer.count)
}

/// CRC32C in one stream, as `crc32c` computes buffers shorter than 16 KiB
/// (tests check the three-stream result of longer ones against it).
func crc32cSingleStream(_ buffer: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
    tm_crc32c_serial(seed, buffer.baseAddress, buffer.count)
}

/// Returns the heap's free memory to the system (glibc's malloc_trim): glibc
/// keeps freed large blocks otherwise, and an idle daemon its peak.
public func returnFreeHeapToSystem() {
    tm_heap_trim()
}
