import CTidemarkSystem
import Glibc
import Synchronization

/// Where the tracer lives. Overridable for tests that must not disturb a
/// production tracer (`TIDEMARK_BPF_PIN_DIR`, `TIDEMARK_RUN_DIR`).
public enum TracerPaths {
    public static let bpffs = "/sys/fs/bpf"
    public static var pinDir: String {
        SystemEnvironment.variables["TIDEMARK_BPF_PIN_DIR"] ?? "/sys/fs/bpf/tidemark"
    }
    public static var runDir: String {
        SystemEnvironment.variables["TIDEMARK_RUN_DIR"] ?? "/run/tidemark"
    }
}

/// What a slot of the pinned tracer is tracking, and for whom.
public struct TrackedSlot: Sendable, Equatable {
    public var slot: UInt32
    public var wholeDev: UInt32
    public var regionDev: UInt32
    public var chunkShift: UInt32
    public var startSector: UInt64
    public var nrSectors: UInt64
    public var nrChunks: UInt64
    public var attachedUnixNs: UInt64
    public var hrlPath: String

    public var chunkSizeBytes: UInt32 { UInt32(512) << chunkShift }
    public var nrWords: Int { Int((nrChunks + 63) / 64) }
}

/// The pinned eBPF tracer: the program on block:block_rq_complete, its maps,
/// and one mmapable bitmap map per tracked region ("slot"), all pinned under
/// `TracerPaths.pinDir` so tracking goes on while no agent runs. Changes to
/// the slot tables are serialized host-wide by a lock file in the run dir.
public final class Tracer: @unchecked Sendable {
    let disksFD: Int32
    let bitmapsFD: Int32
    let slotStateFD: Int32
    let slotInfoFD: Int32
    /// The issue record (`tm_inflight`): write requests issued whose final
    /// completion the program has not seen.
    let inflightFD: Int32
    /// The issue program's link, held open like `linkFD`.
    let issueLinkFD: Int32
    private let inflightMapping = Mutex<MappedWords?>(nil)
    /// The link, held open: while this process runs, the program stays
    /// attached even if someone removes the pins.
    let linkFD: Int32
    /// The program the link runs, for its recursion-miss counter.
    let progFD: Int32
    /// Kernel ids of the link and of tm_slot_info when this handle was
    /// opened: pins with other ids belong to a tracer loaded since.
    let linkID: UInt32
    let slotInfoMapID: UInt32
    public let pinDir: String

    deinit {
        for fd in [disksFD, bitmapsFD, slotStateFD, slotInfoFD, linkFD, inflightFD, issueLinkFD, progFD] { _ = Glibc.close(fd) }
    }

    private init(pinDir: String, fds: [Int32], progFD: Int32, linkID: UInt32, slotInfoMapID: UInt32) {
        self.pinDir = pinDir
        (disksFD, bitmapsFD, slotStateFD, slotInfoFD, linkFD) = (fds[0], fds[1], fds[2], fds[3], fds[4])
        (inflightFD, issueLinkFD) = (fds[5], fds[6])
        self.progFD = progFD
        self.linkID = linkID
        self.slotInfoMapID = slotInfoMapID
    }

    /// True when a tracer is pinned (a link exists) on this host.
    public static var isPinned: Bool { fileExists(TracerPaths.pinDir + "/link") }

