import TidemarkSystem
import TidemarkWire

/// A run of consecutive chunks, `first ..< first + count`.
public struct ChunkRun: Equatable, Hashable, Sendable {
    public var first: UInt64
    public var count: UInt64
    public init(first: UInt64, count: UInt64) {
        self.first = first
        self.count = count
    }
}

/// A segment the sender numbered: the chunks the reader must read for it
/// (none for a point tag) and the numbering epoch it is sealed in.
public struct NumberedSegment: Equatable, Sendable {
    public var sequence: UInt64
    public var runs: [ChunkRun]
    /// The sender's restart count when it was numbered (`ReplicationSender.epoch`):
    /// a segment sealed after a renumbering is stale and goes back.
    public var epoch: UInt64
    /// The lineage its header carries (docs/wire-format.md 4.7).
    public var lineage: SegmentLineage
}

/// How the in-flight window is bounded.
public struct SendWindowLimits: Equatable, Sendable {
    /// Sealed bytes not yet acknowledged durable (`replication.inflight_bytes`):
    /// no new batch is taken while the window holds this much.
    public var bytesMax: UInt64
    /// Data segments numbered and not yet acknowledged durable
    /// (`ReplicationLimits.inflightSegmentsMax`): bounds the chunks in flight
    /// when segments seal small (compressible or zero data), which the byte
    /// bound alone does not.
    public var segmentsMax: UInt64
    /// Chunks in one segment (`replication.segment_size` / chunk size, at least 1).
    public var chunksPerSegment: UInt64
    /// Runs of chunks in one segment (half the wire's extents: every run may
    /// split into a data and a zero extent).
    public var runsPerSegmentMax: Int

    public init(bytesMax: UInt64, segmentsMax: UInt64, chunksPerSegment: UInt64, runsPerSegmentMax: Int) {
        precondition(segmentsMax >= 1 && chunksPerSegment >= 1 && runsPerSegmentMax >= 1,
                     "SendWindowLimits: every bound must admit at least one segment, chunk and run")
        self.bytesMax = bytesMax
        self.segmentsMax = segmentsMax
        self.chunksPerSegment = chunksPerSegment
        self.runsPerSegmentMax = runsPerSegmentMax
    }
}

/// The rules of one disk's replication on the agent, with no threads, no
/// I/O and no clock (times come in as parameters): which chunks are still to
/// read, how segments are numbered, the in-flight window, what the
/// server's acknowledgements free, what a reconnect re-sends or renumbers,
/// and which tracking bits may be cleared when. `DiskReplicator` keeps one
/// under its lock and calls it from its threads (drain and clearing on the
/// main thread, numbering and sealing on the reader, sending and
/// acknowledgements on the sender); the simulation (docs/simulation.md)
/// drives one from a seed.
///
/// The life of a chunk: drained (`drained`) → in `toRead` → numbered into a
/// segment (`planBatch`; `chunkSequence` names its newest segment) → sealed
/// into the window (`sealed`) → sent → acknowledged durable (the segment moves
/// to `uncommitted`) → acknowledged committed → its bit is cleared
/// (`takeClearable`) unless it was drained again or numbered into a newer
/// segment since.
///
/// Invariant (`invariantViolation`, asserted after every change in debug
/// builds): sequences are numbered 1, 2, … without gaps within an epoch;
/// every acknowledged sequence was numbered (`durableSequence`,
/// `committedSequence` < `nextSequence`; a larger acknowledgement is
/// refused); the window and `uncommitted` are in increasing sequence order,
/// `uncommitted` entirely below the window and at or below the durable
/// sequence; `windowBytes` is the window's size; at most `restartsKept`
/// restarts are remembered.
///
/// Memory: `toRead` is one bit per chunk; `chunkSequence` one entry per chunk
/// of a segment not yet committed; the window at most `limits.bytesMax` of
/// sealed bytes plus what the reader already took (`DiskReplicator`); one
/// entry per durable, uncommitted segment; at most `restartsKept` restarts;
/// the committed-through checkpoints are bounded by
/// `ReplicationLimits.rpoCheckpointsMax`.
public struct ReplicationSender {
    /// A sealed segment in the window (not yet acknowledged durable).
    public struct Sealed {
        public var sequence: UInt64
        public var bytes: [UInt8]
        public var runs: [ChunkRun]
        /// Sent on the current connection (every one is sent again on the next).
        public var sent = false
    }

