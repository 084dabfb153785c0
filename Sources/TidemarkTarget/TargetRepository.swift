import Glibc
import TidemarkStorage
import TidemarkSystem

/// Target storage (layout version 1, docs/target-layout.md) above any
/// `ObjectStore`: the naming of disks, segments, points and tombstones, the
/// object envelope, the committed sequence, points, prune, the chunk digest
/// index and materialize. Every object is immutable once written and
/// verified on every read; the catalog (disks, points, committed sequences)
/// is rebuilt from the store's listings alone. The store knows nothing of
/// this layout (docs/target-layout.md section 10 lists what the layout
/// needs of it).
///
/// Two things are not objects and live in a local `stateDirectory`, laid
/// out as the disk directories are: the chunk digest index (a mutable
/// cache, section 9) and the prune lock (an flock). For a local directory
/// (`init(localDirectory:)`) that is the target directory itself, so the
/// files are where the layout puts them. Without one, digest indexes are
/// unavailable and prune locks only within this process.
///
/// Safe to share between threads and processes: objects are created once
/// (never overwritten), prune takes a per-disk lock. The caches below only
/// grow with the disks and sequences seen (a few words per disk).
public final class TargetRepository: @unchecked Sendable {
    public let store: any ObjectStore
    /// Where the digest indexes and prune locks are kept; nil for none.
    public let stateDirectory: String?
    public static let layoutVersion = 1
    static let markerName = "TIDEMARK-TARGET"
    static let markerContents = "tidemark-target layout 1\n"
    /// The prefix of every disk's names.
    static let disksPrefix = "disks/"

    private let lock = Lock()
    /// Per disk: every sequence 1...n is known to be stored or pruned.
    /// Sequences never disappear (a segment becomes a tombstone first), so
    /// this only grows.
    private var committedCache: [String: UInt64] = [:]
    /// Disk records, once read (they are immutable).
    private var diskCache: [String: DiskRecord] = [:]
    /// Per disk: sequences `putSegments` stored whose names the store has
    /// not made durable yet (a crash may lose them): they do not count
    /// towards the committed sequence meanwhile.
    private var unsynced: [String: Set<UInt64>] = [:]
    /// Disks being pruned by this process (the prune lock without a state
    /// directory).
    private var pruning: Set<String> = []

    /// Opens target storage in `store`, creating the layout when the store
    /// is empty. `stateDirectory` holds the digest indexes and prune locks.
    public init(store: any ObjectStore, stateDirectory: String?) throws {
        self.store = store
        var state = stateDirectory
        while let s = state, s.count > 1 && s.hasSuffix("/") { state!.removeLast() }
        self.stateDirectory = state
        try prepare()
    }

    /// Opens (creating when absent or empty) target storage in a local
    /// directory: a `LocalDirectoryObjectStore` there, which is also the
    /// state directory. A non-empty directory without a marker is never
    /// taken over, whatever it holds (hidden files too).
    public convenience init(localDirectory root: String) throws {
        let store = try LocalDirectoryObjectStore(root: root)
        if try store.stat(Self.markerName) == nil {
            let foreign = try store.rootEntries().filter { $0 != "disks" && !$0.hasPrefix(LocalDirectoryObjectStore.temporaryPrefix) }
            guard foreign.isEmpty else {
                throw TidemarkError(.invalidArgument,
                                    "\(store.root) is not empty and has no \(Self.markerName) marker (holds \(foreign.prefix(3).joined(separator: ", "))…)",
                                    hint: "use an empty directory for a new target, or the directory of an existing one")
            }
        }
        try self.init(store: store, stateDirectory: store.root)
    }

    /// Where the store is, for messages (the directory of a local store).
    public var rootLocation: String {
        let marker = store.location(of: Self.markerName)
        return String(marker.dropLast(Self.markerName.utf8.count + 1))
    }