    /// Opens the pinned tracer, loading and pinning it first if `create` is
    /// set and none is there. Returns nil if none is pinned and `create` is false.
    /// Loading and opening happen under the host lock, so the handles are
    /// those of the pinned tracer at that moment; `attach` checks under the
    /// same lock that it still is (another process may have unpinned it in
    /// between) and throws `Tracer.Replaced` otherwise.
    public static func open(create: Bool, pinDir: String = TracerPaths.pinDir) throws -> Tracer? {
        if create {
            try ensureBPFFilesystem()
            try makeDirectories(pinDir, mode: 0o700)
        }
        return try withHostLock { () throws -> Tracer? in
            if create {
                tm_libbpf_quiet(1)
                var err = [CChar](repeating: 0, count: 512)
                let rc = tm_tracer_load_and_pin(pinDir, &err, err.count)
                if rc != 0 {
                    throw Tracer.loadError(errno: -rc, detail: String(cString: err))
                }
            } else if !fileExists(pinDir + "/link") {
                return nil
            }
            var fds: [Int32] = []
            var ok = false
            defer { if !ok { fds.forEach { _ = Glibc.close($0) } } }
            for name in ["tm_disks", "tm_bitmaps", "tm_slot_state", "tm_slot_info", "link"] {
                let fd = bpf_obj_get(pinDir + "/" + name)
                if fd < 0 {
                    throw SystemError(call: "bpf(BPF_OBJ_GET)", errno: errno, context: "opening the pinned tracer object \(pinDir)/\(name)")
                }
                fds.append(fd)
            }
            let link = try objectInfo(fds[4], bpf_link_info(), "the tracer link")
            let mapID = try objectInfo(fds[3], bpf_map_info(), "the tracer slot table").id
            // A tracer pinned by a build with another map layout must not be
            // read with this one's.
            let stateSize = try objectInfo(fds[2], bpf_map_info(), "the tracer slot states").value_size
            guard stateSize == UInt32(MemoryLayout<tm_slot_state>.size) else {
                throw TidemarkError(.unsupported, "the tracer pinned at \(pinDir) was loaded by a Tidemark build with another map layout (slot state of \(stateSize) bytes; this build uses \(MemoryLayout<tm_slot_state>.size), tracer ABI \(TM_TRACER_ABI_VERSION))",
                                    hint: "stop every agent and run `tidemark-agent untrack` for each tracked disk (their next start resyncs), or reboot")
            }
            // Version 3's issue record, pinned before `link`.
            for name in ["tm_inflight", "link-issue"] {
                let fd = bpf_obj_get(pinDir + "/" + name)
                if fd < 0 {
                    throw SystemError(call: "bpf(BPF_OBJ_GET)", errno: errno, context: "opening the pinned tracer object \(pinDir)/\(name)")
                }
                fds.append(fd)
            }
            let prog = bpf_prog_get_fd_by_id(link.prog_id)
            guard prog >= 0 else {
                throw SystemError(call: "bpf(BPF_PROG_GET_FD_BY_ID)", errno: -prog, context: "opening the program of the pinned tracer link")
            }
            ok = true
            return Tracer(pinDir: pinDir, fds: fds, progFD: prog, linkID: link.id, slotInfoMapID: mapID)
        }
    }

    /// Thrown when the pinned tracer is no longer the one this handle opened
    /// (it was unpinned, and maybe loaded again, by another process): open
    /// a new handle and retry.
    public struct Replaced: Error, CustomStringConvertible {
        public var description: String {
            "the pinned tracer was unpinned or replaced by another process after this one opened it; open it again and retry"
        }
    }

    /// The kernel's description of a BPF map, link or program descriptor
    /// (`bpf_obj_get_info_by_fd`); `empty` picks the kind.
    private static func objectInfo<Info>(_ fd: Int32, _ empty: Info, _ what: String) throws -> Info {
        var info = empty
        var length = UInt32(MemoryLayout<Info>.size)
        try shimcall("bpf(BPF_OBJ_GET_INFO_BY_FD)", "reading \(what)") {
            withUnsafeMutableBytes(of: &info) { Int32(bpf_obj_get_info_by_fd(fd, $0.baseAddress, &length)) }
        }
        return info
    }

    /// Whether the pins under `pinDir` are still the objects this handle
    /// holds. Call under the host lock.
    func pinsAreOurs() -> Bool {
        func pinned<Info>(_ name: String, _ empty: Info) -> Info? {
            let fd = bpf_obj_get(pinDir + "/" + name)
            guard fd >= 0 else { return nil }
            defer { _ = Glibc.close(fd) }
            return try? Tracer.objectInfo(fd, empty, pinDir + "/" + name)
        }
        return pinned("link", bpf_link_info())?.id == linkID
            && pinned("tm_slot_info", bpf_map_info())?.id == slotInfoMapID
    }

    /// How many times the kernel skipped the program because it was already
    /// running on that CPU (a completion that nested into another one): each
    /// may have been a write that was not marked.
    public func recursionMisses() throws -> UInt64 {
        try Tracer.objectInfo(progFD, bpf_prog_info(), "the tracer program's recursion misses").recursion_misses
    }

    static func loadError(errno e: Int32, detail: String) -> TidemarkError {
        switch e {
        case EPERM, EACCES:
            return TidemarkError(.unsupported, "cannot load the eBPF tracer: \(detail)",
                                 hint: "run the agent as root (it needs CAP_BPF and CAP_PERFMON)")
        case ENOSYS, EOPNOTSUPP, EINVAL where !fileExists("/sys/kernel/btf/vmlinux"):
            return TidemarkError(.unsupported, "this kernel cannot run the eBPF tracer: \(detail)",
                                 hint: "Tidemark needs a kernel with CONFIG_BPF_SYSCALL, CONFIG_DEBUG_INFO_BTF (/sys/kernel/btf/vmlinux) and tracepoints (5.17 or later)")
        default:
            return TidemarkError(.unsupported, "cannot load the eBPF tracer: \(detail)",
                                 hint: "check `dmesg` and that /sys/kernel/btf/vmlinux exists; the kernel needs BPF, BTF and bpf_loop (5.17+)")
        }
    }

