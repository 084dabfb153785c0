import Foundation
import Glibc
import TidemarkSystem

/// The process server's durable spool: append-only files of received
/// segments, made durable by group commit (one fdatasync covers every record
/// appended since the last one), read back by the uploader, deleted once
/// every record in a file is committed to target storage.
///
/// Format (`docs/spool-format.md`): files `spool-<index:20>.log`, a 16-byte
/// file header (`TMSPOOL1`, version u32 LE, 0 u32), then records: magic u32
/// `TMSR`, payload length u32, CRC32C u32 of the payload, 0 u32, payload (a
/// sealed segment, verbatim). All little-endian.
///
/// A failed fdatasync is fatal for its file: the file takes no more appends,
/// the records not yet durable in it are dropped (the agents still hold them
/// and re-send), and it is never synced again and trusted.
public final class Spool: @unchecked Sendable {
    public struct Location: Sendable, Equatable {
        public var fileIndex: UInt64
        public var offset: UInt64   // of the payload
        public var length: UInt32

        /// Appended before `position` (a value of `appendPosition`).
        public func isBefore(_ position: (fileIndex: UInt64, offset: UInt64)) -> Bool {
            fileIndex < position.fileIndex || (fileIndex == position.fileIndex && offset < position.offset)
        }
    }

    /// One spooled segment.
    public struct Record: Sendable {
        public var diskID: String
        public var sequence: UInt64
        public var location: Location
        /// What the appender attached to the record (the process server: the
        /// payload staged in memory, so the uploader need not read it back).
        /// Nil for records found in the spool at open.
        public var retained: (any AnyObject & Sendable)?

        public init(diskID: String, sequence: UInt64, location: Location, retained: (any AnyObject & Sendable)? = nil) {
            self.diskID = diskID
            self.sequence = sequence
            self.location = location
            self.retained = retained
        }
    }

    static let fileMagic: [UInt8] = Array("TMSPOOL1".utf8)
    static let fileVersion: UInt32 = 1
    static let fileHeaderBytes = 16
    static let recordMagic: UInt32 = 0x5253_4D54  // "TMSR" little-endian
    static let recordHeaderBytes = 16

    final class File {
        let index: UInt64
        let fd: FileDescriptor
        var size: UInt64
        var liveRecords = 0
        var failed = false
        var closedForAppend = false
        init(index: UInt64, fd: FileDescriptor, size: UInt64) {
            self.index = index
            self.fd = fd
            self.size = size
        }
    }

    public let directory: String
    public let maxBytes: UInt64
    private let lock = NSCondition()
    private var files: [UInt64: File] = [:]
    private var current: File
    private var usedBytes: UInt64 = 0
    private var pending: [Record] = []          // appended, not yet durable, in order
    private var appendedCount: UInt64 = 0
    /// Appended records made durable or dropped whose `onDurable` or
    /// `onDropped` call has returned.
    private var reportedCount: UInt64 = 0
    private var stopping = false

    /// Called on the sync thread, in append order, when records became durable.
    public var onDurable: @Sendable ([Record]) -> Void = { _ in }
    /// Called on the sync thread when a failed fdatasync dropped records that were not durable.
    public var onDropped: @Sendable ([Record]) -> Void = { _ in }

    private init(directory: String, maxBytes: UInt64, files: [UInt64: File], current: File, usedBytes: UInt64) {
        self.directory = directory
        self.maxBytes = maxBytes
        self.files = files
        self.current = current
        self.usedBytes = usedBytes
    }

    /// Opens (creating if needed) the spool in `directory`. `identify` reads a
    /// payload's disk id and sequence (the segment header). Returns the spool
    /// and the records left by an earlier run, already durable, in order.
    public static func open(directory: String, maxBytes: UInt64,
                            identify: (UnsafeRawBufferPointer) throws -> (diskID: String, sequence: UInt64)) throws
        -> (Spool, [Record])
    {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let names = try FileManager.default.contentsOfDirectory(atPath: directory)
            .filter { $0.hasPrefix("spool-") && $0.hasSuffix(".log") }.sorted()
        var files: [UInt64: File] = [:]
        var records: [Record] = []
        var used: UInt64 = 0
        var lastIndex: UInt64 = 0
        for (n, name) in names.enumerated() {
            guard let index = UInt64(name.dropFirst(6).dropLast(4)) else { continue }
            let path = directory + "/" + name
            let fd = try FileDescriptor(open: path, .readWrite, purpose: "opening spool file")
            let size = UInt64(try fd.stat().st_size)
            let isLast = n == names.count - 1
            let (found, validEnd) = try scan(fd: fd, path: path, size: size, index: index, isLast: isLast, identify: identify)
            if validEnd < size {
                Log.warning("spool \(path): cutting a torn record at offset \(validEnd) (\(size - validEnd) bytes) left by a crash")
                try fd.truncate(to: validEnd)
            }
            try fd.dataSync()
            let file = File(index: index, fd: fd, size: validEnd)
            file.liveRecords = found.count
            file.closedForAppend = true
            if found.isEmpty {
                unlink(path)
                continue
            }
            files[index] = file
            used += validEnd
            records += found
            lastIndex = max(lastIndex, index)
        }
        let current = try createFile(directory: directory, index: lastIndex + 1)
        files[current.index] = current
        used += current.size
        try syncDirectory(directory)
        let spool = Spool(directory: directory, maxBytes: maxBytes, files: files, current: current, usedBytes: used)
        return (spool, records)
    }

