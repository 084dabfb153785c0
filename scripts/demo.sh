#!/usr/bin/env bash
# The main job on an embedded default: make a file-backed loop disk holding an
# ext4 filesystem with some data, track it, mirror it to a file, change it,
# show the live tracking state, bring the mirror current and prove it equal.
# Needs root. Cleans up after itself (the mirror image is kept in $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/opt/swift/usr/bin:$PATH
swift build -c release 2>&1 | tail -n 1
BIN=$(swift build -c release --show-bin-path)
OUT=${OUT:-$PWD/demo-out}
mkdir -p "$OUT"
work=$(mktemp -d); state="$work/state"; mnt="$work/mnt"; mkdir -p "$mnt"
loop=""; agent_pid=""
export TIDEMARK_BPF_PIN_DIR=/sys/fs/bpf/tidemark-demo TIDEMARK_RUN_DIR=/run/tidemark-demo
cleanup() {
  [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null || true
  mountpoint -q "$mnt" && umount "$mnt" || true
  if [ -n "$loop" ]; then
    "$BIN/tidemark-agent" untrack --disk "$loop" --state-dir "$state" >/dev/null 2>&1 || true
    losetup -d "$loop" || true
  fi
  rm -rf "$work" "$TIDEMARK_BPF_PIN_DIR" "$TIDEMARK_RUN_DIR"
}
trap cleanup EXIT

echo "== a 512 MiB loop disk with ext4 and a copy of /usr/share/doc"
truncate -s 512M "$work/disk.img"
loop=$(losetup -f --show --direct-io=on "$work/disk.img")
mkfs.ext4 -q -F "$loop"
mount "$loop" "$mnt"; cp -a /usr/share/doc "$mnt/"; umount "$mnt"; sync

echo "== first mirror (full copy, zero chunks skipped)"
"$BIN/tidemark-agent" mirror --disk "$loop" --to "$OUT/mirror.img" --state-dir "$state" --once

echo "== tracking while the filesystem changes"
TIDEMARK_DRAIN_INTERVAL_MS=200 "$BIN/tidemark-agent" track --disk "$loop" --state-dir "$state" &
agent_pid=$!
sleep 1
mount "$loop" "$mnt"; cp -a /usr/share/zoneinfo "$mnt/"; rm -rf "$mnt/doc/a"*; umount "$mnt"; sync
sleep 0.5
hrl="$state/$(basename "$loop").hrl"
"$BIN/tidemark-bitmap" show "$hrl"
"$BIN/tidemark-bitmap" map "$hrl" --width 64
kill "$agent_pid"; wait "$agent_pid" || true; agent_pid=""

echo "== delta mirror"
"$BIN/tidemark-agent" mirror --disk "$loop" --to "$OUT/mirror.img" --state-dir "$state" --once
cmp "$loop" "$OUT/mirror.img" && echo "mirror is byte-identical to $loop"
fsck.ext4 -n -f "$OUT/mirror.img" >/dev/null && echo "fsck -n: clean"
