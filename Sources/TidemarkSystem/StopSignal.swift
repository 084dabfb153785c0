import Glibc
import Synchronization

private let stopRequested = Atomic<Int32>(0)

/// SIGTERM / SIGINT request an orderly stop: the running loop finishes its
/// current step (a drain is always completed and persisted), then returns.
public enum StopSignal {
    public static func install() {
        signal(SIGTERM) { sig in stopRequested.store(sig, ordering: .relaxed) }
        signal(SIGINT) { sig in stopRequested.store(sig, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)
        // A parent may have started us with these blocked (posix_spawn keeps
        // the caller's mask): a daemon that cannot be stopped is worse than none.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    public static var isRequested: Bool { stopRequested.load(ordering: .relaxed) != 0 }

    /// Requests the stop without a signal: a daemon whose service group
    /// received SIGTERM (TidemarkDaemon) stops its loops and wakes every
    /// `sleep` this way, as the signal handler of `install` would.
    public static func request(signal: Int32 = SIGTERM) {
        stopRequested.store(signal, ordering: .relaxed)
    }

    /// Sleeps up to `milliseconds`, waking early when a stop is requested.
    public static func sleep(milliseconds: Int) {
        var left = milliseconds
        while left > 0 && !isRequested {
            let step = min(left, 20)
            usleep(useconds_t(step * 1000))
            left -= step
        }
    }
}

private let reloadRequests = Atomic<Int32>(0)

/// SIGHUP asks a daemon to re-read its configuration file and apply what
/// can change without a restart (`systemctl reload`).
public enum ReloadSignal {
    public static func install() {
        signal(SIGHUP) { _ in reloadRequests.add(1, ordering: .relaxed) }
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// True once per burst of SIGHUPs received since the last call.
    public static func takeRequest() -> Bool {
        reloadRequests.exchange(0, ordering: .relaxed) != 0
    }
}