    /// Mounts bpffs at /sys/fs/bpf when nothing of that type is there yet.
    static func ensureBPFFilesystem() throws {
        let bpfMagic: Int64 = 0xCAFE4A11
        if tm_statfs_type(TracerPaths.bpffs) == bpfMagic { return }
        if Glibc.mount("bpf", TracerPaths.bpffs, "bpf", 0, "mode=0700") != 0 {
            let e = Glibc.errno
            throw TidemarkError(.unsupported, "no BPF filesystem at \(TracerPaths.bpffs) and mounting one failed: \(String(cString: strerror(e)))",
                                hint: "mount it: mount -t bpf bpf /sys/fs/bpf")
        }
    }

    /// Runs `body` holding the host-wide tracer lock (blocking flock).
    public static func withHostLock<T>(_ body: () throws -> T) throws -> T {
        try makeDirectories(TracerPaths.runDir, mode: 0o700)
        let lock = try FileDescriptor(open: TracerPaths.runDir + "/tracer.lock", [.readWrite, .create], purpose: "opening the tracer lock")
        try shimcall("flock(LOCK_EX)", "locking \(lock.path)") { tm_flock(lock.rawValue, LOCK_EX) }
        defer { _ = tm_flock(lock.rawValue, LOCK_UN) }
        return try body()
    }

    // MARK: slots

    /// Every slot in use.
    public func slots() throws -> [TrackedSlot] {
        var out: [TrackedSlot] = []
        for slot in 0..<TM_MAX_SLOTS {
            if let s = try slotInfo(UInt32(slot)) { out.append(s) }
        }
        return out
    }

    func slotInfo(_ slot: UInt32) throws -> TrackedSlot? {
        var key = slot
        var info = tm_slot_info()
        _ = try syscall("bpf(BPF_MAP_LOOKUP_ELEM)", "reading tracer slot \(slot)") {
            bpf_map_lookup_elem(slotInfoFD, &key, &info)
        }
        guard info.in_use != 0 else { return nil }
        let path = withUnsafeBytes(of: &info.hrl_path) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return TrackedSlot(slot: slot, wholeDev: info.whole_dev, regionDev: info.region_dev, chunkShift: info.chunk_shift,
                           startSector: info.start_sector, nrSectors: info.nr_sectors, nrChunks: info.nr_chunks,
                           attachedUnixNs: info.attached_unix_ns, hrlPath: path)
    }

    /// The slot tracking `device`, if any.
    public func slot(for device: BlockDeviceInfo) throws -> TrackedSlot? {
        try slots().first { $0.regionDev == device.kernelDev }
    }

    public enum AttachOutcome: Sendable, Equatable {
        /// A new slot: tracking starts now; earlier writes are unknown.
        case attached(TrackedSlot)
        /// The slot was already tracking this device for this .hrl: no write was missed.
        case resumed(TrackedSlot)
    }

