import Foundation
import Glibc
import Testing
import TidemarkSystem
@testable import TidemarkAgentCore

/// The freeze watchdog's protocol, over a real socket pair, without
/// freezing anything (the thaw itself is tested by FreezeSafetyTests as
/// root on a real filesystem).
@Suite struct FreezeWatchdogProtocolTests {
    final class Served: @unchecked Sendable {
        var status: Int32?
    }

    private func send(_ fd: Int32, _ s: String) {
        _ = s.withCString { Glibc.write(fd, $0, strlen($0)) }
    }

    private func readLine(_ fd: Int32, timeoutMs: Int32 = 5_000) -> String? {
        var out: [UInt8] = []
        while true {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, timeoutMs) == 1 else { return nil }
            var b: UInt8 = 0
            guard Glibc.read(fd, &b, 1) == 1 else { return nil }
            if b == UInt8(ascii: "\n") { return String(decoding: out, as: UTF8.self) }
            out.append(b)
        }
    }

    @Test func armsAnswersErrorsAndExitsWhenTheAgentIsGone() throws {
        var sv: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        let agent = sv[0], watchdog = sv[1]
        let served = Served()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            served.status = FreezeWatchdog.serve(fd: watchdog, stopRequested: { false })
            done.signal()
        }
        let dir = NSTemporaryDirectory()
        // A mount point it can open: armed (nothing is frozen until "frozen").
        send(agent, "arm\ta-1\t60000\t/nonexistent/record\t0:0\t\(dir)\n")
        #expect(readLine(agent) == "armed\ta-1")
        // One it cannot open: an error naming it, and not armed.
        send(agent, "arm\ta-2\t60000\t/nonexistent/record\t0:0\t/nonexistent/mount\n")
        let e = readLine(agent) ?? ""
        #expect(e.hasPrefix("error\ta-2\t") && e.contains("/nonexistent/mount"), "\(e)")
        // Disarmed, then a malformed line (logged, ignored): still answering.
        send(agent, "frozen\ta-1\nthawed\ta-1\nnonsense\n")
        send(agent, "arm\ta-3\t60000\t/nonexistent/record\t0:0\t\(dir)\n")
        #expect(readLine(agent) == "armed\ta-3")
        send(agent, "thawed\ta-3\n")
        // The agent's end closes: the watchdog returns 0.
        close(agent)
        #expect(done.wait(timeout: .now() + 5) == .success, "the watchdog did not notice that the agent is gone")
        #expect(served.status == 0)
        close(watchdog)
    }
}
