import Glibc
import TidemarkSystem

/// One `.hrl` change-tracking file: the persistent half of change capture.
///
/// It holds every chunk bit drained from the kernel map whose data is not yet
/// committed to target storage, plus the disk's identity and tracking state.
/// The format (docs/hrl-format.md) keeps two physical slots per page, so an
/// update never overwrites the only valid copy: a crash in the middle of a
/// write leaves the previous version readable, and a torn or damaged file is
/// reported as `TrackingFileError`, never trusted.
///
/// Every mutating call is durable when it returns (written and
/// `fdatasync`ed). Memory stays small whatever the disk size: the bits stay
/// on disk and only 16 bytes of metadata per 4 KiB bitmap page are kept
/// (current slot, sequence, set-bit count); pages are read, modified and
/// written on demand through reused page buffers.
///
/// A writable handle holds an exclusive `flock` on the file for its lifetime,
/// so two agents never update the same file; read-only handles (the debug
/// tool) take no lock and tolerate a concurrent writer: their `header` is as
/// of `open`, and every query re-reads both slots of each page, so it sees
/// each page's latest complete version (not one instant across pages).
///
/// `@unchecked Sendable`: the handle has mutable state and no lock of its
/// own. The caller serializes access (the agent gives each disk's file to one
/// task); it may be handed between tasks.
public final class TrackingFile: @unchecked Sendable {
    public static let formatVersion: UInt32 = HRLFormat.version
    /// Bitmap words per 4 KiB page (the rest of the page is its trailer).
    public static let wordsPerPage: Int = HRLFormat.wordsPerPage
    public static let pageSize: Int = HRLFormat.pageSize

    public let path: String
    public let isReadOnly: Bool
    public private(set) var header: HRLHeader

    /// What is kept in memory per logical bitmap page (16 bytes with padding).
    struct PageMeta {
        var sequence: UInt64
        var popcount: UInt32
        var slot: UInt8
    }

    private var fd: FileDescriptor?
    private var pages: [PageMeta]
    private let context: HRLFormat.PageContext
    /// Read-modify-write buffer of the mutating calls.
    private let modifyBuffer = AlignedBuffer(count: HRLFormat.pageSize)
    /// Separate from `modifyBuffer` so the body of `forEachDirtyExtent` may
    /// call the mutating methods (clear what it just handled).
    private let scanBuffer = AlignedBuffer(count: HRLFormat.pageSize)
    private let headerBuffer = AlignedBuffer(count: HRLFormat.pageSize)
    /// True between the first write of an update and its successful
    /// `fdatasync`. If it stays true (the update threw), this handle no longer
    /// knows which slots are durable, and writing again could overwrite the
    /// only valid copy of a page — so every later mutation is refused.
    private var unsyncedWrites = false
    /// Recorded in every header write; read once, it cannot change while we run.
    private let hostBootID: String

    private init(path: String, fd: FileDescriptor, readOnly: Bool, header: HRLHeader, pages: [PageMeta], bootID: String) {
        self.path = path
        self.fd = fd
        self.isReadOnly = readOnly
        self.header = header
        self.pages = pages
        self.context = HRLFormat.PageContext(binding: HRLFormat.binding(header.fileUUID),
                                             wordCount: header.wordCount, nrChunks: header.nrChunks)
        self.hostBootID = HRLFormat.fieldValue(bootID, size: HRLFormat.H.bootID.size)
        precondition(pages.count == Int(header.bitmapPages))
    }

    // MARK: - Creating and opening

