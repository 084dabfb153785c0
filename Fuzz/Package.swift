// swift-tools-version: 6.0
import PackageDescription

// Coverage-guided fuzz targets (libFuzzer) for Tidemark's decoders; see
// docs/fuzzing.md. Build only these products, in release mode with
//   -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -enable-testing
// (scripts/fuzz.sh does it): -enable-testing lets targets reach internal
// decoders with `@testable import` without changing Sources/.
let targets = ["frames", "segment-header", "segment-open", "spool", "envelope", "digest-index", "hrl", "shutdown-seal", "config", "server", "receiver", "control"]

let package = Package(
    name: "TidemarkFuzz",
    products: targets.map { .executable(name: "fuzz-" + $0, targets: ["fuzz-" + $0]) },
    dependencies: [.package(name: "Tidemark", path: "..")],
    targets: [
        // libFuzzer's driver entry point (see Sources/CFuzzDriver/include/CFuzzDriver.h).
        .target(name: "CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver", .product(name: "TidemarkLibraries", package: "Tidemark")]),
    ] + targets.map {
        .executableTarget(name: "fuzz-" + $0, dependencies: ["FuzzSupport", .product(name: "TidemarkLibraries", package: "Tidemark")])
    },
    swiftLanguageModes: [.v6]
)
