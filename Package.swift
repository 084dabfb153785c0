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
        .library(name: "TidemarkLibraries", targets: ["TidemarkSystem", "TidemarkCrypto", "TidemarkCompression", "TidemarkTransport",
                                                      "TidemarkTracking", "TidemarkConfigFiles", "TidemarkWire", "TidemarkStorage", "TidemarkTarget",
                                                      "TidemarkSurface", "TidemarkDaemon", "TidemarkAgentCore", "TidemarkServerCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // The C shims: each is imported by the one Swift target of the same
        // name without the C, and links only the libraries that target needs.
        .target(
            name: "CTidemarkSystem",
            path: "CSources/CTidemarkSystem",
            exclude: ["tracer_bpf_object.h"],
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z"), .linkedLibrary("uring"),
                              .linkedLibrary("ext2fs"), .linkedLibrary("com_err")]
        ),
        .target(
            name: "CTidemarkCrypto",
            path: "CSources/CTidemarkCrypto",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("crypto")]
        ),
        .target(
            name: "CTidemarkCompression",
            path: "CSources/CTidemarkCompression",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("zstd")]
        ),
        .target(
            name: "CTidemarkTransport",
            path: "CSources/CTidemarkTransport",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // Syscalls and typed errors, file descriptors, block devices, the BPF
        // tracer and its drain, io_uring readers and writers, worker and
        // buffer pools; and the primitives every layer shares: the byte
        // codec, ChunkSet, the clock, CRC32C, small-file reads; logging.
        .target(name: "TidemarkSystem", dependencies: ["CTidemarkSystem", .product(name: "Logging", package: "swift-log")]),
        // AES-256-GCM, SHA-256, HMAC-SHA-256, the chunk digests' PRF, random bytes (OpenSSL libcrypto).
        .target(name: "TidemarkCrypto", dependencies: ["CTidemarkCrypto", "TidemarkSystem"]),
        // zstd compression of sealed segments.
        .target(name: "TidemarkCompression", dependencies: ["CTidemarkCompression", "TidemarkSystem"]),
        // TCP sockets with timeouts and TLS 1.3 with mutual authentication (OpenSSL libssl).
        .target(name: "TidemarkTransport", dependencies: ["CTidemarkTransport", "TidemarkSystem"]),
        // The programs' outward surface: the control-socket protocol (requests,
        // replies, status) and the JSON every `--json` prints, shared by the
        // agent and tidemarkctl; the metric names of docs/metrics.md.
        .target(name: "TidemarkSurface"),
        // The daemons' services (swift-service-lifecycle): threads as services,
        // SIGTERM/SIGINT as graceful shutdown, SIGHUP as reload.
        .target(name: "TidemarkDaemon", dependencies: ["TidemarkSystem",
                                                       .product(name: "Logging", package: "swift-log"),
                                                       .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                                       .product(name: "UnixSignals", package: "swift-service-lifecycle")]),
        // The .hrl change-tracking file and bitmap algorithms (pure logic on top of TidemarkSystem I/O).
        .target(name: "TidemarkTracking", dependencies: ["TidemarkSystem"]),
        // Configuration files (/etc/tidemark/*.yaml) with file:line errors (the files,
        // not the configuration server).
        .target(name: "TidemarkConfigFiles", dependencies: [.product(name: "Yams", package: "Yams")]),
        // Agent modes: track, untrack, mirror, run.
        .target(name: "TidemarkAgentCore", dependencies: ["TidemarkSystem", "TidemarkCrypto", "TidemarkTransport", "TidemarkStorage", "TidemarkDaemon",
                                                          "TidemarkTracking", "TidemarkConfigFiles", "TidemarkWire", "TidemarkSurface",
                                                          .product(name: "Logging", package: "swift-log"),
                                                          .product(name: "Metrics", package: "swift-metrics"),
                                                          .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                                          .product(name: "UnixSignals", package: "swift-service-lifecycle")]),
        // Wire format: frames, sealed segments (zstd + AES-256-GCM), replication keys.
        .target(name: "TidemarkWire", dependencies: ["TidemarkSystem", "TidemarkCrypto", "TidemarkCompression"]),
        // Storage backends that know nothing of Tidemark's layout: the ObjectStore
        // protocol (local directory, memory; S3 later) and ImageWriter (disk images
        // on files and block devices).
        .target(name: "TidemarkStorage", dependencies: ["TidemarkSystem"]),
        // Target storage: TargetRepository (layout, recovery points, prune, digest
        // index, materialize) above any ObjectStore.
        .target(name: "TidemarkTarget", dependencies: ["TidemarkSystem", "TidemarkCrypto", "TidemarkStorage"]),
        // The process server: TLS ingest, durable spool, uploader to target storage.
        .target(name: "TidemarkServerCore", dependencies: ["TidemarkSystem", "TidemarkTransport", "TidemarkDaemon", "TidemarkWire", "TidemarkTarget",
                                                           "TidemarkConfigFiles", "TidemarkSurface",
                                                           .product(name: "Logging", package: "swift-log"),
                                                           .product(name: "Metrics", package: "swift-metrics"),
                                                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                                           .product(name: "UnixSignals", package: "swift-service-lifecycle")]),
        // tidemarkctl's commands: points, recover.
        .target(name: "TidemarkCtlCore", dependencies: ["TidemarkSystem", "TidemarkWire", "TidemarkTarget", "TidemarkConfigFiles", "TidemarkSurface"]),
        // The bitmap debug tool's commands, as a library so tests can call them.
        .target(name: "TidemarkBitmapTool", dependencies: ["TidemarkSystem", "TidemarkTracking", "TidemarkSurface"]),
        // The seeded simulation of agent, network, server and target storage (docs/simulation.md).
        .target(name: "TidemarkSimulation", dependencies: ["TidemarkAgentCore", "TidemarkServerCore", "TidemarkTarget", "TidemarkStorage", "TidemarkWire",
                                                           "TidemarkCrypto", "TidemarkSystem"]),
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
            dependencies: ["TidemarkBitmapTool", "TidemarkSystem", .product(name: "ArgumentParser", package: "swift-argument-parser")]
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
        .testTarget(name: "TidemarkSystemTests", dependencies: ["TidemarkSystem", "TidemarkTesting", .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "TidemarkTransportTests", dependencies: ["TidemarkTransport", "TidemarkSystem", "TidemarkTesting"]),
        .testTarget(name: "TidemarkTrackingTests", dependencies: ["TidemarkTracking", "TidemarkTesting"]),
        .testTarget(name: "TidemarkWireTests", dependencies: ["TidemarkWire", "TidemarkSystem", "TidemarkCrypto", "TidemarkCompression", "TidemarkTesting"]),
        .testTarget(name: "TidemarkTargetTests", dependencies: ["TidemarkTarget", "TidemarkStorage", "TidemarkStorageTesting", "TidemarkSystem", "TidemarkCrypto", "TidemarkTesting"]),
        .testTarget(name: "TidemarkConfigFilesTests", dependencies: ["TidemarkConfigFiles"]),
        .testTarget(name: "TidemarkBitmapToolTests", dependencies: ["TidemarkBitmapTool", "TidemarkTracking", "TidemarkTesting", "TidemarkSurface"]),
        .testTarget(name: "TidemarkServerCoreTests", dependencies: ["TidemarkServerCore", "TidemarkSystem", "TidemarkTesting",
                                                                    .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "TidemarkAgentCoreTests", dependencies: ["TidemarkAgentCore", "TidemarkConfigFiles", "TidemarkSurface", "TidemarkSystem", "TidemarkCtlCore", "TidemarkDaemon", "TidemarkTesting",
                                                                   .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                                                   .product(name: "Logging", package: "swift-log"),
                                                                   .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "TidemarkSurfaceTests", dependencies: ["TidemarkSurface"]),
        .testTarget(name: "TidemarkCtlCoreTests", dependencies: ["TidemarkCtlCore", "TidemarkStorage", "TidemarkTarget", "TidemarkWire", "TidemarkSystem", "TidemarkTesting", "TidemarkSurface"]),
        .testTarget(name: "TidemarkSimulationTests", dependencies: ["TidemarkSimulation", "TidemarkTesting"]),
        .testTarget(name: "IntegrationTests", dependencies: ["TidemarkSystem", "TidemarkCrypto", "TidemarkTransport", "TidemarkTracking", "TidemarkWire", "TidemarkTesting"]),
    ],
    swiftLanguageModes: [.v6]
)
