#!/usr/bin/env bash
# Tidemark benchmarks for the targets of issues #2, #3 and #4. Every figure is a
# ratio against a reference measured in the same run on the same device (these
# machines are noisy: only same-run ratios mean anything). Needs root. Usage:
#   scripts/bench.sh [all|scan|writecost|deficit|usedcopy|manydisks|mirror|memory|replicate|incremental|rpo|freeze|appfreeze|recover|idle]
#   TIDEMARK_BENCH_BIN=dir scripts/bench.sh ...   runs the binaries in dir instead of building
#   TIDEMARK_BENCH_BIN_B=dir scripts/bench.sh replicate   alternates rounds with the binaries in dir (A/B)
#   LEVEL=N scripts/bench.sh ...   sets the agent's replication.compression_level
#                                  (N or auto; default: the agent's default, 1)
#   BORG_ENCRYPTED=1 scripts/bench.sh replicate   also times borg with -e repokey
#   LEVEL_B=N scripts/bench.sh replicate   alternates rounds with level N (A/B; with or
#                                  without TIDEMARK_BENCH_BIN_B)
#   scripts/bench.sh deps     installs what the benchmarks compare against
#                             (restic, borgbackup, rsync, fio, zstd)
# Results are printed; the figure goes into BENCHMARKS.md with the date, the run
# into its topic file in docs/perf/ (docs/perf/README.md). scripts/bench-compare.sh
# runs these modes for two revisions alternately.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
what=${1:-all}
bench_pkgs=(restic borgbackup rsync fio zstd python3 e2fsprogs)
install_bench_deps() {
  local missing=() p
  for p in "${bench_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return
  echo "installing benchmark dependencies: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}
if [ "$what" = deps ]; then install_bench_deps; exit 0; fi
case "$what" in replicate|incremental|all) install_bench_deps ;; esac
# TIDEMARK_BENCH_BIN: a directory with tidemark-agent and tidemark-server
# built elsewhere (A/B comparisons of saved builds); default: build release here.
if [ -n "${TIDEMARK_BENCH_BIN:-}" ]; then BIN=$TIDEMARK_BENCH_BIN; else
  swift build -c release 2>&1 | tail -n 1
  BIN=$(swift build -c release --show-bin-path)
