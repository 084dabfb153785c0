import Foundation
import TidemarkSurface
import TidemarkSystem
import TidemarkWire

/// What the disks of one agent share, so that its memory is bounded per
/// host and not per disk (docs/design.md, "Memory per host"):
///
/// - **the segment budget**: the bytes of segments being read, sealed or
///   waiting for "durable", over all disks, stay within `budgetBytes`
///   (`replication.host_inflight_bytes`). Each disk publishes what it holds
///   — its window's bytes plus a segment's payload bytes for each segment
///   numbered and not yet sealed — whenever that changes, and numbers new
///   segments only as far as the budget has room (`admit`). A disk holding
///   more than an even share gives way while another disk waits, so one busy
///   disk does not starve the others;
/// - **the sealers**: as many as the host has CPUs, lent to every disk's
///   seal threads one segment at a time (`SealerPool`);
/// - **the payload buffers**: one pool, whose idle buffers are freed once
///   no disk reads.
///
/// Each disk's own window bound (`replication.inflight_bytes`) still
/// applies; the budget is at least that (checked when the configuration is
/// loaded), so a disk alone can fill its window.
///
/// Threads: `publish` and `admit` are called with the calling disk's `cond`
/// held; they take `lock` after it (lock order: a disk's cond, then
/// `lock`) and never take another disk's cond: a disk waiting for room is
/// woken by a broadcast on its cond without its lock, and waits at most
/// `ReplicationLimits.hostBudgetPollMs` should that wake-up be missed.
public final class HostShare: @unchecked Sendable {
    public let budgetBytes: UInt64
    /// The bytes a numbered, unsealed segment counts for: the largest it
    /// can be sealed (its payload, the largest header, the tag), so a
    /// segment never holds more once sealed and the budget is never passed.
    public let segmentBytes: UInt64
    let sealers: SealerPool
    let payloads: BufferPool

    private let lock = NSLock()
    private var held: [UInt64] = []
    private var heldTotal: UInt64 = 0
    private var waiting: [Bool] = []
    private var conds: [NSCondition] = []
    private var readers = 0
    /// The most bytes held at once.
    private var heldPeakBytes: UInt64 = 0

    /// `workers` sealers (one per CPU) with `key` and `compressionLevel`.
    /// `payloadBytes`: a segment's payload buffer (`replication.segment_size`).
    public init(budgetBytes: UInt64, payloadBytes: Int, workers: Int, key: ReplicationKey, compressionLevel: Int32) throws {
        let segmentBytes = UInt64(WireLimits.sealedSegmentBytesMax(payloadBytes: payloadBytes))
        precondition(payloadBytes > 0 && budgetBytes >= segmentBytes && workers >= 1)
        self.budgetBytes = budgetBytes
        self.segmentBytes = segmentBytes
        sealers = SealerPool(try (0..<workers).map { _ in try SegmentSealer(key: key, compressionLevel: compressionLevel) })
        // Idle buffers kept: what the sealers and one reader's batch use at once.
        payloads = BufferPool(keptMax: 2 * workers + 1, roundingBytes: (payloadBytes + 4095) / 4096 * 4096)
    }

    /// A disk joins; its index for `publish` and `admit`. `cond` is the
    /// disk's own, broadcast when room it waits for comes free.
    func register(_ cond: NSCondition) -> Int {
        lock.lock()
        defer { lock.unlock() }
        held.append(0)
        waiting.append(false)
        conds.append(cond)
        return held.count - 1
    }

    /// Disk `disk` now holds `bytes`. Wakes the disks that wait for room
    /// when this frees some.
    func publish(_ disk: Int, bytes: UInt64) {
        lock.lock()
        let before = held[disk]
        held[disk] = bytes
        heldTotal = heldTotal - before + bytes
        heldPeakBytes = max(heldPeakBytes, heldTotal)
        let wake = bytes < before ? waiting.indices.filter { waiting[$0] && $0 != disk }.map { conds[$0] } : []
        lock.unlock()
        for c in wake { c.broadcast() }
    }

    /// How many of `wanted` segments disk `disk` may number now: as many as
    /// the budget has room for, none while it holds more than an even share
    /// and a disk below its share waits. Counts them as held at once (the disk's next
    /// `publish` replaces the estimate). 0: wait for a `publish` elsewhere.
    func admit(_ disk: Int, wanted: Int) -> Int {
        lock.lock()
        defer { lock.unlock() }
        let room = budgetBytes > heldTotal ? budgetBytes - heldTotal : 0
        var n = min(UInt64(wanted), room / segmentBytes)
        let share = budgetBytes / UInt64(held.count)
        // Above an even share, give way to a disk below its share that waits
        // (two disks above theirs do not hold each other up).
        if n > 0 && held[disk] >= share && waiting.indices.contains(where: { $0 != disk && waiting[$0] && held[$0] < share }) { n = 0 }
        waiting[disk] = n == 0
        if n > 0 {
            held[disk] += n * segmentBytes
            heldTotal += n * segmentBytes
            heldPeakBytes = max(heldPeakBytes, heldTotal)
        }
        return Int(n)
    }

    /// Disk `disk` no longer waits for room (it stops, or has nothing to read).
    func stopWaiting(_ disk: Int) {
        lock.lock()
        waiting[disk] = false
        lock.unlock()
    }

    /// The bytes held over all disks now, the budget and the peak (`status`).
    public var status: HostInflightStatus {
        lock.lock()
        defer { lock.unlock() }
        return HostInflightStatus(budgetBytes: budgetBytes, heldBytes: heldTotal, peakBytes: heldPeakBytes)
    }

    /// A disk's reader starts reading, or goes idle: once none reads, the
    /// idle payload buffers are freed.
    func readerStarted() {
        lock.lock()
        readers += 1
        lock.unlock()
    }

    func readerIdle() {
        lock.lock()
        readers -= 1
        let none = readers == 0
        lock.unlock()
        if none { payloads.trim() }
    }
}
