// tidemark-sim: runs the seeded simulation (docs/simulation.md). Only
// argument parsing lives here; the simulation is in TidemarkSimulation.
import ArgumentParser
import TidemarkSimulation

struct TidemarkSim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tidemark-sim",
        abstract: "Runs agent, network, process server and target storage in one process from a seed, with faults, and checks every recovery point.",
        discussion: """
            A run is a pure function of its seed and --steps/--seconds: a failure prints its seed, and \
            `tidemark-sim --seed <seed> --steps <steps> --trace` replays it event by event. \
            Exit status 0 when every run passed, 1 at the first failure.
            """)

    @Option(help: "The seed of the first run (default: a random one, printed).")
    var seed: UInt64?

    @Option(help: "Events per run before the faults stop and the run must converge.")
    var steps: Int = 20_000

    @Option(help: "Simulated seconds per run before the same (whichever comes first).")
    var seconds: Double = 600

    @Option(help: "Runs, with consecutive seeds; stops at the first failure.")
    var runs: Int = 1

    @Flag(help: "Print every event of the run (use with --seed to replay one).")
    var trace = false

    @Option(help: "Plant a bug on purpose, to see the checker find it: \(Simulation.PlantedBug.allCases.map(\.rawValue).joined(separator: ", ")).")
    var plant: String?

    func validate() throws {
        guard steps >= 1, seconds > 0, runs >= 1 else {
            throw ValidationError("--steps, --seconds and --runs must be positive")
        }
        if let plant, Simulation.PlantedBug(rawValue: plant) == nil {
            throw ValidationError("--plant \(plant) is not a bug the simulation can plant; use one of \(Simulation.PlantedBug.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        let first = seed ?? UInt64.random(in: 0...UInt64(Int64.max))
        print("tidemark-sim: \(runs) run\(runs == 1 ? "" : "s") from seed \(first), \(steps) steps or \(seconds) simulated s each")
        for i in 0..<runs {
            let s = first &+ UInt64(i)
            let outcome = try Simulation(Simulation.Options(seed: s, steps: steps, seconds: seconds, trace: trace,
                                                            plantedBug: plant.flatMap(Simulation.PlantedBug.init(rawValue:)))).run()
            print(outcome)
            if outcome.failure != nil { throw ExitCode(1) }
        }
    }
}

TidemarkSim.main()
