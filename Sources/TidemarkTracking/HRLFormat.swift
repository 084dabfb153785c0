import TidemarkSystem

// The `.hrl` on-disk format, version 2 (reading version 1 too): constants, header encoding and the
// per-slot validity rules. Pure functions on 4 KiB buffers; all file I/O is
// in TrackingFile.swift. docs/hrl-format.md is the normative description —
// keep the two in step.

#if _endian(big)
#error("The .hrl code maps bitmap words to little-endian file bytes by rebinding memory; a big-endian port needs byte swaps.")
#endif

/// The decoded header of a `.hrl` file (see docs/hrl-format.md for each field).
public struct HRLHeader: Sendable, Equatable {
    public var formatVersion: UInt32
    /// Incremented on every header write; the header lives in slot `generation % 2`.
    public var generation: UInt64
    public var diskSizeBytes: UInt64
    public var chunkSizeBytes: UInt32
    public var state: TrackingState
    /// ceil(diskSizeBytes / chunkSizeBytes).
    public var nrChunks: UInt64
    /// ceil(ceil(nrChunks / 64) / 508).
    public var bitmapPages: UInt64
    public var createdUnixNs: UInt64
    public var stateChangedUnixNs: UInt64
    /// Number of persisted sets that changed at least one bit.
    public var drainSeq: UInt64
    /// Number of persisted clears that changed at least one bit.
    public var clearSeq: UInt64
    public var reason: ResyncReason
    /// 16 random bytes (an RFC 4122 version 4 UUID) chosen at creation.
    public var fileUUID: [UInt8]
    public var diskID: String
    public var diskIdentity: String
    public var reasonText: String
    public var targetID: String
    /// The kernel boot id at the last header write: a different boot id at
    /// start-up with state `tracking` means the host went down while tracking.
    public var bootID: String
    /// Header flag bit 0 (offset 92): a bitmap update was in progress when
    /// this header was written. Only then may a bitmap page have an invalid
    /// slot (torn by a crash); with the flag clear, an invalid slot is damage
    /// that could have destroyed the newest copy of a page.
    public var updateInFlight: Bool = false
    /// Format version 2, offset 1008: the nonce of the shutdown seal armed
    /// when the agent stopped in order and recorded state `clean`
    /// (docs/shutdown-seal.md); 16 zero bytes otherwise (and in version 1).
    public var sealNonce: [UInt8] = [UInt8](repeating: 0, count: 16)
    /// True when `sealNonce` is not all zero.
    public var hasSealNonce: Bool { sealNonce.contains { $0 != 0 } }
    /// `sealNonce` as 32 lowercase hex digits.
    public var sealNonceHex: String {
        sealNonce.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    /// ceil(nrChunks / 64): the number of bitmap words that carry chunks.
    public var wordCount: UInt64 { nrChunks / 64 + (nrChunks % 64 == 0 ? 0 : 1) }

    /// The only valid size of the file: two header slots and two slots per bitmap page.
    public var fileSizeBytes: UInt64 { (2 + 2 * bitmapPages) * UInt64(HRLFormat.pageSize) }

    /// The UUID in its usual 8-4-4-4-12 hex form.
    public var fileUUIDString: String {
        var s = ""
        for (i, b) in fileUUID.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { s += "-" }
            s += b < 16 ? "0" + String(b, radix: 16) : String(b, radix: 16)
        }
        return s
    }
}

/// Layout constants and codecs of format version 2 (which also reads version 1).
public enum HRLFormat {
    /// The version this code writes. Version 1 files are read, and become
    /// version 2 at their next header write.
    static let version: UInt32 = 2
    static let oldestReadableVersion: UInt32 = 1
    /// The highest reason code of each version (index = version).
    static func maxReasonCode(version: UInt32) -> UInt32 { version >= 2 ? 12 : 11 }
    /// How long a writable open keeps trying for the file's exclusive lock
    /// before reporting another writer: a handle just closed in this process
    /// can hold it for an instant through a child being spawned.
    static let lockGraceMs = 250
    /// Header flags (u32 at offset 92).
    static let flagUpdateInFlight: UInt32 = 1
    static let knownHeaderFlags: UInt32 = flagUpdateInFlight
    static let pageSize = 4096
    static let magic: [UInt8] = Array("TMHRL\r\n\u{1A}".utf8)
    /// "TMBP" read as a little-endian u32.
    static let pageMagic: UInt32 = 0x5042_4D54
    static let wordsPerPage = 508
    static let chunksPerPage = UInt64(wordsPerPage * 64)
    static let crcOffset = 4092

