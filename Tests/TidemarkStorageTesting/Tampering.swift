import Foundation
import Glibc
import TidemarkStorage

/// A store whose objects a test can damage behind the create-once rule, as
/// damage on storage or someone with write access would: corruption tests
/// run through it the same way over every store.
public protocol TamperableObjectStore: ObjectStore {
    /// Replaces (or creates) object `name` with `bytes`; nil removes it.
    func tamper(_ name: String, _ bytes: [UInt8]?) throws
    /// Equal for the same object (not deleted and created again, nor
    /// tampered with, in between); nil when there is none.
    func identity(of name: String) -> String?
}

extension InMemoryObjectStore: TamperableObjectStore {
    public func identity(of name: String) -> String? {
        creationNumber(of: name).map { "creation \($0)" }
    }
}

extension LocalDirectoryObjectStore: TamperableObjectStore {
    /// Rewrites the file in place (objects are read-only; tests run as root
    /// or as the owner, who may change the mode).
    public func tamper(_ name: String, _ bytes: [UInt8]?) throws {
        let path = location(of: name)
        guard let bytes else {
            try? FileManager.default.removeItem(atPath: path)
            return
        }
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        chmod(path, 0o644)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    /// Inode and modification time: equal means not rewritten.
    public func identity(of name: String) -> String? {
        var st = Glibc.stat()
        guard Glibc.lstat(location(of: name), &st) == 0 else { return nil }
        return "\(st.st_ino)@\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }
}
