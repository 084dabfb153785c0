import Testing
import TidemarkTarget
import TidemarkTesting
import TidemarkWire
@testable import TidemarkServerCore

/// The rules of ingest, one by one, on the pure `ReplicationReceiver`
/// (docs/server-ingest.md): each test feeds events and checks the effects,
/// with hostile values where an agent could send them. `invariantProblem()`
/// is asserted after every event (debug builds), and checked here too.
@Suite struct ReplicationReceiverTests {
    typealias R = ReplicationReceiver
    typealias S = R.SessionID
    static let hex = "0123456789ab"
    static let agent = "agent-a"
    static let disk = "agent-a-sdb-\(hex)"
    static let size: UInt64 = 64 << 20
    static let chunk: UInt32 = 65536
    static let keyID: UInt64 = 7
    static var record: DiskRecord { DiskRecord(diskID: disk, ownerAgentID: agent, sizeBytes: size, chunkSizeBytes: chunk, keyID: keyID) }

    /// A receiver and the clock of its accepts; helpers drive sessions
    /// through the usual steps and return the effects of the last event.
    struct World {
        var r: R
        var nowNs: UInt64 = 1_000
        var next: UInt64 = 1

        init(maxConnections: Int = 8, disksPerSession: Int = ServerLimits.disksPerConnectionMax) {
            r = R(configuration: .init(serverID: "srv-1", maxConnections: maxConnections, disksPerSessionMax: disksPerSession))
        }

        mutating func feed(_ e: R.Event, sourceLocation: SourceLocation = #_sourceLocation) -> [R.Effect] {
            let out = r.handle(e)
            #expect(r.invariantProblem() == nil, "\(r.invariantProblem() ?? "")", sourceLocation: sourceLocation)
            return out
        }

        /// Accepted and past TLS with `certificate`, no hello yet.
        mutating func accept(source: String = "10.0.0.1", certificate: String? = agent) -> S {
            let s = S(next)
            next += 1
            nowNs += 1_000
            #expect(feed(.accepted(s, source: source, nowNs: nowNs)).isEmpty)
            if let certificate { #expect(feed(.tlsEstablished(s, certificateName: certificate)).isEmpty) }
            return s
        }

        /// An authenticated session of `agent`.
        mutating func connect(_ agent: String = agent, version: UInt16 = 3, sourceLocation: SourceLocation = #_sourceLocation) -> S {
            let s = accept(certificate: agent)
            let out = feed(.message(s, .hello(protocolVersion: version, agentID: agent)))
            #expect(out == [.authenticated(s, agentID: agent, protocolVersion: version),
                            .send(s, .helloOK(protocolVersion: version, serverID: "srv-1"))], sourceLocation: sourceLocation)
            return s
        }

        static func openMessage(_ diskID: String = disk, size: UInt64 = size, chunk: UInt32 = chunk, keyID: UInt64 = keyID) -> WireMessage {
            .openDisk(diskID: diskID, diskSizeBytes: size, chunkSizeBytes: chunk, keyID: keyID)
        }

        /// openDisk through lookup (answered with `lookup` when the receiver
        /// asks), creation and settling; returns the final effects.
        mutating func open(_ s: S, _ diskID: String = disk, lookup: R.DiskLookup = .stored(record: nil, committedSequence: 0, heldSequence: 0),
                           size: UInt64 = size, chunk: UInt32 = chunk, keyID: UInt64 = keyID) -> [R.Effect] {
            var out = feed(.message(s, Self.openMessage(diskID, size: size, chunk: chunk, keyID: keyID)))
            return complete(out: &out, lookup: lookup)
        }

        /// Answers the sink effects of `out` for their sessions, as a sink
        /// that does everything at once would; returns the effects that
        /// remain (sends, closes, ...).
        mutating func complete(out: inout [R.Effect], lookup: R.DiskLookup = .stored(record: nil, committedSequence: 0, heldSequence: 0)) -> [R.Effect] {
            var rest: [R.Effect] = []
            while !out.isEmpty {
                let e = out.removeFirst()
                switch e {
                case .lookUpDisk(let s, let d): out += feed(.diskLookedUp(s, diskID: d, lookup))
                case .createDisk(let s, let rec): out += feed(.diskCreated(s, diskID: rec.diskID))
                case .settleDisk(let s, let d): out += feed(.diskSettled(s, diskID: d))
                case .forget(let d, let f): out += feed(.forgotten(diskID: d, fromSequence: f))
                default: rest.append(e)
                }
            }
            return rest
        }

        static func header(_ sequence: UInt64, diskID: String = disk, keyID: UInt64 = keyID, size: UInt64 = size, chunk: UInt32 = chunk,
                           extents: [SegmentExtent] = [SegmentExtent(offset: 0, length: 65536, kind: .data)]) -> SegmentHeader {
            SegmentHeader(kind: .data, diskID: diskID, keyID: keyID, sequence: sequence, diskSizeBytes: size, chunkSizeBytes: chunk,
                          compressed: false, plainLength: 65536, cipherLength: 65536, nonce: [UInt8](repeating: 0, count: 12),
                          extents: extents, point: nil)
        }