    static let minChunkSizeBytes: UInt32 = 4096
    static let maxChunkSizeBytes: UInt32 = 1 << 20
    /// 64 PiB. Far above any block device; it keeps every derived quantity
    /// (chunk numbers, file offsets) far from overflow even at 4 KiB chunks.
    static let maxDiskSizeBytes: UInt64 = 1 << 56

    /// Header field offsets.
    enum H {
        static let magic = 0, version = 8, pageSize = 12, generation = 16, diskSize = 24
        static let chunkSize = 32, state = 36, nrChunks = 40, bitmapPages = 48, created = 56
        static let stateChanged = 64, drainSeq = 72, clearSeq = 80, reason = 88, flags = 92
        static let uuid = 96
        static let diskID = (offset: 112, size: 64)
        static let diskIdentity = (offset: 176, size: 256)
        static let reasonText = (offset: 432, size: 256)
        static let targetID = (offset: 688, size: 256)
        static let bootID = (offset: 944, size: 64)
        /// Version 2: the armed shutdown seal's nonce (16 bytes).
        static let sealNonce = 1008
        /// First byte after the last field of version 1 / version 2;
        /// [end, crcOffset) must be zero.
        static let endV1 = 1008
        static let end = 1024
    }

    /// Bitmap page trailer offsets.
    enum P {
        static let magic = 4064, reserved = 4068, index = 4072, sequence = 4080, binding = 4088
    }

    static func headerOffset(slot: Int) -> UInt64 { UInt64(slot * pageSize) }

    /// File offset of slot A (0) or B (1) of logical bitmap page `page`.
    static func bitmapSlotOffset(page: UInt64, slot: Int) -> UInt64 {
        (2 + 2 * page + UInt64(slot)) * UInt64(pageSize)
    }

    /// Slot A holds odd sequence numbers, slot B even ones: creation writes
    /// seq 1 to A and every update goes to the other slot with seq + 1.
    static func bitmapSlot(forSequence seq: UInt64) -> Int { seq % 2 == 1 ? 0 : 1 }

    static func isValidChunkSize(_ c: UInt32) -> Bool {
        c >= minChunkSizeBytes && c <= maxChunkSizeBytes && c & (c - 1) == 0
    }

    /// nr_chunks and bitmap_pages for a disk (sizes already validated).
    static func layout(diskSizeBytes: UInt64, chunkSizeBytes: UInt32) -> (nrChunks: UInt64, bitmapPages: UInt64) {
        let c = UInt64(chunkSizeBytes)
        let nr = diskSizeBytes / c + (diskSizeBytes % c == 0 ? 0 : 1)
        let words = nr / 64 + (nr % 64 == 0 ? 0 : 1)
        let w = UInt64(wordsPerPage)
        return (nr, words / w + (words % w == 0 ? 0 : 1))
    }

    /// The first 4 bytes of the file UUID as a little-endian u32, stored in
    /// each bitmap page so a page copied from another file is rejected.
    static func binding(_ uuid: [UInt8]) -> UInt32 {
        uuid.withUnsafeBytes { LittleEndian.load($0, at: 0, as: UInt32.self) }
    }

    // MARK: Strings

