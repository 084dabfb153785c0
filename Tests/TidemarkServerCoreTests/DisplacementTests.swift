import Testing
@testable import TidemarkServerCore

/// The pool of unauthenticated connections (ServerLimits, docs/wire-format.md
/// session rule 9) at its bounds: per source address and in all.
@Suite struct DisplacementTests {
    typealias U = ReplicationReceiver.UnauthenticatedConnection
    let perSource = ServerLimits.unauthenticatedPerSourceMax
    let all = ServerLimits.unauthenticatedConnectionsMax

    func pool(_ n: Int, source: (Int) -> String, pastTLS: (Int) -> Bool = { _ in false }) -> [U] {
        (0..<n).map { U(source: source($0), acceptedNs: UInt64(1000 + $0), pastTLSHandshake: pastTLS($0)) }
    }

    @Test func perSourceBound() {
        #expect(ReplicationReceiver.displaced(among: [], newSource: "10.0.0.1") == nil)
        // One below the bound: the new one fits.
        #expect(ReplicationReceiver.displaced(among: pool(perSource - 1) { _ in "10.0.0.1" }, newSource: "10.0.0.1") == nil)
        // At the bound: the oldest of that address gives way.
        #expect(ReplicationReceiver.displaced(among: pool(perSource) { _ in "10.0.0.1" }, newSource: "10.0.0.1") == 0)
        // Another address is not affected by that address's count.
        #expect(ReplicationReceiver.displaced(among: pool(perSource) { _ in "10.0.0.1" }, newSource: "10.0.0.2") == nil)
        // Oldest of the same address, not the oldest of all.
        var p = pool(1) { _ in "10.0.0.9" } + pool(perSource) { _ in "10.0.0.1" }
        p[0].acceptedNs = 1
        #expect(ReplicationReceiver.displaced(among: p, newSource: "10.0.0.1") == 1)
    }

    @Test func wholePoolBound() {
        // Every address below its bound, the pool one below its own: fits.
        let spread = { (i: Int) in "10.0.\(i / (self.perSource - 1)).1" }
        #expect(ReplicationReceiver.displaced(among: pool(all - 1, source: spread), newSource: "192.168.0.1") == nil)
        // At the pool's bound: the oldest of all gives way.
        #expect(ReplicationReceiver.displaced(among: pool(all, source: spread), newSource: "192.168.0.1") == 0)
    }

    @Test func thoseInTheTLSHandshakeGiveWayFirst() {
        // The oldest is past its TLS handshake (a certificate of the CA): the next oldest goes.
        let p = pool(perSource, source: { _ in "10.0.0.1" }, pastTLS: { $0 == 0 })
        #expect(ReplicationReceiver.displaced(among: p, newSource: "10.0.0.1") == 1)
        // All past it: the oldest still goes (the bound holds).
        let q = pool(perSource, source: { _ in "10.0.0.1" }, pastTLS: { _ in true })
        #expect(ReplicationReceiver.displaced(among: q, newSource: "10.0.0.1") == 0)
        // Only the newest is still in the handshake: it goes.
        let r = pool(all, source: { "10.0.\($0).1" }, pastTLS: { $0 != self.all - 1 })
        #expect(ReplicationReceiver.displaced(among: r, newSource: "192.168.0.1") == all - 1)
    }
}
