import TidemarkCrypto
import TidemarkSystem

/// Which run of an agent's numbering sealed a segment (segment format 4,
/// docs/wire-format.md 4.7). An agent numbers a disk's segments 1, 2, 3, …;
/// it starts a new **epoch** — a fresh random id — whenever it (re)starts
/// numbering: when a run begins, and when a process server reports fewer
/// segments than were acknowledged. An epoch that starts at sequence f owns
/// every stored sequence from f up to the next epoch's start. Sealings of an
/// older epoch at sequences ≥ f were never stored: they were superseded.
///
/// Each header carries its epoch (id, start) and the epoch that owned the
/// sequence just before the start, so that a reader holding the key can
/// walk from a point down to sequence 1 and check that every header it
/// uses belongs to the epoch that owns its sequence.
public struct SegmentLineage: Equatable, Sendable {
    public enum Previous: Equatable, Sendable {
        /// The epoch starts at sequence 1.
        case none
        /// The epoch that owns sequence `epochStart - 1`.
        case known(id: [UInt8], start: UInt64)
        /// The agent lost its record of the epochs before (its state
        /// directory): the sequences below `epochStart` cannot be tied to it.
        case unknown
    }

    public static let idBytes = 16
    /// Bytes of the lineage in a format 4 header.
    public static let encodedBytes = 56

    public var epochID: [UInt8]
    public var epochStart: UInt64
    public var previous: Previous

    public init(epochID: [UInt8], epochStart: UInt64, previous: Previous) {
        precondition(epochID.count == Self.idBytes, "SegmentLineage: an epoch id is \(Self.idBytes) bytes")
        self.epochID = epochID
        self.epochStart = epochStart
        self.previous = previous
    }

    /// The lineage of a history that starts at sequence 1 with an all-zero
    /// epoch id: what tools and tests seal with when they number segments
    /// themselves, once.
    public static let single = SegmentLineage(epochID: [UInt8](repeating: 0, count: idBytes), epochStart: 1, previous: .none)

    /// A new epoch with a random id.
    public static func newEpoch(start: UInt64, previous: Previous) throws -> SegmentLineage {
        SegmentLineage(epochID: try SecureRandom.bytes(idBytes), epochStart: start, previous: previous)
    }

    /// The rules a lineage obeys in a header of `sequence`; `kind` is the
    /// error kind (.invalidArgument for a writer, .corrupt for a reader).
    func check(sequence: UInt64, _ kind: TidemarkError.Kind) throws {
        guard epochStart >= 1, epochStart <= sequence else {
            throw TidemarkError(kind, "segment \(sequence): its epoch starts at sequence \(epochStart), which is not in 1...\(sequence)")
        }
        switch previous {
        case .none:
            guard epochStart == 1 else { throw TidemarkError(kind, "segment \(sequence): an epoch starting at \(epochStart) names no previous epoch") }
        case .known(let id, let start):
            guard id.count == Self.idBytes, start >= 1, start < epochStart else {
                throw TidemarkError(kind, "segment \(sequence): the previous epoch starts at \(start), not before this epoch's start \(epochStart)")
            }
        case .unknown:
            guard epochStart > 1 else { throw TidemarkError(kind, "segment \(sequence): an epoch starting at 1 has an unknown previous epoch") }
        }
    }

    func encode(into w: inout ByteWriter) {
        w.raw(epochID)
        w.u64(epochStart)
        switch previous {
        case .none:
            w.u8(0); w.zeros(7); w.zeros(Self.idBytes); w.u64(0)
        case .known(let id, let start):
            w.u8(1); w.zeros(7); w.raw(id); w.u64(start)
        case .unknown:
            w.u8(2); w.zeros(7); w.zeros(Self.idBytes); w.u64(0)
        }
    }

    static func decode(_ r: inout ByteReader, sequence: UInt64) throws -> SegmentLineage {
        let id = try r.bytes(idBytes, "epoch id")
        let start = try r.u64("epoch start")
        let kind = try r.u8("previous epoch kind")
        let reserved = try r.bytes(7, "lineage reserved bytes")
        let previousID = try r.bytes(idBytes, "previous epoch id")
        let previousStart = try r.u64("previous epoch start")
        guard reserved.allSatisfy({ $0 == 0 }) else { throw TidemarkError(.corrupt, "segment header: lineage reserved bytes are not zero") }
        let previous: Previous
        switch kind {
        case 0, 2:
            guard previousID.allSatisfy({ $0 == 0 }), previousStart == 0 else {
                throw TidemarkError(.corrupt, "segment header: a lineage without a known previous epoch carries one")
            }
            previous = kind == 0 ? .none : .unknown
        case 1: previous = .known(id: previousID, start: previousStart)
        default: throw TidemarkError(.corrupt, "segment header: unknown previous-epoch kind \(kind)")
        }
        let l = SegmentLineage(epochID: id, epochStart: start, previous: previous)
        try l.check(sequence: sequence, .corrupt)
        return l
    }
}
