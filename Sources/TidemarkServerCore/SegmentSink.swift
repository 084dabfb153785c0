import TidemarkTarget
import TidemarkWire

/// Memory a sink offers for a segment before its bytes are read from the
/// network (the process server's: the target object's aligned buffer), so
/// that the payload is written from where it arrived, never copied.
public protocol SegmentBuffer: AnyObject, Sendable {
    /// Room for exactly the whole segment, to be filled by the shell
    /// (valid while the buffer lives).
    var bytesToFill: UnsafeMutableRawBufferPointer { get }
}

/// What a sink tells its `ReplicationReceiver` on its own initiative.
public enum SinkReport: Equatable, Sendable {
    /// Every segment of the disk up to this sequence is durable.
    case durable(diskID: String, sequence: UInt64)
    /// Every segment of the disk up to this sequence is stored for good.
    case committed(diskID: String, sequence: UInt64)
    /// The sink will keep none of the segments of the disk from this
    /// sequence on that it was handed so far.
    case lost(diskID: String, fromSequence: UInt64)

    public var event: ReplicationReceiver.Event {
        switch self {
        case .durable(let d, let s): .durable(diskID: d, sequence: s)
        case .committed(let d, let s): .committed(diskID: d, sequence: s)
        case .lost(let d, let s): .lost(diskID: d, fromSequence: s)
        }
    }
}

/// Where the segments a `ReplicationReceiver` accepts go, and what it
/// knows of the disks they belong to (docs/server-ingest.md). The process
/// server's sink is the durable spool, its uploader and target storage
/// (`SpoolTargetSink`): "durable" after the spool's fdatasync, "committed"
/// once target storage has the segment. Another sink (applying segments to
/// a disk during a failback) keeps the same contract with its own meaning of
/// the two.
///
/// The shell calls these methods for the receiver's effects, from any
/// thread, outside its own lock; they may block. The sink reports through
/// `onReport`, from its own threads, in this contract:
///
/// - `durable` and `committed` are cumulative per disk and never report a
///   segment beyond what `append` was handed; committed ≤ durable.
/// - `settle(diskID:)` returns only once every segment of the disk handed to
///   `append` before the call has been reported durable or lost (the
///   receiver then tells the agent its durable sequence: it must be
///   everything the sink will keep).
/// - Once the sink reports a loss from sequence s, it reports neither
///   durability nor commitment of any segment of that disk from s on that
///   it was handed before it completes `forget(diskID:fromSequence:)`, and
///   keeps none of them; the receiver asks for `forget` once no segment of
///   the disk is being appended.
/// - A batch holding a `lost` report is delivered without holding any lock
///   the sink's own methods take: the shell may call `forget` from within.
public protocol SegmentSink: AnyObject, Sendable {
    /// What the sink stores of a disk: its record, the sequences committed
    /// and held; `.refused` for a disk it will not take (quarantined).
    func lookUpDisk(_ diskID: String) throws -> ReplicationReceiver.DiskLookup
    /// Stores a new disk's record (the first one for an id wins; another
    /// record for the same id throws).
    func createDisk(_ record: DiskRecord) throws
    /// Memory to read a segment of `segmentBytes` into; nil when the shell
    /// should use its own.
    func buffer(for header: SegmentHeader, segmentBytes: Int) -> (any SegmentBuffer)?
    /// Takes one checked segment (`bytes`, which are `buffer`'s when it
    /// came from `buffer(for:segmentBytes:)`). May block while the sink is
    /// full; gives up without keeping anything once `abandon()` is true.
    func append(_ header: SegmentHeader, bytes: UnsafeRawBufferPointer, buffer: (any SegmentBuffer)?, abandon: () -> Bool) throws
    /// See the contract above; also readies what digest requests of the
    /// disk will need.
    func settle(diskID: String) throws
    /// The states of chunks [firstChunk, firstChunk + count) and the
    /// sequence they reflect (at least the committed sequence).
    func chunkStates(diskID: String, firstChunk: UInt64, count: Int) throws -> (sequence: UInt64, states: [ChunkState])
    /// Drops every segment of the disk from `fromSequence` on that it was
    /// handed so far (after a reported loss).
    func forget(diskID: String, fromSequence: UInt64)
    /// Where reports go, in order; set once, before the first append.
    var onReport: @Sendable ([SinkReport]) -> Void { get set }
}
