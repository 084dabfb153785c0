import TidemarkSystem

/// A flat store of immutable, named objects: what target storage needs of a
/// backend, and nothing of Tidemark's layout. Conformers: a local directory
/// (`LocalDirectoryObjectStore`), memory (`InMemoryObjectStore`, for tests
/// and the simulation), and later S3. The conformance suite
/// (Tests/TidemarkStorageTesting) checks every rule below.
///
/// **Names** (`ObjectName`): 1 to 1024 bytes of UTF-8, components separated
/// by "/", each component 1 to 255 bytes, without NUL, and not starting
/// with "." (such names are the store's own, e.g. the local store's
/// unfinished writes, and are never listed). Names sort by their UTF-8
/// bytes.
///
/// **Objects are created once.** `put` fails with `ObjectStoreError.exists`
/// when the name exists and changes nothing; nothing ever rewrites an
/// object (deleting and creating it again is the only way to change one).
/// A put is atomic: a reader sees no object or the whole object under its
/// name, never part of it, and a crash leaves no visible partial object.
///
/// **Durability.** When `put` returns, the object and its name are on
/// stable storage. A store may make a name visible (to `stat`, `get`,
/// `list`) shortly before that, while `put` is still running (the local
/// store links the name, then flushes the directory): a crash can then lose
/// that name again, never leaving part of an object. A caller that must not
/// count a name before it is durable waits for its `put` (or batch) to
/// return; `syncNames` makes durable the names another process may have
/// published just before it died. `putBatch` stores many objects with one
/// durability barrier per batch instead of one per object: this is what
/// makes storing segments fast on a local directory (many fsyncs in
/// parallel, one directory flush per batch).
///
/// **Deletion is idempotent**: deleting a missing name succeeds. A delete is
/// durable on return.
///
/// **Reads** return exactly what was put. `stat` and `get` of a missing name
/// say so (nil, or `ObjectStoreError.notFound`); a byte range beyond the end
/// of the object is `ObjectStoreError.outOfRange`.
///
/// Thread-safe: every method may be called from any thread at any time.
public protocol ObjectStore: AnyObject, Sendable {
    /// Where `name` is, for messages a person reads: a file path for the
    /// local store.
    func location(of name: String) -> String

    /// Creates object `name` holding `content`; durable on return. Throws
    /// `ObjectStoreError.exists` (and changes nothing) when the name exists.
    func put(_ name: String, _ content: ObjectContent) throws

    /// Creates the objects of `puts`, in their order, stopping at the first
    /// that fails. A name that exists already is handed to `existing` (its
    /// index) before any later name is created; `existing` throwing stops
    /// the batch there. Returns which puts, from the first, are durable
    /// (created, or existing and accepted: an existing name is made durable
    /// too, since whoever created it may have died before it was). Content
    /// may be asked for on several threads at once (`pool`'s and the
    /// caller's). The default stores the puts one at a time with `put`.
    func putBatch(_ puts: [ObjectPut], pool: WorkerPool?, existing: (Int) throws -> Void) -> ObjectBatchOutcome

    /// The object's size and such, nil when there is no object of that name.
    func stat(_ name: String) throws -> ObjectInfo?

