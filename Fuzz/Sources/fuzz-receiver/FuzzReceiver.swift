// The rules of ingest without the transport: a `ReplicationReceiver` driven
// directly, as `ProcessServer` drives it, by sessions and by an in-memory
// sink that keeps what it is handed and completes, reports and loses at
// moments the input chooses (always within the `SegmentSink` contract of
// Sources/TidemarkServerCore/SegmentSink.swift). No TLS, no threads, no
// files: thousands of inputs per second, against ~4 for `fuzz-server`.
//
// Input: one byte of prelude, then a stream of operations. The prelude
// says what the sink holds from an earlier run before the receiver starts
// (bits 0 and 1: disks 0 and 1 have a record of agent-a, bits 2-3 the
// sequences committed, bits 4-5 how many more are held durable and not
// committed), as a restarted server's spool and target storage would. Each
// operation is one byte and the bytes it reads after it (missing bytes read
// as 0):
//   0 accept a session          1 its TLS handshake (certificate name)
//   2 hello                     3 openDisk              4 a segment header
//   5 digestRequest             6 ping / pong / error / a server's message
//   7 a raw frame (u8 length, then bytes, decoded by FrameReader)
//   8 9 the sink completes a piece of work (lookup, create, settle, forget)
//  10 an append completes (or fails)   11 the sink reports durability
//  12 commitment                 13 a loss    14 the transport ends a session
//  15 a `.segment` message of raw bytes (u8 length)
// Sessions, disk ids, agents and geometries are picked from small sets (with
// hostile members) or read raw. The driver follows the shell's contract:
// no message to a session that waits (`isBusy`), completions only for what
// was asked, an append's outcome before the session ends.
// Invariants: no trap; `invariantProblem()` is nil after every event; every
// message sent encodes as a frame and goes to a session that has not ended;
// a disk is acknowledged on a session only after its diskState there, and
// acknowledgements never go down on a session; an ackDurable never names a
// sequence the sink has not reported durable, nor one it reported lost and
// has not forgotten yet; an ackCommitted never names one the sink has not
// reported committed; every diskState names exactly what the sink keeps
// (durable: all of it, and all of it reported durable; committed: what it
// reported committed); the sink is handed only the disk's next sequence
// (never one it keeps already: no sequence is stored twice), only by the
// disk's owner, and is never asked for chunks outside the disk.
import FuzzSupport
import TidemarkSystem
import TidemarkTarget
import TidemarkWire
@testable import TidemarkServerCore

@_cdecl("fuzz_receiver_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

typealias R = ReplicationReceiver
typealias S = R.SessionID

let agents = ["agent-a", "agent-b", "agent", "", "agent-a-sdb"]
let disks = ["agent-a-sdb-0123456789ab", "agent-a-sdc-0123456789ab", "agent-b-sdb-0123456789ab", "agent-a-disk",
             "agent-a-dm-0-0123456789ab", "agent-a-sdb-0123456789AB", "agent-a-sdb-sdc-0123456789ab"]
let sizes: [UInt64] = [64 << 20, 1 << 20, 0, UInt64.max, DiskGeometry.sizeBytesMax, DiskGeometry.sizeBytesMax + 1, 65536 + 1]
let chunks: [UInt32] = [65536, 4096, 0, 3, 1 << 20, 1 << 21, UInt32.max]
let keys: [UInt64] = [7, 8, 0, UInt64.max]

/// The input, read a few bytes at a time.
struct Input {
    let bytes: [UInt8]
    var at = 0
    var more: Bool { at < bytes.count }
    mutating func u8() -> UInt8 {
        defer { at += 1 }
        return at < bytes.count ? bytes[at] : 0
    }
    mutating func u64() -> UInt64 { (0..<8).reduce(0) { v, i in v | UInt64(u8()) << (8 * UInt64(i)) } }
    mutating func below(_ n: Int) -> Int { Int(u8()) % n }
    /// Mostly one of `values`, sometimes raw.
    mutating func pick(_ values: [UInt64]) -> UInt64 {
        let i = Int(u8())
        return i < values.count * 16 ? values[i % values.count] : u64()
    }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in u8() } }
}

