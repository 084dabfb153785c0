import Foundation
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkWire

@Suite struct ReplicationKeyTests {
    func withDir(_ body: (String) throws -> Void) throws {
        let dir = try TestEnv.tempDir("wire-key")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try body(dir)
    }

    func write(_ path: String, _ bytes: [UInt8], mode: Int) throws {
        #expect(FileManager.default.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: mode]))
        #expect(chmod(path, mode_t(mode)) == 0)
    }

    @Test func generateThenLoad() throws {
        try withDir { dir in
            let path = dir + "/replication.key"
            let k = try ReplicationKey.generate(path: path)
            var st = stat()
            #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
            let text = try String(contentsOfFile: path, encoding: .utf8)
            #expect(text == hex(k.bytes) + "\n")
            #expect(try ReplicationKey.load(path: path) == k)
            // O_EXCL: never overwrites.
            let e = tidemarkError { _ = try ReplicationKey.generate(path: path) }
            #expect(e?.kind == .state && e?.message.contains("already exists") == true)
            #expect(try ReplicationKey.load(path: path) == k)
        }
    }

    /// Every way Swift prints a value (interpolation, `String(reflecting:)`,
    /// `dump`, the description of a type holding a key) shows the key id and
    /// never the key, in hex or as bytes; a malformed key file's error does
    /// not quote its content.
    @Test func theKeyIsNeverPrinted() throws {
        let raw: [UInt8] = (0..<32).map { UInt8(truncatingIfNeeded: 0xA0 + $0 * 7) }
        let k = try ReplicationKey(bytes: raw)
        struct Holder { var key: ReplicationKey; var path: String }
        var dumped = ""
        dump(k, to: &dumped)
        var dumpedHolder = ""
        dump(Holder(key: k, path: "/etc/tidemark/replication.key"), to: &dumpedHolder)
        let texts = ["\(k)", String(reflecting: k), dumped, "\(Holder(key: k, path: "/etc/tidemark/replication.key"))",
                     String(reflecting: Holder(key: k, path: "/x")), dumpedHolder]
        let byteList = raw.map(String.init).joined(separator: ", ")
        for t in texts {
            #expect(t.contains(k.idHex), "\(t)")
            #expect(!t.lowercased().contains(hex(raw).prefix(8)), "\(t)")
            #expect(!t.contains(byteList.prefix(20)), "\(t)")
        }
        try withDir { dir in
            let content = Array(("zz" + hex(raw).dropFirst(2)).utf8)
            try write(dir + "/bad", content, mode: 0o600)
            let e = tidemarkError { _ = try ReplicationKey.load(path: dir + "/bad") }
            let text = e.map { "\($0)" } ?? ""
            #expect(!text.isEmpty && !text.contains(hex(raw).dropFirst(2).prefix(8)), "\(text)")
        }
    }

    @Test func formats() throws {
        try withDir { dir in
            let raw: [UInt8] = (0..<32).map { UInt8($0 * 3) }
            try write(dir + "/raw", raw, mode: 0o600)
            #expect(try ReplicationKey.load(path: dir + "/raw").bytes == raw)
            try write(dir + "/hex", Array(hex(raw).uppercased().utf8), mode: 0o400)
            #expect(try ReplicationKey.load(path: dir + "/hex").bytes == raw)
            try write(dir + "/hexnl", Array((hex(raw) + "\n").utf8), mode: 0o600)
            #expect(try ReplicationKey.load(path: dir + "/hexnl").bytes == raw)
            for (name, content) in [("short", Array(hex(raw).dropLast(2).utf8)), ("bad", Array(("x" + hex(raw).dropFirst()).utf8)),
                                    ("empty", []), ("long", [UInt8](repeating: 0x61, count: 4096)), ("33", raw + [0])] {
                try write(dir + "/" + name, content, mode: 0o600)
                let e = tidemarkError { _ = try ReplicationKey.load(path: dir + "/" + name) }
                #expect(e?.kind == .invalidArgument, "\(name)")
            }
        }
    }

    /// A FIFO given as the key (tidemarkctl recover --key FIFO) is refused
    /// at once instead of waiting for a writer; so are directories and links.
    @Test func refusesWhatIsNotARegularFileWithoutBlocking() throws {
        try withDir { dir in
            let fifo = dir + "/fifo"
            #expect(mkfifo(fifo, 0o600) == 0)
            let started = Date()
            let e = tidemarkError { _ = try ReplicationKey.load(path: fifo) }
            #expect(Date().timeIntervalSince(started) < 5)
            #expect(e?.message.contains("not a regular file") == true, "\(String(describing: e))")
            #expect(tidemarkError { _ = try ReplicationKey.load(path: dir) }?.message.contains("not a regular file") == true)
            try write(dir + "/real", (0..<32).map { UInt8($0) }, mode: 0o600)
            #expect(symlink(dir + "/real", dir + "/link") == 0)
            #expect(tidemarkError { _ = try ReplicationKey.load(path: dir + "/link") }?.message.contains("symbolic link") == true)
        }
    }

    @Test func refusesGroupOrOtherAccess() throws {
        try withDir { dir in
            let path = dir + "/k"
            for mode in [0o644, 0o640, 0o604, 0o620, 0o660] {
                try write(path, (0..<32).map { UInt8($0) }, mode: mode)
                let e = tidemarkError { _ = try ReplicationKey.load(path: path) }
                #expect(e?.message.contains("accessible by group or others (mode 0\(String(mode, radix: 8)))") == true)
                #expect(e?.hint?.contains("chmod 600 \(path)") == true)
            }
            #expect(chmod(path, 0o600) == 0)
            _ = try ReplicationKey.load(path: path)
            // Symlinks are not followed; a missing file names its path.
            #expect(symlink(path, dir + "/link") == 0)
            #expect(tidemarkError { _ = try ReplicationKey.load(path: dir + "/link") }?.message.contains("is a symbolic link") == true)
            #expect(throws: SystemError.self) { _ = try ReplicationKey.load(path: dir + "/missing") }
        }
    }
}
