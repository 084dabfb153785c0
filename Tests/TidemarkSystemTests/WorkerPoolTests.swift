import Glibc
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
}
