import Glibc

/// A fixed set of threads that run the items of one job at a time, for work
/// that mostly waits (fsync): `run(count:)` hands out the indices 0..<count
/// to the pool's threads and the calling thread, and returns once every
/// item has finished. Bounded: the pool has `threads` threads for its whole
/// life, whatever the number of items; one job runs at a time (a second
/// caller waits for the first). The threads keep the pool alive until
/// `shutdown()`.
public final class WorkerPool: @unchecked Sendable {
    public let threads: Int
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

    /// Starts `threads` (≥ 0) threads; with 0 every job runs on its caller.
    public init(threads: Int) {
        precondition(threads >= 0)
        self.threads = threads
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
        pthread_cond_broadcast(&wake)
        pthread_mutex_unlock(&mutex)
        drainItems()
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
        }
        if next >= count && running == 0 { pthread_cond_broadcast(&finished) }
        pthread_mutex_unlock(&mutex)
    }

    private func work() {
        var seen: UInt64 = 0
        while true {
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
        }
    }
}
