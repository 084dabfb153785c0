import Glibc
import TidemarkSystem

/// An `ObjectStore` in a local directory: object `a/b/c` is the file
/// `<root>/a/b/c`, read-only (mode 0444), never rewritten.
///
/// A put writes the object to `<dir>/.tmp-<leaf>-<pid>-<random>` (created
/// with O_EXCL), fsyncs it, links it to its name (`link` fails with EEXIST
/// instead of replacing: create-once), removes the temporary name and
/// fsyncs the directory: a crash leaves at most a `.tmp-*` file, which is
/// never listed nor read as an object (`sweepLeftovers` removes old ones).
/// Content with a `padded` buffer is written with O_DIRECT from it (no copy
/// through the page cache), falling back to buffered writes where the file
/// system or device refuses (EINVAL). `putBatch` writes and fsyncs the
/// temporary files on several threads, links them in order and fsyncs each
/// directory once. Directories are created as needed, each fsynced into its
/// parent.
///
/// Thread- and process-safe: no state beyond the directory; concurrent
/// creators of one name are told apart by `link`. Memory: a listing reads
/// every name under its prefix for each page it returns (a directory of
/// segments: tens of bytes per name), so callers ask for large pages.
public final class LocalDirectoryObjectStore: ObjectStore, @unchecked Sendable {
    /// The directory, without a trailing "/".
    public let root: String
    /// Names of unfinished writes (`.tmp-` + the object's last component + …).
    public static let temporaryPrefix = ".tmp-"

    /// Opens the store in `root`, creating the directory (and its parents)
    /// when absent.
    public init(root: String) throws {
        guard !root.isEmpty, !root.utf8.contains(0) else {
            throw TidemarkError(.invalidArgument, "the object store directory '\(root)' is not a path", hint: "give the directory of the store")
        }
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        self.root = r
        var prefix = r.hasPrefix("/") ? "" : "."
        for part in r.split(separator: "/") {
            prefix += "/" + part
            try Self.makeDirectory(path: prefix)
        }
    }

    public func location(of name: String) -> String { root + "/" + name }

    /// The directory and last component of a (valid) name.
    private func split(_ name: String) -> (dir: String, leaf: String) {
        guard let slash = name.utf8.lastIndex(of: UInt8(ascii: "/")) else { return (root, name) }
        return (root + "/" + String(Substring(name.utf8[..<slash])), String(Substring(name.utf8[name.utf8.index(after: slash)...])))
    }

    private func checked(_ name: String) throws -> String {
        try ObjectName.validate(name, store: self)
        return location(of: name)
    }

    // MARK: Creating

    public func put(_ name: String, _ content: ObjectContent) throws {
        try ObjectName.validate(name, store: self)
        let (dir, leaf) = split(name)
        let tmp = try writeTemporary(dir: dir, leaf: leaf, content: content)
        guard try Self.publish(temporary: tmp, dir: dir, leaf: leaf) else { throw ObjectStoreError.exists(name, at: location(of: name)) }
        try Self.syncDirectory(dir)
    }

