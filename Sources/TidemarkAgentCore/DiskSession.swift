import Glibc
import Synchronization
import TidemarkSurface
import TidemarkSystem
import TidemarkTracking

/// One protected disk in this agent: the device, its `.hrl`, its slot in the
/// pinned tracer, and the drain from the kernel map into the `.hrl`.
///
/// Invariant kept here (docs/design.md, "The .hrl tracking file"): at every instant, each
/// chunk written since the last commit is dirty in the kernel map, in the
/// `.hrl`, or both. So a drain never clears a kernel bit before the `.hrl`
/// holding it is durable: it snapshots the words, persists them
/// (write + fdatasync), and only then clears exactly those bits with an
/// atomic AND-NOT. A write completing meanwhile sets its bit again (or it was
/// still set and stays), and is drained next time.
public final class DiskSession {
    public let device: BlockDeviceInfo
    public let hrl: TrackingFile
    public let tracer: Tracer
    public let slot: TrackedSlot
    public let bitmap: SlotBitmap
    /// What happened at start, for logs and tests.
    public let startNote: String
    /// The replicator's metrics of this disk (nil for track and mirror):
    /// set once, before the replicator's threads start.
    var metrics: DiskMetrics?
    private let deviceLock: FileDescriptor
    /// The drain's snapshot buffer, kept so steady drains do not allocate.
    private var drained = DrainWords()
    /// The same words as `SparseWords` for `persistSet`, also kept.
    private var persisted = SparseWords()
    /// The test switches main read at start (`TestSwitches.off` in
    /// production): the boot id override, the frozen hook of points.
    public let testSwitches: TestSwitches
    /// Test switch (`fakeRecursionMiss`): the first drain behaves as if the
    /// kernel had skipped the program once, because real recursion misses
    /// cannot be provoked on demand.
    private var fakeRecursionMiss: Bool

    public struct DrainResult: Sendable {
        /// Chunks newly drained from the kernel (bits set in the kernel map).
        public var chunks: UInt64
        public var overflowed: Bool
        /// A completion deficit this drain found, and how it was answered.
        public var deficit: DeficitAnswer? = nil
    }

    /// How a completion deficit (docs/tracer.md) was answered.
    public enum DeficitAnswer: Sendable, Equatable {
        /// The chunks of the issue record's requests were marked dirty: the
        /// writes that could have been missed. Confirmed later by the balance.
        case issueRecord(sectors: UInt64, chunks: UInt64)
        /// The whole disk counts as dirty, for the reason given.
        case wholeDisk(sectors: UInt64, why: String)
    }

    /// Deficits found and answered since this agent opened the disk (for
    /// status): written by the drain, read by status.
    private let health = Mutex(TrackingHealth())
    public var trackingHealth: TrackingHealth {
        var h = health.withLock { $0 }
        h.pendingSectors = bitmap.pendingSectors
        h.issueRecordBalanced = bitmap.balanceBase != nil
        return h
    }
    /// When the oldest answer still to confirm was given (monotonic ms);
    /// nil when none (or not since this process started: then at its first drain).
    private var pendingSinceMs: UInt64?
    /// Set when a point's freeze begins: the next drain settles any answer
    /// still to confirm (the disk is still under the freeze).
    private var settleDeficitNow = false
    /// Statistics were turned off while an answer waited to be confirmed.
    private var statisticsLostWithPending = false

    private init(device: BlockDeviceInfo, hrl: TrackingFile, tracer: Tracer, slot: TrackedSlot,
                 bitmap: SlotBitmap, startNote: String, deviceLock: FileDescriptor, testSwitches: TestSwitches) {
        self.device = device; self.hrl = hrl; self.tracer = tracer; self.slot = slot
        self.bitmap = bitmap; self.startNote = startNote; self.deviceLock = deviceLock
        self.testSwitches = testSwitches
        self.fakeRecursionMiss = testSwitches.fakeRecursionMiss
    }