    /// A durable segment whose chunks' bits are not cleared yet.
    public struct Durable: Equatable {
        public var sequence: UInt64
        public var runs: [ChunkRun]
    }

    /// A restart of numbering: the epoch it began, and the highest of this
    /// run's sequences the server still held then. Segments above it, point
    /// tags included, were thrown away.
    public struct Restart: Equatable, Sendable {
        public var epoch: UInt64
        public var durable: UInt64
    }

    /// What a reconnect decided (`resume`).
    public struct Resumption: Equatable, Sendable {
        /// Numbering restarted after the server's durable sequence: every
        /// chunk not committed is read again, and a new epoch began.
        public var renumbered: Bool
        /// The server holds fewer segments than it acknowledged as durable
        /// before: the durable sequence acknowledged then (for the log).
        public var acknowledgedBefore: UInt64?
    }

    public static let restartsKept = 64

    public let chunkCount: UInt64
    public var limits: SendWindowLimits

    /// Chunks drained and not yet numbered into a segment.
    private(set) var toRead: ChunkSet
    /// The sequence the next segment gets.
    public private(set) var nextSequence: UInt64 = 1
    /// Sealed segments not yet durable, in sequence order.
    public private(set) var window: [Sealed] = []
    public private(set) var windowBytes: UInt64 = 0
    /// Durable segments whose bits are not cleared yet, in sequence order
    /// (those at or below `committedSequence` are cleared by the next `takeClearable`).
    public private(set) var uncommitted: [Durable] = []
    /// The newest numbered segment of each chunk of a segment not yet cleared.
    public private(set) var chunkSequence: [UInt64: UInt64] = [:]
    public private(set) var durableSequence: UInt64 = 0
    public private(set) var committedSequence: UInt64 = 0
    /// `completeResume` found the target lost; the caller has not marked
    /// the whole disk yet (`wholeDiskMarked`): no point may be tagged.
    public private(set) var wholeDiskPending = false
    /// Bumps at every restart of numbering; segments carry the one they were numbered in.
    public private(set) var epoch: UInt64 = 0
    /// The numbering epoch segments are sealed in (`SegmentLineage`): made
    /// when the run starts (from sequence 1, good while the server holds
    /// nothing) and again at every renumbering; recorded in the disk's
    /// `EpochHistory` (`lineageRecorded`) before anything sealed in it is sent.
    public private(set) var lineage: SegmentLineage
    public private(set) var lineageRecorded = false
    /// The newest restarts of numbering, oldest first.
    public private(set) var restarts: [Restart] = []
    /// The RPO: the newest drain time whose chunks are all committed.
    private(set) var committedThrough = CommittedThroughTracker()

    /// `initialEpochID`: the id of the run's first epoch, which starts at 1.
    public init(chunkCount: UInt64, limits: SendWindowLimits, initialEpochID: [UInt8]) {
        self.chunkCount = chunkCount
        self.limits = limits
        toRead = ChunkSet(chunks: chunkCount)
        lineage = SegmentLineage(epochID: initialEpochID, epochStart: 1, previous: .none)
    }

    // MARK: To read

    public var toReadCount: UInt64 { toRead.count }
    public var toReadIsEmpty: Bool { toRead.isEmpty }
    public func toReadContains(_ chunk: UInt64) -> Bool { toRead.contains(chunk) }

    /// Chunks to read (a drained word of the tracking bitmap, or what a scan found different).
    public mutating func markToRead(word: UInt64, bits: UInt64) { toRead.insert(word: word, bits: bits) }
    public mutating func markToRead(first: UInt64, count: UInt64) { toRead.insert(first: first, count: count) }

    /// A drain that started at `atUnixMs` found these words (index, bits) and
    /// they are durable in the `.hrl`: they join the chunks to read, and the
    /// committed-through time may advance (CommittedThrough.swift).
    public mutating func drained(_ words: [(UInt64, UInt64)], atUnixMs: Int64) {
        for (w, b) in words { toRead.insert(word: w, bits: b) }
        committedThrough.drained(atUnixMs: atUnixMs, toReadEmpty: toRead.isEmpty,
                                 lastSequence: nextSequence - 1, committed: committedSequence)
        assertInvariant()
    }