/// The driver: the receiver, the sessions' view and the in-memory sink.
struct World {
    var r = R(configuration: .init(serverID: "fuzz", maxConnections: 4, disksPerSessionMax: 3,
                                   unauthenticatedMax: 6, unauthenticatedPerSourceMax: 3))
    var nextSession: UInt64 = 1
    var nowNs: UInt64 = 0
    /// Sessions accepted and not ended, and those the receiver closed.
    var sessions: [S] = []
    var closed: Set<S> = []
    /// The sink: disk records it stores, what it keeps, what it reported.
    var records: [String: DiskRecord] = [:]
    var quarantined: Set<String> = []
    var kept: [String: [UInt64]] = [:]
    var durable: [String: UInt64] = [:]
    var committed: [String: UInt64] = [:]
    var lostFrom: [String: UInt64] = [:]
    /// Work asked of the sink, not completed yet; appends in flight.
    var work: [R.Effect] = []
    var appending: [(S, String, UInt64)] = []
    /// Per session and disk: acknowledged durable, committed.
    var acked: [S: [String: (durable: UInt64, committed: UInt64)]] = [:]

    /// The sink as the prelude byte leaves it from an earlier run.
    init(prelude: UInt8) {
        for i in 0..<2 where prelude & (1 << i) != 0 {
            let d = disks[i]
            records[d] = DiskRecord(diskID: d, ownerAgentID: "agent-a", sizeBytes: 64 << 20, chunkSizeBytes: 65536, keyID: 7)
            let c = UInt64(prelude >> 2 & 3), held = c + UInt64(prelude >> 4 & 3)
            kept[d] = held > c ? Array(c + 1...held) : []
            durable[d] = held
            committed[d] = c
        }
    }

    mutating func feed(_ event: R.Event) {
        let out = r.handle(event)
        Fuzz.check(r.invariantProblem() == nil, "after \(event): \(r.invariantProblem() ?? "")")
        for e in out { effect(e) }
    }

    mutating func effect(_ e: R.Effect) {
        switch e {
        case .send(let s, let m):
            Fuzz.check(sessions.contains(s), "a message for \(s), which has ended")
            let writer = FrameWriter(MemoryStream())
            do { try writer.send(m) } catch { Fuzz.check(false, "the receiver sends a \(m.type) that does not encode: \(error)") }
            switch m {
            case .ackDurable(let d, let q):
                guard let told = acked[s]?[d] else { return Fuzz.check(false, "ackDurable \(d) on \(s), which was not told its diskState") }
                Fuzz.check(q >= told.durable, "ackDurable \(d) went down on \(s): #\(q) after #\(told.durable)")
                Fuzz.check(q <= durable[d] ?? 0, "ackDurable \(d) #\(q), the sink reported durable through #\(durable[d] ?? 0)")
                Fuzz.check(q < lostFrom[d] ?? .max, "ackDurable \(d) #\(q), the sink lost it from #\(lostFrom[d]!)")
                acked[s]![d]!.durable = q
            case .ackCommitted(let d, let q):
                guard let told = acked[s]?[d] else { return Fuzz.check(false, "ackCommitted \(d) on \(s), which was not told its diskState") }
                Fuzz.check(q >= told.committed, "ackCommitted \(d) went down on \(s): #\(q) after #\(told.committed)")
                Fuzz.check(q <= committed[d] ?? 0, "ackCommitted \(d) #\(q), the sink reported committed through #\(committed[d] ?? 0)")
                acked[s]![d]!.committed = q
            case .diskState(let d, let dur, let com):
                let keeps = max(kept[d]?.last ?? 0, committed[d] ?? 0)
                Fuzz.check(dur == keeps, "diskState \(d) durable #\(dur), the sink keeps through #\(keeps)")
                Fuzz.check(dur <= max(durable[d] ?? 0, committed[d] ?? 0), "diskState \(d) durable #\(dur), the sink reported durable through #\(durable[d] ?? 0)")
                Fuzz.check(lostFrom[d] == nil, "diskState \(d) while the sink's loss from #\(lostFrom[d]!) is not forgotten")
                Fuzz.check(com == committed[d] ?? 0, "diskState \(d) committed #\(com), the sink reported committed through #\(committed[d] ?? 0)")
                acked[s, default: [:]][d] = (dur, com)
            default:
                break
            }
        case .close(let s, _):
            closed.insert(s)
        case .append(let s, let d, let q):
            Fuzz.check(q == max(kept[d]?.last ?? 0, committed[d] ?? 0) + 1,
                       "\(d) #\(q) handed to the sink, which keeps through #\(kept[d]?.last ?? 0)")
            Fuzz.check(r.mayReceiveSegments(s, diskID: d), "\(d) #\(q) handed to the sink from \(s), which does not own the disk")
            Fuzz.check(lostFrom[d] == nil, "\(d) #\(q) handed to the sink before its loss from #\(lostFrom[d]!) is forgotten")
            appending.append((s, d, q))
        case .answerDigests(_, let d, let first, let count, _):
            guard let rec = records[d] else { return Fuzz.check(false, "digests asked for \(d), which has no record") }
            let chunkCount = DiskGeometry.chunkCount(sizeBytes: rec.sizeBytes, chunkSizeBytes: rec.chunkSizeBytes)
            Fuzz.check(count >= 1 && first < chunkCount && UInt64(count) <= chunkCount - first, "digests asked outside \(d)")
        case .lookUpDisk, .createDisk, .settleDisk, .forget:
            work.append(e)
        case .authenticated:
            break
        }
    }