    /// A point's freeze begins for this disk: with the test switch
    /// `fakeRecursionMissUnderFreeze`, the next drain behaves as if the
    /// kernel had skipped the tracer once. Nothing otherwise.
    public func enteringFreeze() {
        settleDeficitNow = true
        if testSwitches.fakeRecursionMissUnderFreeze { fakeRecursionMiss = true }
    }

    /// The state file of `device` in `stateDir`.
    public static func hrlPath(stateDir: String, device: BlockDeviceInfo) -> String {
        stateDir + "/" + device.kernelName + ".hrl"
    }

    /// Takes the per-device agent lock (one agent per device on a host).
    static func lockDevice(_ device: BlockDeviceInfo) throws -> FileDescriptor {
        try makeDirectories(TracerPaths.runDir, mode: 0o700)
        let path = TracerPaths.runDir + "/dev-\(device.major)-\(device.minor).lock"
        let fd = try FileDescriptor(open: path, [.readWrite, .create], purpose: "opening the device lock")
        guard try fd.tryLockExclusive() else {
            var buf = [UInt8](repeating: 0, count: 32)
            let n = (try? buf.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }) ?? 0
            let pid = String(decoding: buf[0..<n], as: UTF8.self).trimmingWhitespace()
            throw TidemarkError(.busy, "\(device.path) is already being tracked by another agent process (pid \(pid.isEmpty ? "?" : pid))",
                                hint: "stop that agent first (kill -TERM \(pid.isEmpty ? "<pid>" : pid)); tracking stays pinned while it is stopped")
        }
        try fd.truncate(to: 0)
        let pid = Array("\(getpid())\n".utf8)
        try pid.withUnsafeBytes { try fd.write($0, at: 0) }
        return fd
    }

    /// Opens (or creates) the disk's state, reconciles it with the pinned
    /// tracer, and starts or resumes tracking. Everything that makes the
    /// `.hrl` untrustworthy is recorded in it as `resync-required`.
    /// `earlyAttached`: the slots this process attached itself just before
    /// (`EarlyAttach.attachAll`), by region dev; they count as attached now,
    /// not as tracking kept from before.
    public static func open(devicePath: String, stateDir: String, chunkSizeBytes: UInt32,
                            earlyAttached: [UInt32: TrackedSlot] = [:], testSwitches: TestSwitches) throws -> DiskSession {
        let bootNow = testSwitches.hostBootID()
        let device = try BlockDeviceInfo.inspect(devicePath)
        try makeDirectories(stateDir, mode: 0o700)
        guard let stateDirAbs = realpathString(stateDir) else {
            throw TidemarkError(.notFound, "state directory \(stateDir) cannot be resolved")
        }
        let lock = try lockDevice(device)
        let hrlPath = hrlPath(stateDir: stateDirAbs, device: device)
        guard var tracer = try Tracer.open(create: true) else {
            throw TidemarkError(.state, "the tracer could not be opened after loading it")
        }
        var started = false
        defer {
            // A start that failed must not leave an idle tracer loaded.
            if !started { try? tracer.releaseIfUnused() }
        }
        var existing = try tracer.slot(for: device)
        let attachedByUs = existing != nil && earlyAttached[device.kernelDev] == existing
        if let e = existing {
            if e.hrlPath != hrlPath {
                throw TidemarkError(.busy, "\(device.path) is already tracked by another agent (state file \(e.hrlPath))",
                                    hint: "use --state-dir \(parentDirectory(e.hrlPath)), or run `tidemark-agent untrack --disk \(device.path) --state-dir \(parentDirectory(e.hrlPath))` first")
            }
            if e.chunkSizeBytes != chunkSizeBytes {
                throw TidemarkError(.busy, "\(device.path) is tracked with chunk size \(e.chunkSizeBytes) bytes, not \(chunkSizeBytes)",
                                    hint: "pass --chunk-size \(e.chunkSizeBytes), or untrack the disk first (that forces a resync)")
            }
        }

        let identity = DiskIdentity(diskID: device.kernelName, identity: device.identity, sizeBytes: device.sizeBytes)
        var notes: [String] = []
        var hrl: TrackingFile?
        var resync: (ResyncReason, String)?
        if !fileExists(hrlPath) {
            resync = existing != nil && !attachedByUs
                ? (.trackingFileMissing, "the tracking file was missing while the tracer was attached")
                : (.neverSynchronized, "first tracking of this disk: no earlier state")
        } else {
            do {
                let f = try TrackingFile.open(at: hrlPath, bootID: bootNow)
                let h = f.header
                if h.diskSizeBytes != device.sizeBytes {
                    resync = (.diskSizeChanged, "disk size changed from \(h.diskSizeBytes) to \(device.sizeBytes) bytes")
                } else if h.diskIdentity != device.identity {
                    resync = (.diskIdentityChanged, "disk identity changed from '\(h.diskIdentity)' to '\(device.identity)'")
                } else if h.chunkSizeBytes != chunkSizeBytes {
                    resync = (.chunkSizeChanged, "chunk size changed from \(h.chunkSizeBytes) to \(chunkSizeBytes) bytes")
                } else {
                    hrl = f
                }
            } catch let e as TrackingFileError {
                let aside = hrlPath + ".corrupt-\(wallClockNanoseconds() / 1_000_000_000)"
                _ = Glibc.rename(hrlPath, aside)
                notes.append("kept the untrusted file as \(aside)")
                resync = (.trackingFileCorrupt, e.detail)
            }
        }
        if let (reason, text) = resync {
            Log.warning("\(device.path): resync required (\(reason)): \(text)")
            notes.append("resync-required: \(reason): \(text)")
            if let e = existing, e.nrSectors != device.sizeBytes / 512 {
                // The pinned slot was sized for the old disk: replace it.
                try tracer.detach(e)
                existing = nil
                // Detaching the last slot unpins the whole tracer: load it again.
                guard let reloaded = try Tracer.open(create: true) else {
                    throw TidemarkError(.state, "the tracer could not be opened after loading it")
                }
                tracer = reloaded
            }
            hrl = try TrackingFile.create(at: hrlPath, identity: identity, chunkSizeBytes: chunkSizeBytes,
                                          state: .resyncRequired, reason: reason, reasonText: text, bootID: bootNow)
        }
        let file = hrl!

        let outcome = try attach(&tracer, device, chunkSizeBytes: chunkSizeBytes, hrlPath: hrlPath)
        let slot: TrackedSlot
        let fresh: Bool
        switch outcome {
        case .resumed(let s):
            slot = s
            fresh = attachedByUs && s == existing
            notes.append(fresh ? "attached the tracer early (slot \(s.slot))" : "resumed pinned tracking (slot \(s.slot))")
        case .attached(let s):
            slot = s
            fresh = true
            notes.append("attached the tracer (slot \(s.slot))")
        }
        let h = file.header
        var lost: (ResyncReason, String)?
        switch h.state {
        case .resyncRequired:
            break
        case .tracking where h.bootID != bootNow:
            // Whether the slot is new or was attached earlier in this boot:
            // the agent never stopped in order before the host went down.
            lost = (.uncleanShutdown, "the host went down while the disk was tracked and the agent had not stopped in order (boot id \(h.bootID) → \(bootNow)); writes after its last drain are unknown")
        case .tracking:
            if fresh {
                // The .hrl says we were tracking, but no tracer was: writes went unseen.
                lost = (.tracerDetached, "the tracer was detached while the state file said tracking; writes in between are unknown")
            }
        case .clean where h.bootID == bootNow:
            if fresh {
                lost = (.tracerDetached, "the pinned tracer slot went away while the agent was stopped; writes in between are unknown")
            } else {
                // Restarted in the same boot: the pinned slot kept every bit.
                try file.setState(.tracking, reason: .none, text: "")
            }
        case .clean:
            // Rebooted after an orderly stop: complete only with the shutdown
            // seal and a slot attached early in this boot.
            switch ShutdownSeal.recover(stateDir: stateDirAbs, hrl: file, slot: slot, bootID: bootNow) {
            case .recovered(let words, let extents):
                try file.persistSet(words)
                try file.setState(.tracking, reason: .none, text: "")
                let text = "orderly reboot: merged \(words.popcount) chunk(s) in \(extents) extent(s) from the shutdown seal; no resync"
                Log.info("\(device.path): \(text)")
                notes.append(text)
            case .resync(let reason, let text):
                lost = (reason, text)
            }
        }
        if let (reason, text) = lost {
            Log.warning("\(device.path): resync required (\(reason)): \(text)")
            notes.append("resync-required: \(reason): \(text)")
            try file.setState(.resyncRequired, reason: reason, text: text)
        }
        let bitmap = try SlotBitmap(tracer: tracer, slot: slot)
        // The completion cross-check's offset: kept in the pinned slot state
        // across restarts, established once per slot.
        if !bitmap.establishSectorOffset(samples: Limits.crossCheckBaselineSamples,
                                         gapMicroseconds: Limits.crossCheckBaselineSampleGapUs) {
            Log.warning("\(device.path): the kernel keeps no I/O statistics for this disk (/sys/dev/block/\(slot.wholeDev >> 20):\(slot.wholeDev & 0xfffff)/queue/iostats is 0), so completions the tracer might not see cannot be detected; enable them with `echo 1 > /sys/dev/block/\(slot.wholeDev >> 20):\(slot.wholeDev & 0xfffff)/queue/iostats`")
        }
        started = true
        return DiskSession(device: device, hrl: file, tracer: tracer, slot: slot, bitmap: bitmap,
                           startNote: notes.joined(separator: "; "), deviceLock: lock, testSwitches: testSwitches)
    }

    /// Attaches (or resumes) `device`'s slot, opening the pinned tracer
    /// again when another process unpinned it after `tracer` was opened.
    static func attach(_ tracer: inout Tracer, _ device: BlockDeviceInfo, chunkSizeBytes: UInt32,
                       hrlPath: String) throws -> Tracer.AttachOutcome {
        var attempt = 1
        while true {
            do {
                return try tracer.attach(device, chunkSizeBytes: chunkSizeBytes, hrlPath: hrlPath)
            } catch let e as Tracer.Replaced {
                // Another process unpinned the tracer after we opened it
                // (its last slot went away): our handles are of a program
                // that is no longer attached. Open the pinned one again.
                guard attempt < Limits.tracerReopenAttemptsMax else {
                    throw TidemarkError(.busy, "\(device.path): \(e) (\(attempt) attempts)",
                                        hint: "another tool keeps loading and unloading \(TracerPaths.pinDir); stop it")
                }
                attempt += 1
                Log.info("\(device.path): the pinned tracer changed while starting; opening it again")
                guard let reopened = try Tracer.open(create: true) else {
                    throw TidemarkError(.state, "the tracer could not be opened after loading it")
                }
                tracer = reopened
            }
        }
    }

    /// Moves every set bit of the kernel map into the `.hrl`, durably, then
    /// clears those bits in the kernel map. See the type's comment for why
    /// the order is what it is.
    /// `visit` sees each drained word (index, bits) once it is durable in the
    /// `.hrl` and before it leaves the kernel map; after an overflow the
    /// whole disk was marked dirty and the result says so.
    @discardableResult
    public func drain(_ visit: ((UInt64, UInt64) -> Void)? = nil) throws -> DrainResult {
        let words = bitmap.words
        // Read before the snapshot: a completion the kernel skipped before
        // this point is covered by marking the whole region below.
        let misses = try tracer.recursionMisses()
        let missed = misses > bitmap.recursionMissesSeen || fakeRecursionMiss
        if missed {
            Log.warning("\(device.path): the kernel skipped the tracer \(max(1, misses &- bitmap.recursionMissesSeen)) time(s) because it was already running on that CPU; a skipped completion may have been a write to this disk, so the whole disk counts as dirty")
        }
        // The kernel's statistics count every completed write; the program
        // counts those it saw. A deficit means a completion went unseen:
        // its probe was skipped (docs/tracer.md, "Completion cross-check").
        keepSectorOffsetValid()
        let deficit = bitmap.sectorDeficit()
        var answer: DeficitAnswer?
        var fromRecord = SparseWords()
        var recordNote: String?
        if let d = deficit {
            metrics?.completionDeficit()
            health.withLock { $0.deficits += 1; $0.sectorsUnseen += d.sectors }
            let unseen = "the kernel completed \(d.sectors) sectors of writes on this disk that the tracer did not see (it skipped the probe on block:block_rq_complete, as this kernel does now and then under heavy I/O and more often while other tools attach or detach probes there)"
            switch issueRecordWords() {
            case .success(let w):
                fromRecord = w
                answer = .issueRecord(sectors: d.sectors, chunks: w.popcount)
                recordNote = "\(unseen); marking the \(w.popcount) chunk(s) of the writes the issue record holds (in flight, or completed unseen) dirty, not the whole disk"

            case .failure(let why):
                answer = .wholeDisk(sectors: d.sectors, why: why.text)
                Log.warning("\(device.path): \(unseen); the whole disk counts as dirty and is compared again: \(why.text)")
            }
        }
        // An answer from the issue record holds if the record missed nothing
        // either: confirmed, or replaced by the whole disk, when the disk is
        // next still (docs/tracer.md, "Issue record").
        let pendingBefore = bitmap.pendingSectors
        var settle: (base: UInt64?, wholeDiskWhy: String?)?
        if case .issueRecord(let sectors, _) = answer { bitmap.setPendingSectors(pendingBefore &+ sectors) }
        if bitmap.pendingSectors > 0 || bitmap.balanceBase == nil {
            settle = settlePending()
        }
        let wholeDiskWhy: String? = {
            if case .wholeDisk(_, let why) = answer { return why }
            if statisticsLostWithPending {
                return "the kernel stopped keeping I/O statistics before an answer from the issue record was confirmed"
            }
            return settle?.wholeDiskWhy
        }()
        statisticsLostWithPending = false
        if let why = wholeDiskWhy, deficit == nil || settle?.wholeDiskWhy != nil {
            Log.warning("\(device.path): \(why); the whole disk counts as dirty and is compared again")
        }
        let overflow = bitmap.overflowed || missed || wholeDiskWhy != nil
        DrainScan.snapshot(words, into: &drained)
        if overflow {
            if !missed && wholeDiskWhy == nil { Log.warning("\(device.path): the tracer could not mark one request bit by bit; marking the whole disk dirty") }
            try hrl.markAllDirty()
        }
        if let note = recordNote {
            // The writes of this drain's window, for comparison.
            Log.warning("\(device.path): \(note); \(drained.popcount) chunk(s) were written since the last drain")
        }
        if !fromRecord.isEmpty && !overflow {
            try hrl.persistSet(fromRecord)
            if let visit { for e in fromRecord.entries { visit(e.wordIndex, e.bits) } }
        }
        if !drained.isEmpty {
            persisted.assign(drained)
            try hrl.persistSet(persisted)
            if let visit { for i in 0..<drained.count { let e = drained[i]; visit(e.wordIndex, e.bits) } }
        }
        // Durable now: the kernel copies of exactly these bits may go.
        DrainScan.clear(words, drained)
        if overflow { bitmap.clearOverflow() }
        if missed { bitmap.setRecursionMissesSeen(misses); fakeRecursionMiss = false }
        // Durable now: the deficit up to this sample is covered, by the
        // record's chunks (to be confirmed) or the whole disk.
        if let d = deficit { bitmap.setSectorOffset(d.sample) }
        if let settle {
            if let b = settle.base { bitmap.setBalanceBase(b) } else { bitmap.clearBalanceBase() }
            bitmap.setPendingSectors(0)
            pendingSinceMs = nil
        } else if overflow && bitmap.pendingSectors > 0 {
            // The whole disk covers whatever the pending answers missed.
            bitmap.setPendingSectors(0)
            pendingSinceMs = nil
        }
        if case .issueRecord(_, let chunks)? = answer {
            health.withLock { $0.answeredFromIssueRecord += 1; $0.chunksFromIssueRecord += chunks }
            metrics?.deficitAnswered(fromIssueRecord: true, chunks: chunks)
        }
        if let why = wholeDiskWhy {
            health.withLock { $0.wholeDisk += 1; $0.lastWholeDiskWhy = why }
            metrics?.deficitAnswered(fromIssueRecord: false, chunks: slot.nrChunks)
            if case .issueRecord(let sectors, _)? = answer { answer = .wholeDisk(sectors: sectors, why: why) }
            else if answer == nil { answer = .wholeDisk(sectors: 0, why: why) }
        }
        return DrainResult(chunks: drained.popcount, overflowed: overflow, deficit: answer)
    }

    struct DeficitFallback: Error { let text: String }

    /// The chunks of this slot that the issue record's requests touch.
    func issueRecordWords() -> Result<SparseWords, DeficitFallback> {
        guard bitmap.balanceBase != nil else {
            return .failure(DeficitFallback(text: "the disk has not been still since tracking began, so the issue record has no balance to be checked against yet"))
        }
        let records: [(sector: UInt64, sectors: UInt32)]
        do { records = try tracer.issueRecords(wholeDev: slot.wholeDev) } catch {
            return .failure(DeficitFallback(text: "the issue record could not be read: \(error)"))
        }
        // Runs of chunks, not chunks: one record may be a discard of
        // terabytes. Sorted and merged, so the words go in increasing order.
        var runs: [(first: UInt64, last: UInt64)] = []
        let start = slot.startSector, end = slot.startSector + slot.nrSectors
        let shift = UInt64(slot.chunkShift)
        for r in records {
            // Read from kernel memory without locks: saturate, never trap.
            let (sum, over) = r.sector.addingReportingOverflow(UInt64(r.sectors))
            let a = max(r.sector, start), b = min(over ? .max : sum, end)
            guard a < b, slot.nrChunks > 0 else { continue }
            runs.append(((a - start) >> shift, min((b - 1 - start) >> shift, slot.nrChunks - 1)))
        }
        runs.sort { $0.first < $1.first }
        var words = SparseWords()
        var current: (first: UInt64, last: UInt64)?
        for r in runs {
            if let c = current, r.first <= c.last &+ 1 {
                current = (c.first, max(c.last, r.last))
                continue
            }
            if let c = current { words.appendChunks(first: c.first, count: c.last - c.first + 1) }
            current = r
        }
        if let c = current { words.appendChunks(first: c.first, count: c.last - c.first + 1) }
        return .success(words)
    }

    /// Checks the issue record's balance when the disk is still: with an
    /// answer pending, a balance above the base means the record missed
    /// writes the completion probe missed too, and the whole disk counts.
    /// Without the disk still, an answer is settled as the whole disk only
    /// under a point's freeze or after `Limits.deficitConfirmWaitMsMax`.
    /// Returns the new base (nil: none until the disk is next still), or nil
    /// when nothing is settled now.
    func settlePending() -> (base: UInt64?, wholeDiskWhy: String?)? {
        let pending = bitmap.pendingSectors
        let now = monotonicNanoseconds() / 1_000_000
        if pending > 0 && pendingSinceMs == nil { pendingSinceMs = now }
        let underFreeze = settleDeficitNow
        settleDeficitNow = false
        if let b = bitmap.stillBalance(gapMicroseconds: Limits.stillSampleGapUs) {
            guard let base = bitmap.balanceBase, pending > 0 else { return (b, nil) }
            let excess = Int64(bitPattern: b &- base)
            if excess > 0 {
                return (b, "the issue record missed \(excess) sectors of writes whose completions were not seen either (both probes skipped)")
            }
            health.withLock { $0.confirmed += 1 }
            Log.info("\(device.path): confirmed: the \(pending) sectors of writes the tracer did not see were all in the issue record, whose chunks were marked dirty")
            return (b, nil)
        }
        guard pending > 0 else { return nil }
        let waited = now - (pendingSinceMs ?? now)
        if underFreeze || waited >= UInt64(Limits.deficitConfirmWaitMsMax) {
            // The base is dropped (what the record missed meanwhile is
            // unknown); the next still moment sets a new one.
            let when = underFreeze ? "under the point's freeze" : "for \(waited / 1000) s"
            return (nil, "the issue record's answer to \(pending) unseen sectors could not be confirmed: the disk was not still \(when)")
        }
        return nil
    }

    /// While the kernel keeps no statistics for the disk (`queue/iostats`
    /// turned off) the program counts on and the kernel does not, so the old
    /// offset would later hide that many sectors of missed completions: it is
    /// dropped, and established afresh once statistics are back.
    func keepSectorOffsetValid() {
        if bitmap.sectorOffset != nil {
            guard bitmap.sectorSample() == nil else { return }
            bitmap.clearSectorOffset()
            // The issue record's balance counts the kernel's sectors too.
            bitmap.clearBalanceBase()
            if bitmap.pendingSectors > 0 { statisticsLostWithPending = true }
            Log.warning("\(device.path): the kernel stopped keeping I/O statistics for this disk (queue/iostats is 0): writes the tracer might not see cannot be detected until they are turned on again (`echo 1 > /sys/dev/block/\(slot.wholeDev >> 20):\(slot.wholeDev & 0xfffff)/queue/iostats`)")
        } else if bitmap.establishSectorOffset(samples: Limits.crossCheckBaselineSamples,
                                               gapMicroseconds: Limits.crossCheckBaselineSampleGapUs) {
            Log.info("\(device.path): the kernel keeps I/O statistics for this disk again: completion cross-check resumed")
        }
    }

    /// Stops tracking: a last drain, then the slot is released and the state
    /// file records that writes from now on are not tracked.
    public func detachAndRecord() throws {
        try drain()
        try tracer.detach(slot)
        try hrl.setState(.resyncRequired, reason: .tracerDetached,
                         text: "untracked by the operator; writes after that are not tracked")
    }
}

