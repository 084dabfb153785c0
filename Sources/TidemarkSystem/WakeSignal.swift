import CTidemarkSystem
import Glibc

/// A wake-up one thread gives another that waits in poll(2) on something
/// else too (an eventfd): `signal()` from any thread makes `fd` readable
/// until the waiter calls `clear()`. Signals before the clear collapse into
/// one wake-up. Without a descriptor (eventfd failed: the process is out
/// of them) `fd` is -1, which poll(2) ignores: signals are lost and the
/// waiter wakes at its timeout, as if there were no signal.
public final class WakeSignal: @unchecked Sendable {
    public let fd: Int32

    public init() {
        let r = tm_eventfd_cloexec_nonblock()
        fd = max(-1, r)
        if r < 0 {
            Log.warning("eventfd failed (\(String(cString: strerror(-r)))): queued work waits for the next poll timeout (tens of ms) instead of waking its thread; raise the open-file limit (LimitNOFILE) if the process is out of descriptors")
        }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// Makes `fd` readable (never blocks: the counter cannot overflow
    /// before a clear in any real use, and EAGAIN would mean it is set).
    public func signal() {
        guard fd >= 0 else { return }
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd, $0.baseAddress, 8) }
    }

    /// Resets it: `fd` is no longer readable until the next `signal()`.
    public func clear() {
        guard fd >= 0 else { return }
        var value: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &value) { Glibc.read(fd, $0.baseAddress, 8) }
    }
}

/// Waits until `fd` has `events` (POLLIN/POLLOUT), or `timeoutMs` passed
/// (returns false; negative = no limit). Hang-ups and errors count as ready:
/// the next call on the fd reports them. EINTR is retried within the same
/// deadline. With `wake` (a `WakeSignal`'s fd), a readable `wake` also ends
/// the wait (false: `fd` is not known ready).
public func pollReady(_ fd: Int32, _ events: Int16, timeoutMs: Int, wake: Int32? = nil,
                      _ context: @autoclosure () -> String) throws -> Bool {
    let deadline = timeoutMs >= 0 ? SystemClock.monotonicMs() + Int64(timeoutMs) : Int64.max
    var p = (pollfd(fd: fd, events: events, revents: 0), pollfd(fd: wake ?? -1, events: Int16(POLLIN), revents: 0))
    while true {
        let left = deadline == Int64.max ? -1 : Int32(clamping: max(0, deadline - SystemClock.monotonicMs()))
        let r = withUnsafeMutablePointer(to: &p) {
            $0.withMemoryRebound(to: pollfd.self, capacity: 2) { poll($0, wake == nil ? 1 : 2, left) }
        }
        if r > 0 { return p.0.revents != 0 }
        if r == 0 { return false }
        let e = errno
        if e == EINTR { continue }
        throw SystemError(call: "poll", errno: e, context: context())
    }
}