    private static func path(_ directory: String, _ index: UInt64) -> String {
        let digits = String(index)
        return directory + "/spool-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".log"
    }

    private static func createFile(directory: String, index: UInt64) throws -> File {
        let p = path(directory, index)
        let fd = try FileDescriptor(open: p, [.readWrite, .create, .exclusive], mode: 0o600, purpose: "creating spool file")
        var header = [UInt8](repeating: 0, count: fileHeaderBytes)
        header.replaceSubrange(0..<8, with: fileMagic)
        putLE32(&header, 8, fileVersion)
        try header.withUnsafeBytes { try fd.write($0, at: 0) }
        try fd.dataSync()
        return File(index: index, fd: fd, size: UInt64(fileHeaderBytes))
    }

    /// Validates a spool file's records; returns them and where the valid part ends.
    private static func scan(fd: FileDescriptor, path: String, size: UInt64, index: UInt64, isLast: Bool,
                             identify: (UnsafeRawBufferPointer) throws -> (diskID: String, sequence: UInt64)) throws
        -> ([Record], UInt64)
    {
        var header = [UInt8](repeating: 0, count: fileHeaderBytes)
        let n = try header.withUnsafeMutableBytes { try fd.read(into: $0, at: 0) }
        guard n == fileHeaderBytes, Array(header[0..<8]) == fileMagic else {
            throw TidemarkError(.corrupt, "spool file \(path) has no valid header",
                                hint: "move it out of the spool directory; the agents re-send what was not committed")
        }
        guard getLE32(header, 8) == fileVersion else {
            throw TidemarkError(.unsupported, "spool file \(path) has format version \(getLE32(header, 8)), this server reads \(fileVersion)")
        }
        var records: [Record] = []
        var offset = UInt64(fileHeaderBytes)
        var rh = [UInt8](repeating: 0, count: recordHeaderBytes)
        while offset < size {
            let torn = { (what: String) throws -> ([Record], UInt64) in
                if isLast { return (records, offset) }
                throw TidemarkError(.corrupt, "spool file \(path): \(what) at offset \(offset) in a file that was complete",
                                    hint: "the spool's storage lost data; move the file aside and let agents resync")
            }
            guard size - offset >= UInt64(recordHeaderBytes) else { return try torn("a truncated record header") }
            _ = try rh.withUnsafeMutableBytes { try fd.read(into: $0, at: offset) }
            let length = getLE32(rh, 4)
            guard getLE32(rh, 0) == recordMagic, length > 0,
                  UInt64(length) <= size - offset - UInt64(recordHeaderBytes) else { return try torn("a torn record") }
            var payload = [UInt8](repeating: 0, count: Int(length))
            _ = try payload.withUnsafeMutableBytes { try fd.read(into: $0, at: offset + UInt64(recordHeaderBytes)) }
            guard payload.withUnsafeBytes({ crc32c($0) }) == getLE32(rh, 8) else { return try torn("a record with a bad checksum") }
            let (disk, seq) = try payload.withUnsafeBytes { try identify($0) }
            records.append(Record(diskID: disk, sequence: seq,
                                  location: Location(fileIndex: index, offset: offset + UInt64(recordHeaderBytes), length: length)))
            offset += UInt64(recordHeaderBytes) + UInt64(length)
        }
        return (records, offset)
    }

    // MARK: Append and group commit

