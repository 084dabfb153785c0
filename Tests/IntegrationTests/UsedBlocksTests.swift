import Foundation
import Testing
import TidemarkTesting

/// The initial copy reads used blocks only (issue 19): a mounted ext4 or
/// XFS says which blocks it uses (FS_IOC_GETFSMAP); free space, here full of
/// old data (random bytes under the filesystem, and files written then
/// deleted), is neither read nor sent, and is recovered as zeros. An
/// unmounted ext4 says the same through its block bitmaps. A raw disk, or an
/// ext4 not cleanly unmounted, is read whole, and says so.
@Suite(.serialized) struct UsedBlocksTests {
    /// The agent's "N of M chunks" of its used-blocks line.
    static func usedChunks(_ log: String) -> (used: Int, all: Int)? {
        guard let line = log.split(separator: "\n").first(where: { $0.contains("the resync reads used blocks only") }),
              let r = line.range(of: #"(\d+) of (\d+) chunks"#, options: .regularExpression) else { return nil }
        let nums = line[r].split(separator: " ").compactMap { Int($0) }
        return nums.count == 2 ? (nums[0], nums[1]) : nil
    }

    /// "read B bytes and sent" of the completed initial copy.
    static func bytesRead(_ log: String) -> UInt64? {
        guard let line = log.split(separator: "\n").first(where: { $0.contains("complete: ") && $0.contains("resync of") }),
              let r = line.range(of: #"read (\d+) bytes and sent"#, options: .regularExpression) else { return nil }
        return line[r].split(separator: " ").compactMap { UInt64($0) }.first
    }

    @Test(.requiresRoot, arguments: ["ext4", "xfs"])
    func theInitialCopyReadsOnlyUsedBlocks(filesystem: String) throws {
        // 512 MiB: XFS takes no less than 300 MB.
        let w = try FaultWorld("used-\(filesystem)", diskMiB: 512, filesystem: filesystem, staleFreeSpace: true)
        defer { w.close() }
        // 100 MiB of files, 60 MiB of them deleted again: their data stays in free blocks.
        try sh("for i in $(seq 1 10); do dd if=/dev/urandom of=\(w.mnt)/f$i bs=1M count=10 status=none; done; sync; rm \(w.mnt)/f[1-6]; sync; fstrim -v \(w.mnt) >/dev/null 2>&1 || true")
        try w.startServer()
        try w.startAgent()
        try w.waitFor("the initial copy", timeoutSeconds: 120) { Self.bytesRead(w.agent!.stderr) != nil }
        let log = w.agent!.stderr
        let chunks = try #require(Self.usedChunks(log), "no used-blocks line: \(w.logs)")
        // ~40 MiB of files, the headers, metadata and journal: well under half of 8192 chunks.
        #expect(chunks.all == 8192 && chunks.used < 4096, "\(chunks)")
        // The used chunks, and chunks written meanwhile read again (the
        // journal, ext4's lazy inode-table zeroing): far from the whole disk.
        let read = try #require(Self.bytesRead(log))
        #expect(read < UInt64(chunks.all) * 65536 / 2, "read \(read) bytes for \(chunks.used) used chunks of \(chunks.all)")
        let scope = (try w.diskStatus()["activity"] as? [String: Any])?["scope"] as? String
        #expect(scope == nil || scope!.contains("used blocks only"), "\(scope ?? "")")

        let id = try w.point()
        let nonZero = try w.recoverAndCompareFiles(id, filesystem: filesystem)
        // Free space came back as zeros: only chunks the filesystem used hold data.
        #expect(nonZero > 0 && nonZero <= chunks.used, "\(nonZero) non-zero chunks recovered, \(chunks.used) used")
    }

    /// An unmounted ext4 is asked through its own block bitmaps (libext2fs):
    /// the same used blocks only, the same files back.
    @Test(.requiresRoot) func anUnmountedExt4IsAskedThroughItsBitmaps() throws {
        let w = try FaultWorld("used-unmounted", diskMiB: 512, filesystem: "ext4", staleFreeSpace: true)
        defer { w.close() }
        try sh("for i in $(seq 1 10); do dd if=/dev/urandom of=\(w.mnt)/f$i bs=1M count=10 status=none; done; sync; rm \(w.mnt)/f[1-6]; umount \(w.mnt)")
        w.mounted = false
        try w.startServer()
        try w.startAgent()
        try w.waitFor("the initial copy", timeoutSeconds: 120) { Self.bytesRead(w.agent!.stderr) != nil }
        let log = w.agent!.stderr
        #expect(log.contains("the unmounted ext2/3/4 on \(w.disk.path) (its block bitmaps)"), "\(w.logs)")
        let chunks = try #require(Self.usedChunks(log), "no used-blocks line: \(w.logs)")
        #expect(chunks.all == 8192 && chunks.used < 4096, "\(chunks)")
        // Nothing is written while unmounted: exactly the used chunks are read.
        let read = try #require(Self.bytesRead(log))
        #expect(read <= UInt64(chunks.used) * 65536, "read \(read) bytes for \(chunks.used) used chunks of \(chunks.all)")
        let id = try w.point()
        let nonZero = try w.recoverAndCompareFiles(id, filesystem: "ext4")
        #expect(nonZero > 0 && nonZero <= chunks.used, "\(nonZero) non-zero chunks recovered, \(chunks.used) used")
    }

    /// A disk with a partition table: each partition's filesystem is asked
    /// (p1 mounted: FS_IOC_GETFSMAP; p2 unmounted: its bitmaps); the table,
    /// the gaps and the unpartitioned end are read whole. The recovered
    /// disk's partitions pass fsck with every file identical, and the raw
    /// end is byte-identical.
    @Test(.requiresRoot) func aPartitionedDiskAsksEachPartition() throws {
        let w = try FaultWorld("used-parts", diskMiB: 384, filesystem: "none", staleFreeSpace: true)
        defer { w.close() }
        let d = w.disk.path, p1 = d + "p1", p2 = d + "p2", m2 = w.h.dir + "/mnt2"
        // Partitions added by hand outlive the loop device's detach: delete them first.
        w.cleanups.append { _ = try? sh("umount \(m2) 2>/dev/null; umount \(w.mnt) 2>/dev/null; delpart \(d) 2; delpart \(d) 1") }
        // p1: 1 MiB..161 MiB, p2: 161 MiB..321 MiB, 63 MiB of raw data after (sectors of 512 bytes).
        try sh("addpart \(d) 1 2048 327680 && addpart \(d) 2 329728 327680 && udevadm settle 2>/dev/null; for i in $(seq 50); do [ -b \(p2) ] && break; sleep 0.1; done")
        try sh("mkfs.ext4 -q -F -E nodiscard \(p1) && mkfs.ext4 -q -F -E nodiscard \(p2) && mkdir -p \(w.mnt) \(m2) && mount \(p1) \(w.mnt)")
        w.mounted = true
        try sh("""
            for i in $(seq 1 6); do dd if=/dev/urandom of=\(w.mnt)/f$i bs=1M count=10 status=none; done; rm \(w.mnt)/f[1-4]
            mount \(p2) \(m2) && cp -a /usr/include/linux \(m2)/ && dd if=/dev/urandom of=\(m2)/g bs=1M count=20 status=none && rm \(m2)/g && umount \(m2); sync
            """)
        try w.startServer()
        try w.startAgent()
        try w.waitFor("the initial copy", timeoutSeconds: 120) { Self.bytesRead(w.agent!.stderr) != nil }
        let log = w.agent!.stderr
        #expect(log.contains("its partitions (loop") && log.contains("p1: ext4 at \(w.mnt)") && log.contains("p2: the unmounted ext2/3/4 on \(p2)"), "\(w.logs)")
        let chunks = try #require(Self.usedChunks(log), "no used-blocks line: \(w.logs)")
        // 6144 chunks; used: 1 MiB before p1, ~20 MiB of files and metadata on
        // p1, linux headers and metadata on p2, the 63 MiB raw end: far from all.
        #expect(chunks.all == 6144 && chunks.used < 3072 && chunks.used > 63 * 16, "\(chunks)")

        let id = try w.point()
        let out = w.h.dir + "/rec-\(id).img", truth = w.h.dir + "/truth-\(id).img"
        let r = try run([TestEnv.binary("tidemarkctl"), "recover", "--point", id, "--to", out,
                         "--target", w.target, "--key", w.tls + "/replication.key"])
        #expect(r.ok, "recover \(id): \(r.stderr)")
        for (n, start) in [(1, 2048), (2, 329728)] {
            let a = w.h.dir + "/rec-p\(n)", b = w.h.dir + "/truth-p\(n)"
            try sh("mkdir -p \(a) \(b)")
            let fsck = try run(["/bin/sh", "-c", "l=$(losetup -f --show -r -o \(start * 512) --sizelimit \(327680 * 512) \(out)) && fsck.ext4 -n -f $l; rc=$?; losetup -d $l; exit $rc"])
            #expect(fsck.ok, "fsck of partition \(n): \(fsck.stdout) \(fsck.stderr)")
            try sh("mount -o ro,noload,loop,offset=\(start * 512),sizelimit=\(327680 * 512) \(out) \(a) && mount -o ro,noload,loop,offset=\(start * 512),sizelimit=\(327680 * 512) \(truth) \(b)")
            let diff = try run(["/usr/bin/diff", "-r", "--no-dereference", a, b])
            _ = try? sh("umount \(a); umount \(b)")
            #expect(diff.ok, "partition \(n) of point \(id) differs: \(diff.stdout.prefix(2000))")
        }
        // The raw end (and the table before p1) read whole: byte-identical.
        let tail = try run(["/usr/bin/cmp", "-i", "\(657408 * 512)", out, truth])
        #expect(tail.ok, "the unpartitioned end differs: \(tail.stdout)")
        let head = try run(["/usr/bin/cmp", "-n", "\(2048 * 512)", out, truth])
        #expect(head.ok, "the space before p1 differs: \(head.stdout)")
    }

    /// An ext4 left mounted elsewhere or crashed (its state not clean) may
    /// hold allocations its bitmaps do not show: read whole, and say why.
    @Test(.requiresRoot) func anUncleanExt4IsReadWhole() throws {
        let w = try FaultWorld("used-unclean", diskMiB: 64, filesystem: "ext4")
        defer { w.close() }
        try sh("umount \(w.mnt) && debugfs -w -R 'ssv state 0' \(w.disk.path) >/dev/null 2>&1")
        w.mounted = false
        try w.startServer()
        try w.startAgent(replication: ["bandwidth_limit: 1m"])
        try w.waitFor("the whole-disk line", timeoutSeconds: 30) { w.agent!.stderr.contains("the resync reads the whole disk: ") }
        #expect(w.agent!.stderr.contains("was not cleanly unmounted"), "\(w.logs)")
    }

    /// A disk without a filesystem is read whole, and the log and status say why.
    @Test(.requiresRoot) func aRawDiskIsReadWholeAndSaysSo() throws {
        let w = try FaultWorld("used-raw", diskMiB: 64, filesystem: "none")
        defer { w.close() }
        try w.startServer()
        // 8 MiB of data at 1 MiB/s: the copy lasts long enough to be seen.
        try w.startAgent(replication: ["bandwidth_limit: 1m"])
        try w.waitFor("the whole-disk line", timeoutSeconds: 30) { w.agent!.stderr.contains("the resync reads the whole disk: ") }
        #expect(w.agent!.stderr.contains("it holds no ext2/3/4 filesystem"), "\(w.logs)")
        var scope = ""
        try w.waitFor("the scope in status", timeoutSeconds: 10) {
            scope = (try w.diskStatus()["activity"] as? [String: Any])?["scope"] as? String ?? ""
            return !scope.isEmpty
        }
        #expect(scope.hasPrefix("the whole disk: "), "\(scope)")
    }
}
