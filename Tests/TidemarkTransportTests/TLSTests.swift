import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTransport

// Real TLS 1.3 over loopback with certificates made by scripts/make-certs.sh.

private let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path
private let makeCerts = repoRoot + "/scripts/make-certs.sh"
nonisolated(unsafe) private var sharedCertsDir: String?

/// A CA with a server certificate (127.0.0.1, localhost), agent-a, an
/// expired agent-old, and a second, unrelated CA with agent-x; removed on
/// deinit, or at exit for the shared set.
private final class Certs: @unchecked Sendable {
    let dir: String
    var other: String { dir + "/other" }
    private let owned: Bool

    init(removeOnDeinit: Bool = true) throws {
        dir = try TestEnv.tempDir("tls")
        owned = removeOnDeinit
        try sh("'\(makeCerts)' '\(dir)' --agent agent-a --agent-expired agent-old")
        try sh("'\(makeCerts)' '\(other)' --agent agent-x")
    }

    deinit { if owned { try? FileManager.default.removeItem(atPath: dir) } }

    /// One set for the tests that only read the files, made once, removed at exit.
    static func shared() throws -> Certs { try sharedCerts.get() }
    private static let sharedCerts = Result { () throws -> Certs in
        let c = try Certs(removeOnDeinit: false)
        sharedCertsDir = c.dir
        atexit { if let d = sharedCertsDir { try? FileManager.default.removeItem(atPath: d) } }
        return c
    }

    var server: TLSFiles { TLSFiles(ca: dir + "/ca.crt", cert: dir + "/server.crt", key: dir + "/server.key") }
    func agent(_ name: String) -> TLSFiles {
        TLSFiles(ca: dir + "/ca.crt", cert: dir + "/\(name).crt", key: dir + "/\(name).key")
    }
    /// An agent of the other CA that trusts our CA (so only the server can object).
    var foreignAgent: TLSFiles {
        TLSFiles(ca: dir + "/ca.crt", cert: other + "/agent-x.crt", key: other + "/agent-x.key")
    }
}

/// Runs `body` on its own thread; `wait` returns its result or rethrows.
private final class Background<T>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, Error>?

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread.detachNewThread { [self] in
            result = Result { try body() }
            done.signal()
        }
    }

    func wait(seconds: Double = 30) throws -> T {
        guard done.wait(timeout: .now() + seconds) == .success else { throw TestFailure("background work did not finish in \(seconds) s") }
        return try result!.get()
    }

    func finished(within seconds: Double) -> Bool { done.wait(timeout: .now() + seconds) == .success }
}

/// The server end of one connection: accept, handshake, then `body`.
private func serveOne<T>(_ listener: TCPListener, _ ctx: TLSContext,
                         _ body: @escaping @Sendable (TLSStream) throws -> T) -> Background<T> {
    Background {
        guard let sock = try listener.accept() else { throw TestFailure("listener closed") }
        let tls = try TLSStream.accept(sock, ctx, handshakeTimeoutMs: 10_000)
        defer { tls.close() }
        return try body(tls)
    }
}

private func connect(_ listener: TCPListener, _ ctx: TLSContext, serverName: String = "127.0.0.1") throws -> TLSStream {
    let sock = try TCPSocket.connect(host: "127.0.0.1", port: listener.port, timeoutMs: 5_000)
    return try TLSStream.connect(sock, ctx, serverName: serverName, handshakeTimeoutMs: 10_000)
}

/// Reads until end of stream.
private func readToEnd(_ s: ByteStream) throws -> [UInt8] {
    var out: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = try buf.withUnsafeMutableBytes { try s.read(into: $0) }
        if n == 0 { return out }
        out += buf[0..<n]
    }
}

private func describe(_ error: Error) -> String { String(describing: error) }

@Suite("TLSTests") struct TLSTests {
    @Test func handshakeIdentitiesAndFullDuplexRoundTrip() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        #expect(listener.port != 0)
        let server = try TLSContext.server(certs.server)
        let client = try TLSContext.client(certs.agent("agent-a"))

