import CTidemarkSystem
import Glibc

/// A block device as the tracer sees it: its kernel dev_t, the whole disk it
/// belongs to (a partition's parent), where it starts on that disk, its size
/// and a stable identity string.
public struct BlockDeviceInfo: Sendable, Equatable {
    /// The path the operator gave (/dev/sdb1, /dev/loop3).
    public var path: String
    /// Kernel name (sdb1, loop3p1); used as the disk id in state file names.
    public var kernelName: String
    public var major: UInt32
    public var minor: UInt32
    public var wholeMajor: UInt32
    public var wholeMinor: UInt32
    /// First sector (512 bytes) of this device on its whole disk: 0 for a whole disk.
    public var startSector: UInt64
    public var sizeBytes: UInt64
    public var logicalBlockSize: UInt32
    /// Serial, WWN, or (loop devices) the backing file; plus the partition's
    /// number and start, so a re-partitioned disk is noticed.
    public var identity: String
    public var isPartition: Bool

    /// The kernel's internal dev_t encoding used by tracepoints: major << 20 | minor.
    public var kernelDev: UInt32 { Self.kernelDev(major: major, minor: minor) }
    public var wholeKernelDev: UInt32 { Self.kernelDev(major: wholeMajor, minor: wholeMinor) }

    public static func kernelDev(major: UInt32, minor: UInt32) -> UInt32 { major << 20 | (minor & 0xFFFFF) }

    /// Inspects `path`. Throws a clear error when it does not exist or is not
    /// a block device.
    public static func inspect(_ path: String) throws -> BlockDeviceInfo {
        var st = Glibc.stat()
        let rc = tm_stat(path, &st)
        if rc != 0 {
            let e = -rc
            if e == ENOENT {
                throw TidemarkError(.notFound, "\(path): no such device",
                                    hint: "check the path; `lsblk` lists the block devices of this host")
            }
            throw SystemError(call: "stat", errno: e, context: "inspecting \(path)")
        }
        guard (st.st_mode & S_IFMT) == S_IFBLK else {
            let kind = (st.st_mode & S_IFMT) == S_IFREG ? "a regular file" : "not a block device"
            throw TidemarkError(.invalidArgument, "\(path) is \(kind); a block device is needed",
                                hint: "to track a disk image, attach it first: losetup -f --show \(path)")
        }
        let major = UInt32(tm_dev_major(UInt64(st.st_rdev)))
        let minor = UInt32(tm_dev_minor(UInt64(st.st_rdev)))
        let sysDir = "/sys/dev/block/\(major):\(minor)"
        guard let resolved = realpathString(sysDir) else {
            throw TidemarkError(.notFound, "\(path) (\(major):\(minor)) has no entry in /sys/dev/block",
                                hint: "is sysfs mounted? the device may have just been removed")
        }
        let kernelName = String(resolved.split(separator: "/").last ?? "")
        let isPartition = fileExists(resolved + "/partition")
        var wholeMajor = major, wholeMinor = minor, start: UInt64 = 0
        var wholeDir = resolved
        if isPartition {
            wholeDir = String(resolved[..<resolved.lastIndex(of: "/")!])
            guard let dev = readSysfs(wholeDir + "/dev"), let (wm, wn) = parseMajorMinor(dev),
                  let s = readSysfs(resolved + "/start").flatMap({ UInt64($0) }) else {
                throw TidemarkError(.notFound, "cannot find the whole disk of partition \(path) in sysfs")
            }
            wholeMajor = wm; wholeMinor = wn; start = s
        }
        let fd = try FileDescriptor(open: path, .readOnly, purpose: "opening block device")
        var size: UInt64 = 0
        try shimcall("ioctl(BLKGETSIZE64)", "reading the size of \(path)") { tm_blk_size_bytes(fd.rawValue, &size) }
        var lbs: UInt32 = 512
        try shimcall("ioctl(BLKSSZGET)", "reading the sector size of \(path)") { tm_blk_logical_sector_size(fd.rawValue, &lbs) }

        let wholeName = String(wholeDir.split(separator: "/").last ?? "")
        var identity = diskIdentity(wholeDir: wholeDir, wholeName: wholeName)
        if isPartition {
            let number = readSysfs(resolved + "/partition") ?? "?"
            identity += ";part=\(number);start=\(start)"
        }
        return BlockDeviceInfo(path: path, kernelName: kernelName, major: major, minor: minor,
                               wholeMajor: wholeMajor, wholeMinor: wholeMinor, startSector: start,
                               sizeBytes: size, logicalBlockSize: lbs, identity: identity, isPartition: isPartition)
    }

    private static func diskIdentity(wholeDir: String, wholeName: String) -> String {
        if let wwid = readSysfs(wholeDir + "/device/wwid"), !wwid.isEmpty { return "wwid=\(wwid)" }
        if let wwid = readSysfs(wholeDir + "/wwid"), !wwid.isEmpty { return "wwid=\(wwid)" }
        if let serial = readSysfs(wholeDir + "/device/serial"), !serial.isEmpty { return "serial=\(serial)" }
        if let serial = readSysfs(wholeDir + "/serial"), !serial.isEmpty { return "serial=\(serial)" }
        if let backing = readSysfs(wholeDir + "/loop/backing_file"), !backing.isEmpty {
            var st = Glibc.stat()
            let ino = tm_stat(backing, &st) == 0 ? ";ino=\(st.st_ino)" : ""
            return "loop-backing=\(backing)\(ino)"
        }
        return "name=\(wholeName)"
    }
}

/// Reads a small sysfs attribute, trimmed; nil if absent.
public func readSysfs(_ path: String) -> String? {
    SmallFile.attribute(path)
}

public func fileExists(_ path: String) -> Bool { Glibc.access(path, F_OK) == 0 }

public func realpathString(_ path: String) -> String? {
    guard let p = Glibc.realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
}

func parseMajorMinor(_ s: String) -> (UInt32, UInt32)? {
    let parts = s.split(separator: ":")
    guard parts.count == 2, let a = UInt32(parts[0]), let b = UInt32(parts[1]) else { return nil }
    return (a, b)
}

extension String {
    func trimmingCharacters(in set: String) -> String {
        let chars = Set(set)
        var s = Substring(self)
        while let f = s.first, chars.contains(f) { s.removeFirst() }
        while let l = s.last, chars.contains(l) { s.removeLast() }
        return String(s)
    }
}
