import Synchronization
import TidemarkSystem

/// An `ObjectStore` in memory, for tests and the simulation. A put is
/// visible and "durable" at once, as a whole (the bytes are copied before
/// the name appears), so `putBatch`, `syncNames` and the rest keep the
/// protocol's defaults.
///
/// Faults can be injected (`failNext`): the next operations of a kind on
/// names under a prefix throw a given error instead of running, and
/// `tamper` changes or creates an object behind the create-once rule, as
/// damage on storage would (corruption tests).
///
/// Thread-safe: one mutex guards the objects and the faults. Memory: the
/// objects' bytes, plus one sorted array of their names.
public final class InMemoryObjectStore: ObjectStore, @unchecked Sendable {
    /// Operations a fault can be injected into.
    public enum Operation: Sendable, Equatable {
        case put, read, stat, list, delete
    }

    private struct Fault {
        var operation: Operation
        var prefix: String
        var remaining: Int
        var error: any Error
    }

    private struct Object {
        var bytes: [UInt8]
        /// The `created` count when this object was created (or tampered with).
        var serial: Int
    }

    private struct State {
        var objects: [String: Object] = [:]
        /// Objects created so far (by `put` and `tamper`).
        var created = 0
        /// The keys of `objects` in byte order.
        var names: [String] = []
        var faults: [Fault] = []
    }

    /// Names this store in locations ("memory:<label>/<name>").
    public let label: String
    private let state = Mutex(State())

    public init(label: String = "store") {
        self.label = label
    }

    public func location(of name: String) -> String { "memory:\(label)/\(name)" }

    // MARK: Faults

    /// The next `count` operations `operation` on names starting with
    /// `prefix` (for `list`: listings whose prefix starts with it) throw
    /// `error` and change nothing. Faults are used up in the order injected.
    public func failNext(_ operation: Operation, prefix: String = "", count: Int = 1,
                         with error: any Error = TidemarkError(.io, "injected fault")) {
        precondition(count >= 1)
        state.withLock { $0.faults.append(Fault(operation: operation, prefix: prefix, remaining: count, error: error)) }
    }

    /// Drops every fault not used up yet.
    public func clearFaults() {
        state.withLock { $0.faults.removeAll() }
    }

    /// Replaces (or creates, or with nil removes) an object behind the
    /// create-once rule: damage or tampering on storage, for tests.
    public func tamper(_ name: String, _ bytes: [UInt8]?) {
        state.withLock { s in
            if let bytes {
                s.created += 1
                if s.objects.updateValue(Object(bytes: bytes, serial: s.created), forKey: name) == nil { Self.insertName(name, into: &s.names) }
            } else if s.objects.removeValue(forKey: name) != nil {
                s.names.remove(at: Self.index(of: name, in: s.names))
            }
        }
    }

    /// Objects held now, and their bytes in all.
    public var objectCount: Int { state.withLock { $0.objects.count } }
    public var byteCount: Int { state.withLock { $0.objects.values.reduce(0) { $0 + $1.bytes.count } } }

    /// Which object creation made the object now at `name` (1 for the
    /// store's first), nil when there is none: equal numbers mean it was
    /// not deleted and created again, nor tampered with, in between.
    public func creationNumber(of name: String) -> Int? {
        state.withLock { $0.objects[name]?.serial }
    }

    /// Throws the first injected fault that matches (using it up).
    private static func fault(_ s: inout State, _ operation: Operation, _ name: String) throws {
        guard let i = s.faults.firstIndex(where: { $0.operation == operation && $0.remaining > 0 && name.utf8.starts(with: $0.prefix.utf8) }) else {
            return
        }
        s.faults[i].remaining -= 1
        let error = s.faults[i].error
        if s.faults[i].remaining == 0 { s.faults.remove(at: i) }
        throw error
    }

