import TidemarkWire

/// One side of a simulated connection.
enum End: Equatable, Sendable {
    case agent, server
    var other: End { self == .agent ? .server : .agent }
}

/// The simulated clock, the event queue and the random stream, shared by
/// every component of one run (single-threaded: the event loop calls one
/// component at a time).
final class SimScheduler {
    private(set) var nowNs: UInt64 = 0
    private var queue = EventQueue()
    var rng: SimRandom

    init(seed: UInt64) { rng = SimRandom(seed: seed) }

    func at(_ t: UInt64, _ e: SimEvent) { queue.push(at: max(t, nowNs), e) }
    func after(_ delayNs: UInt64, _ e: SimEvent) { queue.push(at: nowNs + delayNs, e) }

    /// The next event; the clock moves to its time.
    func next() -> SimEvent? {
        guard let e = queue.pop() else { return nil }
        precondition(e.at >= nowNs, "the simulated clock would go back")
        nowNs = e.at
        return e.event
    }

    var pending: Int { queue.count }
    var nowUnixMs: Int64 { Int64(SimScheduler.epochUnixMs) + Int64(nowNs / 1_000_000) }
    /// The wall-clock time the simulated clock starts at (2026-01-01).
    static let epochUnixMs: UInt64 = 1_767_225_600_000
}

/// The simulated network between the agent and the process server:
/// connections that carry `WireMessage`s (segments as their sealed bytes).
///
/// TCP and TLS deliver a connection's frames in order, once, or not at all:
/// a lost, duplicated or reordered packet inside a connection shows up to
/// the application as delay (retransmission), or, when TLS notices
/// tampering, as a broken connection. So each message gets a latency, a
/// lost packet a retransmission delay, and a connection can be cut (reset:
/// both ends learn it after a latency; silent: neither does, and the
/// agent's io timeout and the server's idle timeout must find it). Beyond
/// what TCP allows, a run may also duplicate or reorder messages of a
/// connection (`hostileChance`), to show that a peer which breaks the
/// order only costs a reconnect. Across connections nothing is ordered: an
/// old connection's segments can reach the server after the agent's new
/// connection opened. Partitions make new connections fail.
///
/// Memory: one entry per message in flight.
final class SimNetwork {
    struct Faults: Sendable {
        var latencyNs: ClosedRange<UInt64>
        /// A packet of the message is lost: it arrives after a retransmission delay.
        var retransmitChance: Double
        var retransmitDelayNs: UInt64
        /// Per message: the connection is cut while it travels.
        var cutChance: Double
        /// Of cuts, those neither end hears about.
        var silentCutShare: Double
        /// Per message: a copy arrives again later, or it overtakes the one before.
        var hostileChance: Double
    }

    struct Message {
        var at: UInt64
        /// Ties at one time: by key (see `send`).
        var order: UInt64
        var message: WireMessage
    }

    struct Connection {
        let id: UInt64
        /// Not cut by the network.
        var alive = true
        /// Toward each end, by arrival time.
        var toAgent: [Message] = []
        var toServer: [Message] = []
        var lastArrival: [UInt64] = [0, 0]   // toward agent, toward server
        /// The end that closed it (a FIN follows its last message).
        var closedBy: End?
        /// Ends that have learned the connection is gone.
        var noticed: [End] = []
    }

    let scheduler: SimScheduler
    var faults: Faults
    private(set) var connections: [UInt64: Connection] = [:]
    private var nextID: UInt64 = 1
    private var nextOrder: UInt64 = 0
    /// New connections fail until then.
    var partitionedUntilNs: UInt64 = 0
    var messagesSent: UInt64 = 0
    var cuts: UInt64 = 0

    init(scheduler: SimScheduler, faults: Faults) {
        self.scheduler = scheduler
        self.faults = faults
    }

    var partitioned: Bool { scheduler.nowNs < partitionedUntilNs }

    /// A new connection (the server must be listening; the caller checks).
    func open() -> UInt64 {
        let id = nextID
        nextID += 1
        connections[id] = Connection(id: id)
        return id
    }

    private func latency() -> UInt64 {
        var rng = scheduler.rng
        var d = rng.between(faults.latencyNs.lowerBound, faults.latencyNs.upperBound)
        if rng.chance(faults.retransmitChance) { d += faults.retransmitDelayNs }
        scheduler.rng = rng
        return d
    }