    // MARK: Numbering (the reader)

    /// Segments numbered in this epoch and not yet acknowledged durable
    /// (point tags included: they are numbered outside the bound, one per point).
    public var segmentsInFlight: UInt64 { nextSequence - 1 - durableSequence }

    /// The window admits another batch: below both of its bounds.
    public var windowHasRoom: Bool {
        windowBytes < limits.bytesMax && segmentsInFlight < limits.segmentsMax
    }

    /// Every numbered segment is sealed (in the window, durable, or cleared):
    /// the reader holds no batch.
    public var everyNumberedSegmentSealed: Bool { unsealedSegments == 0 }

    /// Segments numbered and not yet sealed: the reader is reading or
    /// sealing them (each in a payload buffer of up to a segment's bytes).
    public var unsealedSegments: UInt64 {
        let sealedThrough = max(window.last?.sequence ?? 0, uncommitted.last?.sequence ?? 0, durableSequence)
        return nextSequence > sealedThrough + 1 ? nextSequence - 1 - sealedThrough : 0
    }

    /// Takes up to `segmentsMax` segments' worth of chunks from `toRead`
    /// (at most `limits.chunksPerSegment` chunks and `limits.runsPerSegmentMax`
    /// runs each, and no more segments than the window's count bound
    /// leaves) and numbers them. Call only while `windowHasRoom`. Once
    /// `toRead` is empty, every chunk drained so far is in a segment numbered
    /// ≤ the last one: a committed-through checkpoint.
    public mutating func planBatch(segmentsMax: Int) -> [NumberedSegment] {
        precondition(windowHasRoom, "ReplicationSender.planBatch: the window is full")
        let room = Int(min(UInt64(segmentsMax), limits.segmentsMax - segmentsInFlight))
        var batch: [NumberedSegment] = []
        while batch.count < room && !toRead.isEmpty {
            var runs: [ChunkRun] = []
            var taken: UInt64 = 0
            while taken < limits.chunksPerSegment && runs.count < limits.runsPerSegmentMax,
                  let r = toRead.takeRun(maxChunks: limits.chunksPerSegment - taken) {
                runs.append(ChunkRun(first: r.first, count: r.count))
                taken += r.count
            }
            // `takeRun` wraps around the disk's end: a segment filled across
            // the wrap would list a run before the one it follows, and a
            // segment's extents must be in increasing offset order (the
            // sealer refuses others). Runs never overlap, so sorted they are
            // valid extents. (Found by the seeded simulation.)
            runs.sort { $0.first < $1.first }
            let seq = nextSequence
            nextSequence += 1
            for run in runs { for c in run.first..<(run.first + run.count) { chunkSequence[c] = seq } }
            batch.append(NumberedSegment(sequence: seq, runs: runs, epoch: epoch, lineage: lineage))
        }
        if toRead.isEmpty { committedThrough.checkpoint(lastSequence: nextSequence - 1, committed: committedSequence) }
        assertInvariant()
        return batch
    }

    /// Numbers a point tag: a segment without chunks, after every segment
    /// holding what was drained before it. Call only when `mayTagPoint`
    /// (not bound by the window: the filesystems are frozen meanwhile).
    public mutating func numberPointTag() -> NumberedSegment {
        precondition(toRead.isEmpty, "ReplicationSender.numberPointTag: chunks drained before the tag are not numbered yet")
        precondition(!wholeDiskPending, "ReplicationSender.numberPointTag: the target was lost and the whole disk is not marked yet")
        let seq = nextSequence
        nextSequence += 1
        assertInvariant()
        return NumberedSegment(sequence: seq, runs: [], epoch: epoch, lineage: lineage)
    }

    /// A numbered segment is sealed: it joins the window (true), or, numbered
    /// before the server made this sender renumber, its chunks go back to
    /// `toRead` (false). Segments arrive in sequence order.
    @discardableResult
    public mutating func sealed(_ s: NumberedSegment, bytes: [UInt8]) -> Bool {
        guard s.epoch == epoch else {
            for run in s.runs { toRead.insert(first: run.first, count: run.count) }
            assertInvariant()
            return false
        }
        precondition(s.sequence < nextSequence && s.sequence > (window.last?.sequence ?? 0),
                     "ReplicationSender.sealed: #\(s.sequence) arrives out of order")
        window.append(Sealed(sequence: s.sequence, bytes: bytes, runs: s.runs))
        windowBytes += UInt64(bytes.count)
        assertInvariant()
        return true
    }