    /// docs/target-layout.md section 5 "Batches", steps 2–4: temporary files
    /// written and fsynced in parallel, linked in order, one fsync per
    /// directory (also of directories whose names existed already: whoever
    /// linked them may have died before its fsync).
    public func putBatch(_ puts: [ObjectPut], pool: WorkerPool?, existing: (Int) throws -> Void) -> ObjectBatchOutcome {
        var limit = puts.count
        var failure: (index: Int, error: any Error)?
        func fail(_ i: Int, _ e: any Error) {
            if i < limit {
                limit = i
                failure = (i, e)
            }
        }
        for (i, p) in puts.enumerated() {
            do { try ObjectName.validate(p.name, store: self) } catch {
                fail(i, error)
                break
            }
        }

        let temporaries = TemporaryFiles(count: limit)
        defer { temporaries.removeLeftovers() }
        let write = { [self] (i: Int) in
            let p = puts[i]
            do {
                let (dir, leaf) = split(p.name)
                var tmp: String?
                try p.withContent { content in tmp = try writeTemporary(dir: dir, leaf: leaf, content: content) }
                guard let tmp else {
                    throw ObjectStoreError(.notFound, name: p.name, "\(location(of: p.name)): the put handed over no content")
                }
                temporaries.set(i, .success(tmp))
            } catch {
                temporaries.set(i, .failure(error))
            }
        }
        let written = limit
        if let pool { pool.run(count: written, write) } else { for i in 0..<written { write(i) } }
        for i in 0..<written {
            if case .failure(let e)? = temporaries.result(i) {
                fail(i, e)
                break
            }
        }

        var linked: [Int] = []
        for i in 0..<limit {
            let (dir, leaf) = split(puts[i].name)
            do {
                guard let tmp = temporaries.take(i) else { continue }
                if try Self.publish(temporary: tmp, dir: dir, leaf: leaf) {
                    linked.append(i)
                } else {
                    try existing(i)
                }
            } catch {
                fail(i, error)
                break
            }
        }

        var dirs: [String] = []
        for p in puts.prefix(limit) where !dirs.contains(split(p.name).dir) { dirs.append(split(p.name).dir) }
        for dir in dirs {
            do {
                try Self.syncDirectory(dir)
            } catch {
                return ObjectBatchOutcome(durable: 0, failure: (0, error), visibleNotDurable: linked)
            }
        }
        return ObjectBatchOutcome(durable: limit, failure: failure, visibleNotDurable: [])
    }

    /// Writes `content` to a new temporary file in `dir` (created, with its
    /// parents, when missing) and fsyncs it. Returns its path; on failure
    /// nothing is left behind.
    func writeTemporary(dir: String, leaf: String, content: ObjectContent) throws -> String {
        do {
            return try writeTemporaryIn(dir: dir, leaf: leaf, content: content)
        } catch let e as SystemError where e.call == "open" && e.errno == ENOENT {
            try makeDirectories(dir)
            return try writeTemporaryIn(dir: dir, leaf: leaf, content: content)
        }
    }

    private func writeTemporaryIn(dir: String, leaf: String, content: ObjectContent) throws -> String {
        let tmp = Self.temporaryPath(dir: dir, leaf: leaf)
        let flags: FileDescriptor.Flags = [.writeOnly, .create, .exclusive, .noFollow]
        do {
            guard let padded = content.padded, padded.count > 0 else {
                let fd = try FileDescriptor(open: tmp, flags, mode: 0o444, purpose: "creating a temporary object")
                if content.head.count > 0 { try fd.write(content.head, at: 0) }
                if content.tail.count > 0 { try fd.write(content.tail, at: UInt64(content.head.count)) }
                try fd.sync()
                return tmp
            }
            let length = content.count
            let object = UnsafeRawBufferPointer(rebasing: padded[0..<length])
            var fd: FileDescriptor
            do {
                fd = try FileDescriptor(open: tmp, flags.union(.direct), mode: 0o444, purpose: "creating a temporary object")
                do {
                    try fd.write(padded, at: 0)
                    try fd.truncate(to: UInt64(length))
                } catch let e as SystemError where e.errno == EINVAL {
                    // Direct I/O refused at this alignment: the same descriptor, buffered.
                    try fd.setDirect(false)
                    try fd.write(object, at: 0)
                    try fd.truncate(to: UInt64(length))
                }
            } catch let e as SystemError where e.errno == EINVAL {
                // A file system without direct I/O refuses the open after
                // creating the file: start over without O_DIRECT.
                _ = unlink(tmp)
                fd = try FileDescriptor(open: tmp, flags, mode: 0o444, purpose: "creating a temporary object")
                try fd.write(object, at: 0)
            }
            try fd.sync()
        } catch {
            _ = unlink(tmp)
            throw error
        }
        return tmp
    }

