import Foundation
import TidemarkSurface
import TidemarkSystem

public enum StatusCommand {
    static let replyTimeoutMs = 5_000

    /// `tidemarkctl status`: the agent's replication state per disk (RPO,
    /// committed sequence, backlog) and its RSS, from its control socket.
    /// `json` prints the state as one JSON object (`AgentStatus`).
    public static func run(socketPath: String, json: Bool) throws -> String {
        let reply = try ControlClient.request(socketPath: socketPath, .status, timeoutMs: replyTimeoutMs)
        guard reply.ok, let status = reply.status else {
            throw TidemarkError(.state, "the agent on \(socketPath) gave no status: \(reply.error ?? "the agent gave no reason")")
        }
        return json ? try JSONOutput.line(status) : text(status)
    }

    /// The human-readable status: the RSS, then one line per disk.
    static func text(_ status: AgentStatus) -> String {
        var out = "agent RSS \(ByteCount.text(status.rssBytes))"
        if let h = status.hostInflight {
            out += ", segments in memory \(ByteCount.text(h.heldBytes)) of \(ByteCount.text(h.budgetBytes)) (peak \(ByteCount.text(h.peakBytes)))"
        }
        out += "\n"
        for d in status.disks {
            let rpo = d.rpoMs < 0 ? "no recoverable point yet" : "\(d.rpoMs) ms"
            let level = d.compressionLevel == 0 ? "off" : "zstd \(d.compressionLevel)"
            out += "\(d.disk) (\(d.diskID)): \(d.activity.map { $0.text + ", " } ?? "")RPO \(rpo), committed #\(d.committedSequence), backlog \(ByteCount.text(d.backlogBytes)), "
                + "compression \(level)\(d.compressionAuto ? " (auto)" : "")\n"
            if let scope = d.activity?.scope { out += "  reads \(scope)\n" }
            if let t = d.tracking, let line = trackingLine(t) { out += "  " + line + "\n" }
        }
        return out
    }

    /// The tracker's deficits in words; nil while there were none and
    /// nothing stands out.
    static func trackingLine(_ t: TrackingHealth) -> String? {
        var parts: [String] = []
        if t.deficits > 0 {
            parts.append("\(t.deficits) completion deficit(s) (\(t.sectorsUnseen) sectors the tracer did not see): "
                         + "\(t.answeredFromIssueRecord) answered from the issue record (\(t.chunksFromIssueRecord) chunks re-sent, \(t.confirmed) confirmed), "
                         + "\(t.wholeDisk) by the whole disk")
            if let why = t.lastWholeDiskWhy { parts.append("last whole-disk answer: \(why)") }
        }
        if t.pendingSectors > 0 { parts.append("\(t.pendingSectors) sectors answered, to be confirmed when the disk is next still") }
        if !t.issueRecordBalanced { parts.append("issue record not yet balanced (the disk has not been still): a deficit now takes the whole disk") }
        return parts.isEmpty ? nil : "tracking: " + parts.joined(separator: "; ")
    }
}