    // MARK: Sending

    /// The first sealed segment not yet sent on this connection. Nothing
    /// sealed in an epoch goes out before the epoch history records it, and
    /// nothing goes to a target found lost before the whole disk is marked
    /// (`wholeDiskMarked`): a segment committed there first would make the
    /// target look replicated to a restarted agent, which would then never
    /// send the rest of the disk.
    public func nextToSend() -> Sealed? {
        precondition(lineageRecorded, "ReplicationSender.nextToSend: the epoch is not recorded in the epoch history yet")
        guard !wholeDiskPending else { return nil }
        return window.first { !$0.sent }
    }

    public mutating func markSent(_ sequence: UInt64) {
        if let i = window.firstIndex(where: { $0.sequence == sequence }) { window[i].sent = true }
    }

    /// The connection ended: whatever is not durable is sent again on the next.
    public mutating func connectionEnded() {
        for i in window.indices { window[i].sent = false }
    }

    // MARK: Acknowledgements

    /// An acknowledgement is a value from the network: one beyond the
    /// highest sequence this agent numbered would drop segments from the
    /// window, or clear tracking bits, of data the server never received.
    static func checkAck(_ seq: UInt64, numberedThrough: UInt64, what: String) throws {
        guard seq <= numberedThrough else {
            throw TidemarkError(.corrupt, "the server acknowledged #\(seq) \(what), beyond #\(numberedThrough), the highest this agent has numbered; the connection is dropped and nothing is cleared",
                                hint: "a process server bug or a server speaking for another disk; check its log")
        }
    }

    /// `ackDurable(seq)`: the server holds every segment ≤ `seq` in its
    /// spool; they leave the window (the bits can rebuild them). Throws,
    /// changing nothing, when `seq` was never numbered.
    public mutating func ackDurable(_ seq: UInt64) throws {
        try Self.checkAck(seq, numberedThrough: nextSequence - 1, what: "durable")
        applyDurable(seq)
        assertInvariant()
    }

    /// `ackCommitted(seq)`: every segment ≤ `seq` is in target storage; their
    /// chunks' bits may be cleared. Throws, changing nothing, when `seq` was
    /// never numbered.
    public mutating func ackCommitted(_ seq: UInt64) throws {
        try Self.checkAck(seq, numberedThrough: nextSequence - 1, what: "committed")
        committedSequence = max(committedSequence, seq)
        committedThrough.advance(committed: committedSequence)
        assertInvariant()
    }

    private mutating func applyDurable(_ seq: UInt64) {
        durableSequence = max(durableSequence, seq)
        while let first = window.first, first.sequence <= durableSequence {
            window.removeFirst()
            windowBytes -= UInt64(first.bytes.count)
            uncommitted.append(Durable(sequence: first.sequence, runs: first.runs))
        }
    }

    // MARK: Reconnecting

