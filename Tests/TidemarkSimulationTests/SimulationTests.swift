import Foundation
import Testing
import TidemarkSimulation

/// The seeded simulation (docs/simulation.md) in the test suite: a short
/// randomized run on every test run, with seeds chosen for it and printed,
/// so that a failure reproduces with the `tidemark-sim` command it prints.
/// TIDEMARK_SIM_SEED fixes the seed (to replay one here). The long runs are
/// scripts/sim.sh's.
@Suite struct SimulationTests {
    static let steps = 4_000

    @Test func aShortRandomizedRunFindsNothingWrong() throws {
        let fixed = ProcessInfo.processInfo.environment["TIDEMARK_SIM_SEED"].flatMap { UInt64($0) }
        let seeds = fixed.map { [$0] } ?? (0..<3).map { _ in UInt64.random(in: 0...UInt64(Int64.max)) }
        for seed in seeds {
            let outcome = try Simulation(Simulation.Options(seed: seed, steps: Self.steps)).run()
            print("simulation: \(outcome)")
            #expect(outcome.failure == nil, "reproduce: \(outcome.replay)\n\(outcome)")
            #expect(outcome.steps >= Self.steps, "the run stopped before its steps: \(outcome)")
        }
    }

    /// Seeds that once failed (docs/simulation.md lists what they found),
    /// with steps enough to reach the failure: they run on every test run.
    @Test(arguments: [(100, 4_000), (101, 4_000), (108, 4_000), (64_838_639_500_371_140, 16_000)] as [(UInt64, Int)])
    func seedsThatOnceFailedPass(seed: UInt64, steps: Int) throws {
        let outcome = try Simulation(Simulation.Options(seed: seed, steps: steps)).run()
        #expect(outcome.failure == nil, "reproduce: \(outcome.replay)\n\(outcome)")
    }

    @Test func aRunIsAFunctionOfItsSeed() throws {
        let seed: UInt64 = 0x5EED
        let a = try Simulation(Simulation.Options(seed: seed, steps: 1_500)).run()
        let b = try Simulation(Simulation.Options(seed: seed, steps: 1_500)).run()
        #expect(a.failure == nil && b.failure == nil)
        #expect(a.steps == b.steps && a.simulatedSeconds == b.simulatedSeconds && a.summary == b.summary)
        #expect(a.description == b.description)
        // Another seed is another run.
        let c = try Simulation(Simulation.Options(seed: seed + 1, steps: 1_500)).run()
        #expect(c.summary != a.summary)
    }

    /// The evidence that the checker finds a real class of bug: an agent
    /// that takes "durable in the spool" for "stored in the target" clears
    /// change-tracking bits and reports points committed too early. Planted
    /// in the simulation's agent shell (`PlantedBug.clearsBitsWhenDurable`),
    /// it must be found within a few seeds, and the failing run must replay
    /// to the same failure.
    @Test func aPlantedBugIsFoundWithinAFewSeeds() throws {
        var found: Simulation.Outcome?
        for seed in UInt64(100)..<108 {
            let outcome = try Simulation(Simulation.Options(seed: seed, steps: Self.steps, plantedBug: .clearsBitsWhenDurable)).run()
            if outcome.failure != nil {
                found = outcome
                break
            }
        }
        let outcome = try #require(found, "the planted bug went unnoticed for 8 seeds")
        print("simulation with a planted bug: \(outcome)")
        let failure = try #require(outcome.failure)
        #expect(failure.contains("clean in the kernel map and the .hrl") || failure.contains("but the target does not hold it"),
                "an unexpected failure: \(failure)")
        #expect(outcome.description.contains("--seed \(outcome.seed)") && outcome.description.contains("--plant clearsBitsWhenDurable"))
        let again = try Simulation(Simulation.Options(seed: outcome.seed, steps: Self.steps, plantedBug: .clearsBitsWhenDurable)).run()
        #expect(again.failure == outcome.failure && again.steps == outcome.steps)
        // Without the bug the same seed passes.
        let clean = try Simulation(Simulation.Options(seed: outcome.seed, steps: Self.steps)).run()
        #expect(clean.failure == nil, "reproduce: \(clean.replay)\n\(clean)")
    }
}
