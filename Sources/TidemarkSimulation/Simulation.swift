import Glibc
import TidemarkAgentCore
import TidemarkCrypto
import TidemarkSystem
import TidemarkWire

/// Everything that happens in a simulation, in simulated time. Events of
/// the agent and the server carry the run (process incarnation) they
/// belong to: those of a crashed process are ignored.
enum SimEvent: Sendable {
    // The network.
    case deliver(connection: UInt64, to: End)
    case closed(connection: UInt64, to: End)
    // The workload.
    case write
    case pointOrder
    // The agent.
    case agentStart
    case agentDrain(run: UInt64)
    case agentRead(run: UInt64)
    case agentSeal(run: UInt64)
    case agentSend(run: UInt64)
    case agentConnect(run: UInt64)
    case agentTick(run: UInt64)
    case agentPointDeadline(run: UInt64)
    // The server.
    case serverStart
    case serverSync(run: UInt64)
    case serverUpload(run: UInt64)
    case serverTick(run: UInt64)
    // Faults, and the end of them.
    case fault
    case healPartition
    case quiesce
}

/// A seeded simulation of agent ↔ network ↔ process server ↔ target
/// storage in one process (docs/simulation.md): simulated time, a
/// simulated network and disk, crashes of either process at any event,
/// and a checker that compares every recovery point with the simulated
/// disk at the point's instant. A run is a pure function of its seed and
/// options: `tidemark-sim --seed N` replays it exactly.
///
/// Single-threaded; memory: the disk, the target's segments and image, and
/// the expected content of the points not yet checked.
public final class Simulation {
    public struct Options: Sendable {
        public var seed: UInt64
        /// Events before the faults stop and the run must converge.
        public var steps: Int
        /// Simulated seconds before the same (whichever comes first).
        public var seconds: Double
        /// Print every event (for replaying a failure).
        public var trace: Bool
        /// A bug planted on purpose (nil: none): the run must find it.
        public var plantedBug: PlantedBug?

        public init(seed: UInt64, steps: Int = 20_000, seconds: Double = 600, trace: Bool = false, plantedBug: PlantedBug? = nil) {
            self.seed = seed
            self.steps = steps
            self.seconds = seconds
            self.trace = trace
            self.plantedBug = plantedBug
        }
    }

    /// Bugs the simulation can plant in its own shells (never in product
    /// code), so a test can show that the checker finds their class.
    public enum PlantedBug: String, Sendable, CaseIterable {
        /// The agent takes "durable in the spool" for "stored in the
        /// target": on `ackDurable` it also acknowledges itself committed,
        /// so it clears change-tracking bits (and reports points committed)
        /// before the target holds the segments.
        case clearsBitsWhenDurable
    }

    /// What a run did, and its first failure.
    public struct Outcome: Sendable, CustomStringConvertible {
        public var seed: UInt64
        public var steps: Int
        public var simulatedSeconds: Double
        public var failure: String?
        /// The events before the failure (oldest first).
        public var lastEvents: [String]
        public var summary: String
        /// The command that replays the run event by event.
        public var replay: String

        public var description: String {
            var s = "seed \(seed): \(failure == nil ? "ok" : "FAILED") after \(steps) steps, \(String(format1: simulatedSeconds)) simulated s; \(summary)"
            if let failure {
                s += "\n  failure: \(failure)"
                if !lastEvents.isEmpty { s += "\n  last events:\n    " + lastEvents.joined(separator: "\n    ") }
                s += "\n  reproduce: \(replay)"
            }
            return s
        }
    }

    /// The run's shape, drawn from the seed: some runs are calm, some chaotic.
    struct Shape {
        var chunkCount: Int
        var tailBytes: Int
        var writeMeanNs: UInt64
        var pointMeanNs: UInt64
        var faultMeanNs: UInt64
        var faultWeights: [(Fault, Int)]
    }

