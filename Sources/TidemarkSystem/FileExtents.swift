import CTidemarkSystem
import Glibc

/// One extent of a file as FIEMAP reports it: `length` bytes at file offset
/// `logical` live at byte `physical` of the block device holding the
/// filesystem (`st_dev` of the file).
public struct FileExtent: Sendable, Equatable {
    public var logical: UInt64
    public var physical: UInt64
    public var length: UInt64
    public var flags: UInt32

    public init(logical: UInt64, physical: UInt64, length: UInt64, flags: UInt32) {
        self.logical = logical; self.physical = physical; self.length = length; self.flags = flags
    }

    // linux/fiemap.h
    public static let flagLast: UInt32 = 0x0001
    public static let flagMerged: UInt32 = 0x1000
    /// Every flag except LAST and MERGED means the extent is not a plain run
    /// of written blocks at a known place on the device.
    static let flagNames: [(UInt32, String)] = [
        (0x0002, "unknown location"), (0x0004, "delayed allocation"), (0x0008, "encoded"),
        (0x0080, "encrypted"), (0x0100, "not block-aligned"), (0x0200, "inline in metadata"),
        (0x0400, "packed tail"), (0x0800, "unwritten (preallocated)"), (0x2000, "shared (reflinked)"),
    ]

    /// Why this extent cannot be written in place through the raw device, or
    /// nil if it can.
    public var problem: String? {
        var names: [String] = []
        var known: UInt32 = Self.flagLast | Self.flagMerged
        for (bit, name) in Self.flagNames {
            known |= bit
            if flags & bit != 0 { names.append(name) }
        }
        if flags & ~known != 0 { names.append("unknown flags 0x\(String(flags & ~known, radix: 16))") }
        return names.isEmpty ? nil : names.joined(separator: ", ")
    }
}

public enum FileExtents {
    /// The extents of `[0, length)` of the open file `fd` (FS_IOC_FIEMAP with
    /// FIEMAP_FLAG_SYNC, so delayed allocation is resolved first). At most
    /// `maxExtents + 1` are returned, so a caller can tell "too many".
    public static func map(_ fd: FileDescriptor, length: UInt64, maxExtents: Int) throws -> [FileExtent] {
        let n = maxExtents + 1
        var logical = [UInt64](repeating: 0, count: n), physical = logical, lengths = logical
        var flags = [UInt32](repeating: 0, count: n)
        var count: UInt32 = 0
        try shimcall("ioctl(FS_IOC_FIEMAP)", "mapping the blocks of \(fd.path)") {
            tm_fiemap(fd.rawValue, length, UInt32(n), &logical, &physical, &lengths, &flags, &count)
        }
        return (0..<Int(count)).map { FileExtent(logical: logical[$0], physical: physical[$0], length: lengths[$0], flags: flags[$0]) }
    }

    /// statfs(2) f_type of the filesystem holding `path`, or nil.
    public static func filesystemType(_ path: String) -> Int64? {
        let t = tm_statfs_type(path)
        return t < 0 ? nil : Int64(t)
    }

    public static let ext4Magic: Int64 = 0xEF53
    public static let xfsMagic: Int64 = 0x5846_5342
}

/// One line of /proc/self/mountinfo.
public struct MountEntry: Sendable, Equatable {
    /// The filesystem's st_dev (major, minor).
    public var major: UInt32
    public var minor: UInt32
    public var mountPoint: String
    /// The mount source ("/dev/sda2", "tmpfs", ...).
    public var source: String
    public var fsType: String
    /// The superblock is read-write (the per-superblock options, after " - "):
    /// only then can the filesystem write to its device.
    public var superblockWritable: Bool

    /// The largest mount table read: a host with tens of thousands of
    /// mounts (containers) stays far below it, at about 150 bytes a line.
    public static let mountTableBytesMax = 64 << 20

    /// Parses /proc/self/mountinfo (see proc(5)); unparsable lines are skipped.
    public static func current(path: String = "/proc/self/mountinfo") throws -> [MountEntry] {
        let bytes = try SmallFile.read(path, bytesMax: mountTableBytesMax, purpose: "reading the mount table")
        var out: [MountEntry] = []
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard let dash = f.firstIndex(of: "-"), dash >= 6, f.count >= dash + 4 else { continue }
            let mm = f[2].split(separator: ":")
            guard mm.count == 2, let major = UInt32(mm[0]), let minor = UInt32(mm[1]) else { continue }
            let superOptions = f[dash + 3].split(separator: ",")
            out.append(MountEntry(major: major, minor: minor, mountPoint: unescape(f[4]), source: unescape(f[dash + 2]),
                                  fsType: f[dash + 1], superblockWritable: superOptions.contains("rw")))
        }
        return out
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == UInt8(ascii: "\\"), i + 4 <= b.count,
               let v = UInt8(String(decoding: b[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The kernel encoding (major << 20 | minor) of this filesystem's st_dev.
    public var kernelDev: UInt32 { BlockDeviceInfo.kernelDev(major: major, minor: minor) }

    /// The st_rdev of `source` when it is a block device node, else nil.
    public var sourceKernelDev: UInt32? {
        guard source.hasPrefix("/") else { return nil }
        var st = Glibc.stat()
        guard tm_stat(source, &st) == 0, (st.st_mode & S_IFMT) == S_IFBLK else { return nil }
        return BlockDeviceInfo.kernelDev(major: UInt32(tm_dev_major(UInt64(st.st_rdev))),
                                         minor: UInt32(tm_dev_minor(UInt64(st.st_rdev))))
    }
}

extension BlockDeviceInfo {
    /// The kernel encoding (major << 20 | minor) of a `st_dev` / `st_rdev`.
    public static func kernelDev(statDev d: UInt64) -> UInt32 {
        kernelDev(major: UInt32(tm_dev_major(d)), minor: UInt32(tm_dev_minor(d)))
    }

    /// The kernel devs (major << 20 | minor) whose filesystems write to this
    /// device: itself, its partitions when it is a whole disk, and, through
    /// /sys/class/block/*/holders, every device stacked on any of these
    /// (device mapper, md), transitively.
    public func devicesWritingTo() -> Set<UInt32> {
        var names: [String] = [kernelName]
        if !isPartition, let entries = listDirectory("/sys/class/block/\(kernelName)") {
            for e in entries where fileExists("/sys/class/block/\(kernelName)/\(e)/partition") { names.append(e) }
        }
        var seen = Set<String>()
        var devs = Set<UInt32>([kernelDev])
        var i = 0
        while i < names.count {
            let n = names[i]
            i += 1
            guard seen.insert(n).inserted else { continue }
            if let d = readSysfs("/sys/class/block/\(n)/dev"), let (ma, mi) = parseMajorMinor(d) {
                devs.insert(BlockDeviceInfo.kernelDev(major: ma, minor: mi))
            }
            for h in listDirectory("/sys/class/block/\(n)/holders") ?? [] { names.append(h) }
        }
        return devs
    }

    /// Mounts whose superblock is read-write on this device or anything
    /// writing to it (`devicesWritingTo`).
    public func writableMounts(in mounts: [MountEntry]) -> [MountEntry] {
        let devs = devicesWritingTo()
        return mounts.filter { m in
            m.superblockWritable && (devs.contains(m.kernelDev) || m.sourceKernelDev.map { devs.contains($0) } == true)
        }
    }
}

/// The names in a directory (no "." or ".."), or nil if it cannot be read.
public func listDirectory(_ path: String) -> [String]? {
    guard let d = opendir(path) else { return nil }
    defer { closedir(d) }
    var out: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        if name != "." && name != ".." { out.append(name) }
    }
    return out
}
