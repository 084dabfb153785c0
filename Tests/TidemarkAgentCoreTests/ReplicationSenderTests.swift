import Testing
import TidemarkConfigFiles
import TidemarkSystem
import TidemarkTesting
import TidemarkWire
@testable import TidemarkAgentCore

/// The agent's replication rules (`ReplicationSender`), one rule at a time,
/// including answers a process server should never give.
@Suite struct ReplicationSenderTests {
    static let firstID = [UInt8](repeating: 1, count: SegmentLineage.idBytes)

    static func sender(chunks: UInt64 = 256, bytesMax: UInt64 = 10_000, segmentsMax: UInt64 = 1_000,
                       chunksPerSegment: UInt64 = 4, runsMax: Int = 8) -> ReplicationSender {
        ReplicationSender(chunkCount: chunks,
                          limits: SendWindowLimits(bytesMax: bytesMax, segmentsMax: segmentsMax,
                                                   chunksPerSegment: chunksPerSegment, runsPerSegmentMax: runsMax),
                          initialEpochID: firstID)
    }

    /// Epoch ids handed out by renumberings: 2, 3, … in their first byte.
    final class IDs {
        var next: UInt8 = 2
        func fresh() -> [UInt8] {
            defer { next += 1 }
            return [next] + [UInt8](repeating: 0, count: SegmentLineage.idBytes - 1)
        }
    }

    /// What `DiskReplicator.resume` does, with the epoch history in memory.
    @discardableResult
    static func connect(_ s: inout ReplicationSender, durable: UInt64, committed: UInt64, history: inout EpochHistory,
                        ids: IDs, replicatedBefore: Bool = false) throws -> (ReplicationSender.Resumption, targetLost: Bool) {
        let r = try s.resume(durable: durable, committed: committed, freshEpochID: ids.fresh)
        if !s.lineageRecorded {
            s.adoptLineage(history.begin(s.lineage.epochID, start: s.lineage.epochStart))
            s.lineageStored()
        }
        let lost = s.completeResume(durable: durable, committed: committed, replicatedBefore: replicatedBefore)
        #expect(s.invariantViolation(deep: true) == nil)
        return (r, lost)
    }

    static func chunks(_ runs: [ChunkRun]) -> [UInt64] { runs.flatMap { Array($0.first..<($0.first + $0.count)) } }

    /// Numbers and seals everything to read, `bytesEach` bytes per segment.
    @discardableResult
    static func sealAll(_ s: inout ReplicationSender, bytesEach: Int = 10) -> [NumberedSegment] {
        var all: [NumberedSegment] = []
        while !s.toReadIsEmpty && s.windowHasRoom {
            for n in s.planBatch(segmentsMax: 2) {
                let joined = s.sealed(n, bytes: [UInt8](repeating: 0, count: bytesEach))
                #expect(joined)
                all.append(n)
            }
        }
        #expect(s.invariantViolation(deep: true) == nil)
        return all
    }

    // MARK: Numbering

    @Test func segmentsAreNumberedInOrderWithoutGapsAndBounded() {
        var s = Self.sender(chunksPerSegment: 4)
        s.drained([(0, 0b1111_1111_1111), (1, 1)], atUnixMs: 1_000)   // chunks 0...11 and 64
        #expect(s.toReadCount == 13)
        let batch = s.planBatch(segmentsMax: 10)
        #expect(batch.map(\.sequence) == [1, 2, 3, 4])
        #expect(batch.map { Self.chunks($0.runs) } == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [64]])
        #expect(batch.allSatisfy { $0.epoch == 0 && $0.lineage.epochStart == 1 && $0.lineage.previous == .none })
        #expect(s.nextSequence == 5 && s.toReadIsEmpty)
        #expect(s.chunkSequence[5] == 2 && s.chunkSequence[64] == 4 && s.chunkSequence[12] == nil)
        #expect(s.invariantViolation(deep: true) == nil)
    }

