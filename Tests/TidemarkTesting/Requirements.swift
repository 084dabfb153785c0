import Foundation
import Testing

/// A test the machine cannot run must not pass unnoticed. A test that
/// returned early when, say, it was not root was reported as passed; with
/// these condition traits it is reported as skipped, with the reason, and
/// under CI=true (where every test must run) it is enabled and fails at once,
/// saying what the machine lacks:
///
///     @Test(.requiresRoot) func replicatesALoopDevice() throws { ... }
///     @Test(.requiresRoot, .requiresTracefs) func probeChurn() throws { ... }
///     @Test(.requires("two CPUs", ProcessInfo.processInfo.activeProcessorCount >= 2)) ...
///
/// The requirement is checked when the test plan is built (before any test
/// runs), so the skip reason names the actual problem ("not root",
/// "/sbin/losetup is missing"). `TIDEMARK_TEST_ASSUME_NO_ROOT=1` makes a root
/// process check the skip path (`TestEnv.isRoot`).
extension Trait where Self == ConditionTrait {
    /// The test needs root and loop devices (losetup): it attaches loop
    /// devices, loads the BPF tracer, freezes filesystems or runs the agent.
    public static var requiresRoot: Self {
        requirement("needs root and loop devices (losetup)", problem: TestEnv.rootProblem)
    }

    /// The test switches ftrace probes in tracefs instances.
    public static var requiresTracefs: Self {
        requirement("needs tracefs", problem: TestEnv.tracefsProblem)
    }

    /// The test needs `what` from the machine, present when `isMet` holds
    /// (evaluated once, when the trait is made).
    public static func requires(_ what: String, _ isMet: @autoclosure () -> Bool) -> Self {
        requirement("needs \(what)", problem: isMet() ? nil : "the machine lacks it")
    }

    /// Enabled when `problem` is nil; otherwise skipped with `need: problem`
    /// as the reason, or, under CI=true, enabled and failing with that reason.
    static func requirement(_ need: String, problem: String?) -> Self {
        let reason = problem.map { "\(need): \($0)" } ?? need
        let ci = TestEnv.isCI
        return .enabled(Comment(rawValue: reason)) {
            guard problem != nil else { return true }
            if ci { throw UnmetRequirement(reason: reason) }
            return false
        }
    }
}

/// Thrown while a test is planned under CI=true when the machine cannot run
/// it: Swift Testing then records it as an issue of that test, which fails.
public struct UnmetRequirement: Error, CustomStringConvertible {
    public var reason: String
    public var description: String {
        "this test \(reason); CI=true forbids skipping it: run the tests where it can run (as root, scripts/test.sh)"
    }
}
