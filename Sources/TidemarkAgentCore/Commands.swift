import Glibc
import TidemarkConfigFiles
import TidemarkSystem
import TidemarkTracking

/// Settings after merging: command line over environment over config file over defaults.
public struct AgentSettings: Sendable {
    public var disks: [String]
    public var stateDir: String
    public var chunkSizeBytes: UInt32
    public var drainIntervalMs: Int
    public var mirrorTo: String?
    public var mirrorIntervalMs: Int
    /// The test switches main read from the environment at start
    /// (`TestSwitches.off` unless the caller sets them).
    public var testSwitches: TestSwitches = .off

    /// Loads the config (`configPath`, or /etc/tidemark/agent.yaml when it
    /// exists) and applies the command-line values given.
    public static func resolve(configPath: String?, disks: [String], stateDir: String?, chunkSize: String?,
                               mirrorTo: String? = nil) throws -> AgentSettings {
        let config = try configPath.map { try AgentConfig.load(path: $0) } ?? AgentConfig.loadDefault()
        Log.setLevel(config.logLevel.agentLevel)
        var chunk = config.chunkSizeBytes
        if let chunkSize {
            guard let v = AgentConfig.parseSize(chunkSize), v >= UInt64(AgentConfig.chunkSizeBytesMin),
                  v <= UInt64(AgentConfig.chunkSizeBytesMax), v & (v - 1) == 0 else {
                throw TidemarkError(.invalidArgument, "--chunk-size '\(chunkSize)' is not a power of two from 4k to 1m",
                                    hint: "for example --chunk-size 64k")
            }
            chunk = UInt32(v)
        }
        let s = AgentSettings(disks: disks.isEmpty ? config.disks : disks, stateDir: stateDir ?? config.stateDir,
                              chunkSizeBytes: chunk, drainIntervalMs: config.drainIntervalMs,
                              mirrorTo: mirrorTo ?? config.mirrorTo, mirrorIntervalMs: config.mirrorIntervalMs)
        guard !s.disks.isEmpty else {
            throw TidemarkError(.invalidArgument, "no disk to work on",
                                hint: "pass --disk /dev/... or list disks under 'disks:' in \(configPath ?? AgentConfig.defaultPath)")
        }
        return s
    }
}

extension LogLevel {
    var agentLevel: Log.Level {
        switch self {
        case .debug: .debug
        case .info: .info
        case .warning: .warning
        case .error: .error
        }
    }
}

public enum AgentCommands {
    /// `track`: tracer → drain → .hrl until SIGTERM/SIGINT; leaves tracking pinned.
    public static func track(_ s: AgentSettings) throws {
        AgentLimitRelations.check()
        // Validate every device before changing anything.
        for d in s.disks { _ = try BlockDeviceInfo.inspect(d) }
        StopSignal.install()
        let sessions = try openSessionsEarly(s.disks, stateDir: s.stateDir, chunkSizeBytes: s.chunkSizeBytes,
                                             testSwitches: s.testSwitches)
        guard !sessions.isEmpty else { return }
        for session in sessions {
            Log.info("\(session.device.path): tracking into \(session.hrl.path) (\(session.startNote); state \(session.hrl.header.state))")
        }
        println("tracking \(sessions.count) disk(s); SIGTERM or Ctrl-C stops the agent, tracking stays pinned")
        while !StopSignal.isRequested {
            for session in sessions {
                let r = try session.drain()
                if r.chunks > 0 { Log.debug("\(session.device.path): drained \(r.chunks) chunks") }
            }
            StopSignal.sleep(milliseconds: s.drainIntervalMs)
        }
        for session in sessions { try session.drain() }
        armShutdownSeal(sessions, stateDir: s.stateDir, testSwitches: s.testSwitches)
        Log.info("stopped; \(sessions.count) disk(s) still tracked by the pinned tracer")
    }

    /// The start of `run` and `track`: attach every disk's tracer slot first
    /// (early in boot the state directory is still read-only), wait until the
    /// state directory is writable, then open and reconcile each disk's
    /// `.hrl` (merging the shutdown seal after an orderly reboot), and mark
    /// the seal consumed. Empty when a stop was requested while waiting.
    static func openSessionsEarly(_ disks: [String], stateDir: String, chunkSizeBytes: UInt32,
                                  testSwitches: TestSwitches) throws -> [DiskSession] {
        let early = EarlyAttach.attachAll(devices: disks, stateDir: stateDir, chunkSizeBytes: chunkSizeBytes,
                                          bootID: testSwitches.hostBootID())
        guard EarlyAttach.waitUntilWritable(stateDir) else {
            Log.info("stopped while waiting for \(stateDir) to become writable; tracking stays pinned")
            return []
        }
        var sessions: [DiskSession] = []
        do {
            for d in disks {
                sessions.append(try DiskSession.open(devicePath: d, stateDir: stateDir, chunkSizeBytes: chunkSizeBytes,
                                                     earlyAttached: early, testSwitches: testSwitches))
            }
        } catch {
            // A failed start leaves no slot it attached for a disk it did not
            // open (and so no idle tracer): nothing records that slot. Disks
            // already opened keep theirs, as their .hrl says tracking.
            let opened = Set(sessions.map(\.device.kernelDev))
            let orphans = early.filter { !opened.contains($0.key) }.map(\.value)
            if !orphans.isEmpty, let tracer = try? Tracer.open(create: false) {
                for slot in orphans { try? tracer.detach(slot) }
            }
            // A disk opened before the failure may have used the seal: it
            // must not complete a file a second time (the disks not opened
            // resync at the next start).
            if !sessions.isEmpty { ShutdownSeal.consume(stateDir: stateDir) }
            throw error
        }
        ShutdownSeal.consume(stateDir: stateDir)
        return sessions
    }

