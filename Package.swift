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
            ]
        ),
        // Syscalls, typed errors, block devices, the BPF tracer, the io_uring reader.
        .target(name: "TidemarkSystem", dependencies: ["CTidemark"]),
        // The .hrl change-tracking file and bitmap algorithms (pure logic on top of TidemarkSystem I/O).
        .target(name: "TidemarkTracking", dependencies: ["TidemarkSystem"]),
        // Configuration files (/etc/tidemark/*.yaml) with file:line errors.
        .target(name: "TidemarkConfig", dependencies: [.product(name: "Yams", package: "Yams")]),
        // Agent modes: track, untrack, mirror.
        .target(name: "TidemarkAgentCore", dependencies: ["TidemarkSystem", "TidemarkTracking", "TidemarkConfig"]),
        // The bitmap debug tool's commands, as a library so tests can call them.
        .target(name: "TidemarkBitmapTool", dependencies: ["TidemarkSystem", "TidemarkTracking"]),
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
            dependencies: ["TidemarkSystem", "TidemarkTracking", "TidemarkAgentCore",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .target(name: "TidemarkTesting", dependencies: ["TidemarkSystem"], path: "Tests/TidemarkTesting"),
        .testTarget(name: "TidemarkSystemTests", dependencies: ["TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkTrackingTests", dependencies: ["TidemarkTracking", "TidemarkTesting"]),
        .testTarget(name: "TidemarkConfigTests", dependencies: ["TidemarkConfig"]),
        .testTarget(name: "TidemarkBitmapToolTests", dependencies: ["TidemarkBitmapTool", "TidemarkTracking", "TidemarkTesting"]),
        .testTarget(name: "IntegrationTests", dependencies: ["TidemarkSystem", "TidemarkTracking", "TidemarkTesting"]),
    ],
    swiftLanguageModes: [.v6]
)