    /// Reads bytes `range` of object `name` into `buffer` (which holds at
    /// least `range.count` bytes): all of them, or it throws
    /// `ObjectStoreError.notFound` or `.outOfRange` (nothing is read short).
    func read(_ name: String, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws

    /// The whole object. Throws `ObjectStoreError.notFound`. The default
    /// reads `stat`'s size with `read`.
    func get(_ name: String) throws -> [UInt8]

    /// Names starting with `prefix` that sort after `startAfter` (every one
    /// when nil), in byte order, at most `limit` (≥ 1) of them: one page. A
    /// page with `isTruncated` false is the last; the next page starts after
    /// the last name of this one.
    ///
    /// With `delimited`, names that go on past the next "/" after `prefix`
    /// are listed once, as their common prefix up to and including that
    /// "/" (a "directory", as S3's delimiter lists them); such a prefix is
    /// compared with `startAfter` as it is. A store that keeps real
    /// directories (the local store) may list one that holds no object.
    func list(prefix: String, startAfter: String?, limit: Int, delimited: Bool) throws -> ObjectListing

    /// Deletes object `name` durably; a missing name is not an error.
    func delete(_ name: String) throws

    /// Deletes several objects; durable on return (one barrier for all
    /// where the store can). The default deletes them one at a time.
    func delete(_ names: [String]) throws

    /// Makes durable every name under `prefix` visible now (published by a
    /// process that may have died before its put returned). The default does
    /// nothing: for stores that publish a name only once it is durable.
    func syncNames(prefix: String) throws

    /// Creates the directory `prefix` (ending in "/") durably in a store
    /// that keeps directories (the local store); a no-op in others. Objects
    /// need no such call (`put` creates what it needs): a layout uses it
    /// only to keep an empty directory in place.
    func makeDirectory(_ prefix: String) throws

    /// Removes what crashed writers left under `prefix` (never visible as
    /// objects) once older than `olderThanSeconds`. The default does nothing.
    func sweepLeftovers(prefix: String, olderThanSeconds: Int) throws
}

extension ObjectStore {
    public func putBatch(_ puts: [ObjectPut], pool: WorkerPool?, existing: (Int) throws -> Void) -> ObjectBatchOutcome {
        for (i, p) in puts.enumerated() {
            do {
                do {
                    try p.withContent { try put(p.name, $0) }
                } catch let e as ObjectStoreError where e.kind == .exists {
                    try existing(i)
                }
            } catch {
                return ObjectBatchOutcome(durable: i, failure: (i, error), visibleNotDurable: [])
            }
        }
        return ObjectBatchOutcome(durable: puts.count, failure: nil, visibleNotDurable: [])
    }

    public func get(_ name: String) throws -> [UInt8] {
        guard let info = try stat(name) else { throw ObjectStoreError.notFound(name, at: location(of: name)) }
        return try get(name, range: 0..<info.size)
    }

    /// Bytes `range` of object `name` (see `read`).
    public func get(_ name: String, range: Range<UInt64>) throws -> [UInt8] {
        guard range.count <= Int.max else { throw ObjectStoreError.outOfRange(name, at: location(of: name), range: range, size: nil) }
        let n = Int(range.count)
        return try [UInt8](unsafeUninitializedCapacity: n) { buffer, count in
            // Also for an empty range: the object must exist and the range lie inside it.
            try read(name, range: range, into: UnsafeMutableRawBufferPointer(buffer))
            count = n
        }
    }

    public func delete(_ names: [String]) throws {
        for n in names { try delete(n) }
    }

    public func syncNames(prefix: String) throws {}
    public func makeDirectory(_ prefix: String) throws {}
    public func sweepLeftovers(prefix: String, olderThanSeconds: Int) throws {}

