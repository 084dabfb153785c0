import Foundation
import Glibc
import TidemarkSystem
import TidemarkTracking

/// The shutdown seal (docs/shutdown-seal.md is the normative description):
/// how an orderly reboot keeps every tracked write without a resync.
///
/// The agent stops long before the last writes of a shutdown (journald,
/// unmounts, the final remount read-only of root), and after that no
/// filesystem can be written. So at an orderly stop the agent *arms* a
/// preallocated file whose blocks it located with FIEMAP, and the
/// systemd-shutdown hook (`tidemark-agent shutdown-seal`), run after every
/// filesystem is unmounted or read-only, snapshots the pinned kernel maps and
/// writes them as the *sealed* record, raw, to those blocks. At the next
/// start the agent merges the sealed extents into each `.hrl` that recorded
/// the same nonce, and marks the seal consumed.
public enum ShutdownSeal {
    public static let fileName = "shutdown.seal"
    /// In the run directory (tmpfs): a copy of the armed region, which the
    /// hook reads because the state directory may be unmounted by then.
    public static let locatorName = "shutdown-seal.armed"

    static let magic: [UInt8] = Array("TMSEAL\r\n".utf8)
    static let version: UInt32 = 1
    static let pageSize = 4096
    static let fileSizeBytes = Limits.shutdownSealFileBytes
    /// Pages 0–15: the armed record (header page, then disk entries).
    static let armedRegionBytes = 65_536
    static let entryOffset = 4096
    static let entrySize = 1024
    /// Page 16: the sealed (or consumed) header; pages 17…: extents.
    static let sealedOffset = 65_536
    static let extentsOffset = 69_632
    static let extentSize = 16
    static let resultsOffset = 128
    static let resultSize = 32

    enum Kind: UInt32 {
        case armed = 1, sealed = 2, consumed = 3
    }

    /// What the hook found for one disk.
    public enum DiskStatus: UInt32, Sendable, CustomStringConvertible {
        case complete = 0
        case overflow = 1
        case recursionMiss = 2
        case tooManyExtents = 3
        case slotChanged = 4
        case completionDeficit = 5

        public var description: String {
            switch self {
            case .complete: "complete"
            case .overflow: "the tracer had overflowed (a request it could not mark bit by bit)"
            case .recursionMiss: "the kernel had skipped the tracer at least once since the agent's last drain (recursion miss)"
            case .tooManyExtents: "more dirty extents than the seal holds (\(Limits.shutdownSealExtentsMax) for all disks)"
            case .slotChanged: "the pinned tracer slot was no longer the one the agent armed (detached or replaced)"
            case .completionDeficit: "the kernel had completed writes on the disk that the tracer did not see (completion cross-check)"
            }
        }
    }

    struct ArmedDisk: Equatable {
        var slot: UInt32
        var regionDev: UInt32
        var wholeDev: UInt32
        var chunkSizeBytes: UInt32
        var startSector: UInt64
        var nrSectors: UInt64
        var nrChunks: UInt64
        var attachedUnixNs: UInt64
        var diskID: String
        var identity: String
        var hrlPath: String
    }

    struct Armed: Equatable {
        var nonce: [UInt8]
        var bootID: String
        var armedUnixNs: UInt64
        var sealDev: UInt32
        var fileExtents: [FileExtent]
        var sealPath: String
        var disks: [ArmedDisk]
    }

    struct DiskResult: Equatable {
        var slot: UInt32
        var status: DiskStatus
        var firstExtent: UInt32
        var extentCount: UInt32
        var dirtyChunks: UInt64
    }

    struct Sealed: Equatable {
        var kind: Kind
        var nonce: [UInt8]
        var bootID: String
        var unixNs: UInt64
        var results: [DiskResult]
        var extents: [ChunkExtent]
    }

    struct FormatError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    // MARK: - Encoding

    /// A NUL-padded UTF-8 field of `size` bytes: at most size − 1 bytes,
    /// cut at a scalar boundary (as in the `.hrl`).
    static func putString(_ b: UnsafeMutableRawBufferPointer, _ o: Int, _ size: Int, _ s: String) {
        let bytes = Array(HRLFormat.fieldValue(s, size: size).utf8)
        for i in 0..<size { b[o + i] = i < bytes.count ? bytes[i] : 0 }
    }

    static func getString(_ b: UnsafeRawBufferPointer, _ o: Int, _ size: Int) -> String {
        let field = UnsafeRawBufferPointer(rebasing: b[o..<(o + size)])
        return String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
    }

    static func pageCRC(_ b: UnsafeRawBufferPointer, at o: Int) -> UInt32 {
        crc32c(UnsafeRawBufferPointer(rebasing: b[o..<(o + 4092)]))
    }

    static func putHeader(_ b: UnsafeMutableRawBufferPointer, _ o: Int, kind: Kind, nonce: [UInt8], bootID: String, unixNs: UInt64) {
        for (i, m) in magic.enumerated() { b[o + i] = m }
        LittleEndian.store(version, into: b, at: o + 8)
        LittleEndian.store(kind.rawValue, into: b, at: o + 12)
        for i in 0..<16 { b[o + 16 + i] = nonce[i] }
        putString(b, o + 32, 64, bootID)
        LittleEndian.store(unixNs, into: b, at: o + 96)
    }

