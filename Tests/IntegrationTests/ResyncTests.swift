import Foundation
import Testing
import TidemarkTesting

/// The digest-compare resync end to end, with real processes (server,
/// agent, tidemarkctl) over TLS, ext4 on a loop device: after the agent's
/// state directory is lost and ~1% of the disk changed, the restarted agent
/// sends about the changed bytes only, and the next point recovers
/// byte-identical to the frozen source, fsck-clean.
@Suite(.serialized) struct ResyncTests {
    /// The agent's "resync of … complete" log line.
    struct Resync: CustomStringConvertible {
        var compared: UInt64, identical: UInt64, differing: UInt64, unknown: UInt64, alreadyQueued: UInt64 = 0
        var bytesRead: UInt64, bytesReadToSend: UInt64, bytesSent: UInt64, diskBytes: UInt64, seconds: Double

        var description: String {
            "compared \(compared) chunks (read \(bytesRead) bytes to digest, \(bytesReadToSend) to send), identical \(identical), differing \(differing), unknown \(unknown); sent \(bytesSent) bytes (\(String(format: "%.2f", Double(bytesSent) * 100 / Double(diskBytes)))% of the disk) in \(String(format: "%.2f", seconds)) s"
        }
    }

    /// Waits for the agent's resync to complete (everything it queued committed) and parses the line.
    static func waitForResync(_ agent: BackgroundProcess, timeoutSeconds: Double = 60) throws -> Resync {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if let r = try resync(in: agent.stderr) { return r }
            if !agent.process.isRunning { throw TestFailure("the agent exited during the resync:\n\(agent.stderr.suffix(4000))") }
            usleep(100_000)
        }
        throw TestFailure("no completed resync within \(timeoutSeconds) s:\n\(agent.stderr.suffix(4000))")
    }

    /// The completed resync an agent's log reports, if it has one.
    static func resync(in log: String) throws -> Resync? {
        if let line = log.split(separator: "\n").first(where: { $0.contains("complete: ") && $0.contains("resync of") }) {
            let pattern = #"complete: (\d+) chunks compared \((\d+) bytes read\), (\d+) identical on the target, (\d+) differing, (\d+) unknown to the target, (\d+) already queued; read (\d+) bytes and sent (\d+) bytes of segments for a (\d+)-byte disk in ([0-9.]+) s"#
            let text = String(line)
            guard let m = try NSRegularExpression(pattern: pattern).firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) else {
                throw TestFailure("cannot parse the resync line: \(line)")
            }
            let v = (1...10).map { Double(text[Range(m.range(at: $0), in: text)!])! }
            return Resync(compared: UInt64(v[0]), identical: UInt64(v[2]), differing: UInt64(v[3]), unknown: UInt64(v[4]),
                          alreadyQueued: UInt64(v[5]), bytesRead: UInt64(v[1]), bytesReadToSend: UInt64(v[6]), bytesSent: UInt64(v[7]),
                          diskBytes: UInt64(v[8]), seconds: v[9])
        }
        return nil
    }

    @Test(.requiresRoot) func lostStateResyncSendsOnlyChangedChunks() throws {
        let w = try ReplicationTests.World()
        defer { w.close() }
        let diskBytes = w.disk.sizeBytes
        try w.startServer()
        // 16 KiB chunks: 8192 chunks, so a resync takes several digest windows (2048 chunks each).
        let chunk: UInt64 = 16 << 10
        _ = try sh("sed -i '1i chunk_size: 16k' \(w.h.dir)/agent.yaml")
        // Most of the file system holds incompressible data, so sending the
        // whole disk again would cost far more than the 10% allowed below.
        _ = try sh("head -c \(80 << 20) /dev/urandom > \(w.mnt)/data.bin && sync")

        // 1. Initial replication: a new state directory and an empty target.
        try w.startAgent()
        let initial = try Self.waitForResync(w.agent!)
        // Almost everything is unknown to an empty target; a few chunks may
        // be identical or differ because tracking sent them before the scan
        // reached them (the file system writes while the agent starts).
        #expect(initial.identical + initial.differing < initial.compared / 10, "an empty target has nearly nothing to compare: \(initial)")
        #expect(initial.bytesSent > 80 << 20, "the initial replication sends the data: \(initial)")
        // Used blocks only: the data, the headers and ext4's metadata, not its free space.
        #expect(initial.compared < diskBytes / chunk && initial.compared > (80 << 20) / chunk, "\(initial)")
        let first = try w.point()

        // 2. The agent stops, its state directory is lost, ~1% of the disk changes meanwhile.
        w.agent!.stop()
        _ = try sh("rm -rf \(w.h.stateDir)")
        let changedBytes = diskBytes / 100
        _ = try sh("head -c \(changedBytes) /dev/urandom > \(w.mnt)/changed.bin && sync")

        // 3. Restart: the resync compares digests and sends about the changed bytes.
        try w.startAgent()
        let changed = try Self.waitForResync(w.agent!)
        let log = w.agent!.stderr
        #expect(log.contains("resync required") && log.contains("by digest comparison"), "\(log.suffix(3000))")
        #expect(changed.compared < diskBytes / chunk && changed.compared >= initial.compared, "\(changed)")
        // Written where the filesystem had free space, which the initial copy
        // did not send: unknown to the target, or differing.
        #expect(changed.differing + changed.unknown >= changedBytes / chunk, "the changed chunks must be found: \(changed)")
        #expect(changed.bytesSent < diskBytes / 10, "a resync after a 1% change sent too much: \(changed)")
        #expect(changed.bytesSent >= changedBytes, "random data cannot compress: \(changed)")
        #expect(changed.identical > changed.compared * 8 / 10, "\(changed)")
        let second = try w.point()
        try w.recoverAndCompare(second)

        // 4. Measurement: the same disk, unchanged, after losing the state again.
        w.agent!.stop()
        _ = try sh("rm -rf \(w.h.stateDir)")
        try w.startAgent()
        let unchanged = try Self.waitForResync(w.agent!)
        #expect(unchanged.bytesSent < diskBytes / 100, "an unchanged disk must cost almost nothing: \(unchanged)")
        let third = try w.point()
        try w.recoverAndCompare(third)
        try w.recoverAndCompare(first)

        print("""
            resync measurement (\(diskBytes >> 20) MiB ext4 loop disk with 80 MiB of random data, 16 KiB chunks, one run):
              initial replication (empty target): \(initial)
              after losing the state, 1% changed:  \(changed)
              after losing the state, unchanged:   \(unchanged)
            """)
    }

    /// Online: the file system keeps changing while the resync compares, and
    /// the agent is killed (-9) shortly after it starts, usually mid-scan; the
    /// restarted agent finishes the resync from its `.hrl` and a point taken
    /// after it recovers byte-identical to the frozen source.
    @Test(.requiresRoot) func resyncUnderLoadSurvivesKill() throws {
        let w = try ReplicationTests.World()
        defer { w.close() }
        try w.startServer()
        _ = try sh("sed -i '1i chunk_size: 16k' \(w.h.dir)/agent.yaml")
        _ = try sh("head -c \(64 << 20) /dev/urandom > \(w.mnt)/data.bin && sync")
        try w.startAgent()
        _ = try Self.waitForResync(w.agent!)
        w.agent!.stop()
        _ = try sh("rm -rf \(w.h.stateDir)")
        _ = try sh("dd if=/dev/urandom of=\(w.mnt)/data.bin bs=64k count=16 seek=100 conv=notrunc status=none && sync")

        let load = try w.churn(6, seed: 7)
        try w.startAgent()
        // Killed as soon as its resync begins (a scan of this disk takes a
        // few hundred ms, less than a fixed delay would reliably hit). Should
        // it still have finished, its result is the one checked: the
        // restarted agent then finds the disk replicated.
        try waitFor("the agent begins its resync", timeoutSeconds: 30) { w.agent!.stderr.contains("by digest comparison") }
        w.agent!.stop(signal: SIGKILL)
        let firstLog = w.agent!.stderr
        try w.startAgent()
        let r = try Self.resync(in: firstLog) ?? Self.waitForResync(w.agent!)
        load.stop(timeoutSeconds: 10)
        #expect(r.differing + r.unknown + r.alreadyQueued > 0, "the changes must be found: \(r)")
        let id = try w.point()
        try w.recoverAndCompare(id)
        let resumed = w.agent!.stderr.contains("chunks to compare with the target")
        print("resync under load: killed when its resync began (first run \(firstLog.contains("complete: ") ? "had finished" : "was interrupted")); restart \(resumed ? "resumed the comparison from the .hrl" : "found the disk replicated"): \(r)")
    }
}