    /// Every name of `list`, page after page of `pageNamesMax`.
    public func listAll(prefix: String, delimited: Bool = false, pageNamesMax: Int = ObjectStoreLimits.listPageNamesMax) throws -> [String] {
        var out: [String] = []
        var after: String? = nil
        while true {
            let page = try list(prefix: prefix, startAfter: after, limit: pageNamesMax, delimited: delimited)
            out += page.names
            guard page.isTruncated, let last = page.names.last else { return out }
            after = last
        }
    }
}

public enum ObjectStoreLimits {
    /// Names per page `listAll` asks for (a local store reads its directory
    /// once per page: large pages keep a big directory cheap to list).
    public static let listPageNamesMax = 10_000
    /// A name's bytes, and one component's (the file-name limit of Linux
    /// file systems).
    public static let nameBytesMax = 1024
    public static let componentBytesMax = 255
}

/// What `stat` knows of an object.
public struct ObjectInfo: Equatable, Sendable {
    public var size: UInt64
    public init(size: UInt64) { self.size = size }
}

/// One page of a listing.
public struct ObjectListing: Equatable, Sendable {
    public var names: [String]
    /// More names follow (after the last of `names`).
    public var isTruncated: Bool
    public init(names: [String], isTruncated: Bool) {
        self.names = names
        self.isTruncated = isTruncated
    }
}

/// The bytes of an object to create, valid only during the call that
/// receives them: `head` followed by `tail` (a header and a payload, say).
///
/// `padded`, when present, holds the same bytes contiguously at its start,
/// in memory aligned to `ObjectContent.alignmentBytes`, followed by zeros up
/// to a length its producer rounded to its direct-I/O alignment: a store may
/// write it whole with direct I/O and then cut the object to `count` bytes.
/// A store that cannot use it uses `head` and `tail`.
public struct ObjectContent {
    /// The alignment of `padded`'s memory and of its length as producers make it.
    public static let alignmentBytes = 4096

    public let head: UnsafeRawBufferPointer
    public let tail: UnsafeRawBufferPointer
    public let padded: UnsafeRawBufferPointer?

    public var count: Int { head.count + tail.count }

    public init(_ bytes: UnsafeRawBufferPointer) {
        self.init(head: bytes, tail: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    public init(head: UnsafeRawBufferPointer, tail: UnsafeRawBufferPointer) {
        self.head = head
        self.tail = tail
        self.padded = nil
    }

    /// The first `count` bytes of `padded` are the object; the rest are zeros.
    public init(padded: UnsafeRawBufferPointer, count: Int) {
        precondition(count >= 0 && count <= padded.count, "ObjectContent: \(count) object bytes in a \(padded.count)-byte padded buffer")
        precondition(padded.baseAddress.map { UInt(bitPattern: $0) % UInt(Self.alignmentBytes) == 0 } ?? true,
                     "ObjectContent: padded memory must be aligned to \(Self.alignmentBytes) bytes")
        self.head = UnsafeRawBufferPointer(rebasing: padded[0..<count])
        self.tail = UnsafeRawBufferPointer(start: nil, count: 0)
        self.padded = padded
    }

    /// The object as one array (a copy).
    public var bytes: [UInt8] { Array(head) + Array(tail) }
}

/// One object of `putBatch`: its name, and a function that hands its
/// content to the store (on whichever thread writes it; called at most
/// once). Computing the content there (a checksum, say) spreads that work
/// over the batch's threads too.
public struct ObjectPut: Sendable {
    public let name: String
    public let withContent: @Sendable (_ write: (ObjectContent) throws -> Void) throws -> Void

    public init(name: String, withContent: @escaping @Sendable (_ write: (ObjectContent) throws -> Void) throws -> Void) {
        self.name = name
        self.withContent = withContent
    }

    /// A put of bytes held in an array.
    public init(name: String, bytes: [UInt8]) {
        self.init(name: name) { write in try bytes.withUnsafeBytes { try write(ObjectContent($0)) } }
    }
}

/// What `putBatch` did.
public struct ObjectBatchOutcome: @unchecked Sendable {
    /// Puts `0..<durable` are durable.
    public var durable: Int
    /// The first put that failed (the one at `durable`, or 0 when the final
    /// durability barrier failed) and why; nil when every put is durable.
    public var failure: (index: Int, error: any Error)?
    /// Puts whose names this call made visible but not durable (a crash can
    /// still lose them): only after a failure, and always empty for stores
    /// that publish a name only once it is durable.
    public var visibleNotDurable: [Int]

    public init(durable: Int, failure: (index: Int, error: any Error)?, visibleNotDurable: [Int]) {
        self.durable = durable
        self.failure = failure
        self.visibleNotDurable = visibleNotDurable
    }
}

/// A refusal of an object store: the name exists (create-once), is
/// missing, a byte range lies beyond the object, or the name is not valid.
/// Operating-system failures stay `SystemError`s.
public struct ObjectStoreError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case exists
        case notFound
        case outOfRange
        case invalidName
    }
    public var kind: Kind
    public var name: String
    public var message: String
    public var hint: String?