func parentDirectory(_ path: String) -> String {
    guard let i = path.lastIndex(of: "/") else { return "." }
    return i == path.startIndex ? "/" : String(path[..<i])
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

/// The two halves of a drain that touch the shared kernel words; the
/// benchmark measures exactly these. The work is in `DrainWords` (C loops:
/// vector extraction of the non-zero words, prefetched locked AND-NOTs).
public enum DrainScan {
    /// Every non-zero word, read without changing it, into `drained`
    /// (replacing its contents, reusing its capacity).
    public static func snapshot(_ words: MappedWords, into drained: inout DrainWords) {
        drained.snapshot(words)
    }

    /// Clears exactly the snapshot's bits (atomic AND-NOT per word): bits
    /// set since the snapshot survive.
    public static func clear(_ words: MappedWords, _ drained: DrainWords) {
        drained.clear(words)
    }

    /// Every non-zero word, read without changing it, as `SparseWords`.
    public static func snapshot(_ words: MappedWords) -> SparseWords {
        var drained = DrainWords()
        drained.snapshot(words)
        return SparseWords(drained)
    }

    /// Clears exactly the bits of `sparse` (atomic AND-NOT): bits set since
    /// the snapshot survive.
    public static func clear(_ words: MappedWords, _ sparse: SparseWords) {
        for e in sparse.entries { words.clear(Int(e.wordIndex), e.bits) }
    }
}