fi
work=$(mktemp -d /var/tmp/tidemark-bench.XXXXXX)
export TIDEMARK_BPF_PIN_DIR=/sys/fs/bpf/tidemark-bench TIDEMARK_RUN_DIR=/run/tidemark-bench
loops=(); agent=""; server=""; bgpids=(); mounts=(); separate=""
cleanup() {
  for p in ${bgpids[@]+"${bgpids[@]}"}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  [ -n "$agent" ] && kill "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  if [ -n "$server" ]; then kill -CONT "$server" 2>/dev/null || true; kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true; fi
  for m in ${mounts[@]+"${mounts[@]}"}; do fsfreeze -u "$m" 2>/dev/null || true; umount "$m" 2>/dev/null || true; done
  for l in ${loops[@]+"${loops[@]}"}; do
    "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null 2>&1 || true
    umount "$l" 2>/dev/null || true; blockdev --setrw "$l" 2>/dev/null || true; losetup -d "$l" 2>/dev/null || true
  done
  rm -rf "$work" "$TIDEMARK_BPF_PIN_DIR" "$TIDEMARK_RUN_DIR" ${separate:+"$separate"}
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

dropcaches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# An ext4 image holding a copy of /usr (the mirror benchmark's data), as a loop device.
make_usr_disk() { # -> sets $l, $bytes, $usr_kib
  usr_kib=$(du -sk /usr | cut -f1)
  local size_mib=$(( usr_kib * 14 / 10 / 1024 + 256 ))
  truncate -s "${size_mib}M" "$work/usr.img"
  mkfs.ext4 -q -F "$work/usr.img"
  mkdir -p "$work/mnt"; mount -o loop "$work/usr.img" "$work/mnt"
  cp -a /usr "$work/mnt/" 2>/dev/null || true
  umount "$work/mnt"; sync
  l=$(losetup -f --show --direct-io=on "$work/usr.img"); loops+=("$l")
  bytes=$(blockdev --getsize64 "$l")
}
fio_seqread() { # dev bytes -> bytes/s (O_DIRECT, as the agent reads)
  dropcaches
  fio --name=sr --filename="$1" --rw=read --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 --size="$2" --output-format=json | \
    python3 -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"])'
}
if [ "$what" = all ] || [ "$what" = scan ]; then
  echo "== drain + list extents: 16 TiB bitmap at 64 KiB chunks (32 MiB of bits), 1% dirty"
  "$BIN/tidemark-bench" scan --layout clustered
  "$BIN/tidemark-bench" scan --layout scattered
fi

if [ "$what" = all ] || [ "$what" = writecost ]; then
  echo "== write-path cost: fio 4k randwrite QD32 O_DIRECT on a loop device, without and with the tracer"
  # WRITECOST_RAM=1: the loop device's file is in /dev/shm (buffered: tmpfs
  # takes no O_DIRECT), so no disk noise, and every write costs only CPU,
  # where the program's cost shows most.
  if [ "${WRITECOST_RAM:-0}" = 1 ]; then
    separate=/dev/shm/tidemark-bench-wc.img; fallocate -l 2G "$separate"
    l=$(losetup -f --show "$separate"); loops+=("$l")
  else
    fallocate -l 2G "$work/wc.img"
    l=$(losetup -f --show --direct-io=on "$work/wc.img"); loops+=("$l")
  fi
  fiojob() { fio --name=wc --filename="$l" --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=1 \
             --runtime="${RUNTIME:-10}" --time_based --size=2G --randrepeat=0 --output-format=json | \
             python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'; }
  fiojob >/dev/null # warm-up
  # Each round is a pair of adjacent runs, one without and one with the
  # tracer, in alternating order so drift favors neither side. The device's
  # rate swings more between rounds than tracking costs, so the figure is the
  # median of the per-pair ratios; the ratio of the medians is printed too.
  off=(); on=(); pairs=()
  for r in $(seq 1 "${ROUNDS:-5}"); do
    if [ $((r % 2)) = 1 ]; then o=$(fiojob); start_track "$l"; t=$(fiojob); stop_track
    else start_track "$l"; t=$(fiojob); stop_track; o=$(fiojob); fi
    "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null
    off+=("$o"); on+=("$t"); pairs+=("$(ratio "$t" "$o")")
  done
  m_off=$(printf '%s\n' "${off[@]}" | median); m_on=$(printf '%s\n' "${on[@]}" | median)
  echo "without tracer: ${off[*]} IOPS (median $m_off)"
  echo "with tracer:    ${on[*]} IOPS (median $m_on)"
  echo "per-pair ratios: ${pairs[*]}"
  echo "ratio of the medians: $(ratio "$m_on" "$m_off")"
  echo "IOPS ratio with/without (median of pairs): $(printf '%s\n' "${pairs[@]}" | median) (target >= 0.98)"
  # What the program itself costs, from the kernel's own run-time statistics
  # (kernel.bpf_stats_enabled, on only for this extra run: it adds two clock
  # reads per call). Every completion on every disk calls it: the loop
  # device's and the backing disk's.
  start_track "$l"
  progid() { bpftool link show pinned "$TIDEMARK_BPF_PIN_DIR/$1" -j | python3 -c 'import json,sys; print(json.load(sys.stdin)["prog_id"])'; }
  prog=$(progid link); iprog=$(progid link-issue)
  stats() { bpftool prog show id "$1" -j | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get("run_time_ns",0), d.get("run_cnt",0))'; }
  was=$(sysctl -n kernel.bpf_stats_enabled); sysctl -qw kernel.bpf_stats_enabled=1
  read -r t0 c0 < <(stats "$prog"); read -r it0 ic0 < <(stats "$iprog"); iops=$(fiojob)
  read -r t1 c1 < <(stats "$prog"); read -r it1 ic1 < <(stats "$iprog")
  sysctl -qw kernel.bpf_stats_enabled="$was"; stop_track
  "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null
  for p in "completion $((t1 - t0)) $((c1 - c0))" "issue $((it1 - it0)) $((ic1 - ic0))"; do
    set -- $p
    awk -v n="$1" -v t="$2" -v c="$3" -v i="$iops" -v s="${RUNTIME:-10}" 'BEGIN {
      printf "%s program: %d ns per call, %.2f calls per write, %.2f%% of one core at %d IOPS\n", n, t/c, c/(i*s), t/(s*1e9)*100, i }'
  done
fi

if [ "$what" = deficit ]; then
  # How often this kernel skips the completion probe, and what each skip
  # costs: before the issue record every deficit marked the whole disk; now
  # the chunks the issue record holds. DEFICIT_TOGGLE=complete (default)
  # switches ftrace's block_rq_complete event on and off in three tracefs
  # instances meanwhile (as other tools attaching probes do); =both also
  # block_rq_issue (the issue record's own probe); =none measures heavy
  # direct I/O alone.
  toggle=${DEFICIT_TOGGLE:-complete}; secs=${DEFICIT_SECONDS:-60}
  echo "== completion deficits: fio 64k randwrite QD32 O_DIRECT for ${secs} s on a 4 GiB loop device; probes switched: $toggle"
  fallocate -l 4G "$work/df.img"
  l=$(losetup -f --show --direct-io=on "$work/df.img"); loops+=("$l")
  mounted_tracefs=""
  if [ "$toggle" != none ] && [ ! -d /sys/kernel/tracing/instances ]; then
    mount -t tracefs nodev /sys/kernel/tracing; mounted_tracefs=1
  fi
  start_track "$l"
  events=(); case "$toggle" in complete) events=(block_rq_complete) ;; both) events=(block_rq_complete block_rq_issue) ;; esac
  insts=()
  for k in 1 2 3; do
    [ ${#events[@]} -eq 0 ] && break
    i=/sys/kernel/tracing/instances/tidemark-bench-$$-$k; mkdir "$i"; insts+=("$i")
    for e in "${events[@]}"; do
      ( f=$i/events/block/$e/enable; while [ -e "$f" ]; do echo 1 > "$f"; echo 0 > "$f"; done ) 2>/dev/null &
      bgpids+=($!)
    done
  done
  fio --name=df --filename="$l" --rw=randwrite --bs=64k --iodepth=32 --ioengine=libaio --direct=1 \
      --runtime="$secs" --time_based --size=4G --randrepeat=0 --output-format=json > "$work/fio.json"
  for p in ${bgpids[@]+"${bgpids[@]}"}; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; bgpids=()
  for i in ${insts[@]+"${insts[@]}"}; do for e in "${events[@]}"; do echo 0 > "$i/events/block/$e/enable"; done; rmdir "$i"; done
  sleep 2; stop_track
  [ -n "$mounted_tracefs" ] && umount /sys/kernel/tracing
  python3 - "$work/agent.err" "$work/fio.json" "$secs" <<'PY'
import json, re, statistics, sys
log = open(sys.argv[1]).read().splitlines()
fio = json.load(open(sys.argv[2]))["jobs"][0]["write"]
secs = float(sys.argv[3]); disk_chunks = (4 << 30) // 65536
deficits = [int(m.group(1)) for l in log for m in [re.search(r"completed (\d+) sectors of writes", l)] if m]
answers = [(int(m.group(1)), int(m.group(2)), int(m.group(3))) for l in log for m in [re.search(r"completed (\d+) sectors of writes.*marking the (\d+) chunk\(s\).*; (\d+) chunk\(s\) were written since the last drain", l)] if m]
whole = [l for l in log if "the whole disk counts as dirty" in l]
confirmed = sum(1 for l in log if "confirmed: the" in l)
print(f"writes: {int(fio['iops'])} IOPS, {fio['bw_bytes'] / 1048576:.0f} MiB/s")
print(f"deficits: {len(deficits)} in {secs:.0f} s ({len(deficits) / secs * 60:.1f} per minute), sectors unseen: {sum(deficits)} (max {max(deficits, default=0)} in one)")
print(f"answered from the issue record: {len(answers)} ({confirmed} confirmed); by the whole disk: {len(whole)}")
if answers:
    per = [a for _, a, _ in answers]
    # Chunks written since the last clean check: what the drain found plus
    # the chunks of the sectors it did not see (at most one per 128 sectors, +1).
    ratios = [a / max(1, w + d // 128 + 1) for d, a, w in answers]
    print(f"chunks resynced per deficit: median {statistics.median(per):.0f}, max {max(per)} (before the issue record: the whole disk, {disk_chunks})")
    print(f"resynced / written since the last clean check: median {statistics.median(ratios):.3f}, max {max(ratios):.3f} (target <= 2)")
for l in whole[:5]: print("whole disk:", l.split(": ", 1)[-1][:300])
PY
fi

if [ "$what" = all ] || [ "$what" = mirror ]; then
  echo "== mirror first copy of an ext4 image holding a copy of /usr vs fio sequential O_DIRECT read"
  make_usr_disk
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
    "$BIN/tidemark-agent" mirror --disk "$l" --to "$mto" --state-dir "$work/state" --once > "$work/mirror.out" 2> "$work/mirror.log" || { cat "$work/mirror.log" >&2; exit 1; }
    t1=$(date +%s.%N)
    awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN {printf "%d", b/(c-a)}'
  }
  # A second reference: fio doing the same I/O the copy must do, the whole
  # device read and the copy's bytes written (sequential, O_DIRECT, 1 MiB,
  # both at once) into a file next to the mirror. On one disk the reads and
  # writes share its bandwidth, which a read-only reference cannot show.
  fio_readwrite() { # -> device bytes/s
    dropcaches; local f="$mdir/fio-rw.img" t0 t1
    [ -b "$mto" ] && f="$mto"
    t0=$(date +%s.%N)
    fio --name=r --filename="$l" --rw=read --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 --size="$bytes" \
        --name=w --filename="$f" --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 --size="$written" \
        --end_fsync=1 --output-format=json >/dev/null
    t1=$(date +%s.%N); [ -b "$mto" ] || rm -f "$f"
    awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN {printf "%d", b/(c-a)}'
  }
  fr=(); mr=(); wr=()
  for r in 1 2 3; do
    fr+=("$(fio_seqread "$l" "$bytes")"); mr+=("$(mirror)")
    written=$(grep -o '[0-9]* bytes written' "$work/mirror.log" | tail -1 | cut -d' ' -f1)
    written=$(( (written + 1048575) / 1048576 * 1048576 ))
    wr+=("$(fio_readwrite)")
  done
  m_f=$(printf '%s\n' "${fr[@]}" | median); m_m=$(printf '%s\n' "${mr[@]}" | median)
  m_w=$(printf '%s\n' "${wr[@]}" | median)
  echo "device: $((bytes >> 20)) MiB, /usr copy $((usr_kib >> 10)) MiB; $(grep -o 'full copy.*' "$work/mirror.log" | tail -1)"
  echo "fio seq read: $((m_f >> 20)) MiB/s; mirror first copy: $((m_m >> 20)) MiB/s of device (runs: fio ${fr[*]}, mirror ${mr[*]})"
  echo "mirror/fio ratio: $(ratio "$m_m" "$m_f") (target >= 0.8)"
  echo "fio reading the device and writing the copy's $((written >> 20)) MiB at once: $((m_w >> 20)) MiB/s of device (runs: ${wr[*]})"
  echo "mirror/(fio read+write) ratio: $(ratio "$m_m" "$m_w")"
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

# ---- issue #3: replication to a process server (real processes, TLS on loopback) ----

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b-a}'; }
mibps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.0f", b/s/1048576}'; }

# status [FIELD...]: the agent's control-socket status; with fields, prints
# disk 0's values separated by spaces (rss_bytes is the process's).
cat > "$work/status.py" <<'PY'
import json, socket, sys, time
def ask(path, line):
    s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(path)
    s.sendall(line); buf = b''
    while not buf.endswith(b'\n'):
        d = s.recv(65536)
        if not d: break
        buf += d
    return json.loads(buf)
def status(path):
    # Control protocol version 1 (docs/control-socket.md): the state is under
    # "status". An agent built before the versioned protocol (bench-compare's
    # older side) refuses the numeric version and is asked the old way.
    r = ask(path, b'{"version":1,"op":"status"}\n')
    if 'version' not in r:
        r = ask(path, b'{"op":"status"}\n')
    return r.get('status', r)
def field(st, k):
    return st[k] if k in st else st['disks'][0].get(k, -1)
mode = sys.argv[2]
if mode == 'get':
    st = status(sys.argv[1]); print(' '.join(str(field(st, k)) for k in sys.argv[3:]))
elif mode == 'wait-committed':
    # until backlog 0 and the committed-through time >= argv[3] (unix ms); prints when (unix s);
    # polls every argv[5] s (default 0.01)
    since = int(sys.argv[3]); deadline = time.time() + float(sys.argv[4])
    poll = float(sys.argv[5]) if len(sys.argv) > 5 else 0.01
    while time.time() < deadline:
        d = status(sys.argv[1])['disks'][0]
        if d['backlog_bytes'] == 0 and d.get('committed_through_unix_ms', 0) >= since and d['committed_sequence'] > 0:
            print('%.3f' % time.time()); sys.exit(0)
        time.sleep(poll)
    sys.exit('timed out waiting for the agent to commit: %s' % json.dumps(d))
elif mode == 'sample-all':
    # every argv[3] s for argv[4] s: "unix_s rss_bytes rpo_ms(disk 0) rpo_ms(disk 1) ..." lines
    step = float(sys.argv[3]); end = time.time() + float(sys.argv[4])
    while time.time() < end:
        st = status(sys.argv[1])
        print('%.3f %d %s' % (time.time(), st['rss_bytes'], ' '.join(str(d['rpo_ms']) for d in st['disks'])), flush=True)
        time.sleep(step)
elif mode == 'sample':
    # every argv[3] s for argv[4] s: "unix_s rpo_ms rss_bytes backlog_bytes" lines
    step = float(sys.argv[3]); end = time.time() + float(sys.argv[4])
    while time.time() < end:
        st = status(sys.argv[1]); d = st['disks'][0]
        print('%.3f %d %d %d' % (time.time(), d['rpo_ms'], st['rss_bytes'], d['backlog_bytes']), flush=True)
        time.sleep(step)
PY
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14+$15)/hz}' "/proc/$1/stat"; }  # user+system CPU seconds of a PID
# "user/system s, minor faults" of a PID (the comm field has no spaces here).
cpu_split() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f/%.1f s, %d faults", $14/hz, $15/hz, $10}' "/proc/$1/stat"; }
# KiB of free memory the guest has handed back to the hypervisor so far
# (virtio-balloon free page reporting; 0 where there is none). Memory handed
# back costs a hypervisor fault and a zeroing when the guest uses it again.
reported_kib() { cat /sys/module/page_reporting/parameters/reported_kib 2>/dev/null || echo 0; }
# The machine's CPU time so far: "user+nice system idle iowait irq+softirq steal" in ticks.
machine_ticks() { awk '/^cpu /{print $2+$3, $4, $5, $6, $7+$8, $9}' /proc/stat; }
# What the machine did between two machine_ticks: percentages of its CPU time.
machine_split() { # before after
  awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); t = 0; for (i = 1; i <= 6; i++) { d[i] = y[i] - x[i]; t += d[i] }
    if (t <= 0) t = 1; printf "machine: user %.0f%%, system %.0f%%, idle %.0f%%, iowait %.0f%%, irq %.0f%%, steal %.0f%%", 100*d[1]/t, 100*d[2]/t, 100*d[3]/t, 100*d[4]/t, 100*d[5]/t, 100*d[6]/t}'
}
st() { python3 "$work/status.py" "$work/agent.sock" "$@"; }
pct() { # percentile P of numbers on stdin (nearest rank)
  sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999999); if (i<1) i=1; print a[i]}'; }

