#!/usr/bin/env bash
# Compares the benchmark figures of two git revisions on this machine, for a
# regression check before a merge (docs/perf/README.md, "Comparing two
# revisions"). Needs root, like scripts/bench.sh.
#
#   scripts/bench-compare.sh [--rounds N] OLD_REV NEW_REV [MODE...]
#
# Builds release binaries of both revisions, each in its own git worktree
# .build-compare-<commit> at the repository root (ignored by git, kept for the
# next comparison; `--clean` removes them), then runs scripts/bench.sh of
# this checkout with the two builds alternated in one session, so that the
# host's drift over the hour favors neither:
# - replicate: one bench.sh run whose rounds alternate A and B
#   (TIDEMARK_BENCH_BIN_B; 2 × N rounds, SKIP_TOOLS=1 unless set);
# - every other mode: N rounds of (A then B), the order flipped every round
#   (A B, B A, A B, ...), each a whole bench.sh run of that mode.
# Prints, per figure, the median of each side, B/A, and whether B is better
# or worse (the direction depends on the figure), with every round's value.
# Logs of every run go to bench-out/compare-<time>/.
#
# MODE: the modes of scripts/bench.sh. Default: the figures the regression
# check names: replicate incremental rpo freeze recover scan (scan is the
# drain + list figure; rpo gives the RPO p99, the RSS growth during a
# server stall and the time to catch up). Also: writecost mirror memory idle
# appfreeze.
#
# Environment:
#   TIDEMARK_COMPARE_BIN_A=dir, TIDEMARK_COMPARE_BIN_B=dir
#       use binaries built elsewhere for that side instead of building the
#       revision (the revision then only names the side)
#   SKIP_TOOLS, INC_ROUNDS (default 5), FREEZE_POINTS, RECOVER_TARGET_DIR
#       (default /dev/shm; set it empty for the destination's own disk),
#       REPL_ROUNDS is 2 × --rounds; any other bench.sh variable passes through.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export PATH=/opt/swift/usr/bin:$PATH

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
rounds=3
clean=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) [ $# -ge 2 ] || usage; rounds=$2; shift 2 ;;
    --rounds=*) rounds=${1#--rounds=}; shift ;;
    --clean) clean=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "bench-compare: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
