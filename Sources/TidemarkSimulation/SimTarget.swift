import Glibc
import TidemarkServerCore
import TidemarkStorage
import TidemarkSystem
import TidemarkTarget
import TidemarkWire

/// Target storage of the simulation: the real `TargetRepository` (layout,
/// envelopes, committed sequence, point manifests, materialize) over an
/// `InMemoryObjectStore`. The uploader stores each segment as the process
/// server does (`SpoolTargetSink.targetShape`, `putSegments`); everything
/// the checker learns of the target — the committed sequence, the points,
/// a point's image — is read back from the repository.
///
/// Besides the repository, the checker keeps `image`: the disk as the
/// committed segments describe it (each segment opened with the real
/// `SegmentOpener` as it is stored), for the tracking invariant after
/// every event, where a materialize would cost too much. A point's image
/// is taken from it when the point is stored, and compared again with a
/// real materialize when the agent reports the point committed and at the
/// end of the run.
///
/// Single-threaded (the simulation's event loop). Memory: the store's
/// objects (every stored segment), the image, and one image per point not
/// yet checked (the checker takes them after each event).
final class SimTarget {
    struct StoredPoint {
        var sequence: UInt64
        var tag: PointTag
    }

    let diskID: String
    let sizeBytes: Int
    let chunkBytes: Int
    private let opener: SegmentOpener
    /// Where materialize writes a point's image (a scratch file the
    /// simulation owns and removes).
    private let scratchPath: String
    private(set) var store: InMemoryObjectStore
    private(set) var repository: TargetRepository
    /// The repository's committed sequence after the last store (checked
    /// against `committedSequence(diskID:)` at every store).
    private(set) var committed: UInt64 = 0
    /// The disk as the committed segments describe it.
    private(set) var image: [UInt8]
    /// Points stored, by id (the checker's copy of what it put; the
    /// repository's own list is what recoveries use).
    private(set) var points: [String: StoredPoint] = [:]
    /// The image at each stored point tag, until the checker takes it.
    var pointImages: [String: [UInt8]] = [:]
    /// Times the target was lost.
    private(set) var losses = 0

    init(diskID: String, sizeBytes: Int, chunkBytes: Int, key: ReplicationKey, scratchPath: String) throws {
        self.diskID = diskID
        self.sizeBytes = sizeBytes
        self.chunkBytes = chunkBytes
        self.scratchPath = scratchPath
        opener = try SegmentOpener(key: key)
        image = [UInt8](repeating: 0, count: sizeBytes)
        store = InMemoryObjectStore(label: "sim-target")
        repository = try TargetRepository(store: store, stateDirectory: nil)
    }

    /// The disk's stored record (nil before the first openDisk).
    var record: DiskRecord? {
        do { return try repository.disk(diskID) } catch { preconditionFailure("reading the simulated target's disk record: \(error)") }
    }

    /// Stores the disk's record unless one is stored (the first one wins).
    func createDisk(_ r: DiskRecord) throws {
        if try repository.disk(r.diskID) == nil { try repository.putDisk(r) }
    }

    /// Stores segment `committed + 1` for good (the uploader goes in
    /// order), as the process server's uploader does. Throws when it does
    /// not open (the uploader never stores such a segment) or when the
    /// repository refuses it or does not count it as committed.
    func put(sequence: UInt64, bytes: [UInt8]) throws {
        precondition(sequence == committed + 1, "SimTarget.put: #\(sequence) after #\(committed)")
        let (header, payload) = try bytes.withUnsafeBytes { try opener.open($0, diskID: diskID, sequence: sequence) }
        let (extents, point) = SpoolTargetSink.targetShape(header)
        let put = SegmentPut(diskID: diskID, sequence: sequence, extents: extents, point: point, bytes: bytes)
        if let failure = repository.putSegments([put], pool: nil).failure { throw failure.error }
        let now = try repository.committedSequence(diskID: diskID)
        guard now == sequence else {
            throw TidemarkError(.state, "the repository's committed sequence is #\(now) after storing #\(sequence)")
        }
        Self.apply(header, payload, to: &image)
        committed = sequence
        if header.kind == .point, let tag = header.point {
            points[tag.id] = StoredPoint(sequence: sequence, tag: tag)
            pointImages[tag.id] = image
        }
    }

    static func apply(_ header: SegmentHeader, _ payload: [UInt8], to image: inout [UInt8]) {
        var pos = 0
        for e in header.extents {
            let off = Int(e.offset), len = Int(e.length)
            if e.kind == .zero {
                image.replaceSubrange(off..<(off + len), with: repeatElement(0, count: len))
            } else {
                image.replaceSubrange(off..<(off + len), with: payload[pos..<(pos + len)])
                pos += len
            }
        }
    }