    mutating func session(_ input: inout Input) -> S? {
        sessions.isEmpty ? nil : sessions[input.below(sessions.count)]
    }

    /// A session that may get a message now.
    mutating func ready(_ input: inout Input) -> S? {
        guard let s = session(&input), !r.isBusy(s) else { return nil }
        return s
    }

    mutating func message(_ input: inout Input, _ m: WireMessage) {
        guard let s = ready(&input) else { return }
        feed(.message(s, m))
    }

    mutating func step(_ op: UInt8, _ input: inout Input) {
        let disk = disks[input.below(disks.count)]
        switch op % 16 {
        case 0:
            guard sessions.count < 12 else { return }
            let s = S(nextSession)
            nextSession += 1
            nowNs += UInt64(input.u8())
            sessions.append(s)
            feed(.accepted(s, source: "10.0.0.\(input.below(3))", nowNs: nowNs))
        case 1:
            guard let s = session(&input) else { return }
            feed(.tlsEstablished(s, certificateName: agents[input.below(3)]))
        case 2:
            let version = UInt16(truncatingIfNeeded: input.pick([3, 2, 1, 4]))
            message(&input, .hello(protocolVersion: version, agentID: agents[input.below(agents.count)]))
        case 3:
            message(&input, .openDisk(diskID: disk, diskSizeBytes: input.pick(sizes), chunkSizeBytes: UInt32(truncatingIfNeeded: input.pick(chunks.map(UInt64.init))),
                                      keyID: input.pick(keys)))
        case 4:
            guard let s = ready(&input) else { return }
            let base = r.state(ofDisk: disk)?.appended ?? 0
            let sequence: UInt64
            switch input.below(8) {
            case 0: sequence = base
            case 1: sequence = base &+ 2
            case 2: sequence = input.pick([0, 1, SegmentSequence.max, SegmentSequence.max + 1, UInt64.max])
            default: sequence = base &+ 1
            }
            let rec = records[disk]
            let size = input.below(8) == 0 ? input.pick(sizes) : rec?.sizeBytes ?? 64 << 20
            let chunk = input.below(8) == 0 ? UInt32(truncatingIfNeeded: input.pick(chunks.map(UInt64.init))) : rec?.chunkSizeBytes ?? 65536
            let key = input.below(8) == 0 ? input.pick(keys) : rec?.keyID ?? 7
            var extents: [SegmentExtent] = []
            for _ in 0..<input.below(3) {
                extents.append(SegmentExtent(offset: input.pick([0, 65536, size &- 65536, size, UInt64.max - 1]),
                                             length: UInt32(truncatingIfNeeded: input.pick([65536, 4096, 1, UInt64(UInt32.max)])),
                                             kind: input.below(2) == 0 ? .data : .zero))
            }
            let header = SegmentHeader(kind: .data, diskID: disk, keyID: key, sequence: sequence, diskSizeBytes: size, chunkSizeBytes: chunk,
                                       compressed: false, plainLength: 0, cipherLength: 0, nonce: [UInt8](repeating: 0, count: 12),
                                       extents: extents, point: nil)
            feed(.segment(s, header))
        case 5:
            message(&input, .digestRequest(diskID: disk, firstChunk: input.pick([0, 1, 1023, 1024, UInt64.max, UInt64.max - 2047]),
                                           count: UInt32(truncatingIfNeeded: input.pick([1, 2048, 0, 24, UInt64(UInt32.max)]))))
        case 6:
            let m: WireMessage = [
                .ping(input.u64()), .pong(input.u64()), .error(code: UInt16(input.u8()), message: "fuzz"),
                .helloOK(protocolVersion: 3, serverID: "x"), .diskState(diskID: disk, durableSequence: 1, committedSequence: 1),
                .ackDurable(diskID: disk, sequence: 1), .ackCommitted(diskID: disk, sequence: 1),
                .chunkDigests(diskID: disk, firstChunk: 0, sequence: 0, states: [.unknown]),
            ][input.below(8)]
            message(&input, m)
        case 7:
            guard let s = ready(&input) else { return }
            let raw = input.bytes(Int(input.u8()))
            let reader = FrameReader(MemoryStream(raw))
            reader.acceptedVersions = WireProtocol.acceptedVersions
            // A segment frame is a segment message here (no streaming).
            if let m = try? reader.next() { feed(.message(s, m)) }
        case 8, 9:
            guard !work.isEmpty else { return }
            complete(work.remove(at: input.below(work.count)), &input)
        case 10:
            guard !appending.isEmpty else { return }
            let (s, d, q) = appending.removeFirst()
            if input.below(6) == 0 {
                feed(.appendFailed(s, diskID: d, sequence: q))
            } else {
                kept[d, default: []].append(q)
                feed(.appended(s, diskID: d, sequence: q))
            }
        case 11:
            guard lostFrom[disk] == nil, let top = kept[disk]?.last, top > durable[disk] ?? 0 else { return }
            durable[disk] = top
            feed(.durable(diskID: disk, sequence: top))
        case 12:
            let c = committed[disk] ?? 0
            guard lostFrom[disk] == nil, c < durable[disk] ?? 0 else { return }
            committed[disk] = c + 1
            feed(.committed(diskID: disk, sequence: c + 1))
        case 13:
            // A segment it keeps and has not committed is lost.
            guard let candidates = kept[disk]?.filter({ $0 > committed[disk] ?? 0 }), !candidates.isEmpty else { return }
            let victim = candidates[input.below(candidates.count)]
            lostFrom[disk] = min(lostFrom[disk] ?? victim, victim)
            feed(.lost(diskID: disk, fromSequence: victim))
        case 14:
            guard let s = session(&input) else { return }
            end(s)
        default:
            message(&input, .segment(input.bytes(Int(input.u8()))))
        }
    }

