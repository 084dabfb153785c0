#!/usr/bin/env bash
# Coverage-guided fuzzing of Tidemark's decoders (libFuzzer; docs/fuzzing.md).
#
#   scripts/fuzz.sh --ci                 build once, run every target over its
#                                        committed corpus for FUZZ_CI_SECONDS
#                                        (default 20) each; non-zero on a crash
#   scripts/fuzz.sh --seconds N [T...]   long run of the targets T (default:
#                                        all), N seconds each, one at a time;
#                                        prints a results table
#   scripts/fuzz.sh --build              only build
#   scripts/fuzz.sh --seeds              rewrite the committed seed corpus
#                                        Fuzz/corpus/<target> from the real
#                                        encoders (each target's seeds())
#   scripts/fuzz.sh --list               the targets
#
# Builds in Fuzz/.build-fuzz (FUZZ_BUILD_DIR). Corpus growth and crash
# reproducers go to FUZZ_WORK (default Fuzz/.build-fuzz/work), never into
# the committed corpus (Fuzz/corpus/<target>). Extra libFuzzer flags:
# FUZZ_FLAGS. One fuzzing process at a time (-jobs/-workers are not used).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
root=$PWD
targets_all=(frames segment-header segment-open spool envelope digest-index hrl shutdown-seal config server receiver control)
build_dir=${FUZZ_BUILD_DIR:-$root/Fuzz/.build-fuzz}
work=${FUZZ_WORK:-$build_dir/work}
bin=$build_dir/release
# Swift's own crash handler would report a trap instead of libFuzzer/ASan
# (and trips ASan itself): off, so every crash is libFuzzer's "deadly signal".
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0}

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

# Largest input per target (whole files for hrl, spool, digest-index).
max_len() {
  case $1 in
    hrl) echo 32768 ;;
    spool|digest-index|server) echo 16384 ;;
    shutdown-seal) echo 12288 ;;
    *) echo 4096 ;;
  esac
}

build() {
  local t start=$SECONDS
  echo "building the fuzz targets (release, -sanitize=fuzzer,address) in $build_dir ..."
  mkdir -p "$build_dir"
  cp -f "$root/Package.resolved" "$root/Fuzz/Package.resolved" 2>/dev/null || true
  # One product at a time: `swift build` honours only the last --product,
  # and building everything would compile the main package's executables
  # with -parse-as-library (which they cannot take).
  for t in "${targets_all[@]}"; do
    if ! swift build --package-path "$root/Fuzz" -c release --scratch-path "$build_dir" --product "fuzz-$t" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -enable-testing \
        >"$build_dir/build-$t.log" 2>&1; then
      grep -E "error:" "$build_dir/build-$t.log" | head -20 >&2 || tail -20 "$build_dir/build-$t.log" >&2
      echo "error: building fuzz-$t failed (log: $build_dir/build-$t.log)" >&2
      exit 1
    fi
  done
  echo "built ${#targets_all[@]} targets in $((SECONDS - start)) s"
}

# run TARGET SECONDS: one libFuzzer run; sets the globals r_* from its output.
run() {
  local t=$1 secs=$2 out corpus log dict=()
  out=$work/artifacts/$t
  corpus=$work/corpus/$t
  log=$work/logs/$t.log
  mkdir -p "$out" "$corpus" "$(dirname "$log")"
  [ -f "$root/Fuzz/dict/$t.dict" ] && dict=(-dict="$root/Fuzz/dict/$t.dict")
  local before
  before=$(find "$out" -type f | wc -l)
  set +e
  # shellcheck disable=SC2086
  "$bin/fuzz-$t" "$corpus" "$root/Fuzz/corpus/$t" -max_total_time="$secs" -max_len="$(max_len "$t")" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$out/" "${dict[@]}" ${FUZZ_FLAGS:-} >"$log" 2>&1
  r_status=$?
  set -e
  r_log=$log
  r_crashes=$(( $(find "$out" -type f | wc -l) - before ))
  r_reproducer=$(find "$out" -type f -newer "$log.start" 2>/dev/null | head -1)
  [ -n "$r_reproducer" ] || r_reproducer=$({ grep -o "Test unit written to .*" "$log" || true; } | head -1 | sed 's/Test unit written to //')
  local last
  last=$({ grep -E "^#[0-9]+.* cov: " "$log" || true; } | tail -1)
  r_cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  r_ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  r_corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  r_execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  # A crashed run prints no final stats: the last status line's count.
  [ -n "$r_execs" ] || r_execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")
  r_eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
}

