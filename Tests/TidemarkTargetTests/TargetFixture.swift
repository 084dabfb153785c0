import Foundation
import Testing
import TidemarkStorage
import TidemarkStorageTesting
import TidemarkSystem
import TidemarkTesting
@testable import TidemarkTarget

/// The stores the repository tests run over: a local directory (the
/// layout on files) and memory (as the simulation will use it).
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case local, memory
    var testDescription: String { rawValue }
}

/// A target over a fresh store (a local directory in a fresh temp
/// directory, or memory with its state directory there), a disk, and an
/// in-memory model: the image after each sequence is what applying every
/// segment so far, in order, onto zeros gives. "Sealing" in these tests is
/// a reversible XOR so `open` must really be called.
final class TargetFixture {
    let dir: String
    let root: String
    let kind: StoreKind
    /// The store the target is over (kept across `reopen`).
    let store: any TamperableObjectStore
    var target: TargetRepository
    let disk: DiskRecord
    var rng: SplitMix64
    var nextSequence: UInt64 = 1
    /// The model image after the latest sequence.
    var image: [UInt8]
    /// Model images at each point's sequence.
    var pointImages: [UInt64: [UInt8]] = [:]
    var points: [UInt64: PointRecord] = [:]
    /// Per sequence: the extents and the plaintext of the data extents.
    var stored: [UInt64: (extents: [TargetExtent], plain: [UInt8], sealed: [UInt8])] = [:]
    var opened: [UInt64] = []

