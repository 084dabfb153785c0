import Foundation
import Glibc
import Logging
import ServiceLifecycle
import Synchronization
import TidemarkSystem
import UnixSignals

// The daemons' (tidemark-agent run, tidemark-server run) building blocks
// for swift-service-lifecycle: every long-running loop is a `Service`, and
// one `ServiceGroup` per daemon owns them, turns SIGTERM and SIGINT into a
// graceful shutdown and runs the reload on SIGHUP.
//
// The data path stays on threads of its own (blocking I/O, io_uring, TLS):
// a `ThreadService` starts them in `run()` and awaits their end; a graceful
// shutdown (or the group's cancellation) calls their stop, which they
// already had.

/// The signals that came before the service group could take them, one
/// bit per signal number (`1 << SIGTERM`); written by the handler
/// `DaemonSignals.prepare` installs, taken once by the group.
private let earlySignals = Atomic<UInt64>(0)

/// Signals in a daemon.
///
/// The group's signal sources (UnixSignals, through Dispatch) install
/// libdispatch's own handler for SIGTERM, SIGINT and SIGHUP when they
/// register, which is only once the group runs: after the configuration is
/// read, the disks opened, the TLS files loaded — seconds on a busy host.
/// Until then the default action would apply, and a SIGHUP (`systemctl
/// reload` just after start) would kill the daemon, a SIGTERM skip the
/// graceful stop. So `prepare`, the first thing a daemon does, installs a
/// handler that only records the signal; the group replays what was
/// recorded once its sources are registered (`EarlySignalsService`, and
/// `ReloadService` for SIGHUP).
///
/// Any thread may take the signal (the handler is process-wide); threads
/// of Swift concurrency are libdispatch workers that block nearly every
/// signal, and threads they start inherit that mask, so children are
/// started with an empty mask again: the freeze watchdog through
/// DetachedChild, hook scripts through ChildProcess.
public enum DaemonSignals {
    /// The signals the service group handles.
    public static let handled: [UnixSignal] = [.sigterm, .sigint]

    /// Records SIGTERM, SIGINT and SIGHUP until the group takes them over,
    /// and ignores SIGPIPE (a peer that went away is an error of the write,
    /// not a reason to die). Call it first, before the daemon's setup.
    public static func prepare() {
        for s in [SIGTERM, SIGINT, SIGHUP] {
            signal(s) { sig in earlySignals.bitwiseOr(UInt64(1) << UInt64(sig), ordering: .relaxed) }
        }
        // A parent may have started us with these blocked (posix_spawn keeps
        // the caller's mask): a daemon that cannot be stopped is worse than none.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Whether `signal` came before the group took it over; true once
    /// (the bit is cleared).
    static func takeEarly(_ signal: Int32) -> Bool {
        let bit = UInt64(1) << UInt64(signal)
        return earlySignals.bitwiseAnd(~bit, ordering: .relaxed).oldValue & bit != 0
    }

    /// The service group of a daemon: `services` start in order and stop in
    /// reverse order, one after the other, on SIGTERM or SIGINT — also on
    /// one that came before the group ran; a service that throws, or
    /// returns while the others run, ends the group.
    public static func group(_ services: [any Service], logger: Logger) -> ServiceGroup {
        var config = ServiceGroupConfiguration(services: ([EarlySignalsService()] + services)
                                                   .map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
                                               logger: logger)
        config.gracefulShutdownSignals = handled
        return ServiceGroup(configuration: config)
    }
}

/// The first service of a daemon's group: the group registers its signal
/// sources before it starts any service, so a SIGTERM or SIGINT recorded
/// before (`DaemonSignals.prepare`) is sent again now and starts the
/// graceful shutdown. Then it waits for the shutdown like the others.
struct EarlySignalsService: Service {
    func run() async throws {
        for s in [SIGTERM, SIGINT] where DaemonSignals.takeEarly(s) {
            Log.info("signal \(s) came while starting; stopping now")
            kill(getpid(), s)
        }
        try? await gracefulShutdown()
    }
}

/// A service whose work runs on one thread of its own: `run()` starts
/// `body` on a thread named `name` and returns (or throws) when it does;
/// a graceful shutdown or cancellation calls `stop`, which must make `body`
/// return soon (it may be called more than once, and before `body` starts).
public struct ThreadService: Service {
    public let name: String
    let body: @Sendable () throws -> Void
    let stop: @Sendable () -> Void

    public init(name: String, body: @escaping @Sendable () throws -> Void, stop: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
        self.stop = stop
    }

    public func run() async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await Self.onThread(name, body)
        } onCancelOrGracefulShutdown: { [stop] in
            stop()
        }
    }

    /// Runs `body` on a new thread and resumes when it returns.
    public static func onThread(_ name: String, _ body: @escaping @Sendable () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            let t = Thread {
                do {
                    try body()
                    c.resume()
                } catch {
                    c.resume(throwing: error)
                }
            }
            t.name = name
            t.start()
        }
    }
}

/// A service that runs `start` at once, waits for the graceful shutdown
/// (or cancellation), then runs `stop`: for parts that serve on threads of
/// their own until stopped (the agent's control socket).
public struct StartStopService: Service {
    let start: @Sendable () -> Void
    let stop: @Sendable () -> Void

    public init(start: @escaping @Sendable () -> Void, stop: @escaping @Sendable () -> Void) {
        self.start = start
        self.stop = stop
    }

    public func run() async throws {
        start()
        defer { stop() }
        // Cancellation (another service failed) ends the wait as well.
        try? await gracefulShutdown()
    }
}

/// SIGHUP (`systemctl reload`): each signal runs `reload`, until the
/// graceful shutdown. Bursts of signals while a reload runs are
/// coalesced by the signal source into one more reload.
public struct ReloadService: Service {
    let reload: @Sendable () -> Void

    public init(reload: @escaping @Sendable () -> Void) { self.reload = reload }

    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        // Registered: a SIGHUP that came before (DaemonSignals.prepare
        // recorded it) is a reload still owed.
        if DaemonSignals.takeEarly(SIGHUP) { reload() }
        for await _ in signals.cancelOnGracefulShutdown() {
            reload()
        }
    }
}

/// Runs `tick` every `intervalMs` until the graceful shutdown (the metrics
/// gauges are refreshed this way).
public struct PeriodicService: Service {
    let intervalMs: Int
    let tick: @Sendable () -> Void

    public init(intervalMs: Int, tick: @escaping @Sendable () -> Void) {
        precondition(intervalMs > 0, "PeriodicService: intervalMs must be positive")
        self.intervalMs = intervalMs
        self.tick = tick
    }

    public func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            tick()
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(intervalMs)) }
            } catch {
                return   // cancelled or shutting down
            }
        }
    }
}