    /// The target is gone (its storage lost): a new, empty store.
    func lose() throws {
        store = InMemoryObjectStore(label: "sim-target")
        repository = try TargetRepository(store: store, stateDirectory: nil)
        committed = 0
        image = [UInt8](repeating: 0, count: sizeBytes)
        points.removeAll()
        pointImages.removeAll()
        losses += 1
    }

    /// The point's image recovered from the repository alone, as a recovery
    /// does: the point is looked up in the repository's own list; every
    /// segment from the tag down to 1 is read back (checksum verified),
    /// opened under the key and checked to belong to the epoch that owns
    /// its sequence (docs/wire-format.md 4.7: a superseded sealing is
    /// refused); then `TargetRepository.materialize` writes the image to
    /// the scratch file, which is read back. Throws what a recovery would
    /// refuse.
    func materialize(pointID: String) throws -> [UInt8] {
        guard let point = try repository.points(diskID: diskID).first(where: { $0.id == pointID }) else {
            throw TidemarkError(.notFound, "point \(pointID) is not in the repository's list of recoverable points")
        }
        var headers: [UInt64: SegmentHeader] = [:]
        for s in 1...point.sequence {
            let bytes = try repository.readSegment(diskID: diskID, sequence: s)
            headers[s] = try bytes.withUnsafeBytes { try opener.open($0, diskID: diskID, sequence: s) }.0
        }
        try Self.checkLineage(pointSequence: point.sequence, headers: headers)
        let segmentOpener = opener
        let disk = diskID
        try repository.materialize(point: point, to: scratchPath, open: { sequence, bytes in
            let (h, payload) = try bytes.withUnsafeBytes { try segmentOpener.open($0, diskID: disk, sequence: sequence) }
            var pos = 0
            return h.extents.map { e in
                if e.kind == .zero { return (e.offset, nil, UInt64(e.length)) }
                defer { pos += Int(e.length) }
                return (e.offset, Array(payload[pos..<(pos + Int(e.length))]), UInt64(e.length))
            }
        }, progress: { _, _ in })
        defer { unlink(scratchPath) }
        let fd = try FileDescriptor(open: scratchPath, .readOnly, purpose: "reading the simulation's recovered image")
        var out = [UInt8](repeating: 0, count: sizeBytes)
        var n = 0
        while n < sizeBytes {
            let got = try out.withUnsafeMutableBytes { try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[n...]), at: UInt64(n)) }
            if got == 0 { break }
            n += got
        }
        guard n == sizeBytes, try fd.stat().st_size == sizeBytes else {
            throw TidemarkError(.corrupt, "the recovered image of \(pointID) holds \(n) bytes; the disk has \(sizeBytes)")
        }
        return out
    }

    /// The lineage walk (wire format 4.7): the owner of the tag's sequence
    /// is the tag's epoch; below an epoch's start, the previous epoch its
    /// headers name (or, when unknown, the stored header's).
    static func checkLineage(pointSequence: UInt64, headers: [UInt64: SegmentHeader]) throws {
        guard var owner = headers[pointSequence]!.lineage else {
            throw TidemarkError(.corrupt, "the tag #\(pointSequence) has no lineage")
        }
        var s = pointSequence
        while s >= 1 {
            guard let l = headers[s]!.lineage else { throw TidemarkError(.corrupt, "#\(s) has no lineage") }
            if s >= owner.epochStart {
                guard l.epochID == owner.epochID && l.epochStart == owner.epochStart else {
                    throw TidemarkError(.corrupt, "#\(s) was sealed in epoch \(l.epochID.prefix(4)) starting #\(l.epochStart), but epoch \(owner.epochID.prefix(4)) starting #\(owner.epochStart) owns it: a superseded sealing")
                }
                s -= 1
                continue
            }
            switch owner.previous {
            case .none:
                throw TidemarkError(.corrupt, "epoch starting #\(owner.epochStart) names no previous epoch, yet #\(s) is below it")
            case .known(let id, let start):
                guard l.epochID == id && l.epochStart == start else {
                    throw TidemarkError(.corrupt, "#\(s) was sealed in epoch \(l.epochID.prefix(4)) starting #\(l.epochStart), but the epoch before #\(owner.epochStart) is \(id.prefix(4)) starting #\(start)")
                }
                owner = l
            case .unknown:
                // Taken from the stored header, as a recovery does (and says).
                owner = l
            }
        }
    }
}
