// swift-tools-version: 6.0
import PackageDescription

// Tidemark: block-level continuous replication and disaster recovery.
// Library targets by concern; executables only wire them together.
let package = Package(
    name: "Tidemark",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "tidemark-agent", targets: ["tidemark-agent"]),
        .executable(name: "tidemark-bitmap", targets: ["tidemark-bitmap"]),
        .executable(name: "tidemark-bench", targets: ["tidemark-bench"]),
        .executable(name: "tidemark-server", targets: ["tidemark-server"]),
        .executable(name: "tidemarkctl", targets: ["tidemarkctl"]),
        .executable(name: "tidemark-sim", targets: ["tidemark-sim"]),
        // The libraries, for the fuzz package (Fuzz/Package.swift, docs/fuzzing.md).
        .library(name: "TidemarkLibraries", targets: ["TidemarkSystem", "TidemarkTracking", "TidemarkConfig", "TidemarkWire", "TidemarkStorage", "TidemarkTarget", "TidemarkAgentCore", "TidemarkServerCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // The C shim. Only TidemarkSystem imports it.
        .target(
            name: "CTidemark",
            path: "CSources/CTidemark",
            exclude: ["tracer_bpf_object.h"],
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [
                .linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z"), .linkedLibrary("uring"),
                .linkedLibrary("zstd"), .linkedLibrary("ssl"), .linkedLibrary("crypto"),
            ]
        ),
        // Syscalls, typed errors, block devices, the BPF tracer, the io_uring reader.
        .target(name: "TidemarkSystem", dependencies: ["CTidemark"]),
        // The .hrl change-tracking file and bitmap algorithms (pure logic on top of TidemarkSystem I/O).
        .target(name: "TidemarkTracking", dependencies: ["TidemarkSystem"]),
        // Configuration files (/etc/tidemark/*.yaml) with file:line errors.
        .target(name: "TidemarkConfig", dependencies: [.product(name: "Yams", package: "Yams")]),
        // Agent modes: track, untrack, mirror.
        .target(name: "TidemarkAgentCore", dependencies: ["TidemarkSystem", "TidemarkStorage", "TidemarkTracking", "TidemarkConfig", "TidemarkWire"]),
        // Wire format: frames, sealed segments (zstd + AES-256-GCM), replication keys.
        .target(name: "TidemarkWire", dependencies: ["TidemarkSystem"]),
        // Storage backends that know nothing of Tidemark's layout: the ObjectStore
        // protocol (local directory, memory; S3 later) and ImageWriter (disk images
        // on files and block devices).
        .target(name: "TidemarkStorage", dependencies: ["TidemarkSystem"]),
        // Target storage: TargetRepository (layout, recovery points, prune, digest
        // index, materialize) above any ObjectStore.
        .target(name: "TidemarkTarget", dependencies: ["TidemarkSystem", "TidemarkStorage"]),
        // The process server: TLS ingest, durable spool, uploader to target storage.
        .target(name: "TidemarkServerCore", dependencies: ["TidemarkSystem", "TidemarkWire", "TidemarkTarget", "TidemarkConfig"]),
        // tidemarkctl's commands: points, recover.
        .target(name: "TidemarkCtlCore", dependencies: ["TidemarkSystem", "TidemarkWire", "TidemarkTarget", "TidemarkConfig"]),
        // The bitmap debug tool's commands, as a library so tests can call them.
        .target(name: "TidemarkBitmapTool", dependencies: ["TidemarkSystem", "TidemarkTracking"]),
        // The seeded simulation of agent, network, server and target storage (docs/simulation.md).
        .target(name: "TidemarkSimulation", dependencies: ["TidemarkAgentCore", "TidemarkServerCore", "TidemarkTarget", "TidemarkStorage", "TidemarkWire", "TidemarkSystem"]),
        .executableTarget(
            name: "tidemark-sim",
            dependencies: ["TidemarkSimulation", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "tidemark-agent",
            dependencies: ["TidemarkAgentCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "tidemark-bitmap",
            dependencies: ["TidemarkBitmapTool", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "tidemark-bench",
            dependencies: ["TidemarkSystem", "TidemarkTracking", "TidemarkAgentCore", "TidemarkTarget", "TidemarkServerCore",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "tidemark-server",
            dependencies: ["TidemarkServerCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "tidemarkctl",
            dependencies: ["TidemarkCtlCore", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .target(name: "TidemarkTesting", dependencies: ["TidemarkSystem"], path: "Tests/TidemarkTesting"),
        // The ObjectStore conformance suite: every store's tests run it (restic's style).
        .target(name: "TidemarkStorageTesting", dependencies: ["TidemarkStorage", "TidemarkSystem", "TidemarkTesting"], path: "Tests/TidemarkStorageTesting"),
        .testTarget(name: "TidemarkStorageTests", dependencies: ["TidemarkStorage", "TidemarkStorageTesting", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkSystemTests", dependencies: ["TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkTrackingTests", dependencies: ["TidemarkTracking", "TidemarkTesting"]),
        .testTarget(name: "TidemarkWireTests", dependencies: ["TidemarkWire", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkTargetTests", dependencies: ["TidemarkTarget", "TidemarkStorage", "TidemarkStorageTesting", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkConfigTests", dependencies: ["TidemarkConfig"]),
        .testTarget(name: "TidemarkBitmapToolTests", dependencies: ["TidemarkBitmapTool", "TidemarkTracking", "TidemarkTesting"]),
        .testTarget(name: "TidemarkServerCoreTests", dependencies: ["TidemarkServerCore", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkAgentCoreTests", dependencies: ["TidemarkAgentCore", "TidemarkConfig", "TidemarkWire", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkCtlCoreTests", dependencies: ["TidemarkCtlCore", "TidemarkStorage", "TidemarkTarget", "TidemarkWire", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkSimulationTests", dependencies: ["TidemarkSimulation", "TidemarkTesting"]),
        .testTarget(name: "IntegrationTests", dependencies: ["TidemarkSystem", "TidemarkTracking", "TidemarkWire", "TidemarkTesting"]),
    ],
    swiftLanguageModes: [.v6]
)