    /// Starts tracking `device` at `chunkSizeBytes` for the state file
    /// `hrlPath`, or resumes the pinned slot that already does.
    public func attach(_ device: BlockDeviceInfo, chunkSizeBytes: UInt32, hrlPath: String) throws -> AttachOutcome {
        precondition(chunkSizeBytes >= 4096 && chunkSizeBytes <= 1 << 20 && chunkSizeBytes & (chunkSizeBytes - 1) == 0)
        precondition(hrlPath.hasPrefix("/"), "hrlPath must be absolute")
        guard hrlPath.utf8.count < Int(TM_PATH_MAX) else {
            throw TidemarkError(.invalidArgument, "state file path \(hrlPath) is longer than \(TM_PATH_MAX - 1) bytes",
                                hint: "use a shorter --state-dir")
        }
        return try Tracer.withHostLock {
            guard pinsAreOurs() else { throw Replaced() }
            if let existing = try slot(for: device) {
                guard existing.hrlPath == hrlPath else {
                    throw TidemarkError(.busy, "\(device.path) is already tracked by another agent (state file \(existing.hrlPath))",
                                        hint: "use that agent's --state-dir, or stop it and run `tidemark-agent untrack --disk \(device.path) --state-dir <its dir>` first")
                }
                guard existing.chunkSizeBytes == chunkSizeBytes else {
                    throw TidemarkError(.busy, "\(device.path) is tracked with chunk size \(existing.chunkSizeBytes) bytes, not \(chunkSizeBytes)",
                                        hint: "keep --chunk-size \(existing.chunkSizeBytes), or untrack the disk first (this forces a resync)")
                }
                return .resumed(existing)
            }
            let used = try slots()
            guard let free = (0..<UInt32(TM_MAX_SLOTS)).first(where: { s in !used.contains { $0.slot == s } }) else {
                throw TidemarkError(.busy, "the tracer already tracks \(TM_MAX_SLOTS) devices, its maximum",
                                    hint: "untrack a device you no longer protect")
            }
            let sameDisk = used.filter { $0.wholeDev == device.wholeKernelDev }
            guard sameDisk.count < TM_MAX_REGIONS_PER_DISK else {
                throw TidemarkError(.busy, "\(TM_MAX_REGIONS_PER_DISK) regions of this whole disk are already tracked, the maximum",
                                    hint: "track the whole disk instead of its partitions")
            }
            let shift = UInt32((chunkSizeBytes / 512).trailingZeroBitCount)
            let nrSectors = device.sizeBytes / 512
            let nrChunks = (device.sizeBytes + UInt64(chunkSizeBytes) - 1) / UInt64(chunkSizeBytes)
            let nrWords = max(1, (nrChunks + 63) / 64)
            guard nrWords < UInt64(UInt32.max / 8) else {
                throw TidemarkError(.invalidArgument, "\(device.path) is too large for chunk size \(chunkSizeBytes)",
                                    hint: "use a larger --chunk-size")
            }

            // 1. The bitmap, pinned, and in the outer map before the region
            //    exists: the program must never see a region without its bitmap.
            //    Any failure from here undoes what was made, so no orphaned
            //    pin or half-filled slot is left behind.
            var key = free
            var installed = false
            defer {
                if !installed {
                    _ = bpf_map_delete_elem(bitmapsFD, &key)
                    var empty = tm_slot_info()
                    _ = bpf_map_update_elem(slotInfoFD, &key, &empty, UInt64(BPF_ANY))
                    _ = Glibc.unlink(bitmapPinPath(free))
                }
            }
            var err = [CChar](repeating: 0, count: 256)
            let mapFD = tm_tracer_create_bitmap(UInt32(nrWords), &err, err.count)
            guard mapFD >= 0 else { throw SystemError(call: "bpf(BPF_MAP_CREATE)", errno: -mapFD, context: String(cString: err)) }
            defer { _ = Glibc.close(mapFD) }
            let pin = bitmapPinPath(free)
            _ = Glibc.unlink(pin)
            try shimcall("bpf(BPF_OBJ_PIN)", "pinning \(pin)") { Int32(bpf_obj_pin(mapFD, pin)) }
            var inner = mapFD
            _ = try syscall("bpf(BPF_MAP_UPDATE_ELEM)", "installing the bitmap of slot \(free)") {
                bpf_map_update_elem(bitmapsFD, &key, &inner, UInt64(BPF_ANY))
            }
            var state = tm_slot_state()
            // Misses before this slot existed cannot concern it.
            state.reserved = try recursionMisses()
            _ = try syscall("bpf(BPF_MAP_UPDATE_ELEM)", "resetting slot \(free) state") {
                bpf_map_update_elem(slotStateFD, &key, &state, UInt64(BPF_ANY))
            }
            var info = tm_slot_info()
            info.in_use = 1
            info.whole_dev = device.wholeKernelDev
            info.region_dev = device.kernelDev
            info.chunk_shift = shift
            info.start_sector = device.startSector
            info.nr_sectors = nrSectors
            info.nr_chunks = nrChunks
            info.attached_unix_ns = UInt64(wallClockNanoseconds())
            withUnsafeMutableBytes(of: &info.hrl_path) { raw in
                let bytes = Array(hrlPath.utf8.prefix(Int(TM_PATH_MAX) - 1))
                raw.copyBytes(from: bytes)
            }
            _ = try syscall("bpf(BPF_MAP_UPDATE_ELEM)", "recording slot \(free)") {
                bpf_map_update_elem(slotInfoFD, &key, &info, UInt64(BPF_ANY))
            }
            // 2. The region: from here on, completions are marked.
            let slot = TrackedSlot(slot: free, wholeDev: device.wholeKernelDev, regionDev: device.kernelDev, chunkShift: shift,
                                   startSector: device.startSector, nrSectors: nrSectors, nrChunks: nrChunks,
                                   attachedUnixNs: info.attached_unix_ns, hrlPath: hrlPath)
            try writeRegions(wholeDev: device.wholeKernelDev, slots: sameDisk + [slot])
            installed = true
            return .attached(slot)
        }
    }

    /// Stops tracking a slot and releases its bitmap. When no slot remains,
    /// the whole tracer (program, link, maps) is unpinned and goes away.
    public func detach(_ slot: TrackedSlot) throws {
        try Tracer.withHostLock {
            // A replaced tracer's slot numbers and pins belong to others now.
            guard pinsAreOurs() else { return }
            let others = try slots().filter { $0.wholeDev == slot.wholeDev && $0.slot != slot.slot }
            try writeRegions(wholeDev: slot.wholeDev, slots: others)
            var key = slot.slot
            _ = bpf_map_delete_elem(bitmapsFD, &key)
            var info = tm_slot_info()
            _ = try syscall("bpf(BPF_MAP_UPDATE_ELEM)", "clearing slot \(slot.slot)") {
                bpf_map_update_elem(slotInfoFD, &key, &info, UInt64(BPF_ANY))
            }
            _ = Glibc.unlink(bitmapPinPath(slot.slot))
            if try slots().isEmpty { unpinAll() }
        }
    }

