import Glibc
import TidemarkSystem

/// Target storage in a local directory (layout version 1,
/// docs/target-layout.md). Every object is immutable once written and
/// verified on every read; the catalog (disks, points, committed sequences)
/// is rebuilt from the directory alone.
///
/// Safe to share between threads and processes: objects are created with
/// link() (never overwritten), prune takes a per-disk flock.
public final class LocalDirectoryTarget: @unchecked Sendable {
    public let root: String
    public static let layoutVersion = 1
    static let markerName = "TIDEMARK-TARGET"
    static let markerContents = "tidemark-target layout 1\n"

    private let lock = Lock()
    /// Per disk: every sequence 1...n is known to be stored or pruned.
    /// Sequences never disappear (a segment becomes a tombstone first), so
    /// this only grows.
    private var committedCache: [String: UInt64] = [:]
    /// Disk records, once read (they are immutable).
    private var diskCache: [String: DiskRecord] = [:]
    /// Per disk: sequences `putSegments` linked whose directory is not
    /// fsynced yet (their names may not survive a crash): they do not count
    /// towards the committed sequence meanwhile.
    private var unsynced: [String: Set<UInt64>] = [:]

    /// Opens (creating when absent or empty) a target directory.
    public init(root: String) throws {
        var r = root
        while r.count > 1 && r.hasSuffix("/") { r.removeLast() }
        self.root = r
        try Self.prepare(root: r)
    }

    private static func prepare(root: String) throws {
        let markerPath = root + "/" + markerName
        if let existing = try readSmallFile(markerPath) {
            guard existing == Array(markerContents.utf8) else {
                let text = String(decoding: existing.prefix(64), as: UTF8.self)
                if text.hasPrefix("tidemark-target layout ") {
                    throw TidemarkError(.unsupported, "\(markerPath): \(text.trimmingSuffixNewline()); this build knows layout \(layoutVersion)",
                                        hint: "use a Tidemark release that knows this layout version")
                }
                throw TidemarkError(.corrupt, "\(markerPath): not a Tidemark target marker",
                                    hint: "point the target at a directory made by Tidemark, or at an empty one")
            }
            try ObjectFiles.makeDirectory(root + "/disks")
            return
        }
        // Parents as needed, then the root.
        var prefix = root.hasPrefix("/") ? "" : "."
        for part in root.split(separator: "/") {
            prefix += "/" + part
            try ObjectFiles.makeDirectory(prefix)
        }
        let names = try ObjectFiles.list(root) ?? []
        let foreign = names.filter { $0 != "disks" && !$0.hasPrefix(ObjectFiles.tempPrefix) }
        guard foreign.isEmpty else {
            throw TidemarkError(.invalidArgument,
                                "\(root) is not empty and has no \(markerName) marker (holds \(foreign.prefix(3).joined(separator: ", "))…)",
                                hint: "use an empty directory for a new target, or the directory of an existing one")
        }
        try ObjectFiles.makeDirectory(root + "/disks")
        // The marker comes last: a directory with a marker has the whole layout.
        let bytes = Array(markerContents.utf8)
        _ = try bytes.withUnsafeBytes {
            try ObjectFiles.create(dir: root, name: markerName, header: [], payload: $0)
        }
    }

    private static func readSmallFile(_ path: String) throws -> [UInt8]? {
        try SmallFile.readIfPresent(path, bytesMax: 4096, purpose: "reading the target marker")
    }

    // MARK: - Naming