# Server + agent of one disk: certificates, configs, processes (PIDs kept for cleanup).
# The server's spool and target live in $spool and $target (default: in $work,
# on the same disk as everything else).
spool="$work/spool"; target="$work/target"
repl_setup() {
  [ -e "$work/tls/ca.crt" ] || scripts/make-certs.sh "$work/tls" --agent agent-bench >/dev/null
  cat > "$work/server.yaml" <<Y
listen: 127.0.0.1:0
tls:
  ca: $work/tls/ca.crt
  cert: $work/tls/server.crt
  key: $work/tls/server.key
spool_dir: $spool
target:
  path: $target
Y
}
start_server() {
  "$BIN/tidemark-server" run --config "$work/server.yaml" ${1:+--listen "$1"} >"$work/server.out" 2>"$work/server.err" &
  server=$!
  for _ in $(seq 200); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.05; done
  port=$(grep -o 'listening on .*' "$work/server.out" | head -1 | awk -F: '{print $NF}')
  [ -n "$port" ] || { cat "$work/server.err" >&2; echo "bench: the server did not start" >&2; exit 1; }
}
start_agent() { # disk [drain_interval_ms] [segment_size]
  cat > "$work/agent.yaml" <<Y
agent_id: agent-bench
state_dir: $work/state
drain_interval_ms: ${2:-1000}
replication:
  server: 127.0.0.1:$port
  ca: $work/tls/ca.crt
  cert: $work/tls/agent-bench.crt
  key: $work/tls/agent-bench.key
  replication_key: $work/tls/replication.key
  segment_size: ${3:-4m}
${LEVEL:+  compression_level: $LEVEL
}${INFLIGHT:+  inflight_bytes: $INFLIGHT
}${BANDWIDTH:+  bandwidth_limit: $BANDWIDTH
}policy:
  crash_consistent_interval: 0
  app_consistent_interval: 0
${HOOKS:+$HOOKS
}control_socket: $work/agent.sock
Y
  "$BIN/tidemark-agent" run --config "$work/agent.yaml" --disk "$1" >"$work/agent.out" 2>"$work/agent.err" &
  agent=$!
  for _ in $(seq 200); do grep -q replicating "$work/agent.out" 2>/dev/null && [ -S "$work/agent.sock" ] && return; sleep 0.05; done
  cat "$work/agent.err" >&2; echo "bench: the agent did not start" >&2; exit 1
}
stop_repl() {
  local rc=0
  [ -n "$agent" ] && { kill "$agent"; wait "$agent" || rc=$?; agent=""; }
  [ "$rc" = 0 ] || { echo "bench: the agent exited with status $rc on SIGTERM:" >&2; tail -5 "$work/agent.err" >&2; }
  [ -n "$server" ] && { kill -CONT "$server" 2>/dev/null || true; kill "$server"; wait "$server" || true; server=""; }
}
# Makes N points (tidemarkctl point create ARGS...) a quarter second apart;
# appends each one's freeze in ms to FILE, and each point the agent did not
# make to $work/abandoned.txt with why (a probe skip under the freeze started
# a resync that cannot end within it, or the bound passed): an answer the
# agent gives, its freeze bounded, so counted and shown, not fatal. Sets
# $out to the last point's output.
make_points() { # N FILE ARGS...
  local n=$1 file=$2 i; shift 2
  : > "$file"; : > "$work/abandoned.txt"
  for i in $(seq "$n"); do
    if out=$("$BIN/tidemarkctl" point create "$@" --socket "$work/agent.sock" 2>"$work/point.err"); then
      echo "$out" | sed -n 's/.*freeze \([0-9.]*\) ms.*/\1/p' >> "$file"
    elif grep -q "cannot be tagged under this freeze\|freeze exceeded\|a resync is comparing\|a point waits until" "$work/point.err"; then
      head -1 "$work/point.err" >> "$work/abandoned.txt"
    else
      cat "$work/point.err" >&2; tail -5 "$work/agent.err" >&2; exit 1
    fi
    sleep 0.25
  done
}
# Waits until every chunk drained since the given time (default now) is
# committed and nothing is pending; prints when (unix seconds).
committed_at() { # timeout_s [since_unix_ms [poll_s]]
  st wait-committed "${2:-$(date +%s%3N)}" "$1" ${3:+"$3"} || { tail -5 "$work/agent.err" >&2; exit 1; }
}
release_disk() { # loop device: untrack, detach, forget
  "$BIN/tidemark-agent" untrack --disk "$1" --state-dir "$work/state" >/dev/null 2>&1 || true
  blockdev --setrw "$1" 2>/dev/null || true; losetup -d "$1"
  local keep=() x; for x in "${loops[@]}"; do [ "$x" = "$1" ] || keep+=("$x"); done; loops=(${keep[@]+"${keep[@]}"})
}

