import Foundation
import Glibc
import Testing
import TidemarkTesting
@testable import TidemarkSystem

// MARK: - Fixtures


/// A temporary directory removed on deinit.
private final class TempDir {
    let path: String
    init() throws {
        var template = Array("/\(NSTemporaryDirectory().split(separator: "/").joined(separator: "/"))/tidemark-chunkreader-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw SystemError(call: "mkdtemp", errno: errno, context: "test") }
        path = String(cString: p)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { "\(path)/\(name)" }
}

/// The test pattern: each 8-byte little-endian word holds its own offset.
private func patternBytes(size: Int) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: size)
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < size {
            let word = UInt64(offset).littleEndian
            withUnsafeBytes(of: word) { w in
                let n = min(8, size - offset)
                raw.baseAddress!.advanced(by: offset).copyMemory(from: w.baseAddress!, byteCount: n)
            }
            offset += 8
        }
    }
    return bytes
}

private func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    let fd = try FileDescriptor(open: path, [.writeOnly, .create, .truncate], mode: 0o600)
    try bytes.withUnsafeBytes { try fd.write($0, at: 0) }
    try fd.sync()
}

/// What the reader must deliver, computed independently of its coalescing:
/// every elementary interval between extent endpoints that some extent
/// covers, clipped to `size`, merged when adjacent.
private func referenceCoverage(_ extents: [ByteExtent], size: UInt64) -> [Range<UInt64>] {
    func end(_ e: ByteExtent) -> UInt64 { e.length > UInt64.max - e.offset ? UInt64.max : e.offset + e.length }
    var points = Set<UInt64>([0, size])
    for e in extents { points.insert(min(e.offset, size)); points.insert(min(end(e), size)) }
    let sorted = points.sorted()
    var result: [Range<UInt64>] = []
    for (a, b) in zip(sorted, sorted.dropFirst()) where a < b {
        guard extents.contains(where: { $0.offset <= a && end($0) >= b && $0.length > 0 }) else { continue }
        if let last = result.last, last.upperBound == a {
            result[result.count - 1] = last.lowerBound..<b
        } else {
            result.append(a..<b)
        }
    }
    return result
}

/// Random extent sets: empty ones, tiny and large ones, some past EOF, some
/// adjacent to or overlapping the previous one, and absurd lengths.
private func randomExtents(_ rng: inout SplitMix64, size: UInt64) -> [ByteExtent] {
    let count = Int.random(in: 0...16, using: &rng)
    var extents: [ByteExtent] = []
    for _ in 0..<count {
        let previous = extents.last
        var offset = UInt64.random(in: 0..<(size + 200_000), using: &rng)
        var length: UInt64
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: length = 0
        case 1: length = UInt64.random(in: 1..<16, using: &rng)
        case 2: length = UInt64.random(in: 1...(2 << 20), using: &rng)
        case 3: length = UInt64.max - offset  // up to the end of everything
        default: length = UInt64.random(in: 1...300_000, using: &rng)
        }
        if let previous, Int.random(in: 0..<4, using: &rng) == 0 {
            let previousEnd = previous.length > UInt64.max - previous.offset ? UInt64.max : previous.offset + previous.length
            if Bool.random(using: &rng) {
                offset = previousEnd  // adjacent
            } else if previous.length > 0 {
                offset = previous.offset + UInt64.random(in: 0..<min(previous.length, 1 << 30), using: &rng)  // overlapping
            }
            if offset == UInt64.max { offset = 0 }
            length = min(length, UInt64.max - offset)
        }
        extents.append(ByteExtent(offset: offset, length: length))
    }
    return extents
}