        /// A segment appended, made durable and (optionally) committed.
        mutating func store(_ s: S, _ sequence: UInt64, diskID: String = disk, commit: Bool = true, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(feed(.segment(s, Self.header(sequence, diskID: diskID))) == [.append(s, diskID: diskID, sequence: sequence)],
                    sourceLocation: sourceLocation)
            #expect(feed(.appended(s, diskID: diskID, sequence: sequence)).isEmpty, sourceLocation: sourceLocation)
            #expect(feed(.durable(diskID: diskID, sequence: sequence)) == [.send(s, .ackDurable(diskID: diskID, sequence: sequence))],
                    sourceLocation: sourceLocation)
            if commit {
                #expect(feed(.committed(diskID: diskID, sequence: sequence)) == [.send(s, .ackCommitted(diskID: diskID, sequence: sequence))],
                        sourceLocation: sourceLocation)
            }
        }
    }

    /// The refusal a session got in `out` (nil: none).
    static func refusal(_ out: [R.Effect], _ s: S) -> ProtocolViolation? {
        for case .close(let id, .refused(let v)) in out where id == s { return v }
        return nil
    }

    static func diskState(_ out: [R.Effect], _ s: S) -> (durable: UInt64, committed: UInt64)? {
        for case .send(let id, .diskState(_, let d, let c)) in out where id == s { return (d, c) }
        return nil
    }

    // MARK: Hello and identity (session rule 1)

    @Test func helloIsFirstAndNamesTheCertificate() {
        var w = World()
        // Anything before the hello.
        for first: WireMessage in [.ping(1), Self.World.openMessage(), .digestRequest(diskID: Self.disk, firstChunk: 0, count: 1),
                                   .helloOK(protocolVersion: 3, serverID: "x"), .error(code: 1, message: "x")] {
            let s = w.accept()
            let v = Self.refusal(w.feed(.message(s, first)), s)
            #expect(v?.code == 400 && v?.message == "expected hello as the first message", "\(first): \(String(describing: v))")
            // Closed: what follows is ignored.
            #expect(w.feed(.message(s, .hello(protocolVersion: 3, agentID: Self.agent))).isEmpty)
            #expect(w.feed(.ended(s)).isEmpty)
        }
        let s = w.accept()
        let v = Self.refusal(w.feed(.segment(s, World.header(1))), s)
        #expect(v?.message == "expected hello as the first message")
        // The certificate's name, exactly; none at all; an empty id.
        for (cert, claimed): (String?, String) in [("agent-a", "agent-b"), ("agent-a", "agent-a "), ("agent-a", "AGENT-A"), (nil, "agent-a"),
                                                    ("", ""), ("agent-a", "")] {
            let s = w.accept(certificate: cert)
            let v = Self.refusal(w.feed(.message(s, .hello(protocolVersion: 3, agentID: claimed))), s)
            #expect(v?.code == 403 && v?.message.contains("does not match the certificate's name") == true, "\(String(describing: v))")
        }
        #expect(w.r.authenticatedCount == 0)
    }

    @Test func protocolVersions() {
        var w = World()
        for bad: UInt16 in [0, 1, 4, UInt16.max] {
            let s = w.accept()
            let v = Self.refusal(w.feed(.message(s, .hello(protocolVersion: bad, agentID: Self.agent))), s)
            #expect(v?.code == 426 && v?.message.contains("this server speaks 2 to 3") == true, "\(bad): \(String(describing: v))")
        }
        // 2 and 3, answered in the agent's version.
        _ = w.connect(version: 2)
        _ = w.connect(version: 3)
        // A second hello is an unexpected message.
        let s = w.connect()
        let v = Self.refusal(w.feed(.message(s, .hello(protocolVersion: 3, agentID: Self.agent))), s)
        #expect(v?.code == 400 && v?.message == "unexpected message hello from an agent")
    }

    @Test func messagesAServerSendsAreRefusedFromAnAgent() {
        var w = World()
        for m: WireMessage in [.helloOK(protocolVersion: 3, serverID: "x"), .diskState(diskID: "d", durableSequence: 1, committedSequence: 1),
                               .ackDurable(diskID: "d", sequence: 1), .ackCommitted(diskID: "d", sequence: 1),
                               .chunkDigests(diskID: "d", firstChunk: 0, sequence: 0, states: [.unknown])] {
            let s = w.connect()
            let v = Self.refusal(w.feed(.message(s, m)), s)
            #expect(v?.code == 400 && v?.message == "unexpected message \(m.type) from an agent")
        }
        // ping → pong; pong → nothing; error → closed quietly.
        let s = w.connect()
        #expect(w.feed(.message(s, .ping(UInt64.max))) == [.send(s, .pong(UInt64.max))])
        #expect(w.feed(.message(s, .pong(3))).isEmpty)
        #expect(w.feed(.message(s, .error(code: 7, message: "bye"))) == [.close(s, .agentError(code: 7, message: "bye"))])
        #expect(w.feed(.message(s, .ping(1))).isEmpty)
    }

    @Test func maxConnectionsBoundsAuthenticatedSessions() {
        var w = World(maxConnections: 2)
        let a = w.connect(), b = w.connect()
        let c = w.accept()
        let v = Self.refusal(w.feed(.message(c, .hello(protocolVersion: 3, agentID: Self.agent))), c)
        #expect(v?.code == 503 && v?.message.contains("serves 2 agent connections already (max_connections)") == true)
        // A closed session counts until it has ended.
        _ = w.feed(.message(a, .error(code: 0, message: "done")))
        let d = w.accept()
        #expect(Self.refusal(w.feed(.message(d, .hello(protocolVersion: 3, agentID: Self.agent))), d)?.code == 503)
        _ = w.feed(.ended(a))
        _ = w.connect()
        // Lowered by a reload: nobody is cut, new hellos wait for room.
        w.r.configuration.maxConnections = 1
        let e = w.accept()
        #expect(Self.refusal(w.feed(.message(e, .hello(protocolVersion: 3, agentID: Self.agent))), e)?.code == 503)
        _ = b
    }

    // MARK: The unauthenticated pool (session rule 9)

    @Test func thePoolDisplacesTheOldestAndItsHelloIsRefused() {
        var w = World()
        let perSource = ServerLimits.unauthenticatedPerSourceMax
        var same: [S] = []
        for _ in 0..<perSource { same.append(w.accept(source: "10.9.9.9", certificate: nil)) }
        #expect(same.allSatisfy { w.r.isUnauthenticated($0) })
        // One more from that address: the oldest gives way.
        let s = S(w.next)
        w.next += 1
        #expect(w.feed(.accepted(s, source: "10.9.9.9", nowNs: 99_999_999)) == [.close(same[0], .displacedFromPool)])
        #expect(!w.r.isUnauthenticated(same[0]) && w.r.isUnauthenticated(s))
        // Its hello comes late: refused (it lost its place).
        _ = w.feed(.tlsEstablished(same[0], certificateName: Self.agent))
        let v = Self.refusal(w.feed(.message(same[0], .hello(protocolVersion: 3, agentID: Self.agent))), same[0])
        #expect(v?.code == 503 && v?.message.contains("closed to make room") == true)
        // Past its TLS handshake, the oldest stays; the next oldest goes.
        _ = w.feed(.tlsEstablished(same[1], certificateName: Self.agent))
        let t = S(w.next)
        w.next += 1
        #expect(w.feed(.accepted(t, source: "10.9.9.9", nowNs: 99_999_999_9)) == [.close(same[2], .displacedFromPool)])
        // An agent that completes its hello leaves the pool.
        let out = w.feed(.message(same[1], .hello(protocolVersion: 3, agentID: Self.agent)))
        #expect(out.first == .authenticated(same[1], agentID: Self.agent, protocolVersion: 3))
        #expect(!w.r.isUnauthenticated(same[1]))
    }

    // MARK: Opening a disk (session rules 2, 8, 10)

    @Test func openingANewDiskStoresItsRecordThenAnswers() {
        var w = World()
        let s = w.connect()
        var out = w.feed(.message(s, World.openMessage()))
        #expect(out == [.lookUpDisk(s, diskID: Self.disk)])
        #expect(w.r.isBusy(s))
        out = w.feed(.diskLookedUp(s, diskID: Self.disk, .stored(record: nil, committedSequence: 0, heldSequence: 0)))
        #expect(out == [.createDisk(s, Self.record)])
        out = w.feed(.diskCreated(s, diskID: Self.disk))
        #expect(out == [.settleDisk(s, diskID: Self.disk)])
        #expect(w.r.isBusy(s) && !w.r.mayReceiveSegments(s, diskID: Self.disk))
        out = w.feed(.diskSettled(s, diskID: Self.disk))
        #expect(out == [.send(s, .diskState(diskID: Self.disk, durableSequence: 0, committedSequence: 0))])
        #expect(!w.r.isBusy(s) && w.r.mayReceiveSegments(s, diskID: Self.disk))
        // Opened again on the same session: no lookup (the record is known).
        out = w.feed(.message(s, World.openMessage()))
        #expect(out == [.settleDisk(s, diskID: Self.disk)])
    }

    @Test func aStoredDiskResumesAtWhatTheSinkHolds() {
        var w = World()
        let s = w.connect()
        // Committed 5 in target storage, held (spooled, durable) up to 9.
        let out = w.open(s, lookup: .stored(record: Self.record, committedSequence: 5, heldSequence: 9))
        #expect(Self.diskState(out, s)! == (9, 5))
        // Held below committed (already uploaded): committed counts.
        let t = w.connect()
        let other = "agent-a-sdc-\(Self.hex)"
        let rec = DiskRecord(diskID: other, ownerAgentID: Self.agent, sizeBytes: Self.size, chunkSizeBytes: Self.chunk, keyID: Self.keyID)
        #expect(Self.diskState(w.open(t, other, lookup: .stored(record: rec, committedSequence: 12, heldSequence: 3)), t)! == (12, 12))
    }

    @Test func openDiskRefusalsComeBeforeAnythingIsStored() {
        var w = World(maxConnections: 100)
        // The geometry on the wire: refused before the sink is even asked.
        for (size, chunk): (UInt64, UInt32) in [(UInt64.max, 65536), (0, 65536), (1 << 30, 0), (1 << 30, 3), (1 << 30, UInt32.max),
                                                (DiskGeometry.sizeBytesMax + 1, 4096)] {
            let s = w.connect()
            let out = w.feed(.message(s, World.openMessage(size: size, chunk: chunk)))
            let v = Self.refusal(out, s)
            #expect(v?.code == 400 && v?.message.contains("nothing was stored") == true && out.count == 1, "\(out)")
        }
        // Another agent's namespace, a free-form id, a prefix of another agent: 403 after the lookup, nothing created.
        for (agent, diskID) in [("agent-b", Self.disk), (Self.agent, "agent-a-disk"), ("agent", Self.disk),
                                (Self.agent, "../../etc/passwd"), (Self.agent, "agent-a-sdb-0123456789AB")] {
            let s = w.connect(agent)
            var out = w.feed(.message(s, World.openMessage(diskID)))
            out = w.complete(out: &out)
            let v = Self.refusal(out, s)
            #expect(v?.code == 403, "\(agent) \(diskID): \(out)")
            #expect(!out.contains { if case .createDisk = $0 { true } else { false } })
        }
        // Stored for another agent; stored with another geometry or key.
        let cases: [(String, UInt64, UInt32, UInt64, UInt16, String)] = [
            ("agent-b", Self.size, Self.chunk, Self.keyID, 403, "belongs to agent agent-a, not agent-b"),
            (Self.agent, Self.size + 65536, Self.chunk, Self.keyID, 409, "a resized disk needs a new disk id"),
            (Self.agent, Self.size, 4096, Self.keyID, 409, "a resized disk needs a new disk id"),
            (Self.agent, Self.size, Self.chunk, 8, 409, "replication key id"),
        ]
        for (agent, size, chunk, key, code, text) in cases {
            let s = w.connect(agent)
            let out = w.open(s, lookup: .stored(record: Self.record, committedSequence: 0, heldSequence: 0), size: size, chunk: chunk, keyID: key)
            let v = Self.refusal(out, s)
            #expect(v?.code == code && v?.message.contains(text) == true, "\(String(describing: v))")
        }
        // A quarantined record: the sink's refusal goes to the agent as it is.
        let s = w.connect()
        let q = ProtocolViolation(code: 500, "disk is quarantined", logged: true)
        #expect(Self.refusal(w.open(s, lookup: .refused(q)), s) == q)
        #expect(w.r.state(ofDisk: Self.disk) == nil)
        // Once known, the checks run against the known record (no lookup).
        let t = w.connect()
        _ = w.open(t, lookup: .stored(record: Self.record, committedSequence: 0, heldSequence: 0))
        let u = w.connect()
        let out = w.feed(.message(u, World.openMessage(keyID: 9)))
        #expect(Self.refusal(out, u)?.code == 409 && out.count == 1)
    }

    @Test func disksPerSessionAreBounded() {
        var w = World(disksPerSession: 3)
        let s = w.connect()
        for i in 0..<3 { #expect(Self.diskState(w.open(s, "agent-a-sd\(i)-\(Self.hex)"), s) != nil) }
        // Opening one of them again is no new disk.
        #expect(Self.diskState(w.open(s, "agent-a-sd1-\(Self.hex)"), s) != nil)
        let v = Self.refusal(w.feed(.message(s, World.openMessage("agent-a-sd9-\(Self.hex)"))), s)
        #expect(v?.code == 400 && v?.message == "more than 3 disks on one connection")
    }

    @Test func twoSessionsCreatingOneDiskAtOnce() {
        var w = World()
        let a = w.connect(), b = w.connect()
        #expect(w.feed(.message(a, World.openMessage())) == [.lookUpDisk(a, diskID: Self.disk)])
        #expect(w.feed(.message(b, World.openMessage())) == [.lookUpDisk(b, diskID: Self.disk)])
        let none = R.DiskLookup.stored(record: nil, committedSequence: 0, heldSequence: 0)
        #expect(w.feed(.diskLookedUp(a, diskID: Self.disk, none)) == [.createDisk(a, Self.record)])
        #expect(w.feed(.diskLookedUp(b, diskID: Self.disk, none)) == [.createDisk(b, Self.record)])
        var out = w.feed(.diskCreated(a, diskID: Self.disk))
        #expect(out == [.settleDisk(a, diskID: Self.disk)])
        // b's creation finds a known record: it takes the disk over.
        out = w.feed(.diskCreated(b, diskID: Self.disk))
        #expect(out == [.close(a, .displacedByNewOwner(diskID: Self.disk, agentID: Self.agent)), .settleDisk(b, diskID: Self.disk)])
        // a's settling still completes; it is told nothing.
        #expect(w.feed(.diskSettled(a, diskID: Self.disk)).isEmpty)
        #expect(Self.diskState(w.feed(.diskSettled(b, diskID: Self.disk)), b)! == (0, 0))
    }

    // MARK: Sequences (session rules 2-5)

    @Test func segmentsAreAppendedInOrderAndAcknowledged() {
        var w = World()
        let s = w.connect()
        // Before its disk is opened on this session.
        let early = w.connect()
        #expect(Self.refusal(w.feed(.segment(early, World.header(1))), early)?.message == "segment for disk \(Self.disk), which this connection has not opened")
        _ = w.open(s)
        w.store(s, 1)
        w.store(s, 2, commit: false)
        // Committed lags durable; acks are cumulative.
        #expect(w.feed(.segment(s, World.header(3))) == [.append(s, diskID: Self.disk, sequence: 3)])
        #expect(w.r.isBusy(s))
        #expect(w.feed(.appended(s, diskID: Self.disk, sequence: 3)).isEmpty)
        #expect(w.feed(.durable(diskID: Self.disk, sequence: 3)) == [.send(s, .ackDurable(diskID: Self.disk, sequence: 3))])
        #expect(w.feed(.committed(diskID: Self.disk, sequence: 3)) == [.send(s, .ackCommitted(diskID: Self.disk, sequence: 3))])
        // A report that does not advance is not acknowledged again.
        #expect(w.feed(.durable(diskID: Self.disk, sequence: 2)).isEmpty)
        #expect(w.feed(.committed(diskID: Self.disk, sequence: 1)).isEmpty)
        #expect(w.r.state(ofDisk: Self.disk)! == (3, 3, 3, s))
    }

    @Test func duplicatesAreAcknowledgedNotStored() {
        var w = World()
        let s = w.connect()
        _ = w.open(s)
        w.store(s, 1)
        w.store(s, 2, commit: false)
        for dup: UInt64 in [1, 2] {
            #expect(w.feed(.segment(s, World.header(dup))) == [.send(s, .ackDurable(diskID: Self.disk, sequence: 2))])
        }
        // Appended but not durable yet: a re-send is a duplicate, acknowledged with what is durable.
        #expect(w.feed(.segment(s, World.header(3))) == [.append(s, diskID: Self.disk, sequence: 3)])
        _ = w.feed(.appended(s, diskID: Self.disk, sequence: 3))
        #expect(w.feed(.segment(s, World.header(3))) == [.send(s, .ackDurable(diskID: Self.disk, sequence: 2))])
    }

    @Test func hostileSequencesAndHeaders() {
        var w = World()
        let s = w.connect()
        _ = w.open(s)
        w.store(s, 1)
        let bad: [(SegmentHeader, UInt16, String)] = [
            (World.header(0), 400, "sequence numbers are 1 to"),
            (World.header(SegmentSequence.max + 1), 400, "sequence numbers are 1 to"),
            (World.header(UInt64.max), 400, "sequence numbers are 1 to"),
            (World.header(3), 409, "out of order: expected #2"),
            (World.header(SegmentSequence.max), 409, "out of order: expected #2"),
            (World.header(2, keyID: 8), 409, "sealed with key id 8"),
            (World.header(2, size: Self.size + 1), 409, "describes another disk geometry"),
            (World.header(2, chunk: 4096), 409, "describes another disk geometry"),
            (World.header(2, extents: [SegmentExtent(offset: UInt64.max - 10, length: 65536, kind: .data)]), 400, "past the end of the disk"),
            (World.header(2, extents: [SegmentExtent(offset: Self.size - 4096, length: 65536, kind: .data)]), 400, "past the end of the disk"),
        ]
        for (h, code, text) in bad {
            let t = w.connect()
            _ = w.open(t)
            let v = Self.refusal(w.feed(.segment(t, h)), t)
            #expect(v?.code == code && v?.message.contains(text) == true, "#\(h.sequence): \(String(describing: v))")
            _ = w.feed(.ended(t))
        }
        // A segment of a disk this session opened but another owns now.
        let a = w.connect(), b = w.connect()
        _ = w.open(a)
        _ = w.open(b)
        #expect(Self.refusal(w.feed(.segment(a, World.header(2))), a) == nil)   // closed when b took over: ignored
        #expect(!w.r.mayReceiveSegments(a, diskID: Self.disk))
        // The bytes of a `.segment` message are decoded here: garbage is a 400.
        let c = w.connect()
        for bytes: [UInt8] in [[], [1, 2, 3], [UInt8](repeating: 0xFF, count: 200)] {
            let d = w.connect()
            _ = w.open(d)
            #expect(Self.refusal(w.feed(.message(d, .segment(bytes))), d)?.code == 400)
        }
        _ = c
    }

    @Test func aFailedAppendCanBeSentAgain() {
        var w = World()
        let s = w.connect()
        _ = w.open(s)
        w.store(s, 1)
        #expect(w.feed(.segment(s, World.header(2))) == [.append(s, diskID: Self.disk, sequence: 2)])
        #expect(w.feed(.appendFailed(s, diskID: Self.disk, sequence: 2)).isEmpty)
        #expect(w.r.state(ofDisk: Self.disk)!.appended == 1)
        // The agent reconnects and sends #2 again.
        let t = w.connect()
        #expect(Self.diskState(w.open(t), t)! == (1, 1))
        #expect(w.feed(.segment(t, World.header(2))) == [.append(t, diskID: Self.disk, sequence: 2)])
    }

    // MARK: Displacement of an older connection for the same disk

    @Test func aNewOwnerWaitsForTheOldOnesAppend() {
        for fails in [false, true] {
            var w = World()
            let a = w.connect()
            _ = w.open(a)
            w.store(a, 1)
            // #2 is being appended (the spool may be full) when b opens the disk.
            #expect(w.feed(.segment(a, World.header(2))) == [.append(a, diskID: Self.disk, sequence: 2)])
            let b = w.connect()
            var out = w.feed(.message(b, World.openMessage()))
            #expect(out == [.close(a, .displacedByNewOwner(diskID: Self.disk, agentID: Self.agent))])
            #expect(w.r.isBusy(b))
            // Acknowledgements go to nobody meanwhile (a is closed, b not answered).
            #expect(w.feed(.durable(diskID: Self.disk, sequence: 1)).isEmpty)
            out = w.feed(fails ? .appendFailed(a, diskID: Self.disk, sequence: 2) : .appended(a, diskID: Self.disk, sequence: 2))
            #expect(out == [.settleDisk(b, diskID: Self.disk)])
            // Settling makes #2 durable first (the sink's contract).
            if !fails { #expect(w.feed(.durable(diskID: Self.disk, sequence: 2)).isEmpty) }
            out = w.feed(.diskSettled(b, diskID: Self.disk))
            #expect(Self.diskState(out, b)! == (fails ? 1 : 2, 1))
            _ = w.feed(.ended(a))
            // From now on b's.
            let next: UInt64 = fails ? 2 : 3
            w.store(b, next)
        }
    }

    @Test func anEndedOwnerLeavesTheDiskFree() {
        var w = World()
        let a = w.connect()
        _ = w.open(a)
        w.store(a, 1)
        _ = w.feed(.ended(a))
        #expect(w.r.state(ofDisk: Self.disk)!.owner == nil)
        // Durability of what it sent still counts; nobody is told.
        let b = w.connect()
        var out = w.feed(.message(b, World.openMessage()))
        #expect(out == [.settleDisk(b, diskID: Self.disk)])
        out = w.feed(.diskSettled(b, diskID: Self.disk))
        #expect(Self.diskState(out, b)! == (1, 1))
    }

    // MARK: Losses, resets and the lineage rule (wire format 4.7)

    @Test func aLossLowersDurableAndTheAgentSendsAgain() {
        var w = World()
        let a = w.connect()
        _ = w.open(a)
        for q: UInt64 in 1...5 { w.store(a, q, commit: q <= 2) }
        // The sink cannot keep #4 and later (a damaged spool record).
        var out = w.feed(.lost(diskID: Self.disk, fromSequence: 4))
        #expect(out == [.close(a, .sinkLost(diskID: Self.disk, fromSequence: 4)), .forget(diskID: Self.disk, fromSequence: 4)])
        out = w.feed(.forgotten(diskID: Self.disk, fromSequence: 4))
        #expect(out.isEmpty)
        #expect(w.r.state(ofDisk: Self.disk)! == (3, 3, 2, nil))
        _ = w.feed(.ended(a))
        // The agent reconnects: told #3, it renumbers from #4 (a new epoch), which is accepted, not a duplicate.
        let b = w.connect()
        #expect(Self.diskState(w.open(b), b)! == (3, 2))
        #expect(w.feed(.segment(b, World.header(4))) == [.append(b, diskID: Self.disk, sequence: 4)])
    }

    @Test func aLossWaitsForTheAppendInFlightAndIgnoresLateDurability() {
        var w = World()
        let a = w.connect()
        _ = w.open(a)
        for q: UInt64 in 1...3 { w.store(a, q, commit: false) }
        #expect(w.feed(.segment(a, World.header(4))) == [.append(a, diskID: Self.disk, sequence: 4)])
        // Lost from #3 while #4 is being appended: no forget yet.
        #expect(w.feed(.lost(diskID: Self.disk, fromSequence: 3)) == [.close(a, .sinkLost(diskID: Self.disk, fromSequence: 3))])
        // A new session opens meanwhile and waits.
        let b = w.connect()
        #expect(w.feed(.message(b, World.openMessage())).isEmpty)
        // Durability reported for a lost sequence counts for nothing.
        #expect(w.feed(.durable(diskID: Self.disk, sequence: 4)).isEmpty)
        #expect(w.r.state(ofDisk: Self.disk)!.durable == 3)
        #expect(w.feed(.appended(a, diskID: Self.disk, sequence: 4)) == [.forget(diskID: Self.disk, fromSequence: 3)])
        // A lower loss reported while forgetting needs its own forget.
        #expect(w.feed(.lost(diskID: Self.disk, fromSequence: 2)).isEmpty)
        #expect(w.feed(.forgotten(diskID: Self.disk, fromSequence: 3)) == [.forget(diskID: Self.disk, fromSequence: 2)])
        #expect(w.feed(.forgotten(diskID: Self.disk, fromSequence: 2)) == [.settleDisk(b, diskID: Self.disk)])
        #expect(Self.diskState(w.feed(.diskSettled(b, diskID: Self.disk)), b)! == (1, 0))
    }

    @Test func aLossWhileSettlingIsWaitedFor() {
        var w = World()
        let a = w.connect()
        _ = w.open(a)
        w.store(a, 1)
        #expect(w.feed(.segment(a, World.header(2))) == [.append(a, diskID: Self.disk, sequence: 2)])
        _ = w.feed(.appended(a, diskID: Self.disk, sequence: 2))
        let b = w.connect()
        var out = w.feed(.message(b, World.openMessage()))
        #expect(out.last == .settleDisk(b, diskID: Self.disk))
        // While b settles, the sink reports #2 lost (its fdatasync failed).
        // b was told nothing yet: it is not closed, it waits for the reset.
        out = w.feed(.lost(diskID: Self.disk, fromSequence: 2))
        #expect(out == [.forget(diskID: Self.disk, fromSequence: 2)])
        #expect(w.feed(.diskSettled(b, diskID: Self.disk)).isEmpty)
        #expect(w.r.isBusy(b))
        #expect(w.feed(.forgotten(diskID: Self.disk, fromSequence: 2)) == [.settleDisk(b, diskID: Self.disk)])
        #expect(Self.diskState(w.feed(.diskSettled(b, diskID: Self.disk)), b)! == (1, 1))
        // Now that b was told, a loss closes it.
        w.store(b, 2, commit: false)
        #expect(w.feed(.lost(diskID: Self.disk, fromSequence: 2))
            == [.close(b, .sinkLost(diskID: Self.disk, fromSequence: 2)), .forget(diskID: Self.disk, fromSequence: 2)])
    }

    @Test func aLossOfADiskNotOpenedYetLimitsWhatItsLookupSays() {
        var w = World()
        // Spool leftovers of a disk no session opened since the start: #7 is damaged.
        #expect(w.feed(.lost(diskID: Self.disk, fromSequence: 7)) == [.forget(diskID: Self.disk, fromSequence: 7)])
        #expect(w.feed(.durable(diskID: Self.disk, sequence: 9)).isEmpty)
        #expect(w.feed(.forgotten(diskID: Self.disk, fromSequence: 7)).isEmpty)
        #expect(w.r.state(ofDisk: Self.disk) == nil && w.r.openedDiskIDs.isEmpty)
        // A lookup made before the forget still says #9 held: the loss wins.
        let s = w.connect()
        #expect(Self.diskState(w.open(s, lookup: .stored(record: Self.record, committedSequence: 4, heldSequence: 9)), s)! == (6, 4))
    }

    @Test func settlingBelowWhatWasAppendedIsABug() async {
        // The lineage rule: diskState says everything the sink holds.
        await #expect(processExitsWith: .failure) {
            var w = World()
            let a = w.connect()
            _ = w.open(a)
            _ = w.feed(.segment(a, World.header(1)))
            _ = w.feed(.appended(a, diskID: Self.disk, sequence: 1))
            let b = w.connect()
            _ = w.feed(.message(b, World.openMessage()))
            // The sink settles without reporting #1 durable or lost.
            _ = w.feed(.diskSettled(b, diskID: Self.disk))
        }
    }

    @Test func aMessageForASessionThatWaitsIsABug() async {
        await #expect(processExitsWith: .failure) {
            var w = World()
            let a = w.connect()
            _ = w.feed(.message(a, World.openMessage()))
            _ = w.feed(.message(a, .ping(1)))
        }
    }

    // MARK: Digest requests (session rule 7)

    @Test func digestRequests() {
        var w = World()
        let s = w.connect(version: 2)
        let v = Self.refusal(w.feed(.message(s, .digestRequest(diskID: Self.disk, firstChunk: 0, count: 1))), s)
        #expect(v?.code == 400 && v?.message == "digest request for disk \(Self.disk), which this connection has not opened")
        let t = w.connect(version: 2)
        _ = w.open(t)
        #expect(w.feed(.message(t, .digestRequest(diskID: Self.disk, firstChunk: 1000, count: 24)))
            == [.answerDigests(t, diskID: Self.disk, firstChunk: 1000, count: 24, protocolVersion: 2)])
        for (first, count): (UInt64, UInt32) in [(UInt64.max, 1), (UInt64.max - 2047, 2048), (1024, 1), (1023, 2), (0, 0)] {
            let u = w.connect()
            _ = w.open(u)
            let v = Self.refusal(w.feed(.message(u, .digestRequest(diskID: Self.disk, firstChunk: first, count: count))), u)
            #expect(v?.code == 400 && v?.message.contains("which has 1024 chunks") == true, "\(first)+\(count)")
        }
        // A version 2 agent cannot compute construction 3: such chunks are 'unknown' to it.
        let d = ChunkDigest(low: 1, high: 2)
        let states: [ChunkState] = [.zero, .data(d, .gmacAES), .data(d, .hmacSHA256), .unknown]
        #expect(R.chunkDigestsMessage(diskID: "x", firstChunk: 5, sequence: 9, states: states, protocolVersion: 2)
            == .chunkDigests(diskID: "x", firstChunk: 5, sequence: 9, states: [.zero, .unknown, .data(d, .hmacSHA256), .unknown]))
        #expect(R.chunkDigestsMessage(diskID: "x", firstChunk: 5, sequence: 9, states: states, protocolVersion: 3)
            == .chunkDigests(diskID: "x", firstChunk: 5, sequence: 9, states: states))
    }

    // MARK: A seeded random walk

    /// Random sessions, messages and sink behaviour (a sink that keeps what
    /// it is handed in memory and completes, reports and loses at random
    /// moments, within the `SegmentSink` contract): the invariants hold
    /// after every event, what is acknowledged never goes down on a
    /// session, and every diskState names exactly what the sink keeps.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func randomWalk(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var w = World(maxConnections: 3, disksPerSession: 2)
        let disks = ["agent-a-sdb-\(Self.hex)", "agent-a-sdc-\(Self.hex)"]
        var live: [S] = []
        /// In order, not a Set: a Set's order changes from run to run (Swift
        /// seeds its hashing per process), and the walk must not.
        var closed: [S] = []
        /// Per session and disk: the highest acknowledged durable and committed.
        var acked: [S: [String: (durable: UInt64, committed: UInt64)]] = [:]
        /// The sink: per disk, the sequences it keeps, what it reported.
        var held: [String: [UInt64]] = [:], durable: [String: UInt64] = [:], committed: [String: UInt64] = [:]
        var lostFrom: [String: UInt64] = [:]
        var created: Set<String> = []
        var work: [R.Effect] = []
        var appending: [(S, String, UInt64)] = []
        var diskStates = 0, appendsDone = 0, forgets = 0

        func apply(_ out: [R.Effect]) {
            for e in out {
                switch e {
                case .send(let s, .ackDurable(let d, let q)):
                    #expect(q >= acked[s]?[d]?.durable ?? 0, "seed \(seed): durable ack went down on \(s)")
                    acked[s, default: [:]][d, default: (0, 0)].durable = q
                case .send(let s, .ackCommitted(let d, let q)):
                    #expect(q >= acked[s]?[d]?.committed ?? 0, "seed \(seed): committed ack went down on \(s)")
                    acked[s, default: [:]][d, default: (0, 0)].committed = q
                case .send(let s, .diskState(let d, let dur, let com)):
                    #expect(dur == held[d]?.last ?? 0, "seed \(seed): diskState \(d) durable #\(dur), the sink keeps \(held[d] ?? [])")
                    #expect(com == committed[d] ?? 0)
                    acked[s, default: [:]][d] = (dur, com)
                    diskStates += 1
                case .close(let s, _):
                    live.removeAll { $0 == s }
                    if !closed.contains(s) { closed.append(s) }
                case .append(let s, let d, let q):
                    appending.append((s, d, q))
                case .lookUpDisk, .createDisk, .settleDisk, .forget:
                    work.append(e)
                case .send, .authenticated, .answerDigests:
                    break
                }
            }
        }

        for _ in 0..<6000 {
            let d = disks[rng.below(2)]
            switch rng.below(13) {
            case 0:
                guard live.count < 4 else { continue }
                let s = w.accept()
                live.append(s)
                apply(w.feed(.message(s, .hello(protocolVersion: 3, agentID: Self.agent))))
            case 1, 2:
                // Mostly a session that has no disk yet (each open of a
                // disk closes its owner).
                guard let s = live.randomElement(using: &rng), !w.r.isBusy(s),
                      !disks.contains(where: { w.r.mayReceiveSegments(s, diskID: $0) }) || rng.below(8) == 0 else { continue }
                apply(w.feed(.message(s, rng.below(4) == 0 ? .digestRequest(diskID: d, firstChunk: 0, count: 1) : World.openMessage(d))))
            case 3, 4, 5:
                guard let s = live.randomElement(using: &rng), !w.r.isBusy(s) else { continue }
                // Mostly to a disk it may send; sometimes to another (refused).
                let target = disks.first { w.r.mayReceiveSegments(s, diskID: $0) && rng.below(10) != 0 } ?? d
                let base = w.r.state(ofDisk: target)?.appended ?? 0
                // Mostly the next one; sometimes a duplicate, rarely a gap (refused).
                let step: UInt64 = [1, 1, 1, 1, 1, 1, 0, 0, 1, 2][rng.below(10)]
                apply(w.feed(.segment(s, World.header(max(1, base + step), diskID: target))))
            case 6, 7:
                // The sink completes a piece of work.
                guard !work.isEmpty else { continue }
                let e = work.remove(at: rng.below(work.count))
                switch e {
                case .lookUpDisk(let s, let disk):
                    let rec = created.contains(disk)
                        ? DiskRecord(diskID: disk, ownerAgentID: Self.agent, sizeBytes: Self.size, chunkSizeBytes: Self.chunk, keyID: Self.keyID) : nil
                    apply(w.feed(.diskLookedUp(s, diskID: disk, .stored(record: rec, committedSequence: committed[disk] ?? 0,
                                                                            heldSequence: held[disk]?.last ?? 0))))
                case .createDisk(let s, let rec):
                    created.insert(rec.diskID)
                    apply(w.feed(.diskCreated(s, diskID: rec.diskID)))
                case .settleDisk(let s, let disk):
                    // Everything kept is reported durable first (below a loss not yet forgotten).
                    let top = held[disk]?.filter { $0 < lostFrom[disk] ?? .max }.last ?? 0
                    if top > durable[disk] ?? 0 {
                        durable[disk] = top
                        apply(w.feed(.durable(diskID: disk, sequence: top)))
                    }
                    apply(w.feed(.diskSettled(s, diskID: disk)))
                case .forget(let disk, let f):
                    held[disk] = held[disk]?.filter { $0 < f }
                    durable[disk] = min(durable[disk] ?? 0, f - 1)
                    if lostFrom[disk] == f { lostFrom[disk] = nil }
                    forgets += 1
                    apply(w.feed(.forgotten(diskID: disk, fromSequence: f)))
                default:
                    Issue.record("unexpected work \(e)")
                }
            case 8:
                guard !appending.isEmpty else { continue }
                let (s, disk, q) = appending.removeFirst()
                appendsDone += 1
                if rng.below(6) == 0 {
                    apply(w.feed(.appendFailed(s, diskID: disk, sequence: q)))
                } else {
                    held[disk, default: []].append(q)
                    apply(w.feed(.appended(s, diskID: disk, sequence: q)))
                }
            case 9:
                guard lostFrom[d] == nil, let top = held[d]?.last, top > durable[d] ?? 0 else { continue }
                durable[d] = top
                apply(w.feed(.durable(diskID: d, sequence: top)))
            case 10:
                let c = committed[d] ?? 0
                guard lostFrom[d] == nil, c < durable[d] ?? 0 else { continue }
                committed[d] = c + 1
                apply(w.feed(.committed(diskID: d, sequence: c + 1)))
            case 11:
                // A closed session ends once nothing of it is in the sink's hands.
                guard let s = closed.first(where: { s in
                    !appending.contains { $0.0 == s } && !work.contains {
                        switch $0 {
                        case .lookUpDisk(let x, _), .createDisk(let x, _), .settleDisk(let x, _): x == s
                        default: false
                        }
                    }
                }) else { continue }
                closed.removeAll { $0 == s }
                apply(w.feed(.ended(s)))
            default:
                // The sink loses a segment it keeps and has not committed.
                guard rng.below(16) == 0, let victim = held[d]?.filter({ $0 > committed[d] ?? 0 }).randomElement(using: &rng) else { continue }
                lostFrom[d] = min(lostFrom[d] ?? victim, victim)
                apply(w.feed(.lost(diskID: d, fromSequence: victim)))
            }
        }
        // The walk went through the interesting states.
        #expect(diskStates > 5 && appendsDone > 20 && forgets > 0, "seed \(seed): \(diskStates) diskStates, \(appendsDone) appends, \(forgets) forgets")
    }
}
