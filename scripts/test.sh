#!/usr/bin/env bash
# Runs every test: the generated BPF object check, unit tests and, as root,
# the integration tests on real loop devices (which CI=true forbids skipping),
# then the package tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/opt/swift/usr/bin:$PATH
CSources/bpf/build.sh --check
swift build --build-tests 2>&1 | tail -n 3
swift test --skip-build "$@"
# The Debian packages: built, installed into a debootstrap chroot and on this
# machine, upgraded, removed, purged (Packaging/test-deb.sh; root only).
if [ $# -eq 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    Packaging/test-deb.sh
  elif [ "${CI:-}" = true ]; then
    echo "error: the package tests need root (CI=true forbids skipping them)" >&2; exit 1
  else
    echo "skipped: the package tests (Packaging/test-deb.sh) need root"
  fi
fi