    /// Creates a new file for `identity`, replacing any file at `path`, with
    /// no dirty bits. The file is written in full under a temporary name in
    /// the same directory, flushed, renamed over `path` and the directory
    /// flushed, so a crash leaves either the old file or the complete new one.
    /// Refuses (`TidemarkError.busy`) when another handle has the old file
    /// open for writing.
    /// `bootID` is this boot's id (`bootID(_:)`), written with the state.
    public static func create(at path: String, identity: DiskIdentity, chunkSizeBytes: UInt32,
                              state: TrackingState, reason: ResyncReason, reasonText: String,
                              bootID: String = TrackingFile.bootID()) throws -> TrackingFile {
        guard HRLFormat.isValidChunkSize(chunkSizeBytes) else {
            throw TidemarkError(.invalidArgument, "chunk size \(chunkSizeBytes) bytes is not supported",
                                hint: "use a power of two from 4096 to 1048576 bytes (default 65536)")
        }
        guard identity.sizeBytes > 0 && identity.sizeBytes <= HRLFormat.maxDiskSizeBytes else {
            throw TidemarkError(.invalidArgument, "disk size \(identity.sizeBytes) bytes is out of range for a tracking file",
                                hint: "the disk must be 1 byte to 64 PiB")
        }
        let layout = HRLFormat.layout(diskSizeBytes: identity.sizeBytes, chunkSizeBytes: chunkSizeBytes)
        let now = wallClockUnixNs()
        let header = HRLHeader(
            formatVersion: HRLFormat.version, generation: 1, diskSizeBytes: identity.sizeBytes,
            chunkSizeBytes: chunkSizeBytes, state: state, nrChunks: layout.nrChunks, bitmapPages: layout.bitmapPages,
            createdUnixNs: now, stateChangedUnixNs: now, drainSeq: 0, clearSeq: 0, reason: reason,
            fileUUID: randomUUID(),
            diskID: HRLFormat.fieldValue(identity.diskID, size: HRLFormat.H.diskID.size),
            diskIdentity: HRLFormat.fieldValue(identity.identity, size: HRLFormat.H.diskIdentity.size),
            reasonText: HRLFormat.fieldValue(reasonText, size: HRLFormat.H.reasonText.size),
            targetID: "",
            bootID: HRLFormat.fieldValue(bootID, size: HRLFormat.H.bootID.size))

        // Held until the rename, so no one starts updating the old file meanwhile.
        var oldFile: FileDescriptor?
        do {
            let old = try FileDescriptor(open: path, .readOnly, purpose: "checking the existing tracking file")
            guard try old.tryLockExclusive(graceMs: HRLFormat.lockGraceMs) else { throw busyError(path) }
            oldFile = old
        } catch let e as SystemError where e.errno == ENOENT {}

        var suffix = ""
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<4 { suffix += String(UInt8.random(in: 0...255, using: &rng), radix: 16) }
        let tmpPath = "\(path).tmp-\(getpid())-\(suffix)"
        let tmp = try FileDescriptor(open: tmpPath, [.readWrite, .create, .exclusive], mode: 0o600,
                                     purpose: "creating the tracking file")
        var renamed = false
        defer { if !renamed { _ = unlink(tmpPath) } }
        // Nobody else knows the name yet, so this cannot fail; the lock goes
        // with the file through the rename.
        guard try tmp.tryLockExclusive() else { throw busyError(tmpPath) }
        try writeInitialContents(tmp, header)
        try tmp.dataSync()
        _ = try syscall("rename", "renaming \(tmpPath) to \(path)") { Glibc.rename(tmpPath, path) }
        renamed = true
        try syncDirectory(containing: path)
        withExtendedLifetime(oldFile) {}

        // Re-wrap the descriptor under the final name (for error messages);
        // the duplicate shares the open file description and so the lock.
        let dupFD = try syscall("fcntl(F_DUPFD_CLOEXEC)", "duplicating the descriptor of \(path)") {
            fcntl(tmp.rawValue, F_DUPFD_CLOEXEC, 0)
        }
        let fd = FileDescriptor(takingOwnershipOf: dupFD, path: path)
        let pages = [PageMeta](repeating: PageMeta(sequence: 1, popcount: 0, slot: 0), count: Int(layout.bitmapPages))
        return TrackingFile(path: path, fd: fd, readOnly: false, header: header, pages: pages, bootID: bootID)
    }