timed() { local t0; t0=$(now); "$@" >"$work/timed.out" 2>&1 || { cat "$work/timed.out" >&2; exit 1; }; elapsed "$t0" "$(now)"; }
export RESTIC_PASSWORD=tidemark-bench BORG_PASSPHRASE="" BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
restic_backup() { restic -q -r "$work/restic" backup --stdin --stdin-filename disk.img < "$1"; }
borg_backup() { borg create "${3:-$work/borg}::$2" - < "$1"; }

if [ "$what" = usedcopy ]; then
  # The initial copy of a sparse disk whose ext4 uses 10% of it and whose free
  # space holds old data: used blocks only (FS_IOC_GETFSMAP) against the
  # whole-disk read of before (TIDEMARK_TEST_WHOLE_DISK_READS=1), alternated
  # USEDCOPY_ROUNDS times in the same run. USEDCOPY_GIB: the disk's size;
  # USEDCOPY_OLD_PCT (80): how much of the disk was written and deleted
  # before (a disk once nearly full; the rest of the free space was never
  # written, a hole of the sparse file).
  gib=${USEDCOPY_GIB:-64}; rounds=${USEDCOPY_ROUNDS:-1}; oldpct=${USEDCOPY_OLD_PCT:-80}
  echo "== initial copy of a $gib GiB sparse disk, ext4 10% used, $oldpct% of the disk old data in its free space: used blocks vs the whole disk"
  # The image's written part, and as much again in the target (and spool)
  # while the whole disk is sent, all on the disk $work is on.
  need=$(( gib * (10 + oldpct) / 100 * 2 + 4 )); avail=$(( $(df -k --output=avail "$work" | tail -1) >> 20 ))
  if [ "$avail" -lt "$need" ]; then
    echo "bench: usedcopy needs about $need GiB free under $work and there are $avail: use a smaller USEDCOPY_GIB or USEDCOPY_OLD_PCT" >&2; exit 1
  fi
  truncate -s "${gib}G" "$work/uc.img"
  l=$(losetup -f --show --direct-io=on "$work/uc.img"); loops+=("$l")
  mkfs.ext4 -q -F -E nodiscard "$l"; mkdir -p "$work/ucm"; mount "$l" "$work/ucm"; mounts+=("$work/ucm")
  # Files of random data: 10% of the disk kept, as much again written and
  # deleted (its data stays in free blocks). One 64 MiB random block, copied.
  head -c $((64 << 20)) /dev/urandom > "$work/rand64"
  per=$((gib * 1024 / 10 / 64)); gone=$((gib * 1024 * oldpct / 100 / 64))
  for i in $(seq "$per"); do cp "$work/rand64" "$work/ucm/keep$i"; done
  for i in $(seq "$gone"); do cp "$work/rand64" "$work/ucm/gone$i"; done
  sync; rm -f "$work/ucm"/gone*; sync
  echo "filesystem: $(df -h --output=used,size "$work/ucm" | tail -1)"
  repl_setup
  for round in $(seq "$rounds"); do
    for side in used whole; do
      "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null 2>&1 || true
      rm -rf "$target" "$spool" "$work/state"; dropcaches
      start_server
      t0=$(now)
      if [ "$side" = whole ]; then TIDEMARK_TEST_WHOLE_DISK_READS=1 start_agent "$l"; else start_agent "$l"; fi
      t=$(elapsed "$t0" "$(committed_at 3600 "$(date +%s%3N)" 0.2)")
      read -r sent rd < <(st get bytes_sent bytes_read)
      scope=$(grep -o 'the resync reads [^;]*' "$work/agent.err" | head -1)
      stop_repl
      echo "round $round, $side: $t s, read $((rd >> 20)) MiB, sent $((sent >> 20)) MiB; $scope"
      eval "t_$side=\$t"
    done
    echo "round $round: used-blocks time / whole-disk time = $(ratio "$t_used" "$t_whole") (target <= 0.15)"
  done
fi