/// Reads `extents` and checks the pieces: ascending, disjoint, each at most
/// maxRequestBytes, exactly covering the reference coverage, and equal to `content`.
private func readAndVerify(
    _ reader: ChunkReader, _ extents: [ByteExtent], content: [UInt8],
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    var delivered: [Range<UInt64>] = []
    var mismatches = 0
    try reader.read(extents) { offset, bytes in
        let end = offset + UInt64(bytes.count)
        #expect(bytes.count > 0, sourceLocation: sourceLocation)
        #expect(bytes.count <= reader.options.maxRequestBytes, sourceLocation: sourceLocation)
        if let last = delivered.last {
            #expect(offset >= last.upperBound, "piece at \(offset) after piece ending at \(last.upperBound)", sourceLocation: sourceLocation)
        }
        if end <= UInt64(content.count) {
            content.withUnsafeBytes { expected in
                if memcmp(bytes.baseAddress!, expected.baseAddress! + Int(offset), bytes.count) != 0 { mismatches += 1 }
            }
        } else {
            mismatches += 1
        }
        if let last = delivered.last, last.upperBound == offset {
            delivered[delivered.count - 1] = last.lowerBound..<end
        } else {
            delivered.append(offset..<end)
        }
    }
    #expect(mismatches == 0, "pieces whose bytes differ from the file, for extents \(extents)", sourceLocation: sourceLocation)
    #expect(delivered == referenceCoverage(extents, size: reader.sizeBytes), "for extents \(extents)", sourceLocation: sourceLocation)
}