    /// Header in slot 1 (generation 1), slot 0 zero; every bitmap page with
    /// slot A = sequence 1, no bits, and slot B zero. All bytes are written,
    /// not left as holes, so running out of space shows now, not mid-update.
    private static func writeInitialContents(_ fd: FileDescriptor, _ header: HRLHeader) throws {
        let ps = HRLFormat.pageSize
        let headers = AlignedBuffer(count: 2 * ps)
        HRLFormat.encodeHeader(header, into: headers.slice(ps, ps))
        try fd.write(UnsafeRawBufferPointer(headers.bytes), at: 0)

        let binding = HRLFormat.binding(header.fileUUID)
        let batchPages = 32  // logical pages per write: 256 KiB
        let batch = AlignedBuffer(count: batchPages * 2 * ps)
        var page: UInt64 = 0
        while page < header.bitmapPages {
            let n = Int(min(UInt64(batchPages), header.bitmapPages - page))
            batch.bytes.initializeMemory(as: UInt8.self, repeating: 0)
            for k in 0..<n {
                HRLFormat.sealBitmapPage(batch.slice(k * 2 * ps, ps), page: page + UInt64(k), sequence: 1, binding: binding)
            }
            try fd.write(UnsafeRawBufferPointer(batch.slice(0, n * 2 * ps)),
                         at: HRLFormat.bitmapSlotOffset(page: page, slot: 0))
            page += UInt64(n)
        }
    }

    /// Opens and fully validates an existing file: both slots of every page
    /// are read and checked, so a damaged file fails here, not in the middle
    /// of a drain. Throws `TrackingFileError` for any damage, `SystemError`
    /// for I/O failures and `TidemarkError.busy` when another handle has the
    /// file open for writing (writable opens only).
    /// `bootID` is this boot's id (`bootID(_:)`), written with later states.
    public static func open(at path: String, readOnly: Bool = false, bootID: String = TrackingFile.bootID()) throws -> TrackingFile {
        let fd = try FileDescriptor(open: path, readOnly ? .readOnly : .readWrite, purpose: "opening the tracking file")
        if !readOnly {
            guard try fd.tryLockExclusive(graceMs: HRLFormat.lockGraceMs) else { throw busyError(path) }
        }
        let scan = readOnly
            ? try scanSettled(fd: fd, path: path, stopAtFirstProblem: true, buildPageTable: true)
            : try HRLScanner.scan(fd: fd, path: path, stopAtFirstProblem: true, buildPageTable: true)
        if let first = scan.problems.first { throw first }
        guard let header = scan.header else {
            throw TrackingFileError(.corrupt, path: path, detail: "no usable header")  // unreachable: no problem means a header
        }
        let file = TrackingFile(path: path, fd: fd, readOnly: readOnly, header: header, pages: scan.pages, bootID: bootID)
        if !readOnly && header.updateInFlight { try file.finishInterruptedUpdate() }
        return file
    }

    /// After a crash during a bitmap update, some non-current slots may be
    /// torn. Rewrites every page's current copy into its other slot, so both
    /// are valid again, then clears the in-flight flag: from then on any
    /// invalid slot is damage, not a crash.
    private func finishInterruptedUpdate() throws {
        let fd = try beginMutation()
        for page in pages.indices {
            try loadCurrent(page, into: modifyBuffer, fd)
            try writeNextSlot(page, from: modifyBuffer, fd)
        }
        try commitHeader { $0.updateInFlight = false }
    }

    /// Every problem that makes the file unusable, one line each, naming the
    /// page or field; empty means `open` would succeed. Unlike `open` it does
    /// not stop at the first problem. Never modifies the file.
    public static func verify(at path: String) -> [String] {
        verifyReport(at: path).problems
    }

    /// `verify` with the decoded header and notes on harmless findings
    /// (e.g. a slot torn by a crash whose other slot is intact).
    public static func verifyReport(at path: String) -> HRLVerifyReport {
        do {
            let fd = try FileDescriptor(open: path, .readOnly, purpose: "opening the tracking file")
            let scan = try scanSettled(fd: fd, path: path, stopAtFirstProblem: false, buildPageTable: false)
            var problems = scan.problems.map(\.detail)
            if scan.omittedProblems > 0 { problems.append("… and \(scan.omittedProblems) more problems") }
            return HRLVerifyReport(header: scan.header, problems: problems, notes: scan.notes)
        } catch {
            return HRLVerifyReport(header: nil, problems: ["cannot read the file: \(error)"], notes: [])
        }
    }