    /// At an orderly stop, after the final drain: arm the shutdown seal and
    /// record `clean` with its nonce in every `.hrl` that is tracking. If the
    /// seal cannot be armed, the files stay `tracking`: a restart in this
    /// boot resumes as before, a reboot requires a resync.
    static func armShutdownSeal(_ sessions: [DiskSession], stateDir: String, testSwitches: TestSwitches) {
        let tracked = sessions.filter { $0.hrl.header.state == .tracking }
        guard !tracked.isEmpty else { return }
        do {
            let nonce = try ShutdownSeal.arm(stateDir: stateDir, sessions: tracked, bootID: testSwitches.hostBootID())
            for s in tracked {
                try s.hrl.setClean(sealNonce: nonce, text: "stopped in order; shutdown seal armed")
            }
            Log.info("shutdown seal armed for \(tracked.count) disk(s): after an orderly reboot that runs the shutdown hook, no resync is needed")
        } catch {
            Log.warning("no shutdown seal: \(error); a restart of the agent in this boot needs no resync, but after a reboot these disks will")
        }
    }

    /// `untrack`: last drain, detach, record that tracking stopped.
    public static func untrack(_ s: AgentSettings) throws {
        for d in s.disks { _ = try BlockDeviceInfo.inspect(d) }
        for d in s.disks {
            let device = try BlockDeviceInfo.inspect(d)
            guard let tracer = try Tracer.open(create: false), let slot = try tracer.slot(for: device) else {
                println("\(d) is not tracked on this host")
                let path = DiskSession.hrlPath(stateDir: realpathString(s.stateDir) ?? s.stateDir, device: device)
                if let f = try? TrackingFile.open(at: path, bootID: s.testSwitches.hostBootID()), f.header.state == .tracking {
                    try f.setState(.resyncRequired, reason: .tracerDetached, text: "the tracer was found detached at untrack")
                }
                continue
            }
            let expected = DiskSession.hrlPath(stateDir: realpathString(s.stateDir) ?? s.stateDir, device: device)
            guard slot.hrlPath == expected else {
                throw TidemarkError(.busy, "\(d) is tracked for state file \(slot.hrlPath), not \(expected)",
                                    hint: "pass --state-dir \(parentDirectory(slot.hrlPath))")
            }
            let session = try DiskSession.open(devicePath: d, stateDir: s.stateDir, chunkSizeBytes: slot.chunkSizeBytes,
                                               testSwitches: s.testSwitches)
            try session.detachAndRecord()
            println("\(d): tracking stopped; \(session.hrl.path) is resync-required (writes from now on are not tracked)")
        }
    }

    /// `mirror`: keep a file or device a continuous copy of one disk.
    public static func mirror(_ s: AgentSettings, once: Bool) throws {
        AgentLimitRelations.check()
        guard s.disks.count == 1 else {
            throw TidemarkError(.invalidArgument, "mirror takes exactly one --disk (got \(s.disks.count))")
        }
        guard let to = s.mirrorTo, !to.isEmpty else {
            throw TidemarkError(.invalidArgument, "no mirror target", hint: "pass --to FILE or set mirror.to in the config")
        }
        let device = try BlockDeviceInfo.inspect(s.disks[0])
        if realpathString(to) == realpathString(device.path) {
            throw TidemarkError(.invalidArgument, "the mirror target \(to) is the source disk itself")
        }
        StopSignal.install()
        let session = try DiskSession.open(devicePath: s.disks[0], stateDir: s.stateDir, chunkSizeBytes: s.chunkSizeBytes,
                                           testSwitches: s.testSwitches)
        Log.info("\(device.path): \(session.startNote); state \(session.hrl.header.state)")
        let mirror = try Mirror(session: session, targetPath: to)
        let start = monotonicNanoseconds()
        if once {
            try mirror.runOnce()
            let secs = Double(monotonicNanoseconds() - start) / 1e9
            println("\(device.path) → \(to): mirror current (\(mirror.stats.bytesRead) bytes read, \(mirror.stats.bytesWritten) written, \(mirror.stats.zeroChunksSkipped) zero chunks skipped, \(String(format1: secs)) s)")
        } else {
            try mirror.runContinuously(intervalMs: s.mirrorIntervalMs)
            Log.info("stopped; tracking stays pinned")
        }
    }
}

/// Writes a line to standard output (unbuffered, one write).
public func println(_ s: String) {
    let line = s + "\n"
    _ = line.withCString { Glibc.write(1, $0, strlen($0)) }
}

extension String {
    init(format1 v: Double) {
        let scaled = (v * 1000).rounded() / 1000
        self = "\(scaled)"
    }
}
