// The process server's message handlers, end to end: an in-process
// ProcessServer (loopback, port 0, spool and target in a scratch directory,
// certificates made by scripts/make-certs.sh) and, per input, one agent
// connection over TLS 1.3 with a client certificate for "agent-1" that
// sends the input as its byte stream, followed by an `error` frame (on
// which the server ends the connection, so each input finishes at once).
// Mode byte: bit 0 sends a valid hello (version 3, agent-1) first.
// Invariants: the server never traps (a trap in any handler, the spool or
// the uploader kills this process: libFuzzer saves the input), and what it
// sends back is a stream of well-formed frames.
import Foundation
import FuzzSupport
import TidemarkServerCore
import TidemarkSystem
import TidemarkWire
import TidemarkTransport

@_cdecl("fuzz_server_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    Fuzz.main(argc, argv, seeds: seeds) { data, size in fuzz(data, size) }
}

let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path + "/../../.."

struct World: @unchecked Sendable {
    let server: ProcessServer
    let client: TLSContext
}

nonisolated(unsafe) let world: World = {
    Log.setLevel(.error)
    let dir = Fuzz.scratch + "/server"
    Fuzz.resetDirectory(dir)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/bash")
    p.arguments = [repository + "/scripts/make-certs.sh", dir + "/tls", "--agent", "agent-1"]
    p.standardOutput = FileHandle.nullDevice
    try! p.run()
    p.waitUntilExit()
    precondition(p.terminationStatus == 0, "scripts/make-certs.sh failed")
    let tls = dir + "/tls/"
    let options = ProcessServer.Options(
        serverID: "fuzz-server", listenHost: "127.0.0.1", listenPort: 0,
        tls: TLSFiles(ca: tls + "ca.crt", cert: tls + "server.crt", key: tls + "server.key"),
        spoolDir: dir + "/spool", spoolMaxBytes: 1 << 30, targetPath: dir + "/target", maxConnections: 64,
        retentionSeconds: 86_400, pruneIntervalSeconds: 86_400, uploadMemoryBytes: 64 << 20)
    let server = try! ProcessServer(options: options)
    Thread { server.run() }.start()
    let client = try! TLSContext.client(TLSFiles(ca: tls + "ca.crt", cert: tls + "agent-1.crt", key: tls + "agent-1.key"))
    return World(server: server, client: client)
}()

func frame(_ m: WireMessage) -> [UInt8] {
    let s = MemoryStream()
    try! FrameWriter(s).send(m)
    return s.written
}

let hello = frame(.hello(protocolVersion: 3, agentID: "agent-1"))
let goodbye = frame(.error(code: 0, message: "fuzz input ends"))

/// Collects what the server sends.
final class Collector: ByteStream {
    var bytes: [UInt8] = []
    func read(into: UnsafeMutableRawBufferPointer) throws -> Int { 0 }
    func writeAll(_ b: UnsafeRawBufferPointer) throws { bytes += b }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let all = Fuzz.bytes(data, size)
    guard let mode = all.first else { return 0 }
    let w = world
    let stream: TLSStream
    do {
        let socket = try TCPSocket.connect(host: "127.0.0.1", port: w.server.port, timeoutMs: 5000)
        try socket.setTimeouts(readMs: 5000, writeMs: 5000)
        stream = try TLSStream.connect(socket, w.client, serverName: "127.0.0.1", handshakeTimeoutMs: 5000)
    } catch {
        Fuzz.check(false, "cannot connect to the in-process server: \(error)")
        return 0
    }
    defer { stream.close() }
    let out = (mode & 1 != 0 ? hello : []) + all.dropFirst() + goodbye
    // The server may close early (malformed input): a failed write is fine.
    do { try out.withUnsafeBytes { try stream.writeAll($0) } } catch {}
    // Everything the server sends until it closes, read as frames.
    let reader = FrameReader(stream)
    reader.acceptedVersions = WireProtocol.acceptedVersions
    do {
        while let _ = try reader.next() {}
    } catch let e as TidemarkError where e.kind == .corrupt {
        Fuzz.check(false, "the server sent a malformed frame: \(e)")
    } catch {
        // A reset or timeout after the server closed: fine.
    }
    return 0
}

func seeds() throws -> [(String, [UInt8])] {
    let segments = try TestSegments.sealed()
    let open = frame(.openDisk(diskID: "vdb", diskSizeBytes: 1 << 20, chunkSizeBytes: 4096, keyID: TestSegments.key.id))
    var session = open
    for (_, s) in segments.prefix(4) { session += frame(.segment(s)) }
    session += frame(.digestRequest(diskID: "vdb", firstChunk: 0, count: 16)) + frame(.ping(7))
    return [
        ("hello-only", [0] + hello),
        ("open-and-ping", [1] + open + frame(.ping(1))),
        ("session", [1] + session),
        ("digest-request-unopened", [1] + frame(.digestRequest(diskID: "vdc", firstChunk: 0, count: 1))),
        ("bad-version", [0] + frame(.hello(protocolVersion: 9, agentID: "agent-1"))),
    ]
}