if [ "$clean" = 1 ]; then
  [ $# -eq 0 ] || { echo "bench-compare: --clean takes no revisions (it removes every .build-compare-* worktree)" >&2; exit 2; }
  for d in .build-compare-*; do
    [ -d "$d" ] || continue
    git worktree remove --force "$d" && echo "removed $d"
  done
  git worktree prune
  exit 0
fi
[ $# -ge 2 ] || usage
case "$rounds" in ''|*[!0-9]*|0) echo "bench-compare: --rounds takes a whole number ≥ 1, not '$rounds'" >&2; exit 2 ;; esac
rev_a=$1; rev_b=$2; shift 2
modes=("$@")
[ ${#modes[@]} -gt 0 ] || modes=(replicate incremental rpo freeze recover scan)
for m in "${modes[@]}"; do
  case "$m" in
    scan|writecost|mirror|memory|replicate|incremental|rpo|freeze|appfreeze|recover|idle) ;;
    *) echo "bench-compare: '$m' is not a mode of scripts/bench.sh (scan writecost mirror memory replicate incremental rpo freeze appfreeze recover idle)" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "bench-compare: the benchmarks need root (loop devices, the BPF tracer); run it as root" >&2
  exit 1
fi

commit_of() { # rev -> full commit id, or a clear error
  git rev-parse --verify --quiet "$1^{commit}" || { echo "bench-compare: '$1' is not a commit of this repository (git rev-parse)" >&2; exit 2; }
}

# Release binaries of a commit, built in its own worktree; prints the bin dir.
build_commit() { # commit
  local c=$1 dir=".build-compare-${1:0:12}" bin
  if [ ! -d "$dir" ]; then
    git worktree add --detach "$dir" "$c" >&2
  elif [ "$(git -C "$dir" rev-parse HEAD)" != "$c" ]; then
    echo "bench-compare: $dir exists but is not at $c; remove it (scripts/bench-compare.sh --clean)" >&2; exit 1
  fi
  echo "building $c in $dir (release) ..." >&2
  (cd "$dir" && swift build -c release 2>&1 | tail -n 1) >&2
  bin=$(cd "$dir" && swift build -c release --show-bin-path)
  check_bin "$bin" "$c"
  echo "$bin"
}
check_bin() { # dir what
  local b
  for b in tidemark-agent tidemark-server tidemarkctl tidemark-bench; do
    [ -x "$1/$b" ] || { echo "bench-compare: $1/$b is missing ($2)" >&2; exit 1; }
  done
}

# Builds run one after the other (never two at once on this machine).
if [ -n "${TIDEMARK_COMPARE_BIN_A:-}" ]; then bin_a=$TIDEMARK_COMPARE_BIN_A; check_bin "$bin_a" "TIDEMARK_COMPARE_BIN_A"
  commit_a=$rev_a
else commit_a=$(commit_of "$rev_a"); bin_a=$(build_commit "$commit_a"); fi
if [ -n "${TIDEMARK_COMPARE_BIN_B:-}" ]; then bin_b=$TIDEMARK_COMPARE_BIN_B; check_bin "$bin_b" "TIDEMARK_COMPARE_BIN_B"
  commit_b=$rev_b
elif [ -z "${TIDEMARK_COMPARE_BIN_A:-}" ] && [ "$(commit_of "$rev_b")" = "$commit_a" ]; then
  commit_b=$commit_a; bin_b=$bin_a   # the same commit: one build (an A/A run shows the noise)
else commit_b=$(commit_of "$rev_b"); bin_b=$(build_commit "$commit_b"); fi

out="$root/bench-out/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
figures="$out/figures.txt"   # lines: side figure value
: > "$figures"
echo "A = $rev_a ($commit_a): $bin_a"
echo "B = $rev_b ($commit_b): $bin_b"
echo "modes: ${modes[*]}; $rounds round(s) per side; logs in $out"

export SKIP_TOOLS=${SKIP_TOOLS:-1} INC_ROUNDS=${INC_ROUNDS:-5} RECOVER_TARGET_DIR=${RECOVER_TARGET_DIR-/dev/shm}

# The figures of one bench.sh log, as "name value" lines. The names say the
# unit; rates and ratios (_GBps, _MiBps, _ratio) are better higher, times,
# sizes and percentages lower (the table's "better" column).
extract() { # mode log
  local log=$2
  case "$1" in
    scan)
      grep '^drain + list:' "$log" | sed -n '1s/.*= \([0-9.]*\) GB\/s.*/drain_1pct_clustered_GBps \1/p; 2s/.*= \([0-9.]*\) GB\/s.*/drain_1pct_scattered_GBps \1/p' ;;
    writecost)
      sed -n 's/^IOPS ratio with\/without (median of pairs): \([0-9.]*\).*/writecost_iops_ratio \1/p' "$log"
      sed -n 's/^program: \([0-9]*\) ns per call.*/writecost_program_ns_per_call \1/p' "$log" ;;
    memory)
      sed -n 's/.* = \([0-9.]*\) MiB per TiB.*/tracking_MiB_per_TiB \1/p' "$log"
      sed -n 's/^agent RSS while tracking: \([0-9]*\) MiB.*/track_rss_MiB \1/p' "$log" ;;
    mirror)
      sed -n 's/^mirror\/fio ratio: \([0-9.]*\).*/mirror_ratio \1/p' "$log" ;;
    incremental)
      sed -n 's/^incremental, last write to committed: tidemark \([0-9.]*\) s.*/incremental_s \1/p' "$log" ;;
    rpo)
      sed -n 's/^steady RPO.*p50 \([0-9]*\) ms, p99 \([0-9]*\) ms.*/rpo_p50_ms \1\nrpo_p99_ms \2/p' "$log"
      sed -n 's/.*growth \(-\{0,1\}[0-9]*\) MiB.*/stall_rss_growth_MiB \1/p' "$log"
      sed -n 's/.*back to <= 2000 ms \([0-9.]*\) s after SIGCONT.*/catch_up_s \1/p' "$log" ;;
    freeze)
      sed -n 's/^freeze ms: p50 \([0-9.]*\), p99 \([0-9.]*\),.*/freeze_p50_ms \1\nfreeze_p99_ms \2/p' "$log" ;;
    appfreeze)
      sed -n 's/^app freeze ms: p50 \([0-9.]*\), p99 \([0-9.]*\),.*/appfreeze_p50_ms \1\nappfreeze_p99_ms \2/p' "$log" ;;
    recover)
      sed -n 's/^recover\/fio ratio: \([0-9.]*\).*/recover_ratio \1/p' "$log"
      sed -n 's/^fio seq write: .*; recover: \([0-9]*\) MiB\/s.*/recover_MiBps \1/p' "$log" ;;
    idle)
      sed -n 's/^agent CPU while idle: \([0-9.]*\)%.*/idle_cpu_pct \1/p' "$log"
      sed -n 's/^agent RSS: \([0-9]*\) MiB now.*/idle_rss_MiB \1/p' "$log" ;;
  esac
}

