import CTidemarkSystem
import Glibc
import Synchronization

/// A fixed set of threads that run the items of one job at a time, for work
/// that mostly waits (fsync): `run(count:)` hands out the indices 0..<count
/// to the pool's threads and the calling thread, and returns once every
/// item has finished. Bounded: the pool has `threads` threads for its whole
/// life, whatever the number of items; one job runs at a time (a second
/// caller waits for the first). The threads keep the pool alive until
/// `shutdown()`.
///
/// With `spinMicroseconds` > 0, a thread that has finished its items keeps
/// watching (polling, no sleep) for the next job that long before it
/// sleeps, and the caller watches that long for the others' last items
/// before it sleeps: a job that comes right after the previous one (the
/// phases of one drain) and the end of a job then skip a futex wake-up,
/// tens of microseconds or more on a VM. The watch is bounded and only
/// follows a job, so an idle pool uses no CPU.
public final class WorkerPool: @unchecked Sendable {
    public let threads: Int
    /// How long a thread watches for more work before it sleeps.
    public let spinMicroseconds: Int
    private var mutex = pthread_mutex_t()
    private var wake = pthread_cond_t()     // workers: a job or stop
    private var finished = pthread_cond_t() // caller: every item done
    private var jobMutex = pthread_mutex_t() // one job at a time
    private var body: ((Int) -> Void)?
    private var count = 0
    private var next = 0
    private var running = 0
    private var generation: UInt64 = 0
    private var stopping = false
    private var ids: [pthread_t] = []
    /// `generation`, readable without the mutex (for the watch).
    private let published = Atomic<UInt64>(0)
    /// Items of the current job not yet finished (for the watch).
    private let unfinished = Atomic<Int>(0)

    /// Starts `threads` (≥ 0) threads; with 0 every job runs on its caller.
    public init(threads: Int, spinMicroseconds: Int = 0) {
        precondition(threads >= 0 && spinMicroseconds >= 0)
        self.threads = threads
        self.spinMicroseconds = spinMicroseconds
        pthread_mutex_init(&mutex, nil)
        pthread_mutex_init(&jobMutex, nil)
        pthread_cond_init(&wake, nil)
        pthread_cond_init(&finished, nil)
        for _ in 0..<threads {
            var id = pthread_t()
            let context = Unmanaged.passRetained(self).toOpaque()
            let r = pthread_create(&id, nil, { arg in
                let pool = Unmanaged<WorkerPool>.fromOpaque(arg!).takeRetainedValue()
                pool.work()
                return nil
            }, context)
            precondition(r == 0, "pthread_create failed: \(r)")
            ids.append(id)
        }
    }

    /// Stops the threads (after the job in progress) and waits for them.
    public func shutdown() {
        pthread_mutex_lock(&mutex)
        stopping = true
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
        for id in ids { pthread_join(id, nil) }
        ids.removeAll()
    }

    /// Runs `body(i)` for every i in 0..<count, on the pool's threads and the
    /// caller's, and returns when all have returned. `body` must be safe to
    /// call from several threads at once (each index is given out once).
    public func run(count: Int, _ body: @escaping (Int) -> Void) {
        guard count > 0 else { return }
        pthread_mutex_lock(&jobMutex)
        defer { pthread_mutex_unlock(&jobMutex) }
        pthread_mutex_lock(&mutex)
        self.body = body
        self.count = count
        self.next = 0
        self.running = 0
        generation &+= 1
        unfinished.store(count, ordering: .relaxed)
        published.store(generation, ordering: .releasing)
        pthread_cond_broadcast(&wake) // no system call when no thread sleeps
        pthread_mutex_unlock(&mutex)
        drainItems()
        watch { unfinished.load(ordering: .acquiring) == 0 }
        pthread_mutex_lock(&mutex)
        while next < self.count || running > 0 { pthread_cond_wait(&finished, &mutex) }
        self.body = nil
        self.count = 0
        pthread_mutex_unlock(&mutex)
    }

    /// Takes items of the current job until none is left.
    private func drainItems() {
        pthread_mutex_lock(&mutex)
        while next < count, let body {
            let i = next
            next += 1
            running += 1
            pthread_mutex_unlock(&mutex)
            body(i)
            pthread_mutex_lock(&mutex)
            running -= 1
            unfinished.subtract(1, ordering: .releasing)
        }
        if next >= count && running == 0 { pthread_cond_broadcast(&finished) }
        pthread_mutex_unlock(&mutex)
    }

    /// Waits up to `spinMicroseconds` for `done()`, without sleeping.
    @inline(__always)
    private func watch(_ done: () -> Bool) {
        guard spinMicroseconds > 0, !done() else { return }
        let deadline = Self.now() + Int64(spinMicroseconds) * 1000
        repeat {
            for _ in 0..<16 { tm_cpu_relax() }
        } while !done() && Self.now() < deadline
    }

    private static func now() -> Int64 { Int64(SystemClock.monotonicNs()) }

    private func work() {
        var seen: UInt64 = 0
        var justWorked = false
        while true {
            // Right after a job, watch for the next before sleeping.
            if justWorked { watch { published.load(ordering: .acquiring) != seen } }
            justWorked = false
            pthread_mutex_lock(&mutex)
            while !stopping && (generation == seen || next >= count) {
                seen = generation
                pthread_cond_wait(&wake, &mutex)
            }
            if stopping {
                pthread_mutex_unlock(&mutex)
                return
            }
            seen = generation
            pthread_mutex_unlock(&mutex)
            drainItems()
            justWorked = true
        }
    }
}