if [ "$what" = manydisks ]; then
  # Issue 19 §5: one agent, MANY_DISKS (8) loop devices, each written with
  # random 64 KiB O_DIRECT writes at MANY_RATE (12.5 MB/s): the RPO of every
  # disk (p50/p99/max over MANY_S seconds, sampled every 100 ms) and the
  # agent's RSS. The single-disk `rpo` mode writes as much to one disk.
  # BANDWIDTH=2m: each disk's link slower than its writes, so every send
  # window fills: what the host's budget (replication.host_inflight_bytes)
  # bounds, where 8 windows of inflight_bytes would hold 256 MiB.
  n=${MANY_DISKS:-8}; rate=${MANY_RATE:-12500000}; secs=${MANY_S:-30}
  echo "== $n disks, each written at $((rate / 1000000)) MB/s (random 64 KiB, O_DIRECT), one agent: RPO per disk and RSS"
  disks=()
  for i in $(seq "$n"); do
    fallocate -l 1G "$work/many$i.img"; d=$(losetup -f --show --direct-io=on "$work/many$i.img"); loops+=("$d"); disks+=("$d")
  done
  repl_setup; start_server
  # start_agent writes the configuration; the agent then runs with every disk.
  start_agent "${disks[0]}" 1000; kill "$agent"; wait "$agent" || true; agent=""
  args=(); for d in "${disks[@]}"; do args+=(--disk "$d"); done
  "$BIN/tidemark-agent" run --config "$work/agent.yaml" "${args[@]}" >"$work/agent.out" 2>"$work/agent.err" &
  agent=$!
  for _ in $(seq 400); do grep -q replicating "$work/agent.out" 2>/dev/null && [ -S "$work/agent.sock" ] && break; sleep 0.05; done
  sleep 10   # the initial copies of sparse 1 GiB disks
  jobs=(); for d in "${disks[@]}"; do jobs+=(--name="j$(basename "$d")" --filename="$d"); done
  # With BANDWIDTH, fresh random data in every write (fio's default buffer,
  # written again and again, compresses to almost nothing and no link fills).
  fio --rw=randwrite --bs=64k --iodepth=4 --ioengine=io_uring --direct=1 --size=1G --rate="$rate" \
      ${BANDWIDTH:+--refill_buffers} \
      --time_based --runtime=$((secs + 10)) --randrepeat=0 --output-format=json "${jobs[@]}" > "$work/many-fio.json" &
  bgpids+=($!); fiopid=$!
  sleep 5
  st sample-all 0.1 "$secs" > "$work/many.txt"
  wait "$fiopid" || true; bgpids=()
  "$BIN/tidemarkctl" status --json --socket "$work/agent.sock" > "$work/many-status.json"
  stop_repl
  for i in $(seq "$n"); do
    col=$((i + 2))
    echo "disk $i (${disks[$((i - 1))]}): RPO p50 $(awk -v c=$col '{print $c}' "$work/many.txt" | pct 50) ms, p99 $(awk -v c=$col '{print $c}' "$work/many.txt" | pct 99) ms, max $(awk -v c=$col '{print $c}' "$work/many.txt" | pct 100) ms (target p99 <= 500)"
  done
  echo "agent RSS: max $(( $(awk '{print $2}' "$work/many.txt" | pct 100) >> 20 )) MiB (target <= 128)"
  python3 -c 'import json,sys; h=json.loads(sys.stdin.read()).get("host_inflight"); print("segments in memory over all disks: peak %d MiB of a budget of %d MiB" % (h["peak_bytes"] >> 20, h["budget_bytes"] >> 20) if h else "segments in memory over all disks: not reported (a build before the host budget)")' \
    < "$work/many-status.json"
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"]; print("fio wrote %s MB/s per disk, %.1f MB/s in all" % (" ".join("%.1f" % (x["write"]["bw_bytes"]/1e6) for x in j), sum(x["write"]["bw_bytes"] for x in j)/1e6))' "$work/many-fio.json"
fi