    /// The armed region (pages 0–15), every byte defined.
    static func encodeArmed(_ a: Armed) -> AlignedBuffer {
        let buf = AlignedBuffer(count: armedRegionBytes)
        let b = buf.bytes
        putHeader(b, 0, kind: .armed, nonce: a.nonce, bootID: a.bootID, unixNs: a.armedUnixNs)
        LittleEndian.store(a.sealDev, into: b, at: 104)
        LittleEndian.store(UInt32(a.disks.count), into: b, at: 108)
        LittleEndian.store(UInt64(fileSizeBytes), into: b, at: 112)
        LittleEndian.store(UInt32(a.fileExtents.count), into: b, at: 120)
        for (i, e) in a.fileExtents.enumerated() {
            LittleEndian.store(e.logical, into: b, at: 128 + i * 24)
            LittleEndian.store(e.physical, into: b, at: 136 + i * 24)
            LittleEndian.store(e.length, into: b, at: 144 + i * 24)
        }
        putString(b, 512, 256, a.sealPath)
        for (i, d) in a.disks.enumerated() {
            let o = entryOffset + i * entrySize
            LittleEndian.store(d.slot, into: b, at: o)
            LittleEndian.store(d.regionDev, into: b, at: o + 4)
            LittleEndian.store(d.wholeDev, into: b, at: o + 8)
            LittleEndian.store(d.chunkSizeBytes, into: b, at: o + 12)
            LittleEndian.store(d.startSector, into: b, at: o + 16)
            LittleEndian.store(d.nrSectors, into: b, at: o + 24)
            LittleEndian.store(d.nrChunks, into: b, at: o + 32)
            LittleEndian.store(d.attachedUnixNs, into: b, at: o + 40)
            putString(b, o + 48, 64, d.diskID)
            putString(b, o + 112, 256, d.identity)
            putString(b, o + 368, 256, d.hrlPath)
        }
        let entries = UnsafeRawBufferPointer(rebasing: b[entryOffset..<(entryOffset + a.disks.count * entrySize)])
        LittleEndian.store(crc32c(entries), into: b, at: 124)
        LittleEndian.store(pageCRC(UnsafeRawBufferPointer(b), at: 0), into: b, at: 4092)
        return buf
    }

    static func checkHeader(_ b: UnsafeRawBufferPointer, _ o: Int, what: String) throws -> Kind {
        if b[o..<(o + 4096)].allSatisfy({ $0 == 0 }) { throw FormatError("\(what) is all zero (never written)") }
        guard Array(b[o..<(o + 8)]) == magic else { throw FormatError("\(what) has no seal magic") }
        let v: UInt32 = LittleEndian.load(b, at: o + 8, as: UInt32.self)
        guard v == version else { throw FormatError("\(what) has format version \(v); this build reads version \(version)") }
        let stored: UInt32 = LittleEndian.load(b, at: o + 4092, as: UInt32.self)
        let computed = pageCRC(b, at: o)
        guard stored == computed else {
            throw FormatError("\(what) has a bad checksum (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16)))")
        }
        let k: UInt32 = LittleEndian.load(b, at: o + 12, as: UInt32.self)
        guard let kind = Kind(rawValue: k) else { throw FormatError("\(what) has unknown kind \(k)") }
        return kind
    }

    /// Decodes and checks the armed region (at least `armedRegionBytes`).
    static func decodeArmed(_ b: UnsafeRawBufferPointer) throws -> Armed {
        precondition(b.count >= armedRegionBytes)
        let kind = try checkHeader(b, 0, what: "the armed record (page 0)")
        guard kind == .armed else { throw FormatError("page 0 holds a record of kind \(kind), not armed") }
        let size: UInt64 = LittleEndian.load(b, at: 112, as: UInt64.self)
        guard size == UInt64(fileSizeBytes) else { throw FormatError("the armed record gives a file size of \(size) bytes, not \(fileSizeBytes)") }
        let n = Int(LittleEndian.load(b, at: 108, as: UInt32.self))
        guard n >= 1 && n <= Limits.shutdownSealDisksMax else { throw FormatError("the armed record lists \(n) disks (1...\(Limits.shutdownSealDisksMax))") }
        let en = Int(LittleEndian.load(b, at: 120, as: UInt32.self))
        guard en >= 1 && en <= Limits.shutdownSealFileExtentsMax else { throw FormatError("the armed record lists \(en) file extents") }
        let entries = UnsafeRawBufferPointer(rebasing: b[entryOffset..<(entryOffset + n * entrySize)])
        guard crc32c(entries) == LittleEndian.load(b, at: 124, as: UInt32.self) else { throw FormatError("the armed record's disk entries have a bad checksum") }
        var extents: [FileExtent] = []
        for i in 0..<en {
            extents.append(FileExtent(logical: LittleEndian.load(b, at: 128 + i * 24, as: UInt64.self), physical: LittleEndian.load(b, at: 136 + i * 24, as: UInt64.self),
                                      length: LittleEndian.load(b, at: 144 + i * 24, as: UInt64.self), flags: 0))
        }
        try checkCoverage(extents)
        var disks: [ArmedDisk] = []
        for i in 0..<n {
            let o = entryOffset + i * entrySize
            disks.append(ArmedDisk(slot: LittleEndian.load(b, at: o, as: UInt32.self), regionDev: LittleEndian.load(b, at: o + 4, as: UInt32.self),
                                   wholeDev: LittleEndian.load(b, at: o + 8, as: UInt32.self), chunkSizeBytes: LittleEndian.load(b, at: o + 12, as: UInt32.self),
                                   startSector: LittleEndian.load(b, at: o + 16, as: UInt64.self), nrSectors: LittleEndian.load(b, at: o + 24, as: UInt64.self),
                                   nrChunks: LittleEndian.load(b, at: o + 32, as: UInt64.self), attachedUnixNs: LittleEndian.load(b, at: o + 40, as: UInt64.self),
                                   diskID: getString(b, o + 48, 64), identity: getString(b, o + 112, 256),
                                   hrlPath: getString(b, o + 368, 256)))
        }
        return Armed(nonce: Array(b[16..<32]), bootID: getString(b, 32, 64), armedUnixNs: LittleEndian.load(b, at: 96, as: UInt64.self),
                     sealDev: LittleEndian.load(b, at: 104, as: UInt32.self), fileExtents: extents, sealPath: getString(b, 512, 256), disks: disks)
    }