    /// Read-only scans take no lock, so an agent may be updating the file
    /// meanwhile: a reader that saw the header just before the writer's
    /// intent header landed can then meet a half-written page slot. Such a
    /// problem goes away once the header moves on; a real one stays with the
    /// same header generation. So a scan with problems is repeated, a bounded
    /// number of times, while the generation keeps changing.
    static let readRetryCountMax = 5
    static let readRetryDelayMs: UInt32 = 20

    static func scanSettled(fd: FileDescriptor, path: String, stopAtFirstProblem: Bool, buildPageTable: Bool) throws -> HRLScanner.Result {
        var scan = try HRLScanner.scan(fd: fd, path: path, stopAtFirstProblem: stopAtFirstProblem, buildPageTable: buildPageTable)
        var attempt = 0
        while !scan.problems.isEmpty && attempt < readRetryCountMax {
            attempt += 1
            usleep(readRetryDelayMs * 1000)
            let again = try HRLScanner.scan(fd: fd, path: path, stopAtFirstProblem: stopAtFirstProblem, buildPageTable: buildPageTable)
            let moved = again.header?.generation != scan.header?.generation
            scan = again
            if !moved { break }
        }
        return scan
    }

    /// Closes the file (and releases the lock). Later calls throw.
    public func close() {
        fd = nil
    }

    // MARK: - Header updates

    /// Records a new tracking state, why, and when. Any shutdown-seal nonce
    /// is cleared: it belongs to the `clean` state set by `setClean`.
    public func setState(_ state: TrackingState, reason: ResyncReason, text: String) throws {
        try beginMutation()
        let now = wallClockUnixNs()
        try commitHeader {
            $0.state = state
            $0.reason = reason
            $0.reasonText = HRLFormat.fieldValue(text, size: HRLFormat.H.reasonText.size)
            $0.stateChangedUnixNs = now
            $0.sealNonce = [UInt8](repeating: 0, count: 16)
        }
    }

    /// Records state `clean` with the nonce of the shutdown seal armed for
    /// this stop (docs/shutdown-seal.md): after a reboot, the bits are
    /// complete only together with a seal sealed under this nonce.
    public func setClean(sealNonce: [UInt8], text: String) throws {
        guard sealNonce.count == 16, sealNonce.contains(where: { $0 != 0 }) else {
            throw TidemarkError(.invalidArgument, "setClean: the seal nonce must be 16 bytes, not all zero")
        }
        try beginMutation()
        let now = wallClockUnixNs()
        try commitHeader {
            $0.state = .clean
            $0.reason = .none
            $0.reasonText = HRLFormat.fieldValue(text, size: HRLFormat.H.reasonText.size)
            $0.stateChangedUnixNs = now
            $0.sealNonce = sealNonce
        }
    }

    /// Records which replication target the bits are relative to.
    public func setTargetID(_ id: String) throws {
        try beginMutation()
        try commitHeader { $0.targetID = HRLFormat.fieldValue(id, size: HRLFormat.H.targetID.size) }
    }

    // MARK: - Bits

    /// ORs `words` into the file, durably: when this returns, a crash cannot
    /// lose these bits, so their kernel copies may be cleared. Only pages that
    /// change are written; if nothing changes nothing is written and
    /// `drainSeq` stays (the bits were already durable).
    /// Throws `TidemarkError.invalidArgument`, changing nothing, for words out
    /// of order or beyond the disk.
    public func persistSet(_ words: SparseWords) throws {
        try apply(words, set: true)
    }

    /// Clears `words` (AND-NOT), durably: call it only after the data of
    /// those chunks is committed on the target. `clearSeq` counts the clears
    /// that changed something.
    public func persistClear(_ words: SparseWords) throws {
        try apply(words, set: false)
    }

    private func apply(_ words: SparseWords, set: Bool) throws {
        let fd = try beginMutation()
        try checkArgument(words, set ? "persistSet" : "persistClear")
        let entries = words.entries
        var changed = false
        var i = 0
        while i < entries.count {
            let page = Int(entries[i].wordIndex / UInt64(HRLFormat.wordsPerPage))
            try loadCurrent(page, into: modifyBuffer, fd)
            var pageChanged = false
            modifyBuffer.pointer.withMemoryRebound(to: UInt64.self, capacity: HRLFormat.wordsPerPage) { w in
                while i < entries.count && Int(entries[i].wordIndex / UInt64(HRLFormat.wordsPerPage)) == page {
                    let k = Int(entries[i].wordIndex % UInt64(HRLFormat.wordsPerPage))
                    let old = w[k]
                    let new = set ? old | entries[i].bits : old & ~entries[i].bits
                    if new != old {
                        w[k] = new
                        pageChanged = true
                    }
                    i += 1
                }
            }
            if pageChanged {
                try writeNextSlot(page, from: modifyBuffer, fd)
                changed = true
            }
        }
        guard changed else { return }
        try commitHeader { h in
            if set { h.drainSeq += 1 } else { h.clearSeq += 1 }
            h.updateInFlight = false
        }
    }