    /// Appends one segment. Blocks while the spool is full (backpressure:
    /// the connection stops reading, TCP pushes back on the agent). Throws
    /// when the spool cannot take it (I/O error) or the spool is stopping.
    ///
    /// `abandon` is asked while waiting for space: when it answers true
    /// (the connection was closed or replaced), the append gives up without
    /// writing anything.
    public func append(diskID: String, sequence: UInt64, payload: UnsafeRawBufferPointer,
                       retained: (any AnyObject & Sendable)? = nil,
                       abandon: () -> Bool = { false }) throws -> Record {
        precondition(payload.count > 0 && payload.count <= Int(UInt32.max))
        let need = UInt64(Self.recordHeaderBytes + payload.count)
        lock.lock()
        defer { lock.unlock() }
        var waited = 0
        while true {
            if stopping { throw TidemarkError(.state, "the server is stopping") }
            if abandon() {
                throw TidemarkError(.state, "\(diskID) #\(sequence) was not spooled: its connection closed while it waited for spool space")
            }
            if current.failed || current.size + need > ServerLimits.spoolFileBytesMax && current.size > UInt64(Self.fileHeaderBytes) {
                try rotateLocked()
            }
            if usedBytes + need <= maxBytes { break }
            waited += 1
            if waited % ServerLimits.spoolFullLogEverySteps == 1 {
                Log.warning("spool \(directory) is full (\(usedBytes) of \(maxBytes) bytes): holding back \(diskID) until the uploader frees space")
            }
            _ = lock.wait(until: Date(timeIntervalSinceNow: Double(ServerLimits.spoolFullWaitMs) / 1000))
        }
        var rh = [UInt8](repeating: 0, count: Self.recordHeaderBytes)
        putLE32(&rh, 0, Self.recordMagic)
        putLE32(&rh, 4, UInt32(payload.count))
        putLE32(&rh, 8, crc32c(payload))
        let file = current
        let start = file.size
        do {
            try rh.withUnsafeBytes { try file.fd.write($0, at: start) }
            try file.fd.write(payload, at: start + UInt64(Self.recordHeaderBytes))
        } catch let e as SystemError where e.errno == ENOSPC {
            // Nothing of this record counts; cut what was written and report
            // the disk full: the caller holds the connection back and retries.
            try? file.fd.truncate(to: start)
            throw SpoolFull(detail: "\(directory): no space left on the spool's filesystem")
        } catch {
            failLocked(file, because: "write failed: \(error)")
            throw error
        }
        file.size += need
        file.liveRecords += 1
        usedBytes += need
        let record = Record(diskID: diskID, sequence: sequence,
                            location: Location(fileIndex: file.index, offset: start + UInt64(Self.recordHeaderBytes),
                                               length: UInt32(payload.count)),
                            retained: retained)
        pending.append(record)
        appendedCount += 1
        lock.broadcast()
        return record
    }

    /// The spool's filesystem is full: nothing was appended.
    public struct SpoolFull: Error, CustomStringConvertible {
        public var detail: String
        public var description: String { detail }
    }