    /// The sealed header and its extent pages, as bytes to write at file
    /// offset `sealedOffset`.
    static func encodeSealed(_ s: Sealed) -> AlignedBuffer {
        let extentBytes = s.extents.count * extentSize
        let pages = 1 + (extentBytes + pageSize - 1) / pageSize
        let buf = AlignedBuffer(count: pages * pageSize)
        let b = buf.bytes
        putHeader(b, 0, kind: s.kind, nonce: s.nonce, bootID: s.bootID, unixNs: s.unixNs)
        LittleEndian.store(UInt32(s.results.count), into: b, at: 104)
        LittleEndian.store(UInt32(s.extents.count), into: b, at: 108)
        for (i, e) in s.extents.enumerated() {
            LittleEndian.store(e.firstChunk, into: b, at: pageSize + i * extentSize)
            LittleEndian.store(e.chunkCount, into: b, at: pageSize + i * extentSize + 8)
        }
        LittleEndian.store(crc32c(UnsafeRawBufferPointer(rebasing: b[pageSize..<(pageSize + extentBytes)])), into: b, at: 112)
        for (i, r) in s.results.enumerated() {
            let o = resultsOffset + i * resultSize
            LittleEndian.store(r.slot, into: b, at: o)
            LittleEndian.store(r.status.rawValue, into: b, at: o + 4)
            LittleEndian.store(r.firstExtent, into: b, at: o + 8)
            LittleEndian.store(r.extentCount, into: b, at: o + 12)
            LittleEndian.store(r.dirtyChunks, into: b, at: o + 16)
        }
        LittleEndian.store(pageCRC(UnsafeRawBufferPointer(b), at: 0), into: b, at: 4092)
        return buf
    }

    /// Decodes the sealed region: `b` starts at file offset `sealedOffset`.
    static func decodeSealed(_ b: UnsafeRawBufferPointer) throws -> Sealed {
        let kind = try checkHeader(b, 0, what: "the sealed record (page 16)")
        guard kind != .armed else { throw FormatError("page 16 holds an armed record") }
        let nonce = Array(b[16..<32])
        let bootID = getString(b, 32, 64)
        let unixNs: UInt64 = LittleEndian.load(b, at: 96, as: UInt64.self)
        if kind == .consumed {
            return Sealed(kind: kind, nonce: nonce, bootID: bootID, unixNs: unixNs, results: [], extents: [])
        }
        let n = Int(LittleEndian.load(b, at: 104, as: UInt32.self))
        let total = Int(LittleEndian.load(b, at: 108, as: UInt32.self))
        guard n <= Limits.shutdownSealDisksMax, total <= Limits.shutdownSealExtentsMax,
              pageSize + total * extentSize <= b.count else {
            throw FormatError("the sealed record claims \(n) disks and \(total) extents, more than a seal holds")
        }
        let extentBytes = UnsafeRawBufferPointer(rebasing: b[pageSize..<(pageSize + total * extentSize)])
        guard crc32c(extentBytes) == LittleEndian.load(b, at: 112, as: UInt32.self) else {
            throw FormatError("the sealed extents have a bad checksum (the hook's write did not complete, or the blocks were changed since)")
        }
        var extents: [ChunkExtent] = []
        extents.reserveCapacity(total)
        for i in 0..<total {
            extents.append(ChunkExtent(firstChunk: LittleEndian.load(b, at: pageSize + i * extentSize, as: UInt64.self),
                                       chunkCount: LittleEndian.load(b, at: pageSize + i * extentSize + 8, as: UInt64.self)))
        }
        var results: [DiskResult] = []
        for i in 0..<n {
            let o = resultsOffset + i * resultSize
            let raw: UInt32 = LittleEndian.load(b, at: o + 4, as: UInt32.self)
            guard let status = DiskStatus(rawValue: raw) else { throw FormatError("disk result \(i) has unknown status \(raw)") }
            let r = DiskResult(slot: LittleEndian.load(b, at: o, as: UInt32.self), status: status, firstExtent: LittleEndian.load(b, at: o + 8, as: UInt32.self),
                               extentCount: LittleEndian.load(b, at: o + 12, as: UInt32.self), dirtyChunks: LittleEndian.load(b, at: o + 16, as: UInt64.self))
            guard Int(r.firstExtent) + Int(r.extentCount) <= total else {
                throw FormatError("disk result \(i) names extents beyond the \(total) recorded")
            }
            results.append(r)
        }
        return Sealed(kind: kind, nonce: nonce, bootID: bootID, unixNs: unixNs, results: results, extents: extents)
    }

    /// The extents must cover [0, fileSizeBytes) in order, 4 KiB aligned.
    static func checkCoverage(_ extents: [FileExtent]) throws {
        var next: UInt64 = 0
        for e in extents {
            guard e.logical == next else {
                throw FormatError("the file has a hole or overlap at byte \(next) (next extent starts at \(e.logical))")
            }
            guard e.logical % 4096 == 0, e.physical % 4096 == 0, e.length % 4096 == 0, e.length > 0 else {
                throw FormatError("extent at file byte \(e.logical) (device byte \(e.physical), \(e.length) bytes) is not 4 KiB aligned")
            }
            // Values read from disk: the sums are checked, so that `physical`
            // can add them freely once coverage holds.
            let (end, endOverflow) = next.addingReportingOverflow(e.length)
            let (_, deviceOverflow) = e.physical.addingReportingOverflow(e.length)
            guard !endOverflow, !deviceOverflow else {
                throw FormatError("extent at file byte \(e.logical) (device byte \(e.physical), \(e.length) bytes) runs past the largest byte offset")
            }
            next = end
        }
        guard next >= UInt64(fileSizeBytes) else { throw FormatError("the extents cover \(next) of \(fileSizeBytes) bytes") }
    }

    /// Device byte of file byte `logical`, and how many bytes from there are
    /// contiguous. The extents passed `checkCoverage` (no sum overflows).
    static func physical(_ logical: UInt64, _ extents: [FileExtent]) -> (offset: UInt64, run: UInt64)? {
        for e in extents where logical >= e.logical && logical < e.logical + e.length {
            return (e.physical + (logical - e.logical), e.logical + e.length - logical)
        }
        return nil
    }