    /// The first index of `names` whose name does not precede `name`.
    private static func index(of name: String, in names: [String]) -> Int {
        var lo = 0, hi = names.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ObjectName.precedes(names[mid], name) { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    private static func insertName(_ name: String, into names: inout [String]) {
        names.insert(name, at: index(of: name, in: names))
    }

    // MARK: ObjectStore

    public func put(_ name: String, _ content: ObjectContent) throws {
        try ObjectName.validate(name, store: self)
        // Copied before the lock: a reader never sees part of it.
        let bytes = content.bytes
        try state.withLock { s in
            try Self.fault(&s, .put, name)
            guard s.objects[name] == nil else { throw ObjectStoreError.exists(name, at: location(of: name)) }
            s.created += 1
            s.objects[name] = Object(bytes: bytes, serial: s.created)
            Self.insertName(name, into: &s.names)
        }
    }

    public func stat(_ name: String) throws -> ObjectInfo? {
        try ObjectName.validate(name, store: self)
        return try state.withLock { s in
            try Self.fault(&s, .stat, name)
            return s.objects[name].map { ObjectInfo(size: UInt64($0.bytes.count)) }
        }
    }

    public func read(_ name: String, range: Range<UInt64>, into buffer: UnsafeMutableRawBufferPointer) throws {
        precondition(UInt64(buffer.count) >= range.count, "read: a \(buffer.count)-byte buffer for \(range.count) bytes")
        try ObjectName.validate(name, store: self)
        try state.withLock { s in
            try Self.fault(&s, .read, name)
            guard let bytes = s.objects[name]?.bytes else { throw ObjectStoreError.notFound(name, at: location(of: name)) }
            guard range.upperBound <= UInt64(bytes.count) else {
                throw ObjectStoreError.outOfRange(name, at: location(of: name), range: range, size: UInt64(bytes.count))
            }
            guard range.count > 0 else { return }
            bytes.withUnsafeBytes {
                buffer.baseAddress!.copyMemory(from: $0.baseAddress! + Int(range.lowerBound), byteCount: Int(range.count))
            }
        }
    }

    public func get(_ name: String) throws -> [UInt8] {
        try ObjectName.validate(name, store: self)
        return try state.withLock { s in
            try Self.fault(&s, .read, name)
            guard let bytes = s.objects[name]?.bytes else { throw ObjectStoreError.notFound(name, at: location(of: name)) }
            return bytes
        }
    }

    public func list(prefix: String, startAfter: String?, limit: Int, delimited: Bool) throws -> ObjectListing {
        precondition(limit >= 1, "list: a page holds at least one name")
        return try state.withLock { s in
            try Self.fault(&s, .list, prefix)
            var out: [String] = []
            var i = Self.index(of: max(prefix, startAfter ?? "", by: ObjectName.precedes), in: s.names)
            while i < s.names.count, s.names[i].utf8.starts(with: prefix.utf8) {
                let name = s.names[i]
                i += 1
                let entry = delimited ? ObjectName.delimitedEntry(name, prefix: prefix) : name
                if entry != name {
                    // Past the rest of the group: the names starting with
                    // `entry` (which ends in "/") end before entry − "/" + "0".
                    i = Self.index(of: String(entry.dropLast()) + "0", in: s.names)
                }
                if let startAfter, !ObjectName.precedes(startAfter, entry) { continue }
                if out.count == limit { return ObjectListing(names: out, isTruncated: true) }
                out.append(entry)
            }
            return ObjectListing(names: out, isTruncated: false)
        }
    }

    public func delete(_ name: String) throws {
        try ObjectName.validate(name, store: self)
        try state.withLock { s in
            try Self.fault(&s, .delete, name)
            if s.objects.removeValue(forKey: name) != nil {
                s.names.remove(at: Self.index(of: name, in: s.names))
            }
        }
    }
}

private func max(_ a: String, _ b: String, by precedes: (String, String) -> Bool) -> String {
    precedes(a, b) ? b : a
}
