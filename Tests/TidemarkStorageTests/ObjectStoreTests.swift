import Foundation
import Glibc
import Testing
import TidemarkStorage
import TidemarkStorageTesting
import TidemarkSystem
import TidemarkTesting

/// The shared conformance suite over each store, then what is particular
/// to each: the local store's files (crash leftovers, modes, direct writes),
/// the memory store's injected faults.
@Suite struct LocalDirectoryObjectStoreConformance {
    @Test(arguments: ObjectStoreConformance.checks)
    func conformance(_ check: ObjectStoreCheck) throws {
        let dir = try TestEnv.tempDir("store-local")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try check.run { try LocalDirectoryObjectStore(root: dir + "/store") }
    }
}

@Suite struct InMemoryObjectStoreConformance {
    @Test(arguments: ObjectStoreConformance.checks)
    func conformance(_ check: ObjectStoreCheck) throws {
        try check.run { InMemoryObjectStore(label: "conformance") }
    }
}

@Suite struct LocalDirectoryObjectStoreTests {
    func store(_ tag: String) throws -> (LocalDirectoryObjectStore, String) {
        let dir = try TestEnv.tempDir("store-\(tag)")
        return (try LocalDirectoryObjectStore(root: dir + "/store/"), dir)
    }

    @Test func objectsAreReadOnlyFilesUnderTheRoot() throws {
        let (store, dir) = try store("files")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(store.root == dir + "/store", "a trailing slash is dropped")
        #expect(store.location(of: "a/b/c") == dir + "/store/a/b/c")
        try ObjectStoreConformance.put(store, "a/b/c", [1, 2, 3])
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/store/a/b/c")) == Data([1, 2, 3]))
        var st = Glibc.stat()
        #expect(stat(dir + "/store/a/b/c", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o444)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/store/a/b") == ["c"], "no temporary file is left")
        // A file put there by other means is an object too; a directory is not.
        #expect(FileManager.default.createFile(atPath: dir + "/store/a/other", contents: Data([9])))
        #expect(try store.get("a/other") == [9])
        #expect(try store.stat("a/b") == nil)
        #expect(try store.rootEntries() == ["a"])
    }

    /// What a crash leaves (a temporary file under a directory of
    /// objects, at any stage of being written) is never an object: not
    /// listed, not readable under the object's name, not in the way of the
    /// put that comes next; sweeping removes only old ones.
    @Test func crashLeftoversAreInvisible() throws {
        let (store, dir) = try store("leftovers")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try ObjectStoreConformance.put(store, "d/segments/1.seg", [1])
        let segments = dir + "/store/d/segments"
        let stale = segments + "/.tmp-2.seg-4242-123456", fresh = segments + "/.tmp-3.seg-4242-654321"
        let topLevel = dir + "/store/.tmp-marker-1-2"
        for path in [stale, fresh, topLevel] {
            #expect(FileManager.default.createFile(atPath: path, contents: Data([7, 7, 7])))
        }
        var old = [timeval(tv_sec: time(nil) - 7200, tv_usec: 0), timeval(tv_sec: time(nil) - 7200, tv_usec: 0)]
        #expect(utimes(stale, &old) == 0)
        #expect(try store.listAll(prefix: "") == ["d/segments/1.seg"])
        #expect(try store.listAll(prefix: "d/", delimited: true) == ["d/segments/"])
        #expect(try store.listAll(prefix: "", delimited: true) == ["d/"])
        #expect(try store.stat("d/segments/2.seg") == nil)
        #expect(ObjectStoreConformance.storeError { _ = try store.get("d/segments/2.seg") } == .notFound)
        #expect(ObjectStoreConformance.storeError { _ = try store.get("d/segments/.tmp-2.seg-4242-123456") } == .invalidName)
        try ObjectStoreConformance.put(store, "d/segments/2.seg", [2])
        #expect(try store.get("d/segments/2.seg") == [2])
        // Only leftovers older than the age given go.
        try store.sweepLeftovers(prefix: "d/", olderThanSeconds: 3600)
        #expect(!FileManager.default.fileExists(atPath: stale))
        #expect(FileManager.default.fileExists(atPath: fresh))
        #expect(FileManager.default.fileExists(atPath: topLevel), "outside the prefix")
        #expect(try store.listAll(prefix: "") == ["d/segments/1.seg", "d/segments/2.seg"])
        // rootEntries shows the store's own files too (to tell a foreign directory).
        #expect(try store.rootEntries().sorted() == [".tmp-marker-1-2", "d"])
    }

    /// A put of a batch that cannot be written (a file is in the way of its
    /// directory) stops the batch there; the puts before it are durable.
    @Test func aBatchStopsAtAPutThatCannotBeWritten() throws {
        let (store, dir) = try store("batch-visible")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let puts = (0..<3).map { ObjectPut(name: "v/\($0)", bytes: [UInt8($0)]) }
        let outcome = store.putBatch(puts, pool: nil) { _ in }
        #expect(outcome.durable == 3 && outcome.visibleNotDurable.isEmpty)
        // A name whose directory cannot be created (a file is in the way) fails its put.
        #expect(FileManager.default.createFile(atPath: dir + "/store/blocked", contents: nil))
        let r = store.putBatch([ObjectPut(name: "v/3", bytes: [3]), ObjectPut(name: "blocked/x", bytes: [4])], pool: nil) { _ in }
        #expect(r.durable == 1 && r.failure?.index == 1)
        #expect(try store.get("v/3") == [3])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/store/v").sorted() == ["0", "1", "2", "3"])
    }