    /// Disk ids become directory names: bytes outside [A-Za-z0-9_-] are
    /// written as %XX (uppercase hex), so the mapping is reversible and no
    /// name starts with a dot.
    static func encodeDiskID(_ id: String) -> String {
        var s = ""
        for b in id.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
                s.unicodeScalars.append(Unicode.Scalar(b))
            default:
                let hex = Array("0123456789ABCDEF".unicodeScalars)
                s.unicodeScalars.append("%")
                s.unicodeScalars.append(hex[Int(b >> 4)])
                s.unicodeScalars.append(hex[Int(b & 15)])
            }
        }
        return s
    }

    static func decodeDiskID(_ name: String) -> String? {
        var bytes = [UInt8]()
        var it = Array(name.utf8).makeIterator()
        while let b = it.next() {
            if b == UInt8(ascii: "%") {
                guard let h = it.next(), let l = it.next(), let hv = hexValue(h), let lv = hexValue(l) else { return nil }
                bytes.append(hv << 4 | lv)
            } else {
                bytes.append(b)
            }
        }
        guard let s = String(validating: bytes, as: UTF8.self), encodeDiskID(s) == name else { return nil }
        return s
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    static func objectName(_ sequence: UInt64, _ suffix: String) -> String {
        let digits = String(sequence)
        return String(repeating: "0", count: 20 - digits.count) + digits + suffix
    }

    /// The sequence of an object name "<20 digits><suffix>", nil otherwise.
    static func sequence(ofName name: String, suffix: String) -> UInt64? {
        guard name.utf8.count == 20 + suffix.utf8.count, name.hasSuffix(suffix) else { return nil }
        let digits = name.prefix(20)
        guard digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return UInt64(digits)
    }

    func validateDiskID(_ id: String) throws {
        let n = id.utf8.count
        guard n >= 1, n <= EnvelopeFormat.diskIDBytesMax, Self.encodeDiskID(id).utf8.count <= 250 else {
            throw TidemarkError(.invalidArgument, "disk id '\(id)' must be 1 to \(EnvelopeFormat.diskIDBytesMax) bytes (and at most 250 once encoded as a directory name)")
        }
    }

    public func diskDir(_ id: String) -> String { root + "/disks/" + Self.encodeDiskID(id) }
    public func diskRecordPath(_ id: String) -> String { diskDir(id) + "/disk" }
    func segmentsDir(_ id: String) -> String { diskDir(id) + "/segments" }
    func tombstonesDir(_ id: String) -> String { diskDir(id) + "/tombstones" }
    func pointsDir(_ id: String) -> String { diskDir(id) + "/points" }
    func segmentPath(_ id: String, _ seq: UInt64) -> String { segmentsDir(id) + "/" + Self.objectName(seq, ".seg") }
    func tombstonePath(_ id: String, _ seq: UInt64) -> String { tombstonesDir(id) + "/" + Self.objectName(seq, ".tomb") }
    func pointPath(_ id: String, _ seq: UInt64) -> String { pointsDir(id) + "/" + Self.objectName(seq, ".point") }

    // MARK: - Disks

    /// Stores the disk record. The first writer wins; the same record again
    /// is a no-op, a different one for the same id throws.
    public func putDisk(_ d: DiskRecord) throws {
        try validateDiskID(d.diskID)
        guard d.sizeBytes > 0, d.chunkSizeBytes > 0 else {
            throw TidemarkError(.invalidArgument, "disk '\(d.diskID)': size (\(d.sizeBytes)) and chunk size (\(d.chunkSizeBytes)) must be positive")
        }
        // What a reader accepts (Metadata.decodeDisk): never store a record that could not be read back.
        guard d.chunkSizeBytes >= EnvelopeFormat.chunkSizeBytesMin, d.chunkSizeBytes <= EnvelopeFormat.chunkSizeBytesMax,
              d.chunkSizeBytes.nonzeroBitCount == 1, d.sizeBytes <= EnvelopeFormat.diskSizeBytesMax else {
            throw TidemarkError(.invalidArgument, "disk '\(d.diskID)': chunk size \(d.chunkSizeBytes) must be a power of two from \(EnvelopeFormat.chunkSizeBytesMin) to \(EnvelopeFormat.chunkSizeBytesMax) bytes and size \(d.sizeBytes) at most \(EnvelopeFormat.diskSizeBytesMax) bytes")
        }
        guard d.ownerAgentID.utf8.count <= EnvelopeFormat.stringBytesMax else {
            throw TidemarkError(.invalidArgument, "disk '\(d.diskID)': owner agent id longer than \(EnvelopeFormat.stringBytesMax) bytes")
        }
        let dir = diskDir(d.diskID)
        try ObjectFiles.makeDirectory(dir)
        for sub in [segmentsDir(d.diskID), tombstonesDir(d.diskID), pointsDir(d.diskID)] {
            try ObjectFiles.makeDirectory(sub)
        }
        let header = Envelope.encodeHeader(kind: .disk, diskID: d.diskID, sequence: 0, metadata: Metadata.encodeDisk(d),
                                           payload: UnsafeRawBufferPointer(start: nil, count: 0))
        if try ObjectFiles.create(dir: dir, name: "disk", header: header, payload: UnsafeRawBufferPointer(start: nil, count: 0)) {
            return
        }
        guard let existing = try disk(d.diskID) else {
            throw TidemarkError(.state, "\(diskRecordPath(d.diskID)) vanished while being stored")
        }
        guard existing == d else {
            throw TidemarkError(.state, "disk '\(d.diskID)' is already stored with a different record (stored \(existing), offered \(d))",
                                hint: "a disk record is immutable; use a new disk id for a different disk")
        }
    }

    /// The stored record of a disk, or nil.
    public func disk(_ id: String) throws -> DiskRecord? {
        try validateDiskID(id)
        if let cached = lock.withLock({ diskCache[id] }) { return cached }
        let path = diskRecordPath(id)
        guard let (env, _, _) = try ObjectFiles.read(path, kind: .disk, diskID: id, sequence: 0, payload: true) else { return nil }
        let record = try Metadata.decodeDisk(env.metadata, diskID: id, path: path)
        lock.withLock { diskCache[id] = record }
        return record
    }

    /// Every disk with a record, ordered by id.
    public func disks() throws -> [DiskRecord] {
        let names = try ObjectFiles.list(root + "/disks") ?? []
        var out = [DiskRecord]()
        for name in names where !name.hasPrefix(".") {
            guard let id = Self.decodeDiskID(name) else { continue }
            if let d = try disk(id) { out.append(d) }
        }
        return out.sorted { $0.diskID < $1.diskID }
    }

    func requireDisk(_ id: String) throws -> DiskRecord {
        guard let d = try disk(id) else {
            throw TidemarkError(.notFound, "disk '\(id)' is not known to the target at \(root)",
                                hint: "the disk record is stored when the agent first opens the disk (putDisk)")
        }
        return d
    }

    // MARK: - Segments

    /// Checks extents against the disk: ascending, non-overlapping,
    /// non-empty, chunk-aligned (the last chunk of the disk may be short),
    /// inside the disk. Extents offered for storing are refused as
    /// .invalidArgument; extents read from an object (`storedIn`, its path)
    /// as .corrupt, before anything is computed from them.
    func validate(extents: [TargetExtent], disk d: DiskRecord, sequence: UInt64, storedIn path: String? = nil) throws {
        let chunk = UInt64(d.chunkSizeBytes)
        var previousEnd: UInt64 = 0
        for (i, e) in extents.enumerated() {
            let (end, overflow) = e.offset.addingReportingOverflow(e.length)
            func bad(_ what: String) -> TidemarkError {
                let message = "disk '\(d.diskID)' sequence \(sequence) extent \(i) (offset \(e.offset), length \(e.length)): \(what)"
                guard let path else { return TidemarkError(.invalidArgument, message) }
                return TidemarkError(.corrupt, "\(path): metadata: \(message)",
                                     hint: "the object is damaged or was edited; it is not used. Restore it from a copy, or treat its sequence as lost")
            }
            guard e.length > 0, !overflow else { throw bad("empty or overflowing") }
            guard end <= d.sizeBytes else { throw bad("ends beyond the disk size \(d.sizeBytes)") }
            guard e.offset % chunk == 0, e.length % chunk == 0 || end == d.sizeBytes else {
                throw bad("not aligned to the chunk size \(chunk)")
            }
            guard i == 0 || e.offset >= previousEnd else { throw bad("overlaps or precedes the previous extent") }
            previousEnd = end
        }
    }

    /// Stores a segment durably (file and directory fsynced before return).
    /// The same sequence again with identical content succeeds without
    /// writing; different content throws (objects are immutable). With
    /// `point`, the point manifest is written after the segment.
    public func putSegment(diskID: String, sequence: UInt64, extents: [TargetExtent], point: PointRecord?,
                           bytes: UnsafeRawBufferPointer) throws {
        let put = SegmentPut(diskID: diskID, sequence: sequence, extents: extents, point: point, bytes: Array(bytes))
        if let failure = putSegments([put], pool: nil).failure { throw failure.error }
    }

    /// Stores segments durably, as a batch (docs/target-layout.md section
    /// 5): each object is written to a temporary file and fsynced (on the
    /// `pool`'s threads and the caller's, in parallel), then every object is
    /// linked to its name in the order given, then each segments directory
    /// is fsynced once; point manifests of tag segments follow. Each put
    /// means what `putSegment` means.
    ///
    /// Returns how many puts, from the first, are durable: all of them, or,
    /// with `failure`, the ones before the first that failed (its index and
    /// error; the later ones are not stored, or not known to be durable, and
    /// are offered again). Until its directory is fsynced, a sequence of the
    /// batch does not count towards `committedSequence`.
    public func putSegments(_ puts: [SegmentPut], pool: WorkerPool?) -> (durable: Int, failure: (index: Int, error: Error)?) {
        var limit = puts.count
        var failure: (index: Int, error: Error)?
        func fail(_ i: Int, _ e: Error) {
            if i < limit {
                limit = i
                failure = (i, e)
            }
        }

        // 1. Checks, in order; a pruned sequence is compared with its tombstone, not written.
        var needsWrite = [Bool](repeating: false, count: puts.count)
        for (i, p) in puts.enumerated() {
            do {
                needsWrite[i] = try prepare(p)
            } catch {
                fail(i, error)
                break
            }
        }

        // 2. Temporary files, written and fsynced in parallel.
        let toWrite = (0..<limit).filter { needsWrite[$0] }
        let temporaries = TemporaryFiles(count: puts.count)
        defer { temporaries.removeLeftovers() }
        let write = { [self] (k: Int) in
            let i = toWrite[k]
            let p = puts[i]
            do {
                let tmp = try p.withPayload { bytes in
                    let header = Envelope.encodeHeader(kind: .segment, diskID: p.diskID, sequence: p.sequence,
                                                       metadata: Metadata.encodeSegment(extents: p.extents, point: p.point),
                                                       payload: bytes)
                    let dir = segmentsDir(p.diskID), name = Self.objectName(p.sequence, ".seg")
                    if let staged = p.staged, staged.headerBytes == header.count {
                        return try ObjectFiles.writeTemporary(dir: dir, name: name, staged: staged, header: header)
                    }
                    return try ObjectFiles.writeTemporary(dir: dir, name: name, header: header, payload: bytes)
                }
                temporaries.set(i, .success(tmp))
            } catch {
                temporaries.set(i, .failure(error))
            }
        }
        if let pool { pool.run(count: toWrite.count, write) } else { for k in toWrite.indices { write(k) } }
        for i in toWrite where i < limit {
            if case .failure(let e)? = temporaries.result(i) { fail(i, e) }
        }

        // 3. Names, in order. A sequence linked here does not count towards
        // the committed sequence until its directory is fsynced (step 4).
        let toLink = (0..<limit).filter { needsWrite[$0] }
        let entered = lock.withLock { toLink.filter { unsynced[puts[$0].diskID, default: []].insert(puts[$0].sequence).inserted } }
        var linked: Set<Int> = []
        var synced: [Int] = []
        defer {
            // What is known durable leaves `unsynced`, and what this call
            // entered but did not link. A name linked but not synced (here or
            // by an earlier call that failed) stays out of the committed
            // sequence until a later put of it has its directory fsynced.
            lock.withLock {
                for i in synced { unsynced[puts[i].diskID]?.remove(puts[i].sequence) }
                for i in entered where !linked.contains(i) { unsynced[puts[i].diskID]?.remove(puts[i].sequence) }
                for i in toLink where unsynced[puts[i].diskID]?.isEmpty == true { unsynced[puts[i].diskID] = nil }
            }
        }
        for i in toLink {
            let p = puts[i]
            do {
                guard let tmp = temporaries.take(i) else { continue }
                let published = try ObjectFiles.publish(temporary: tmp, dir: segmentsDir(p.diskID), name: Self.objectName(p.sequence, ".seg"))
                if published { linked.insert(i) }
                if !published {
                    try p.withPayload {
                        try checkSameSegment(diskID: p.diskID, sequence: p.sequence, extents: p.extents, point: p.point, bytes: $0)
                    }
                }
            } catch {
                fail(i, error)
                break
            }
        }

        // 4. One fsync per segments directory, also when the objects existed
        // already (whoever linked them may not have synced their names).
        var dirs: [String] = []
        for p in puts.prefix(limit) where !dirs.contains(segmentsDir(p.diskID)) { dirs.append(segmentsDir(p.diskID)) }
        for dir in dirs {
            do {
                try ObjectFiles.syncDirectory(dir)
            } catch {
                fail(0, error)
                return (0, failure)
            }
        }
        synced = toLink.filter { $0 < limit }

        // 5. Point manifests, each after its tag segment is durable.
        for i in 0..<limit {
            let p = puts[i]
            guard let point = p.point else { continue }
            do {
                // A tombstoned tag segment whose point expired stays expired.
                if ObjectFiles.exists(tombstonePath(p.diskID, p.sequence)) && !ObjectFiles.exists(pointPath(p.diskID, p.sequence)) {
                    continue
                }
                try putPointManifest(point)
            } catch {
                fail(i, error)
                break
            }
        }
        return (limit, failure)
    }

    /// Checks a put against the disk record and the rules of section 5.
    /// Returns true when the object is to be written, false when its
    /// sequence was pruned and the offer matches the tombstone.
    private func prepare(_ p: SegmentPut) throws -> Bool {
        let d = try requireDisk(p.diskID)
        guard p.sequence >= 1 else { throw TidemarkError(.invalidArgument, "disk '\(p.diskID)': segment sequences start at 1") }
        try validate(extents: p.extents, disk: d, sequence: p.sequence)
        guard UInt64(p.payloadCount) <= EnvelopeFormat.payloadBytesMax else {
            throw TidemarkError(.invalidArgument, "disk '\(p.diskID)' sequence \(p.sequence): \(p.payloadCount) bytes exceed the object limit \(EnvelopeFormat.payloadBytesMax)")
        }
        if let pt = p.point {
            guard pt.diskID == p.diskID, pt.sequence == p.sequence else {
                throw TidemarkError(.invalidArgument, "point '\(pt.id)' names disk '\(pt.diskID)' sequence \(pt.sequence) but travels in disk '\(p.diskID)' sequence \(p.sequence)")
            }
            guard pt.id.utf8.count <= EnvelopeFormat.stringBytesMax, pt.pointClass.utf8.count <= EnvelopeFormat.stringBytesMax else {
                throw TidemarkError(.invalidArgument, "point '\(pt.id.prefix(64))': id or class longer than \(EnvelopeFormat.stringBytesMax) bytes")
            }
        }
        if ObjectFiles.exists(tombstonePath(p.diskID, p.sequence)) {
            // Pruned already: never store the bytes again, just confirm they match.
            try p.withPayload {
                try checkSameSegment(diskID: p.diskID, sequence: p.sequence, extents: p.extents, point: p.point, bytes: $0)
            }
            return false
        }
        return true
    }

    /// The segment (or its tombstone) already stored at `sequence` must be
    /// exactly what is offered.
    private func checkSameSegment(diskID: String, sequence: UInt64, extents: [TargetExtent], point: PointRecord?,
                                  bytes: UnsafeRawBufferPointer) throws {
        guard let stored = try segmentInfo(diskID: diskID, sequence: sequence) else {
            throw TidemarkError(.state, "disk '\(diskID)' sequence \(sequence): object vanished while being stored")
        }
        let offered = ObjectDigest.payload(bytes, version: stored.checksumVersion)
        var differences = [String]()
        if stored.payloadLength != UInt64(bytes.count) || stored.payloadChecksum != offered {
            differences.append("bytes (stored \(stored.payloadLength) bytes checksum \(stored.payloadChecksum.hexString.prefix(16))…, offered \(bytes.count) bytes checksum \(offered.hexString.prefix(16))…)")
        }
        if stored.extents != extents { differences.append("extents") }
        if stored.point != point { differences.append("point") }
        guard differences.isEmpty else {
            throw TidemarkError(.state, "disk '\(diskID)' sequence \(sequence) is already stored with different \(differences.joined(separator: ", "))",
                                hint: "stored segments are immutable; the sender reused a sequence number for different data")
        }
        if !stored.pruned {
            // Read it whole once: a damaged stored copy must not be acknowledged as a match.
            _ = try readSegment(diskID: diskID, sequence: sequence)
        }
    }

    private func putPointManifest(_ p: PointRecord) throws {
        let header = Envelope.encodeHeader(kind: .point, diskID: p.diskID, sequence: p.sequence,
                                           metadata: Metadata.encodePointManifest(p), payload: UnsafeRawBufferPointer(start: nil, count: 0))
        if try ObjectFiles.create(dir: pointsDir(p.diskID), name: Self.objectName(p.sequence, ".point"), header: header,
                                  payload: UnsafeRawBufferPointer(start: nil, count: 0)) { return }
        let stored = try readPoint(diskID: p.diskID, sequence: p.sequence)
        guard stored == p else {
            throw TidemarkError(.state, "disk '\(p.diskID)' sequence \(p.sequence): a different point is already stored (\(String(describing: stored)), offered \(p))",
                                hint: "point manifests are immutable")
        }
    }

    /// The segment's opaque bytes, checksum verified.
    public func readSegment(diskID: String, sequence: UInt64) throws -> [UInt8] {
        try validateDiskID(diskID)
        let path = segmentPath(diskID, sequence)
        if let (env, payload, _) = try ObjectFiles.read(path, kind: .segment, diskID: diskID, sequence: sequence, payload: true) {
            try checkSegmentMetadata(env, path: path, diskID: diskID)
            return payload!
        }
        throw missingSegment(diskID: diskID, sequence: sequence)
    }

    /// `readSegment` into a buffer of `pool`: the bytes are the first
    /// `length` of `buffer` (nil when the segment is empty).
    public func readSegment(diskID: String, sequence: UInt64, into pool: BufferPool) throws -> (buffer: PooledBuffer?, length: Int) {
        try validateDiskID(diskID)
        let path = segmentPath(diskID, sequence)
        if let (env, payload, length) = try ObjectFiles.read(path, kind: .segment, diskID: diskID, sequence: sequence, into: pool) {
            try checkSegmentMetadata(env, path: path, diskID: diskID)
            return (payload, length)
        }
        throw missingSegment(diskID: diskID, sequence: sequence)
    }

    /// Decoding the metadata checks it is well formed.
    private func checkSegmentMetadata(_ env: Envelope, path: String, diskID: String) throws {
        var r = MetadataReader(env.metadata, path: path)
        _ = try Metadata.decodeSegment(&r, diskID: diskID)
        try r.end()
    }

    private func missingSegment(diskID: String, sequence: UInt64) -> TidemarkError {
        let path = segmentPath(diskID, sequence)
        if ObjectFiles.exists(tombstonePath(diskID, sequence)) {
            return TidemarkError(.notFound, "disk '\(diskID)' sequence \(sequence) was pruned (\(tombstonePath(diskID, sequence)))",
                                 hint: "its data is overwritten at every retained point")
        }
        return TidemarkError(.notFound, "disk '\(diskID)' sequence \(sequence) is not stored (no \(path))")
    }

    /// What is stored for a sequence, as `segmentInfo`, with the sealed
    /// header and tag of the segment (or the copy its tombstone keeps; nil
    /// for a tombstone older than envelope version 3). One open per object.
    public func segmentInfoWithSealedHeader(diskID: String, sequence: UInt64) throws -> (StoredSegment, SealedHeaderCopy?)? {
        try validateDiskID(diskID)
        let path = segmentPath(diskID, sequence)
        if let (env, copy) = try ObjectFiles.readSealedHeaderCopy(path, diskID: diskID, sequence: sequence) {
            return (try segmentInfo(env, path: path, diskID: diskID, sequence: sequence), copy)
        }
        return try tombstone(diskID: diskID, sequence: sequence).map { ($0, $0.sealedHeaderCopy) }
    }

    /// What is stored for a sequence: the segment's metadata, or its
    /// tombstone's; nil when neither exists. Verifies the object header.
    public func segmentInfo(diskID: String, sequence: UInt64) throws -> StoredSegment? {
        try validateDiskID(diskID)
        let path = segmentPath(diskID, sequence)
        if let (env, _, _) = try ObjectFiles.read(path, kind: .segment, diskID: diskID, sequence: sequence, payload: false) {
            return try segmentInfo(env, path: path, diskID: diskID, sequence: sequence)
        }
        return try tombstone(diskID: diskID, sequence: sequence)
    }

    private func segmentInfo(_ env: Envelope, path: String, diskID: String, sequence: UInt64) throws -> StoredSegment {
        do {
            var r = MetadataReader(env.metadata, path: path)
            let (extents, point) = try Metadata.decodeSegment(&r, diskID: diskID)
            try r.end()
            try validate(extents: extents, disk: try requireDisk(diskID), sequence: sequence, storedIn: path)
            return StoredSegment(sequence: sequence, extents: extents, point: point, payloadLength: env.payloadLength,
                                 payloadChecksum: env.payloadChecksum, checksumVersion: env.version, pruned: false, deadAtSequence: nil)
        }
    }

    /// The sealed header and tag of the segment stored at `sequence`, or the
    /// copy its tombstone keeps; nil when neither exists or the tombstone
    /// predates envelope version 3 (it kept no copy). For recovery, which
    /// proves every header under the replication key (docs/target-layout.md
    /// section 7).
    public func sealedHeaderCopy(diskID: String, sequence: UInt64) throws -> SealedHeaderCopy? {
        try validateDiskID(diskID)
        if let (_, copy) = try ObjectFiles.readSealedHeaderCopy(segmentPath(diskID, sequence), diskID: diskID, sequence: sequence) {
            return copy
        }
        return try tombstone(diskID: diskID, sequence: sequence)?.sealedHeaderCopy
    }

    func tombstone(diskID: String, sequence: UInt64) throws -> StoredSegment? {
        let path = tombstonePath(diskID, sequence)
        guard let (env, payload, _) = try ObjectFiles.read(path, kind: .tombstone, diskID: diskID, sequence: sequence, payload: true) else {
            return nil
        }
        var r = MetadataReader(env.metadata, path: path)
        _ = try r.u64()  // pruned at
        let deadAt = try r.u64(), length = try r.u64(), digest = try r.bytes(32)
        // Envelope version 2 adds the version of the pruned segment's checksum.
        let checksumVersion = env.version >= 2 ? try r.u16() : 1
        guard EnvelopeFormat.readable.contains(checksumVersion) else {
            throw r.corrupt("the pruned segment's checksum version \(checksumVersion) is not 1 or 2")
        }
        let (extents, point) = try Metadata.decodeSegment(&r, diskID: diskID)
        try r.end()
        try validate(extents: extents, disk: try requireDisk(diskID), sequence: sequence, storedIn: path)
        // Envelope version 3 keeps the pruned segment's sealed header and tag as the payload.
        let copy = (payload ?? []).isEmpty ? nil : try SealedHeaderCopy.decode(payload!, segmentBytes: length, path: path)
        if env.version < 3, copy != nil { throw r.corrupt("a version \(env.version) tombstone has a payload") }
        return StoredSegment(sequence: sequence, extents: extents, point: point, payloadLength: length,
                             payloadChecksum: digest, checksumVersion: checksumVersion, pruned: true, deadAtSequence: deadAt,
                             sealedHeaderCopy: copy)
    }

    /// Sequences present as segment objects and as tombstones.
    func listSequences(diskID: String) throws -> (segments: [UInt64], tombstones: [UInt64]) {
        let segs = (try ObjectFiles.list(segmentsDir(diskID)) ?? []).compactMap { Self.sequence(ofName: $0, suffix: ".seg") }
        let tombs = (try ObjectFiles.list(tombstonesDir(diskID)) ?? []).compactMap { Self.sequence(ofName: $0, suffix: ".tomb") }
        return (segs.sorted(), tombs.sorted())
    }

    /// The highest S such that every sequence 1...S is stored as a segment
    /// or a tombstone (0 when sequence 1 is missing or the disk is unknown).
    /// A segment this process is storing counts only once its name is
    /// durable (`putSegments`).
    public func committedSequence(diskID: String) throws -> UInt64 {
        try validateDiskID(diskID)
        // A name is looked at before `unsynced`: `putSegments` enters a
        // sequence there before it links the name, so a name seen here is
        // either in `unsynced` now or synced already.
        func isUnsynced(_ seq: UInt64) -> Bool { lock.withLock { unsynced[diskID]?.contains(seq) ?? false } }
        let cached = lock.withLock { committedCache[diskID] }
        var s: UInt64
        if let cached {
            s = cached
        } else {
            // First look at this disk in this process: names an earlier
            // process linked may not be durable yet (it can have died between
            // linking and its directory fsync). Make them durable before they
            // count as committed; a failed fsync is an error, not trusted.
            for dir in [segmentsDir(diskID), tombstonesDir(diskID)] where ObjectFiles.exists(dir) {
                try ObjectFiles.syncDirectory(dir)
            }
            let (segs, tombs) = try listSequences(diskID: diskID)
            var all = Set(segs)
            all.formUnion(tombs)
            s = 0
            while all.contains(s + 1) && !isUnsynced(s + 1) { s += 1 }
        }
        // Segment first, then tombstone: prune writes the tombstone before
        // deleting the segment, so a sequence is never seen as neither.
        while (ObjectFiles.exists(segmentPath(diskID, s + 1)) || ObjectFiles.exists(tombstonePath(diskID, s + 1))) && !isUnsynced(s + 1) {
            s += 1
        }
        let result = s
        lock.withLock { committedCache[diskID] = max(committedCache[diskID] ?? 0, result) }
        return s
    }

    // MARK: - Points

    func readPoint(diskID: String, sequence: UInt64) throws -> PointRecord? {
        let path = pointPath(diskID, sequence)
        guard let (env, _, _) = try ObjectFiles.read(path, kind: .point, diskID: diskID, sequence: sequence, payload: true) else {
            return nil
        }
        var r = MetadataReader(env.metadata, path: path)
        let p = try Metadata.decodePoint(&r, diskID: diskID)
        try r.end()
        guard p.sequence == sequence else { throw r.corrupt("point sequence \(p.sequence) differs from the envelope's \(sequence)") }
        return p
    }

    /// Every point manifest of a disk, ordered by sequence.
    func allPoints(diskID: String) throws -> [PointRecord] {
        let names = try ObjectFiles.list(pointsDir(diskID)) ?? []
        var out = [PointRecord]()
        for seq in names.compactMap({ Self.sequence(ofName: $0, suffix: ".point") }).sorted() {
            if let p = try readPoint(diskID: diskID, sequence: seq) { out.append(p) }
        }
        return out
    }

    /// Recovery points read from the target alone, ordered by (disk,
    /// sequence). Only points that can be materialized are listed (sequence
    /// <= the disk's committed sequence) unless `includeIncomplete`.
    public func points(diskID: String?, includeIncomplete: Bool = false) throws -> [PointRecord] {
        let ids = try diskID.map { [$0] } ?? disks().map(\.diskID)
        var out = [PointRecord]()
        for id in ids {
            try validateDiskID(id)
            let ps = try allPoints(diskID: id)
            if includeIncomplete {
                out += ps
            } else {
                let committed = try committedSequence(diskID: id)
                out += ps.filter { $0.sequence <= committed }
            }
        }
        return out
    }
}

/// The temporary files of one `putSegments` batch: written on several
/// threads, then linked in order; whatever was not handed to `take` is
/// removed at the end.
final class TemporaryFiles: @unchecked Sendable {
    private let lock = Lock()
    private var results: [Result<String, Error>?]

    init(count: Int) { results = Array(repeating: nil, count: count) }

    func set(_ i: Int, _ r: Result<String, Error>) { lock.withLock { results[i] = r } }
    func result(_ i: Int) -> Result<String, Error>? { lock.withLock { results[i] } }

    /// The temporary path of put `i`, which the caller now owns (publish removes it).
    func take(_ i: Int) -> String? {
        lock.withLock {
            guard case .success(let path)? = results[i] else { return nil }
            results[i] = nil
            return path
        }
    }

    func removeLeftovers() {
        lock.withLock {
            for case .success(let path)? in results { _ = unlink(path) }
            results = results.map { _ in nil }
        }
    }
}

extension String {
    func trimmingSuffixNewline() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
