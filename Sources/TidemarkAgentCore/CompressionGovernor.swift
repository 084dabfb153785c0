import TidemarkConfigFiles

/// Chooses the zstd level of each segment when `replication.compression_level`
/// is `auto` (the shipped `agent.yaml` and docs/dev/replication-interfaces.md).
///
/// Replication is bound by one of three things: reading the disk, sealing
/// (compression, almost all of it), or everything downstream of the agent
/// (the network, the bandwidth limit, the process server). Only the last
/// two are moved by the level:
/// - **sealing-bound**: the reader had a segment ready while every sealer
///   was busy, and the sender had nothing left to send when the segment was
///   sealed. A faster level gets data across sooner; the extra bytes are
///   what the idle downstream had room for.
/// - **downstream-bound**: the send window was full (the reader waited, or
///   it was at least 3/4 full when the segment was taken).
///   A smaller level sends fewer bytes through the narrow part, using
///   sealer time that was idle anyway.
/// - neither (reading-bound, or an idle disk): the level stays. An agent
///   does not spend the host's CPU on compression nobody waits for.
///
/// The level moves one step after `ReplicationLimits.compressionStepSegments`
/// segments in a row agree, so one late acknowledgement does not move it,
/// and it stays within `ReplicationLimits.compressionAutoLevels`. zstd's
/// level 0 (its default, 3) is skipped: in our configuration 0 means off.
struct CompressionGovernor: Sendable {
    enum Signal: Sendable { case sealingBound, downstreamBound, neither }

    let levels: ClosedRange<Int32>
    let stepSegments: Int
    private(set) var level: Int32
    /// > 0: sealing-bound segments in a row; < 0: downstream-bound ones.
    private var streak = 0
    /// Steps taken, for the status and the logs.
    private(set) var stepsFaster: UInt64 = 0
    private(set) var stepsSmaller: UInt64 = 0

    init(levels: ClosedRange<Int32> = ReplicationLimits.compressionAutoLevels,
         start: Int32 = ReplicationLimits.compressionAutoStartLevel,
         stepSegments: Int = ReplicationLimits.compressionStepSegments) {
        precondition(levels.contains(start) && start != 0 && stepSegments >= 1)
        self.levels = levels
        self.level = start
        self.stepSegments = stepSegments
    }

    /// Records one segment's signal; returns true when the level changed.
    @discardableResult
    mutating func observe(_ signal: Signal) -> Bool {
        switch signal {
        case .neither:
            streak = 0
            return false
        case .sealingBound:
            streak = max(streak, 0) + 1
            guard streak >= stepSegments else { return false }
            streak = 0
            let next = level - 1 == 0 ? -1 : level - 1
            guard levels.contains(next) else { return false }
            level = next
            stepsFaster += 1
            return true
        case .downstreamBound:
            streak = min(streak, 0) - 1
            guard -streak >= stepSegments else { return false }
            streak = 0
            let next = level + 1 == 0 ? 1 : level + 1
            guard levels.contains(next) else { return false }
            level = next
            stepsSmaller += 1
            return true
        }
    }
}
