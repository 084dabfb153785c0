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

    /// The tracker's deficits and their answers are shown under the disk,
    /// and nothing while there were none and the issue record is balanced.
    @Test func deficitsAndTheirAnswersAreShown() throws {
        var t = TrackingHealth()
        t.issueRecordBalanced = true
        #expect(StatusCommand.trackingLine(t) == nil)
        t.deficits = 3; t.sectorsUnseen = 264; t.answeredFromIssueRecord = 2; t.chunksFromIssueRecord = 41
        t.confirmed = 1; t.wholeDisk = 1; t.lastWholeDiskWhy = "the issue record missed 8 sectors"; t.pendingSectors = 16
        #expect(StatusCommand.trackingLine(t) == "tracking: 3 completion deficit(s) (264 sectors the tracer did not see): "
            + "2 answered from the issue record (41 chunks re-sent, 1 confirmed), 1 by the whole disk; "
            + "last whole-disk answer: the issue record missed 8 sectors; 16 sectors answered, to be confirmed when the disk is next still")
        t = TrackingHealth()
        #expect(StatusCommand.trackingLine(t)?.contains("issue record not yet balanced") == true)
        // In the JSON too, with snake_case keys.
        let json = try JSONOutput.line(t)
        #expect(json.contains("\"issue_record_balanced\":false") && json.contains("\"pending_sectors\":0"), "\(json)")
    }
}
