import Foundation
import TidemarkSystem

public enum StatusCommand {
    static let replyTimeoutMs = 5_000

    /// `tidemarkctl status`: the agent's replication state per disk (RPO,
    /// committed sequence, backlog) and its RSS, from its control socket.
    /// `json` prints the agent's reply as it is (one line).
    public static func run(socketPath: String, json: Bool) throws -> String {
        let reply = try ControlClient.request(socketPath: socketPath, ["op": "status"], timeoutMs: replyTimeoutMs)
        guard (reply["ok"] as? Bool) == true else {
            let why = reply["error"].map(PointCreateCommand.text) ?? "the agent gave no reason"
            throw TidemarkError(.state, "the agent on \(socketPath) gave no status: \(why)")
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: reply, options: [.sortedKeys])
            return String(decoding: data, as: UTF8.self) + "\n"
        }
        let rss = (reply["rss_bytes"] as? NSNumber)?.uint64Value ?? 0
        var out = "agent RSS \(rss >> 20) MiB\n"
        for d in reply["disks"] as? [[String: Any]] ?? [] {
            let f = { (k: String) in d[k].map(PointCreateCommand.text) ?? "?" }
            let rpo = (d["rpo_ms"] as? NSNumber)?.int64Value ?? -1
            let backlog = (d["backlog_bytes"] as? NSNumber)?.uint64Value ?? 0
            let auto = (d["compression_auto"] as? Bool) == true
            let level = (d["compression_level"] as? NSNumber).map { $0.intValue == 0 ? "off" : "zstd \($0.intValue)" } ?? "?"
            out += "\(f("disk")) (\(f("disk_id"))): RPO \(rpo < 0 ? "unknown (nothing committed yet)" : "\(rpo) ms"), committed #\(f("committed_sequence")), backlog \(backlog >> 20) MiB, compression \(level)\(auto ? " (auto)" : "")\n"
        }
        return out
    }
}
