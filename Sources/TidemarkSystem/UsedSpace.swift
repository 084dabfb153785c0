import CTidemarkSystem
import Glibc

/// Which bytes of a block device its filesystem uses, so that an initial
/// copy or whole-disk resync reads those and not free space (docs/design.md,
/// "Used blocks only"). Asked of a mounted ext4 or XFS through
/// `FS_IOC_GETFSMAP`, as the complement of the free space it reports: ext4
/// (6.18) leaves some used ranges out of its answer entirely, so a range
/// counts as unused only when it is reported free. An unmounted ext2/3/4
/// is asked through its own block bitmaps (libext2fs); a whole disk with
/// partitions, partition by partition. Every other case is read whole, and
/// says why.
///
/// Safe only with the disk's tracer slot attached before the question: a
/// block allocated after the answer is written after it too, and that write
/// is tracked.
public enum UsedSpace {
    /// What the filesystem said.
    public struct Map: Sendable {
        /// Byte ranges in use (not reported free), sorted, not touching.
        public var extents: [(offset: UInt64, length: UInt64)]
        /// Bytes the filesystem spans on the device; what lies beyond (if
        /// the device is larger) counts as used, since something else may
        /// keep data there.
        public var filesystemBytes: UInt64
        /// "ext4 at /mnt", for logs and status.
        public var source: String
        public var usedBytes: UInt64 { extents.reduce(0) { $0 + $1.length } }
    }

    /// Extents the answer may have (16 bytes each): a filesystem more
    /// fragmented than that is read whole.
    public static let extentsMax = 4 << 20

    /// The used space of the filesystem mounted from `device` itself, or why
    /// there is none to ask: not mounted here, a filesystem other than ext4
    /// and XFS, or one that does not answer.
    public static func map(_ device: BlockDeviceInfo) -> Result<Map, NotAvailable> {
        let mounts: [MountEntry]
        do { mounts = try MountEntry.current() } catch {
            return .failure(NotAvailable(reason: "the mount table could not be read (\(error))"))
        }
        // A filesystem on the disk itself (mounted, or its superblock there)
        // wins over partition entries, which may be stale.
        if !device.isPartition && !mounts.contains(where: { $0.kernelDev == device.kernelDev }) && !holdsFilesystem(device) {
            let parts = partitions(of: device)
            if !parts.isEmpty { return partitioned(device, parts, mounts) }
        }
        return single(device, mounts)
    }

    /// Whether the device itself starts with an ext2/3/4 or XFS superblock.
    static func holdsFilesystem(_ device: BlockDeviceInfo) -> Bool {
        guard let b = superblockArea(device.path) else { return false }
        return isExt(b) || isXFS(b)
    }

    /// The first 2 KiB of a device, where ext2/3/4 (at 1024) and XFS (at 0)
    /// keep their superblocks; nil when it cannot be read.
    static func superblockArea(_ path: String) -> [UInt8]? {
        guard let fd = try? FileDescriptor(open: path, [.readOnly], purpose: "reading the superblock") else { return nil }
        var b = [UInt8](repeating: 0, count: 2048)
        guard let n = try? b.withUnsafeMutableBytes({ try fd.read(into: $0, at: 0) }), n == 2048 else { return nil }
        return b
    }
    static func isExt(_ b: [UInt8]) -> Bool { b[1024 + 0x38] == 0x53 && b[1024 + 0x39] == 0xEF }
    static func isXFS(_ b: [UInt8]) -> Bool { b[0] == 0x58 && b[1] == 0x46 && b[2] == 0x53 && b[3] == 0x42 }   // "XFSB"

    /// A partition of a whole disk: its device and where it lies on the disk.
    struct Partition {
        var device: BlockDeviceInfo
        var offset: UInt64
        var length: UInt64
    }

    /// The partitions of a whole disk, in disk order (sysfs); those that
    /// cannot be inspected are left out (their space then counts as used).
    static func partitions(of disk: BlockDeviceInfo) -> [Partition] {
        let dir = "/sys/class/block/\(disk.kernelName)"
        var out: [Partition] = []
        for e in listDirectory(dir) ?? [] where fileExists("\(dir)/\(e)/partition") {
            guard let start = readSysfs("\(dir)/\(e)/start").flatMap({ UInt64($0) }),
                  let sectors = readSysfs("\(dir)/\(e)/size").flatMap({ UInt64($0) }),
                  let info = try? BlockDeviceInfo.inspect("/dev/\(e)") else { continue }
            out.append(Partition(device: info, offset: start * 512, length: sectors * 512))
        }
        return out.sorted { $0.offset < $1.offset }
    }

