// swift-tools-version: 6.0
import PackageDescription

// Coverage-guided fuzz targets (libFuzzer) for Tidemark's decoders; see
// docs/fuzzing.md. Build only these products, with
//   -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library
// (scripts/fuzz.sh does it).
let package = Package(
    name: "TidemarkFuzz",
    dependencies: [.package(name: "Tidemark", path: "..")],
    targets: [
        // libFuzzer's driver entry point (see Sources/CFuzzDriver/include/CFuzzDriver.h).
        .target(name: "CFuzzDriver"),
        .target(name: "FuzzSupport", dependencies: ["CFuzzDriver", .product(name: "TidemarkLibraries", package: "Tidemark")]),
        .executableTarget(name: "fuzz-frames", dependencies: ["FuzzSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