# One bench.sh run, serialized with any other benchmark on the machine.
bench() { # log mode [VAR=value...]
  local log=$1 mode=$2; shift 2
  if ! env "$@" flock /tmp/tidemark-bench.lock scripts/bench.sh "$mode" > "$log" 2>&1; then
    echo "bench-compare: scripts/bench.sh $mode failed ($*); the end of $log:" >&2
    tail -n 20 "$log" >&2
    exit 1
  fi
}

for mode in "${modes[@]}"; do
  if [ "$mode" = replicate ]; then
    log="$out/replicate.log"
    echo "== replicate: $((2 * rounds)) rounds alternating A and B in one run"
    bench "$log" replicate TIDEMARK_BENCH_BIN="$bin_a" TIDEMARK_BENCH_BIN_B="$bin_b" REPL_ROUNDS=$((2 * rounds))
    # "[A dir] round N: zstd ... ; tidemark T s = ... ; ratio R"
    sed -n 's/^\[\([AB]\) .*round [0-9]*: .*; tidemark \([0-9.]*\) s = .*; ratio \([0-9.]*\)$/\1 initial_replication_ratio \3\n\1 initial_replication_s \2/p' "$log" >> "$figures"
    grep -c '^\[[AB] ' "$log" >/dev/null || { echo "bench-compare: no A/B rounds found in $log" >&2; exit 1; }
    continue
  fi
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do
      if [ "$side" = A ]; then bin=$bin_a; else bin=$bin_b; fi
      log="$out/$mode-$side-$r.log"
      echo "== $mode, round $r of $rounds: $side"
      bench "$log" "$mode" TIDEMARK_BENCH_BIN="$bin"
      found=$(extract "$mode" "$log")
      [ -n "$found" ] || { echo "bench-compare: no figure found in $log (did bench.sh's output change?)" >&2; exit 1; }
      echo "$found" | sed "s/^/$side /" >> "$figures"
      echo "$found" | sed 's/^/   /'
    done
  done
done

echo
echo "A = $rev_a, B = $rev_b; each side's median, and every round's value in run order"
python3 - "$figures" <<'PY'
import sys
from collections import OrderedDict
rows = OrderedDict()
for line in open(sys.argv[1]):
    side, name, value = line.split()
    try:
        v = float(value)
    except ValueError:
        continue            # "never" and the like: shown as missing
    rows.setdefault(name, {"A": [], "B": []})[side].append(v)
def median(xs):
    s = sorted(xs); n = len(s)
    return None if n == 0 else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)
def better(name):
    return "higher" if name.endswith(("_GBps", "_ratio", "_MiBps")) else "lower"
def fmt(x):
    return "-" if x is None else ("%.4g" % x)
head = ("figure", "better", "A", "B", "B/A", "B vs A", "A rounds", "B rounds")
table = [head]
for name, sides in rows.items():
    a, b = median(sides["A"]), median(sides["B"])
    ratio = b / a if a not in (None, 0) and b is not None else None
    verdict = "-"
    if ratio is not None:
        gain = (ratio - 1) if better(name) == "higher" else (1 - ratio)
        verdict = "same" if gain == 0 else "%.1f%% %s" % (abs(gain) * 100, "better" if gain > 0 else "worse")
    table.append((name, better(name), fmt(a), fmt(b), "-" if ratio is None else "%.3f" % ratio, verdict,
                  " ".join(fmt(x) for x in sides["A"]), " ".join(fmt(x) for x in sides["B"])))
widths = [max(len(r[i]) for r in table) for i in range(len(head))]
for i, r in enumerate(table):
    print("| " + " | ".join(c.ljust(widths[j]) for j, c in enumerate(r)) + " |")
    if i == 0:
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
PY
echo
echo "This machine's device and CPU rates swing run to run (docs/perf/README.md): a"
echo "difference inside the spread of either side's rounds is noise, not a regression."
