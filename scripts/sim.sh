#!/usr/bin/env bash
# The long runs of the seeded simulation (docs/simulation.md): builds
# tidemark-sim in release and runs RUNS simulations with consecutive seeds
# from SEED (default: a random one), STEPS events each. Every run prints its
# seed; the first failure prints the command that replays it and ends the
# script with status 1.
#
#   scripts/sim.sh                 # 200 runs of 20000 steps from a random seed
#   scripts/sim.sh 1000 50000      # RUNS STEPS
#   SEED=12345 scripts/sim.sh 1    # one seed again
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
runs=${1:-200}
steps=${2:-20000}
seed=${SEED:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ' )}
# Seeds are consecutive from the first: keep the first below 2^63 so the
# printed seeds stay readable (any UInt64 is valid).
seed=$((seed & 0x7fffffffffffffff))
swift build -c release --product tidemark-sim 2>&1 | tail -n 1
bin=$(swift build -c release --show-bin-path)/tidemark-sim
echo "scripts/sim.sh: $runs runs of $steps steps from seed $seed (replay one: SEED=<seed> scripts/sim.sh 1 $steps)"
start=$(date +%s)
status=0
"$bin" --seed "$seed" --runs "$runs" --steps "$steps" || status=$?
echo "scripts/sim.sh: $([ $status = 0 ] && echo "all $runs runs passed" || echo "FAILED (status $status)") in $(( $(date +%s) - start )) s"
exit $status