    private func prepare() throws {
        let markerBytes = Array(Self.markerContents.utf8)
        if let info = try store.stat(Self.markerName) {
            let existing = try store.get(Self.markerName, range: 0..<min(info.size, 256))
            guard existing == markerBytes else {
                let markerPath = store.location(of: Self.markerName)
                let text = String(decoding: existing.prefix(64), as: UTF8.self)
                if text.hasPrefix("tidemark-target layout ") {
                    throw TidemarkError(.unsupported, "\(markerPath): \(text.trimmingSuffixNewline()); this build knows layout \(Self.layoutVersion)",
                                        hint: "use a Tidemark release that knows this layout version")
                }
                throw TidemarkError(.corrupt, "\(markerPath): not a Tidemark target marker",
                                    hint: "point the target at a directory made by Tidemark, or at an empty one")
            }
            try store.makeDirectory(Self.disksPrefix)
            return
        }
        let foreign = try store.list(prefix: "", startAfter: nil, limit: 4, delimited: true).names.filter { $0 != Self.disksPrefix }
        guard foreign.isEmpty else {
            throw TidemarkError(.invalidArgument,
                                "\(rootLocation) is not empty and has no \(Self.markerName) marker (holds \(foreign.prefix(3).joined(separator: ", "))…)",
                                hint: "use an empty store for a new target, or the store of an existing one")
        }
        try store.makeDirectory(Self.disksPrefix)
        // The marker comes last: a store with a marker has the whole layout.
        // Another process creating it at the same time wrote the same bytes.
        do {
            try markerBytes.withUnsafeBytes { try store.put(Self.markerName, ObjectContent($0)) }
        } catch let e as ObjectStoreError where e.kind == .exists {}
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

    // Names in the store.
    static func diskName(_ id: String) -> String { disksPrefix + encodeDiskID(id) }
    func diskRecordName(_ id: String) -> String { Self.diskName(id) + "/disk" }
    func segmentsPrefix(_ id: String) -> String { Self.diskName(id) + "/segments/" }
    func tombstonesPrefix(_ id: String) -> String { Self.diskName(id) + "/tombstones/" }
    func pointsPrefix(_ id: String) -> String { Self.diskName(id) + "/points/" }
    func segmentName(_ id: String, _ seq: UInt64) -> String { segmentsPrefix(id) + Self.objectName(seq, ".seg") }
    func tombstoneName(_ id: String, _ seq: UInt64) -> String { tombstonesPrefix(id) + Self.objectName(seq, ".tomb") }
    func pointName(_ id: String, _ seq: UInt64) -> String { pointsPrefix(id) + Self.objectName(seq, ".point") }

    // Where those are, for messages (file paths in a local store).
    public func diskDir(_ id: String) -> String { store.location(of: Self.diskName(id)) }
    public func diskRecordPath(_ id: String) -> String { store.location(of: diskRecordName(id)) }
    func segmentsDir(_ id: String) -> String { store.location(of: Self.diskName(id) + "/segments") }
    func tombstonesDir(_ id: String) -> String { store.location(of: Self.diskName(id) + "/tombstones") }
    func pointsDir(_ id: String) -> String { store.location(of: Self.diskName(id) + "/points") }
    func segmentPath(_ id: String, _ seq: UInt64) -> String { store.location(of: segmentName(id, seq)) }
    func tombstonePath(_ id: String, _ seq: UInt64) -> String { store.location(of: tombstoneName(id, seq)) }
    func pointPath(_ id: String, _ seq: UInt64) -> String { store.location(of: pointName(id, seq)) }

    /// Marks a disk as being pruned by this process; false when it is already.
    func startPruning(_ id: String) -> Bool { lock.withLock { pruning.insert(id).inserted } }
    func stopPruning(_ id: String) { _ = lock.withLock { pruning.remove(id) } }

    /// True when an object of that name exists.
    func exists(_ name: String) throws -> Bool { try store.stat(name) != nil }

    /// The path of a disk's side file `file` in the state directory (its
    /// directory created when missing); nil without a state directory.
    func statePath(_ id: String, _ file: String) throws -> String? {
        guard let stateDirectory else { return nil }
        let full = stateDirectory + "/" + Self.diskName(id)
        var dir = full.hasPrefix("/") ? "" : "."
        for part in full.split(separator: "/") {
            dir += "/" + part
            if mkdir(dir, 0o755) != 0 && errno != EEXIST {
                throw SystemError(call: "mkdir", errno: errno, context: "creating the state directory \(dir)")
            }
        }
        return full + "/" + file
    }

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
        // The disk's directories first (where the store has them), as the layout shows them.
        for prefix in [segmentsPrefix(d.diskID), tombstonesPrefix(d.diskID), pointsPrefix(d.diskID)] {
            try store.makeDirectory(prefix)
        }
        let header = Envelope.encodeHeader(kind: .disk, diskID: d.diskID, sequence: 0, metadata: Metadata.encodeDisk(d),
                                           payload: UnsafeRawBufferPointer(start: nil, count: 0))
        do {
            try header.withUnsafeBytes { try store.put(diskRecordName(d.diskID), ObjectContent($0)) }
            return
        } catch let e as ObjectStoreError where e.kind == .exists {}
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
        guard let (env, _, _) = try ObjectReader.read(store, diskRecordName(id), kind: .disk, diskID: id, sequence: 0, payload: true) else { return nil }
        let record = try Metadata.decodeDisk(env.metadata, diskID: id, path: path)
        lock.withLock { diskCache[id] = record }
        return record
    }