    @Test func aSegmentHoldsAtMostRunsPerSegmentMaxRuns() {
        var s = Self.sender(chunksPerSegment: 16, runsMax: 2)
        s.drained([(0, 0x5555_5555_5555_5555)], atUnixMs: 1)   // every other chunk: runs of one
        let batch = s.planBatch(segmentsMax: 100)
        #expect(batch.count == 16)
        #expect(batch.allSatisfy { $0.runs.count == 2 && $0.runs.allSatisfy { $0.count == 1 } })
    }

    @Test func aBatchStopsAtSegmentsMax() {
        var s = Self.sender(chunksPerSegment: 1)
        s.markToRead(first: 0, count: 10)
        #expect(s.planBatch(segmentsMax: 3).map(\.sequence) == [1, 2, 3])
        #expect(s.toReadCount == 7)
    }

    /// The reader's cursor wraps around the disk's end; a segment filled
    /// across the wrap still lists its runs in increasing order (a segment's
    /// extents must be, or the sealer refuses it). Found by the seeded
    /// simulation (docs/simulation.md), seed 104.
    @Test func aSegmentFilledAcrossTheDisksEndListsItsRunsInOrder() {
        var s = Self.sender(chunks: 256, chunksPerSegment: 4)
        s.markToRead(first: 248, count: 2)
        #expect(s.planBatch(segmentsMax: 1).map { Self.chunks($0.runs) } == [[248, 249]])   // the cursor is at 250 now
        s.markToRead(first: 254, count: 2)
        s.markToRead(first: 1, count: 2)
        let batch = s.planBatch(segmentsMax: 1)
        #expect(batch.map { Self.chunks($0.runs) } == [[1, 2, 254, 255]])
        #expect(batch.allSatisfy { n in zip(n.runs, n.runs.dropFirst()).allSatisfy { $0.first + $0.count <= $1.first } })
        #expect(s.invariantViolation(deep: true) == nil)
    }

    @Test func aChunkDrainedAgainIsNumberedIntoItsNewestSegment() {
        var s = Self.sender()
        s.markToRead(first: 3, count: 1)
        _ = s.planBatch(segmentsMax: 1)
        s.markToRead(first: 3, count: 1)
        _ = s.planBatch(segmentsMax: 1)
        #expect(s.chunkSequence[3] == 2)
    }

    // MARK: The window