    /// Sets every chunk's bit: the answer to "some writes were not recorded
    /// bit by bit" (tracer overflow), short of a full resync. Counts as a set.
    public func markAllDirty() throws {
        let fd = try beginMutation()
        var changed = false
        for page in pages.indices {
            let capacity = context.capacity(UInt64(page))
            if pages[page].popcount == capacity { continue }
            fillPage(modifyBuffer, page: page)
            try writeNextSlot(page, from: modifyBuffer, fd)
            changed = true
        }
        guard changed else { return }
        try commitHeader { $0.drainSeq += 1; $0.updateInFlight = false }
    }

    /// Clears every bit: the target is now complete (e.g. after a full
    /// resync). Counts as a clear.
    public func clearAll() throws {
        let fd = try beginMutation()
        var changed = false
        for page in pages.indices where pages[page].popcount != 0 {
            modifyBuffer.bytes.initializeMemory(as: UInt8.self, repeating: 0)
            try writeNextSlot(page, from: modifyBuffer, fd)
            changed = true
        }
        guard changed else { return }
        try commitHeader { $0.clearSeq += 1; $0.updateInFlight = false }
    }

    /// Number of dirty chunks: from the per-page counts, without I/O, for a
    /// writable handle; a read-only handle re-reads every page.
    public func dirtyCount() throws -> UInt64 {
        let fd = try liveFD()
        if isReadOnly {
            for page in pages.indices { try loadCurrent(page, into: scanBuffer, fd) }
        }
        var n: UInt64 = 0
        for p in pages { n += UInt64(p.popcount) }
        return n
    }

    /// Calls `body` with every run of dirty chunks in increasing order, merged
    /// across word and page boundaries, split into pieces of at most
    /// `maxChunksPerExtent`. Clean pages are skipped without I/O. `body` may
    /// throw to stop early, and may call this handle's mutating methods
    /// (e.g. clear what it handled): each page is read once, when reached.
    public func forEachDirtyExtent(maxChunksPerExtent: UInt64 = .max, _ body: (ChunkExtent) throws -> Void) throws {
        guard maxChunksPerExtent > 0 else {
            throw TidemarkError(.invalidArgument, "forEachDirtyExtent: maxChunksPerExtent must be at least 1")
        }
        let fd = try liveFD()
        func emit(_ e: ChunkExtent) throws {
            var first = e.firstChunk
            var left = e.chunkCount
            while left > 0 {
                let n = min(left, maxChunksPerExtent)
                try body(ChunkExtent(firstChunk: first, chunkCount: n))
                first += n
                left -= n
            }
        }
        var runs: [ChunkExtent] = []
        var pending: ChunkExtent?
        var page = 0
        while page < pages.count {
            defer { page += 1 }
            if !mayHoldBits(page) { continue }
            try loadCurrent(page, into: scanBuffer, fd)
            runs.removeAll(keepingCapacity: true)
            if let p = pending { runs.append(p) }
            withWords(scanBuffer, page: page) { w, first in
                BitmapScan.extents(w, firstWordIndex: first, nrChunks: header.nrChunks, into: &runs)
            }
            // The last run may continue on the next page.
            pending = runs.popLast()
            for r in runs { try emit(r) }
        }
        if let p = pending { try emit(p) }
    }

    /// Every nonzero word, for handing to another component. Memory grows
    /// with the number of dirty words (16 bytes each).
    public func dirtyWords() throws -> SparseWords {
        let fd = try liveFD()
        var out = SparseWords()
        for page in pages.indices where mayHoldBits(page) {
            try loadCurrent(page, into: scanBuffer, fd)
            withWords(scanBuffer, page: page) { w, first in
                for k in 0..<w.count where w[k] != 0 { out.append(wordIndex: first + UInt64(k), bits: w[k]) }
            }
        }
        return out
    }

