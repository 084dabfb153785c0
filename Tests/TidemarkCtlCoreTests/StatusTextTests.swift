import Testing
import TidemarkSurface
@testable import TidemarkCtlCore

@Suite struct StatusTextTests {
    /// A small backlog is shown, not rounded to "0 MiB" (655,360 bytes once
    /// read "0 MiB" while chunks waited to be sent).
    @Test func aSmallBacklogIsNotShownAsZero() {
        let disk = DiskStatus(disk: "/dev/sdb", diskID: "agent-a-sdb-3f2a9c", rpoMs: 812, committedThroughUnixMs: 1,
                              committedSequence: 41, durableSequence: 42, nextSequence: 43, backlogBytes: 655_360,
                              toReadBytes: 655_360, windowBytes: 0, bytesRead: 0, bytesSent: 0, segmentsSent: 0, zeroChunks: 0,
                              compressionLevel: 1, compressionAuto: false, compressionStepsFaster: 0, compressionStepsSmaller: 0,
                              lastFreezeMs: nil)
        let text = StatusCommand.text(AgentStatus(rssBytes: 50 << 20, disks: [disk]))
        #expect(text == "agent RSS 50.0 MiB\n/dev/sdb (agent-a-sdb-3f2a9c): RPO 812 ms, committed #41, backlog 640.0 KiB, compression zstd 1\n")
    }
}