    /// Unpins the whole tracer if no slot uses it: called when a start
    /// failed after loading it, so no idle program stays attached.
    public func releaseIfUnused() throws {
        try Tracer.withHostLock {
            // Judge only the tracer that is pinned: one loaded since this
            // handle was opened may be in use by another agent.
            if pinsAreOurs(), try slots().isEmpty { unpinAll() }
        }
    }

    private func unpinAll() {
        for name in ["link", "link-issue", "tm_disks", "tm_bitmaps", "tm_slot_state", "tm_slot_info", "tm_inflight"] {
            _ = Glibc.unlink(pinDir + "/" + name)
        }
        _ = Glibc.rmdir(pinDir)
    }

    private func writeRegions(wholeDev: UInt32, slots: [TrackedSlot]) throws {
        var key = wholeDev
        if slots.isEmpty {
            _ = bpf_map_delete_elem(disksFD, &key)
            return
        }
        var disk = tm_disk()
        disk.nr_regions = UInt32(slots.count)
        withUnsafeMutableBytes(of: &disk.regions) { raw in
            let regions = raw.bindMemory(to: tm_region.self)
            for (i, s) in slots.enumerated() {
                regions[i] = tm_region(start_sector: s.startSector, nr_sectors: s.nrSectors, nr_chunks: s.nrChunks,
                                       slot: s.slot, chunk_shift: s.chunkShift)
            }
        }
        _ = try syscall("bpf(BPF_MAP_UPDATE_ELEM)", "updating the tracked regions of disk \(wholeDev >> 20):\(wholeDev & 0xFFFFF)") {
            bpf_map_update_elem(disksFD, &key, &disk, UInt64(BPF_ANY))
        }
    }

    func bitmapPinPath(_ slot: UInt32) -> String { pinDir + "/bitmap-\(slot)" }

    // MARK: memory maps

    /// Maps a slot's bitmap into this process (shared with the kernel).
    public func mapBitmap(_ slot: TrackedSlot, writable: Bool = true) throws -> MappedWords {
        let fd = bpf_obj_get(bitmapPinPath(slot.slot))
        guard fd >= 0 else {
            throw SystemError(call: "bpf(BPF_OBJ_GET)", errno: errno, context: "opening the bitmap of slot \(slot.slot)")
        }
        defer { _ = Glibc.close(fd) }
        return try MappedWords(fd: fd, count: max(1, slot.nrWords), writable: writable, what: "the bitmap of slot \(slot.slot)")
    }

    /// The issue record's entries for one whole disk: write requests issued
    /// whose final completion the program has not seen (in flight, or
    /// completed with the completion probe skipped), as whole-disk sector
    /// ranges. Read from the mapped array without locks: an entry claimed or
    /// freed meanwhile may be read half-written, which can only add a range
    /// (of a request in flight); a record of a completion that was skipped
    /// does not change until a program marks its chunks.
    public func issueRecords(wholeDev: UInt32) throws -> [(sector: UInt64, sectors: UInt32)] {
        let table = try inflightTable()
        var out: [(sector: UInt64, sectors: UInt32)] = []
        for i in 0..<Int(TM_MAX_INFLIGHT) {
            let base = i * Tracer.inflightEntryWords
            guard table.load(base) != 0 else { continue }
            let devAndSize = table.load(base + 1)
            guard UInt32(truncatingIfNeeded: devAndSize) == wholeDev else { continue }
            out.append((table.load(base + 2), UInt32(truncatingIfNeeded: devAndSize >> 32)))
        }
        return out
    }

    /// Adds a record to the issue record under the request address `key`,
    /// as the issue program does for a request it sees issued. Tests use it
    /// to stand for a request whose completion the kernel then skipped (its
    /// record stays).
    public func insertIssueRecord(key: UInt64, wholeDev: UInt32, sector: UInt64, sectors: UInt32) throws {
        let table = try inflightTable()
        let index = Int(truncatingIfNeeded: ((key >> 4) &* 0x9E37_79B9_7F4A_7C15) >> (64 - UInt64(TM_INFLIGHT_SHIFT)))
        let base = index * Tracer.inflightEntryWords
        guard table.load(base) == 0 else {
            throw TidemarkError(.busy, "the issue record's entry \(index) is held by another request")
        }
        _ = tm_atomic_exchange_u64(table.base + base + 1, UInt64(wholeDev) | UInt64(sectors) << 32)
        _ = tm_atomic_exchange_u64(table.base + base + 2, sector)
        _ = tm_atomic_exchange_u64(table.base + base, key)
    }