    /// All `ceil(nrChunks / 64)` words (diff and map tools). Memory is one
    /// bit per chunk: not for the agent's steady state.
    public func readAllWords() throws -> [UInt64] {
        let fd = try liveFD()
        var out = [UInt64](repeating: 0, count: Int(header.wordCount))
        for page in pages.indices where mayHoldBits(page) {
            try loadCurrent(page, into: scanBuffer, fd)
            withWords(scanBuffer, page: page) { w, first in
                for k in 0..<w.count { out[Int(first) + k] = w[k] }
            }
        }
        return out
    }

    // MARK: - Identity

    /// Why this file cannot track `identity` at `chunkSizeBytes`, or nil if
    /// it can. `diskID` is not compared: kernel names move between boots;
    /// the identity string (serial, WWN, UUID) is what names the disk.
    public func identityMismatch(_ identity: DiskIdentity, chunkSizeBytes: UInt32) -> (reason: ResyncReason, detail: String)? {
        let want = HRLFormat.fieldValue(identity.identity, size: HRLFormat.H.diskIdentity.size)
        if header.diskSizeBytes != identity.sizeBytes {
            return (.diskSizeChanged, "disk size changed from \(header.diskSizeBytes) to \(identity.sizeBytes) bytes")
        }
        if header.diskIdentity != want {
            return (.diskIdentityChanged, "disk identity changed from '\(header.diskIdentity)' to '\(want)'")
        }
        if header.chunkSizeBytes != chunkSizeBytes {
            return (.chunkSizeChanged, "chunk size changed from \(header.chunkSizeBytes) to \(chunkSizeBytes) bytes")
        }
        return nil
    }

    /// Throws `TrackingFileError.wrongIdentity` when `identityMismatch` finds one.
    public func requireIdentity(_ identity: DiskIdentity, chunkSizeBytes: UInt32) throws {
        if let m = identityMismatch(identity, chunkSizeBytes: chunkSizeBytes) {
            throw TrackingFileError(.wrongIdentity, path: path, detail: m.detail)
        }
    }

    // MARK: - Inspection (tools and tests)

    /// The header slot holding the current header.
    public var currentHeaderSlot: Int { Int(header.generation % 2) }

    /// The slot (0 = A, 1 = B) holding the current copy of a bitmap page, as
    /// last seen by this handle.
    public func currentSlot(ofBitmapPage page: UInt64) -> Int { Int(pages[Int(page)].slot) }

    /// The sequence number of the current copy of a bitmap page.
    public func sequence(ofBitmapPage page: UInt64) -> UInt64 { pages[Int(page)].sequence }

    public static func fileOffset(ofHeaderSlot slot: Int) -> UInt64 { HRLFormat.headerOffset(slot: slot) }

    public static func fileOffset(ofBitmapPage page: UInt64, slot: Int) -> UInt64 {
        HRLFormat.bitmapSlotOffset(page: page, slot: slot)
    }

    /// The kernel's id of the current boot (/proc/sys/kernel/random/boot_id),
    /// or "" where there is none. A `.hrl` whose header shows state
    /// `tracking` and another boot id was being tracked when the host went down.
    ///
    /// Test switches (`TestSwitches.bootID`, from TIDEMARK_TEST_BOOT_ID,
    /// read by the executable's main) can replace it, so integration tests
    /// can simulate a reboot without one.
    public static func bootID(_ switches: TestSwitches = .off) -> String {
        switches.hostBootID()
    }

    // MARK: - Internals

    private static func busyError(_ path: String) -> TidemarkError {
        TidemarkError(.busy, "\(path) is open for writing by another process or handle",
                      hint: "only one agent may track a disk; stop it first, or open the file read-only to inspect it")
    }

    private func liveFD() throws -> FileDescriptor {
        guard let fd else { throw TidemarkError(.state, "\(path): the tracking file handle is closed") }
        return fd
    }