    /// Padded content is written with O_DIRECT; where the device refuses
    /// the alignment (EINVAL), the same bytes are written buffered instead.
    /// Real ext4 on a loop device with 4 KiB logical sectors, written at
    /// 512-byte alignment, makes the kernel refuse.
    @Test(.requiresRoot) func anAlignmentTheDeviceRefusesFallsBackToBufferedWrites() throws {
        let dir = try TestEnv.tempDir("direct-write")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loop = try LoopDevice(sizeBytes: 64 << 20, in: dir, sectorSize: 4096)
        defer { loop.detach() }
        let mnt = dir + "/mnt"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        try sh("mkfs.ext4 -q -F '\(loop.path)' && mount '\(loop.path)' '\(mnt)'")
        defer { _ = try? sh("umount '\(mnt)'") }
        let store = try LocalDirectoryObjectStore(root: mnt + "/store")

        // 4796 + 204 bytes: padded to 512, the object is not a multiple of 4096.
        let object = ObjectStoreConformance.bytes(5000, seed: 9)
        for alignment in [512, 4096] {
            let padded = (object.count + alignment - 1) / alignment * alignment
            #expect(alignment == 4096 || padded % 4096 != 0, "the test needs an object whose 512-padding is short of 4096")
            let buffer = AlignedBuffer(count: padded)
            object.withUnsafeBytes { buffer.pointer.copyMemory(from: $0.baseAddress!, byteCount: object.count) }
            try store.put("a\(alignment).seg", ObjectContent(padded: UnsafeRawBufferPointer(buffer.bytes), count: object.count))
            let written = [UInt8](try Data(contentsOf: URL(fileURLWithPath: store.location(of: "a\(alignment).seg"))))
            #expect(written == object, "alignment \(alignment)")
        }
        // The refusal is real: the same 512-aligned direct write fails with EINVAL here.
        let fd = try FileDescriptor(open: mnt + "/probe", [.writeOnly, .create, .direct])
        let buffer = AlignedBuffer(count: 4096)
        #expect(throws: SystemError.self) { try fd.write(UnsafeRawBufferPointer(buffer.slice(0, 512)), at: 0) }
    }
}

@Suite struct InMemoryObjectStoreTests {
    @Test func injectedFaultsFailTheOperationsAskedFor() throws {
        let store = InMemoryObjectStore(label: "faults")
        struct Injected: Error {}
        store.failNext(.put, prefix: "a/", count: 2, with: Injected())
        #expect(throws: Injected.self) { try ObjectStoreConformance.put(store, "a/1", [1]) }
        try ObjectStoreConformance.put(store, "b/1", [1])  // another prefix: not affected
        #expect(throws: Injected.self) { try ObjectStoreConformance.put(store, "a/1", [1]) }
        try ObjectStoreConformance.put(store, "a/1", [1])  // used up
        #expect(try store.get("a/1") == [1])
        store.failNext(.read)
        #expect(throws: TidemarkError.self) { _ = try store.get("a/1") }
        #expect(try store.get("a/1") == [1])
        store.failNext(.stat)
        store.failNext(.list)
        store.failNext(.delete)
        #expect(throws: TidemarkError.self) { _ = try store.stat("a/1") }
        #expect(throws: TidemarkError.self) { _ = try store.list(prefix: "", startAfter: nil, limit: 5, delimited: false) }
        #expect(throws: TidemarkError.self) { try store.delete("a/1") }
        #expect(try store.stat("a/1") != nil, "a failed delete deletes nothing")
        // A fault in the middle of a batch stops it there.
        store.failNext(.put, prefix: "batch/2")
        let r = store.putBatch((0..<4).map { ObjectPut(name: "batch/\($0)", bytes: [UInt8($0)]) }, pool: nil) { _ in }
        #expect(r.durable == 2 && r.failure?.index == 2)
        store.failNext(.put)
        store.clearFaults()
        try ObjectStoreConformance.put(store, "c", [])
    }

    @Test func tamperingBypassesCreateOnce() throws {
        let store = InMemoryObjectStore()
        try ObjectStoreConformance.put(store, "x/obj", [1, 2])
        let before = try #require(store.identity(of: "x/obj"))
        store.tamper("x/obj", [3])
        #expect(try store.get("x/obj") == [3])
        #expect(store.identity(of: "x/obj") != before)
        store.tamper("x/new", [4])
        #expect(try store.listAll(prefix: "x/") == ["x/new", "x/obj"])
        store.tamper("x/obj", nil)
        #expect(try store.listAll(prefix: "x/") == ["x/new"])
        #expect(store.objectCount == 1 && store.byteCount == 1)
        #expect(store.location(of: "x/new") == "memory:store/x/new")
    }
}
