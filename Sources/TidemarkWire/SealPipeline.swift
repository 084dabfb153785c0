import Foundation

/// Seals segments on a fixed set of threads (one `SegmentSealer` each) and
/// hands the results on in the order they were submitted.
///
/// The reader submits each segment as soon as it is read, so every core
/// compresses, digests and encrypts while the reader reads the next one;
/// `deliver` then sees the segments in submission (sequence) order, which
/// the send window needs. Bounded: at most `depth` segments are submitted
/// and not yet delivered (`submit` waits), so the payload buffers they hold
/// are bounded too.
///
/// After a failure nothing more is delivered (a later segment would leave a
/// gap in the numbering): the error is thrown by the next `submit`, and the
/// reader stops.
public final class SealPipeline: @unchecked Sendable {
    public typealias Seal = (SegmentSealer) throws -> [UInt8]
    public typealias Deliver = ([UInt8]) -> Void

    private struct Job {
        var ticket: UInt64
        var seal: Seal
        var deliver: Deliver
    }

    private let cond = NSCondition()
    private var queue: [Job] = []    // at most `depth`
    private var results: [UInt64: (Deliver, Result<[UInt8], Error>)] = [:]
    private var nextTicket: UInt64 = 0
    private var nextDelivery: UInt64 = 0
    private var inFlight = 0
    private var delivering = false
    private var failure: Error?
    private var stopping = false
    private var running = 0
    public let depth: Int
    public let sealerCount: Int

    /// Starts one thread per sealer.
    public init(sealers: [SegmentSealer], depth: Int) {
        precondition(!sealers.isEmpty && depth >= 1)
        self.depth = depth
        sealerCount = sealers.count
        running = sealers.count
        for (i, s) in sealers.enumerated() {
            let t = Thread { self.work { try $0(s) } }
            t.name = "tidemark-seal-\(i)"
            t.start()
        }
    }

    /// Starts `threads` threads that borrow their sealer from `pool` for
    /// each segment: several pipelines (the disks of one agent) share the
    /// pool's sealers, and their memory, instead of each having its own.
    public init(pool: SealerPool, threads: Int, depth: Int) {
        precondition(threads >= 1 && depth >= 1)
        self.depth = depth
        sealerCount = threads
        running = threads
        for i in 0..<threads {
            let t = Thread { self.work { seal in try pool.with(seal) } }
            t.name = "tidemark-seal-\(i)"
            t.start()
        }
    }

    /// Queues a segment: `seal` runs on a sealer thread, then `deliver` with
    /// its bytes, after every segment submitted before it was delivered.
    /// Waits while `depth` segments are in the pipeline; throws the failure
    /// of an earlier segment.
    public func submit(_ seal: @escaping Seal, deliver: @escaping Deliver) throws {
        cond.lock()
        defer { cond.unlock() }
        while inFlight >= depth && failure == nil { cond.wait() }
        if let failure { throw failure }
        queue.append(Job(ticket: nextTicket, seal: seal, deliver: deliver))
        nextTicket += 1
        inFlight += 1
        cond.broadcast()
    }

    /// A segment submitted now would not find a sealer free: at least as
    /// many are submitted and not yet delivered as there are sealers.
    public var sealersBusy: Bool {
        cond.lock()
        defer { cond.unlock() }
        return inFlight >= sealerCount
    }

    /// The failure of a segment, if one failed.
    public var error: Error? {
        cond.lock()
        defer { cond.unlock() }
        return failure
    }

    /// Waits until everything submitted is delivered (or dropped after a
    /// failure), then stops the threads and waits for them.
    public func finish() {
        cond.lock()
        while inFlight > 0 { cond.wait() }
        stopping = true
        cond.broadcast()
        while running > 0 { cond.wait() }
        cond.unlock()
    }

    private func work(_ sealing: (Seal) throws -> [UInt8]) {
        cond.lock()
        while true {
            while queue.isEmpty && !stopping { cond.wait() }
            if queue.isEmpty {
                running -= 1
                cond.broadcast()
                cond.unlock()
                return
            }
            let job = queue.removeFirst()
            let failed = failure != nil
            cond.unlock()
            let result: Result<[UInt8], Error> = failed ? .success([]) : Result { try sealing(job.seal) }
            cond.lock()
            results[job.ticket] = (job.deliver, result)
            // One thread delivers at a time, in ticket order; a result that
            // arrives while another thread delivers is picked up by it.
            if delivering { continue }
            delivering = true
            while let (deliver, r) = results.removeValue(forKey: nextDelivery) {
                nextDelivery += 1
                if case .failure(let e) = r, failure == nil { failure = e }
                if failure == nil, case .success(let bytes) = r {
                    cond.unlock()
                    deliver(bytes)
                    cond.lock()
                }
                inFlight -= 1
                cond.broadcast()
            }
            delivering = false
        }
    }
}

/// Sealers lent out one segment at a time (`SealPipeline(pool:threads:depth:)`):
/// the disks of one agent share as many as the host has CPUs, so the
/// compression contexts and scratch buffers do not grow with the number of
/// disks. Thread-safe; `with` waits while every sealer is lent.
public final class SealerPool: @unchecked Sendable {
    private let cond = NSCondition()
    private var free: [SegmentSealer]
    public let count: Int

    public init(_ sealers: [SegmentSealer]) {
        precondition(!sealers.isEmpty)
        free = sealers
        count = sealers.count
    }

    /// Runs `body` with a sealer no one else uses meanwhile.
    public func with<T>(_ body: (SegmentSealer) throws -> T) rethrows -> T {
        cond.lock()
        while free.isEmpty { cond.wait() }
        let sealer = free.removeLast()
        cond.unlock()
        defer {
            cond.lock()
            free.append(sealer)
            cond.signal()
            cond.unlock()
        }
        return try body(sealer)
    }
}