        // The server echoes everything back until the client closes.
        let echo = serveOne(listener, server) { tls -> (String, String, Int) in
            var buf = [UInt8](repeating: 0, count: 100_000)
            var total = 0
            while true {
                let n = try buf.withUnsafeMutableBytes { try tls.read(into: $0) }
                if n == 0 { break }
                try buf.withUnsafeBytes { try tls.writeAll(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                total += n
            }
            return (tls.peerCommonName, tls.protocolVersion, total)
        }
        let tls = try connect(listener, client)
        #expect(tls.protocolVersion == "TLSv1.3")
        #expect(tls.peerCommonName == "127.0.0.1")
        // AES-128-GCM is preferred (the payload is already AES-256-GCM sealed).
        #expect(tls.cipherSuite == "TLS_AES_128_GCM_SHA256")

        // 8 MiB written on one thread while this one reads the echo: full duplex.
        var rng = SplitMix64(seed: 42)
        let size = 8 << 20
        var random = [UInt8](repeating: 0, count: size)
        random.withUnsafeMutableBytes { b in
            let words = b.bindMemory(to: UInt64.self)
            for i in words.indices { words[i] = rng.next() }
        }
        let data = random
        let writer = Background {
            try data.withUnsafeBytes { b in
                var off = 0
                while off < b.count {  // uneven pieces
                    let n = min(b.count - off, 1 + (off * 7919) % 300_000)
                    try tls.writeAll(UnsafeRawBufferPointer(rebasing: b[off..<off + n]))
                    off += n
                }
            }
        }
        var got = [UInt8](repeating: 0, count: size)
        var have = 0
        try got.withUnsafeMutableBytes { b in
            while have < size {
                let n = try tls.read(into: UnsafeMutableRawBufferPointer(rebasing: b[have..<min(size, have + 65536)]))
                if n == 0 { break }
                have += n
            }
        }
        try writer.wait()
        tls.close()
        #expect(have == size)
        #expect(got.withUnsafeBytes { g in data.withUnsafeBytes { memcmp(g.baseAddress!, $0.baseAddress!, size) == 0 } })
        let (cn, version, total) = try echo.wait()
        #expect(cn == "agent-a")
        #expect(version == "TLSv1.3")
        #expect(total == size)

        // The DNS name in the server certificate works too.
        let second = serveOne(listener, server) { tls in try readToEnd(tls) }
        let byName = try connect(listener, client, serverName: "localhost")
        try Array("hello".utf8).withUnsafeBytes { try byName.writeAll($0) }
        byName.close()
        #expect(try second.wait() == Array("hello".utf8))
    }

    @Test func clientCertificateOfAnotherCAIsRejected() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let server = serveOne(listener, try TLSContext.server(certs.server)) { _ in () }
        // TLS 1.3: the client finishes its handshake before the server judges its
        // certificate, so the client learns of the rejection on its first read.
        var clientError: Error?
        do {
            let tls = try connect(listener, try TLSContext.client(certs.foreignAgent))
            _ = try readToEnd(tls)
        } catch { clientError = error }
        let e = #expect(throws: TidemarkError.self) { try server.wait() }
        #expect(e?.message.contains("TLS handshake with 127.0.0.1:") == true)
        #expect(e?.message.contains("certificate verify failed (unable to get local issuer certificate)") == true, "\(e.map(describe) ?? "")")
        #expect(e?.hint?.contains("same CA") == true)
        #expect(clientError.map(describe)?.contains("unknown ca") == true, "\(clientError.map(describe) ?? "no client error")")
    }