    /// After (re)connecting, the server's `diskState` (durable, committed):
    /// when the server lost segments it had acknowledged (another server,
    /// a lost spool), or is further than this sender (a restarted agent), or
    /// this is the run's first connection to a server holding segments of
    /// the disk (whatever the reader sealed before was numbered from 1),
    /// numbering continues after the server's durable sequence in a new
    /// epoch (`freshEpochID`) and every chunk not committed is read again.
    /// Then, if `lineageRecorded` is false, the caller records `lineage` in
    /// the epoch history (`adoptLineage`, then `lineageStored` once it is
    /// durable), and calls `completeResume`.
    /// Throws, changing nothing, when the answer is impossible: more
    /// committed than durable.
    public mutating func resume(durable: UInt64, committed: UInt64, freshEpochID: () -> [UInt8]) throws -> Resumption {
        guard committed <= durable else {
            throw TidemarkError(.corrupt, "the server reports #\(committed) committed but only #\(durable) durable; the connection is dropped and nothing is cleared",
                                hint: "a process server bug or a server speaking for another disk; check its log")
        }
        // Only what this server has committed counts from now on (an
        // honest server never reports less than it acknowledged before): a
        // committed sequence acknowledged by a server that held more,
        // perhaps on another target, would let segments numbered anew clear
        // their bits, and report their point tags committed, while merely
        // durable here.
        if committed < committedSequence { committedThrough.lostCommits() }
        committedSequence = committed
        // The first connection of a run to a server that holds segments
        // of this disk always renumbers after them: whatever the reader
        // sealed before it was numbered from 1.
        let firstWithHistory = !lineageRecorded && epoch == 0 && durable > 0
        var result = Resumption(renumbered: false, acknowledgedBefore: nil)
        if durable < durableSequence || durable >= nextSequence || firstWithHistory {
            // Either the server lost segments it had acknowledged (another
            // server, a lost spool), or it is further than this sender (a
            // restarted agent): numbering continues after the server's, and
            // everything not committed is read again.
            if durable < durableSequence { result.acknowledgedBefore = durableSequence }
            result.renumbered = true
            for u in uncommitted { for run in u.runs { toRead.insert(first: run.first, count: run.count) } }
            for w in window { for run in w.runs { toRead.insert(first: run.first, count: run.count) } }
            uncommitted.removeAll()
            chunkSequence.removeAll()
            window.removeAll()
            windowBytes = 0
            // This run's segments the server still holds: those it had
            // acknowledged, up to what it has now (none, when it is ahead).
            let kept = min(durable, durableSequence)
            nextSequence = durable + 1
            durableSequence = durable
            epoch += 1
            lineageRecorded = false
            lineage = SegmentLineage(epochID: freshEpochID(), epochStart: nextSequence, previous: .unknown)
            restarts.append(Restart(epoch: epoch, durable: kept))
            if restarts.count > Self.restartsKept { restarts.removeFirst(restarts.count - Self.restartsKept) }
            committedThrough.renumbered(committed: committedSequence)
        }
        assertInvariant()
        return result
    }

    /// The epoch history names the epoch before this one: `recorded` (the
    /// current epoch's id and start, its previous epoch filled in) is the
    /// lineage every segment of the epoch carries from now on.
    public mutating func adoptLineage(_ recorded: SegmentLineage) {
        precondition(recorded.epochID == lineage.epochID && recorded.epochStart == lineage.epochStart,
                     "ReplicationSender.adoptLineage: the history recorded another epoch than the current one")
        lineage = recorded
        assertInvariant()
    }

    /// The epoch history holding `lineage` is durable: segments sealed in
    /// the epoch may be sent.
    public mutating func lineageStored() {
        lineageRecorded = true
    }

    /// Ends a resume: what the server holds durably leaves the window.
    /// Returns true when the target holds nothing of a disk the `.hrl` says
    /// was replicated (`replicatedBefore`): the target was lost, and the
    /// whole disk must be compared again.
    public mutating func completeResume(durable: UInt64, committed: UInt64, replicatedBefore: Bool) -> Bool {
        committedThrough.advance(committed: committedSequence)
        applyDurable(durable)
        let lost = durable == 0 && committed == 0 && replicatedBefore
        if lost { wholeDiskPending = true }
        assertInvariant()
        return lost
    }

    /// The caller has marked the whole disk (to read, or to compare with
    /// the target) after `completeResume` said the target was lost: points
    /// may be tagged again once that is read.
    public mutating func wholeDiskMarked() {
        wholeDiskPending = false
    }

    /// A point tag may be numbered now: everything drained is numbered, and
    /// no lost target waits for the whole disk to be marked. (A tag numbered
    /// in between would name, on the new target, an image holding only what
    /// was drained since: found by the seeded simulation.)
    public var mayTagPoint: Bool { toRead.isEmpty && !wholeDiskPending }

    // MARK: Clearing tracking bits

    /// The chunks whose `.hrl` bits may be cleared now, in increasing order:
    /// those of committed segments not drained again (not in `toRead`) and not
    /// numbered into a newer segment since. The segments leave `uncommitted`;
    /// the caller clears the bits (if it fails, the bits stay set: only a
    /// needless re-send).
    public mutating func takeClearable() -> [UInt64] {
        var chunks: [UInt64] = []
        var done = 0
        while done < uncommitted.count, uncommitted[done].sequence <= committedSequence {
            let d = uncommitted[done]
            for run in d.runs {
                for c in run.first..<(run.first + run.count) where chunkSequence[c] == d.sequence {
                    chunkSequence[c] = nil
                    if !toRead.contains(c) { chunks.append(c) }
                }
            }
            done += 1
        }
        if done > 0 { uncommitted.removeFirst(done) }
        chunks.sort()
        assertInvariant()
        return chunks
    }