if [ "$what" = all ] || [ "$what" = replicate ]; then
  echo "== initial replication of an ext4 disk holding a copy of /usr to a process server on loopback (TLS)"
  make_usr_disk
  f=$(fio_seqread "$l" "$bytes")
  # REPL_ROUNDS rounds of zstd then a whole initial replication (fresh spool,
  # target and state each time), so each replication has a reference measured
  # next to it: the host's CPU steal moves both by more than the difference.
  # Reported: the median of the per-round ratios (and the rounds).
  rounds=${REPL_ROUNDS:-3}; pairs=(); trs_=(); tzs=(); cpus=()
  # TIDEMARK_BENCH_BIN_B=dir: an A/B comparison in one run: the even rounds
  # run the agent and server in dir, the odd ones the usual build, and each
  # side's rounds get their own median.
  # LEVEL_B=N does the same with the agent's compression level (alone, or
  # with TIDEMARK_BENCH_BIN_B).
  bin_a=$BIN; bin_b=${TIDEMARK_BENCH_BIN_B:-}; pairs_a=(); pairs_b=()
  level_a=${LEVEL:-}; level_b=${LEVEL_B:-${LEVEL:-}}; ab=${bin_b}${LEVEL_B:-}
  for round in $(seq "$rounds"); do
    side=A; BIN=$bin_a; LEVEL=$level_a
    if [ -n "$ab" ] && [ $((round % 2)) = 0 ]; then side=B; BIN=${bin_b:-$bin_a}; LEVEL=$level_b; fi
    cat "$work/usr.img" > /dev/null   # zstd's rate is its own: the data comes from the page cache
    tz=$(timed sh -c "zstd -1 -T2 -c '$work/usr.img' > /dev/null"); z=$(awk -v b="$bytes" -v s="$tz" 'BEGIN {printf "%d", b/s}')
    "$BIN/tidemark-agent" untrack --disk "$l" --state-dir "$work/state" >/dev/null 2>&1 || true
    rm -rf "$target" "$spool" "$work/state"
    dropcaches
    repl_setup; start_server
    rep0=$(reported_kib); m0=$(machine_ticks)
    # PERF=1: the first round runs under `perf record -a` (the whole machine,
    # agent start to committed), and the profile is printed after it.
    perfpid=""
    if [ "${PERF:-0}" = 1 ] && [ "$round" = 1 ]; then
      perf record -q -a -F 999 -o "$work/perf.data" 2>/dev/null & perfpid=$!; sleep 0.5
    fi
    t0=$(now); start_agent "$l"
    # Polled every 50 ms (at most 0.4% of the run late): a status call costs
    # the agent, and the poller, CPU the copy needs; the 10 ms default is for
    # the sub-second incremental measurement.
    tr=$(elapsed "$t0" "$(committed_at 900 "$(date +%s%3N)" 0.05)")
    if [ -n "$perfpid" ]; then kill -INT "$perfpid"; wait "$perfpid" || true; fi
    read -r sent zc lvl < <(st get bytes_sent zero_chunks compression_level)
    cpu_a=$(cpu_s "$agent"); cpu_s_=$(cpu_s "$server")
    split="agent $(cpu_split "$agent"); server $(cpu_split "$server"); $(machine_split "$m0" "$(machine_ticks)"); $(( ($(reported_kib) - rep0) / 1024 )) MiB reported free to the host"
    stop_repl
    r=$(awk -v b="$bytes" -v s="$tr" 'BEGIN {printf "%d", b/s}')
    ref=$(( f < z ? f : z ))
    pairs+=("$(ratio "$r" "$ref")"); trs_+=("$tr"); tzs+=("$tz"); cpus+=("$cpu_a+$cpu_s_")
    if [ "$side" = A ]; then pairs_a+=("${pairs[-1]}"); else pairs_b+=("${pairs[-1]}"); fi
    [ -z "$ab" ] || echo -n "[$side $BIN${LEVEL:+ level $LEVEL}] "
    echo "round $round: zstd -1 -T2 ${tz} s = $(mibps "$z" 1) MiB/s; tidemark ${tr} s = $(mibps "$r" 1) MiB/s (CPU s: agent+server $cpu_a+$cpu_s_); ratio ${pairs[-1]}"
    echo "  ($split; $((sent >> 20)) MiB sent, zstd level at the end $lvl)"
    if [ -n "$perfpid" ]; then  # (|| true: head ends the pipe early, which pipefail would count as a failure)
      echo "perf (whole machine, round 1): by process"
      perf report -i "$work/perf.data" --stdio --no-children --sort comm 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-100 | head -12 || true
      echo "perf: by process and library"
      perf report -i "$work/perf.data" --stdio --no-children --sort comm,dso 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-120 | head -16 || true
      echo "perf: by process and symbol (zstd's own symbols left out)"
      perf report -i "$work/perf.data" --stdio --no-children --sort comm,dso,symbol 2>/dev/null | grep -E '^ +[0-9]' | grep -v libzstd | cut -c1-160 | head -60 || true
    fi
  done
  target_bytes=$(du -sb "$target" | cut -f1)
  tr=$(printf '%s\n' "${trs_[@]}" | median); tz=$(printf '%s\n' "${tzs[@]}" | median)
  r=$(awk -v b="$bytes" -v s="$tr" 'BEGIN {printf "%d", b/s}'); z=$(awk -v b="$bytes" -v s="$tz" 'BEGIN {printf "%d", b/s}')
  echo "device: $((bytes >> 20)) MiB, /usr copy $((usr_kib >> 10)) MiB; sent $((sent >> 20)) MiB sealed, $zc zero chunks, target holds $((target_bytes >> 20)) MiB"
  echo "fio seq read (O_DIRECT): $(mibps "$f" 1) MiB/s; zstd -1 -T2 (median of $rounds): $(mibps "$z" 1) MiB/s (${tz} s from page cache)"
  echo "tidemark initial replication (median of $rounds), agent start to whole disk committed: ${tr} s = $(mibps "$r" 1) MiB/s (CPU s per round, agent+server: ${cpus[*]})"
  echo "replication/min(fio, zstd) ratio: $(printf '%s\n' "${pairs[@]}" | median) (median of the rounds' ratios: ${pairs[*]}; target >= 0.8)"
  BIN=$bin_a; LEVEL=$level_a
  if [ -n "$ab" ]; then
    echo "A/B: A ($bin_a${level_a:+ level $level_a}) median $(printf '%s\n' "${pairs_a[@]}" | median) of ${pairs_a[*]}; B (${bin_b:-$bin_a}${level_b:+ level $level_b}) median $(printf '%s\n' "${pairs_b[@]}" | median) of ${pairs_b[*]}"
  fi
  if [ "${SKIP_TOOLS:-0}" = 1 ]; then echo "restic and borg skipped (SKIP_TOOLS=1)"; else
  dropcaches; restic -q -r "$work/restic" init
  trs=$(timed restic_backup "$l")
  dropcaches; borg init -e none "$work/borg"
  tb=$(timed borg_backup "$l" a)
  echo "restic backup --stdin: ${trs} s; borg create (-e none, lz4): ${tb} s"
  echo "restic/tidemark time: $(ratio "$trs" "$tr"); borg/tidemark time: $(ratio "$tb" "$tr") (against the median replication; target >= 3)"
  # BORG_ENCRYPTED=1: borg once more, encrypting and authenticating as
  # tidemark and restic always do (-e repokey: AES-256-CTR + HMAC-SHA256,
  # borg's choice for CPUs with SHA and AES instructions).
  if [ "${BORG_ENCRYPTED:-0}" = 1 ]; then
    dropcaches; BORG_PASSPHRASE=tidemark-bench borg init -e repokey "$work/borg-enc" >/dev/null 2>&1
    tbe=$(BORG_PASSPHRASE=tidemark-bench timed borg_backup "$l" a "$work/borg-enc")
    echo "borg create (-e repokey, lz4): ${tbe} s; borg (encrypted)/tidemark time: $(ratio "$tbe" "$tr")"
  fi
  fi
  release_disk "$l"
  rm -rf "$work/restic" "$work/borg" "$work/borg-enc" "$target" "$spool" "$work/state" "$work/usr.img" "$work/mnt"

fi

# A loop device (O_DIRECT) over a new file of $2, filled with half-compressible data.
make_filled_disk() { # name size -> sets $l, $bytes
  fallocate -l "$2" "$work/$1.img"
  l=$(losetup -f --show --direct-io=on "$work/$1.img"); loops+=("$l")
  bytes=$(blockdev --getsize64 "$l")
  fio --name=fill --filename="$l" --rw=write --bs=1M --iodepth=8 --ioengine=io_uring --direct=1 --size="$bytes" \
      --buffer_compress_percentage=50 --refill_buffers --output=/dev/null
}

if [ "$what" = all ] || [ "$what" = incremental ]; then
  rounds=${INC_ROUNDS:-1}; skip=${SKIP_TOOLS:-0}
  echo "== incremental: 8 GiB disk, 1% of it rewritten in random 64 KiB writes after the initial copy ($rounds round(s))"
  make_filled_disk inc 8G
  repl_setup; start_server; start_agent "$l"
  t0=$(now); ti=$(elapsed "$t0" "$(committed_at 600)")
  if [ "$skip" != 1 ]; then
    dropcaches; restic -q -r "$work/restic" init; tri=$(timed restic_backup "$l")
    dropcaches; borg init -e none "$work/borg"; tbi=$(timed borg_backup "$l" a)
    cp --sparse=always "$work/inc.img" "$work/prev.img"
  fi
  io=$(( bytes / 100 )); tts=()
  for _ in $(seq "$rounds"); do
    fio --name=inc --filename="$l" --rw=randwrite --bs=64k --iodepth=8 --ioengine=io_uring --direct=1 --size="$bytes" \
        --io_size="$io" --randrepeat=0 --output=/dev/null
    tw=$(date +%s%3N)   # fio has returned: every write completed
    tts+=("$(awk -v a="$tw" -v b="$(committed_at 300 "$tw")" 'BEGIN {printf "%.3f", b-a/1000}')")
    [ "$rounds" = 1 ] || sleep 2
  done
  tt=$(printf '%s\n' "${tts[@]}" | median)
  read -r sent < <(st get bytes_sent)
  stop_repl
  echo "device: $((bytes >> 20)) MiB; rewritten: $((io >> 20)) MiB in 64 KiB random writes (O_DIRECT) per round"
  echo "incremental, last write to committed: tidemark ${tt} s (median of: ${tts[*]}; drain interval 1000 ms; $((sent >> 20)) MiB sent in total)"
  if [ "$skip" = 1 ]; then
    echo "initial copy: tidemark ${ti} s; restic, borg and rsync skipped (SKIP_TOOLS=1)"
  else
    dropcaches; trs=$(timed restic_backup "$l")
    dropcaches; tb=$(timed borg_backup "$l" b)
    dropcaches; trsync=$(timed rsync --inplace --no-whole-file --ignore-times "$work/inc.img" "$work/prev.img")
    cmp "$work/inc.img" "$work/prev.img" >/dev/null && echo "rsync copy verified identical (cmp)"
    echo "initial copies: tidemark ${ti} s, restic ${tri} s, borg ${tbi} s"
    echo "incremental: restic ${trs} s, borg ${tb} s, rsync --inplace --no-whole-file --ignore-times ${trsync} s (this rsync skips a file whose size is unchanged without -t; --ignore-times makes it run the delta)"
    echo "ratios (tool / tidemark, target >= 20): restic $(ratio "$trs" "$tt"), borg $(ratio "$tb" "$tt"), rsync $(ratio "$trsync" "$tt")"
  fi
  release_disk "$l"
  rm -rf "$work/restic" "$work/borg" "$target" "$spool" "$work/state" "$work/inc.img" "$work/prev.img"