    @Test func theByteBoundStopsNewBatchesUntilDurable() throws {
        var s = Self.sender(bytesMax: 100, chunksPerSegment: 1)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 20)
        // 40 and 80 bytes leave room; 120 does not.
        while s.windowHasRoom {
            for n in s.planBatch(segmentsMax: 1) { s.sealed(n, bytes: [UInt8](repeating: 0, count: 40)) }
        }
        #expect(s.window.count == 3 && s.windowBytes == 120 && !s.windowHasRoom)
        try s.ackDurable(1)
        #expect(s.windowBytes == 80 && s.windowHasRoom && s.window.first?.sequence == 2)
    }

    @Test func theCountBoundCapsBatchesAndFreesWithDurable() throws {
        var s = Self.sender(segmentsMax: 3, chunksPerSegment: 1)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 20)
        let batch = s.planBatch(segmentsMax: 10)
        #expect(batch.count == 3)
        #expect(s.segmentsInFlight == 3 && !s.windowHasRoom)
        for n in batch { s.sealed(n, bytes: [1]) }
        #expect(s.window.count == 3)
        try s.ackDurable(2)
        #expect(s.segmentsInFlight == 1 && s.windowHasRoom)
        #expect(s.planBatch(segmentsMax: 10).map(\.sequence) == [4, 5])
    }

    @Test func theCountBoundIsNoTighterThanTheByteBoundForFullSegments() {
        // The largest window over the smallest segment: full incompressible
        // segments never meet the count bound first.
        #expect(ReplicationLimits.inflightSegmentsMax >= AgentConfig.inflightBytesMaxLimit / UInt64(AgentConfig.segmentSizeBytesMin))
    }

    @Test func sendingGoesInOrderAndStartsOverOnANewConnection() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 3)
        Self.sealAll(&s)
        #expect(s.nextToSend()?.sequence == 1)
        s.markSent(1)
        s.markSent(2)
        #expect(s.nextToSend()?.sequence == 3)
        s.markSent(3)
        #expect(s.nextToSend() == nil)
        s.connectionEnded()
        #expect(s.nextToSend()?.sequence == 1)
    }

    @Test func nothingIsSentBeforeTheEpochIsRecorded() async {
        await #expect(processExitsWith: .failure) {
            let s = ReplicationSenderTests.sender()
            _ = s.nextToSend()
        }
    }

    @Test func aSegmentSealedInAnEarlierEpochGoesBackToBeRead() throws {
        var s = Self.sender(chunksPerSegment: 2)
        var history = EpochHistory()
        let ids = IDs()
        s.markToRead(first: 10, count: 2)
        let stale = s.planBatch(segmentsMax: 1)[0]
        // The first connection finds segments of an earlier run: renumbering.
        let (r, _) = try Self.connect(&s, durable: 5, committed: 5, history: &history, ids: ids)
        #expect(r.renumbered && s.nextSequence == 6 && s.epoch == 1)
        let joined = s.sealed(stale, bytes: [1, 2, 3])
        #expect(!joined)
        #expect(s.window.isEmpty && s.toReadContains(10) && s.toReadContains(11))
        #expect(s.invariantViolation(deep: true) == nil)
    }

    // MARK: Acknowledgements

    @Test func durableIsCumulativeAndNeverGoesDown() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 5)
        Self.sealAll(&s)
        try s.ackDurable(3)
        #expect(s.durableSequence == 3 && s.window.map(\.sequence) == [4, 5])
        #expect(s.uncommitted.map(\.sequence) == [1, 2, 3])
        try s.ackDurable(2)
        #expect(s.durableSequence == 3 && s.window.map(\.sequence) == [4, 5])
        #expect(s.invariantViolation(deep: true) == nil)
    }

    @Test func acknowledgementsBeyondWhatWasNumberedAreRefusedAndChangeNothing() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 3)
        Self.sealAll(&s)
        for bad: UInt64 in [4, 1 << 40, UInt64.max] {
            #expect(throws: TidemarkError.self) { try s.ackDurable(bad) }
            #expect(throws: TidemarkError.self) { try s.ackCommitted(bad) }
        }
        #expect(s.durableSequence == 0 && s.committedSequence == 0 && s.window.count == 3)
        try s.ackDurable(3)
        try s.ackCommitted(3)
        #expect(s.takeClearable() == [0, 1, 2])
    }

    // MARK: Clearing bits

    @Test func onlyCommittedSegmentsClearBitsNotDurableOnes() throws {
        var s = Self.sender(chunksPerSegment: 2)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 6)
        Self.sealAll(&s)   // #1 = 0,1  #2 = 2,3  #3 = 4,5
        #expect(s.takeClearable().isEmpty)
        try s.ackDurable(3)
        #expect(s.takeClearable().isEmpty)                  // durable only
        try s.ackCommitted(1)
        #expect(s.takeClearable() == [0, 1])
        #expect(s.takeClearable().isEmpty)                  // once
        try s.ackCommitted(3)
        #expect(s.takeClearable() == [2, 3, 4, 5])
        #expect(s.chunkSequence.isEmpty && s.uncommitted.isEmpty)
    }

    @Test func committedButNotYetDurableSegmentsClearNothing() throws {
        // A server may send its committed acknowledgement first: the segment
        // leaves the window (and its chunks are cleared) only once durable.
        var s = Self.sender(chunksPerSegment: 2)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 2)
        Self.sealAll(&s)
        try s.ackCommitted(1)
        #expect(s.takeClearable().isEmpty)
        try s.ackDurable(1)
        #expect(s.takeClearable() == [0, 1])
    }

    @Test func aChunkDrainedAgainKeepsItsBit() throws {
        var s = Self.sender(chunksPerSegment: 2)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 2)
        Self.sealAll(&s)
        s.markToRead(first: 1, count: 1)                    // written again, not read yet
        try s.ackDurable(1)
        try s.ackCommitted(1)
        #expect(s.takeClearable() == [0])
        #expect(s.toReadContains(1))
    }

    @Test func aChunkInANewerSegmentKeepsItsBitUntilThatCommits() throws {
        var s = Self.sender(chunksPerSegment: 2)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 0, count: 2)
        Self.sealAll(&s)                                    // #1 = 0,1
        s.markToRead(first: 1, count: 1)
        Self.sealAll(&s)                                    // #2 = 1
        try s.ackDurable(2)
        try s.ackCommitted(1)
        #expect(s.takeClearable() == [0])
        #expect(s.chunkSequence[1] == 2)
        try s.ackCommitted(2)
        #expect(s.takeClearable() == [1])
    }

    @Test func matchedChunksAreClearedOnlyWhenNotQueuedOrInFlight() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        s.markToRead(first: 5, count: 1)
        Self.sealAll(&s)                                    // 5 in flight
        s.markToRead(first: 6, count: 1)                    // 6 queued
        #expect(s.clearableMatched([4, 5, 6, 7]) == [4, 7])
    }

    // MARK: Resume

    @Test func aFirstConnectionToAnEmptyServerKeepsNumberingFromOne() throws {
        var s = Self.sender()
        var history = EpochHistory()
        s.markToRead(first: 0, count: 4)
        Self.sealAll(&s)
        let (r, lost) = try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs())
        #expect(!r.renumbered && !lost && s.epoch == 0 && s.nextSequence == 2)
        #expect(s.lineage == SegmentLineage(epochID: Self.firstID, epochStart: 1, previous: .none))
        #expect(history.entries.count == 1 && history.entries[0].start == 1)
    }

    @Test func reconnectingToAServerThatHoldsWhatItAcknowledgedResendsOnlyTheRest() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.markToRead(first: 0, count: 5)
        Self.sealAll(&s)
        for q: UInt64 in 1...5 { s.markSent(q) }
        try s.ackDurable(2)
        s.connectionEnded()
        // The server spooled #3 too before the connection broke.
        let (r, _) = try Self.connect(&s, durable: 3, committed: 1, history: &history, ids: ids)
        #expect(!r.renumbered && s.epoch == 0 && s.nextSequence == 6)
        #expect(s.durableSequence == 3 && s.committedSequence == 1)
        #expect(s.window.map(\.sequence) == [4, 5] && s.nextToSend()?.sequence == 4)
        #expect(history.entries.count == 1)
    }

    @Test func aServerThatLostAcknowledgedSegmentsMakesTheSenderRenumber() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.markToRead(first: 0, count: 6)
        Self.sealAll(&s)
        try s.ackDurable(5)
        try s.ackCommitted(2)
        #expect(s.takeClearable() == [0, 1])
        // A new server (or a lost spool): only #3 is held.
        let (r, _) = try Self.connect(&s, durable: 3, committed: 3, history: &history, ids: ids)
        #expect(r.renumbered && r.acknowledgedBefore == 5)
        #expect(s.nextSequence == 4 && s.durableSequence == 3 && s.epoch == 1)
        #expect(s.window.isEmpty && s.uncommitted.isEmpty && s.chunkSequence.isEmpty)
        // Everything not cleared is read again, including what #3 held.
        #expect((0..<6).filter { s.toReadContains($0) } == [2, 3, 4, 5])
        #expect(s.restarts == [ReplicationSender.Restart(epoch: 1, durable: 3)])
        #expect(s.lineage.epochStart == 4 && s.lineage.epochID.first == 2)
        #expect(s.lineage.previous == .known(id: Self.firstID, start: 1))
        #expect(history.entries.map(\.start) == [1, 4])
        // The new epoch numbers from 4.
        let next = s.planBatch(segmentsMax: 1)
        #expect(next.first?.sequence == 4 && next.first?.epoch == 1)
    }

    @Test func aServerAheadOfTheSenderMakesItRenumberAfterTheServer() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.markToRead(first: 0, count: 2)
        Self.sealAll(&s)
        try s.ackDurable(1)
        let (r, _) = try Self.connect(&s, durable: 9, committed: 9, history: &history, ids: ids)
        #expect(r.renumbered && r.acknowledgedBefore == nil)
        #expect(s.nextSequence == 10 && s.durableSequence == 9)
        #expect(s.restarts == [ReplicationSender.Restart(epoch: 1, durable: 1)])
        #expect(s.toReadContains(0) && s.toReadContains(1))
    }

    @Test func aServerThatLostItsTargetCountsOnlyItsOwnCommits() throws {
        // Committed through #4 on a target that is then lost: the segments
        // numbered anew from #1 are only durable on the new one, and must
        // neither clear their bits nor count as committed.
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.drained([(0, 0b11_1111)], atUnixMs: 1_000)
        Self.sealAll(&s)
        try s.ackDurable(6)
        try s.ackCommitted(4)
        #expect(s.takeClearable() == [0, 1, 2, 3])
        #expect(s.committedThroughUnixMs == nil)
        try s.ackCommitted(6)
        #expect(s.takeClearable() == [4, 5] && s.committedThroughUnixMs == 1_000)
        s.drained([(0, 0b111)], atUnixMs: 2_000)
        let (r, lost) = try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids, replicatedBefore: true)
        #expect(r.renumbered && lost && s.nextSequence == 1 && s.committedSequence == 0)
        #expect(s.committedThroughUnixMs == nil)
        // The caller marks the whole disk before any point (this test leaves
        // the other chunks out, to follow how commits count).
        #expect(!s.mayTagPoint)
        // Nor is anything sent to the new target before then: a segment
        // committed there first would make it look replicated to a
        // restarted agent, which would never send the rest of the disk.
        Self.sealAll(&s)                                    // #1, #2, #3
        #expect(s.nextToSend() == nil)
        s.wholeDiskMarked()
        #expect(s.nextToSend()?.sequence == 1)
        let tag = s.numberPointTag()                        // #4
        try s.ackDurable(4)
        #expect(s.takeClearable().isEmpty)
        #expect(s.committedSequence < tag.sequence)
        try s.ackCommitted(4)
        #expect(s.takeClearable() == [0, 1, 2] && s.committedThroughUnixMs == 2_000)
    }

    @Test func aSpoolLostWithItsTargetKeptKeepsTheCommittedTime() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.drained([(0, 0b11)], atUnixMs: 1_000)
        Self.sealAll(&s)
        try s.ackDurable(2)
        try s.ackCommitted(2)
        s.drained([(0, 0b100)], atUnixMs: 2_000)
        Self.sealAll(&s)
        try s.ackDurable(3)
        let (r, _) = try Self.connect(&s, durable: 2, committed: 2, history: &history, ids: ids)
        #expect(r.renumbered && s.committedSequence == 2 && s.committedThroughUnixMs == 1_000)
    }

    @Test func aDiskStateWithMoreCommittedThanDurableIsRefused() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.markToRead(first: 0, count: 3)
        Self.sealAll(&s)
        try s.ackDurable(1)
        for (d, c): (UInt64, UInt64) in [(1, 2), (0, 1), (5, UInt64.max)] {
            #expect(throws: TidemarkError.self) { try s.resume(durable: d, committed: c, freshEpochID: ids.fresh) }
        }
        #expect(s.epoch == 0 && s.nextSequence == 4 && s.durableSequence == 1 && s.committedSequence == 0)
        #expect(s.window.map(\.sequence) == [2, 3] && s.restarts.isEmpty)
    }

    @Test func aRunsFirstConnectionToAServerWithHistoryRenumbers() throws {
        // The reader sealed 1...6 before any connection; the server holds 4
        // segments of an earlier run: those numbers are taken.
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory(entries: [(start: 1, id: [UInt8](repeating: 9, count: 16))])
        s.markToRead(first: 0, count: 6)
        Self.sealAll(&s)
        let (r, _) = try Self.connect(&s, durable: 4, committed: 4, history: &history, ids: IDs())
        #expect(r.renumbered && s.nextSequence == 5 && s.window.isEmpty && s.toReadCount == 6)
        #expect(s.lineage.previous == .known(id: [UInt8](repeating: 9, count: 16), start: 1))
        #expect(s.restarts == [ReplicationSender.Restart(epoch: 1, durable: 0)])
    }

    @Test func aLostEpochHistoryLeavesThePreviousEpochUnknown() throws {
        var s = Self.sender()
        var history = EpochHistory()
        let (r, _) = try Self.connect(&s, durable: 7, committed: 7, history: &history, ids: IDs())
        #expect(r.renumbered && s.lineage.previous == .unknown && s.lineage.epochStart == 8)
    }

    @Test func aTargetHoldingNothingOfAReplicatedDiskIsLost() throws {
        var history = EpochHistory()
        var s = Self.sender()
        let lostS = try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs(), replicatedBefore: true).targetLost
        var t = Self.sender()
        let lostT = try Self.connect(&t, durable: 0, committed: 0, history: &history, ids: IDs(), replicatedBefore: false).targetLost
        var u = Self.sender()
        let lostU = try Self.connect(&u, durable: 3, committed: 0, history: &history, ids: IDs(), replicatedBefore: true).targetLost
        #expect(lostS && !lostT && !lostU)
        #expect(s.wholeDiskPending && !t.wholeDiskPending && !u.wholeDiskPending)
    }

    /// After a lost target, no point is tagged until the caller has marked
    /// the whole disk and it is all numbered: a tag numbered before would
    /// name, on the new target, an image holding only what was drained
    /// since. Found by the seeded simulation (docs/simulation.md).
    @Test func noPointIsTaggedBetweenALostTargetAndTheWholeDiskMarked() throws {
        var history = EpochHistory()
        var s = Self.sender(chunks: 16)
        #expect(s.mayTagPoint)
        let lost = try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs(), replicatedBefore: true).targetLost
        #expect(lost && s.toReadIsEmpty && !s.mayTagPoint)
        // Reconnecting again does not forget it.
        s.connectionEnded()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: IDs(), replicatedBefore: true)
        #expect(!s.mayTagPoint)
        s.markToRead(first: 0, count: 16)
        s.wholeDiskMarked()
        #expect(!s.mayTagPoint, "the whole disk is not numbered yet")
        Self.sealAll(&s)
        #expect(s.mayTagPoint)
        #expect(s.numberPointTag().sequence == s.nextSequence - 1)
        #expect(s.invariantViolation(deep: true) == nil)
    }

    @Test func restartsAreBoundedAndOldTagsCountAsLost() throws {
        var s = Self.sender()
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        let tag = s.numberPointTag()                        // #1 in epoch 0
        #expect(!s.pointLost(sequence: tag.sequence, epoch: tag.epoch))
        // A server that is ahead: #1 was never durable, numbering restarts after #5.
        try Self.connect(&s, durable: 5, committed: 5, history: &history, ids: ids)
        #expect(s.pointLost(sequence: tag.sequence, epoch: tag.epoch))
        // A tag the server held when numbering restarted is not lost ...
        let kept = s.numberPointTag()                       // #6 in epoch 1
        try s.ackDurable(6)
        try Self.connect(&s, durable: 9, committed: 6, history: &history, ids: ids)
        #expect(s.restarts.last == ReplicationSender.Restart(epoch: 2, durable: 6))
        #expect(!s.pointLost(sequence: kept.sequence, epoch: kept.epoch))
        // ... but is when a later restart finds it gone.
        try Self.connect(&s, durable: 4, committed: 4, history: &history, ids: ids)
        #expect(s.restarts.last == ReplicationSender.Restart(epoch: 3, durable: 4))
        #expect(s.pointLost(sequence: kept.sequence, epoch: kept.epoch))
        var t = Self.sender()
        var h2 = EpochHistory()
        try Self.connect(&t, durable: 0, committed: 0, history: &h2, ids: ids)
        let old = t.numberPointTag()
        try? t.ackDurable(1)
        for d in 0..<100 { try Self.connect(&t, durable: UInt64(200 + d * 2), committed: 0, history: &h2, ids: IDs()) }
        #expect(t.restarts.count == ReplicationSender.restartsKept)
        // Every restart kept #1 (it was durable), but the record of the first ones is gone.
        #expect(t.pointLost(sequence: old.sequence, epoch: old.epoch))
    }

    @Test func aTagIsNumberedAfterEverythingDrainedBeforeIt() {
        var s = Self.sender(chunksPerSegment: 2)
        s.markToRead(first: 0, count: 3)
        _ = s.planBatch(segmentsMax: 10)
        let tag = s.numberPointTag()
        #expect(tag.sequence == 3 && tag.runs.isEmpty && s.segmentsInFlight == 3)
    }

    // MARK: Committed-through time

    @Test func committedThroughFollowsCheckpointsAndForgetsRenumberedOnes() throws {
        var s = Self.sender(chunksPerSegment: 1)
        var history = EpochHistory()
        let ids = IDs()
        try Self.connect(&s, durable: 0, committed: 0, history: &history, ids: ids)
        s.drained([(0, 0b11)], atUnixMs: 1_000)
        Self.sealAll(&s)                                    // checkpoint (1000, #2)
        s.drained([(0, 0b100)], atUnixMs: 2_000)
        Self.sealAll(&s)                                    // checkpoint (2000, #3)
        #expect(s.committedThroughUnixMs == nil)
        try s.ackDurable(3)
        try s.ackCommitted(2)
        #expect(s.committedThroughUnixMs == 1_000)
        // The server loses #3: its checkpoint means nothing any more.
        try Self.connect(&s, durable: 2, committed: 2, history: &history, ids: ids)
        try s.ackCommitted(2)
        #expect(s.committedThroughUnixMs == 1_000)
        // Every uncommitted chunk is read again: 0, 1, 2 as #3, #4, #5.
        #expect(Self.sealAll(&s).map(\.sequence) == [3, 4, 5])
        s.drained([], atUnixMs: 3_000)                      // empty: checkpoint (3000, #5)
        try s.ackDurable(5)
        try s.ackCommitted(4)
        #expect(s.committedThroughUnixMs == 1_000)
        try s.ackCommitted(5)
        #expect(s.committedThroughUnixMs == 3_000)
    }

    @Test func everyNumberedSegmentSealedSaysWhenTheReaderHoldsNothing() {
        var s = Self.sender(chunksPerSegment: 1)
        #expect(s.everyNumberedSegmentSealed)
        s.markToRead(first: 0, count: 2)
        let b = s.planBatch(segmentsMax: 2)
        #expect(!s.everyNumberedSegmentSealed)
        s.sealed(b[0], bytes: [1])
        #expect(!s.everyNumberedSegmentSealed)
        s.sealed(b[1], bytes: [1])
        #expect(s.everyNumberedSegmentSealed)
    }

    // MARK: Random runs against an honest server

    /// Random drains, numbering, sealing, sends, acknowledgements,
    /// reconnects (to a server that keeps everything, lost its spool, or lost
    /// its target) and clears. After every step the invariant holds, and a
    /// bit is cleared only when a committed segment the server holds was
    /// read after the chunk's last write.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func randomRunsKeepTheInvariantAndClearOnlyCommittedWrites(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var s = Self.sender(chunks: 128, bytesMax: 200, segmentsMax: 6, chunksPerSegment: 3, runsMax: 2)
        var history = EpochHistory()
        let ids = IDs()
        var step = 0
        var lastWrite = [Int](repeating: -1, count: 128)     // step of each chunk's last write
        var hrl = Set<UInt64>()                              // bits the .hrl holds (drained, not cleared)
        var inReader: [(NumberedSegment, readAt: Int)] = []
        var readAt: [UInt64: Int] = [:]                      // this epoch's sequence → step its chunks were read
        // The server: sequence → (step read, chunks), durable and committed.
        var stored: [UInt64: (read: Int, chunks: [UInt64])] = [:]
        var serverDurable: UInt64 = 0, serverCommitted: UInt64 = 0
        var connected = false
        var replicatedBefore = false                         // the .hrl says "@replicated"
        // What the server had committed when it last told the agent: a target
        // lost since is noticed at the next connection.
        var told: [UInt64: (read: Int, chunks: [UInt64])] = [:]
        func tell() { told = stored.filter { $0.key <= serverCommitted } }
        func check() { #expect(s.invariantViolation(deep: true) == nil, "seed \(seed) step \(step)") }
        func covered(_ c: UInt64, by segments: [UInt64: (read: Int, chunks: [UInt64])]) -> Bool {
            let newest = segments.filter { $0.value.chunks.contains(c) }.max { $0.key < $1.key }
            return newest.map { $0.value.read > lastWrite[Int(c)] } ?? false
        }
        func connect() throws {
            let before = s.epoch
            let (_, targetLost) = try Self.connect(&s, durable: serverDurable, committed: serverCommitted, history: &history,
                                                   ids: ids, replicatedBefore: replicatedBefore)
            tell()
            if s.epoch != before { readAt = readAt.filter { $0.key <= serverDurable } }
            if targetLost {
                // DiskReplicator marks the whole disk dirty and compares it with the
                // (empty) target: every chunk is read again.
                s.markToRead(first: 0, count: 128)
                for c in 0..<UInt64(128) { hrl.insert(c) }
            }
            connected = true
        }
        for _ in 0..<3_000 {
            step += 1
            switch rng.below(10) {
            case 0, 1:
                // Writes then a drain.
                var words: [(UInt64, UInt64)] = []
                for _ in 0..<(1 + rng.below(4)) {
                    let c = UInt64(rng.below(128))
                    lastWrite[Int(c)] = step
                    hrl.insert(c)
                    words.append((c / 64, 1 << (c % 64)))
                }
                s.drained(words, atUnixMs: Int64(step))
            case 2:
                if s.windowHasRoom && !s.toReadIsEmpty {
                    for n in s.planBatch(segmentsMax: 1 + rng.below(3)) { inReader.append((n, step)) }
                }
            case 3:
                if !inReader.isEmpty {
                    let (n, _) = inReader.removeFirst()
                    // Read now: its chunks' content is as of this step.
                    if s.sealed(n, bytes: [UInt8](repeating: 0, count: 10 + rng.below(50))) { readAt[n.sequence] = step }
                }
            case 4:
                if connected, let w = s.nextToSend() {
                    s.markSent(w.sequence)
                    if w.sequence == serverDurable + 1 {
                        stored[w.sequence] = (readAt[w.sequence]!, Self.chunks(w.runs))
                        serverDurable = w.sequence
                    }
                }
            case 5:
                if connected { try s.ackDurable(serverDurable) }
            case 6:
                if connected && serverCommitted < serverDurable {
                    serverCommitted += UInt64(rng.below(Int(serverDurable - serverCommitted) + 1))
                    try s.ackCommitted(serverCommitted)
                    tell()
                    if serverCommitted > 0 { replicatedBefore = true }
                }
            case 7:
                for c in s.takeClearable() {
                    // The newest committed segment of c the server holds read it after its last write.
                    #expect(covered(c, by: told), "seed \(seed) step \(step): chunk \(c) cleared without a committed read after its last write")
                    hrl.remove(c)
                }
            case 8:
                // The connection breaks; sometimes the server loses its spool or everything.
                s.connectionEnded()
                switch rng.below(6) {
                case 0:
                    serverDurable = serverCommitted
                    stored = stored.filter { $0.key <= serverCommitted }
                case 1:
                    serverDurable = 0
                    serverCommitted = 0
                    stored = [:]
                default: break
                }
                connected = false
            default:
                if !connected { try connect() }
            }
            check()
        }
        // Whatever was written and is not on the server's target is still
        // tracked (once the agent has heard of a lost target).
        if !connected { try connect() }
        let committedNow = stored.filter { $0.key <= serverCommitted }
        for c in 0..<128 where lastWrite[c] >= 0 && !hrl.contains(UInt64(c)) {
            #expect(covered(UInt64(c), by: committedNow), "seed \(seed): chunk \(c) lost its bit")
        }
    }
}
