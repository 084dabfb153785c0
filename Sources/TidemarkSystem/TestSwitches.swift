/// The switches integration tests set in a daemon's environment to provoke
/// what cannot be provoked on demand. They are read in one place, at
/// process start, by the executable's main (`init(environment:)`), and
/// handed down as a value to the code that honours them: library code never
/// reads them from the environment. In production every switch is off
/// (`TestSwitches.off`); never set them on a real host.
///
/// An immutable value; any thread.
public struct TestSwitches: Sendable, Equatable {
    /// TIDEMARK_TEST_BOOT_ID (when not empty): replaces the host's boot id,
    /// so a test can simulate a reboot without one. A wrong boot id hides an
    /// unclean shutdown.
    public var bootID: String?
    /// TIDEMARK_TEST_FROZEN_HOOK: a program the agent runs while a recovery
    /// point's filesystems are frozen (a test copies the frozen source as
    /// ground truth for the point).
    public var frozenHook: String?
    /// TIDEMARK_TEST_FAKE_RECURSION_MISS=1: the first drain behaves as if
    /// the kernel had skipped the tracer program once, because real
    /// recursion misses cannot be provoked on demand.
    public var fakeRecursionMiss: Bool
    /// TIDEMARK_TEST_FAKE_RECURSION_MISS=freeze: instead, every drain under
    /// a recovery point's freeze behaves so (a resync then starts under
    /// the freeze).
    public var fakeRecursionMissUnderFreeze: Bool
    /// TIDEMARK_TEST_WHOLE_DISK_READS=1: initial copies and whole-disk
    /// resyncs read the whole disk even where the filesystem can say which
    /// blocks it uses (the benchmark's same-run reference).
    public var wholeDiskReads: Bool

    public init(bootID: String? = nil, frozenHook: String? = nil, fakeRecursionMiss: Bool = false,
                fakeRecursionMissUnderFreeze: Bool = false, wholeDiskReads: Bool = false) {
        self.bootID = bootID
        self.frozenHook = frozenHook
        self.fakeRecursionMiss = fakeRecursionMiss
        self.fakeRecursionMissUnderFreeze = fakeRecursionMissUnderFreeze
        self.wholeDiskReads = wholeDiskReads
    }

    /// Every switch off: what production runs with.
    public static let off = TestSwitches()

    /// The switches set in `environment` (the process's, read by main).
    public init(environment: [String: String]) {
        let boot = environment["TIDEMARK_TEST_BOOT_ID"]
        self.init(bootID: boot?.isEmpty == false ? boot : nil,
                  frozenHook: environment["TIDEMARK_TEST_FROZEN_HOOK"],
                  fakeRecursionMiss: environment["TIDEMARK_TEST_FAKE_RECURSION_MISS"] == "1",
                  fakeRecursionMissUnderFreeze: environment["TIDEMARK_TEST_FAKE_RECURSION_MISS"] == "freeze",
                  wholeDiskReads: environment["TIDEMARK_TEST_WHOLE_DISK_READS"] == "1")
    }

    /// The id of this boot of the host (/proc/sys/kernel/random/boot_id,
    /// without its newline), or the test override; "" when unreadable.
    public func hostBootID() -> String {
        if let bootID { return bootID }
        guard var s = try? SmallFile.read("/proc/sys/kernel/random/boot_id", bytesMax: 64) else { return "" }
        while let last = s.last, last == 0x0A || last == 0x20 || last == 0 { s.removeLast() }
        return String(decoding: s, as: UTF8.self)
    }
}