    private static func temporaryPath(dir: String, leaf: String) -> String {
        // The leaf keeps a leftover recognisable; a long one is left out so
        // the temporary name stays within a file name's 255 bytes.
        let shown = leaf.utf8.count <= 200 ? leaf : "object"
        return dir + "/" + temporaryPrefix + shown + "-\(getpid())-\(UInt64.random(in: 0...UInt64.max) & 0xffff_ffff_ffff)"
    }

    /// Links a complete, fsynced temporary file to `dir/leaf` and removes
    /// the temporary name. Returns false when `dir/leaf` exists already (it
    /// is not replaced). The new name is durable once `dir` is fsynced.
    static func publish(temporary tmp: String, dir: String, leaf: String) throws -> Bool {
        let final = dir + "/" + leaf
        // link() fails with EEXIST instead of replacing: the first complete
        // object wins and is never rewritten (rename would overwrite).
        let r = link(tmp, final)
        let e = errno
        _ = unlink(tmp)
        if r != 0 {
            if e == EEXIST { return false }
            throw SystemError(call: "link", errno: e, context: "publishing object \(final)")
        }
        return true
    }

    static func syncDirectory(_ dir: String) throws {
        let fd = try FileDescriptor(open: dir, .readOnly, purpose: "opening directory to flush it")
        try fd.sync()
    }

    /// mkdir that tolerates an existing directory; flushes the parent when
    /// it created one.
    static func makeDirectory(path: String) throws {
        if mkdir(path, 0o755) == 0 {
            try syncDirectory(parent(of: path))
            return
        }
        let e = errno
        if e == EEXIST {
            var st = Glibc.stat()
            if statPath(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { return }
            throw TidemarkError(.state, "\(path) exists and is not a directory", hint: "move it away; the store needs a directory there")
        }
        throw SystemError(call: "mkdir", errno: e, context: "creating directory \(path)")
    }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// The directories from the root down to `dir` (a path under the root).
    private func makeDirectories(_ dir: String) throws {
        guard dir.count > root.count else { return }
        var path = root
        for part in dir.dropFirst(root.count + 1).split(separator: "/") {
            path += "/" + part
            try Self.makeDirectory(path: path)
        }
    }

    public func makeDirectory(_ prefix: String) throws {
        var name = prefix
        while name.hasSuffix("/") { name.removeLast() }
        try ObjectName.validate(name, store: self)
        try makeDirectories(location(of: name))
    }

    // MARK: Reading

    public func stat(_ name: String) throws -> ObjectInfo? {
        let path = try checked(name)
        var st = Glibc.stat()
        if statPath(path, &st) != 0 {
            let e = errno
            if e == ENOENT || e == ENOTDIR { return nil }
            throw SystemError(call: "stat", errno: e, context: "inspecting \(path)")
        }
        if st.st_mode & S_IFMT == S_IFDIR { return nil }
        return ObjectInfo(size: UInt64(st.st_size))
    }

    /// Opens an object for reading, with its size; nil when absent.
    private func open(_ name: String) throws -> (FileDescriptor, UInt64)? {
        let path = try checked(name)
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor(open: path, [.readOnly, .noFollow], purpose: "reading object")
        } catch let e as SystemError where e.errno == ENOENT || e.errno == ENOTDIR {
            return nil
        }
        let st = try fd.stat()
        if st.st_mode & S_IFMT == S_IFDIR { return nil }
        return (fd, UInt64(st.st_size))
    }