    /// Every disk with a record, ordered by id.
    public func disks() throws -> [DiskRecord] {
        var out = [DiskRecord]()
        for entry in try store.listAll(prefix: Self.disksPrefix, delimited: true) where entry.hasSuffix("/") {
            guard let id = Self.decodeDiskID(String(entry.dropFirst(Self.disksPrefix.count).dropLast())) else { continue }
            if let d = try disk(id) { out.append(d) }
        }
        return out.sorted { $0.diskID < $1.diskID }
    }

    func requireDisk(_ id: String) throws -> DiskRecord {
        guard let d = try disk(id) else {
            throw TidemarkError(.notFound, "disk '\(id)' is not known to the target at \(rootLocation)",
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
    /// 5) with the store's `putBatch`: each object's envelope is computed
    /// and the object written on the `pool`'s threads and the caller's, in
    /// parallel; the objects are published in the order given (an existing
    /// one is compared before any later one is published); one durability
    /// barrier covers the batch; point manifests of tag segments follow.
    /// Each put means what `putSegment` means.
    ///
    /// Returns how many puts, from the first, are durable: all of them, or,
    /// with `failure`, the ones before the first that failed (its index and
    /// error; the later ones are not stored, or not known to be durable, and
    /// are offered again). Until the store has made its name durable, a
    /// sequence of the batch does not count towards `committedSequence`.
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

        // 2–4. The objects, as one batch of the store. A sequence enters
        // `unsynced` before its name can appear and leaves it once durable.
        let toWrite = (0..<limit).filter { needsWrite[$0] }
        let objects = toWrite.map { i -> ObjectPut in
            let p = puts[i]
            return ObjectPut(name: segmentName(p.diskID, p.sequence)) { write in
                try p.withPayload { bytes in
                    let header = Envelope.encodeHeader(kind: .segment, diskID: p.diskID, sequence: p.sequence,
                                                       metadata: Metadata.encodeSegment(extents: p.extents, point: p.point),
                                                       payload: bytes)
                    if let staged = p.staged, staged.headerBytes == header.count {
                        // The header goes into the staged buffer's room: the
                        // object is one aligned buffer (written with O_DIRECT
                        // where the store can).
                        let padded = staged.assemble(header: header, alignment: ObjectContent.alignmentBytes)
                        try write(ObjectContent(padded: padded, count: staged.headerBytes + staged.payloadCount))
                    } else {
                        try header.withUnsafeBytes { try write(ObjectContent(head: $0, tail: bytes)) }
                    }
                }
            }
        }
        let entered = lock.withLock { toWrite.filter { unsynced[puts[$0].diskID, default: []].insert(puts[$0].sequence).inserted } }
        let outcome = store.putBatch(objects, pool: pool) { k in
            let p = puts[toWrite[k]]
            try p.withPayload {
                try checkSameSegment(diskID: p.diskID, sequence: p.sequence, extents: p.extents, point: p.point, bytes: $0)
            }
        }
        // What is durable leaves `unsynced`, and what this call entered but
        // the store did not leave visible. A name visible but not durable
        // (here or after an earlier call that failed) stays out of the
        // committed sequence until a later put of it is durable.
        let durable = Set(toWrite.prefix(outcome.durable))
        let visible = Set(outcome.visibleNotDurable.map { toWrite[$0] })
        lock.withLock {
            for i in durable { unsynced[puts[i].diskID]?.remove(puts[i].sequence) }
            for i in entered where !durable.contains(i) && !visible.contains(i) { unsynced[puts[i].diskID]?.remove(puts[i].sequence) }
            for i in toWrite where unsynced[puts[i].diskID]?.isEmpty == true { unsynced[puts[i].diskID] = nil }
        }
        if let f = outcome.failure { fail(toWrite[f.index], f.error) }

        // 5. Point manifests, each after its tag segment is durable.
        for i in 0..<limit {
            let p = puts[i]
            guard let point = p.point else { continue }
            do {
                // A tombstoned tag segment whose point expired stays expired.
                if try exists(tombstoneName(p.diskID, p.sequence)) && !exists(pointName(p.diskID, p.sequence)) {
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
        if try exists(tombstoneName(p.diskID, p.sequence)) {
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
        do {
            try header.withUnsafeBytes { try store.put(pointName(p.diskID, p.sequence), ObjectContent($0)) }
            return
        } catch let e as ObjectStoreError where e.kind == .exists {}
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
        if let (env, payload, _) = try ObjectReader.read(store, segmentName(diskID, sequence), kind: .segment, diskID: diskID, sequence: sequence, payload: true) {
            try checkSegmentMetadata(env, path: path, diskID: diskID)
            return payload!
        }
        throw try missingSegment(diskID: diskID, sequence: sequence)
    }

    /// `readSegment` into a buffer of `pool`: the bytes are the first
    /// `length` of `buffer` (nil when the segment is empty).
    public func readSegment(diskID: String, sequence: UInt64, into pool: BufferPool) throws -> (buffer: PooledBuffer?, length: Int) {
        try validateDiskID(diskID)
        let path = segmentPath(diskID, sequence)
        if let (env, payload, length) = try ObjectReader.read(store, segmentName(diskID, sequence), kind: .segment, diskID: diskID, sequence: sequence, into: pool) {
            try checkSegmentMetadata(env, path: path, diskID: diskID)
            return (payload, length)
        }
        throw try missingSegment(diskID: diskID, sequence: sequence)
    }

    /// Decoding the metadata checks it is well formed.
    private func checkSegmentMetadata(_ env: Envelope, path: String, diskID: String) throws {
        var r = ByteReader(env.metadata, path: path)
        _ = try Metadata.decodeSegment(&r, diskID: diskID)
        try r.end()
    }

    private func missingSegment(diskID: String, sequence: UInt64) throws -> TidemarkError {
        let path = segmentPath(diskID, sequence)
        if try exists(tombstoneName(diskID, sequence)) {
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
        if let (env, copy) = try ObjectReader.readSealedHeaderCopy(store, segmentName(diskID, sequence), diskID: diskID, sequence: sequence) {
            return (try segmentInfo(env, path: path, diskID: diskID, sequence: sequence), copy)
        }
        return try tombstone(diskID: diskID, sequence: sequence).map { ($0, $0.sealedHeaderCopy) }
    }

    /// What is stored for a sequence: the segment's metadata, or its
    /// tombstone's; nil when neither exists. Verifies the object header.
    public func segmentInfo(diskID: String, sequence: UInt64) throws -> StoredSegment? {
        try validateDiskID(diskID)
        let path = segmentPath(diskID, sequence)
        if let (env, _, _) = try ObjectReader.read(store, segmentName(diskID, sequence), kind: .segment, diskID: diskID, sequence: sequence, payload: false) {
            return try segmentInfo(env, path: path, diskID: diskID, sequence: sequence)
        }
        return try tombstone(diskID: diskID, sequence: sequence)
    }

    private func segmentInfo(_ env: Envelope, path: String, diskID: String, sequence: UInt64) throws -> StoredSegment {
        do {
            var r = ByteReader(env.metadata, path: path)
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
        if let (_, copy) = try ObjectReader.readSealedHeaderCopy(store, segmentName(diskID, sequence), diskID: diskID, sequence: sequence) {
            return copy
        }
        return try tombstone(diskID: diskID, sequence: sequence)?.sealedHeaderCopy
    }

    func tombstone(diskID: String, sequence: UInt64) throws -> StoredSegment? {
        let path = tombstonePath(diskID, sequence)
        guard let (env, payload, _) = try ObjectReader.read(store, tombstoneName(diskID, sequence), kind: .tombstone, diskID: diskID, sequence: sequence, payload: true) else {
            return nil
        }
        var r = ByteReader(env.metadata, path: path)
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
        let segs = try sequences(under: segmentsPrefix(diskID), suffix: ".seg")
        let tombs = try sequences(under: tombstonesPrefix(diskID), suffix: ".tomb")
        return (segs.sorted(), tombs.sorted())
    }

    /// The sequences of the names under `prefix` that are "<seq20><suffix>".
    func sequences(under prefix: String, suffix: String) throws -> [UInt64] {
        try store.listAll(prefix: prefix).compactMap { Self.sequence(ofName: String(Substring($0.utf8.dropFirst(prefix.utf8.count))), suffix: suffix) }
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
            for prefix in [segmentsPrefix(diskID), tombstonesPrefix(diskID)] {
                try store.syncNames(prefix: prefix)
            }
            let (segs, tombs) = try listSequences(diskID: diskID)
            var all = Set(segs)
            all.formUnion(tombs)
            s = 0
            while all.contains(s + 1) && !isUnsynced(s + 1) { s += 1 }
        }
        // Segment first, then tombstone: prune writes the tombstone before
        // deleting the segment, so a sequence is never seen as neither.
        while try (exists(segmentName(diskID, s + 1)) || exists(tombstoneName(diskID, s + 1))) && !isUnsynced(s + 1) {
            s += 1
        }
        let result = s
        lock.withLock { committedCache[diskID] = max(committedCache[diskID] ?? 0, result) }
        return s
    }

    // MARK: - Points

    func readPoint(diskID: String, sequence: UInt64) throws -> PointRecord? {
        let path = pointPath(diskID, sequence)
        guard let (env, _, _) = try ObjectReader.read(store, pointName(diskID, sequence), kind: .point, diskID: diskID, sequence: sequence, payload: true) else {
            return nil
        }
        var r = ByteReader(env.metadata, path: path)
        let p = try Metadata.decodePoint(&r, diskID: diskID)
        try r.end()
        guard p.sequence == sequence else { throw r.corrupt("point sequence \(p.sequence) differs from the envelope's \(sequence)") }
        return p
    }

    /// Every point manifest of a disk, ordered by sequence.
    func allPoints(diskID: String) throws -> [PointRecord] {
        var out = [PointRecord]()
        for seq in try sequences(under: pointsPrefix(diskID), suffix: ".point").sorted() {
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

extension String {
    func trimmingSuffixNewline() -> String {
        var s = self
        while s.hasSuffix("\n") { s.removeLast() }
        return s
    }
}
