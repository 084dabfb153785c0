import Foundation
import Testing
import TidemarkTesting

/// `compression_level: auto` with a real server and agent over TLS: the
/// level follows what holds replication back, and a disk replicated with
/// segments of many levels recovers identical.
@Suite(.serialized) struct CompressionTests {
    /// Compressible but not trivial data (base64 of random bytes: zstd
    /// works for every byte of it), enough for many 1 MiB segments.
    static func fill(_ w: FaultWorld, mib: Int) throws {
        try sh("head -c \(mib * 3 / 4)M /dev/urandom | base64 -w 120 > \(w.mnt)/text && sync")
    }

    /// Words drawn at random from a small vocabulary: zstd level 1 runs at
    /// about 390 MB/s per core on it (base64: 550) and shrinks it 4.4×, so
    /// the sealers, not the link or the server, are what the copy waits for.
    static func fillWords(_ w: FaultWorld, mib: Int) throws {
        try sh("shuf -r -n \(mib * 200_000) -e block chunk extent segment sector inode journal superblock the of and a to in is"
               + " write read disk page cache | paste -d' ' - - - - - - - - - - - - | head -c \(mib)M > \(w.mnt)/words && sync")
    }

    static func level(_ s: [String: Any]) -> Int { (s["compression_level"] as? NSNumber)?.intValue ?? -100 }
    static func count(_ s: [String: Any], _ key: String) -> UInt64 { (s[key] as? NSNumber)?.uint64Value ?? 0 }

    /// A narrow link (`bandwidth_limit`): the send window fills, and the
    /// level climbs above where it starts; the point taken afterwards,
    /// made of segments of several levels, recovers identical.
    @Test(.requiresRoot) func narrowLinkRaisesTheLevel() throws {
        let w = try FaultWorld("compress-narrow", diskMiB: 96)
        defer { w.close() }
        // 64 MiB of base64, ~48 MiB sealed: ~24 s at 2 MB/s. The level may
        // first go down (the link is idle until the window fills); climbing
        // from the floor takes ~6 steps of 4 segments (~1.5 s each).
        try Self.fill(w, mib: 64)
        try w.startServer()
        try w.startAgent(inflight: "8m", replication: ["bandwidth_limit: 2m", "compression_level: auto"])
        var s: [String: Any] = [:]
        do {
            try waitFor("the level rises above 1 on a 2 MB/s link", timeoutSeconds: 90) {
                s = try w.diskStatus()
                return Self.level(s) > 1
            }
        } catch {
            throw TestFailure("\(error); status: \(s)\(w.logs)")
        }
        #expect(s["compression_auto"] as? Bool == true)
        #expect(Self.count(s, "compression_steps_smaller") >= 1)
        let id = try w.point()
        try w.recoverAndCompare(id)
        #expect(w.agent?.stderr.contains("compression level") == true, "the agent logs its level changes")
    }

    /// Nothing downstream is narrow: the sealers are what the copy waits
    /// for, and the level goes to zstd's fast levels; the point recovers
    /// identical. With a fixed level, the level never moves. The agent runs
    /// on one CPU and the server on the other, at log level info, so that
    /// sealing is the bottleneck on any machine with two CPUs.
    @Test(.requiresRoot, .requires("two CPUs", sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2))
    func sealingBoundLowersTheLevelAndFixedStays() throws {
        let w = try FaultWorld("compress-fast", diskMiB: 160)
        defer { w.close() }
        try Self.fillWords(w, mib: 120)
        try w.startServer(logLevel: "info", cpus: "1")
        try w.startAgent(inflight: "32m", replication: ["compression_level: auto"], logLevel: "info", cpus: "0")
        try waitFor("the initial copy is committed", timeoutSeconds: 120) {
            let s = try w.diskStatus()
            return Self.count(s, "backlog_bytes") == 0 && Self.count(s, "committed_sequence") > 0
        }
        let s = try w.diskStatus()
        #expect(Self.count(s, "compression_steps_faster") >= 1, "status: \(s)\(w.logs)")
        #expect(Self.level(s) < 1, "status: \(s)\n\(w.agent?.stderr.split(separator: "\n").filter { $0.contains("compression level") }.joined(separator: "\n") ?? "")")
        let id = try w.point()
        try w.recoverAndCompare(id)

        // The agent again, at a fixed level, with 8 MiB more written while
        // it was down: the status names the level and no step is taken.
        w.agent?.stop()
        let readBefore = Self.count(s, "bytes_read")
        try sh("dd if=/dev/urandom of=\(w.mnt)/more bs=1M count=8 status=none && sync")
        try w.startAgent(inflight: "32m", replication: ["compression_level: 3"])
        try waitFor("the new writes are committed", timeoutSeconds: 120) {
            let s = try w.diskStatus()
            return Self.count(s, "bytes_read") >= 8 << 20 && Self.count(s, "backlog_bytes") == 0
        }
        let f = try w.diskStatus()
        #expect(Self.level(f) == 3 && f["compression_auto"] as? Bool == false, "status: \(f)")
        #expect(Self.count(f, "compression_steps_faster") == 0 && Self.count(f, "compression_steps_smaller") == 0)
        #expect(readBefore >= 100 << 20)
        try w.recoverAndCompare(try w.point())
    }
}