/// Reads `extents` with `read(_:into:_:)` into a destination with room to
/// spare (filled with a marker first) and checks: the ranges follow each
/// other from byte 0, each piece's offset ascends, the destination holds
/// exactly the reference coverage's bytes concatenated, and nothing after
/// them was written.
private func readIntoAndVerify(
    _ reader: ChunkReader, _ extents: [ByteExtent], content: [UInt8],
    sourceLocation: SourceLocation = #_sourceLocation
) throws {
    let coverage = referenceCoverage(extents, size: reader.sizeBytes)
    let total = coverage.reduce(0) { $0 + Int($1.upperBound - $1.lowerBound) }
    #expect(reader.requestedBytes(extents) == total, sourceLocation: sourceLocation)
    let spare = 8192
    let destination = AlignedBuffer(count: total + spare, alignment: ChunkReader.bufferAlignmentBytes, zeroed: false)
    destination.pointer.initializeMemory(as: UInt8.self, repeating: 0xA5, count: destination.count)
    var next = 0
    var lastOffset: UInt64?
    try reader.read(extents, into: destination) { offset, range in
        #expect(range.lowerBound == next, "range \(range) after \(next)", sourceLocation: sourceLocation)
        #expect(range.count > 0 && range.count <= reader.options.maxRequestBytes, sourceLocation: sourceLocation)
        if let lastOffset { #expect(offset > lastOffset, sourceLocation: sourceLocation) }
        lastOffset = offset
        next = range.upperBound
    }
    #expect(next == total, "for extents \(extents)", sourceLocation: sourceLocation)
    var expected: [UInt8] = []
    for r in coverage { expected += content[Int(r.lowerBound)..<Int(r.upperBound)] }
    let got = Array(UnsafeRawBufferPointer(start: destination.pointer, count: total))
    #expect(got == expected, "destination differs from the file, for extents \(extents)", sourceLocation: sourceLocation)
    let after = UnsafeRawBufferPointer(start: destination.pointer + total, count: spare)
    #expect(!after.contains { $0 != 0xA5 }, "bytes written past the requested ones, for extents \(extents)", sourceLocation: sourceLocation)
}

private func openReader(_ path: String, _ options: ChunkReaderOptions) throws -> ChunkReader {
    // The internal initializer ignores a TIDEMARK_DISABLE_IO_URING the test
    // runner may have set, so these tests exercise both backends.
    try ChunkReader(path: path, options: options, log: { print("chunk reader: \($0)") }, disableIOUringValue: nil)
}

/// The requested backend, or a documented fallback; notes when io_uring is
/// unavailable on this machine (then the io_uring cases run on pread).
private func checkBackend(_ reader: ChunkReader, requested: ReadBackend, direct: Bool) {
    if reader.backend != requested {
        print("note: \(reader.path): requested \(requested), running on \(reader.backend): \(reader.fallbackReason ?? "?")")
        #expect(reader.fallbackReason?.contains("io_uring") == true)
    }
    if direct && !reader.isDirect { #expect(reader.fallbackReason?.contains("O_DIRECT") == true) }
    if reader.backend == requested && reader.isDirect == direct { #expect(reader.fallbackReason == nil) }
}

// MARK: - Regular files

@Suite struct ChunkReaderFileTests {
    @Test(arguments: [ReadBackend.ioUring, .pread], [true, false])
    func randomExtentSets(backend: ReadBackend, direct: Bool) throws {
        let dir = try TempDir()
        let size = 3 << 20 + 1234  // not a multiple of any block size
        let content = patternBytes(size: size)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"),
                                    .init(queueDepth: 8, maxRequestBytes: 64 << 10, direct: direct, preferredBackend: backend))
        checkBackend(reader, requested: backend, direct: direct)
        #expect(reader.sizeBytes == UInt64(size))
        var rng = SplitMix64(seed: 0x7DE_3A4C + UInt64(direct ? 1 : 0) + (backend == .pread ? 2 : 0))
        for _ in 0..<40 {
            let extents = randomExtents(&rng, size: UInt64(size))
            try readAndVerify(reader, extents, content: content)
            try readIntoAndVerify(reader, extents, content: content)
        }
        // The fixed cases, spelled out.
        let s = UInt64(size)
        try readAndVerify(reader, [], content: content)
        try readAndVerify(reader, [ByteExtent(offset: 100, length: 0)], content: content)
        try readAndVerify(reader, [ByteExtent(offset: s, length: 4096), ByteExtent(offset: s + 10, length: 1)], content: content)
        try readAndVerify(reader, [ByteExtent(offset: s - 5, length: 4096)], content: content)  // unaligned tail past EOF
        try readAndVerify(reader, [ByteExtent(offset: 8192, length: 4096), ByteExtent(offset: 4096, length: 4096),
                                   ByteExtent(offset: 12288, length: 1)], content: content)  // adjacent, unsorted
        try readAndVerify(reader, [ByteExtent(offset: 1000, length: 9000), ByteExtent(offset: 5000, length: 100),
                                   ByteExtent(offset: 9999, length: 70_000)], content: content)  // overlapping
        try readAndVerify(reader, [ByteExtent(offset: 0, length: UInt64.max)], content: content)
        try readIntoAndVerify(reader, [ByteExtent(offset: s - 5, length: 4096)], content: content)
        try readIntoAndVerify(reader, [ByteExtent(offset: 1000, length: 9000), ByteExtent(offset: 5000, length: 100),
                                       ByteExtent(offset: 9999, length: 70_000)], content: content)
        try readIntoAndVerify(reader, [ByteExtent(offset: 0, length: UInt64.max)], content: content)
    }

    /// Aligned extents (chunks) go straight into the destination: the
    /// reader makes no buffers of its own; an unaligned one (the end of a
    /// file whose size is not a multiple of the block) takes one.
    @Test(arguments: [ReadBackend.ioUring, .pread], [true, false])
    func alignedExtentsAreReadStraightIntoTheDestination(backend: ReadBackend, direct: Bool) throws {
        let dir = try TempDir()
        let size = 4 << 20 + 1234
        let content = patternBytes(size: size)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"),
                                    .init(queueDepth: 8, maxRequestBytes: 256 << 10, direct: direct, preferredBackend: backend))
        checkBackend(reader, requested: backend, direct: direct)
        let chunk: UInt64 = 64 << 10
        let chunks: [UInt64] = [0, 1, 2, 5, 6, 7, 8, 9, 13, 30, 31, 32, 40, 41, 63]
        try readIntoAndVerify(reader, chunks.map { ByteExtent(offset: $0 * chunk, length: chunk) }, content: content)
        #expect(reader.buffersAllocatedForTesting == 0)
        // The last chunk is cut short by the end of the file: read aligned outward, then copied.
        try readIntoAndVerify(reader, [ByteExtent(offset: 60 * chunk, length: 10 * chunk)], content: content)
        #expect(reader.buffersAllocatedForTesting == (reader.isDirect ? 1 : 0))
    }

    /// `body` may change the destination before the current piece while
    /// later reads are in flight (what in-place compaction does).
    @Test(arguments: [ReadBackend.ioUring, .pread])
    func bodyMayRewriteDeliveredBytes(backend: ReadBackend) throws {
        let dir = try TempDir()
        let content = patternBytes(size: 2 << 20)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"), .init(queueDepth: 8, maxRequestBytes: 64 << 10, preferredBackend: backend))
        let destination = AlignedBuffer(count: 2 << 20)
        try reader.read([ByteExtent(offset: 0, length: 2 << 20)], into: destination) { _, range in
            if range.lowerBound > 0 { memset(destination.pointer, 0x5A, range.lowerBound) }
        }
        let bytes = UnsafeRawBufferPointer(start: destination.pointer, count: destination.count)
        #expect(!bytes[..<(2 << 20 - 64 << 10)].contains { $0 != 0x5A })
        #expect(Array(bytes[(2 << 20 - 64 << 10)...]) == Array(content[(2 << 20 - 64 << 10)...]))
    }

    /// Reads that return less than asked in the middle of a piece are
    /// continued (the kernel may do that; a test hook caps each read).
    @Test(arguments: [ReadBackend.ioUring, .pread], [true, false])
    func shortReadsAreResubmitted(backend: ReadBackend, direct: Bool) throws {
        let dir = try TempDir()
        let size = 1 << 20 + 333
        let content = patternBytes(size: size)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"),
                                    .init(queueDepth: 5, maxRequestBytes: 100_000, direct: direct, preferredBackend: backend))
        reader.readLengthLimitForTesting = 5000
        var rng = SplitMix64(seed: 99)
        for _ in 0..<10 {
            let extents = randomExtents(&rng, size: UInt64(size))
            try readAndVerify(reader, extents, content: content)
            try readIntoAndVerify(reader, extents, content: content)
        }
        try readAndVerify(reader, [ByteExtent(offset: 0, length: UInt64(size))], content: content)
        try readIntoAndVerify(reader, [ByteExtent(offset: 0, length: 1 << 20)], content: content)
    }

    @Test func adjacentExtentsAreCoalescedIntoFullRequests() throws {
        let dir = try TempDir()
        let content = patternBytes(size: 1 << 20)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"), .init(queueDepth: 4, maxRequestBytes: 256 << 10))
        // 256 adjacent 4 KiB extents, shuffled: four full 256 KiB pieces.
        var rng = SplitMix64(seed: 42)
        let extents = (0..<256).map { ByteExtent(offset: UInt64($0) * 4096, length: 4096) }.shuffled(using: &rng)
        var pieces: [ByteExtent] = []
        try reader.read(extents) { offset, bytes in pieces.append(ByteExtent(offset: offset, length: UInt64(bytes.count))) }
        #expect(pieces == (0..<4).map { ByteExtent(offset: UInt64($0) << 18, length: 256 << 10) })
    }

    @Test(arguments: [ReadBackend.ioUring, .pread])
    func wholeFileWithDefaultOptions(backend: ReadBackend) throws {
        let dir = try TempDir()
        let content = patternBytes(size: 5 << 20 + 7)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"), .init(preferredBackend: backend))
        checkBackend(reader, requested: backend, direct: true)
        var next: UInt64 = 0
        var equal = true
        try reader.readAll { offset, bytes in
            #expect(offset == next)
            content.withUnsafeBytes { equal = equal && memcmp(bytes.baseAddress!, $0.baseAddress! + Int(offset), bytes.count) == 0 }
            next = offset + UInt64(bytes.count)
        }
        #expect(next == UInt64(content.count))
        #expect(equal)
    }

    /// Requests smaller than the O_DIRECT alignment: each piece is read as a whole block.
    @Test(arguments: [ReadBackend.ioUring, .pread])
    func requestsSmallerThanTheAlignment(backend: ReadBackend) throws {
        let dir = try TempDir()
        let content = patternBytes(size: 40_000)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"), .init(queueDepth: 3, maxRequestBytes: 512, preferredBackend: backend))
        try readAndVerify(reader, [ByteExtent(offset: 0, length: 40_000)], content: content)
        try readAndVerify(reader, [ByteExtent(offset: 4000, length: 300), ByteExtent(offset: 8190, length: 1000)], content: content)
    }

    @Test func emptyFile() throws {
        let dir = try TempDir()
        try writeFile(dir.file("empty"), [])
        let reader = try openReader(dir.file("empty"), .init())
        #expect(reader.sizeBytes == 0)
        var calls = 0
        try reader.read([ByteExtent(offset: 0, length: 1 << 20)]) { _, _ in calls += 1 }
        #expect(calls == 0)
    }

    /// A file that shrinks after the reader measured it: EOF inside a
    /// requested range is an error naming the path and range; the reader
    /// stays usable.
    @Test(arguments: [ReadBackend.ioUring, .pread])
    func shortReadIsAnError(backend: ReadBackend) throws {
        let dir = try TempDir()
        let path = dir.file("shrinking")
        let content = patternBytes(size: 1 << 20)
        try writeFile(path, content)
        let reader = try openReader(path, .init(queueDepth: 4, maxRequestBytes: 64 << 10, preferredBackend: backend))
        _ = try FileDescriptor(open: path, .writeOnly).truncate(to: 300_000)
        var deliveredEnd: UInt64 = 0
        let error = #expect(throws: TidemarkError.self) {
            try reader.read([ByteExtent(offset: 0, length: 1 << 20)]) { offset, bytes in
                deliveredEnd = offset + UInt64(bytes.count)
            }
        }
        // Everything before the failing piece was delivered first, as with pread.
        #expect(deliveredEnd == 262_144)
        #expect(error?.kind == .io)
        #expect(error?.message.contains(path) == true)
        #expect(error?.message.contains("at offset 262144") == true, "\(String(describing: error))")
        try readAndVerify(reader, [ByteExtent(offset: 0, length: 300_000)], content: content)
    }

    /// An error thrown by body stops the read; reads in flight are reaped
    /// and the next read works.
    @Test(arguments: [ReadBackend.ioUring, .pread])
    func bodyErrorStopsTheRead(backend: ReadBackend) throws {
        struct Stop: Error {}
        let dir = try TempDir()
        let content = patternBytes(size: 2 << 20)
        try writeFile(dir.file("data"), content)
        let reader = try openReader(dir.file("data"), .init(queueDepth: 8, maxRequestBytes: 64 << 10, preferredBackend: backend))
        var calls = 0
        #expect(throws: Stop.self) {
            try reader.readAll { _, _ in
                calls += 1
                if calls == 3 { throw Stop() }
            }
        }
        #expect(calls == 3)
        try readAndVerify(reader, [ByteExtent(offset: 0, length: 2 << 20)], content: content)
    }
}

