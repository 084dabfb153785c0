import Glibc

/// Small files read whole: state files (the epoch history, the target
/// marker, early-attach records, freeze records, key files), sysfs
/// attributes and /proc files (whose size `stat` reports as 0, so they are
/// read to end of file, sequentially, as procfs requires). Every read is
/// bounded: a file longer than `bytesMax` is refused rather than read
/// without limit.
///
/// Memory: the buffer starts at `min(bytesMax + 1, initialBytes)` and
/// doubles up to `bytesMax + 1`, so a large bound costs nothing for a short
/// file. Stateless; any thread.
///
/// Errors name the path: a `SystemError` for what the kernel refused (its
/// errno: ENOENT when the file is missing), a `TidemarkError(.invalidArgument)`
/// for a file over the bound. The `…IfPresent` and `attribute` forms are for
/// files whose absence is an answer, not a failure.
public enum SmallFile {
    /// The first buffer: one page covers every sysfs attribute and most
    /// state files in one read.
    static let initialBytes = 4096

    /// The bytes of `path`, at most `bytesMax` (> 0). `purpose` says what
    /// the read is for in errors ("reading the epoch history").
    public static func read(_ path: String, bytesMax: Int, purpose: String = "reading") throws -> [UInt8] {
        let fd = try FileDescriptor(open: path, .readOnly, purpose: purpose)
        return try read(fd, path: path, bytesMax: bytesMax, purpose: purpose)
    }

    /// The bytes of an open file from its current position to its end, at
    /// most `bytesMax` (> 0): for a file that had to be opened in a special
    /// way (a secret file checked for its mode, a record held locked).
    /// With `bytesMax < initialBytes` the buffer is allocated once and never
    /// copied, so a caller that zeroes the result leaves no copy behind.
    public static func read(_ fd: FileDescriptor, path: String, bytesMax: Int, purpose: String = "reading") throws -> [UInt8] {
        precondition(bytesMax > 0, "SmallFile.read: bytesMax must be positive")
        var out = [UInt8](repeating: 0, count: min(bytesMax + 1, initialBytes))
        var n = 0
        while n <= bytesMax {
            if n == out.count { out.append(contentsOf: repeatElement(0, count: min(out.count, bytesMax + 1 - out.count))) }
            let got = try out.withUnsafeMutableBytes { b in
                try syscall("read", "\(purpose) \(path)") { Glibc.read(fd.rawValue, b.baseAddress! + n, b.count - n) }
            }
            if got == 0 { break }
            n += got
        }
        guard n <= bytesMax else {
            throw TidemarkError(.invalidArgument, "\(purpose) \(path): the file is longer than \(bytesMax) bytes, the most it can be",
                                hint: "check that \(path) is the file meant; a file of this kind is never that long")
        }
        out.removeSubrange(n...)
        return out
    }

    /// As `read`, decoded as UTF-8 (invalid sequences become U+FFFD).
    public static func readText(_ path: String, bytesMax: Int, purpose: String = "reading") throws -> String {
        String(decoding: try read(path, bytesMax: bytesMax, purpose: purpose), as: UTF8.self)
    }

    /// As `read`, or nil when the file does not exist (ENOENT).
    public static func readIfPresent(_ path: String, bytesMax: Int, purpose: String = "reading") throws -> [UInt8]? {
        do {
            return try read(path, bytesMax: bytesMax, purpose: purpose)
        } catch let e as SystemError where e.errno == ENOENT {
            return nil
        }
    }

    /// The text of a file whose absence or unreadability is an answer (a
    /// record that may not exist, a /proc file of an optional feature), or
    /// nil.
    public static func textIfReadable(_ path: String, bytesMax: Int = 4096) -> String? {
        try? readText(path, bytesMax: bytesMax)
    }

    /// A sysfs or procfs attribute (one short value): its text with
    /// surrounding blanks and newlines removed, or nil when it cannot be
    /// read (absent, not permitted, or longer than `bytesMax`).
    public static func attribute(_ path: String, bytesMax: Int = 4096) -> String? {
        textIfReadable(path, bytesMax: bytesMax)?.trimmingCharacters(in: " \n\t")
    }
}
