#!/usr/bin/env bash
# Runs every test: the generated BPF object check, unit tests and, as root,
# the integration tests on real loop devices (which CI=true forbids skipping).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/opt/swift/usr/bin:$PATH
CSources/bpf/build.sh --check
swift build --build-tests 2>&1 | tail -n 3
swift test --skip-build "$@"
