#!/usr/bin/env bash
# Tidemark benchmarks for issue #2 targets. Every figure is a ratio against a
# reference measured in the same run on the same device (these machines are
# noisy: only same-run ratios mean anything). Needs root. Usage:
#   scripts/bench.sh [all|scan|writecost|mirror|memory]
# Results are printed; copy them into BENCHMARKS.md with the date.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
what=${1:-all}
swift build -c release 2>&1 | tail -n 1
BIN=$(swift build -c release --show-bin-path)
work=$(mktemp -d /var/tmp/tidemark-bench.XXXXXX)
export TIDEMARK_BPF_PIN_DIR=/sys/fs/bpf/tidemark-bench TIDEMARK_RUN_DIR=/run/tidemark-bench
loops=(); agent=""
cleanup() {
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  for l in "${loops[@]}"; do
    "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null 2>&1 || true
    umount "$l" 2>/dev/null || true; losetup -d "$l" 2>/dev/null || true
  done
  rm -rf "$work" "$TIDEMARK_BPF_PIN_DIR" "$TIDEMARK_RUN_DIR"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

start_track() { # disk
  "$BIN/tidemark-agent" track --disk "$1" --state-dir "$work/state" >"$work/agent.out" 2>"$work/agent.err" &
  agent=$!
  for _ in $(seq 100); do grep -q tracking "$work/agent.out" 2>/dev/null && return; sleep 0.05; done
  cat "$work/agent.err" >&2; exit 1
}
stop_track() { kill "$agent"; wait "$agent" || true; agent=""; }

if [ "$what" = all ] || [ "$what" = scan ]; then
  echo "== drain + list extents: 16 TiB bitmap at 64 KiB chunks (32 MiB of bits), 1% dirty"
  "$BIN/tidemark-bench" scan --layout clustered
  "$BIN/tidemark-bench" scan --layout scattered
fi

if [ "$what" = all ] || [ "$what" = writecost ]; then
  echo "== write-path cost: fio 4k randwrite QD32 O_DIRECT on a loop device, without and with the tracer"
  fallocate -l 2G "$work/wc.img"
  l=$(losetup -f --show --direct-io=on "$work/wc.img"); loops+=("$l")
  fiojob() { fio --name=wc --filename="$l" --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=1 \
             --runtime="${RUNTIME:-10}" --time_based --size=2G --randrepeat=0 --output-format=json | \
             python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'; }
  fiojob >/dev/null # warm-up
  off=(); on=()
  for r in $(seq 1 "${ROUNDS:-5}"); do
    # Alternate the order so drift favors neither side.
    if [ $((r % 2)) = 1 ]; then off+=("$(fiojob)"); start_track "$l"; on+=("$(fiojob)"); stop_track
    else start_track "$l"; on+=("$(fiojob)"); stop_track; off+=("$(fiojob)"); fi
    "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null
  done
  m_off=$(printf '%s\n' "${off[@]}" | median); m_on=$(printf '%s\n' "${on[@]}" | median)
  echo "without tracer: ${off[*]} IOPS (median $m_off)"
  echo "with tracer:    ${on[*]} IOPS (median $m_on)"
  echo "IOPS ratio with/without: $(ratio "$m_on" "$m_off") (target >= 0.98)"
fi

if [ "$what" = all ] || [ "$what" = mirror ]; then
  echo "== mirror first copy of an ext4 image holding a copy of /usr vs fio sequential O_DIRECT read"
  usr_kib=$(du -sk /usr | cut -f1)
  size_mib=$(( usr_kib * 14 / 10 / 1024 + 256 ))
  truncate -s "${size_mib}M" "$work/usr.img"
  mkfs.ext4 -q -F "$work/usr.img"
  mkdir -p "$work/mnt"; mount -o loop "$work/usr.img" "$work/mnt"
  cp -a /usr "$work/mnt/" 2>/dev/null || true
  umount "$work/mnt"; sync
  l=$(losetup -f --show --direct-io=on "$work/usr.img"); loops+=("$l")
  bytes=$(blockdev --getsize64 "$l")
  fioread() { echo 3 > /proc/sys/vm/drop_caches; fio --name=sr --filename="$l" --rw=read --bs=1M --iodepth=8 --ioengine=io_uring \
              --direct=1 --size="$bytes" --output-format=json | \
              python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"])'; }
  # By default the mirror file shares the disk being read, so reads and writes
  # split its bandwidth. MIRROR_DIR puts the mirror file on other storage;
  # MIRROR_RAM=1 mirrors to a loop block device over a file in /dev/shm:
  # separate storage (RAM) whose block device accepts O_DIRECT.
  mdir=${MIRROR_DIR:-$work}; mto="$mdir/mirror.img"
  if [ "${MIRROR_RAM:-0}" = 1 ]; then
    truncate -s "$bytes" /dev/shm/tidemark-bench-mirror.img
    mto=$(losetup -f --show /dev/shm/tidemark-bench-mirror.img); loops+=("$mto"); mdir="$mto (file in /dev/shm)"
  fi
  prepare_target() {
    if [ -b "$mto" ]; then blkdiscard -f "$mto"; else rm -f "$mto"; fi
  }
  mirror() {
    prepare_target; rm -f "$work/state/"*.hrl; echo 3 > /proc/sys/vm/drop_caches
    "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null 2>&1 || true
    local t0 t1; t0=$(date +%s.%N)
    "$BIN/tidemark-agent" mirror --disk "$l" --to "$mto" --state-dir "$work/state" --once > "$work/mirror.out"
    t1=$(date +%s.%N)
    awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN {printf "%d", b/(c-a)}'
  }
  fr=(); mr=()
  for r in 1 2 3; do fr+=("$(fioread)"); mr+=("$(mirror)"); done
  m_f=$(printf '%s\n' "${fr[@]}" | median); m_m=$(printf '%s\n' "${mr[@]}" | median)
  echo "device: $((bytes >> 20)) MiB, /usr copy $((usr_kib >> 10)) MiB; $(tail -1 "$work/mirror.out")"
  echo "fio seq read: $((m_f >> 20)) MiB/s; mirror first copy: $((m_m >> 20)) MiB/s of device (runs: fio ${fr[*]}, mirror ${mr[*]})"
  echo "mirror/fio ratio: $(ratio "$m_m" "$m_f") (target >= 0.8)"
  echo "mirror target in $mdir"
  cmp "$l" "$mto" && echo "mirror verified identical (cmp)"
  if [ -b "$mto" ]; then losetup -d "$mto"; rm -f /dev/shm/tidemark-bench-mirror.img; else rm -f "$mto"; fi
fi

if [ "$what" = all ] || [ "$what" = memory ]; then
  echo "== tracking memory for a 4 TiB disk at 64 KiB chunks"
  truncate -s 4T "$work/big.img"
  l=$(losetup -f --show "$work/big.img"); loops+=("$l")
  start_track "$l"
  sleep 1
  map_bytes=$(bpftool -j map show pinned "$TIDEMARK_BPF_PIN_DIR/bitmap-0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_memlock"])')
  rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$agent/status)
  stop_track
  echo "kernel bitmap map: $map_bytes bytes = $(awk -v b="$map_bytes" 'BEGIN {printf "%.3f", b/4/1048576}') MiB per TiB (target <= 2)"
  echo "agent RSS while tracking: $((rss_kib / 1024)) MiB (the agent maps the kernel bitmap; it holds no copy of it)"
fi