// MARK: - Fallbacks and errors

@Suite struct ChunkReaderFallbackTests {
    @Test func disabledByEnvironmentVariable() throws {
        let dir = try TempDir()
        try writeFile(dir.file("data"), patternBytes(size: 10_000))
        let logged = LockedStrings()
        let reader = try ChunkReader(path: dir.file("data"), options: .init(), log: { logged.append($0) },
                                     disableIOUringValue: "1")
        #expect(reader.backend == .pread)
        let reason = try #require(reader.fallbackReason)
        #expect(reason.contains("io_uring"))
        #expect(reason.contains(ChunkReader.disableIOUringVariable))
        #expect(logged.values.contains { $0.contains("io_uring") && $0.contains(dir.file("data")) })

        // Empty or "0" does not disable it.
        let notDisabled = try ChunkReader(path: dir.file("data"), options: .init(), log: { _ in }, disableIOUringValue: "0")
        #expect(notDisabled.fallbackReason?.contains(ChunkReader.disableIOUringVariable) != true)
    }

    @Test func forcedPreadIsAsRequested() throws {
        let dir = try TempDir()
        try writeFile(dir.file("data"), patternBytes(size: 10_000))
        let reader = try ChunkReader(path: dir.file("data"), options: .init(direct: false, preferredBackend: .pread),
                                     log: { _ in }, disableIOUringValue: "1")
        #expect(reader.backend == .pread)
        #expect(reader.fallbackReason == nil)
        #expect(reader.ioAlignmentBytes == 1)
    }

