import CTidemarkSystem
import Glibc

/// Files that hold secrets (the replication key, the TLS private keys of the
/// agent and the server): checked before anything reads them.
///
/// - Only a regular file is accepted. A FIFO, a directory, a device or a
///   socket is refused, with the reason, and without blocking: the path is
///   inspected with `stat` first, and opened with `O_NONBLOCK` (opening a
///   FIFO for reading otherwise waits for a writer forever), then checked
///   again with `fstat` on what was opened.
/// - Group and others must have no permission bits (mode 0600 or 0400):
///   anything else is refused with `chmod 600 FILE` as the hint.
/// - A symbolic link (the last component of the path) is followed when
///   `followSymlink` is true (the TLS keys: certificate tools keep keys
///   behind links) and its target is checked (a link's own mode means
///   nothing on Linux); the link itself must be owned by root or by the
///   user running the program, or anyone who owns it could point it
///   elsewhere. With `followSymlink` false (the replication key, which
///   `ReplicationKey.load` opens with O_NOFOLLOW) a link is refused.
public enum SecretFile {
    /// Checks `path` as a secret file; `what` names it in errors ("the
    /// replication key"), `origin` says where the path came from
    /// ("replication.key at /etc/tidemark/agent.yaml:7").
    public static func check(_ path: String, what: String, origin: String? = nil, followSymlink: Bool = true) throws {
        _ = try open(path, what: what, origin: origin, followSymlink: followSymlink)
    }

    /// Opens `path` for reading after the checks above; the descriptor is
    /// blocking again (a regular file never blocks anyway).
    public static func open(_ path: String, what: String, origin: String? = nil, followSymlink: Bool = true) throws -> FileDescriptor {
        let from = origin.map { " (\($0))" } ?? ""
        var link = Glibc.stat()
        if lstat(path, &link) != 0 {
            let e = Glibc.errno
            throw SystemError(call: "lstat", errno: e, context: "reading \(what) \(path)\(from)")
        }
        if link.st_mode & S_IFMT == S_IFLNK {
            let target = (try? linkTarget(path)) ?? "?"
            guard followSymlink else {
                throw TidemarkError(.invalidArgument, "\(what) \(path)\(from) is a symbolic link (to \(target)); it must be the file itself",
                                    hint: "configure the real file's path, or replace the link: install -m 0600 \(target) \(path)")
            }
            guard link.st_uid == 0 || link.st_uid == geteuid() else {
                throw TidemarkError(.invalidArgument, "\(what) \(path)\(from) is a symbolic link owned by uid \(link.st_uid), who could point it at another file",
                                    hint: "chown -h root \(path), or configure the real file's path (\(target))")
            }
        }
        var st = Glibc.stat()
        if stat(path, &st) != 0 {
            let e = Glibc.errno
            throw SystemError(call: "stat", errno: e, context: "reading \(what) \(path)\(from)")
        }
        try refuseUnlessSecret(st, path: path, what: what, from: from)
        let raw = tm_open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0)
        if raw < 0 { throw SystemError(call: "open", errno: -raw, context: "reading \(what) \(path)\(from)") }
        let fd = FileDescriptor(takingOwnershipOf: raw, path: path)
        // The path may have been replaced between stat and open.
        let opened = try fd.stat()
        try refuseUnlessSecret(opened, path: path, what: what, from: from)
        let flags = fcntl(raw, F_GETFL)
        if flags >= 0 { _ = fcntl(raw, F_SETFL, flags & ~O_NONBLOCK) }
        return fd
    }

    static func linkTarget(_ path: String) throws -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink(path, &buf, buf.count - 1)
        guard n >= 0 else { throw SystemError(call: "readlink", errno: Glibc.errno, context: "reading the link \(path)") }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func refuseUnlessSecret(_ st: Glibc.stat, path: String, what: String, from: String) throws {
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG else {
            throw TidemarkError(.invalidArgument, "\(what) \(path)\(from) is \(typeName(type)), not a regular file",
                                hint: "point it at the key file itself (a regular file of mode 0600)")
        }
        let mode = st.st_mode & 0o7777
        guard mode & 0o077 == 0 else {
            throw TidemarkError(.invalidArgument,
                                "\(what) \(path)\(from) is accessible by group or others (mode \(octal(mode))); a secret file must be readable by its owner alone",
                                hint: "chmod 600 \(path)")
        }
    }

    static func typeName(_ type: mode_t) -> String {
        switch type {
        case S_IFIFO: "a FIFO (named pipe)"
        case S_IFDIR: "a directory"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFSOCK: "a socket"
        case S_IFLNK: "a symbolic link"
        default: "not a regular file (type \(octal(type)))"
        }
    }

    static func octal(_ m: mode_t) -> String {
        let s = String(m, radix: 8)
        return s.count >= 4 ? s : String(repeating: "0", count: 4 - s.count) + s
    }
}