    /// The sink completes `e`, within its contract.
    mutating func complete(_ e: R.Effect, _ input: inout Input) {
        switch e {
        case .lookUpDisk(let s, let d):
            if input.below(16) == 0 { quarantined.insert(d) }
            if quarantined.contains(d) {
                feed(.diskLookedUp(s, diskID: d, .refused(ProtocolViolation(code: 500, "disk \(d) is quarantined", logged: true))))
            } else {
                feed(.diskLookedUp(s, diskID: d, .stored(record: records[d], committedSequence: committed[d] ?? 0, heldSequence: kept[d]?.last ?? 0)))
            }
        case .createDisk(let s, let rec):
            // The first record of an id wins; another one throws, and the shell ends the session.
            if let existing = records[rec.diskID], existing != rec { return end(s) }
            records[rec.diskID] = rec
            feed(.diskCreated(s, diskID: rec.diskID))
        case .settleDisk(let s, let d):
            // Settling reports everything kept durable (below a loss being forgotten).
            if let top = kept[d]?.filter({ $0 < lostFrom[d] ?? .max }).last, top > durable[d] ?? 0 {
                durable[d] = top
                feed(.durable(diskID: d, sequence: top))
            }
            feed(.diskSettled(s, diskID: d))
        case .forget(let d, let from):
            kept[d] = kept[d]?.filter { $0 < from }
            durable[d] = min(durable[d] ?? 0, from - 1)
            if lostFrom[d] == from { lostFrom[d] = nil }
            feed(.forgotten(diskID: d, fromSequence: from))
        default:
            Fuzz.check(false, "\(e) is not sink work")
        }
    }

