import Foundation
import Testing
import TidemarkTesting

/// One test's world: a temp dir, a tracer sandbox, loop devices, agents,
/// all torn down by `close()` in every case.
final class Harness: @unchecked Sendable {
    let dir: String
    let stateDir: String
    let sandbox: TracerSandbox
    var loops: [LoopDevice] = []
    var agents: [BackgroundProcess] = []
    let chunk: UInt64 = 64 << 10

    init(_ tag: String) throws {
        dir = try TestEnv.tempDir(tag)
        stateDir = dir + "/state"
        sandbox = TracerSandbox(tag: tag)
    }

    var env: [String: String] { sandbox.env.merging(["TIDEMARK_DRAIN_INTERVAL_MS": "50"]) { $1 } }

    func loop(sizeMiB: UInt64 = 64, directIO: Bool = true) throws -> LoopDevice {
        let l = try LoopDevice(sizeBytes: sizeMiB << 20, in: dir, directIO: directIO)
        loops.append(l)
        return l
    }

    func agent(_ args: [String], extraEnv: [String: String] = [:]) throws -> ProcessResult {
        try run([TestEnv.binary("tidemark-agent")] + args, env: env.merging(extraEnv) { $1 })
    }

    func startTrack(_ disks: [LoopDevice], chunkSize: String = "64k", stateDir: String? = nil) throws -> BackgroundProcess {
        var args = [TestEnv.binary("tidemark-agent"), "track", "--state-dir", stateDir ?? self.stateDir, "--chunk-size", chunkSize]
        for d in disks { args += ["--disk", d.path] }
        let p = try BackgroundProcess(args, env: env, logDir: dir)
        agents.append(p)
        try p.waitForOutput("tracking")
        return p
    }

    func bitmap(_ args: [String]) throws -> ProcessResult {
        try run([TestEnv.binary("tidemark-bitmap")] + args, env: env)
    }

    func hrl(_ d: LoopDevice) -> String { stateDir + "/" + d.name + ".hrl" }

    /// The dirty chunks (kernel map ∪ .hrl) as the debug tool reports them.
    func dirtyChunks(_ d: LoopDevice, hrlOnly: Bool = false, chunk: UInt64? = nil) throws -> Set<UInt64> {
        let r = try bitmap(["extents", hrl(d), "--json"] + (hrlOnly ? ["--hrl-only"] : []))
        guard r.ok else { throw TestFailure("tidemark-bitmap extents failed: \(r.stderr)") }
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let cs = (obj["chunk_size"] as! NSNumber).uint64Value
        if let chunk { #expect(cs == chunk) }
        var out = Set<UInt64>()
        for e in obj["extents"] as! [[NSNumber]] {
            let off = e[0].uint64Value, len = e[1].uint64Value
            #expect(off % cs == 0)
            for c in (off / cs)..<((off + len + cs - 1) / cs) { out.insert(c) }
        }
        return out
    }

    func header(_ d: LoopDevice) throws -> [String: Any] {
        let r = try bitmap(["show", hrl(d), "--json", "--hrl-only"])
        guard r.ok else { throw TestFailure("tidemark-bitmap show failed: \(r.stderr)") }
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
    }

    /// Writes `length` bytes of random data at `offset` with O_DIRECT (dd).
    func writeDirect(_ d: LoopDevice, offset: UInt64, length: UInt64) throws {
        try sh("head -c \(length) /dev/urandom | dd of=\(d.path) bs=\(length) seek=\(offset) oflag=direct,seek_bytes iflag=fullblock status=none")
    }

    func chunks(offset: UInt64, length: UInt64, chunk: UInt64? = nil) -> Set<UInt64> {
        let c = chunk ?? self.chunk
        return Set((offset / c)...((offset + length - 1) / c))
    }

    /// Gives the agent time to drain (its interval is 50 ms here).
    func settle() { usleep(400_000) }

    func close() {
        for a in agents { a.stop() }
        for l in loops {
            _ = try? run([TestEnv.binary("tidemark-agent"), "untrack", "--disk", l.path, "--state-dir", stateDir], env: env)
            l.detach()
        }
        sandbox.cleanup()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