    enum Fault: CaseIterable {
        case crashAgent, crashServer, cutConnection, silentCut, partition, loseSpool, damageSpool, loseTarget
    }

    let options: Options
    let scheduler: SimScheduler
    let network: SimNetwork
    let disk: SimDisk
    let target: SimTarget
    let server: SimServer
    let agent: SimAgent
    let shape: Shape
    /// Holds the image a recovery writes (materialize writes files); removed
    /// with the simulation.
    let scratchDirectory: String
    private var steps = 0
    private var quiescing = false
    private var failure: String?
    private var trace: [String] = []
    private static let traceKept = 40
    /// What each tagged point must recover to: the disk at its freeze (its
    /// SHA-256; the bytes themselves for the newest `contentsKept`, to name
    /// the first differing byte).
    private var expected: [String: ExpectedPoint] = [:]
    private var withContent: [String] = []
    private static let contentsKept = 16

    struct ExpectedPoint {
        var sequence: UInt64
        var digest: [UInt8]
        var content: [UInt8]?
    }
    /// The target was lost and the agent has not marked the whole disk yet:
    /// the tracking invariant waits for it.
    private var targetLostUnnoticed = false
    private var checks = Checks()

    struct Checks {
        var pointsVerified = 0
        var pointsReported = 0
        var invariantChecks = 0
        var trackingChecks = 0
        var faults: [String: Int] = [:]
    }

    public init(_ options: Options) throws {
        self.options = options
        scheduler = SimScheduler(seed: options.seed)
        var rng = scheduler.rng
        let chunkBytes = 4096
        let chunkCount = 16 + rng.below(113)
        let tail = rng.chance(0.3) ? 512 * (1 + rng.below(7)) : 0
        let calm = rng.chance(0.15)
        var weights: [(Fault, Int)] = [(.crashAgent, 4), (.crashServer, 4), (.cutConnection, 6), (.silentCut, 2),
                                       (.partition, 2), (.loseSpool, 1), (.damageSpool, 2), (.loseTarget, 1)]
        // Some runs leave out some faults entirely.
        weights = weights.map { ($0.0, rng.chance(0.2) ? 0 : $0.1) }
        shape = Shape(chunkCount: chunkCount, tailBytes: tail,
                      writeMeanNs: rng.between(200_000, 20_000_000),
                      pointMeanNs: rng.between(200_000_000, 3_000_000_000),
                      faultMeanNs: calm ? 3_600_000_000_000 : rng.between(50_000_000, 3_000_000_000),
                      faultWeights: weights)
        let faults = SimNetwork.Faults(latencyNs: 50_000...rng.between(100_000, 20_000_000),
                                       retransmitChance: rng.chance(0.5) ? 0.01 : 0, retransmitDelayNs: 200_000_000,
                                       cutChance: calm ? 0 : [0, 0.0005, 0.005][rng.below(3)], silentCutShare: 0.2,
                                       hostileChance: rng.chance(0.2) ? 0.002 : 0)
        let chunksPerSegment = UInt64(1 + rng.below(8))
        let limits = SendWindowLimits(bytesMax: UInt64(chunkBytes) * rng.between(1, 32), segmentsMax: rng.between(1, 24),
                                      chunksPerSegment: chunksPerSegment, runsPerSegmentMax: 1 + rng.below(4))
        scheduler.rng = rng

        let key = try ReplicationKey(bytes: [UInt8](repeating: 0x5A, count: ReplicationKey.keyBytes))
        let agentID = "simagent"
        let diskID = "\(agentID)-vda-0123456789ab"
        disk = SimDisk(chunkBytes: chunkBytes, chunkCount: chunkCount, tailBytes: tail)
        network = SimNetwork(scheduler: scheduler, faults: faults)
        scratchDirectory = try Self.makeScratchDirectory()
        target = try SimTarget(diskID: diskID, sizeBytes: disk.sizeBytes, chunkBytes: chunkBytes, key: key,
                               scratchPath: scratchDirectory + "/recovered.img")
        server = SimServer(scheduler: scheduler, network: network, target: target, diskID: diskID,
                           settings: .init(syncIntervalNs: 2_000_000, uploadIntervalNs: 5_000_000, uploadBatchMax: 1 + rng.below(8),
                                           idleTimeoutNs: 10_000_000_000, appendFailureChance: rng.chance(0.2) ? 0.01 : 0))
        agent = try SimAgent(scheduler: scheduler, network: network, disk: disk, key: key,
                             settings: .init(agentID: agentID, diskID: diskID, limits: limits,
                                             drainIntervalNs: 50_000_000, readNs: 100_000...2_000_000,
                                             batchSegmentsMax: 1 + rng.below(3), pipelineDepth: 1 + rng.below(4),
                                             sealNs: 50_000...3_000_000,
                                             ioTimeoutNs: 2_000_000_000, connectTimeoutNs: 100_000_000,
                                             reconnectDelayNs: 10_000_000...1_000_000_000, freezeTimeoutNs: 1_000_000_000,
                                             commitWaitNs: 10_000_000_000, linkBytesPerSecond: rng.between(1 << 20, 1 << 30),
                                             plantedBug: options.plantedBug))
        agent.connectToServer = { [unowned self] in
            guard self.server.running, !self.network.partitioned else { return nil }
            let id = self.network.open()
            self.server.accept(id, certificateName: agentID)
            return id
        }
        agent.onPoint = { [unowned self] in self.pointOutcome($0) }
        server.onStorageFailure = { [unowned self] in self.fail($0) }
        agent.onFailure = { [unowned self] in self.fail($0) }
        agent.onWholeDiskMarked = { [unowned self] in self.targetLostUnnoticed = false }
    }

