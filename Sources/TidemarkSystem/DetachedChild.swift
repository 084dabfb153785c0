import CTidemarkSystem
import Glibc

/// A helper process in its own session, talking to its parent over a socket
/// pair that is its standard input (see `tm_spawn_session_with_socket`): it
/// sees end-of-file there when the parent is gone, however it died, and a
/// signal to the parent's process group does not reach it.
public enum DetachedChild {
    /// Starts `path` with `arguments` (`arguments[0]` is its argv[0]);
    /// returns its pid and the parent's end of the socket (close-on-exec).
    public static func spawn(path: String, arguments: [String]) throws -> (pid: pid_t, socket: FileDescriptor) {
        var cArgs: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) }
        cArgs.append(nil)
        defer { for p in cArgs { free(p) } }
        var pid: Int32 = 0
        var sock: Int32 = -1
        let r = tm_spawn_session_with_socket(path, cArgs, &pid, &sock)
        if r < 0 { throw SystemError(call: "posix_spawn", errno: -r, context: "starting \(arguments.joined(separator: " ")) (\(path))") }
        return (pid, FileDescriptor(takingOwnershipOf: sock, path: "socket of \(arguments.joined(separator: " "))"))
    }
}

extension FileDescriptor {
    /// FITHAW that says whether the filesystem was frozen: false when the
    /// kernel answers EINVAL (it was not frozen: already thawed).
    public func thawIfFrozen() throws -> Bool {
        let r = tm_fs_thaw(rawValue)
        if r == 0 { return true }
        if -r == EINVAL { return false }
        throw SystemError(call: "ioctl(FITHAW)", errno: -r, context: "thawing the filesystem at \(path)")
    }
}
