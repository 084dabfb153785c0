#!/usr/bin/env bash
# The main job on an embedded default: replicate a live disk to a process
# server and recover a recovery point from the target, proven identical.
#
#   1. a file-backed loop disk with ext4 holding real files (/usr/share/doc);
#   2. CA, server and agent certificates and a replication key (make-certs.sh);
#   3. tidemark-server (TLS on 127.0.0.1, spool, local-directory target);
#   4. tidemark-agent run: initial replication, then continuous deltas;
#   5. churn on the filesystem while a crash-consistent point is taken
#      (tidemarkctl point create); the agent's test hook copies the frozen
#      source as ground truth for the comparison;
#   6. tidemarkctl points list, tidemarkctl recover --point ID, cmp + fsck.
#
# Needs root. Cleans up after itself; the recovered image is kept in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH=/opt/swift/usr/bin:$PATH
swift build -c release 2>&1 | tail -n 1
BIN=$(swift build -c release --show-bin-path)
OUT=${OUT:-$PWD/demo-out}
mkdir -p "$OUT"
work=$(mktemp -d); mnt="$work/mnt"; mkdir -p "$mnt"
loop=""; server_pid=""; agent_pid=""; churn_pid=""
export TIDEMARK_BPF_PIN_DIR=/sys/fs/bpf/tidemark-demo TIDEMARK_RUN_DIR=/run/tidemark-demo
stop_pid() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true; }
cleanup() {
  stop_pid "$churn_pid"; stop_pid "$agent_pid"; stop_pid "$server_pid"
  mountpoint -q "$mnt" && umount "$mnt" || true
  if [ -n "$loop" ]; then
    "$BIN/tidemark-agent" untrack --disk "$loop" --state-dir "$work/state" >/dev/null 2>&1 || true
    losetup -d "$loop" || true
  fi
  rm -rf "$work" "$TIDEMARK_BPF_PIN_DIR" "$TIDEMARK_RUN_DIR"
}
trap cleanup EXIT
fail() { echo "demo: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }

echo "== a 512 MiB loop disk with ext4 and a copy of /usr/share/doc"
truncate -s 512M "$work/disk.img"
loop=$(losetup -f --show "$work/disk.img")
mkfs.ext4 -q -F "$loop"
mount "$loop" "$mnt"; cp -a /usr/share/doc "$mnt/"; sync

echo "== certificates and the replication key"
scripts/make-certs.sh "$work/tls" --agent demo-agent >/dev/null

echo "== process server (TLS 1.3, mutual authentication) → spool → target directory"
cat >"$work/server.yaml" <<EOF
server_id: demo-server
listen: 127.0.0.1:0
tls:
  ca: $work/tls/ca.crt
  cert: $work/tls/server.crt
  key: $work/tls/server.key
spool_dir: $work/spool
target:
  path: $OUT/target
EOF
rm -rf "$OUT/target"
"$BIN/tidemark-server" run --config "$work/server.yaml" >"$work/server.out" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$work/server.out" | head -n 1)
[ -n "$port" ] || fail "the server did not start"
cat "$work/server.out"

echo "== agent: initial replication, then continuous deltas"
cat >"$work/agent.yaml" <<EOF
agent_id: demo-agent
state_dir: $work/state
drain_interval_ms: 100
replication:
  server: 127.0.0.1:$port
  ca: $work/tls/ca.crt
  cert: $work/tls/demo-agent.crt
  key: $work/tls/demo-agent.key
  replication_key: $work/tls/replication.key
policy:
  crash_consistent_interval: 0
  app_consistent_interval: 0
  # The demo's frozen hook copies the whole disk while it is frozen (ground
  # truth), which takes seconds: allow for it. The default is 2000 ms.
  freeze_timeout_ms: 30000
control_socket: $work/agent.sock
EOF
cat >"$work/frozen-hook.sh" <<EOF
#!/bin/sh
dd if="\$TIDEMARK_DISK" of="$work/truth.img" bs=1M iflag=direct status=none
EOF
chmod 755 "$work/frozen-hook.sh"
TIDEMARK_TEST_FROZEN_HOOK="$work/frozen-hook.sh" \
  "$BIN/tidemark-agent" run --config "$work/agent.yaml" --disk "$loop" >"$work/agent.out" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 100); do grep -q "replicating" "$work/agent.out" 2>/dev/null && break; sleep 0.1; done
grep -q "replicating" "$work/agent.out" || fail "the agent did not start"
cat "$work/agent.out"

echo "== churn on the filesystem (new files, rewrites, deletions)"
(
  i=0
  while :; do
    i=$((i + 1))
    head -c $(( (i * 7919) % 524288 + 4096 )) /dev/urandom >"$mnt/churn-$((i % 50))"
    [ $((i % 25)) = 0 ] && cp -a /usr/share/zoneinfo "$mnt/zoneinfo-$((i % 3))" && rm -rf "$mnt/doc/$(ls "$mnt/doc" | head -n 1)"
    sleep 0.01
  done
) &
churn_pid=$!
sleep 3

echo "== crash-consistent recovery point, taken while the churn runs"
start=$(date +%s.%N)
"$BIN/tidemarkctl" point create --json --disk "$loop" --socket "$work/agent.sock" > "$work/point.json" \
  || fail "point create failed"
# The point as JSON, read with python3 (installed with the build
# dependencies, scripts/install-deps.sh: python3-seccomp needs it).
id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' < "$work/point.json") \
  || fail "point create printed no point id: $(cat "$work/point.json")"
python3 -c 'import json, sys; p = json.load(sys.stdin); print("point %s (%s) of %s at sequence %d, freeze %.1f ms" % (p["id"], p["class"], p["disk_id"], p["sequence"], p["freeze_ms"]))' < "$work/point.json"
echo "(the freeze time includes the demo's ground-truth copy of the whole frozen disk)"
echo "point $id committed in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $start}") s (drain, freeze, read, tag, thaw, commit)"
sleep 2
stop_pid "$churn_pid"; churn_pid=""

echo "== the recovery-point catalog, read from the target alone"
"$BIN/tidemarkctl" points list --target "$OUT/target"

echo "== recover point $id"
"$BIN/tidemarkctl" recover --point "$id" --to "$OUT/recovered.img" \
  --target "$OUT/target" --key "$work/tls/replication.key"
cmp "$OUT/recovered.img" "$work/truth.img" \
  && echo "recovered image is byte-identical to $loop as it was frozen at point $id"
fsck.ext4 -n -f "$OUT/recovered.img" >/dev/null && echo "fsck -n: clean"
