import Foundation
import Glibc
import Testing
import TidemarkTesting
@testable import TidemarkSystem

private final class ResultBox: @unchecked Sendable { var result: Result<String, Error>? }

/// Secret files (replication key, TLS private keys): only a regular file
/// that group and others cannot access, refused without ever blocking.
@Suite struct SecretFileTests {
    /// Runs `body` on a thread and fails (instead of hanging) if it has not
    /// returned within `seconds`; `unblock` is called then, to free it.
    private func bounded(_ seconds: Double, unblock: () -> Void = {},
                         _ body: @escaping @Sendable () throws -> String) throws -> String {
        let box = ResultBox()
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            box.result = Result { try body() }
            done.signal()
        }
        let start = Date()
        if done.wait(timeout: .now() + seconds) == .timedOut {
            unblock()
            done.wait()
            throw TestFailure("did not return within \(seconds) s (blocked)")
        }
        #expect(Date().timeIntervalSince(start) < seconds)
        return try box.result!.get()
    }

    private func keyFile(_ dir: String, mode: mode_t) throws -> String {
        let path = dir + "/key-\(String(mode, radix: 8))"
        try "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n".write(toFile: path, atomically: false, encoding: .utf8)
        #expect(chmod(path, mode) == 0)
        return path
    }

    @Test func groupOrOtherBitsAreRefusedWithChmod600() throws {
        let dir = try TestEnv.tempDir("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for mode: mode_t in [0o644, 0o640, 0o604, 0o660, 0o606, 0o700 | 0o001, 0o610] {
            let path = try keyFile(dir, mode: mode)
            let e = #expect(throws: TidemarkError.self) {
                try SecretFile.check(path, what: "the TLS private key", origin: "replication.key at /etc/tidemark/agent.yaml:9")
            }
            let text = e?.description ?? ""
            #expect(text.contains("the TLS private key \(path) (replication.key at /etc/tidemark/agent.yaml:9) is accessible by group or others (mode \(SecretFile.octal(mode)))"), "\(text)")
            #expect(e?.hint == "chmod 600 \(path)", "\(text)")
        }
    }

    @Test func ownerOnlyModesAreAccepted() throws {
        let dir = try TestEnv.tempDir("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for mode: mode_t in [0o600, 0o400] {
            let path = try keyFile(dir, mode: mode)
            try SecretFile.check(path, what: "the replication key")
            let fd = try SecretFile.open(path, what: "the replication key")
            var buf = [UInt8](repeating: 0, count: 8)
            #expect(try buf.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) } == 8)
            #expect(fcntl(fd.rawValue, F_GETFL) & O_NONBLOCK == 0)
        }
    }

    @Test func aFIFOIsRefusedWithoutBlocking() throws {
        let dir = try TestEnv.tempDir("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/key.fifo"
        #expect(mkfifo(fifo, 0o600) == 0)
        let e = try bounded(5, unblock: { _ = Glibc.open(fifo, O_RDWR | O_NONBLOCK) }) { () -> String in
            do {
                try SecretFile.check(fifo, what: "the replication key")
                return "accepted"
            } catch { return "\(error)" }
        }
        #expect(e.contains("the replication key \(fifo) is a FIFO (named pipe), not a regular file"), "\(e)")
    }

    @Test func aDirectoryADeviceAndASocketAreRefused() throws {
        let dir = try TestEnv.tempDir("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/keydir", withIntermediateDirectories: false)
        #expect(chmod(dir + "/keydir", 0o700) == 0)
        let socketPath = dir + "/key.sock"
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(s) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            socketPath.utf8CString.withUnsafeBytes { p.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(p.count))) }
        }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        chmod(socketPath, 0o600)
        for (path, kind) in [(dir + "/keydir", "a directory"), ("/dev/null", "a character device"), (socketPath, "a socket")] {
            let text = try bounded(5) { () -> String in
                do {
                    try SecretFile.check(path, what: "the TLS private key")
                    return "accepted"
                } catch { return "\(error)" }
            }
            #expect(text.contains("the TLS private key \(path) is \(kind), not a regular file"), "\(text)")
        }
    }

    /// A symbolic link is followed; its target is what is checked.
    @Test func aSymlinkIsJudgedByItsTarget() throws {
        let dir = try TestEnv.tempDir("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = try keyFile(dir, mode: 0o600)
        let bad = try keyFile(dir, mode: 0o644)
        #expect(symlink(good, dir + "/good.link") == 0)
        #expect(symlink(bad, dir + "/bad.link") == 0)
        #expect(symlink("/dev/null", dir + "/null.link") == 0)
        try SecretFile.check(dir + "/good.link", what: "the replication key")
        let e = #expect(throws: TidemarkError.self) { try SecretFile.check(dir + "/bad.link", what: "the replication key") }
        #expect(e?.hint == "chmod 600 \(dir)/bad.link")
        #expect(throws: TidemarkError.self) { try SecretFile.check(dir + "/null.link", what: "the replication key") }
        let missing = #expect(throws: SystemError.self) { try SecretFile.check(dir + "/missing", what: "the replication key") }
        #expect(missing?.errno == ENOENT)
        // Where links are not followed (the replication key), a link is refused.
        let nofollow = #expect(throws: TidemarkError.self) {
            try SecretFile.check(dir + "/good.link", what: "the replication key", followSymlink: false)
        }
        #expect(nofollow?.message == "the replication key \(dir)/good.link is a symbolic link (to \(good)); it must be the file itself")
    }

    /// A link owned by someone else (who could repoint it) is refused.
    @Test(.requires("root, to give the link to another user (lchown)", TestEnv.isRoot))
    func aSymlinkOwnedByAnotherUserIsRefused() throws {
        let dir = try TestEnv.tempDir("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let good = try keyFile(dir, mode: 0o600)
        #expect(symlink(good, dir + "/other.link") == 0)
        #expect(lchown(dir + "/other.link", 65534, 65534) == 0)
        let e = #expect(throws: TidemarkError.self) { try SecretFile.check(dir + "/other.link", what: "the TLS private key") }
        #expect(e?.message.contains("is a symbolic link owned by uid 65534") == true, "\(e.map { "\($0)" } ?? "")")
    }
}