    init(tag: String, _ kind: StoreKind = .local, sizeBytes: UInt64 = 64 * 4096, chunk: UInt32 = 4096, seed: UInt64 = 1,
         diskID: String = "host-a:sdb") throws {
        dir = try TestEnv.tempDir("target-\(tag)-\(kind.rawValue)")
        root = dir + "/target"
        self.kind = kind
        switch kind {
        case .local:
            target = try TargetRepository(localDirectory: root)
            store = target.store as! LocalDirectoryObjectStore
        case .memory:
            let memory = InMemoryObjectStore(label: tag)
            store = memory
            target = try TargetRepository(store: memory, stateDirectory: root)
        }
        disk = DiskRecord(diskID: diskID, ownerAgentID: "agent-1", sizeBytes: sizeBytes, chunkSizeBytes: chunk, keyID: 0x1234)
        try target.putDisk(disk)
        rng = SplitMix64(seed: seed)
        image = [UInt8](repeating: 0, count: Int(sizeBytes))
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    var chunk: UInt64 { UInt64(disk.chunkSizeBytes) }
    var chunkCount: UInt64 { (disk.sizeBytes + chunk - 1) / chunk }

    static func seal(_ plain: [UInt8]) -> [UInt8] { plain.map { $0 ^ 0xA5 } }

    /// Extents from chunk runs (first chunk, chunk count, zero?).
    func extents(_ runs: [(UInt64, UInt64, Bool)]) -> [TargetExtent] {
        runs.map { first, count, zero in
            let off = first * chunk
            return TargetExtent(offset: off, length: min((first + count) * chunk, disk.sizeBytes) - off, zero: zero)
        }
    }

    /// Stores the next segment and applies it to the model.
    @discardableResult
    func put(_ runs: [(UInt64, UInt64, Bool)], point: (id: String, time: Int64)? = nil) throws -> UInt64 {
        let seq = nextSequence
        nextSequence += 1
        let ext = extents(runs)
        var plain = [UInt8]()
        for e in ext {
            if e.zero {
                image.replaceSubrange(Int(e.offset)..<Int(e.end), with: repeatElement(0, count: Int(e.length)))
            } else {
                var data = [UInt8](repeating: 0, count: Int(e.length))
                data.withUnsafeMutableBytes { b in
                    for i in stride(from: 0, to: b.count, by: 8) {
                        let v = rng.next() | 0x0101_0101_0101_0101  // no zero bytes: data differs from holes
                        for k in 0..<min(8, b.count - i) { b[i + k] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(k))) }
                    }
                }
                image.replaceSubrange(Int(e.offset)..<Int(e.end), with: data)
                plain += data
            }
        }
        let sealed = Self.seal(plain)
        var record: PointRecord? = nil
        if let point {
            record = PointRecord(id: point.id, diskID: disk.diskID, pointClass: "crash-consistent", timeUnixMs: point.time, sequence: seq)
            points[seq] = record
            pointImages[seq] = image
        }
        try sealed.withUnsafeBytes {
            try target.putSegment(diskID: disk.diskID, sequence: seq, extents: ext, point: record, bytes: $0)
        }
        stored[seq] = (ext, plain, sealed)
        return seq
    }

    /// The test's `open`: unseal and split the plaintext by the extents the
    /// test stored (independently of the target's metadata).
    func open(_ seq: UInt64, _ sealed: [UInt8]) throws -> [(offset: UInt64, bytes: [UInt8]?, length: UInt64)] {
        opened.append(seq)
        guard let s = stored[seq] else { throw TestFailure("open: unknown sequence \(seq)") }
        let plain = Self.seal(sealed)
        var at = 0
        return s.extents.map { e in
            if e.zero { return (e.offset, nil, e.length) }
            defer { at += Int(e.length) }
            return (e.offset, Array(plain[at..<(at + Int(e.length))]), e.length)
        }
    }

    /// Materializes `point` into a fresh file and returns its content.
    func materialize(_ point: PointRecord, to path: String? = nil) throws -> [UInt8] {
        let out = path ?? dir + "/restore-\(point.sequence).img"
        var last: (UInt64, UInt64) = (0, 0)
        try target.materialize(point: point, to: out, open: { try self.open($0, $1) }, progress: { done, total in
            #expect(done >= last.0 && done <= total)
            last = (done, total)
        })
        #expect(last == (disk.sizeBytes, disk.sizeBytes))
        return Array(try Data(contentsOf: URL(fileURLWithPath: out)))
    }

    func segmentPath(_ seq: UInt64) -> String { target.segmentPath(disk.diskID, seq) }
    func tombstonePath(_ seq: UInt64) -> String { target.tombstonePath(disk.diskID, seq) }
    func segmentName(_ seq: UInt64) -> String { target.segmentName(disk.diskID, seq) }
    func tombstoneName(_ seq: UInt64) -> String { target.tombstoneName(disk.diskID, seq) }

    /// A fresh repository over the same store (nothing cached).
    func reopen() throws {
        switch kind {
        case .local: target = try TargetRepository(localDirectory: root)
        case .memory: target = try TargetRepository(store: store, stateDirectory: root)
        }
    }

    func exists(_ name: String) throws -> Bool { try store.stat(name) != nil }
    func hasSegment(_ seq: UInt64) throws -> Bool { try exists(segmentName(seq)) }
    func hasTombstone(_ seq: UInt64) throws -> Bool { try exists(tombstoneName(seq)) }

    /// An object's raw bytes, and changes to them behind the repository's back.
    func raw(_ name: String) throws -> [UInt8] { try store.get(name) }
    func tamper(_ name: String, _ edit: (inout [UInt8]) -> Void) throws {
        var bytes = try raw(name)
        edit(&bytes)
        try store.tamper(name, bytes)
    }
    /// Flips one byte of an object (`at` from its start).
    func flip(_ name: String, at offset: UInt64, xor: UInt8 = 0x01) throws {
        try tamper(name) { $0[Int(offset)] ^= xor }
    }
    func size(_ name: String) throws -> UInt64 { try store.stat(name)?.size ?? 0 }
    /// Equal for the same object, not rewritten in between.
    func identity(_ name: String) -> String? { store.identity(of: name) }
}

/// Rewrites one byte of a file (objects are read-only; we are root or the owner).
func flipByte(_ path: String, at offset: UInt64, xor: UInt8 = 0x01) throws {
    chmod(path, 0o644)
    let fd = try FileDescriptor(open: path, .readWrite)
    var b: [UInt8] = [0]
    _ = try b.withUnsafeMutableBytes { try fd.read(into: $0, at: offset) }
    b[0] ^= xor
    try b.withUnsafeBytes { try fd.write($0, at: offset) }
}

func fileSize(_ path: String) -> UInt64 {
    var st = stat()
    return stat(path, &st) == 0 ? UInt64(st.st_size) : 0
}

/// Identity and modification time of a file: equal means not rewritten.
func inode(_ path: String) -> String {
    var st = stat()
    _ = stat(path, &st)
    return "\(st.st_ino)@\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
}

/// The error a throwing expression raised, as a TidemarkError.
func tidemarkError(_ body: () throws -> Void) -> TidemarkError? {
    do {
        try body()
        return nil
    } catch let e as TidemarkError {
        return e
    } catch {
        Issue.record("expected a TidemarkError, got \(error)")
        return nil
    }
}