fi

if [ "$what" = all ] || [ "$what" = rpo ]; then
  steady=${RPO_STEADY_S:-30}; stall=${RPO_STALL_S:-60}; after=${RPO_AFTER_S:-40}; drain=${RPO_DRAIN_MS:-1000}
  echo "== RPO under fio random 64 KiB writes at 100 MB/s (agent drain interval ${drain} ms, inflight_bytes ${INFLIGHT:-default}); server stalled (SIGSTOP) for ${stall} s"
  fallocate -l 4G "$work/rpo.img"
  l=$(losetup -f --show --direct-io=on "$work/rpo.img"); loops+=("$l")
  repl_setup; start_server; start_agent "$l" "$drain"
  committed_at 300 >/dev/null
  fio --name=rpo --filename="$l" --rw=randwrite --bs=64k --iodepth=4 --ioengine=io_uring --direct=1 --size=4G \
      --rate=100000000 --time_based --runtime=$((steady + stall + after + 10)) --randrepeat=0 \
      --output-format=json --output="$work/rpo-fio.json" &
  bgpids+=($!); fiopid=$!
  sleep 5
  st sample 0.1 "$steady" > "$work/steady.txt"
  rss0=$(awk '{print $3}' "$work/steady.txt" | pct 50)
  kill -STOP "$server"; ts=$(now)
  st sample 0.5 "$stall" > "$work/stall.txt"
  kill -CONT "$server"; tc=$(now)
  st sample 0.1 "$after" > "$work/after.txt"
  wait "$fiopid" || true; bgpids=()
  wbw=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["jobs"][0]["write"]["bw_bytes"]))' "$work/rpo-fio.json")
  stop_repl
  p50=$(awk '{print $2}' "$work/steady.txt" | pct 50); p99=$(awk '{print $2}' "$work/steady.txt" | pct 99)
  mx=$(awk '{print $2}' "$work/steady.txt" | pct 100)
  rssmax=$(awk '{print $3}' "$work/stall.txt" "$work/after.txt" | pct 100)
  stall_rpo=$(tail -1 "$work/stall.txt" | awk '{print $2}')
  back=$(awk -v c="$tc" '$2 >= 0 && $2 <= 2000 {printf "%.1f", $1-c; exit}' "$work/after.txt")
  after_p99=$(awk -v c="$tc" -v b="${back:-1e9}" '$1-c > b {print $2}' "$work/after.txt" | pct 99)
  echo "fio wrote at $((wbw / 1000000)) MB/s (random 64 KiB, O_DIRECT, rate-limited to 100 MB/s)"
  echo "steady RPO over ${steady} s (samples every 100 ms): p50 ${p50} ms, p99 ${p99} ms, max ${mx} ms (target p99 <= 2000)"
  echo "agent RSS: ${rss0} bytes before the stall, max ${rssmax} during/after: growth $(( (rssmax - rss0) >> 20 )) MiB (target <= 64)"
  echo "RPO at the end of the ${stall} s stall: ${stall_rpo} ms; back to <= 2000 ms ${back:-never} s after SIGCONT (target <= 30 s); p99 after that ${after_p99:-n/a} ms"
  release_disk "$l"
  rm -rf "$target" "$spool" "$work/state" "$work/rpo.img"
fi

if [ "$what" = all ] || [ "$what" = freeze ]; then
  npoints=${FREEZE_POINTS:-40}; direct=${FREEZE_DIRECT:-0}
  echo "== crash-consistent point freeze time under 50 MB/s of $([ "$direct" = 1 ] && echo O_DIRECT || echo buffered) random writes on ext4, $npoints points"
  fallocate -l 4G "$work/fz.img"
  l=$(losetup -f --show --direct-io=on "$work/fz.img"); loops+=("$l")
  mkfs.ext4 -q -F "$l"; mkdir -p "$work/fz"; mount "$l" "$work/fz"; mounts+=("$work/fz")
  repl_setup; start_server; start_agent "$l"
  committed_at 300 >/dev/null
  fio --name=churn --directory="$work/fz" --rw=randwrite --bs=64k --size=2G --ioengine=psync --direct="$direct" \
      --rate=50000000 --time_based --runtime=3600 --randrepeat=0 --output=/dev/null &
  bgpids+=($!); fiopid=$!
  sleep 5
  t0=$(now); make_points "$npoints" "$work/freeze.txt" --disk "$l"
  tp=$(elapsed "$t0" "$(now)")
  "$BIN/tidemarkctl" status --socket "$work/agent.sock" | sed 's/^/tidemarkctl status: /'
  kill "$fiopid"; wait "$fiopid" 2>/dev/null || true; bgpids=()
  stop_repl
  echo "$npoints points in ${tp} s; last: $out"
  echo "freeze ms: p50 $(pct 50 < "$work/freeze.txt"), p99 $(pct 99 < "$work/freeze.txt"), max $(pct 100 < "$work/freeze.txt") (target p99 <= 50)"
  echo "points not made: $(wc -l < "$work/abandoned.txt") of $npoints"; sed 's/^/  /' "$work/abandoned.txt"
  grep -o 'reading and tagging under the freeze took.*' "$work/agent.err" | sed 's/^/  slow: /' || true
  echo "all: $(sort -n "$work/freeze.txt" | tr '\n' ' ')"
  echo "slowest, as the agent splits them:"; grep -o 'frozen .*' "$work/agent.err" | sort -k2 -n | tail -3 | sed 's/^/  /'
  echo "median one: $(grep -o 'frozen .*' "$work/agent.err" | sort -k2 -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
  umount "$work/fz"; mounts=()
  release_disk "$l"
  rm -rf "$target" "$spool" "$work/state" "$work/fz.img" "$work/fz"
fi

