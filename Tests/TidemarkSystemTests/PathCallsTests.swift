import Foundation
import Glibc
import Testing
import TidemarkSystem
import TidemarkTesting

@Suite struct PathCallsTests {
    /// The errno that is an answer comes back as a value (absent, already
    /// there); any other failure is a SystemError with its errno and path.
    @Test func answersAndErrors() throws {
        let dir = try TestEnv.tempDir("pathcalls")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = dir + "/a", b = dir + "/b", sub = dir + "/d"
        #expect(try fileStatusIfPresent(a) == nil)
        #expect(try removeFile(a) == false)
        _ = try FileDescriptor(open: a, [.writeOnly, .create], mode: 0o600)
        #expect(try fileStatus(a).st_mode & S_IFMT == S_IFREG)
        #expect(try linkFile(a, to: b))
        #expect(try linkFile(a, to: b) == false, "an existing name is never replaced")
        #expect(try makeDirectory(sub))
        #expect(try makeDirectory(sub) == false)
        #expect(try directoryEntries(dir)?.sorted() == ["a", "b", "d"])
        #expect(try directoryEntries(dir + "/none") == nil)
        try renameFile(b, to: sub + "/c")
        #expect(try fileStatusIfPresent(b) == nil)
        #expect(try removeFile(sub + "/c"))
        try checkAccess(a, R_OK)
        do {
            _ = try fileStatus(a + "/x", purpose: "inspecting the test path")
            Issue.record("stat through a regular file succeeded")
        } catch let e as SystemError {
            #expect(e.errno == ENOTDIR)
            #expect(e.context == "inspecting the test path \(a)/x")
        }
        #expect(throws: SystemError.self) { try removeFile(sub) }
    }
}