    /// Of chunks a resync found equal on the target, those whose bits may be
    /// cleared: not drained again since (not in `toRead`, in no segment not yet cleared).
    public func clearableMatched(_ matched: [UInt64]) -> [UInt64] {
        matched.filter { !toRead.contains($0) && chunkSequence[$0] == nil }
    }

    // MARK: Points and status

    /// A point tag numbered `sequence` in `epoch` was thrown away: numbering
    /// restarted below it before the server held it (or so many restarts
    /// followed that the record of them is gone).
    public func pointLost(sequence: UInt64, epoch tagEpoch: UInt64) -> Bool {
        restarts.contains { $0.epoch > tagEpoch && $0.durable < sequence }
            || (restarts.count >= Self.restartsKept && restarts[0].epoch > tagEpoch + 1)
    }

    /// Chunks of durable segments not yet committed (backlog).
    public var uncommittedChunks: UInt64 {
        var n: UInt64 = 0
        // Segments at or below the committed sequence stay until the next
        // `takeClearable`: their chunks are committed already.
        for u in uncommitted where u.sequence > committedSequence { for run in u.runs { n += run.count } }
        return n
    }

    /// The newest drain time whose chunks are all committed (nil before the first).
    public var committedThroughUnixMs: Int64? { committedThrough.committedThroughUnixMs }

    // MARK: Invariant

    /// What is wrong with the state, nil when the invariant holds. `deep`
    /// also checks every chunk's newest segment (proportional to the chunks
    /// in flight: the tests and the simulation).
    public func invariantViolation(deep: Bool = false) -> String? {
        guard nextSequence >= 1, durableSequence < nextSequence, committedSequence < nextSequence else {
            return "durable #\(durableSequence) or committed #\(committedSequence) is not below the next sequence #\(nextSequence)"
        }
        guard lineage.epochStart >= 1, lineage.epochStart <= nextSequence else {
            return "the epoch starts at #\(lineage.epochStart), after the next sequence #\(nextSequence)"
        }
        var previous: UInt64 = 0
        for u in uncommitted {
            guard u.sequence > previous, u.sequence <= durableSequence else {
                return "uncommitted #\(u.sequence) is out of order or above durable #\(durableSequence)"
            }
            previous = u.sequence
        }
        var bytes: UInt64 = 0
        for w in window {
            guard w.sequence > previous, w.sequence < nextSequence else {
                return "window #\(w.sequence) is out of order, below an uncommitted segment or not numbered"
            }
            previous = w.sequence
            bytes += UInt64(w.bytes.count)
        }
        guard bytes == windowBytes else { return "the window holds \(bytes) bytes, windowBytes says \(windowBytes)" }
        guard restarts.count <= Self.restartsKept else { return "\(restarts.count) restarts kept" }
        for (a, b) in zip(restarts, restarts.dropFirst()) where a.epoch >= b.epoch {
            return "restarts out of order: epoch \(a.epoch) before \(b.epoch)"
        }
        if let last = restarts.last, last.epoch != epoch { return "the last restart began epoch \(last.epoch), the sender is in \(epoch)" }
        if deep {
            for (c, s) in chunkSequence where c >= chunkCount || s >= nextSequence {
                return "chunk \(c) names segment #\(s) (chunks \(chunkCount), next #\(nextSequence))"
            }
            // A segment not yet cleared is its chunks' newest or older than
            // it: were a chunk's entry missing or older, `takeClearable` would
            // clear its bit with an older segment's commit.
            let live = uncommitted.map { ($0.sequence, $0.runs) } + window.map { ($0.sequence, $0.runs) }
            for (s, runs) in live {
                for run in runs {
                    for c in run.first..<(run.first + run.count) where (chunkSequence[c] ?? 0) < s {
                        return "chunk \(c) of #\(s) names segment #\(chunkSequence[c] ?? 0), not it or a newer one"
                    }
                }
            }
        }
        return nil
    }

    private func assertInvariant() {
        assert(invariantViolation() == nil, "ReplicationSender: \(invariantViolation() ?? "")")
    }
}