    /// A disk with partitions: each partition's filesystem is asked as a
    /// disk of its own would be; a partition that cannot say, and all space
    /// outside the partitions (the table, gaps, the end), counts as used.
    /// Fails only when no partition could say anything.
    static func partitioned(_ disk: BlockDeviceInfo, _ parts: [Partition], _ mounts: [MountEntry]) -> Result<Map, NotAvailable> {
        var used: [(offset: UInt64, length: UInt64)] = []
        var notes: [String] = [], whys: [String] = []
        var asked = 0
        var at: UInt64 = 0
        for p in parts where p.offset >= at && p.offset < disk.sizeBytes {
            if p.offset > at { used.append((at, p.offset - at)) }
            let length = min(p.length, disk.sizeBytes - p.offset)
            switch single(p.device, mounts) {
            case .success(let m):
                asked += 1
                let fsEnd = min(m.filesystemBytes, length)
                for e in m.extents where e.offset < fsEnd {
                    used.append((p.offset + e.offset, min(e.length, fsEnd - e.offset)))
                }
                if fsEnd < length { used.append((p.offset + fsEnd, length - fsEnd)) }
                notes.append("\(p.device.kernelName): \(m.source)")
            case .failure(let n):
                used.append((p.offset, length))
                whys.append("\(p.device.kernelName): \(n.reason)")
            }
            at = p.offset + length
        }
        if at < disk.sizeBytes { used.append((at, disk.sizeBytes - at)) }
        guard asked > 0 else {
            return .failure(NotAvailable(reason: "no filesystem on its partitions can list its used blocks (\(whys.joined(separator: "; ")))"))
        }
        // Sorted already (partitions in disk order); merge what touches.
        var merged: [(offset: UInt64, length: UInt64)] = []
        for u in used where u.length > 0 {
            if let last = merged.last, last.offset + last.length >= u.offset {
                merged[merged.count - 1].length = max(last.offset + last.length, u.offset + u.length) - last.offset
            } else {
                merged.append(u)
            }
        }
        let whole = whys.isEmpty ? "" : "; read whole: " + whys.joined(separator: "; ")
        return .success(Map(extents: merged, filesystemBytes: disk.sizeBytes,
                            source: "its partitions (\(notes.joined(separator: "; "))\(whole))"))
    }

    /// The used space of the filesystem on `device` itself: mounted here, or
    /// an unmounted ext2/3/4.
    static func single(_ device: BlockDeviceInfo, _ mounts: [MountEntry]) -> Result<Map, NotAvailable> {
        guard let m = mounts.first(where: { $0.kernelDev == device.kernelDev }) else {
            if !device.writableMounts(in: mounts).isEmpty {
                return .failure(NotAvailable(reason: "its filesystem is on a device stacked on it, which is not asked"))
            }
            return unmounted(device)
        }
        guard m.fsType == "ext4" || m.fsType == "xfs" else {
            return .failure(NotAvailable(reason: "its filesystem (\(m.fsType) at \(m.mountPoint)) cannot list its used blocks; only ext4 and XFS are asked"))
        }
        let dir: FileDescriptor
        do { dir = try FileDescriptor(open: m.mountPoint, [.readOnly, .directory], purpose: "opening the mount point") } catch {
            return .failure(NotAvailable(reason: "\(m.mountPoint) could not be opened (\(error))"))
        }
        let fd = dir.rawValue
        guard let size = filesystemBytes(devicePath: device.path, type: m.fsType) else {
            return .failure(NotAvailable(reason: "the \(m.fsType) superblock on \(device.path) could not be read"))
        }
        // struct fsmap's device encoding (the kernel's new_encode_dev).
        let encoded = (m.minor & 0xff) | (m.major << 8) | ((m.minor & ~0xff) << 12)
        var pairs: UnsafeMutablePointer<UInt64>?
        var count = 0
        let rc = tm_getfsmap_free(fd, encoded, extentsMax, &pairs, &count)
        guard rc == 0, let pairs else {
            let why = rc == -E2BIG ? "more than \(extentsMax) free extents" : String(cString: strerror(-rc))
            return .failure(NotAvailable(reason: "\(m.fsType) at \(m.mountPoint) did not list its free space (FS_IOC_GETFSMAP: \(why))"))
        }
        defer { free(pairs) }
        var free: [(offset: UInt64, length: UInt64)] = []
        free.reserveCapacity(count)
        for i in 0..<count { free.append((pairs[2 * i], pairs[2 * i + 1])) }
        return .success(Map(extents: used(outside: free, upTo: size), filesystemBytes: size, source: "\(m.fsType) at \(m.mountPoint)"))
    }