    /// The transport of `s` ends: an append in flight fails first, work
    /// asked for it is dropped (its thread is gone).
    mutating func end(_ s: S) {
        while let i = appending.firstIndex(where: { $0.0 == s }) {
            let (_, d, q) = appending.remove(at: i)
            feed(.appendFailed(s, diskID: d, sequence: q))
        }
        work.removeAll {
            switch $0 {
            case .lookUpDisk(let x, _), .createDisk(let x, _), .settleDisk(let x, _): x == s
            default: false
            }
        }
        sessions.removeAll { $0 == s }
        closed.remove(s)
        acked[s] = nil
        feed(.ended(s))
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = Input(bytes: Fuzz.bytes(data, size))
    var world = World(prelude: input.u8())
    while input.more { world.step(input.u8(), &input) }
    return 0
}

/// Seeds: a prelude byte, then whole sessions written as operations (each:
/// the operation, the disk index every operation reads first, then its own
/// bytes).
func seeds() throws -> [(String, [UInt8])] {
    func accept() -> [UInt8] { [0, 0, 1, 0] }
    func tls(_ session: UInt8) -> [UInt8] { [1, 0, session, 0] }
    func hello(_ session: UInt8) -> [UInt8] { [2, 0, 0, 0, session] }
    func open(_ session: UInt8, disk: UInt8 = 0) -> [UInt8] { [3, disk, 0, 0, 0, session] }
    /// The next sequence, one data extent of 64 KiB at offset 0.
    func segment(_ session: UInt8, disk: UInt8 = 0) -> [UInt8] { [4, disk, session, 3, 1, 1, 1, 1, 0, 0, 0] }
    /// The sink completes its oldest piece of work: a lookup (which reads
    /// one more byte: not quarantined), or anything else.
    func lookup() -> [UInt8] { [8, 0, 0, 1] }
    func work() -> [UInt8] { [8, 0, 0] }
    func appended() -> [UInt8] { [10, 0, 1] }
    func durable(_ disk: UInt8 = 0) -> [UInt8] { [11, disk] }
    func committed(_ disk: UInt8 = 0) -> [UInt8] { [12, disk] }
    let connect0 = accept() + tls(0) + hello(0)
    let open0 = open(0) + lookup() + work() + work()   // lookup, create, settle
    var stored0: [UInt8] = []
    for _ in 0..<3 { stored0 += segment(0) + appended() + durable() + committed() }
    let session = connect0 + open0 + stored0
    // A second session of the agent takes the disk over while #4 is being appended.
    let takeover = session + segment(0) + accept() + tls(1) + hello(1) + open(1) + appended() + work() + segment(1) + appended() + durable()
    // #4 (durable, not committed) is lost: its owner is closed, the sink
    // forgets it, the agent comes back, learns #3 and sends #4 again.
    let loss = connect0 + open0 + stored0 + segment(0) + appended() + durable() + [13, 0, 1] + work()
        + [14, 0, 0] + accept() + tls(0) + hello(0) + open(0) + work() + segment(0) + appended() + durable()
    let frame = { (m: WireMessage) -> [UInt8] in
        let out = MemoryStream()
        try? FrameWriter(out).send(m)
        return [7, 0, 0, UInt8(out.written.count)] + out.written
    }
    let raw = accept() + tls(0) + frame(.hello(protocolVersion: 3, agentID: "agent-a"))
        + frame(.openDisk(diskID: "agent-a-sdb-0123456789ab", diskSizeBytes: 64 << 20, chunkSizeBytes: 65536, keyID: 7))
        + lookup() + work() + work() + frame(.digestRequest(diskID: "agent-a-sdb-0123456789ab", firstChunk: 0, count: 16)) + frame(.ping(9))
    var pool: [UInt8] = []
    for _ in 0..<8 { pool += accept() }
    // Disk 0 from an earlier run: #1 committed, #2 and #3 held durable
    // (prelude 0b10_01_01); the agent resumes at #4, #2 and #3 are committed.
    let held = connect0 + open(0) + lookup() + work() + segment(0) + appended() + durable() + committed() + committed()
    // The held #2 is lost before the disk is opened: the lookup, the forget
    // and the settling meet, and the agent resumes at #2.
    let heldLoss = [13, 0, 0] + connect0 + open(0) + work() + lookup() + work() + segment(0) + appended()
    return [("held", [0x25] + held), ("held-loss", [0x25] + heldLoss)] + [
        ("session", session),
        ("takeover", takeover),
        ("loss-and-resend", loss),
        ("digests", session + [5, 0, 0, 0, 0]),
        ("raw-frames", raw),
        ("pool", pool + tls(7) + hello(7)),
        ("two-disks", connect0 + open0 + open(0, disk: 1) + lookup() + work() + work() + segment(0, disk: 1) + appended() + durable(1)),
    ].map { ($0.0, [0] + $0.1) }
}
