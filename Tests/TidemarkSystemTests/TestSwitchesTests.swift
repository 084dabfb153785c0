import Testing
import TidemarkSystem

@Suite struct TestSwitchesTests {
    /// Each switch is read from its variable; an empty boot id is no
    /// override; "1" fakes a recursion miss at the first drain, "freeze" at the
    /// first drain under a point's freeze, anything else at none.
    @Test func readFromTheEnvironmentMainPasses() {
        #expect(TestSwitches(environment: [:]) == .off)
        let on = TestSwitches(environment: ["TIDEMARK_TEST_BOOT_ID": "b-1", "TIDEMARK_TEST_FROZEN_HOOK": "/t/hook.sh",
                                            "TIDEMARK_TEST_FAKE_RECURSION_MISS": "1", "PATH": "/bin"])
        #expect(on == TestSwitches(bootID: "b-1", frozenHook: "/t/hook.sh", fakeRecursionMiss: true))
        #expect(TestSwitches(environment: ["TIDEMARK_TEST_BOOT_ID": ""]).bootID == nil)
        #expect(TestSwitches(environment: ["TIDEMARK_TEST_FAKE_RECURSION_MISS": "yes"]).fakeRecursionMiss == false)
        let underFreeze = TestSwitches(environment: ["TIDEMARK_TEST_FAKE_RECURSION_MISS": "freeze"])
        #expect(underFreeze == TestSwitches(fakeRecursionMissUnderFreeze: true), "under a freeze only, not at the first drain")
    }

    /// The boot id is the override when one is set, else the kernel's.
    @Test func hostBootID() {
        #expect(TestSwitches(bootID: "simulated-reboot").hostBootID() == "simulated-reboot")
        let real = TestSwitches.off.hostBootID()
        #expect(real.count == 36 && !real.hasSuffix("\n"), "\(real)")
    }
}