    @discardableResult
    private func beginMutation() throws -> FileDescriptor {
        if isReadOnly {
            throw TidemarkError(.state, "\(path) was opened read-only", hint: "open it without readOnly to change it")
        }
        if unsyncedWrites {
            throw TidemarkError(.io, "\(path): an earlier update failed part way, so this handle no longer knows which copies on disk are valid",
                                hint: "close and reopen the file (reopening validates it); if it does not open, a resync is required")
        }
        return try liveFD()
    }

    private func checkArgument(_ words: SparseWords, _ op: String) throws {
        let wordCount = header.wordCount
        var previous: UInt64?
        for e in words.entries {
            if let p = previous, e.wordIndex <= p {
                throw TidemarkError(.invalidArgument, "\(op): word \(e.wordIndex) follows word \(p); entries must be strictly increasing")
            }
            if e.wordIndex >= wordCount {
                throw TidemarkError(.invalidArgument, "\(op): word \(e.wordIndex) is beyond the disk's \(wordCount) bitmap words (\(header.nrChunks) chunks)")
            }
            if e.wordIndex == wordCount - 1 && e.bits & ~context.lastWordMask != 0 {
                throw TidemarkError(.invalidArgument, "\(op): bits beyond chunk \(header.nrChunks - 1), the disk's last chunk")
            }
            previous = e.wordIndex
        }
    }

    /// Reads the current copy of `page` into `buffer`. A writable handle owns
    /// the file, so it reads the slot it last wrote, and a mismatch means
    /// someone else changed the file: corrupt. A read-only handle may race a
    /// writer that moved on, so it reads both slots and takes the newest
    /// valid one every time.
    private func loadCurrent(_ page: Int, into buffer: AlignedBuffer, _ fd: FileDescriptor) throws {
        let meta = pages[page]
        if !isReadOnly {
            try readSlot(page, Int(meta.slot), into: buffer, fd)
            if case .valid(let seq, _) = HRLFormat.checkBitmapSlot(UnsafeRawBufferPointer(buffer.bytes), page: UInt64(page),
                                                                  slot: Int(meta.slot), context),
               seq == meta.sequence {
                return
            }
            throw TrackingFileError(.corrupt, path: path,
                                    detail: "bitmap page \(page) slot \(HRLFormat.slotName(Int(meta.slot))) no longer holds sequence \(meta.sequence): the file was changed underneath this process")
        }
        var best: (slot: Int, sequence: UInt64, popcount: UInt32)?
        for slot in 0...1 {
            try readSlot(page, slot, into: buffer, fd)
            if case .valid(let seq, let pop) = HRLFormat.checkBitmapSlot(UnsafeRawBufferPointer(buffer.bytes), page: UInt64(page),
                                                                        slot: slot, context),
               seq > best?.sequence ?? 0 {
                best = (slot, seq, pop)
            }
        }
        guard let best else {
            throw TrackingFileError(.corrupt, path: path, detail: "bitmap page \(page): no valid slot")
        }
        if best.slot == 0 { try readSlot(page, 0, into: buffer, fd) }
        pages[page] = PageMeta(sequence: best.sequence, popcount: best.popcount, slot: UInt8(best.slot))
    }

    /// Whether a page must be read to find its bits: a writable handle knows
    /// every page's count; a read-only one may be behind a concurrent writer.
    private func mayHoldBits(_ page: Int) -> Bool {
        isReadOnly || pages[page].popcount != 0
    }

    private func readSlot(_ page: Int, _ slot: Int, into buffer: AlignedBuffer, _ fd: FileDescriptor) throws {
        let n = try fd.read(into: buffer.bytes, at: HRLFormat.bitmapSlotOffset(page: UInt64(page), slot: slot))
        if n != HRLFormat.pageSize {
            throw TrackingFileError(.corrupt, path: path, detail: "bitmap page \(page): the file ends inside it (truncated while open)")
        }
    }

