import Dispatch
import Foundation
import Testing
import TidemarkStorage
import TidemarkSystem
import TidemarkTesting

/// The `ObjectStore` conformance suite, shared by every store's tests (as
/// restic's backend test suite is): each check gets a fresh, empty store
/// from the caller's factory and checks one rule of the protocol. A store's
/// test file runs them all with
///
///     @Test(arguments: ObjectStoreConformance.checks)
///     func conformance(_ check: ObjectStoreCheck) throws {
///         try check.run { try MyStore(...) }
///     }
///
/// so a new backend (S3) gets the whole suite by adding that one test.
public struct ObjectStoreCheck: Sendable, CustomTestStringConvertible {
    public let name: String
    let body: @Sendable (any ObjectStore) throws -> Void

    public var testDescription: String { name }

    /// Runs the check on a store `make` creates (empty).
    public func run(_ make: () throws -> any ObjectStore) throws {
        try body(try make())
    }
}

public enum ObjectStoreConformance {
    public static let checks: [ObjectStoreCheck] = [
        ObjectStoreCheck(name: "create once", body: createOnce),
        ObjectStoreCheck(name: "concurrent puts of one name: exactly one wins", body: concurrentPutsOfOneName),
        ObjectStoreCheck(name: "get and byte ranges, with their edges", body: getAndRanges),
        ObjectStoreCheck(name: "stat", body: stat),
        ObjectStoreCheck(name: "list: order, prefixes, paging over many names", body: listPaging),
        ObjectStoreCheck(name: "list: delimited", body: listDelimited),
        ObjectStoreCheck(name: "delete is idempotent", body: delete),
        ObjectStoreCheck(name: "names with odd characters; invalid names refused", body: names),
        ObjectStoreCheck(name: "large objects", body: largeObjects),
        ObjectStoreCheck(name: "content as head and tail, or padded", body: contentForms),
        ObjectStoreCheck(name: "batch put", body: batchPut),
        ObjectStoreCheck(name: "batch put stops at an existing name refused", body: batchPutStops),
        ObjectStoreCheck(name: "batch put on several threads", body: batchPutParallel),
        ObjectStoreCheck(name: "durability barrier, directories, leftovers", body: maintenance),
    ]

    // MARK: Helpers

    /// `count` bytes from `seed` (no two seeds alike).
    public static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { b in
            var i = 0
            while i < b.count {
                let v = rng.next()
                for k in 0..<min(8, b.count - i) { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
                i += 8
            }
        }
        return out
    }