    /// Waits until everything appended before the call is durable (or
    /// dropped by a failed sync) and `onDurable` or `onDropped` has returned
    /// for it. False when the spool stopped first. Never call it from
    /// those callbacks (they would wait for themselves).
    @discardableResult
    public func syncAll() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        let target = appendedCount
        while reportedCount < target && !stopping { lock.wait() }
        return reportedCount >= target
    }

    /// The sync thread's loop: one fdatasync per batch of appends.
    public func runSyncLoop() {
        while true {
            lock.lock()
            while pending.isEmpty && !stopping { lock.wait() }
            if pending.isEmpty && stopping { lock.unlock(); return }
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            var byFile: [UInt64: File] = [:]
            for r in batch { byFile[r.location.fileIndex] = files[r.location.fileIndex] }
            lock.unlock()

            var failedFiles: Set<UInt64> = []
            for (index, file) in byFile where !file.failed {
                do { try file.fd.dataSync() } catch {
                    failedFiles.insert(index)
                    Log.error("spool \(Self.path(directory, index)): fdatasync failed (\(error)); the file takes no more appends and its unsynced records are dropped (agents re-send them)")
                }
            }
            lock.lock()
            var durable: [Record] = []
            var dropped: [Record] = []
            for r in batch {
                let file = files[r.location.fileIndex]
                if failedFiles.contains(r.location.fileIndex) || file?.failed == true {
                    dropped.append(r)
                    if let file { file.liveRecords -= 1 }
                } else {
                    durable.append(r)
                }
            }
            for index in failedFiles { if let f = files[index] { failLocked(f, because: "fdatasync failed") } }
            lock.unlock()
            if !dropped.isEmpty { onDropped(dropped) }
            if !durable.isEmpty { onDurable(durable) }
            lock.lock()
            reportedCount += UInt64(batch.count)
            lock.broadcast()
            lock.unlock()
        }
    }

    /// Marks a file failed: no appends, never synced again. Lock held.
    private func failLocked(_ file: File, because: String) {
        guard !file.failed else { return }
        file.failed = true
        file.closedForAppend = true
        Log.error("spool \(Self.path(directory, file.index)) failed: \(because)")
    }

    private func rotateLocked() throws {
        current.closedForAppend = true
        let old = current
        let next = try Self.createFile(directory: directory, index: current.index + 1)
        files[next.index] = next
        current = next
        usedBytes += next.size
        try Self.syncDirectory(directory)
        deleteIfDoneLocked(old)
    }

    // MARK: Read back and release

    /// Where the next record will be appended: every record appended so far
    /// has a location `isBefore` it.
    public var appendPosition: (fileIndex: UInt64, offset: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        return (current.index, current.size)
    }

    /// Reads a record's payload back (for the uploader) and verifies it: the
    /// record header's magic and length, and the CRC32C of the payload that
    /// the header stored when the record was appended. A record of a file
    /// whose fdatasync failed is read from the storage, not from the page
    /// cache (whose pages may no longer say what the storage holds).
    /// Throws `.corrupt` when the record does not verify.
    public func read(_ record: Record) throws -> [UInt8] {
        lock.lock()
        let file = files[record.location.fileIndex]
        let failed = file?.failed ?? false
        lock.unlock()
        guard let file else {
            throw TidemarkError(.state, "spool file \(record.location.fileIndex) of \(record.diskID) #\(record.sequence) is gone")
        }
        if failed {
            let start = record.location.offset - UInt64(Self.recordHeaderBytes)
            _ = posix_fadvise(file.fd.rawValue, off_t(start), off_t(UInt64(Self.recordHeaderBytes) + UInt64(record.location.length)),
                              POSIX_FADV_DONTNEED)
        }
        var rh = [UInt8](repeating: 0, count: Self.recordHeaderBytes)
        _ = try rh.withUnsafeMutableBytes { try file.fd.read(into: $0, at: record.location.offset - UInt64(Self.recordHeaderBytes)) }
        // Not zeroed first: a short read fails the check below.
        var n = 0
        let payload = try [UInt8](unsafeUninitializedCapacity: Int(record.location.length)) { b, initialized in
            n = try file.fd.read(into: UnsafeMutableRawBufferPointer(b), at: record.location.offset)
            initialized = b.count
        }
        guard n == payload.count, getLE32(rh, 0) == Self.recordMagic, getLE32(rh, 4) == record.location.length,
              payload.withUnsafeBytes({ crc32c($0) }) == getLE32(rh, 8) else {
            throw TidemarkError(.corrupt, "spool \(Self.path(directory, file.index)) offset \(record.location.offset): record of \(record.diskID) #\(record.sequence) reads back damaged",
                                hint: "the spool's storage is failing; the agent still holds the bits and re-sends after a reconnect")
        }
        return payload
    }

    /// The uploader is done with a record (committed, or given up): its file
    /// is deleted once nothing in it is needed.
    public func release(_ record: Record) {
        lock.lock()
        defer { lock.unlock() }
        guard let file = files[record.location.fileIndex] else { return }
        file.liveRecords -= 1
        deleteIfDoneLocked(file)
    }

    private func deleteIfDoneLocked(_ file: File) {
        guard file.liveRecords <= 0, file.closedForAppend, file !== current else { return }
        let p = Self.path(directory, file.index)
        if file.failed {
            // Kept for inspection; it no longer counts against the spool.
            _ = Glibc.rename(p, p + ".failed")
        } else {
            unlink(p)
        }
        files[file.index] = nil
        usedBytes -= min(usedBytes, file.size)
        lock.broadcast()
    }

    public func stop() {
        lock.lock()
        stopping = true
        lock.broadcast()
        lock.unlock()
    }

    static func syncDirectory(_ directory: String) throws {
        let fd = try FileDescriptor(open: directory, .readOnly, purpose: "syncing spool directory")
        try fd.sync()
    }
}

@inline(__always) func putLE32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
    b[at] = UInt8(truncatingIfNeeded: v)
    b[at + 1] = UInt8(truncatingIfNeeded: v >> 8)
    b[at + 2] = UInt8(truncatingIfNeeded: v >> 16)
    b[at + 3] = UInt8(truncatingIfNeeded: v >> 24)
}

@inline(__always) func getLE32(_ b: [UInt8], _ at: Int) -> UInt32 {
    UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
}