    @Test func nonexistentPath() throws {
        let path = "/nonexistent/tidemark/disk"
        let error = #expect(throws: SystemError.self) { try ChunkReader(path: path) }
        #expect(error?.errno == ENOENT)
        #expect(error?.description.contains(path) == true, "\(String(describing: error))")
    }

    @Test func directoryIsRejected() throws {
        let dir = try TempDir()
        #expect(throws: (any Error).self) { try ChunkReader(path: dir.path) }
        do {
            _ = try ChunkReader(path: dir.path)
        } catch {
            #expect("\(error)".contains(dir.path))
        }
    }

    @Test func invalidOptions() throws {
        let dir = try TempDir()
        try writeFile(dir.file("data"), [1, 2, 3])
        for options in [ChunkReaderOptions(queueDepth: 0), .init(queueDepth: ChunkReaderOptions.maxQueueDepth + 1),
                        .init(maxRequestBytes: 100), .init(maxRequestBytes: ChunkReaderOptions.maxRequestBytesLimit + 1),
                        .init(queueDepth: 256, maxRequestBytes: 64 << 20)] {
            let error = #expect(throws: TidemarkError.self) { try ChunkReader(path: dir.file("data"), options: options) }
            #expect(error?.kind == .invalidArgument)
        }
    }

    @Test func coalesce() {
        let c = ChunkReader.coalesce(
            [ByteExtent(offset: 50, length: 10), ByteExtent(offset: 0, length: 10), ByteExtent(offset: 10, length: 5),
             ByteExtent(offset: 55, length: 100), ByteExtent(offset: 30, length: 0), ByteExtent(offset: 200, length: 1),
             ByteExtent(offset: 90, length: .max - 90)],
            clippedTo: 120)
        #expect(c == [0..<15, 50..<120])
    }
}