    public static func put(_ store: any ObjectStore, _ name: String, _ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try store.put(name, ObjectContent($0)) }
    }

    /// The kind of `ObjectStoreError` `body` throws; nil when it throws none.
    public static func storeError(_ body: () throws -> Void) -> ObjectStoreError.Kind? {
        do {
            try body()
            return nil
        } catch let e as ObjectStoreError {
            return e.kind
        } catch {
            Issue.record("expected an ObjectStoreError, got \(error)")
            return nil
        }
    }

    static func sortedByBytes(_ names: [String]) -> [String] { names.sorted(by: ObjectName.precedes) }

    /// Every name of a listing, page by page with `limit`, checking each page.
    static func pages(_ store: any ObjectStore, prefix: String, limit: Int, delimited: Bool = false,
                      startAfter: String? = nil) throws -> [String] {
        var out: [String] = []
        var after = startAfter
        for _ in 0..<100_000 {
            let page = try store.list(prefix: prefix, startAfter: after, limit: limit, delimited: delimited)
            #expect(page.names.count <= limit)
            if page.isTruncated { #expect(page.names.count == limit, "a truncated page is full") }
            out += page.names
            guard page.isTruncated, let last = page.names.last else { return out }
            after = last
        }
        Issue.record("listing \(prefix) did not end")
        return out
    }

    // MARK: Checks

    static func createOnce(_ store: any ObjectStore) throws {
        let a = bytes(1000, seed: 1), b = bytes(1000, seed: 2)
        try put(store, "objects/a", a)
        #expect(try store.get("objects/a") == a)
        #expect(storeError { try put(store, "objects/a", b) } == .exists)
        #expect(storeError { try put(store, "objects/a", a) } == .exists, "the same bytes again are refused too")
        #expect(try store.get("objects/a") == a, "an existing object is never replaced")
        #expect(try store.stat("objects/a") == ObjectInfo(size: 1000))
        // An empty object is an object.
        try put(store, "objects/empty", [])
        #expect(try store.get("objects/empty") == [])
        #expect(try store.stat("objects/empty") == ObjectInfo(size: 0))
        #expect(storeError { try put(store, "objects/empty", [1]) } == .exists)
        // A name and a longer name beside it are different objects.
        try put(store, "objects/ab", b)
        #expect(try store.get("objects/a") == a && store.get("objects/ab") == b)
    }

    static func concurrentPutsOfOneName(_ store: any ObjectStore) throws {
        let writers = 8
        for round in 0..<6 {
            let name = "race/object-\(round)"
            let contents = (0..<writers).map { bytes(64 << 10, seed: UInt64(round * 100 + $0)) }
            let outcomes = Outcomes(count: writers)
            DispatchQueue.concurrentPerform(iterations: writers) { w in
                do {
                    try put(store, name, contents[w])
                    outcomes.set(w, "won")
                } catch let e as ObjectStoreError where e.kind == .exists {
                    outcomes.set(w, "exists")
                } catch {
                    outcomes.set(w, "\(error)")
                }
            }
            let got = outcomes.all
            #expect(got.filter { $0 == "won" }.count == 1, "round \(round): \(got)")
            #expect(got.filter { $0 == "exists" }.count == writers - 1, "round \(round): \(got)")
            if let winner = got.firstIndex(of: "won") {
                #expect(try store.get(name) == contents[winner], "the winner's bytes, whole")
            }
        }
        #expect(try store.list(prefix: "race/", startAfter: nil, limit: 100, delimited: false).names == (0..<6).map { "race/object-\($0)" })
    }

    static func getAndRanges(_ store: any ObjectStore) throws {
        let data = bytes(100, seed: 3)
        try put(store, "r/obj", data)
        #expect(try store.get("r/obj", range: 0..<100) == data)
        #expect(try store.get("r/obj", range: 0..<0) == [])
        #expect(try store.get("r/obj", range: 50..<50) == [])
        #expect(try store.get("r/obj", range: 100..<100) == [], "an empty range at the end is inside")
        #expect(try store.get("r/obj", range: 99..<100) == [data[99]])
        #expect(try store.get("r/obj", range: 10..<20) == Array(data[10..<20]))
        for bad: Range<UInt64> in [0..<101, 100..<101, 99..<101, 200..<300, 101..<101] {
            #expect(storeError { _ = try store.get("r/obj", range: bad) } == .outOfRange, "\(bad)")
        }
        // read into a caller's buffer: exactly the range, nothing beyond.
        var buffer = [UInt8](repeating: 0xEE, count: 30)
        try buffer.withUnsafeMutableBytes { try store.read("r/obj", range: 5..<25, into: $0) }
        #expect(Array(buffer[0..<20]) == Array(data[5..<25]) && buffer[20...].allSatisfy { $0 == 0xEE })
        // Missing objects.
        #expect(storeError { _ = try store.get("r/missing") } == .notFound)
        #expect(storeError { _ = try store.get("r/missing", range: 0..<0) } == .notFound)
        #expect(storeError { _ = try store.get("r") } == .notFound, "a prefix of names is not an object")
        // An empty object.
        try put(store, "r/empty", [])
        #expect(try store.get("r/empty", range: 0..<0) == [])
        #expect(storeError { _ = try store.get("r/empty", range: 0..<1) } == .outOfRange)
        // The error names the object.
        do {
            _ = try store.get("r/obj", range: 90..<110)
            Issue.record("a range beyond the end was read")
        } catch let e as ObjectStoreError {
            #expect(e.name == "r/obj" && e.message.contains(store.location(of: "r/obj")), "\(e)")
        }
    }

    static func stat(_ store: any ObjectStore) throws {
        #expect(try store.stat("s/missing") == nil)
        try put(store, "s/a", bytes(12345, seed: 4))
        try put(store, "s/b/c", bytes(1, seed: 5))
        #expect(try store.stat("s/a") == ObjectInfo(size: 12345))
        #expect(try store.stat("s/b/c") == ObjectInfo(size: 1))
        #expect(try store.stat("s/b") == nil, "a prefix of names is not an object")
        #expect(try store.stat("s") == nil)
        try store.delete("s/a")
        #expect(try store.stat("s/a") == nil)
    }

    static func listPaging(_ store: any ObjectStore) throws {
        // Many names, written in an order that is not theirs, in a few
        // "directories", some with characters that sort around "/".
        var names: [String] = []
        for i in 0..<1100 { names.append("many/" + String(format: "%06d", (i * 7919) % 1100) + ".seg") }
        names += ["many-x", "many.y", "many0", "man", "many/sub/a", "many/sub/b", "many/sub-c", "many/sub0", "many/A", "many/z z", "many/ü"]
        var rng = SplitMix64(seed: 6)
        var shuffled = names
        for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
        for n in shuffled { try put(store, n, Array(n.utf8)) }

        let all = sortedByBytes(names)
        for limit in [1, 7, 100, 1111, all.count, 5000] {
            #expect(try pages(store, prefix: "", limit: limit) == all, "limit \(limit)")
        }
        let underMany = all.filter { $0.hasPrefix("many/") }
        #expect(underMany.count == 1100 + 7)
        #expect(try pages(store, prefix: "many/", limit: 97) == underMany)
        #expect(try store.listAll(prefix: "many/") == underMany)
        #expect(try pages(store, prefix: "many", limit: 50) == all.filter { $0.hasPrefix("many") })
        #expect(try pages(store, prefix: "many/sub", limit: 2) == ["many/sub-c", "many/sub/a", "many/sub/b", "many/sub0"])
        #expect(try pages(store, prefix: "many/00001", limit: 3) == (10..<20).map { "many/" + String(format: "%06d", $0) + ".seg" })
        #expect(try pages(store, prefix: "nothing/", limit: 10) == [])
        #expect(try pages(store, prefix: "many/999999", limit: 10) == [])
        // startAfter: a name in the listing, one between two, one past the end.
        #expect(try pages(store, prefix: "many/", limit: 10, startAfter: "many/000499.seg") == underMany.filter { ObjectName.precedes("many/000499.seg", $0) })
        #expect(try pages(store, prefix: "many/", limit: 10, startAfter: "many/000499.sef") == underMany.filter { ObjectName.precedes("many/000499.sef", $0) })
        #expect(try store.list(prefix: "many/", startAfter: "many/zzz", limit: 10, delimited: false) == ObjectListing(names: ["many/ü"], isTruncated: false))
        #expect(try store.list(prefix: "many/", startAfter: "many/ü", limit: 10, delimited: false) == ObjectListing(names: [], isTruncated: false))
        // A page exactly as long as what is left is the last one.
        let exact = try store.list(prefix: "many/sub/", startAfter: nil, limit: 2, delimited: false)
        #expect(exact == ObjectListing(names: ["many/sub/a", "many/sub/b"], isTruncated: false))
        // Byte order, not Swift's string order: "Z" < "a" < "ü", "-" < "." < "/" < "0".
        #expect(try store.list(prefix: "man", startAfter: nil, limit: 4, delimited: false).names == ["man", "many-x", "many.y", "many/000000.seg"])
    }

    static func listDelimited(_ store: any ObjectStore) throws {
        for n in ["d/a/1", "d/a/2", "d/a/sub/3", "d/b", "d/b-", "d/c/x", "d/c0", "d/ü/1", "e/1"] { try put(store, n, [1]) }
        func listed(_ prefix: String, _ limit: Int = 100, after: String? = nil) throws -> [String] {
            try pages(store, prefix: prefix, limit: limit, delimited: true, startAfter: after)
        }
        #expect(try listed("d/") == ["d/a/", "d/b", "d/b-", "d/c/", "d/c0", "d/ü/"])
        for limit in [1, 2, 5] { #expect(try listed("d/", limit) == ["d/a/", "d/b", "d/b-", "d/c/", "d/c0", "d/ü/"], "limit \(limit)") }
        #expect(try listed("") == ["d/", "e/"])
        #expect(try listed("d/a/") == ["d/a/1", "d/a/2", "d/a/sub/"])
        #expect(try listed("d/c") == ["d/c/", "d/c0"])
        #expect(try listed("d/", after: "d/a/") == ["d/b", "d/b-", "d/c/", "d/c0", "d/ü/"], "a group is not listed again after itself")
        #expect(try listed("d/", after: "d/a/1") == ["d/b", "d/b-", "d/c/", "d/c0", "d/ü/"])
        #expect(try listed("x/") == [])
    }

    static func delete(_ store: any ObjectStore) throws {
        try put(store, "del/a", [1, 2, 3])
        try store.delete("del/a")
        #expect(try store.stat("del/a") == nil)
        #expect(storeError { _ = try store.get("del/a") } == .notFound)
        try store.delete("del/a")
        try store.delete("del/never")
        try store.delete("del")
        // Created again after a delete: the new bytes.
        try put(store, "del/a", [4])
        #expect(try store.get("del/a") == [4])
        #expect(try store.listAll(prefix: "del/") == ["del/a"])
        // Several at once, some missing.
        for i in 0..<20 { try put(store, "del/many/\(i)", [UInt8(i)]) }
        try store.delete((0..<25).filter { $0 % 2 == 0 }.map { "del/many/\($0)" })
        #expect(try store.listAll(prefix: "del/many/") == sortedByBytes((0..<20).filter { $0 % 2 == 1 }.map { "del/many/\($0)" }))
        try store.delete([])
    }

    static func names(_ store: any ObjectStore) throws {
        let odd = ["odd/host-a%3Asdb/disk", "odd/a:b", "odd/with space", "odd/ü-é-日本", "odd/+=#?&!$@~^'\"()[]{}<>|,;", "odd/x.y.z",
                   "odd/" + String(repeating: "n", count: 255), "odd/" + (1...40).map(String.init).joined(separator: "/"),
                   "odd/trailing.", "odd/a\\b", "odd/%2E%2E", "TIDEMARK-TARGET", "odd/*"]
        for (i, n) in odd.enumerated() {
            #expect(ObjectName.problem(n) == nil, "\(n): \(ObjectName.problem(n) ?? "")")
            try put(store, n, bytes(10 + i, seed: UInt64(i)))
            #expect(try store.get(n) == bytes(10 + i, seed: UInt64(i)), "\(n)")
            #expect(try store.stat(n)?.size == UInt64(10 + i))
        }
        #expect(try store.listAll(prefix: "odd/") == sortedByBytes(odd.filter { $0.hasPrefix("odd/") }))
        // 1024 bytes in six components.
        let long = String(repeating: String(repeating: "x", count: 200) + "/", count: 5) + String(repeating: "y", count: 19)
        #expect(long.utf8.count == ObjectStoreLimits.nameBytesMax)
        try put(store, long, [1])
        #expect(try store.get(long) == [1])
        let invalid = ["", "/a", "a/", "a//b", ".hidden", "a/.tmp-x", "a/..", "a/./b", "..", "a\u{0}b",
                       "odd/" + String(repeating: "n", count: 256), long + "c"]
        for n in invalid {
            #expect(ObjectName.problem(n) != nil, "\(n.debugDescription) is refused")
            #expect(storeError { try put(store, n, [1]) } == .invalidName, "put \(n.debugDescription)")
            #expect(storeError { _ = try store.get(n) } == .invalidName, "get \(n.debugDescription)")
        }
        #expect(try store.listAll(prefix: "").filter { $0.contains("/.") || $0.hasPrefix(".") } == [], "no hidden name is ever listed")
    }

    static func largeObjects(_ store: any ObjectStore) throws {
        let big = bytes((9 << 20) + 4321, seed: 7)
        try put(store, "large/9MiB", big)
        #expect(try store.stat("large/9MiB")?.size == UInt64(big.count))
        #expect(try store.get("large/9MiB") == big)
        let mid = UInt64(4 << 20) + 17
        #expect(try store.get("large/9MiB", range: mid..<(mid + 3 << 20)) == Array(big[Int(mid)..<Int(mid + 3 << 20)]))
        #expect(try store.get("large/9MiB", range: UInt64(big.count - 5)..<UInt64(big.count)) == Array(big.suffix(5)))
        // Through an aligned, padded buffer too.
        let buffer = AlignedBuffer(count: (big.count + 4095) / 4096 * 4096)
        big.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: big.count) }
        try store.put("large/padded", ObjectContent(padded: UnsafeRawBufferPointer(buffer.bytes), count: big.count))
        #expect(try store.get("large/padded") == big)
    }

    static func contentForms(_ store: any ObjectStore) throws {
        let head = bytes(100, seed: 8), tail = bytes(5000, seed: 9)
        try head.withUnsafeBytes { h in try tail.withUnsafeBytes { t in try store.put("c/two", ObjectContent(head: h, tail: t)) } }
        #expect(try store.get("c/two") == head + tail)
        try head.withUnsafeBytes { h in try store.put("c/head-only", ObjectContent(head: h, tail: UnsafeRawBufferPointer(start: nil, count: 0))) }
        #expect(try store.get("c/head-only") == head)
        // Padded to the alignment, at lengths around it (the padding is never stored).
        for n in [1, 4095, 4096, 4097, 12_288, 20_000] {
            let object = bytes(n, seed: UInt64(n))
            let buffer = AlignedBuffer(count: (n + 4095) / 4096 * 4096)
            object.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: n) }
            try store.put("c/padded-\(n)", ObjectContent(padded: UnsafeRawBufferPointer(buffer.bytes), count: n))
            #expect(try store.get("c/padded-\(n)") == object, "\(n) bytes")
            #expect(try store.stat("c/padded-\(n)")?.size == UInt64(n))
        }
    }

    static func batchPut(_ store: any ObjectStore) throws {
        let contents = (0..<10).map { bytes(3000 + $0, seed: UInt64(100 + $0)) }
        try put(store, "batch/dir-b/3", contents[3])
        let puts = (0..<10).map { ObjectPut(name: "batch/dir-\($0 % 2 == 0 ? "a" : "b")/\($0)", bytes: contents[$0]) }
        var existing: [Int] = []
        let outcome = store.putBatch(puts, pool: nil) { existing.append($0) }
        #expect(outcome.durable == 10 && outcome.failure == nil && outcome.visibleNotDurable.isEmpty)
        #expect(existing == [3], "the existing name is handed over, and only it")
        for i in 0..<10 { #expect(try store.get(puts[i].name) == contents[i]) }
        // Again: everything exists, everything accepted.
        existing = []
        let again = store.putBatch(puts, pool: nil) { existing.append($0) }
        #expect(again.durable == 10 && again.failure == nil && existing == Array(0..<10))
        // An invalid name stops the batch there; the puts before it are stored.
        let mixed = [ObjectPut(name: "batch/m/0", bytes: [0]), ObjectPut(name: "batch/m/1", bytes: [1]),
                     ObjectPut(name: "batch/m/.bad", bytes: [2]), ObjectPut(name: "batch/m/3", bytes: [3])]
        let stopped = store.putBatch(mixed, pool: nil) { _ in }
        #expect(stopped.durable == 2 && stopped.failure?.index == 2)
        #expect((stopped.failure?.error as? ObjectStoreError)?.kind == .invalidName)
        #expect(try store.listAll(prefix: "batch/m/") == ["batch/m/0", "batch/m/1"])
        #expect(store.putBatch([], pool: nil) { _ in }.durable == 0)
    }

    static func batchPutStops(_ store: any ObjectStore) throws {
        try put(store, "stop/2", [9])
        let puts = (0..<5).map { ObjectPut(name: "stop/\($0)", bytes: [UInt8($0)]) }
        struct Refused: Error {}
        let outcome = store.putBatch(puts, pool: nil) { i in
            #expect(i == 2)
            throw Refused()
        }
        #expect(outcome.durable == 2 && outcome.failure?.index == 2 && outcome.failure?.error is Refused)
        #expect(try store.listAll(prefix: "stop/") == ["stop/0", "stop/1", "stop/2"], "nothing after the refused name is created")
        #expect(try store.get("stop/2") == [9])
        // Content that cannot be produced fails its put.
        struct NoContent: Error {}
        let failing = [ObjectPut(name: "stop/x/0", bytes: [0]), ObjectPut(name: "stop/x/1") { _ in throw NoContent() },
                       ObjectPut(name: "stop/x/2", bytes: [2])]
        let r = store.putBatch(failing, pool: nil) { _ in }
        #expect(r.durable == 1 && r.failure?.index == 1 && r.failure?.error is NoContent)
        #expect(try store.listAll(prefix: "stop/x/") == ["stop/x/0"])
    }

    static func batchPutParallel(_ store: any ObjectStore) throws {
        let pool = WorkerPool(threads: 3)
        defer { pool.shutdown() }
        for round in 0..<3 {
            let contents = (0..<40).map { bytes(70_000 + $0 * 13, seed: UInt64(round * 1000 + $0)) }
            let puts = (0..<40).map { i in
                ObjectPut(name: "par/\(round)/\(i % 4)/\(i)") { write in
                    let c = contents[i]
                    // Padded for some, head + tail for others.
                    if i % 2 == 0 {
                        let buffer = AlignedBuffer(count: (c.count + 4095) / 4096 * 4096)
                        c.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: c.count) }
                        try write(ObjectContent(padded: UnsafeRawBufferPointer(buffer.bytes), count: c.count))
                    } else {
                        try c.withUnsafeBytes { b in
                            try write(ObjectContent(head: UnsafeRawBufferPointer(rebasing: b[0..<10]), tail: UnsafeRawBufferPointer(rebasing: b[10...])))
                        }
                    }
                }
            }
            let outcome = store.putBatch(puts, pool: pool) { _ in }
            #expect(outcome.durable == 40 && outcome.failure == nil)
            for i in 0..<40 { #expect(try store.get(puts[i].name) == contents[i]) }
        }
    }

    static func maintenance(_ store: any ObjectStore) throws {
        try store.makeDirectory("m/empty/")
        try store.makeDirectory("m/empty/")
        #expect(try store.listAll(prefix: "m/") == [], "a directory is not an object")
        #expect(try store.stat("m/empty") == nil)
        try put(store, "m/a/1", [1])
        try store.syncNames(prefix: "m/")
        try store.syncNames(prefix: "m/a/")
        try store.syncNames(prefix: "nothing/")
        try store.sweepLeftovers(prefix: "m/", olderThanSeconds: 0)
        #expect(try store.get("m/a/1") == [1], "sweeping never touches an object")
        #expect(try store.listAll(prefix: "m/") == ["m/a/1"])
    }
}

/// Results written by several threads.
final class Outcomes: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String]
    init(count: Int) { values = Array(repeating: "", count: count) }
    func set(_ i: Int, _ v: String) { lock.withLock { values[i] = v } }
    var all: [String] { lock.withLock { values } }
}
