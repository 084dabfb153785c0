#!/usr/bin/env bash
# Runs every test: the generated BPF object check, unit tests and, as root,
# the integration tests on real loop devices (which CI=true forbids skipping),
# then the package tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/opt/swift/usr/bin:$PATH
# The probe-churn test switches ftrace probes in tracefs instances; a new
# machine has tracefs unmounted. (The agent itself needs only bpffs.)
if [ "$(id -u)" = 0 ] && ! mountpoint -q /sys/kernel/tracing; then
  mount -t tracefs nodev /sys/kernel/tracing
  echo "mounted tracefs at /sys/kernel/tracing (the completion cross-check test switches ftrace probes there)"
fi
CSources/bpf/build.sh --check
swift build --build-tests 2>&1 | tail -n 3
if [ $# -eq 0 ]; then
  # The probe-churn test switches ftrace probes on block_rq_complete on and
  # off, which makes the kernel skip other tests' tracer probes too: it runs
  # alone, after the others.
  churn=CompletionCrossCheckTests.writesCompletedWhileProbesChangeAreNeverLost
  swift test --skip-build --skip "$churn"
  swift test --skip-build --filter "$churn"
else
  swift test --skip-build "$@"
fi
# The decoders under libFuzzer, ~20 s per target (docs/fuzzing.md).
[ $# -ne 0 ] || scripts/fuzz.sh --ci
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
