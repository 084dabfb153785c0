import Glibc

// Path and stream calls for the modules above TidemarkSystem: each goes
// through `syscall` (errno read at once, EINTR retried, the rest thrown as
// a `SystemError` naming the call and what it was for), so no code outside
// TidemarkSystem and the shim modules reads `errno`. Callers that treat one
// errno as an answer (ENOENT: absent; EEXIST: already there) get that
// answer as a return value; they match others on the thrown error's
// `errno`.

/// `stat` (or `lstat` when `followSymlink` is false) of `path`.
public func fileStatus(_ path: String, followSymlink: Bool = true, purpose: String = "inspecting") throws -> stat {
    var st = stat()
    _ = try syscall(followSymlink ? "stat" : "lstat", "\(purpose) \(path)") {
        followSymlink ? stat(path, &st) : lstat(path, &st)
    }
    return st
}

/// As `fileStatus`, or nil when `path` does not exist (ENOENT).
public func fileStatusIfPresent(_ path: String, followSymlink: Bool = true, purpose: String = "inspecting") throws -> stat? {
    do {
        return try fileStatus(path, followSymlink: followSymlink, purpose: purpose)
    } catch let e as SystemError where e.errno == ENOENT {
        return nil
    }
}

/// Removes a name; false when it did not exist (ENOENT).
@discardableResult
public func removeFile(_ path: String, purpose: String = "removing") throws -> Bool {
    do {
        _ = try syscall("unlink", "\(purpose) \(path)") { Glibc.unlink(path) }
        return true
    } catch let e as SystemError where e.errno == ENOENT {
        return false
    }
}

/// Renames `from` to `to`, replacing `to`.
public func renameFile(_ from: String, to: String, purpose: String = "renaming") throws {
    _ = try syscall("rename", "\(purpose) \(from) to \(to)") { Glibc.rename(from, to) }
}

/// Links `from` as `to`; false when `to` exists already (EEXIST), which
/// is never replaced.
public func linkFile(_ from: String, to: String, purpose: String = "linking") throws -> Bool {
    do {
        _ = try syscall("link", "\(purpose) \(to)") { Glibc.link(from, to) }
        return true
    } catch let e as SystemError where e.errno == EEXIST {
        return false
    }
}

/// Makes one directory; false when the name exists already (EEXIST),
/// whatever it is.
public func makeDirectory(_ path: String, mode: mode_t = 0o755, purpose: String = "creating the directory") throws -> Bool {
    do {
        _ = try syscall("mkdir", "\(purpose) \(path)") { Glibc.mkdir(path, mode) }
        return true
    } catch let e as SystemError where e.errno == EEXIST {
        return false
    }
}

/// Throws unless `path` is accessible with `mode` (`W_OK`, `R_OK`, …);
/// the error's errno says why (EROFS, EACCES, ENOENT).
public func checkAccess(_ path: String, _ mode: Int32, purpose: String = "checking access to") throws {
    _ = try syscall("access", "\(purpose) \(path)") { Glibc.access(path, mode) }
}

/// The names in a directory without "." and ".."; nil when it does not
/// exist (ENOENT). A failing read of the directory throws.
public func directoryEntries(_ dir: String, purpose: String = "listing") throws -> [String]? {
    guard let d = Glibc.opendir(dir) else {
        let e = Glibc.errno
        if e == ENOENT { return nil }
        throw SystemError(call: "opendir", errno: e, context: "\(purpose) \(dir)")
    }
    defer { Glibc.closedir(d) }
    var names = [String]()
    while true {
        Glibc.errno = 0
        guard let ent = Glibc.readdir(d) else {
            let e = Glibc.errno
            if e != 0 { throw SystemError(call: "readdir", errno: e, context: "\(purpose) \(dir)") }
            return names
        }
        let name = withUnsafePointer(to: ent.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." { names.append(name) }
    }
}

/// Writes all of `bytes` to a descriptor (a socket: with MSG_NOSIGNAL, so
/// a closed peer is an EPIPE error, not a signal), retrying short writes.
public func sendAll(_ fd: Int32, _ bytes: some Collection<UInt8>, purpose: String) throws {
    var rest = Array(bytes)[...]
    while !rest.isEmpty {
        let n = try rest.withUnsafeBytes { b in
            try syscall("send", purpose) { Glibc.send(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL)) }
        }
        guard n > 0 else { throw SystemError(call: "send", errno: EPIPE, context: purpose) }
        rest = rest.dropFirst(n)
    }
}

/// Writes all of `text` to a descriptor (standard output or error),
/// retrying short writes and EINTR. Any other error ends the output: there
/// is nowhere left to report it.
public func writeAll(_ fd: Int32, _ text: String) {
    // Not through `syscall`: a closed standard output (EBADF) ends the
    // output here rather than stopping the process.
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if n < 0 && Glibc.errno == EINTR { continue }
        if n <= 0 { return }
        bytes = bytes.dropFirst(n)
    }
}
