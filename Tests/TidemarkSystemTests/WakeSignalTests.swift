import Foundation
import Glibc
import Testing
@testable import TidemarkSystem

@Suite struct WakeSignalTests {
    /// A signal from another thread ends a long wait at once (false: the
    /// socket is not ready); a clear makes the next wait last its timeout;
    /// data on the socket ends it with true, signal or not; signals given
    /// before a clear collapse into nothing.
    @Test func signalEndsTheWaitAndClearResetsIt() throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let wake = WakeSignal()
        #expect(wake.fd >= 0)

        let t0 = SystemClock.monotonicMs()
        let signaller = Thread { usleep(50_000); wake.signal() }
        signaller.start()
        #expect(try pollReady(fds[0], Int16(POLLIN), timeoutMs: 10_000, wake: wake.fd, "test") == false)
        let waited = SystemClock.monotonicMs() - t0
        #expect(waited >= 40 && waited < 5_000, "woke after \(waited) ms")

        // Still signalled until cleared: the next wait ends at once.
        #expect(try pollReady(fds[0], Int16(POLLIN), timeoutMs: 10_000, wake: wake.fd, "test") == false)
        wake.signal(); wake.signal()
        wake.clear()
        let t1 = SystemClock.monotonicMs()
        #expect(try pollReady(fds[0], Int16(POLLIN), timeoutMs: 100, wake: wake.fd, "test") == false)
        #expect(SystemClock.monotonicMs() - t1 >= 90)

        var byte: UInt8 = 7
        #expect(write(fds[1], &byte, 1) == 1)
        #expect(try pollReady(fds[0], Int16(POLLIN), timeoutMs: 10_000, wake: wake.fd, "test") == true)
        wake.signal()
        #expect(try pollReady(fds[0], Int16(POLLIN), timeoutMs: 10_000, wake: wake.fd, "test") == true)
        // Without a wake descriptor the wait is the plain one.
        #expect(try pollReady(fds[0], Int16(POLLIN), timeoutMs: 10_000, "test") == true)
    }
}
