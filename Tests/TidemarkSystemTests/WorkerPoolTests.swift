import Glibc
import Synchronization
import Testing
import TidemarkSystem

@Suite struct WorkerPoolTests {
    final class Counts: @unchecked Sendable {
        var mutex = pthread_mutex_t()
        var hits: [Int]
        var threads: Set<UInt> = []
        init(_ n: Int) {
            hits = Array(repeating: 0, count: n)
            pthread_mutex_init(&mutex, nil)
        }
        func hit(_ i: Int) {
            pthread_mutex_lock(&mutex)
            hits[i] += 1
            threads.insert(UInt(pthread_self()))
            pthread_mutex_unlock(&mutex)
        }
    }

    @Test(arguments: [0, 1, 3]) func everyItemRunsOnce(threads: Int) {
        let pool = WorkerPool(threads: threads)
        defer { pool.shutdown() }
        for n in [0, 1, 5, 100] {
            let c = Counts(n)
            pool.run(count: n) { i in
                usleep(200)
                c.hit(i)
            }
            #expect(c.hits.allSatisfy { $0 == 1 }, "\(n) items on \(threads) threads")
            #expect(c.threads.count <= threads + 1)
        }
    }

    @Test func itemsWaitInParallel() {
        let pool = WorkerPool(threads: 3)
        defer { pool.shutdown() }
        var t0 = timespec(), t1 = timespec()
        clock_gettime(CLOCK_MONOTONIC, &t0)
        pool.run(count: 4) { _ in usleep(100_000) }
        clock_gettime(CLOCK_MONOTONIC, &t1)
        let ms = Double(t1.tv_sec - t0.tv_sec) * 1000 + Double(t1.tv_nsec - t0.tv_nsec) / 1e6
        #expect(ms < 350, "4 × 100 ms on 4 threads took \(ms) ms")
    }

    @Test func aPoolThatWasShutDownRunsOnTheCaller() {
        let pool = WorkerPool(threads: 2)
        pool.shutdown()
        let c = Counts(10)
        pool.run(count: 10) { c.hit($0) }
        #expect(c.hits.allSatisfy { $0 == 1 })
        #expect(c.threads.count == 1)
    }

    /// Two items that each wait for the other: both run only if the pool's
    /// thread takes one while the caller holds the other. Returns whether
    /// they met, and the CPU clock of the thread that was not the caller.
    static func meet(_ pool: WorkerPool) -> (met: Bool, clock: clockid_t?) {
        let arrived = Atomic<Int>(0)
        let caller = pthread_self()
        let clock = Mutex<clockid_t?>(nil)
        let failed = Atomic<Bool>(false)
        pool.run(count: 2) { _ in
            if pthread_equal(pthread_self(), caller) == 0 {
                var c = clockid_t()
                if pthread_getcpuclockid(pthread_self(), &c) == 0 { clock.withLock { $0 = c } }
            }
            arrived.add(1, ordering: .sequentiallyConsistent)
            var t0 = timespec(), t = timespec()
            clock_gettime(CLOCK_MONOTONIC, &t0)
            while arrived.load(ordering: .sequentiallyConsistent) < 2 {
                clock_gettime(CLOCK_MONOTONIC, &t)
                if t.tv_sec - t0.tv_sec > 5 { failed.store(true, ordering: .relaxed); return }
                usleep(10)
            }
        }
        return (!failed.load(ordering: .relaxed), clock.withLock { $0 })
    }

    /// A pool that watches for the next job after each one: jobs that come
    /// at once (during the watch), just after it ends and long after (the
    /// thread asleep) are all taken up by the thread.
    @Test func aWatchingPoolTakesEveryJob() {
        let pool = WorkerPool(threads: 1, spinMicroseconds: 200)
        defer { pool.shutdown() }
        for gapMicroseconds in [0, 0, 50, 150, 190, 210, 250, 1000, 20_000, 0, 0] {
            if gapMicroseconds > 0 { usleep(UInt32(gapMicroseconds)) }
            #expect(Self.meet(pool).met, "job after \(gapMicroseconds) µs")
        }
    }

    /// The watch is bounded: once it is over the threads sleep and use no
    /// CPU until the next job.
    @Test func aWatchingPoolIsIdleBetweenJobs() throws {
        let pool = WorkerPool(threads: 1, spinMicroseconds: 2000)
        defer { pool.shutdown() }
        let r = Self.meet(pool)
        #expect(r.met)
        let clock = try #require(r.clock)
        usleep(20_000) // past the watch
        func cpuNanoseconds() -> Int {
            var t = timespec()
            clock_gettime(clock, &t)
            return t.tv_sec * 1_000_000_000 + t.tv_nsec
        }
        let before = cpuNanoseconds()
        usleep(300_000)
        let used = cpuNanoseconds() - before
        #expect(used < 5_000_000, "the idle thread used \(used / 1000) µs of CPU in 300 ms")
        #expect(Self.meet(pool).met)
    }
}