private final class LockedStrings: @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [String] = []
    func append(_ s: String) { lock.withLock { storage.append(s) } }
    var values: [String] { lock.withLock { storage } }
}

// MARK: - A real block device

/// Skips (prints why) when loop devices or io_uring cannot be used here;
/// under CI=true that is a failure instead, so the integration path is never
/// silently lost.
private func requireEnvironment(
    _ ok: Bool, _ why: @autoclosure () -> String, skipping what: String = "the loop device test"
) -> Bool {
    if ok { return true }
    if ProcessInfo.processInfo.environment["CI"] == "true" {
        Issue.record("\(what) cannot run under CI=true: \(why())")
    } else {
        print("skipping \(what): \(why())")
    }
    return false
}

private func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

@Suite struct ChunkReaderLoopDeviceTests {
    @Test(.requiresRoot, arguments: [512, 4096])
    func loopDeviceWithDirectIOUring(sectorSize: Int) throws {
        let losetup = try #require(([ "/usr/sbin/losetup", "/sbin/losetup", "/usr/bin/losetup"] as [String]).first { access($0, X_OK) == 0 },
                                   "losetup is not executable in /usr/sbin, /sbin or /usr/bin")

        let dir = try TempDir()
        let size = 8 << 20
        var rng = SplitMix64(seed: UInt64(sectorSize))
        var content = patternBytes(size: size)
        for i in stride(from: 0, to: size, by: 4096) { content[i + 5] ^= UInt8(truncatingIfNeeded: rng.next()) }
        try writeFile(dir.file("backing"), content)

        let attach = try run(losetup, ["-f", "--show", "--direct-io=on", "--sector-size", "\(sectorSize)", dir.file("backing")])
        guard requireEnvironment(attach.status == 0, "losetup failed (\(attach.status)): \(attach.output)") else { return }
        let device = attach.output.split(separator: "\n").last.map(String.init) ?? ""
        defer {
            let detach = try? run(losetup, ["-d", device])
            if detach?.status != 0 { Issue.record("losetup -d \(device) failed: \(detach?.output ?? "")") }
        }
        #expect(device.hasPrefix("/dev/loop"), "losetup said: \(attach.output)")

        let reader = try openReader(device, .init(queueDepth: 16, maxRequestBytes: 1 << 20))
        // Without io_uring the device is still checked, through pread.
        if requireEnvironment(reader.backend == .ioUring, "the reader fell back: \(reader.fallbackReason ?? "")",
                              skipping: "the io_uring part of the loop device test (checking through pread)") {
            #expect(reader.fallbackReason == nil)
        }
        #expect(reader.isDirect)
        #expect(reader.sizeBytes == UInt64(size))
        #expect(reader.ioAlignmentBytes == sectorSize)

        try readAndVerify(reader, [ByteExtent(offset: 0, length: reader.sizeBytes)], content: content)
        for _ in 0..<20 {
            let extents = randomExtents(&rng, size: UInt64(size))
            try readAndVerify(reader, extents, content: content)
            try readIntoAndVerify(reader, extents, content: content)
        }
        try readAndVerify(reader, [ByteExtent(offset: UInt64(size) - 100, length: 1 << 20)], content: content)
        // Chunks, as the replicator reads them: straight into the destination.
        let fresh = try openReader(device, .init(queueDepth: 16, maxRequestBytes: 1 << 20))
        try readIntoAndVerify(fresh, [0, 3, 4, 5, 9, 100, 101, 127].map { ByteExtent(offset: UInt64($0) << 16, length: 1 << 16) },
                              content: content)
        try readIntoAndVerify(fresh, [ByteExtent(offset: 0, length: fresh.sizeBytes)], content: content)
        #expect(fresh.buffersAllocatedForTesting == 0)
    }
}
