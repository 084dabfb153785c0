import Foundation
import Testing
import TidemarkTesting

/// What `tidemarkctl status` says a disk is doing (issue 19, "State and
/// progress an operator can trust"), with a real agent and server over TLS.
@Suite(.serialized) struct DiskActivityTests {
    /// The initial copy of a disk holding 48 MiB of random data, capped at
    /// 8 MiB/s: status says "initial-copy" with bytes done of those used,
    /// a rate and an ETA, and no RPO (nothing is recoverable yet), and the
    /// agent logs the progress; once committed the disk is "protected" with
    /// an RPO. With the server gone, the disk is "paused" and says why.
    @Test(.requiresRoot) func statusSaysWhatTheDiskIsDoingWithProgress() throws {
        let w = try FaultWorld("activity", diskMiB: 128)
        defer { w.close() }
        try sh("dd if=/dev/urandom of=\(w.mnt)/random bs=1M count=48 status=none && sync")
        try w.startServer()
        try w.startAgent(replication: ["bandwidth_limit: 8m"])
        var during: [String: Any] = [:]
        var text = ""
        try w.waitFor("the initial copy with progress", timeoutSeconds: 30) {
            let s = try w.diskStatus()
            guard let a = s["activity"] as? [String: Any], a["state"] as? String == "initial-copy",
                  (a["bytes_done"] as? UInt64 ?? 0) > 0, a["eta_seconds"] != nil else { return false }
            during = s
            text = try run([TestEnv.binary("tidemarkctl"), "status", "--socket", w.h.dir + "/agent.sock"]).stdout
            return text.contains("initial copy ")
        }
        let a = during["activity"] as! [String: Any]
        // Used blocks only: the 48 MiB file, the headers, ext4's metadata.
        let total = a["bytes_total"] as? UInt64 ?? 0
        #expect(total >= 48 << 20 && total < 128 << 20, "\(a)")
        #expect((a["scope"] as? String ?? "").hasPrefix("used blocks only: ext4 at "), "\(a)")
        #expect((a["bytes_per_second"] as? Double ?? 0) > 0, "\(a)")
        #expect(during["rpo_ms"] as? Int64 == -1, "an RPO while nothing is recoverable: \(during)")
        #expect(text.contains("% (") && text.contains("ETA") && text.contains("RPO no recoverable point yet") && text.contains("reads used blocks only"),
                "\(text)")

        try w.waitFor("the disk protected", timeoutSeconds: 90) {
            let s = try w.diskStatus()
            return (s["activity"] as? [String: Any])?["state"] as? String == "protected" && (s["rpo_ms"] as? Int64 ?? -1) >= 0
        }
        #expect(w.agent!.stderr.contains("initial copy of"), "\(w.logs)")

        w.server?.stop()
        try w.waitFor("the disk paused", timeoutSeconds: 30) {
            let a = try w.diskStatus()["activity"] as? [String: Any]
            return a?["state"] as? String == "paused" && (a?["detail"] as? String ?? "").contains("not reachable")
        }
    }
}