    /// The form a string takes in a `size`-byte field: cut at the first NUL
    /// (a NUL would end the field early) and to at most size - 1 bytes at a
    /// UTF-8 scalar boundary, so at least one NUL always terminates it.
    public static func fieldValue(_ s: String, size: Int) -> String {
        var bytes = Array(s.utf8)
        if let nul = bytes.firstIndex(of: 0) { bytes.removeSubrange(nul...) }
        if bytes.count > size - 1 {
            var n = size - 1
            while n > 0 && bytes[n] & 0xC0 == 0x80 { n -= 1 }
            bytes.removeSubrange(n...)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: Checksum

    static func checksum(_ page: UnsafeRawBufferPointer) -> UInt32 {
        crc32c(UnsafeRawBufferPointer(rebasing: page[0..<crcOffset]))
    }

    // MARK: Header

    /// Encodes `h` into a whole page, checksum included.
    static func encodeHeader(_ h: HRLHeader, into b: UnsafeMutableRawBufferPointer) {
        precondition(b.count == pageSize && h.fileUUID.count == 16)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        for (i, m) in magic.enumerated() { b[H.magic + i] = m }
        LittleEndian.store(h.formatVersion, into: b, at: H.version)
        LittleEndian.store(UInt32(pageSize), into: b, at: H.pageSize)
        LittleEndian.store(h.generation, into: b, at: H.generation)
        LittleEndian.store(h.diskSizeBytes, into: b, at: H.diskSize)
        LittleEndian.store(h.chunkSizeBytes, into: b, at: H.chunkSize)
        LittleEndian.store(h.state.rawValue, into: b, at: H.state)
        LittleEndian.store(h.nrChunks, into: b, at: H.nrChunks)
        LittleEndian.store(h.bitmapPages, into: b, at: H.bitmapPages)
        LittleEndian.store(h.createdUnixNs, into: b, at: H.created)
        LittleEndian.store(h.stateChangedUnixNs, into: b, at: H.stateChanged)
        LittleEndian.store(h.drainSeq, into: b, at: H.drainSeq)
        LittleEndian.store(h.updateInFlight ? HRLFormat.flagUpdateInFlight : UInt32(0), into: b, at: H.flags)
        LittleEndian.store(h.clearSeq, into: b, at: H.clearSeq)
        LittleEndian.store(h.reason.rawValue, into: b, at: H.reason)
        for (i, u) in h.fileUUID.enumerated() { b[H.uuid + i] = u }
        func put(_ s: String, _ field: (offset: Int, size: Int)) {
            for (i, c) in fieldValue(s, size: field.size).utf8.enumerated() { b[field.offset + i] = c }
        }
        put(h.diskID, H.diskID)
        put(h.diskIdentity, H.diskIdentity)
        put(h.reasonText, H.reasonText)
        put(h.targetID, H.targetID)
        put(h.bootID, H.bootID)
        if h.formatVersion >= 2 {
            precondition(h.sealNonce.count == 16)
            for (i, u) in h.sealNonce.enumerated() { b[H.sealNonce + i] = u }
        }
        LittleEndian.store(checksum(UnsafeRawBufferPointer(b)), into: b, at: crcOffset)
    }

    enum HeaderSlot {
        /// All zero: never written.
        case empty
        /// Not zero, but no magic: not a `.hrl` header at all.
        case foreign
        /// The magic, but a format version this code does not read.
        case unsupported(version: UInt32)
        case invalid(String)
        case valid(HRLHeader)
    }

    /// Decodes and checks one header slot (every rule of the spec's
    /// "header slot validity" list).
    static func decodeHeader(_ b: UnsafeRawBufferPointer, slot: Int) -> HeaderSlot {
        precondition(b.count == pageSize)
        if isAllZero(b) { return .empty }
        if !magic.indices.allSatisfy({ b[H.magic + $0] == magic[$0] }) { return .foreign }
        // The version comes before the checksum: a later version may move it.
        let version = LittleEndian.load(b, at: H.version, as: UInt32.self)
        if version > HRLFormat.version { return .unsupported(version: version) }
        if version < HRLFormat.oldestReadableVersion { return .invalid("format version \(version) does not exist") }
        let stored = LittleEndian.load(b, at: crcOffset, as: UInt32.self)
        let computed = checksum(b)
        if stored != computed {
            return .invalid("bad checksum (stored 0x\(hex32(stored)), computed 0x\(hex32(computed)))")
        }
        let ps = LittleEndian.load(b, at: H.pageSize, as: UInt32.self)
        if ps != UInt32(pageSize) { return .invalid("unsupported page size \(ps) (versions 1 and 2 use 4096)") }
        let gen = LittleEndian.load(b, at: H.generation, as: UInt64.self)
        if gen == 0 { return .invalid("generation 0") }
        if Int(gen % 2) != slot { return .invalid("generation \(gen) in slot \(slot) (it belongs in slot \(gen % 2))") }
        let disk = LittleEndian.load(b, at: H.diskSize, as: UInt64.self)
        if disk == 0 || disk > maxDiskSizeBytes { return .invalid("disk size \(disk) bytes is out of range 1...\(maxDiskSizeBytes)") }
        let chunk = LittleEndian.load(b, at: H.chunkSize, as: UInt32.self)
        if !isValidChunkSize(chunk) { return .invalid("chunk size \(chunk) bytes is not a power of two in 4096...1048576") }
        let expect = layout(diskSizeBytes: disk, chunkSizeBytes: chunk)
        let nr = LittleEndian.load(b, at: H.nrChunks, as: UInt64.self)
        if nr != expect.nrChunks { return .invalid("nr_chunks \(nr) disagrees with disk size / chunk size (\(expect.nrChunks))") }
        let pages = LittleEndian.load(b, at: H.bitmapPages, as: UInt64.self)
        if pages != expect.bitmapPages { return .invalid("bitmap_pages \(pages) disagrees with nr_chunks (\(expect.bitmapPages))") }
        let stateRaw = LittleEndian.load(b, at: H.state, as: UInt32.self)
        guard let state = TrackingState(rawValue: stateRaw) else { return .invalid("unknown state \(stateRaw)") }
        let reasonRaw = LittleEndian.load(b, at: H.reason, as: UInt32.self)
        guard reasonRaw <= maxReasonCode(version: version), let reason = ResyncReason(rawValue: reasonRaw) else {
            return .invalid("unknown reason code \(reasonRaw) for format version \(version)")
        }
        let flags = LittleEndian.load(b, at: H.flags, as: UInt32.self)
        if flags & ~HRLFormat.knownHeaderFlags != 0 { return .invalid("unknown flags 0x\(String(flags, radix: 16)) at offset 92") }
        let end = version >= 2 ? H.end : H.endV1
        if !isAllZero(UnsafeRawBufferPointer(rebasing: b[end..<crcOffset])) {
            return .invalid("unused bytes \(end)..<\(crcOffset) are not zero")
        }
        let nonce = Array(b[H.sealNonce..<(H.sealNonce + 16)])
        if version >= 2 && state != .clean && nonce.contains(where: { $0 != 0 }) {
            return .invalid("seal_nonce is set but the state is \(state), not clean")
        }
        var strings: [String] = []
        for (name, field) in [("disk_id", H.diskID), ("disk_identity", H.diskIdentity), ("reason_text", H.reasonText),
                              ("target_id", H.targetID), ("boot_id", H.bootID)] {
            let raw = UnsafeRawBufferPointer(rebasing: b[field.offset..<(field.offset + field.size)])
            guard let nul = raw.firstIndex(of: 0) else { return .invalid("\(name) is not NUL-terminated") }
            if !isAllZero(UnsafeRawBufferPointer(rebasing: raw[nul...])) {
                return .invalid("\(name) has bytes after its terminating NUL")
            }
            guard let s = String(validating: raw[..<nul], as: UTF8.self) else {
                return .invalid("\(name) is not valid UTF-8")
            }
            strings.append(s)
        }
        var decoded = HRLHeader(
            formatVersion: version, generation: gen, diskSizeBytes: disk, chunkSizeBytes: chunk, state: state,
            nrChunks: nr, bitmapPages: pages,
            createdUnixNs: LittleEndian.load(b, at: H.created, as: UInt64.self),
            stateChangedUnixNs: LittleEndian.load(b, at: H.stateChanged, as: UInt64.self),
            drainSeq: LittleEndian.load(b, at: H.drainSeq, as: UInt64.self),
            clearSeq: LittleEndian.load(b, at: H.clearSeq, as: UInt64.self),
            reason: reason,
            fileUUID: Array(b[H.uuid..<(H.uuid + 16)]),
            diskID: strings[0], diskIdentity: strings[1], reasonText: strings[2], targetID: strings[3],
            bootID: strings[4])
        decoded.updateInFlight = flags & HRLFormat.flagUpdateInFlight != 0
        decoded.sealNonce = nonce
        return .valid(decoded)
    }

    // MARK: Bitmap pages

    /// What a reader needs to judge a bitmap page of a given file.
    struct PageContext {
        var binding: UInt32
        var wordCount: UInt64
        var nrChunks: UInt64

        /// How many of page `page`'s 508 words carry chunks.
        func wordsInPage(_ page: UInt64) -> Int {
            let first = page * UInt64(wordsPerPage)
            return first >= wordCount ? 0 : Int(min(UInt64(wordsPerPage), wordCount - first))
        }

        /// The bits of the file's last word that carry chunks.
        var lastWordMask: UInt64 {
            let r = nrChunks % 64
            return r == 0 ? ~0 : (UInt64(1) << r) - 1
        }

        /// Set bits a page may hold: all chunks it covers.
        func capacity(_ page: UInt64) -> UInt32 {
            let first = page * chunksPerPage
            return UInt32(min(chunksPerPage, nrChunks - first))
        }
    }

    enum BitmapSlot {
        case empty
        case invalid(String)
        case valid(sequence: UInt64, popcount: UInt32)
    }

    /// Checks one bitmap slot against the spec's "bitmap slot validity" rules.
    static func checkBitmapSlot(_ b: UnsafeRawBufferPointer, page: UInt64, slot: Int, _ ctx: PageContext) -> BitmapSlot {
        precondition(b.count == pageSize)
        if isAllZero(b) { return .empty }
        let stored = LittleEndian.load(b, at: crcOffset, as: UInt32.self)
        let computed = checksum(b)
        if stored != computed {
            return .invalid("bad checksum (stored 0x\(hex32(stored)), computed 0x\(hex32(computed)))")
        }
        let m = LittleEndian.load(b, at: P.magic, as: UInt32.self)
        if m != pageMagic { return .invalid("bad page magic 0x\(hex32(m))") }
        if LittleEndian.load(b, at: P.reserved, as: UInt32.self) != 0 { return .invalid("reserved field is not zero") }
        let index = LittleEndian.load(b, at: P.index, as: UInt64.self)
        if index != page { return .invalid("holds page index \(index)") }
        let bind = LittleEndian.load(b, at: P.binding, as: UInt32.self)
        if bind != ctx.binding {
            return .invalid("belongs to another file (uuid binding 0x\(hex32(bind)), this file's is 0x\(hex32(ctx.binding)))")
        }
        let seq = LittleEndian.load(b, at: P.sequence, as: UInt64.self)
        if seq == 0 { return .invalid("sequence 0") }
        if bitmapSlot(forSequence: seq) != slot {
            return .invalid("sequence \(seq) in slot \(slotName(slot)) (slot A holds odd sequences, slot B even)")
        }
        let n = ctx.wordsInPage(page)
        var pop: UInt32 = 0
        for k in 0..<wordsPerPage {
            let w = LittleEndian.load(b, at: k * 8, as: UInt64.self)
            if k >= n {
                if w != 0 { return .invalid("bits set beyond nr_chunks \(ctx.nrChunks) (word \(k))") }
                continue
            }
            if page * UInt64(wordsPerPage) + UInt64(k) == ctx.wordCount - 1 && w & ~ctx.lastWordMask != 0 {
                return .invalid("bits set beyond nr_chunks \(ctx.nrChunks) (word \(k))")
            }
            pop += UInt32(w.nonzeroBitCount)
        }
        return .valid(sequence: seq, popcount: pop)
    }

    /// Fills the trailer and checksum of a bitmap page whose words are in place.
    static func sealBitmapPage(_ b: UnsafeMutableRawBufferPointer, page: UInt64, sequence: UInt64, binding: UInt32) {
        LittleEndian.store(pageMagic, into: b, at: P.magic)
        LittleEndian.store(UInt32(0), into: b, at: P.reserved)
        LittleEndian.store(page, into: b, at: P.index)
        LittleEndian.store(sequence, into: b, at: P.sequence)
        LittleEndian.store(binding, into: b, at: P.binding)
        LittleEndian.store(checksum(UnsafeRawBufferPointer(b)), into: b, at: crcOffset)
    }

    static func slotName(_ slot: Int) -> String { slot == 0 ? "A" : "B" }
}

func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16, uppercase: true)
    return String(repeating: "0", count: 8 - s.count) + s
}