if [ "$what" = all ] || [ "$what" = appfreeze ]; then
  # Issue 19's target: an app-consistent point whose pre-freeze hook makes
  # the application write HOOK_MIB (a database's checkpoint) freezes no
  # longer than a crash-consistent one; the agent reads what the hook wrote
  # before the freeze.
  npoints=${APPFREEZE_POINTS:-20}; hookmib=${HOOK_MIB:-256}
  echo "== app-consistent point freeze time, the pre-freeze hook writing $hookmib MiB, under 50 MB/s of buffered random writes on ext4, $npoints points"
  fallocate -l 4G "$work/afz.img"
  l=$(losetup -f --show --direct-io=on "$work/afz.img"); loops+=("$l")
  mkfs.ext4 -q -F "$l"; mkdir -p "$work/afz"; mount "$l" "$work/afz"; mounts+=("$work/afz")
  printf '#!/bin/sh\ndd if=/dev/urandom of=%s/checkpoint bs=1M count=%s status=none\n' "$work/afz" "$hookmib" > "$work/pre-freeze.sh"
  chmod 755 "$work/pre-freeze.sh"
  repl_setup; start_server; HOOKS="  pre_freeze_hook: $work/pre-freeze.sh" start_agent "$l"
  committed_at 300 >/dev/null
  fio --name=churn --directory="$work/afz" --rw=randwrite --bs=64k --size=1G --ioengine=psync \
      --rate=50000000 --time_based --runtime=3600 --randrepeat=0 --output=/dev/null &
  bgpids+=($!); fiopid=$!
  sleep 5
  t0=$(now); make_points "$npoints" "$work/appfreeze.txt" --app-consistent --disk "$l"
  tp=$(elapsed "$t0" "$(now)")
  kill "$fiopid"; wait "$fiopid" 2>/dev/null || true; bgpids=()
  stop_repl
  echo "$npoints points in ${tp} s; last: $out"
  echo "app freeze ms: p50 $(pct 50 < "$work/appfreeze.txt"), p99 $(pct 99 < "$work/appfreeze.txt"), max $(pct 100 < "$work/appfreeze.txt") (target p99 <= 50)"
  echo "points not made: $(wc -l < "$work/abandoned.txt") of $npoints"; sed 's/^/  /' "$work/abandoned.txt"
  echo "all: $(sort -n "$work/appfreeze.txt" | tr '\n' ' ')"
  echo "slowest, as the agent splits them:"; grep -o 'frozen .*' "$work/agent.err" | sort -k2 -n | tail -3 | sed 's/^/  /'
  echo "median one: $(grep -o 'frozen .*' "$work/agent.err" | sort -k2 -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}')"
  umount "$work/afz"; mounts=()
  release_disk "$l"
fi

if [ "$what" = all ] || [ "$what" = recover ]; then
  # RECOVER_TARGET_DIR=DIR puts the process server's target and spool in a new
  # directory under DIR (e.g. /dev/shm: another storage than the destination's
  # disk, as a process server's storage is in production); the image and fio's
  # file stay in $work.
  if [ -n "${RECOVER_TARGET_DIR:-}" ]; then
    separate=$(mktemp -d "$RECOVER_TARGET_DIR/tidemark-bench-target.XXXXXX")
    target="$separate/target"; spool="$separate/spool"
    where="target and spool in $separate ($(df --output=fstype "$separate" | tail -1)), image in $work ($(df --output=fstype "$work" | tail -1))"
  else
    where="target, spool and image in $work ($(df --output=fstype "$work" | tail -1))"
  fi
  echo "== tidemarkctl recover of a 4 GiB point vs fio sequential write (O_DIRECT, 8 × 1 MiB in flight, + fdatasync, as recover writes) to the same directory; $where"
  make_filled_disk rec 4G
  repl_setup; start_server; start_agent "$l"
  committed_at 600 >/dev/null
  point=$("$BIN/tidemarkctl" point create --disk "$l" --socket "$work/agent.sock" | awk '{print $2}')
  stop_repl
  target_bytes=$(du -sb "$target" | cut -f1)
  fw=(); rr=(); cpus=()
  for r in 1 2 3; do
    dropcaches
    t=$(timed fio --name=sw --filename="$work/fio-w.img" --rw=write --bs=1M --ioengine=io_uring --iodepth=8 --direct=1 --end_fsync=1 --size="$bytes")
    fw+=("$(awk -v b="$bytes" -v s="$t" 'BEGIN {printf "%d", b/s}')"); rm -f "$work/fio-w.img"
    dropcaches
    t0=$(now); TIMEFORMAT='%U %S'
    cpu=$( { time "$BIN/tidemarkctl" recover --point "$point" --to "$work/recovered.img" --target "$target" --key "$work/tls/replication.key" >/dev/null 2>&1; } 2>&1 )
    t=$(elapsed "$t0" "$(now)"); cpus+=("$(echo "$cpu" | awk '{printf "%.1f+%.1f", $1, $2}')")
    rr+=("$(awk -v b="$bytes" -v s="$t" 'BEGIN {printf "%d", b/s}')")
    [ "$r" = 3 ] || rm -f "$work/recovered.img"
  done
  cmp "$l" "$work/recovered.img" && echo "recovered image verified identical to the source (cmp)"
  if [ "${PERF:-0}" = 1 ]; then  # where a recovery spends its CPU (one more run under perf)
    dropcaches; rm -f "$work/recovered.img"
    perf record -q -g -o "$work/perf.data" "$BIN/tidemarkctl" recover --point "$point" --to "$work/recovered.img" --target "$target" --key "$work/tls/replication.key" >/dev/null 2>&1
    # (|| true: head ends the pipe early, which pipefail would count as a failure)
    echo "perf: by library"
    perf report -i "$work/perf.data" --stdio --no-children --sort dso 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-100 | head -8 || true
    echo "perf: by symbol"
    perf report -i "$work/perf.data" --stdio --no-children --sort dso,symbol 2>/dev/null | grep -E '^ +[0-9]' | cut -c1-120 | head -20 || true
  fi
  m_f=$(printf '%s\n' "${fw[@]}" | median); m_r=$(printf '%s\n' "${rr[@]}" | median)
  echo "disk $((bytes >> 20)) MiB, target holds $((target_bytes >> 20)) MiB (cold cache before each run)"
  echo "fio seq write: $(mibps "$m_f" 1) MiB/s; recover: $(mibps "$m_r" 1) MiB/s (runs: fio ${fw[*]}, recover ${rr[*]})"
  echo "recover CPU seconds (user+system) per run: ${cpus[*]}"
  echo "recover/fio ratio: $(ratio "$m_r" "$m_f") (target >= 0.8)"
  release_disk "$l"
  rm -rf "$target" "$spool" "$work/state" "$work/rec.img" "$work/recovered.img" ${separate:+"$separate"}
  separate=""; target="$work/target"; spool="$work/spool"
fi

# Issue #4: the agent tracking and replicating an idle disk (ext4 mounted, no
# writes): CPU as a share of one core over IDLE_SECONDS, and RSS.
if [ "$what" = all ] || [ "$what" = idle ]; then
  echo "== idle agent: CPU and RSS while tracking an idle disk"
  repl_setup
  truncate -s 1G "$work/idle.img"
  l=$(losetup -f --show "$work/idle.img"); loops+=("$l")
  mkfs.ext4 -q -F "$l"; mkdir -p "$work/idle-mnt"; mount "$l" "$work/idle-mnt"; mounts+=("$work/idle-mnt"); cp -a /usr/share/doc/apt "$work/idle-mnt/"; sync
  start_server
  start_agent "$l"
  committed_at 120 >/dev/null   # initial replication done
  sleep 5                       # settle
  secs=${IDLE_SECONDS:-60}
  c0=$(awk '{print $14+$15}' "/proc/$agent/stat"); t0=$(now)
  sleep "$secs"
  c1=$(awk '{print $14+$15}' "/proc/$agent/stat"); t1=$(now)
  rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status"); hwm_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$agent/status")
  awk -v c="$((c1 - c0))" -v hz="$(getconf CLK_TCK)" -v t="$(elapsed "$t0" "$t1")" \
    'BEGIN {printf "agent CPU while idle: %.3f%% of one core over %.0f s (target <= 1%%)\n", 100*c/hz/t, t}'
  echo "agent RSS: $((rss_kib / 1024)) MiB now, $((hwm_kib / 1024)) MiB peak since start (target <= 64 MiB)"
  stop_repl
  umount "$work/idle-mnt"
  release_disk "$l"
  rm -rf "$work/idle.img" "$target" "$spool" "$work/state"
fi
