import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkServerCore

/// The spool verifies every record it reads back for upload against the
/// CRC32C its record header stored at append time (docs/spool-format.md).
@Suite struct SpoolTests {
    /// A spool with its sync thread; `close()` stops it and removes the directory.
    final class Fixture: @unchecked Sendable {
        let dir: String
        let spool: Spool
        let thread: Thread
        init(_ tag: String) throws {
            dir = try TestEnv.tempDir(tag) + "/spool"
            (spool, _) = try Spool.open(directory: dir, maxBytes: 64 << 20) { b in
                (String(decoding: b.prefix(2), as: UTF8.self), UInt64(b[2]))
            }
            let s = spool
            thread = Thread { s.runSyncLoop() }
            thread.start()
        }
        func append(_ seq: UInt8, count: Int = 4096) throws -> Spool.Record {
            let payload = Array("d1".utf8) + [seq] + [UInt8](repeating: seq &* 31, count: count - 3)
            let r = try payload.withUnsafeBytes { try spool.append(diskID: "d1", sequence: UInt64(seq), payload: $0) }
            spool.syncAll()
            return r
        }
        var fileNames: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted() }
        func close() {
            spool.stop()
            try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent)
        }
    }

    @Test func aRecordDamagedAfterItWasDurableIsNotReadBack() throws {
        let f = try Fixture("spool-damage")
        defer { f.close() }
        let r1 = try f.append(1), r2 = try f.append(2), r3 = try f.append(3)
        // The storage changes one byte of record 2 after its fdatasync.
        let path = f.dir + "/" + f.fileNames.first { $0.hasSuffix(".log") }!
        let fd = open(path, O_RDWR)
        #expect(fd >= 0)
        var b: UInt8 = 0
        #expect(pread(fd, &b, 1, off_t(r2.location.offset + 100)) == 1)
        b ^= 0x04
        #expect(pwrite(fd, &b, 1, off_t(r2.location.offset + 100)) == 1)
        Glibc.close(fd)

        #expect(try f.spool.read(r1).count == 4096)
        #expect(try f.spool.read(r3).count == 4096)
        do {
            _ = try f.spool.read(r2)
            Issue.record("a damaged record was read back")
        } catch let e as TidemarkError {
            #expect(e.kind == .corrupt)
            #expect(e.message.contains("d1 #2 reads back damaged") && e.message.contains(path), "\(e.message)")
        }
    }

    @Test func aDamagedRecordHeaderIsNotReadBack() throws {
        let f = try Fixture("spool-header")
        defer { f.close() }
        let r1 = try f.append(1)
        let path = f.dir + "/" + f.fileNames.first { $0.hasSuffix(".log") }!
        let fd = open(path, O_RDWR)
        var b: UInt8 = 0xEE
        // The stored CRC (record header bytes 8..<12).
        #expect(pwrite(fd, &b, 1, off_t(r1.location.offset - 16 + 8)) == 1)
        Glibc.close(fd)
        #expect(throws: TidemarkError.self) { try f.spool.read(r1) }
    }

    @Test func appendWaitingForSpaceGivesUpWhenAbandoned() throws {
        let dir = try TestEnv.tempDir("spool-abandon") + "/spool"
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let (spool, _) = try Spool.open(directory: dir, maxBytes: 64 << 10) { b in ("d1", UInt64(b[0])) }
        defer { spool.stop() }
        let big = [UInt8](repeating: 1, count: 40 << 10)
        _ = try big.withUnsafeBytes { try spool.append(diskID: "d1", sequence: 1, payload: $0) }
        // The second does not fit; its connection is gone after a few waits.
        var asked = 0
        #expect(throws: TidemarkError.self) {
            try big.withUnsafeBytes { _ = try spool.append(diskID: "d1", sequence: 2, payload: $0, abandon: { asked += 1; return asked > 3 }) }
        }
        #expect(asked == 4)
    }
}