    /// Writes `buffer`'s words as the next version of `page`: to the slot that
    /// does not hold the current copy, with the next sequence number. Not
    /// durable until the `fdatasync` in `commitHeader`.
    private func writeNextSlot(_ page: Int, from buffer: AlignedBuffer, _ fd: FileDescriptor) throws {
        if !header.updateInFlight {
            // Intent first, durably: a crash from here until the final header
            // may tear page slots, and only this flag makes that acceptable.
            try commitHeader { $0.updateInFlight = true }
        }
        let meta = pages[page]
        let slot = 1 - Int(meta.slot)
        let seq = meta.sequence + 1
        assert(HRLFormat.bitmapSlot(forSequence: seq) == slot)
        HRLFormat.sealBitmapPage(buffer.bytes, page: UInt64(page), sequence: seq, binding: context.binding)
        var pop: UInt32 = 0
        withWords(buffer, page: page) { w, _ in pop = UInt32(BitmapScan.popcount(w)) }
        unsyncedWrites = true
        try fd.write(UnsafeRawBufferPointer(buffer.bytes), at: HRLFormat.bitmapSlotOffset(page: UInt64(page), slot: slot))
        pages[page] = PageMeta(sequence: seq, popcount: pop, slot: UInt8(slot))
    }

    /// Writes the next header generation to its slot, then flushes — which
    /// also makes durable every page written since the last flush — and only
    /// then adopts it. The header is the last write of every update.
    private func commitHeader(_ change: (inout HRLHeader) -> Void) throws {
        let fd = try liveFD()
        if header.updateInFlight {
            // The final header of a page update: its page slots must be
            // durable before a header with the flag clear can be, or a crash
            // could keep this header and tear a page, and the file would
            // then read as damaged.
            try fd.dataSync()
        }
        var h = header
        change(&h)
        h.generation += 1
        h.bootID = hostBootID
        // A version 1 file becomes version 2 at its first header write.
        h.formatVersion = HRLFormat.version
        HRLFormat.encodeHeader(h, into: headerBuffer.bytes)
        unsyncedWrites = true
        try fd.write(UnsafeRawBufferPointer(headerBuffer.bytes), at: HRLFormat.headerOffset(slot: Int(h.generation % 2)))
        try fd.dataSync()
        header = h
        unsyncedWrites = false
    }

    /// All chunks of `page` set, trailer left for `sealBitmapPage`.
    private func fillPage(_ buffer: AlignedBuffer, page: Int) {
        buffer.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        let n = context.wordsInPage(UInt64(page))
        let lastPage = page == pages.count - 1
        buffer.pointer.withMemoryRebound(to: UInt64.self, capacity: HRLFormat.wordsPerPage) { w in
            for k in 0..<n { w[k] = ~0 }
            if lastPage && n > 0 { w[n - 1] = context.lastWordMask }
        }
    }

    /// The chunk-carrying words of a page buffer and the global index of the first.
    private func withWords(_ buffer: AlignedBuffer, page: Int, _ body: (UnsafeBufferPointer<UInt64>, UInt64) throws -> Void) rethrows {
        let n = context.wordsInPage(UInt64(page))
        try buffer.pointer.withMemoryRebound(to: UInt64.self, capacity: HRLFormat.wordsPerPage) { w in
            try body(UnsafeBufferPointer(start: w, count: n), UInt64(page) * UInt64(HRLFormat.wordsPerPage))
        }
    }
}

/// What `TrackingFile.verifyReport` found.
public struct HRLVerifyReport: Sendable {
    /// The current header, if one was valid.
    public var header: HRLHeader?
    /// What makes the file unusable; empty means it opens.
    public var problems: [String]
    /// Harmless findings, such as a slot torn by a crash whose other slot is intact.
    public var notes: [String]
    public var isValid: Bool { problems.isEmpty }
}

func wallClockUnixNs() -> UInt64 { UInt64(max(0, SystemClock.wallUnixNs())) }

/// 16 random bytes shaped as an RFC 4122 version 4 UUID.
func randomUUID() -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    var u = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
    u[6] = u[6] & 0x0F | 0x40
    u[8] = u[8] & 0x3F | 0x80
    return u
}

/// Makes a rename in the directory durable.
public func syncDirectory(containing path: String) throws {
    let dir: String
    if let slash = path.lastIndex(of: "/") {
        dir = slash == path.startIndex ? "/" : String(path[..<slash])
    } else {
        dir = "."
    }
    let fd = try FileDescriptor(open: dir, .readOnly, purpose: "opening the directory")
    try fd.sync()
}
