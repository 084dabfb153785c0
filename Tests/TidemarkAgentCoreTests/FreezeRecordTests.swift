import Foundation
import Glibc
import Testing
import TidemarkSystem
@testable import TidemarkAgentCore

/// The freeze record: what the agent is about to freeze, durable before
/// FIFREEZE, locked while the agent lives; what `thaw-leftovers` reads.
@Suite struct FreezeRecordTests {
    private func tempDir() throws -> String {
        let path = NSTemporaryDirectory() + "/tidemark-freeze-record-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @Test func aRecordListsItsMountsAndIsRemoved() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let mounts = [MountedFilesystem(mountPoint: "/srv/data one", fsType: "ext4", device: "7:3"),
                      MountedFilesystem(mountPoint: "/var/lib/db", fsType: "xfs", device: "259:2")]
        let r = try FreezeRecord.write(mounts, id: "123-1", directory: dir)
        #expect(r.path == dir + "/frozen-123-1.mounts")
        #expect(FreezeRecord.list(directory: dir) == [r.path])
        let text = try String(contentsOfFile: r.path, encoding: .utf8)
        #expect(text.hasPrefix(FreezeRecord.header))
        let parsed = FreezeRecord.parse(text)
        #expect(parsed.map(\.device) == ["7:3", "259:2"])
        #expect(parsed.map(\.mountPoint) == ["/srv/data one", "/var/lib/db"])
        var st = stat()
        #expect(stat(r.path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        // No temporary file is left beside it.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["frozen-123-1.mounts"])
        r.remove()
        #expect(FreezeRecord.list(directory: dir).isEmpty)
    }

    /// A record whose agent still runs (it holds the lock) is left alone.
    @Test func aLockedRecordIsLeftAlone() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try FreezeRecord.write([MountedFilesystem(mountPoint: dir, fsType: "tmpfs", device: "0:0")], id: "9-1", directory: dir)
        let lines = FreezeRecord.thawLeftovers(directory: dir)
        #expect(lines.count == 1 && lines[0].contains("held by a running agent"), "\(lines)")
        #expect(FreezeRecord.list(directory: dir) == [r.path])
        r.remove()
    }

    /// A leftover record (nobody holds it) is read and removed; a mount
    /// point that is now another filesystem is not touched.
    @Test func aLeftoverRecordIsConsumedAndAStaleMountIsNotTouched() throws {
        let dir = try tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/frozen-4242-7.mounts"
        try "\(FreezeRecord.header) pid 4242\n0:0\t\(dir)\n".write(toFile: path, atomically: false, encoding: .utf8)
        let lines = FreezeRecord.thawLeftovers(directory: dir)
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.contains("\(dir) is no longer the filesystem 0:0 that was frozen") == true, "\(lines)")
        #expect(FreezeRecord.list(directory: dir).isEmpty)
        // A second run has nothing to do.
        #expect(FreezeRecord.thawLeftovers(directory: dir).isEmpty)
        // An incomplete record (the agent died before the rename, so before
        // freezing anything) is removed without a word.
        let temp = dir + "/.tmp-frozen-4242-8.mounts"
        try "\(FreezeRecord.header) pid 4242\n".write(toFile: temp, atomically: false, encoding: .utf8)
        #expect(FreezeRecord.thawLeftovers(directory: dir).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: temp))
    }

    @Test func deviceNamesAreMajorColonMinor() {
        #expect(FreezeRecord.deviceName(dev_t((7 << 8) | 3)) == "7:3")
        // 259:2 (NVMe partitions): the major above 255 and the new encoding.
        let dev = (UInt64(259 & 0xfff) << 8) | UInt64(2 & 0xff)
        #expect(FreezeRecord.deviceName(dev_t(dev)) == "259:2")
        let big = (UInt64(1000 & 0xff) | (UInt64(1000 & ~0xff) << 12)) | (UInt64(8) << 8)
        #expect(FreezeRecord.deviceName(dev_t(big)) == "8:1000")
    }
}