    static let inflightEntryWords = MemoryLayout<tm_issued>.stride / 8
    /// tm_inflight, mapped once.
    func inflightTable() throws -> MappedWords {
        try inflightMapping.withLock { m in
            if let m { return m }
            let mapped = try MappedWords(fd: inflightFD, count: Int(TM_MAX_INFLIGHT) * Tracer.inflightEntryWords,
                                         writable: true, what: "the tracer's issue record")
            m = mapped
            return mapped
        }
    }

    /// Maps the per-slot state array (overflow flags and counters).
    public func mapSlotStates(writable: Bool = true) throws -> MappedWords {
        let words = Int(TM_MAX_SLOTS) * MemoryLayout<tm_slot_state>.stride / 8
        return try MappedWords(fd: slotStateFD, count: words, writable: writable, what: "the tracer slot states")
    }
}

/// 64-bit words of a BPF array map, mapped shared with the kernel.
public final class MappedWords: @unchecked Sendable {
    public let base: UnsafeMutablePointer<UInt64>
    public let count: Int
    private let mappedBytes: Int

    init(fd: Int32, count: Int, writable: Bool, what: String) throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = (count * 8 + page - 1) / page * page
        let prot = writable ? (PROT_READ | PROT_WRITE) : PROT_READ
        guard let p = mmap(nil, bytes, prot, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw SystemError(call: "mmap", errno: errno, context: "mapping \(what)")
        }
        self.base = p.bindMemory(to: UInt64.self, capacity: count)
        self.count = count
        self.mappedBytes = bytes
    }

    /// Private anonymous memory of the same shape, for benchmarks and tests.
    public init(anonymousWordCount count: Int) throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = (count * 8 + page - 1) / page * page
        guard let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            throw SystemError(call: "mmap", errno: errno, context: "allocating \(bytes) bytes")
        }
        self.base = p.bindMemory(to: UInt64.self, capacity: count)
        self.count = count
        self.mappedBytes = bytes
    }

    deinit { munmap(base, mappedBytes) }

    public var buffer: UnsafeBufferPointer<UInt64> { UnsafeBufferPointer(start: base, count: count) }

    // Inlinable: the drain calls these once per dirty word of a bitmap that
    // can be 32 MiB; a cross-module call each would dominate.
    @inlinable @inline(__always) public func load(_ i: Int) -> UInt64 {
        precondition(i >= 0 && i < count)
        return tm_atomic_load_u64(base + i)
    }
    /// Atomically clears `mask` in word i; returns the previous value.
    @inlinable @inline(__always) @discardableResult public func clear(_ i: Int, _ mask: UInt64) -> UInt64 {
        precondition(i >= 0 && i < count)
        return tm_atomic_fetch_and_u64(base + i, ~mask)
    }
    /// Atomically sets `mask` in word i, as the BPF program does: for tests
    /// that play the program's part against a drain.
    func set(_ i: Int, _ mask: UInt64) {
        precondition(i >= 0 && i < count)
        _ = tm_atomic_fetch_or_u64(base + i, mask)
    }
    /// Index of the first non-zero word at or after `from`, or `count`.
    @inlinable @inline(__always) public func nextNonZero(from: Int) -> Int {
        from >= count ? count : from + tm_find_nonzero_word(base + from, count - from)
    }
}

/// The live kernel bitmap of a tracked disk, for the debug tool.
public struct LiveTrackingSnapshot: Sendable {
    public var words: [UInt64]
    public var overflow: Bool
    public var chunkSizeBytes: UInt32
    public var nrChunks: UInt64
    public var devicePath: String
}

public enum LiveTracking {
    /// The undrained bits of the disk whose state file is `path`, or nil if
    /// no pinned tracer slot belongs to that file on this host.
    public static func snapshot(forHRLPath path: String) throws -> LiveTrackingSnapshot? {
        guard Tracer.isPinned, let abs = realpathString(path) else { return nil }
        guard let tracer = try Tracer.open(create: false),
              let slot = try tracer.slots().first(where: { $0.hrlPath == abs }) else { return nil }
        let words = try tracer.mapBitmap(slot, writable: false)
        let states = try tracer.mapSlotStates(writable: false)
        let stride = MemoryLayout<tm_slot_state>.stride / 8
        let overflow = states.load(Int(slot.slot) * stride) != 0
        let copy = (0..<slot.nrWords).map { words.load($0) }
        let dev = "/dev/block/\(slot.regionDev >> 20):\(slot.regionDev & 0xFFFFF)"
        return LiveTrackingSnapshot(words: copy, overflow: overflow, chunkSizeBytes: slot.chunkSizeBytes,
                                    nrChunks: slot.nrChunks, devicePath: dev)
    }
}