    static func hex(_ bytes: [UInt8]) -> String {
        bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// The device node of a kernel dev (major << 20 | minor): /dev/<kernel name>, checked.
    static func devicePath(kernelDev: UInt32) throws -> String {
        let major = kernelDev >> 20, minor = kernelDev & 0xFFFFF
        guard let sys = realpathString("/sys/dev/block/\(major):\(minor)"), let name = sys.split(separator: "/").last else {
            throw TidemarkError(.notFound, "block device \(major):\(minor) has no entry in /sys/dev/block",
                                hint: "the device holding the seal file is gone")
        }
        let path = "/dev/" + name
        let info = try BlockDeviceInfo.inspect(path)
        guard info.kernelDev == kernelDev else {
            throw TidemarkError(.notFound, "\(path) is \(info.major):\(info.minor), not \(major):\(minor)")
        }
        return path
    }

    static var locatorPath: String { TracerPaths.runDir + "/" + locatorName }

    // MARK: - Arming (the agent's orderly stop)

    /// Arms the seal for `sessions` (their final drain done): writes the
    /// seal file in `stateDir` in full, locates it with FIEMAP, writes the
    /// armed record, checks through the raw device that it is where FIEMAP
    /// says, and leaves a copy in the run directory for the hook. Returns the
    /// nonce to record in each `.hrl` (state `clean`). Throws, saying why,
    /// when the file cannot be sealed raw (filesystem type, extent flags,
    /// alignment): then no `.hrl` may be marked clean.
    public static func arm(stateDir: String, sessions: [DiskSession], bootID: String) throws -> [UInt8] {
        guard !sessions.isEmpty else { throw TidemarkError(.invalidArgument, "no disk to arm a shutdown seal for") }
        guard sessions.count <= Limits.shutdownSealDisksMax else {
            throw TidemarkError(.unsupported, "\(sessions.count) disks are more than one shutdown seal describes (\(Limits.shutdownSealDisksMax))")
        }
        guard let dir = realpathString(stateDir) else { throw TidemarkError(.notFound, "state directory \(stateDir) cannot be resolved") }
        let path = dir + "/" + fileName
        guard let fsType = FileExtents.filesystemType(dir) else {
            throw TidemarkError(.notFound, "cannot statfs \(dir)")
        }
        guard fsType == FileExtents.ext4Magic || fsType == FileExtents.xfsMagic else {
            throw TidemarkError(.unsupported, "\(dir) is on a filesystem of type 0x\(String(fsType, radix: 16)); the shutdown seal is written raw to its blocks, which is supported on ext4 and xfs only",
                                hint: "put state_dir on an ext4 or xfs filesystem (the root filesystem normally is)")
        }
        var st = Glibc.stat()
        if lstat(path, &st) == 0 && (st.st_size != off_t(fileSizeBytes) || (st.st_mode & S_IFMT) != S_IFREG) {
            _ = unlink(path)
        }
        let fd = try FileDescriptor(open: path, [.readWrite, .create, .noFollow], mode: 0o600, purpose: "opening the shutdown seal")
        // Every byte written (no hole, no unwritten extent), then flushed, so
        // the blocks are allocated, written and recorded in the metadata.
        let zeros = AlignedBuffer(count: fileSizeBytes)
        try fd.write(UnsafeRawBufferPointer(zeros.bytes), at: 0)
        try fd.sync()
        let extents = try locate(fd)
        let fileStat = try fd.stat()
        let sealDev = BlockDeviceInfo.kernelDev(statDev: UInt64(fileStat.st_dev))
        let devPath = try devicePath(kernelDev: sealDev)

        var rng = SystemRandomNumberGenerator()
        var nonce = [UInt8](repeating: 0, count: 16)
        while !nonce.contains(where: { $0 != 0 }) { nonce = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        let armed = Armed(
            nonce: nonce, bootID: bootID, armedUnixNs: UInt64(wallClockNanoseconds()), sealDev: sealDev,
            fileExtents: extents, sealPath: path,
            disks: sessions.map { s in
                ArmedDisk(slot: s.slot.slot, regionDev: s.slot.regionDev, wholeDev: s.slot.wholeDev, chunkSizeBytes: s.slot.chunkSizeBytes,
                          startSector: s.slot.startSector, nrSectors: s.slot.nrSectors, nrChunks: s.slot.nrChunks,
                          attachedUnixNs: s.slot.attachedUnixNs, diskID: s.device.kernelName, identity: s.device.identity,
                          hrlPath: s.hrl.path)
            })
        let region = encodeArmed(armed)
        try fd.write(UnsafeRawBufferPointer(region.bytes), at: 0)
        try fd.write(UnsafeRawBufferPointer(zeros.slice(0, pageSize)), at: UInt64(sealedOffset))
        try fd.sync()
        let again = try locate(fd)
        guard again == extents else {
            throw TidemarkError(.state, "\(path) moved on its device while it was armed (FIEMAP changed)",
                                hint: "is the filesystem copy-on-write or being defragmented? no shutdown seal this time")
        }
        // Read back through the raw device: proves the offsets are right.
        let dev = try FileDescriptor(open: devPath, [.readOnly, .direct], purpose: "reading back the shutdown seal from")
        let check = AlignedBuffer(count: armedRegionBytes)
        try readRaw(dev, into: check, fileOffset: 0, extents)
        guard memcmp(check.pointer, region.pointer, armedRegionBytes) == 0 else {
            throw TidemarkError(.state, "\(path): reading its blocks from \(devPath) at the offsets FIEMAP gave does not return what was written",
                                hint: "this filesystem or device stack is not supported for the shutdown seal")
        }
        // The hook's copy, in the run directory (tmpfs, lives as long as the pinned tracer).
        try makeDirectories(TracerPaths.runDir, mode: 0o700)
        let tmp = locatorPath + ".tmp-\(getpid())"
        let loc = try FileDescriptor(open: tmp, [.writeOnly, .create, .truncate], mode: 0o600, purpose: "writing the shutdown seal locator")
        try loc.write(UnsafeRawBufferPointer(region.bytes), at: 0)
        _ = try syscall("rename", "renaming \(tmp) to \(locatorPath)") { Glibc.rename(tmp, locatorPath) }
        return nonce
    }

    /// FIEMAP of the seal file, checked: ≤ the limit of extents, each plain
    /// written blocks, 4 KiB aligned, covering the file without a hole.
    static func locate(_ fd: FileDescriptor) throws -> [FileExtent] {
        let extents = try FileExtents.map(fd, length: UInt64(fileSizeBytes), maxExtents: Limits.shutdownSealFileExtentsMax)
        guard extents.count <= Limits.shutdownSealFileExtentsMax else {
            throw TidemarkError(.unsupported, "\(fd.path) has more than \(Limits.shutdownSealFileExtentsMax) extents on its device",
                                hint: "the filesystem is too fragmented; remove the file to have it allocated again at the next stop")
        }
        for e in extents {
            if let p = e.problem {
                throw TidemarkError(.unsupported, "\(fd.path): the extent at file byte \(e.logical) is \(p); the hook could not write it raw",
                                    hint: "the shutdown seal needs plain allocated blocks (ext4 or xfs, no reflink, no encryption, no inline data)")
            }
        }
        do { try checkCoverage(extents) } catch let e as FormatError {
            throw TidemarkError(.unsupported, "\(fd.path): \(e)")
        }
        return extents
    }

    /// Reads `buffer.count` bytes of the file at `fileOffset` through the raw device.
    static func readRaw(_ dev: FileDescriptor, into buffer: AlignedBuffer, fileOffset: UInt64, _ extents: [FileExtent]) throws {
        try forEachRun(count: buffer.count, fileOffset: fileOffset, extents) { done, n, offset in
            let got = try dev.read(into: buffer.slice(done, n), at: offset)
            guard got == n else { throw TidemarkError(.io, "\(dev.path): short read at \(offset)") }
        }
    }

    /// Walks `count` bytes of the file from `fileOffset` as runs on the
    /// device: `body(bytes done, run length, device offset)`.
    static func forEachRun(count: Int, fileOffset: UInt64, _ extents: [FileExtent],
                           _ body: (Int, Int, UInt64) throws -> Void) throws {
        var done = 0
        while done < count {
            guard let (offset, run) = physical(fileOffset + UInt64(done), extents) else {
                throw TidemarkError(.corrupt, "file byte \(fileOffset + UInt64(done)) of the shutdown seal has no extent")
            }
            let n = min(Int(run), count - done)
            try body(done, n, offset)
            done += n
        }
    }

    // MARK: - Sealing (the systemd-shutdown hook)

    /// `tidemark-agent shutdown-seal`: see the type's comment. Writes nothing
    /// unless everything checks out; returns a one-line summary.
    /// `switches` are the test switches main read (the boot id override).
    public static func seal(_ switches: TestSwitches) throws -> String {
        Glibc.sync()  // every write issued so far completes, so its bit is set
        if !fileExists(locatorPath) && !Tracer.isPinned {
            return "nothing to seal: no disk is tracked on this host (no tracer pinned under \(TracerPaths.pinDir))"
        }
        guard let locator = try? FileDescriptor(open: locatorPath, .readOnly, purpose: "opening") else {
            throw TidemarkError(.notFound, "no armed shutdown seal at \(locatorPath): the agent did not stop in order in this boot, or could not arm the seal (see its log)",
                                hint: "nothing was written; after the reboot the agent requires a resync")
        }
        let copy = AlignedBuffer(count: armedRegionBytes)
        guard try locator.read(into: copy.bytes, at: 0) == armedRegionBytes else {
            throw TidemarkError(.corrupt, "\(locatorPath) is shorter than \(armedRegionBytes) bytes")
        }
        let armed: Armed
        do { armed = try decodeArmed(UnsafeRawBufferPointer(copy.bytes)) } catch let e as FormatError {
            throw TidemarkError(.corrupt, "\(locatorPath): \(e)")
        }
        let boot = switches.hostBootID()
        guard armed.bootID == boot else {
            throw TidemarkError(.state, "the armed seal is of boot \(armed.bootID), this is boot \(boot)")
        }
        let devPath = try devicePath(kernelDev: armed.sealDev)
        let sealDevice = try BlockDeviceInfo.inspect(devPath)
        let dev = try FileDescriptor(open: devPath, [.readWrite, .direct], purpose: "opening the device of the shutdown seal")
        let onDisk = AlignedBuffer(count: armedRegionBytes)
        try readRaw(dev, into: onDisk, fileOffset: 0, armed.fileExtents)
        guard memcmp(onDisk.pointer, copy.pointer, armedRegionBytes) == 0 else {
            throw TidemarkError(.state, "\(devPath) does not hold the armed seal at the recorded offsets (\(armed.sealPath) was changed or moved since the agent armed it)",
                                hint: "nothing was written; after the reboot the agent requires a resync")
        }

        // Final: no filesystem that could still write the seal's device or a tracked disk.
        let mounts = try MountEntry.current()
        var devices: [(ArmedDisk, BlockDeviceInfo)] = []
        for d in armed.disks {
            devices.append((d, try BlockDeviceInfo.inspect(try devicePath(kernelDev: d.regionDev))))
        }
        for info in [sealDevice] + devices.map(\.1) {
            if let m = info.writableMounts(in: mounts).first {
                throw TidemarkError(.state, "\(m.source) is still mounted read-write at \(m.mountPoint) (on \(info.path)): later writes would not be in the seal",
                                    hint: "shutdown-seal runs from the systemd-shutdown hook, after every filesystem is unmounted or read-only; nothing was written")
            }
        }

        guard let tracer = try Tracer.open(create: false) else {
            throw TidemarkError(.notFound, "no pinned tracer under \(TracerPaths.pinDir): tracking was lost in this boot",
                                hint: "nothing was written; after the reboot the agent requires a resync")
        }
        let misses = try tracer.recursionMisses()
        let slots = try tracer.slots()
        var results: [DiskResult] = []
        var extents: [ChunkExtent] = []
        for (d, _) in devices {
            var result = DiskResult(slot: d.slot, status: .complete, firstExtent: UInt32(extents.count), extentCount: 0, dirtyChunks: 0)
            defer { results.append(result) }
            guard let slot = slots.first(where: { $0.slot == d.slot }), slot.regionDev == d.regionDev, slot.nrChunks == d.nrChunks,
                  slot.chunkSizeBytes == d.chunkSizeBytes, slot.attachedUnixNs == d.attachedUnixNs, slot.hrlPath == d.hrlPath else {
                result.status = .slotChanged
                continue
            }
            let bitmap = try SlotBitmap(tracer: tracer, slot: slot)
            if bitmap.overflowed { result.status = .overflow; continue }
            if misses > bitmap.recursionMissesSeen { result.status = .recursionMiss; continue }
            // No offset (or no statistics) cannot prove completeness either.
            // Nor can a deficit answered from the issue record and not yet
            // confirmed by its balance.
            if bitmap.sectorOffset == nil || bitmap.sectorSample() == nil || bitmap.sectorDeficit() != nil
                || bitmap.pendingSectors > 0 {
                result.status = .completionDeficit
                continue
            }
            var words = DrainScan.snapshot(bitmap.words)
            // The seal's own blocks are written after the snapshot.
            if sealDevice.wholeKernelDev == slot.wholeDev {
                var own = SparseWords()
                let regionStart = slot.startSector * 512, regionEnd = regionStart + slot.nrSectors * 512
                let chunk = UInt64(slot.chunkSizeBytes)
                for e in armed.fileExtents {
                    let a = max(sealDevice.startSector * 512 + e.physical, regionStart)
                    let b = min(sealDevice.startSector * 512 + e.physical + e.length, regionEnd)
                    guard a < b else { continue }
                    let first = (a - regionStart) / chunk, last = (b - 1 - regionStart) / chunk
                    own.appendChunks(first: first, count: last - first + 1)
                }
                words = union(words, own)
            }
            var mine: [ChunkExtent] = []
            for e in words.entries {
                withUnsafePointer(to: e.bits) { p in
                    BitmapScan.extents(UnsafeBufferPointer(start: p, count: 1), firstWordIndex: e.wordIndex, nrChunks: slot.nrChunks, into: &mine)
                }
            }
            guard extents.count + mine.count <= Limits.shutdownSealExtentsMax else {
                result.status = .tooManyExtents
                continue
            }
            result.extentCount = UInt32(mine.count)
            result.dirtyChunks = words.popcount
            extents += mine
        }
        let sealed = Sealed(kind: .sealed, nonce: armed.nonce, bootID: boot, unixNs: UInt64(wallClockNanoseconds()),
                            results: results, extents: extents)
        let bytes = encodeSealed(sealed)
        try writeRaw(dev, bytes, fileOffset: UInt64(sealedOffset), armed.fileExtents)
        try dev.sync()
        let incomplete = results.filter { $0.status != .complete }
        var text = "shutdown seal written to \(devPath) (\(armed.sealPath)): \(results.count) disk(s), \(extents.count) extent(s), \(results.reduce(0) { $0 + $1.dirtyChunks }) chunk(s)"
        if !incomplete.isEmpty {
            text += "; incomplete (a resync follows) for " + incomplete.map { r in
                "\(armed.disks.first { $0.slot == r.slot }?.diskID ?? "slot \(r.slot)"): \(r.status)"
            }.joined(separator: ", ")
        }
        return text
    }

    static func writeRaw(_ dev: FileDescriptor, _ buffer: AlignedBuffer, fileOffset: UInt64, _ extents: [FileExtent]) throws {
        try forEachRun(count: buffer.count, fileOffset: fileOffset, extents) { done, n, offset in
            try dev.write(UnsafeRawBufferPointer(buffer.slice(done, n)), at: offset)
        }
    }

    /// The union of two sorted word sets.
    static func union(_ a: SparseWords, _ b: SparseWords) -> SparseWords {
        var out = SparseWords()
        var i = 0, j = 0
        while i < a.entries.count || j < b.entries.count {
            if j == b.entries.count || (i < a.entries.count && a.entries[i].wordIndex < b.entries[j].wordIndex) {
                out.append(wordIndex: a.entries[i].wordIndex, bits: a.entries[i].bits); i += 1
            } else if i == a.entries.count || b.entries[j].wordIndex < a.entries[i].wordIndex {
                out.append(wordIndex: b.entries[j].wordIndex, bits: b.entries[j].bits); j += 1
            } else {
                out.append(wordIndex: a.entries[i].wordIndex, bits: a.entries[i].bits | b.entries[j].bits); i += 1; j += 1
            }
        }
        return out
    }

    // MARK: - Recovery (the next start)

    public enum Recovery {
        /// Chunks to OR into the `.hrl`; then it is `tracking` again.
        case recovered(SparseWords, extents: Int)
        case resync(ResyncReason, String)
    }

    /// After a reboot, for a `.hrl` in state `clean` from another boot:
    /// whether the seal in `stateDir` completes its bits, and with what.
    /// `slot` is the slot attached in this boot. Never writes.
    /// `bootID` is this boot's id.
    public static func recover(stateDir: String, hrl: TrackingFile, slot: TrackedSlot, bootID: String) -> Recovery {
        let h = hrl.header
        let unclean = ResyncReason.uncleanShutdown
        guard h.hasSealNonce else {
            return .resync(unclean, "the state file was clean but names no shutdown seal (written by an older agent), so the last writes of the shutdown are unknown")
        }
        let path = (realpathString(stateDir) ?? stateDir) + "/" + fileName
        let file = AlignedBuffer(count: fileSizeBytes)
        do {
            let fd: FileDescriptor
            do { fd = try FileDescriptor(open: path, [.readOnly, .direct], purpose: "opening the shutdown seal") } catch let e as SystemError where e.errno == EINVAL {
                fd = try FileDescriptor(open: path, .readOnly, purpose: "opening the shutdown seal")
            }
            guard try fd.read(into: file.bytes, at: 0) == fileSizeBytes else {
                return .resync(unclean, "the shutdown seal \(path) is shorter than \(fileSizeBytes) bytes")
            }
        } catch let e as SystemError where e.errno == ENOENT {
            return .resync(unclean, "the shutdown seal \(path) is missing, so the last writes of the shutdown are unknown")
        } catch {
            return .resync(unclean, "the shutdown seal \(path) cannot be read: \(error)")
        }
        let b = UnsafeRawBufferPointer(file.bytes)
        let armed: Armed
        do { armed = try decodeArmed(b) } catch {
            return .resync(unclean, "the shutdown seal \(path) is not armed for this disk: \(error)")
        }
        guard armed.nonce == h.sealNonce, armed.bootID == h.bootID else {
            return .resync(unclean, "the shutdown seal \(path) was armed by another stop (nonce \(hex(armed.nonce)), boot \(armed.bootID)) than the one this state file recorded (nonce \(hex(h.sealNonce)), boot \(h.bootID))")
        }
        guard let index = armed.disks.firstIndex(where: { $0.hrlPath == hrl.path }) else {
            return .resync(unclean, "the shutdown seal \(path) does not list \(hrl.path)")
        }
        let disk = armed.disks[index]
        guard disk.nrChunks == h.nrChunks, disk.chunkSizeBytes == h.chunkSizeBytes else {
            return .resync(unclean, "the shutdown seal \(path) describes \(hrl.path) with another geometry")
        }
        let sealed: Sealed
        do {
            sealed = try decodeSealed(UnsafeRawBufferPointer(rebasing: b[sealedOffset...]))
        } catch let e as FormatError where e.description.contains("never written") {
            return .resync(unclean, "the shutdown seal was never written: the host stopped without running the shutdown hook (/usr/lib/systemd/system-shutdown/tidemark), e.g. a power loss, a crash or a forced reboot after the agent stopped")
        } catch {
            return .resync(unclean, "the shutdown seal \(path) is damaged: \(error)")
        }
        guard sealed.nonce == armed.nonce else {
            return .resync(unclean, "the shutdown seal \(path) holds the seal of another shutdown (nonce \(hex(sealed.nonce)), expected \(hex(armed.nonce)))")
        }
        if sealed.kind == .consumed {
            return .resync(unclean, "the shutdown seal \(path) was already used at a start after that shutdown; a seal is never trusted twice (was the state file restored from a copy?)")
        }
        guard sealed.bootID == armed.bootID else {
            return .resync(unclean, "the shutdown seal was sealed in boot \(sealed.bootID), not in boot \(armed.bootID) in which it was armed")
        }
        guard index < sealed.results.count, sealed.results[index].slot == disk.slot else {
            return .resync(unclean, "the sealed record has no result for \(hrl.path)")
        }
        let r = sealed.results[index]
        guard r.status == .complete else {
            return .resync(r.status == .overflow || r.status == .recursionMiss || r.status == .completionDeficit ? .tracerOverflow : unclean,
                           "the shutdown hook sealed this disk incomplete: \(r.status)")
        }
        // This boot's slot must have been attached before any filesystem of the disk was writable.
        switch EarlyAttach.check(slot: slot, bootID: bootID) {
        case .early: break
        case .late(let why): return .resync(.lateAttach, why)
        }
        var words = SparseWords()
        for e in sealed.extents[Int(r.firstExtent)..<Int(r.firstExtent + r.extentCount)] {
            guard e.chunkCount > 0, e.chunkCount <= h.nrChunks, e.firstChunk <= h.nrChunks - e.chunkCount else {
                return .resync(unclean, "the sealed extent \(e) is outside the disk's \(h.nrChunks) chunks")
            }
            if let last = words.entries.last, e.firstChunk / 64 < last.wordIndex {
                return .resync(unclean, "the sealed extents are not in increasing order")
            }
            words.appendChunks(first: e.firstChunk, count: e.chunkCount)
        }
        return .recovered(words, extents: Int(r.extentCount))
    }

    /// At start, once every disk was reconciled: a sealed record becomes
    /// `consumed`, so it can never complete a `.hrl` a second time, and the
    /// run directory's armed copy goes (every `.hrl` is tracking again).
    public static func consume(stateDir: String) {
        _ = unlink(locatorPath)
        let path = (realpathString(stateDir) ?? stateDir) + "/" + fileName
        // O_DIRECT: the hook wrote the blocks behind the filesystem's back.
        guard let fd = (try? FileDescriptor(open: path, [.readWrite, .direct], purpose: "opening the shutdown seal"))
            ?? (try? FileDescriptor(open: path, .readWrite, purpose: "opening the shutdown seal")) else { return }
        let page = AlignedBuffer(count: pageSize)
        guard (try? fd.read(into: page.bytes, at: UInt64(sealedOffset))) == pageSize,
              let kind = try? checkHeader(UnsafeRawBufferPointer(page.bytes), 0, what: "the sealed record"), kind == .sealed else { return }
        let nonce = Array(page.bytes[16..<32])
        let boot = getString(UnsafeRawBufferPointer(page.bytes), 32, 64)
        let out = AlignedBuffer(count: pageSize)
        putHeader(out.bytes, 0, kind: .consumed, nonce: nonce, bootID: boot, unixNs: UInt64(wallClockNanoseconds()))
        LittleEndian.store(pageCRC(UnsafeRawBufferPointer(out.bytes), at: 0), into: out.bytes, at: 4092)
        do {
            try fd.write(UnsafeRawBufferPointer(out.bytes), at: UInt64(sealedOffset))
            try fd.dataSync()
            Log.info("\(path): the shutdown seal is marked consumed")
        } catch {
            Log.warning("\(path): could not mark the shutdown seal consumed: \(error); it still cannot complete a state file twice, since every state file left state clean")
        }
    }
}

/// Where the boot id of the `.hrl` differs from this boot's, the bits are
/// complete only if this boot's slot was attached before anything could
/// write the disk. The agent records, in the run directory (tmpfs: it lives
/// exactly as long as the pinned tracer), how each slot it attached was.
public enum EarlyAttach {
    static func recordPath(regionDev: UInt32) -> String {
        TracerPaths.runDir + "/attach-\(regionDev >> 20)-\(regionDev & 0xFFFFF)"
    }

    public enum Verdict: Equatable {
        case early
        case late(String)
    }

    /// Writes the record for a slot attached just now. `rwBefore` /
    /// `rwAfter` are the read-write mounts on the disk found just before and
    /// just after the attach.
    static func record(slot: TrackedSlot, device: BlockDeviceInfo, rwMounts: [MountEntry], bootID: String) throws {
        let early = rwMounts.isEmpty
        var text = "boot_id=\(bootID)\nslot=\(slot.slot)\nattached_unix_ns=\(slot.attachedUnixNs)\nearly=\(early ? 1 : 0)\n"
        for m in rwMounts { text += "rw_mount=\(m.source) at \(m.mountPoint)\n" }
        try makeDirectories(TracerPaths.runDir, mode: 0o700)
        let path = recordPath(regionDev: slot.regionDev)
        let fd = try FileDescriptor(open: path, [.writeOnly, .create, .truncate], mode: 0o600, purpose: "recording the attach of")
        try Array(text.utf8).withUnsafeBytes { try fd.write($0, at: 0) }
        if early {
            Log.info("\(device.path): tracer slot \(slot.slot) attached while no filesystem of the disk is mounted read-write (early in boot)")
        } else {
            Log.info("\(device.path): tracer slot \(slot.slot) attached while \(rwMounts.map { "\($0.source) at \($0.mountPoint)" }.joined(separator: ", ")) is mounted read-write: writes before this instant are not tracked")
        }
    }

    /// Whether `slot` (attached in this boot) was attached early.
    public static func check(slot: TrackedSlot, bootID: String) -> Verdict {
        let path = recordPath(regionDev: slot.regionDev)
        guard let text = SmallFile.textIfReadable(path) else {
            return .late("no record in \(TracerPaths.runDir) that tracer slot \(slot.slot) was attached early in this boot (before a filesystem of the disk was mounted read-write); writes of this boot before the agent started are unknown")
        }
        var fields: [String: String] = [:]
        var mounts: [String] = []
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            let k = String(line[..<eq]), v = String(line[line.index(after: eq)...])
            if k == "rw_mount" { mounts.append(v) } else { fields[k] = v }
        }
        guard fields["boot_id"] == bootID, fields["slot"] == String(slot.slot),
              fields["attached_unix_ns"] == String(slot.attachedUnixNs) else {
            return .late("the attach record \(path) is of another slot or boot than tracer slot \(slot.slot) attached at \(slot.attachedUnixNs) ns; the slot was attached again later in this boot")
        }
        guard fields["early"] == "1" else {
            return .late("tracer slot \(slot.slot) was attached only when \(mounts.joined(separator: ", ")) was already mounted read-write, so writes of this boot before that are unknown (the agent must start before the root filesystem is remounted read-write)")
        }
        return .early
    }

    /// Attaches the tracer slot of each device now, before the state
    /// directory is needed, and records for each new slot whether a
    /// filesystem of the disk was writable. Failures are logged and left to
    /// `DiskSession.open`, which reports them properly.
    /// Returns the slots it attached, by region dev (for `DiskSession.open`).
    public static func attachAll(devices: [String], stateDir: String, chunkSizeBytes: UInt32, bootID: String) -> [UInt32: TrackedSlot] {
        var attached: [UInt32: TrackedSlot] = [:]
        guard let dir = realpathString(stateDir) else {
            Log.warning("state directory \(stateDir) does not exist yet: the tracer is attached once it can be created; a reboot before then is answered with a resync")
            return attached
        }
        for d in devices {
            do {
                let device = try BlockDeviceInfo.inspect(d)
                let hrlPath = DiskSession.hrlPath(stateDir: dir, device: device)
                guard var tracer = try Tracer.open(create: true) else { continue }
                let before = device.writableMounts(in: try MountEntry.current())
                let outcome = try DiskSession.attach(&tracer, device, chunkSizeBytes: chunkSizeBytes, hrlPath: hrlPath)
                guard case .attached(let slot) = outcome else { continue }
                // The completion cross-check counts from here (docs/tracer.md),
                // not from when the state directory becomes writable.
                _ = try SlotBitmap(tracer: tracer, slot: slot)
                    .establishSectorOffset(samples: Limits.crossCheckBaselineSamples,
                                           gapMicroseconds: Limits.crossCheckBaselineSampleGapUs)
                var rw = before
                for m in device.writableMounts(in: try MountEntry.current()) where !rw.contains(m) { rw.append(m) }
                attached[device.kernelDev] = slot
                try record(slot: slot, device: device, rwMounts: rw, bootID: bootID)
            } catch {
                Log.warning("\(d): early attach of the tracer failed: \(error)")
            }
        }
        return attached
    }

    /// Waits until `stateDir` (or, if it does not exist yet, its nearest
    /// existing parent) is writable: early in boot the root filesystem is
    /// still read-only. Logs once what it waits for. False if a stop was
    /// requested meanwhile.
    public static func waitUntilWritable(_ stateDir: String) -> Bool {
        var logged = false
        while true {
            var probe = stateDir
            while !fileExists(probe), probe != "/", !probe.isEmpty { probe = parentDirectory(probe) }
            let refused: Int32
            do {
                try checkAccess(probe, W_OK)
                return true
            } catch let e as SystemError where e.errno == EROFS || e.errno == EACCES {
                refused = e.errno
            } catch {
                return true  // let the open report it
            }
            if !logged {
                Log.info("waiting for \(probe) to become writable (\(String(cString: strerror(refused)))): the root filesystem is still read-only early in boot; the tracer is attached, so no write is missed")
                logged = true
            }
            if StopSignal.isRequested { return false }
            StopSignal.sleep(milliseconds: Limits.stateDirWritablePollMs)
        }
    }
}