    deinit {
        unlink(scratchDirectory + "/recovered.img")
        rmdir(scratchDirectory)
    }

    /// A private directory for recovered images: in /dev/shm when there is
    /// one (no disk writes), else in the temporary directory.
    static func makeScratchDirectory() throws -> String {
        var st = stat()
        let base = stat("/dev/shm", &st) == 0 && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp")
        var template = Array("\(base)/tidemark-sim-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TidemarkError(.io, "cannot create a scratch directory in \(base) for the simulation's recovered images (errno \(errno))",
                                hint: "make \(base) writable, or set TMPDIR to a writable directory")
        }
        return String(cString: made)
    }

    // MARK: Running

    public func run() -> Outcome {
        scheduler.after(0, .serverStart)
        scheduler.after(1, .agentStart)
        scheduler.after(scheduler.rng.exponential(meanNs: shape.writeMeanNs), .write)
        scheduler.after(scheduler.rng.exponential(meanNs: shape.pointMeanNs), .pointOrder)
        scheduler.after(scheduler.rng.exponential(meanNs: shape.faultMeanNs), .fault)
        let limitNs = UInt64(options.seconds * 1e9)
        while failure == nil, let e = scheduler.next() {
            steps += 1
            note(e)
            handle(e)
            if failure == nil { checkAfter(e) }
            if !quiescing && (steps >= options.steps || scheduler.nowNs >= limitNs) {
                quiescing = true
                scheduler.after(0, .quiesce)
            }
            if quiescing, case .quiesce = e { break }
        }
        if failure == nil { converge() }
        return Outcome(seed: options.seed, steps: steps, simulatedSeconds: Double(scheduler.nowNs) / 1e9, failure: failure,
                       lastEvents: failure == nil ? [] : trace, summary: summary, replay: replayCommand)
    }

    private var replayCommand: String {
        var c = "tidemark-sim --seed \(options.seed) --steps \(options.steps) --seconds \(options.seconds)"
        if let bug = options.plantedBug { c += " --plant \(bug.rawValue)" }
        return c + " --trace"
    }

    private func note(_ e: SimEvent) {
        note("\(String(format1: Double(scheduler.nowNs) / 1e6)) ms #\(steps) \(e)")
    }

    private func note(_ line: String) {
        if options.trace { print(line) }
        trace.append(line)
        if trace.count > Self.traceKept { trace.removeFirst(trace.count - Self.traceKept) }
    }

    private func fail(_ what: String) {
        if failure == nil { failure = "at \(String(format1: Double(scheduler.nowNs) / 1e6)) ms, step \(steps): \(what)" }
    }

    private func handle(_ e: SimEvent) {
        switch e {
        case .deliver(let id, let to):
            guard let m = network.deliver(id, to: to) else { return }
            if to == .server { server.receive(id, m) } else { agent.receive(id, m) }
        case .closed(let id, let to):
            if to == .server { server.connectionClosed(id) } else { agent.closed(id) }
        case .write:
            write()
        case .pointOrder:
            if !quiescing {
                agent.orderPoint()
                scheduler.after(scheduler.rng.exponential(meanNs: shape.pointMeanNs), .pointOrder)
            }
        case .agentStart: if !agent.running { agent.start() }
        case .agentDrain(let r): agent.drain(run: r)
        case .agentRead(let r): agent.read(run: r)
        case .agentSeal(let r): agent.sealNext(run: r)
        case .agentSend(let r): agent.sendNext(run: r)
        case .agentConnect(let r): agent.connect(run: r)
        case .agentTick(let r): agent.tick(run: r)
        case .agentPointDeadline(let r): agent.pointDeadline(run: r)
        case .serverStart: if !server.running { server.start() }
        case .serverSync(let r): server.sync(run: r)
        case .serverUpload(let r): server.upload(run: r)
        case .serverTick(let r): server.tick(run: r)
        case .fault:
            if !quiescing {
                injectFault()
                scheduler.after(scheduler.rng.exponential(meanNs: shape.faultMeanNs), .fault)
            }
        case .healPartition:
            network.partitionedUntilNs = 0
        case .quiesce:
            break
        }
    }

    /// A random write: part of a chunk, a chunk, or a few; random bytes, a
    /// repeated byte (compresses), or zeros (a zero extent).
    private func write() {
        if quiescing { return }
        defer { scheduler.after(scheduler.rng.exponential(meanNs: shape.writeMeanNs), .write) }
        guard !disk.frozen else { return }
        var rng = scheduler.rng
        let offset: Int, length: Int
        if rng.chance(0.5) {
            let c = rng.below(disk.chunkCount)
            let n = min(1 + rng.below(4), disk.chunkCount - c)
            offset = c * disk.chunkBytes
            length = min(n * disk.chunkBytes, disk.sizeBytes - offset)
        } else {
            offset = rng.below(disk.sizeBytes)
            length = 1 + rng.below(min(disk.sizeBytes - offset, 3 * disk.chunkBytes))
        }
        let data: [UInt8]
        switch rng.below(3) {
        case 0: data = rng.bytes(length)
        case 1: data = [UInt8](repeating: UInt8(1 + rng.below(255)), count: length)
        default: data = [UInt8](repeating: 0, count: length)
        }
        scheduler.rng = rng
        disk.write(at: offset, data)
    }

    private func injectFault() {
        let total = shape.faultWeights.reduce(0) { $0 + $1.1 }
        guard total > 0 else { return }
        var pick = scheduler.rng.below(total)
        var fault = Fault.crashAgent
        for (f, w) in shape.faultWeights {
            if pick < w { fault = f; break }
            pick -= w
        }
        checks.faults["\(fault)", default: 0] += 1
        note("  fault: \(fault)")
        let restartNs = scheduler.rng.between(10_000_000, 2_000_000_000)
        switch fault {
        case .crashAgent:
            guard agent.running else { return }
            agent.crash()
            scheduler.after(restartNs, .agentStart)
        case .crashServer:
            guard server.running else { return }
            server.crash()
            scheduler.after(restartNs, .serverStart)
        case .cutConnection, .silentCut:
            let open = network.openConnections
            guard !open.isEmpty else { return }
            network.cut(open[scheduler.rng.below(open.count)], silent: fault == .silentCut)
        case .partition:
            network.partitionedUntilNs = scheduler.nowNs + restartNs
            for id in network.openConnections { network.cut(id, silent: true) }
            scheduler.after(restartNs, .healPartition)
        case .loseSpool:
            guard server.running else { return }
            server.loseSpool()
            scheduler.after(restartNs, .serverStart)
        case .damageSpool:
            _ = server.damageOne(using: &scheduler.rng)
        case .loseTarget:
            guard server.running else { return }
            server.loseSpool()
            do { try target.lose() } catch { return fail("a new, empty target could not be made: \(error)") }
            // The agent cleared bits of chunks only the lost target held:
            // the tracking invariant holds again once it noticed.
            if agent.replicatedBefore { targetLostUnnoticed = true }
            scheduler.after(restartNs, .serverStart)
        }
    }

    // MARK: Checks

    private func pointOutcome(_ o: SimAgent.PointOutcome) {
        switch o {
        case .tagged(let id, let sequence, let content):
            expected[id] = ExpectedPoint(sequence: sequence, digest: content.withUnsafeBytes { SHA256.hash($0) }, content: content)
            withContent.append(id)
            if withContent.count > Self.contentsKept { expected[withContent.removeFirst()]?.content = nil }
        case .committed(let id):
            // The agent says the point is committed: it must be recoverable now.
            checks.pointsReported += 1
            guard let p = target.points[id] else {
                return fail("the agent reports point \(id) committed, but the target does not hold it (target committed #\(target.committed))")
            }
            verify(pointID: id, sequence: p.sequence, full: true)
        case .lost, .abandoned:
            break
        }
    }

    /// A point the target holds must recover to the disk at its freeze.
    private func verify(pointID id: String, sequence: UInt64, full: Bool) {
        guard let want = expected[id] else {
            return fail("the target holds point \(id) at #\(sequence), which the agent never tagged (or tagged before the target was lost)")
        }
        guard want.sequence == sequence else {
            return fail("point \(id) was tagged at #\(want.sequence) but the target holds it at #\(sequence)")
        }
        if let image = target.pointImages[id], let problem = difference(image, want) {
            return fail("point \(id) at #\(sequence) differs from the disk at its freeze: \(problem)")
        }
        if full {
            do {
                let recovered = try target.materialize(pointID: id)
                if let problem = difference(recovered, want) {
                    return fail("point \(id) at #\(sequence), recovered from the stored segments, differs from the disk at its freeze: \(problem)")
                }
            } catch {
                return fail("point \(id) at #\(sequence) cannot be recovered: \(error)")
            }
        }
        checks.pointsVerified += 1
    }

    private func difference(_ image: [UInt8], _ want: ExpectedPoint) -> String? {
        if let content = want.content {
            return firstDifference(image, content).map { "from byte \($0) (chunk \($0 / disk.chunkBytes))" }
        }
        return image.withUnsafeBytes({ SHA256.hash($0) }) == want.digest ? nil : "its SHA-256 differs"
    }

    private func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int? {
        if a.count != b.count { return min(a.count, b.count) }
        return a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in
            guard memcmp(pa.baseAddress!, pb.baseAddress!, pa.count) != 0 else { return nil }
            for i in 0..<pa.count where pa[i] != pb[i] { return i }
            return nil
        } }
    }

    private func checkAfter(_ e: SimEvent) {
        if let s = agent.sender {
            checks.invariantChecks += 1
            if let v = s.invariantViolation(deep: true) { return fail("ReplicationSender invariant: \(v)") }
        }
        // Points committed since: each against the disk at its freeze.
        for (id, _) in target.pointImages.sorted(by: { $0.key < $1.key }) {
            verify(pointID: id, sequence: target.points[id]!.sequence, full: false)
            target.pointImages[id] = nil
            if failure != nil { return }
        }
        switch e {
        case .agentDrain, .serverUpload, .fault:
            checkTracking()
        default:
            break
        }
    }

    /// The `.hrl` invariant (docs/design.md): a chunk whose bit is clear in the
    /// kernel map and in the `.hrl` holds what the target holds for it.
    private func checkTracking() {
        guard !targetLostUnnoticed else { return }
        checks.trackingChecks += 1
        target.image.withUnsafeBytes { image in
            disk.bytes.withUnsafeBytes { bytes in
                for c in 0..<disk.chunkCount where !disk.kernelBits[c] && !agent.hrl[c] {
                    let at = c * disk.chunkBytes
                    if memcmp(image.baseAddress! + at, bytes.baseAddress! + at, disk.chunkLength(c)) != 0 {
                        return fail("chunk \(c) is clean in the kernel map and the .hrl, but the target (committed #\(target.committed)) holds other bytes for it")
                    }
                }
            }
        }
    }

    /// After the faults: everything heals and the run must converge — the
    /// agent idle, the target equal to the disk, a last point recovered.
    private func converge() {
        network.partitionedUntilNs = 0
        network.faults.cutChance = 0
        network.faults.hostileChance = 0
        network.faults.retransmitChance = 0
        if !server.running { server.start() }
        if !agent.running { agent.start() }
        let deadline = scheduler.nowNs + 300_000_000_000
        var lastPointAt: UInt64?
        while failure == nil, scheduler.nowNs < deadline, let e = scheduler.next() {
            steps += 1
            note(e)
            switch e {
            case .write, .pointOrder, .fault: continue
            default: handle(e)
            }
            if failure == nil { checkAfter(e) }
            if failure == nil && agent.idle && disk.kernelBits.allSatisfy({ !$0 }) {
                if lastPointAt == nil {
                    // One more point, and wait for it.
                    if agent.orderPoint() { lastPointAt = scheduler.nowNs }
                    continue
                }
                if let d = firstDifference(target.image, disk.bytes) {
                    return fail("converged, but the target differs from the disk from byte \(d) (chunk \(d / disk.chunkBytes))")
                }
                // Every point the target holds recovers to its freeze.
                for (id, p) in target.points.sorted(by: { $0.key < $1.key }) where expected[id] != nil {
                    verify(pointID: id, sequence: p.sequence, full: true)
                    if failure != nil { return }
                }
                return
            }
        }
        if failure == nil {
            fail("did not converge within 300 simulated s after the faults stopped: \(agentState)")
        }
    }

    private var agentState: String {
        guard let s = agent.sender else { return "agent not running" }
        return "agent next #\(s.nextSequence), durable #\(s.durableSequence), committed #\(s.committedSequence), to read \(s.toReadCount), window \(s.window.count), uncommitted \(s.uncommitted.count), .hrl bits \(agent.hrl.filter { $0 }.count); target committed #\(target.committed); server spool \(server.spool.count)"
    }

    private var summary: String {
        let f = checks.faults.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        return "disk \(disk.chunkCount) chunks, \(disk.writes) writes; agent runs \(agent.stats.runs), connections \(agent.stats.connections), renumberings \(agent.stats.renumberings), segments \(agent.stats.segmentsSealed) (+\(agent.stats.staleSegments) stale), points tagged \(agent.stats.pointsTagged) committed \(agent.stats.pointsCommitted) lost \(agent.stats.pointsLost) abandoned \(agent.stats.pointsAbandoned); target #\(target.committed), lost \(target.losses)×; points verified \(checks.pointsVerified); faults: \(f.isEmpty ? "none" : f); network \(network.messagesSent) messages, \(network.cuts) cuts"
    }
}

extension String {
    init(format1 v: Double) {
        let scaled = (v * 10).rounded() / 10
        self = "\(scaled)"
    }
}