    /// Sends `m` from `from` to the other end. Lost when the connection is
    /// cut or either end closed it.
    func send(_ id: UInt64, from: End, _ m: WireMessage) {
        guard var c = connections[id], c.alive, c.closedBy == nil else { return }
        messagesSent += 1
        let to = from.other
        let slot = to == .agent ? 0 : 1
        let at = max(scheduler.nowNs + latency(), c.lastArrival[slot])
        c.lastArrival[slot] = at
        // Normal messages are keyed 2, 4, 6, …; one that overtakes the
        // message before it takes that one's time and key - 1.
        var copies: [(at: UInt64, key: UInt64)] = [(at, nextOrder * 2 + 2)]
        if scheduler.rng.chance(faults.hostileChance) {
            let queue = to == .agent ? c.toAgent : c.toServer
            if scheduler.rng.chance(0.5) {
                copies.append((at + latency(), nextOrder * 2 + 4))   // a duplicate, later
                nextOrder += 1
            } else if let previous = queue.last {
                copies = [(previous.at, previous.order - 1)]         // overtakes the one before
            }
        }
        nextOrder += 1
        for (t, key) in copies {
            let msg = Message(at: t, order: key, message: m)
            if to == .agent { Self.insert(msg, into: &c.toAgent) } else { Self.insert(msg, into: &c.toServer) }
            scheduler.at(t, .deliver(connection: id, to: to))
        }
        connections[id] = c
        if scheduler.rng.chance(faults.cutChance) { cut(id, silent: scheduler.rng.chance(faults.silentCutShare)) }
    }

    /// Messages toward an end, by (time, key).
    private static func insert(_ m: Message, into q: inout [Message]) {
        var i = q.count
        while i > 0 && (q[i - 1].at > m.at || (q[i - 1].at == m.at && q[i - 1].order > m.order)) { i -= 1 }
        q.insert(m, at: i)
    }

    /// The message due at `to` (the `deliver` event of its arrival); nil
    /// when it was lost meanwhile.
    func deliver(_ id: UInt64, to: End) -> WireMessage? {
        guard var c = connections[id], c.alive else { return nil }
        let m: Message?
        if to == .agent {
            m = c.toAgent.isEmpty ? nil : c.toAgent.removeFirst()
        } else {
            m = c.toServer.isEmpty ? nil : c.toServer.removeFirst()
        }
        connections[id] = c
        // Nothing reaches an end that closed its socket.
        if c.closedBy == to { return nil }
        return m?.message
    }

    /// `by` closes its socket: its messages in flight still arrive, then
    /// the other end learns of the close.
    func close(_ id: UInt64, by: End) {
        guard var c = connections[id] else { return }
        if !c.noticed.contains(by) { c.noticed.append(by) }
        if c.alive && c.closedBy == nil {
            c.closedBy = by
            let slot = by.other == .agent ? 0 : 1
            let at = max(scheduler.nowNs + latency(), c.lastArrival[slot])
            scheduler.at(at, .closed(connection: id, to: by.other))
        }
        connections[id] = c
        forgetIfDone(id)
    }

    /// The network cuts the connection: everything in flight is lost.
    func cut(_ id: UInt64, silent: Bool) {
        guard var c = connections[id], c.alive else { return }
        cuts += 1
        c.alive = false
        c.toAgent.removeAll()
        c.toServer.removeAll()
        connections[id] = c
        if !silent {
            for end in [End.agent, .server] where !c.noticed.contains(end) {
                scheduler.after(latency(), .closed(connection: id, to: end))
            }
        }
    }

    /// `end` learned the connection is gone (a `closed` event, or its own
    /// timeout): its side is released.
    func noticed(_ id: UInt64, by end: End) {
        guard var c = connections[id] else { return }
        if !c.noticed.contains(end) { c.noticed.append(end) }
        connections[id] = c
        forgetIfDone(id)
    }

    /// Whether `end` still holds the connection.
    func isOpen(_ id: UInt64, for end: End) -> Bool {
        guard let c = connections[id] else { return false }
        return !c.noticed.contains(end)
    }

    private func forgetIfDone(_ id: UInt64) {
        guard let c = connections[id], c.noticed.count == 2 else { return }
        connections[id] = nil
    }

    /// Cuts every connection (a crashed server's sockets reset at once).
    func cutAll(silent: Bool) {
        for id in connections.keys.sorted() { cut(id, silent: silent) }
    }

    /// The live connections, oldest first.
    var openConnections: [UInt64] { connections.filter { $0.value.alive }.keys.sorted() }
}