    @Test func expiredClientCertificateIsRejectedAsExpired() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let server = serveOne(listener, try TLSContext.server(certs.server)) { _ in () }
        var clientError: Error?
        do {
            let tls = try connect(listener, try TLSContext.client(certs.agent("agent-old")))
            _ = try readToEnd(tls)
        } catch { clientError = error }
        let e = #expect(throws: TidemarkError.self) { try server.wait() }
        #expect(e?.message.contains("certificate verify failed (certificate has expired)") == true, "\(e.map(describe) ?? "")")
        #expect(e?.hint?.contains("expired") == true)
        #expect(clientError.map(describe)?.contains("expired") == true, "\(clientError.map(describe) ?? "no client error")")
    }

    @Test func serverCertificateForAnotherNameIsRejectedByTheClient() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let server = serveOne(listener, try TLSContext.server(certs.server)) { _ in () }
        let client = try TLSContext.client(certs.agent("agent-a"))
        let e = #expect(throws: TidemarkError.self) { _ = try connect(listener, client, serverName: "backup.example.com") }
        #expect(e?.message.contains("TLS handshake with backup.example.com (127.0.0.1:") == true, "\(e.map(describe) ?? "")")
        #expect(e?.message.contains("hostname mismatch") == true, "\(e.map(describe) ?? "")")
        #expect(e?.hint?.contains("backup.example.com") == true)
        #expect(throws: (any Error).self) { try server.wait() }

        // A wrong IP address is caught as well.
        let server2 = serveOne(listener, try TLSContext.server(certs.server)) { _ in () }
        let e2 = #expect(throws: TidemarkError.self) { _ = try connect(listener, client, serverName: "127.0.0.2") }
        #expect(e2?.message.contains("IP address mismatch") == true, "\(e2.map(describe) ?? "")")
        #expect(throws: (any Error).self) { try server2.wait() }
    }

    @Test func clientWithoutCertificateIsRejected() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let server = serveOne(listener, try TLSContext.server(certs.server)) { _ in () }
        // openssl s_client presents no certificate unless told to.
        let r = try run(["/bin/sh", "-c",
                         "openssl s_client -connect 127.0.0.1:\(listener.port) -CAfile '\(certs.dir)/ca.crt' -verify_return_error </dev/null"])
        let e = #expect(throws: TidemarkError.self) { try server.wait() }
        #expect(e?.message.contains("peer did not return a certificate") == true, "\(e.map(describe) ?? "")\n\(r.stdout)\(r.stderr)")
        #expect(e?.hint?.contains("no certificate") == true)

        // A client that offers only TLS 1.2 is refused.
        let server2 = serveOne(listener, try TLSContext.server(certs.server)) { _ in () }
        _ = try run(["/bin/sh", "-c", "openssl s_client -tls1_2 -connect 127.0.0.1:\(listener.port) </dev/null"])
        let e2 = #expect(throws: TidemarkError.self) { try server2.wait() }
        #expect(e2?.hint?.contains("TLS 1.3") == true, "\(e2.map(describe) ?? "")")
    }

    @Test func listenerCloseUnblocksAccept() throws {
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        let accepting = Background { try listener.accept() }
        #expect(!accepting.finished(within: 0.2))
        let t0 = Date()
        listener.close()
        #expect(try accepting.wait(seconds: 5) == nil)
        #expect(Date().timeIntervalSince(t0) < 2)
        #expect(try listener.accept() == nil)
        listener.close()
    }

    @Test func shutdownUnblocksABlockedRead() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let release = DispatchSemaphore(value: 0)
        let server = serveOne(listener, try TLSContext.server(certs.server)) { _ in
            _ = release.wait(timeout: .now() + 20)  // holds the connection open, silent
        }
        let tls = try connect(listener, try TLSContext.client(certs.agent("agent-a")))
        let reader = Background { () -> Int in
            var buf = [UInt8](repeating: 0, count: 100)
            return try buf.withUnsafeMutableBytes { try tls.read(into: $0) }
        }
        #expect(!reader.finished(within: 0.3))
        tls.shutdown()
        #expect(try reader.wait(seconds: 5) == 0)
        tls.close()
        release.signal()
        try server.wait()
    }

    @Test func readTimeoutIsItsOwnErrorAndTheConnectionSurvivesIt() throws {
        let certs = try Certs.shared()
        let listener = try TCPListener(host: "127.0.0.1", port: 0)
        defer { listener.close() }
        let go = DispatchSemaphore(value: 0)
        let server = serveOne(listener, try TLSContext.server(certs.server)) { tls in
            _ = go.wait(timeout: .now() + 20)
            try Array("late".utf8).withUnsafeBytes { try tls.writeAll($0) }
        }
        let sock = try TCPSocket.connect(host: "localhost", port: listener.port, timeoutMs: 5_000)
        try sock.setTimeouts(readMs: 200, writeMs: 5_000)
        let tls = try TLSStream.connect(sock, try TLSContext.client(certs.agent("agent-a")), serverName: "localhost")
        var buf = [UInt8](repeating: 0, count: 100)
        let t0 = Date()
        let e = #expect(throws: SystemError.self) { _ = try buf.withUnsafeMutableBytes { try tls.read(into: $0) } }
        let elapsed = Date().timeIntervalSince(t0)
        #expect(e?.isTimeout == true)
        #expect(e?.description.contains("nothing for 200 ms") == true, "\(e.map(describe) ?? "")")
        #expect(elapsed >= 0.15 && elapsed < 3)
        go.signal()
        let n = try buf.withUnsafeMutableBytes { try tls.read(into: $0) }
        #expect(Array(buf[0..<n]) == Array("late".utf8))
        try server.wait()
        #expect(try buf.withUnsafeMutableBytes { try tls.read(into: $0) } == 0)
        tls.close()
    }

    @Test func badFilesAreNamed() throws {
        let certs = try Certs.shared()
        var files = certs.server
        files.certPath = certs.dir + "/missing.crt"
        let e = #expect(throws: SystemError.self) { _ = try TLSContext.server(files) }
        #expect(e?.errno == ENOENT)
        #expect(e?.description.contains("reading the TLS certificate \(certs.dir)/missing.crt") == true, "\(e.map(describe) ?? "")")

        files = certs.server
        files.keyPath = certs.dir + "/agent-a.key"
        let m = #expect(throws: TidemarkError.self) { _ = try TLSContext.server(files) }
        #expect(m?.message == "the private key \(certs.dir)/agent-a.key does not belong to the certificate \(certs.dir)/server.crt")

        files = certs.server
        files.caPath = certs.dir + "/replication.key"
        let c = #expect(throws: TidemarkError.self) { _ = try TLSContext.client(files) }
        #expect(c?.message.hasPrefix("cannot load the CA certificate \(certs.dir)/replication.key") == true, "\(c.map(describe) ?? "")")
    }

    /// The private key of either side is a secret file: readable by group or
    /// others, it is refused with the reason and `chmod 600`; the
    /// certificates are public and need no such mode. (FIFOs and other
    /// non-regular files: SecretFileTests, with a time bound.)
    @Test func privateKeysReadableByOthersOrNotRegularAreRefused() throws {
        let certs = try Certs.shared()
        let dir = try TestEnv.tempDir("tls-key-mode")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loose = dir + "/loose.key"
        try sh("cp '\(certs.dir)/agent-a.key' '\(loose)' && chmod 644 '\(loose)'")
        var agent = certs.agent("agent-a")
        agent.keyPath = loose
        let a = #expect(throws: TidemarkError.self) { _ = try TLSContext.client(agent) }
        #expect(a?.message.contains("the TLS private key \(loose) is accessible by group or others (mode 0644)") == true, "\(a.map(describe) ?? "")")
        #expect(a?.hint == "chmod 600 \(loose)")
        var server = certs.server
        try sh("cp '\(certs.dir)/server.key' '\(loose)' && chmod 640 '\(loose)'")
        server.keyPath = loose
        let s = #expect(throws: TidemarkError.self) { _ = try TLSContext.server(server) }
        #expect(s?.hint == "chmod 600 \(loose)", "\(s.map(describe) ?? "")")
        try sh("chmod 600 '\(loose)'")
        _ = try TLSContext.server(server)

        // Certificates: public, any mode.
        try sh("cp '\(certs.dir)/server.crt' '\(dir)/server.crt' && chmod 644 '\(dir)/server.crt'")
        server = certs.server
        server.certPath = dir + "/server.crt"
        _ = try TLSContext.server(server)
    }

    @Test func plainTCPAndConnectErrors() throws {
        let listener = try TCPListener(host: "::1", port: 0)
        let port = listener.port
        let server = Background { () -> [UInt8] in
            guard let s = try listener.accept() else { return [] }
            #expect(s.peerDescription.hasPrefix("[::1]:"))
            return try readToEnd(s)
        }
        let c = try TCPSocket.connect(host: "[::1]", port: port, timeoutMs: 2_000)
        #expect(c.peerDescription == "[::1]:\(port)")
        try Array("plain".utf8).withUnsafeBytes { try c.writeAll($0) }
        c.close()
        #expect(try server.wait() == Array("plain".utf8))
        listener.close()

        let refused = #expect(throws: SystemError.self) { _ = try TCPSocket.connect(host: "::1", port: port, timeoutMs: 2_000) }
        #expect(refused?.errno == ECONNREFUSED)
        #expect(refused?.description.contains("connecting to [::1]:\(port)") == true, "\(refused.map(describe) ?? "")")
        #expect(throws: TidemarkError.self) { _ = try TCPSocket.connect(host: "no-such-host.invalid", port: 1, timeoutMs: 2_000) }
    }

    @Test func makeCertsModesAndRefusals() throws {
        let certs = try Certs()
        func mode(_ name: String) throws -> Int {
            let a = try FileManager.default.attributesOfItem(atPath: certs.dir + "/" + name)
            return (a[.posixPermissions] as? Int) ?? -1
        }
        for key in ["ca.key", "server.key", "agent-a.key", "agent-old.key", "replication.key"] {
            #expect(try mode(key) == 0o600, "\(key)")
        }
        #expect(try mode("agent-a.crt") == 0o644)
        // 32 bytes as 64 hex digits and a newline, as ReplicationKey.generate writes it.
        let key = try String(contentsOfFile: certs.dir + "/replication.key", encoding: .utf8)
        #expect(key.count == 65 && key.hasSuffix("\n") && key.dropLast().allSatisfy(\.isHexDigit), "\(key)")
        let again = try run([makeCerts, certs.dir, "--agent", "agent-a"])
        #expect(!again.ok)
        #expect(again.stderr.contains("agent-a.crt exists (use --force to replace it)"))
        let before = try Data(contentsOf: URL(fileURLWithPath: certs.dir + "/replication.key"))
        let forced = try run([makeCerts, certs.dir, "--agent", "agent-a", "--force"])
        #expect(forced.ok, "\(forced.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: certs.dir + "/replication.key")) == before)
        #expect(try sh("openssl x509 -in '\(certs.dir)/agent-a.crt' -noout -subject").contains("CN = agent-a"))
    }
}