    /// The used space of an unmounted ext2/3/4 on `device`, from its own
    /// block bitmaps (libext2fs, read-only; `tm_extfs_free`): trusted only
    /// when it was cleanly unmounted and its superblock reads the same before
    /// and after (not mounted meanwhile, on this host or another).
    static func unmounted(_ device: BlockDeviceInfo) -> Result<Map, NotAvailable> {
        guard let b = superblockArea(device.path) else {
            return .failure(NotAvailable(reason: "the start of \(device.path) could not be read to look for a filesystem"))
        }
        guard isExt(b) else {
            return .failure(NotAvailable(reason: isXFS(b)
                ? "its XFS is not mounted on this host (an unmounted XFS is not asked; only an unmounted ext2/3/4 is)"
                : "no filesystem of it is mounted on this host, and it holds no ext2/3/4 filesystem (raw data or another format)"))
        }
        var pairs: UnsafeMutablePointer<UInt64>?
        var count = 0
        var size: UInt64 = 0
        var why = [CChar](repeating: 0, count: 256)
        let rc = tm_extfs_free(device.path, extentsMax, &pairs, &count, &size, &why, why.count)
        guard rc == 0, let pairs else {
            let reason = why.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
            return .failure(NotAvailable(reason: "it is not mounted on this host and \(reason)"))
        }
        defer { free(pairs) }
        var free: [(offset: UInt64, length: UInt64)] = []
        free.reserveCapacity(count)
        for i in 0..<count { free.append((pairs[2 * i], pairs[2 * i + 1])) }
        return .success(Map(extents: used(outside: free, upTo: size), filesystemBytes: size,
                            source: "the unmounted ext2/3/4 on \(device.path) (its block bitmaps)"))
    }

    /// The ranges of [0, end) outside `free` (sorted, not overlapping): what
    /// the filesystem did not report free counts as used.
    public static func used(outside free: [(offset: UInt64, length: UInt64)], upTo end: UInt64) -> [(offset: UInt64, length: UInt64)] {
        var out: [(offset: UInt64, length: UInt64)] = []
        var at: UInt64 = 0
        for f in free {
            let (sum, over) = f.offset.addingReportingOverflow(f.length)
            let a = min(f.offset, end), b = min(over ? .max : sum, end)
            if a > at { out.append((at, a - at)) }
            at = max(at, b)
        }
        if at < end { out.append((at, end - at)) }
        return out
    }

    public struct NotAvailable: Error, Sendable { public var reason: String }

    /// The filesystem's size from its superblock: ext4's block count and
    /// size at byte 1024; XFS's data blocks and block size at byte 0. nil
    /// for a block size outside 1 KiB–64 KiB or a size that overflows (a
    /// damaged superblock: the disk is then read whole).
    static func filesystemBytes(devicePath: String, type: String) -> UInt64? {
        guard let b = superblockArea(devicePath) else { return nil }
        func le32(_ o: Int) -> UInt64 { UInt64(b[o]) | UInt64(b[o + 1]) << 8 | UInt64(b[o + 2]) << 16 | UInt64(b[o + 3]) << 24 }
        func be32(_ o: Int) -> UInt64 { UInt64(b[o]) << 24 | UInt64(b[o + 1]) << 16 | UInt64(b[o + 2]) << 8 | UInt64(b[o + 3]) }
        if type == "ext4" {
            let sb = 1024
            guard isExt(b) else { return nil }
            var blocks = le32(sb + 4)
            if le32(sb + 0x60) & 0x80 != 0 { blocks |= le32(sb + 0x150) << 32 }   // INCOMPAT_64BIT
            let logBlock = le32(sb + 24)
            guard logBlock <= 6 else { return nil }
            return bytes(blocks: blocks, blockSize: 1024 << logBlock)
        }
        guard isXFS(b) else { return nil }
        return bytes(blocks: be32(8) << 32 | be32(12), blockSize: be32(4))
    }

    static func bytes(blocks: UInt64, blockSize: UInt64) -> UInt64? {
        guard blockSize >= 1024, blockSize <= 65536, blockSize & (blockSize - 1) == 0 else { return nil }
        let (n, over) = blocks.multipliedReportingOverflow(by: blockSize)
        return over ? nil : n
    }
}