/// mkdir -p with a mode for the directories it creates.
public func makeDirectories(_ path: String, mode: mode_t) throws {
    var prefix = ""
    for part in path.split(separator: "/") {
        prefix += "/" + part
        if Glibc.mkdir(prefix, mode) != 0 && errno != EEXIST {
            throw SystemError(call: "mkdir", errno: errno, context: "creating directory \(prefix)")
        }
    }
}

public enum SystemEnvironment {
    public static var variables: [String: String] {
        var out: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { out[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return out
    }
}

/// One tracked slot as the agent drains it: the shared bitmap words and the
/// slot's overflow flag.
public final class SlotBitmap: @unchecked Sendable {
    public let slot: TrackedSlot
    public let words: MappedWords
    private let states: MappedWords
    private let stateIndex: Int

    public init(tracer: Tracer, slot: TrackedSlot) throws {
        self.slot = slot
        self.words = try tracer.mapBitmap(slot)
        self.states = try tracer.mapSlotStates()
        self.stateIndex = Int(slot.slot) * (MemoryLayout<tm_slot_state>.stride / 8)
    }

    /// The program could not set some bits (a run longer than it may loop
    /// over, or a failed lookup): the whole region must count as dirty.
    public var overflowed: Bool { states.load(stateIndex) != 0 }
    /// Clears the overflow flag. Call only after the whole region was made
    /// dirty durably, and before any of it is read.
    public func clearOverflow() { states.clear(stateIndex, ~0) }
    /// Write/discard completions the program has seen for this slot.
    public var events: UInt64 { states.load(stateIndex + 1) }
    /// Failed bitmap lookups in the program (a bug if ever non-zero).
    public var lookupMisses: UInt64 { states.load(stateIndex + 2) }
    /// The program's recursion-miss count that the agent has already
    /// accounted for (the ABI's `reserved` word, written only by agents):
    /// a count above it means completions went unseen since.
    public var recursionMissesSeen: UInt64 { states.load(stateIndex + 3) }
    public func setRecursionMissesSeen(_ v: UInt64) { _ = tm_atomic_exchange_u64(states.base + stateIndex + 3, v) }

    // MARK: Completion cross-check (docs/tracer.md)

    /// Sectors of write and discard completions on the whole disk that the
    /// program has counted since the slot was attached.
    public var diskSectors: UInt64 { states.load(stateIndex + 4) }
    /// The kernel's write+discard sectors of the whole disk minus
    /// `diskSectors`, as established (nil: not yet). Stored in the pinned
    /// slot state, so an agent that restarts keeps it.
    public var sectorOffset: UInt64? { optionalWord(5) }
    public func setSectorOffset(_ v: UInt64) { setOptionalWord(5, v) }
    /// Forgets the offset (it no longer holds: the kernel stopped counting).
    public func clearSectorOffset() { setOptionalWord(5, nil) }

    /// An agent-written word of the slot state that holds 1 + a value, 0 for none.
    private func optionalWord(_ i: Int) -> UInt64? {
        let v = states.load(stateIndex + i)
        return v == 0 ? nil : v &- 1
    }
    private func setOptionalWord(_ i: Int, _ v: UInt64?) {
        _ = tm_atomic_exchange_u64(states.base + stateIndex + i, v.map { $0 &+ 1 } ?? 0)
    }

    /// One sample of (kernel sectors - program sectors), the kernel's read
    /// first. The program counts a completion just before the kernel does
    /// (the tracepoint comes first in blk_update_request), so without a
    /// missed completion a sample never exceeds the true offset; a
    /// completion the program did not see raises it for good.
    /// nil when the kernel's statistics cannot be read.
    public func sectorSample() -> UInt64? {
        guard let kernel = DiskStatistics.writtenSectors(wholeDev: slot.wholeDev) else { return nil }
        let program = diskSectors
        return kernel &- program
    }

    // MARK: Issue record (docs/tracer.md, "Issue record")

    /// Sectors of write requests the issue program recorded.
    public var issuedSectors: UInt64 { states.load(stateIndex + 6) }
    /// Sectors completed on the disk with no record of their issue.
    public var unmatchedSectors: UInt64 { states.load(stateIndex + 7) }
    /// Sectors of recorded requests whose skipped completion the programs
    /// found when the request's address came round again, and marked.
    public var recoveredSectors: UInt64 { states.load(stateIndex + 8) }
    /// Issues not recorded because the record was full.
    public var issuesUnrecorded: UInt64 { states.load(stateIndex + 9) }
    /// kernel − issued − unmatched sectors at the last still moment (nil: none yet).
    public var balanceBase: UInt64? { optionalWord(10) }
    public func setBalanceBase(_ v: UInt64) { setOptionalWord(10, v) }
    public func clearBalanceBase() { setOptionalWord(10, nil) }
    /// Deficit sectors answered from the issue record and not yet confirmed.
    public var pendingSectors: UInt64 { states.load(stateIndex + 11) }
    public func setPendingSectors(_ v: UInt64) { _ = tm_atomic_exchange_u64(states.base + stateIndex + 11, v) }

    /// kernel − issued − unmatched sectors, if the disk was still while it
    /// was read: two readings `gapMicroseconds` apart, each of the kernel's
    /// in-flight counts (requests between their accounting start and end,
    /// and requests at the driver) and then the kernel's, issued and
    /// unmatched sector counts, with nothing in flight in either and every
    /// count the same in both. Then every request issued had completed and
    /// been accounted, so the value is exact (docs/tracer.md). nil when the
    /// disk was not still, or has no statistics.
    public func stillBalance(gapMicroseconds: UInt32) -> UInt64? {
        func reading() -> [UInt64]? {
            guard let k = DiskStatistics.stillness(wholeDev: slot.wholeDev), k.inFlight == 0 else { return nil }
            return [k.sectors, issuedSectors, unmatchedSectors]
        }
        guard let a = reading() else { return nil }
        usleep(gapMicroseconds)
        guard let b = reading(), a == b else { return nil }
        return a[0] &- a[1] &- a[2]
    }

    /// Establishes the offset when the slot has none: the largest of a few
    /// samples (a sample can only fall short of the true offset, by a
    /// completion between its two reads, which at worst causes one
    /// needless whole-disk resync later, never a missed one).
    /// Returns false when the kernel keeps no statistics for the disk.
    @discardableResult
    public func establishSectorOffset(samples: Int, gapMicroseconds: UInt32) -> Bool {
        if sectorOffset != nil { return true }
        var best: UInt64?
        for i in 0..<max(1, samples) {
            if i > 0 { usleep(gapMicroseconds) }
            guard let s = sectorSample() else { return false }
            // Offsets are differences of growing counters: compare as signed.
            if best == nil || Int64(bitPattern: s &- best!) > 0 { best = s }
        }
        if let best { setSectorOffset(best) }
        return best != nil
    }

    /// Sectors the kernel completed on the disk that the program did not
    /// count since the offset was established, with the sample that showed
    /// it (the new offset once the whole disk is marked dirty). nil when
    /// there is no offset, no statistics, or no deficit.
    public func sectorDeficit() -> (sectors: UInt64, sample: UInt64)? {
        guard let offset = sectorOffset, let sample = sectorSample() else { return nil }
        let d = Int64(bitPattern: sample &- offset)
        return d > 0 ? (UInt64(d), sample) : nil
    }
}

/// The kernel's own I/O statistics of a whole disk: the block layer adds
/// each completed request's sectors right after the block_rq_complete
/// tracepoint, independently of any probe on it.
public enum DiskStatistics {
    /// Write plus discard sectors completed on the whole disk since boot
    /// (`/sys/dev/block/MAJ:MIN/stat`, fields 7 and 14; Documentation/block/stat.rst).
    /// nil when unreadable, or when the queue keeps no statistics (iostats 0).
    public static func writtenSectors(wholeDev: UInt32) -> UInt64? {
        let base = "/sys/dev/block/\(wholeDev >> 20):\(wholeDev & 0xfffff)"
        guard iostatsEnabled(base) else { return nil }
        guard let text = readSmallTextFile(base + "/stat") else { return nil }
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).compactMap { UInt64($0) }
        guard f.count >= 7 else { return nil }
        return f[6] &+ (f.count >= 14 ? f[13] : 0)
    }

    /// The kernel's write+discard sectors and its in-flight requests of the
    /// whole disk: `stat` field 9 (requests from the start of their
    /// accounting to its end, which comes after their sectors are counted)
    /// plus the write requests at the driver (`inflight`, field 2), the
    /// first read before the sectors. nil when unreadable or without statistics.
    public static func stillness(wholeDev: UInt32) -> (sectors: UInt64, inFlight: UInt64)? {
        let base = "/sys/dev/block/\(wholeDev >> 20):\(wholeDev & 0xfffff)"
        guard iostatsEnabled(base), let driver = readSmallTextFile(base + "/inflight"),
              let text = readSmallTextFile(base + "/stat") else { return nil }
        let d = driver.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).compactMap { UInt64($0) }
        let f = text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).compactMap { UInt64($0) }
        guard d.count >= 2, f.count >= 9 else { return nil }
        return (f[6] &+ (f.count >= 14 ? f[13] : 0), f[8] &+ d[1])
    }

    static func readSmallTextFile(_ path: String) -> String? {
        guard let text = SmallFile.textIfReadable(path), !text.isEmpty else { return nil }
        return text
    }

    static func iostatsEnabled(_ base: String) -> Bool {
        guard let v = readSmallTextFile(base + "/queue/iostats") else { return true }
        return v.first != "0"
    }
}