    public func read(_ name: String, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(UInt64(buffer.count) >= range.count, "read: a \(buffer.count)-byte buffer for \(range.count) bytes")
        guard let (fd, size) = try open(name) else { throw ObjectStoreError.notFound(name, at: location(of: name)) }
        guard range.upperBound <= size else { throw ObjectStoreError.outOfRange(name, at: location(of: name), range: range, size: size) }
        guard range.count > 0 else { return }
        let n = try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(range.count)]), at: range.lowerBound)
        guard n == Int(range.count) else {
            // Shorter than its size said a moment ago: it was cut while being read.
            throw ObjectStoreError.outOfRange(name, at: location(of: name), range: range, size: range.lowerBound + UInt64(n))
        }
    }

    public func get(_ name: String) throws -> [UInt8] {
        guard let (fd, size) = try open(name) else { throw ObjectStoreError.notFound(name, at: location(of: name)) }
        let length = Int(size)
        // Uninitialized: zeroing first would be one more pass over every byte.
        return try [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            count = length > 0 ? try fd.read(into: UnsafeMutableRawBufferPointer(buffer), at: 0) : 0
        }
    }

    // MARK: Listing

    public func list(prefix: String, startAfter: String?, limit: Int, delimited: Bool) throws -> ObjectListing {
        precondition(limit >= 1, "list: a page holds at least one name")
        guard ObjectName.prefixCanMatch(prefix) else { return ObjectListing(names: [], isTruncated: false) }
        var names: [String] = []
        try walk(prefix: prefix, recursive: !delimited) { namePrefix, entry, isDirectory, _ in
            if isDirectory {
                if delimited { names.append(namePrefix + entry + "/") }
            } else {
                names.append(namePrefix + entry)
            }
        }
        if let startAfter { names.removeAll { !ObjectName.precedes(startAfter, $0) } }
        names.sort(by: ObjectName.precedes)
        let truncated = names.count > limit
        if truncated { names.removeLast(names.count - limit) }
        return ObjectListing(names: names, isTruncated: truncated)
    }

    /// Visits the entries of the directories `prefix` reaches: those of its
    /// directory part whose names start with its last component, and with
    /// `recursive` every entry below the directories among them.
    /// `visit(name prefix, entry, is a directory, directory path)` sees the
    /// store's entries only (never a name starting with "."); `visitDirectory`
    /// each directory read.
    private func walk(prefix: String, recursive: Bool, hidden: Bool = false,
                      visitDirectory: (String) throws -> Void = { _ in },
                      _ visit: (String, String, Bool, String) throws -> Void) throws {
        let slash = prefix.utf8.lastIndex(of: UInt8(ascii: "/"))
        let dirPart = slash.map { String(Substring(prefix.utf8[..<$0])) } ?? ""
        let leafPrefix = slash.map { String(Substring(prefix.utf8[prefix.utf8.index(after: $0)...])) } ?? prefix
        let base = dirPart.isEmpty ? root : root + "/" + dirPart
        func go(_ dir: String, _ namePrefix: String, _ top: Bool) throws {
            guard let entries = try Self.entries(dir) else { return }
            try visitDirectory(dir)
            for (entry, isDirectory) in entries {
                if top && !entry.utf8.starts(with: leafPrefix.utf8) { continue }
                if entry.hasPrefix(".") {
                    if hidden { try visit(namePrefix, entry, isDirectory, dir) }
                    continue
                }
                if hidden {
                    if isDirectory && recursive { try go(dir + "/" + entry, namePrefix + entry + "/", false) }
                    continue
                }
                try visit(namePrefix, entry, isDirectory, dir)
                if isDirectory && recursive { try go(dir + "/" + entry, namePrefix + entry + "/", false) }
            }
        }
        try go(base, dirPart.isEmpty ? "" : dirPart + "/", true)
    }

    /// The entries of a directory (without "." and ".."), each with whether
    /// it is a directory; nil when the directory does not exist.
    static func entries(_ dir: String) throws -> [(String, Bool)]? {
        guard let d = opendir(dir) else {
            let e = errno
            if e == ENOENT || e == ENOTDIR { return nil }
            throw SystemError(call: "opendir", errno: e, context: "listing \(dir)")
        }
        defer { closedir(d) }
        var out: [(String, Bool)] = []
        while true {
            errno = 0
            guard let ent = readdir(d) else {
                if errno != 0 { throw SystemError(call: "readdir", errno: errno, context: "listing \(dir)") }
                break
            }
            let name = withUnsafePointer(to: ent.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            var isDirectory = ent.pointee.d_type == UInt8(DT_DIR)
            if ent.pointee.d_type == UInt8(DT_UNKNOWN) {
                var st = Glibc.stat()
                isDirectory = lstat(dir + "/" + name, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
            }
            out.append((name, isDirectory))
        }
        return out
    }

    /// Every entry of the root directory, the store's own files included:
    /// to tell whether a directory is in use by something else.
    public func rootEntries() throws -> [String] {
        try Self.entries(root)?.map(\.0) ?? []
    }

    // MARK: Deleting, durability, leftovers

    public func delete(_ name: String) throws {
        try delete([name])
    }

    /// Unlinks every name, then fsyncs each directory that lost one, once.
    public func delete(_ names: [String]) throws {
        var dirs: [String] = []
        for name in names {
            let path = try checked(name)
            if unlink(path) != 0 {
                let e = errno
                // A directory is not an object: there is no object to delete.
                if e == ENOENT || e == ENOTDIR || e == EISDIR { continue }
                throw SystemError(call: "unlink", errno: e, context: "removing \(path)")
            }
            let dir = split(name).dir
            if !dirs.contains(dir) { dirs.append(dir) }
        }
        for dir in dirs { try Self.syncDirectory(dir) }
    }

    /// Fsyncs the directories holding names under `prefix`.
    public func syncNames(prefix: String) throws {
        guard ObjectName.prefixCanMatch(prefix) else { return }
        var dirs: [String] = []
        try walk(prefix: prefix, recursive: true, visitDirectory: { dirs.append($0) }) { _, _, _, _ in }
        for dir in dirs { try Self.syncDirectory(dir) }
    }

    /// Removes `.tmp-*` files older than `olderThanSeconds` in the
    /// directories under `prefix`.
    public func sweepLeftovers(prefix: String, olderThanSeconds: Int) throws {
        guard ObjectName.prefixCanMatch(prefix) else { return }
        let cutoff = time(nil) - olderThanSeconds
        try walk(prefix: prefix, recursive: true, hidden: true) { _, entry, isDirectory, dir in
            guard !isDirectory, entry.hasPrefix(Self.temporaryPrefix) else { return }
            var st = Glibc.stat()
            if lstat(dir + "/" + entry, &st) == 0, st.st_mtim.tv_sec < cutoff {
                _ = unlink(dir + "/" + entry)
            }
        }
    }
}

/// The temporary files of one `putBatch`: written on several threads, then
/// linked in order; whatever was not handed to `take` is removed at the end.
final class TemporaryFiles: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var results: [Result<String, any Error>?]

    init(count: Int) {
        results = Array(repeating: nil, count: count)
        pthread_mutex_init(&mutex, nil)
    }

    deinit { pthread_mutex_destroy(&mutex) }

    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return body()
    }

    func set(_ i: Int, _ r: Result<String, any Error>) { locked { results[i] = r } }
    func result(_ i: Int) -> Result<String, any Error>? { locked { results[i] } }

    /// The temporary path of put `i`, which the caller now owns (publish removes it).
    func take(_ i: Int) -> String? {
        locked {
            guard case .success(let path)? = results[i] else { return nil }
            results[i] = nil
            return path
        }
    }

    func removeLeftovers() {
        locked {
            for case .success(let path)? in results { _ = unlink(path) }
            results = results.map { _ in nil }
        }
    }
}

/// stat(2) (the store's own `stat` method hides the C function's name there).
private func statPath(_ path: String, _ st: inout Glibc.stat) -> Int32 {
    stat(path, &st)
}