    public init(_ kind: Kind, name: String, _ message: String, hint: String? = nil) {
        self.kind = kind
        self.name = name
        self.message = message
        self.hint = hint
    }

    public static func exists(_ name: String, at location: String) -> ObjectStoreError {
        ObjectStoreError(.exists, name: name, "\(location) exists already (objects are created once)")
    }

    public static func notFound(_ name: String, at location: String) -> ObjectStoreError {
        ObjectStoreError(.notFound, name: name, "\(location) does not exist")
    }

    public static func outOfRange(_ name: String, at location: String, range: Range<UInt64>, size: UInt64?) -> ObjectStoreError {
        ObjectStoreError(.outOfRange, name: name,
                         "\(location): bytes \(range.lowerBound)..<\(range.upperBound) lie beyond the object's \(size.map { "\($0) bytes" } ?? "end")")
    }

    public var description: String {
        if let hint { return "\(message)\n  hint: \(hint)" }
        return message
    }
}

/// The rules of object names (see `ObjectStore`).
public enum ObjectName {
    /// Nil when `name` is a valid object name, else what is wrong with it.
    public static func problem(_ name: String) -> String? {
        let bytes = name.utf8
        guard !bytes.isEmpty else { return "is empty" }
        guard bytes.count <= ObjectStoreLimits.nameBytesMax else { return "is longer than \(ObjectStoreLimits.nameBytesMax) bytes" }
        for component in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
            if let p = componentProblem(component) { return p }
        }
        return nil
    }

    static func componentProblem(_ c: Substring.UTF8View) -> String? {
        guard !c.isEmpty else { return "has an empty component (a leading, trailing or doubled '/')" }
        guard c.count <= ObjectStoreLimits.componentBytesMax else { return "has a component longer than \(ObjectStoreLimits.componentBytesMax) bytes" }
        guard c.first != UInt8(ascii: ".") else { return "has a component starting with '.' (reserved for the store's own files)" }
        guard !c.contains(0) else { return "contains a NUL byte" }
        return nil
    }

    /// Throws `ObjectStoreError.invalidName` unless `name` is valid.
    public static func validate(_ name: String, store: any ObjectStore) throws {
        if let p = problem(name) {
            throw ObjectStoreError(.invalidName, name: name, "object name '\(name)' \(p)",
                                   hint: "names are 1-\(ObjectStoreLimits.nameBytesMax) bytes of components separated by '/', none empty or starting with '.'")
        }
    }

    /// True when some valid name can start with `prefix`: every complete
    /// component of it (before its last "/") is valid.
    public static func prefixCanMatch(_ prefix: String) -> Bool {
        let parts = prefix.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        guard prefix.utf8.count <= ObjectStoreLimits.nameBytesMax else { return false }
        for c in parts.dropLast() where componentProblem(c) != nil { return false }
        if let last = parts.last, !last.isEmpty {
            guard last.first != UInt8(ascii: "."), !last.contains(0), last.count <= ObjectStoreLimits.componentBytesMax else { return false }
        }
        return true
    }

    /// Byte order of UTF-8 (Swift's `<` on strings compares by Unicode
    /// canonical equivalence, which is not an order every store can keep).
    public static func precedes(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    /// What a delimited listing lists for `name` under `prefix`: the name,
    /// or its prefix up to the first "/" after `prefix`.
    public static func delimitedEntry(_ name: String, prefix: String) -> String {
        let rest = name.utf8.dropFirst(prefix.utf8.count)
        guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else { return name }
        return String(Substring(name.utf8[..<name.utf8.index(after: slash)]))
    }
}
