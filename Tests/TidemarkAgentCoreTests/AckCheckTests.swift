import Testing
import TidemarkSystem
@testable import TidemarkAgentCore

/// Acknowledgements from the server are untrusted: one beyond what the
/// agent numbered is refused (it would drop unsent data from the window or
/// clear tracking bits of data the server never had).
@Suite struct AckCheckTests {
    @Test func acksBeyondWhatWasNumberedAreRefused() throws {
        try ReplicationSender.checkAck(0, numberedThrough: 0, what: "durable")
        try ReplicationSender.checkAck(7, numberedThrough: 7, what: "committed")
        for bad: UInt64 in [8, 1 << 40, UInt64.max] {
            #expect(throws: TidemarkError.self) { try ReplicationSender.checkAck(bad, numberedThrough: 7, what: "durable") }
        }
    }
}
