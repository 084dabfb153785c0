import Foundation
import Glibc
import Logging
import ServiceLifecycle
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

/// Signals in a daemon: the group's signal sources (signalfd, through
/// Dispatch) see SIGTERM, SIGINT and SIGHUP only when no thread takes them
/// first, so the daemon blocks them before it starts any thread; every
/// thread inherits the block. Children get an empty mask again: the freeze
/// watchdog through DetachedChild, hook scripts through ChildProcess
/// (Foundation's Process would pass the block on).
public enum DaemonSignals {
    /// The signals the service group handles.
    public static let handled: [UnixSignal] = [.sigterm, .sigint]

    /// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread (call it on
    /// the main thread before any other starts) and ignores SIGPIPE (a
    /// peer that went away is an error of the write, not a reason to die).
    public static func prepare() {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// The service group of a daemon: `services` start in order and stop in
    /// reverse order, one after the other, on SIGTERM or SIGINT; a service
    /// that throws, or returns while the others run, ends the group.
    public static func group(_ services: [any Service], logger: Logger) -> ServiceGroup {
        var config = ServiceGroupConfiguration(services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
                                               logger: logger)
        config.gracefulShutdownSignals = handled
        return ServiceGroup(configuration: config)
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
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
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
