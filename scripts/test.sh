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

# Skipped is not passed: a test the machine cannot run (root, tracefs, ...)
# is reported by Swift Testing as `Test name() skipped: "reason"` (the
# condition traits of Tests/TidemarkTesting/Requirements.swift), and the end
# of this script counts them and lists why. CI=true makes them fail instead.
results=$(mktemp /tmp/tidemark-test-output.XXXXXX)
trap 'rm -f "$results"' EXIT
skipped_here=()   # what this script itself skipped
tests_status=0
swift_test() { swift test --skip-build "$@" 2>&1 | tee -a "$results" || tests_status=1; }
summarize_skips() {
  local n reasons
  n=$(grep -cE ' (Test|Suite) .* skipped' "$results" || true)
  reasons=$(grep -E ' (Test|Suite) .* skipped' "$results" |
    sed -E 's/.* (Test|Suite) .* skipped(: "(.*)")?[.]?$/\3/; s/^$/(no reason given)/' | sort | uniq -c | sort -rn)
  echo
  if [ "$n" = 0 ] && [ ${#skipped_here[@]} -eq 0 ]; then
    echo "skipped: none"
    return
  fi
  echo "skipped: $n Swift test(s)${skipped_here[0]:+ and ${#skipped_here[@]} other step(s)} this machine cannot run (CI=true fails them):"
  [ -z "$reasons" ] || echo "$reasons" | sed -E 's/^ *([0-9]+) /  \1 × /'
  local s
  for s in ${skipped_here[@]+"${skipped_here[@]}"}; do echo "  $s"; done
}

if [ $# -eq 0 ]; then
  # The probe-churn test switches ftrace probes on block_rq_complete on and
  # off, which makes the kernel skip other tests' tracer probes too: it runs
  # alone, after the others.
  churn=CompletionCrossCheckTests.writesCompletedWhileProbesChangeAreNeverLost
  swift_test --skip "$churn"
  swift_test --filter "$churn"
else
  swift_test "$@"
fi
if [ "$tests_status" != 0 ]; then
  summarize_skips
  echo "error: some Swift tests failed (above)" >&2
  exit 1
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
    skipped_here+=("the package tests (Packaging/test-deb.sh): need root")
  fi
fi
summarize_skips