fuzz_targets() {
  local secs=$1; shift
  local t failed=()
  mkdir -p "$work/logs"
  printf '| target | seconds | executions | exec/s | cov | ft | corpus (units/bytes) | crashes |\n'
  printf '|---|---|---|---|---|---|---|---|\n'
  for t in "$@"; do
    touch "$work/logs/$t.log.start"
    local start=$SECONDS
    run "$t" "$secs"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$((SECONDS - start))" "${r_execs:-?}" "${r_eps:-?}" \
      "${r_cov:-?}" "${r_ft:-?}" "${r_corp:-?}" "$r_crashes"
    if [ "$r_status" -ne 0 ]; then
      failed+=("$t")
      {
        echo "FUZZ FAILURE: target $t exited with status $r_status"
        { grep -E "ERROR: |Fatal error|invariant broken|SUMMARY" "$r_log" || true; } | head -5
        echo "  reproducer: ${r_reproducer:-(none written; see the log)}"
        echo "  log: $r_log"
        echo "  re-run: SWIFT_BACKTRACE=enable=no $bin/fuzz-$t ${r_reproducer:-REPRODUCER}"
      } >&2
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "error: fuzzing found crashes in: ${failed[*]}" >&2
    return 1
  fi
}

# The inputs that once crashed a target (Fuzz/crashes/<target>-*, bugs since
# fixed) are run again: each must now pass.
regressions() {
  local f t failed=0
  for f in "$root"/Fuzz/crashes/*; do
    [ -f "$f" ] || continue
    t=$(basename "$f")
    case $t in README.md) continue ;; esac
    for name in "${targets_all[@]}"; do
      if [[ $t == "$name"-* ]]; then
        if ! "$bin/fuzz-$name" "$f" >"$work/logs/regression-$t.log" 2>&1; then
          echo "FUZZ FAILURE: the reproducer $f crashes fuzz-$name again (log: $work/logs/regression-$t.log)" >&2
          failed=1
        fi
      fi
    done
  done
  return $failed
}

[ $# -ge 1 ] || usage
case $1 in
  --list) printf '%s\n' "${targets_all[@]}" ;;
  --build) build ;;
  --seeds)
    build
    for t in "${targets_all[@]}"; do
      rm -rf "$root/Fuzz/corpus/$t"
      TIDEMARK_FUZZ_WRITE_SEEDS="$root/Fuzz/corpus/$t" "$bin/fuzz-$t"
      echo "$t: $(find "$root/Fuzz/corpus/$t" -type f | wc -l) seeds"
    done
    ;;
  --ci)
    start=$SECONDS
    build
    fuzz_targets "${FUZZ_CI_SECONDS:-20}" "${targets_all[@]}"
    regressions
    echo "fuzz --ci: the reproducers in Fuzz/crashes pass"
    echo "fuzz --ci: every target ran clean; $((SECONDS - start)) s in all (build included)"
    ;;
  --seconds)
    [ $# -ge 2 ] || usage
    secs=$2; shift 2
    [ $# -gt 0 ] || set -- "${targets_all[@]}"
    for t in "$@"; do
      [[ " ${targets_all[*]} " == *" $t "* ]] || { echo "error: unknown target '$t' (scripts/fuzz.sh --list)" >&2; exit 2; }
    done
    [ -n "${FUZZ_NO_BUILD:-}" ] || build
    fuzz_targets "$secs" "$@"
    ;;
  *) usage ;;
esac
