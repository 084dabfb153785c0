import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct SmallFileTests {
    func write(_ bytes: [UInt8], to path: String) throws {
        let fd = try FileDescriptor(open: path, [.readWrite, .create], mode: 0o600)
        try bytes.withUnsafeBytes { try fd.write($0, at: 0) }
    }

    /// A file is read whole, across the growth of the buffer past its first
    /// page, and exactly at its bound; one byte over the bound is refused
    /// with an error naming the path and the bound.
    @Test func readsWholeFilesUpToTheBound() throws {
        let dir = try TestEnv.tempDir("smallfile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/f"
        let content = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try write(content, to: path)
        #expect(try SmallFile.read(path, bytesMax: 10_000) == content)
        #expect(try SmallFile.read(path, bytesMax: 1 << 20) == content)
        do {
            _ = try SmallFile.read(path, bytesMax: 9_999, purpose: "reading the test file")
            Issue.record("a file over its bound was read")
        } catch let e as TidemarkError {
            #expect(e.kind == .invalidArgument)
            #expect(e.message == "reading the test file \(path): the file is longer than 9999 bytes, the most it can be")
        }
        // An empty file is empty, not absent.
        try write([], to: dir + "/empty")
        #expect(try SmallFile.read(dir + "/empty", bytesMax: 1) == [])
    }

    /// Absence is nil for the `IfPresent` and `attribute` forms, and an
    /// ENOENT `SystemError` for `read`.
    @Test func aMissingFile() throws {
        let dir = try TestEnv.tempDir("smallfile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(try SmallFile.readIfPresent(dir + "/missing", bytesMax: 16) == nil)
        #expect(SmallFile.attribute(dir + "/missing") == nil)
        #expect(SmallFile.textIfReadable(dir + "/missing") == nil)
        do {
            _ = try SmallFile.read(dir + "/missing", bytesMax: 16)
            Issue.record("a missing file was read")
        } catch let e as SystemError {
            #expect(e.errno == ENOENT)
        }
    }

    /// An attribute is trimmed; a procfs file (size 0 in stat) is read to
    /// its end.
    @Test func attributesAndProcfs() throws {
        let dir = try TestEnv.tempDir("smallfile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write(Array(" 259:0\n".utf8), to: dir + "/dev")
        #expect(SmallFile.attribute(dir + "/dev") == "259:0")
        let mounts = try SmallFile.readText("/proc/self/mountinfo", bytesMax: 64 << 20)
        #expect(mounts.contains(" / "), "the root mount is listed")
        #expect(mounts.hasSuffix("\n"), "read to the end of the file")
    }

    /// An open descriptor is read from its position to its end.
    @Test func readsAnOpenDescriptor() throws {
        let dir = try TestEnv.tempDir("smallfile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write([1, 2, 3, 4], to: dir + "/k")
        let fd = try FileDescriptor(open: dir + "/k", .readOnly)
        #expect(try SmallFile.read(fd, path: dir + "/k", bytesMax: 4) == [1, 2, 3, 4])
        #expect(try SmallFile.read(fd, path: dir + "/k", bytesMax: 4) == [], "at its end")
    }
}
