#!/usr/bin/env bash
# Tests the Debian packages (as root):
#
#   Packaging/test-deb.sh [chroot] [host]      (both when none is named)
#
# chroot: builds both packages and a rebuilt "newer" version, installs them
#   with apt into a fresh Debian 12 chroot made by debootstrap (no systemd
#   running there), checks files, modes, conffiles and the enabled units, runs
#   the binaries, upgrades with a locally edited conffile and some state,
#   removes (state kept) and purges (nothing left behind).
# host: installs both packages on this machine, starts the server and the
#   agent from the commands of their unit files (this machine runs no
#   systemd), protects a loop device with ext4, writes, upgrades the packages
#   with the agent stopped and files being written meanwhile, and shows that
#   the .hrl needs no resync and that no write was missed (a point recovered
#   after the upgrade equals the disk as frozen). Purges at the end.
#
# Environment: DEBIAN_MIRROR (default: the first URI of /etc/apt/sources.list.d/debian.sources
# or deb.debian.org), TIDEMARK_DEB_CACHE (default /var/cache/tidemark-test: the
# debootstrap tarball is kept there between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(chroot host)
[ "$(id -u)" = 0 ] || { echo "test-deb.sh: needs root (debootstrap, chroot, dpkg -i)" >&2; exit 1; }
for tool in debootstrap lintian; do
    command -v "$tool" >/dev/null || { echo "test-deb.sh: $tool is missing: apt-get install debootstrap lintian" >&2; exit 1; }
done

say() { printf '== %s\n' "$*"; }
fail() { printf 'test-deb.sh: FAILED: %s\n' "$*" >&2; exit 1; }
check() { # description command...
    local what=$1; shift
    if "$@"; then printf '  ok  %s\n' "$what"; else fail "$what"; fi
}

work=$(mktemp -d /var/tmp/tidemark-deb.XXXXXX)
chroot_dir=""; loop=""; mnt=""; server_pid=""; agent_pid=""; host_installed=0
cleanup() {
    set +e
    [ -n "$agent_pid" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [ -n "$mnt" ] && mountpoint -q "$mnt" && umount "$mnt"
    if [ "$host_installed" = 1 ]; then
        [ -n "$loop" ] && tidemark-agent untrack --disk "$loop" --config /etc/tidemark/agent.yaml >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tidemark-agent tidemark-server >/dev/null 2>&1
        rm -rf /etc/tidemark/tls
        rmdir /etc/tidemark 2>/dev/null
    fi
    [ -n "$loop" ] && losetup -d "$loop"
    if [ -n "$chroot_dir" ]; then
        for m in proc sys dev/pts dev; do mountpoint -q "$chroot_dir/$m" && umount -l "$chroot_dir/$m"; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

version=$(sed -n 's/^public let tidemarkVersion = "\(.*\)"$/\1/p' Sources/TidemarkSystem/Version.swift)
newer="$version+upgradetest1"
say "building $version and $newer"
Packaging/build-deb.sh --out "$work/v1" >"$work/build1.log" 2>&1 || { tail -n 30 "$work/build1.log"; fail "build-deb.sh"; }
Packaging/build-deb.sh --out "$work/v2" --version "$newer" >"$work/build2.log" 2>&1 || { tail -n 30 "$work/build2.log"; fail "build-deb.sh --version"; }
agent_deb="$work/v1/tidemark-agent_${version}_amd64.deb"
server_deb="$work/v1/tidemark-server_${version}_amd64.deb"
size=$(stat -c %s "$agent_deb")
check "agent package is $((size / 1024 / 1024)) MiB (≤ 30 MB)" test "$size" -le 30000000
lintian_out=$(lintian "$agent_deb" "$server_deb" 2>&1 | grep -v 'running with root privileges' || true)
check "lintian: no error or warning${lintian_out:+: $lintian_out}" test -z "$lintian_out"

run_chroot() {
    local cache=${TIDEMARK_DEB_CACHE:-/var/cache/tidemark-test}
    local mirror=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)}
    mirror=${mirror:-http://deb.debian.org/debian}
    mkdir -p "$cache"
    chroot_dir="$work/chroot"
    if [ ! -s "$cache/bookworm-minbase.tgz" ]; then
        say "debootstrap tarball ($mirror)"
        debootstrap --variant=minbase --make-tarball="$cache/bookworm-minbase.tgz.tmp" bookworm "$work/tarball-tmp" "$mirror" >"$work/debootstrap.log" 2>&1 \
            || { tail -n 20 "$work/debootstrap.log"; fail "debootstrap --make-tarball"; }
        mv "$cache/bookworm-minbase.tgz.tmp" "$cache/bookworm-minbase.tgz"
        rm -rf "$work/tarball-tmp"
    fi
    say "fresh Debian 12 chroot"
    debootstrap --variant=minbase --unpack-tarball="$cache/bookworm-minbase.tgz" bookworm "$chroot_dir" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log"; fail "debootstrap"; }
    cp /etc/resolv.conf "$chroot_dir/etc/resolv.conf"
    mount -t proc proc "$chroot_dir/proc"
    mount --bind /dev "$chroot_dir/dev"
    cp "$agent_deb" "$server_deb" "$work"/v2/*.deb "$chroot_dir/tmp/"
    in_chroot() { chroot "$chroot_dir" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
    in_chroot apt-get update -q >"$work/apt.log" 2>&1 || { tail "$work/apt.log"; fail "apt-get update in the chroot"; }
    # What a purge must leave: the tree before the packages (apt's caches and logs aside).
    snapshot() {
        (cd "$chroot_dir" && find . -xdev \( -path ./proc -o -path ./dev -o -path ./tmp -o -path ./var/cache -o -path ./var/log \
            -o -path ./var/lib/apt -o -path ./var/lib/dpkg -o -path ./run \) -prune -o -print | sort)
    }
    # Dependencies first, so the before/after comparison sees only our files.
    local deps
    deps=$(dpkg-deb -f "$agent_deb" Depends | tr ',' '\n' | sed 's/(.*//; s/ //g')
    deps="$deps $(dpkg-deb -f "$server_deb" Depends | tr ',' '\n' | sed 's/(.*//; s/ //g')"
    in_chroot apt-get install -y -q --no-install-recommends $deps >>"$work/apt.log" 2>&1 || { tail "$work/apt.log"; fail "installing dependencies"; }
    snapshot >"$work/before.txt"

    say "install (apt install ./*.deb, no systemd running)"
    in_chroot apt-get install -y -q "/tmp/$(basename "$agent_deb")" "/tmp/$(basename "$server_deb")" >>"$work/apt.log" 2>&1 \
        || { tail -n 30 "$work/apt.log"; fail "apt install of the packages"; }
    check "tidemark-agent --version prints $version" test "$(in_chroot tidemark-agent --version)" = "$version"
    check "tidemark-bitmap --help runs" sh -c "chroot '$chroot_dir' tidemark-bitmap --help >/dev/null"
    check "tidemarkctl --version runs" sh -c "chroot '$chroot_dir' tidemarkctl --version >/dev/null"
    check "tidemark-server --help runs" sh -c "chroot '$chroot_dir' tidemark-server --help >/dev/null"
    for f in usr/bin/tidemark-agent usr/bin/tidemark-bitmap usr/bin/tidemark-server usr/bin/tidemarkctl; do
        check "/$f is 0755 root:root" test "$(stat -c '%a %U:%G' "$chroot_dir/$f")" = "755 root:root"
    done
    check "/usr/lib/systemd/system-shutdown/tidemark is 0755 root:root" test "$(stat -c '%a %U:%G' "$chroot_dir/usr/lib/systemd/system-shutdown/tidemark")" = "755 root:root"
    check "the shutdown hook runs the agent's shutdown-seal" grep -q 'tidemark-agent shutdown-seal' "$chroot_dir/usr/lib/systemd/system-shutdown/tidemark"
    check "shutdown-seal with nothing tracked writes nothing and exits 0" sh -c "chroot '$chroot_dir' /usr/lib/systemd/system-shutdown/tidemark reboot | grep -q 'nothing to seal'"
    check "/var/lib/tidemark is 0700" test "$(stat -c %a "$chroot_dir/var/lib/tidemark")" = 700
    check "/etc/tidemark/agent.yaml is a conffile" sh -c "chroot '$chroot_dir' dpkg-query -W -f='\${Conffiles}' tidemark-agent | grep -q /etc/tidemark/agent.yaml"
    check "/etc/tidemark/server.yaml is a conffile" sh -c "chroot '$chroot_dir' dpkg-query -W -f='\${Conffiles}' tidemark-server | grep -q /etc/tidemark/server.yaml"
    check "man pages installed" test -s "$chroot_dir/usr/share/man/man8/tidemark-agent.8.gz" -a -s "$chroot_dir/usr/share/man/man8/tidemarkctl.8.gz"
    check "bash completion installed" test -s "$chroot_dir/usr/share/bash-completion/completions/tidemark-agent"
    check "agent unit enabled (sysinit.target.wants)" test -L "$chroot_dir/etc/systemd/system/sysinit.target.wants/tidemark-agent.service"
    check "server unit enabled (multi-user.target.wants)" test -L "$chroot_dir/etc/systemd/system/multi-user.target.wants/tidemark-server.service"
    check "the shipped agent.yaml parses" sh -c "chroot '$chroot_dir' tidemark-agent run --config /etc/tidemark/agent.yaml 2>&1 | grep -q 'no disk'"

    say "upgrade to $newer with a locally edited conffile and state"
    echo "# local edit kept across upgrades" >>"$chroot_dir/etc/tidemark/agent.yaml"
    echo "state" >"$chroot_dir/var/lib/tidemark/test.hrl"
    echo "seal" >"$chroot_dir/var/lib/tidemark/shutdown.seal"
    in_chroot apt-get install -y -q "/tmp/tidemark-agent_${newer}_amd64.deb" "/tmp/tidemark-server_${newer}_amd64.deb" >>"$work/apt.log" 2>&1 \
        || { tail -n 30 "$work/apt.log"; fail "upgrade"; }
    check "upgraded to $newer" test "$(in_chroot dpkg-query -W -f='${Version}' tidemark-agent)" = "$newer"
    check "local conffile edit survived" grep -q "local edit kept" "$chroot_dir/etc/tidemark/agent.yaml"
    check "state survived the upgrade" test -s "$chroot_dir/var/lib/tidemark/test.hrl" -a -s "$chroot_dir/var/lib/tidemark/shutdown.seal"

    say "remove (state and conffiles kept), then purge (nothing left)"
    in_chroot apt-get remove -y -q tidemark-agent tidemark-server >>"$work/apt.log" 2>&1 || fail "apt remove"
    check "binaries gone after remove" test ! -e "$chroot_dir/usr/bin/tidemark-agent"
    check "state kept after remove" test -s "$chroot_dir/var/lib/tidemark/test.hrl"
    check "conffile kept after remove" test -s "$chroot_dir/etc/tidemark/agent.yaml"
    in_chroot apt-get purge -y -q tidemark-agent tidemark-server >>"$work/apt.log" 2>&1 || fail "apt purge"
    snapshot >"$work/after.txt"
    local left
    left=$(diff "$work/before.txt" "$work/after.txt" || true)
    check "nothing left behind after purge${left:+: $left}" test -z "$left"
    for m in dev proc; do umount -l "$chroot_dir/$m"; done
    chroot_dir=""
}

run_host() {
    export PATH=/usr/sbin:/usr/bin:/sbin:/bin
    [ ! -e /etc/tidemark ] && [ ! -e /usr/bin/tidemark-agent ] \
        || fail "this machine already has /etc/tidemark or tidemark installed; the host test would overwrite it"
    say "install on this machine"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$agent_deb" "$server_deb" >"$work/host-apt.log" 2>&1 \
        || { tail -n 30 "$work/host-apt.log"; fail "apt install on the host"; }
    host_installed=1
    local verify
    verify=$(systemd-analyze verify /lib/systemd/system/tidemark-agent.service /lib/systemd/system/tidemark-server.service 2>&1 || true)
    check "systemd-analyze verify is clean${verify:+: $verify}" test -z "$verify"
    check "the agent unit thaws what a dead agent left frozen when it stops (ExecStopPost)" \
        grep -qx 'ExecStopPost=/usr/bin/tidemark-agent thaw-leftovers' /lib/systemd/system/tidemark-agent.service
    check "thaw-leftovers with nothing left frozen exits 0" /usr/bin/tidemark-agent thaw-leftovers

    say "the agent unit on a fresh install (nothing configured) waits and says what is missing"
    # shellcheck disable=SC2046
    $(sed -n 's/^ExecStart=//p' /lib/systemd/system/tidemark-agent.service) >"$work/idle.log" 2>&1 &
    agent_pid=$!
    for _ in $(seq 100); do grep -q "not replicating" "$work/idle.log" && break; sleep 0.1; done
    check "the unconfigured agent says what is missing: $(head -n 1 "$work/idle.log")" grep -q "not replicating: no disk to replicate" "$work/idle.log"
    kill -HUP "$agent_pid"
    for _ in $(seq 50); do grep -q "still not replicating" "$work/idle.log" && break; sleep 0.1; done
    check "SIGHUP re-reads the file" grep -q "reloaded /etc/tidemark/agent.yaml; still not replicating" "$work/idle.log"
    kill -TERM "$agent_pid"
    local rc=0; wait "$agent_pid" || rc=$?
    check "the waiting agent stops on SIGTERM with status 0" test "$rc" = 0
    agent_pid=""

    # A loop disk with ext4, certificates, and the two config files.
    truncate -s 256M "$work/disk.img"
    loop=$(losetup -f --show "$work/disk.img")
    mnt="$work/mnt"; mkdir -p "$mnt"
    mkfs.ext4 -q -F "$loop"; mount "$loop" "$mnt"; cp -a /usr/share/doc/apt "$mnt/"; sync
    scripts/make-certs.sh /etc/tidemark/tls --agent agent-pkgtest >/dev/null
    sed -i -e 's#^listen: .*#listen: 127.0.0.1:19443#' -e "s#^spool_dir: .*#spool_dir: $work/spool#" \
        -e "s#^  path: /var/lib/tidemark/target#  path: $work/target#" /etc/tidemark/server.yaml
    sed -i -e 's#^agent_id: .*#agent_id: agent-pkgtest#' -e "s#^disks: .*#disks: [$loop]#" -e 's#^drain_interval_ms: .*#drain_interval_ms: 100#' \
        -e 's#^  server: ""#  server: 127.0.0.1:19443#' -e 's#/etc/tidemark/tls/agent\.#/etc/tidemark/tls/agent-pkgtest.#' \
        -e 's#^  replication_key: .*#  replication_key: /etc/tidemark/tls/replication.key#' \
        -e 's#^  crash_consistent_interval: .*#  crash_consistent_interval: 0#' -e 's#^  app_consistent_interval: .*#  app_consistent_interval: 0#' \
        -e 's#^  freeze_timeout_ms: .*#  freeze_timeout_ms: 30000#' -e "s#^control_socket: .*#control_socket: $work/agent.sock#" \
        /etc/tidemark/agent.yaml
    printf '#!/bin/sh\ndd if="$TIDEMARK_DISK" of=%s/truth.img bs=1M iflag=direct status=none\n' "$work" >"$work/frozen-hook.sh"
    chmod 755 "$work/frozen-hook.sh"

    unit_exec() { sed -n 's/^ExecStart=//p' "/lib/systemd/system/$1.service"; }
    start_server() {
        # shellcheck disable=SC2046
        $(unit_exec tidemark-server) >>"$work/server.log" 2>&1 &
        server_pid=$!
    }
    start_agent() {
        # shellcheck disable=SC2046
        TIDEMARK_TEST_FROZEN_HOOK="$work/frozen-hook.sh" $(unit_exec tidemark-agent) >>"$work/agent.log" 2>&1 &
        agent_pid=$!
        for _ in $(seq 200); do grep -q "replicating" "$work/agent.log" && return; sleep 0.1; done
        tail "$work/agent.log"; fail "the agent did not start from its unit's ExecStart"
    }
    stop_agent() { # as systemd does: SIGTERM, wait within TimeoutStopSec
        kill -TERM "$agent_pid"
        local t=0
        while kill -0 "$agent_pid" 2>/dev/null; do sleep 0.1; t=$((t + 1)); [ $t -lt 300 ] || fail "the agent did not stop within 30 s of SIGTERM"; done
        wait "$agent_pid" || true; agent_pid=""
    }
    point() {
        tidemarkctl point create --disk "$loop" --socket "$work/agent.sock" >"$work/point.out" 2>>"$work/agent.log" \
            || { tail -n 20 "$work/agent.log" "$work/server.log"; fail "point create"; }
        awk '{print $2; exit}' "$work/point.out"
    }

    say "start server and agent from their unit files; replicate; write"
    start_server
    start_agent
    for i in 1 2 3; do head -c 3M /dev/urandom >"$mnt/before-$i"; done; sync
    point >/dev/null

    say "upgrade with the agent stopped while files are being written"
    stop_agent
    grep -q "tracking stays pinned" "$work/agent.log" || fail "the agent did not stop cleanly on SIGTERM"
    for i in 1 2 3; do head -c 2M /dev/urandom >"$mnt/during-$i"; done; sync
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$work/v2/tidemark-agent_${newer}_amd64.deb" "$work/v2/tidemark-server_${newer}_amd64.deb" \
        >>"$work/host-apt.log" 2>&1 || { tail -n 30 "$work/host-apt.log"; fail "upgrade on the host"; }
    check "upgraded to $newer" test "$(dpkg-query -W -f='${Version}' tidemark-agent)" = "$newer"
    check "local edits of agent.yaml survived the upgrade" grep -q "agent_id: agent-pkgtest" /etc/tidemark/agent.yaml
    start_agent
    for i in 1 2; do head -c 1M /dev/urandom >"$mnt/after-$i"; done; sync
    local hrl state
    hrl=$(ls /var/lib/tidemark/*.hrl)
    state=$(tidemark-bitmap show "$hrl" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
    check "the .hrl needs no resync after the upgrade (state: $state)" test "$state" = tracking
    check "the restarted agent did not start a resync" test "$(grep -c -e 'initial replication of' -e 'by digest comparison' "$work/agent.log")" = 1
    local id
    id=$(point)
    tidemarkctl recover --point "$id" --to "$work/recovered.img" --target "$work/target" --key /etc/tidemark/tls/replication.key >/dev/null 2>"$work/recover.log" \
        || { cat "$work/recover.log"; fail "recover"; }
    check "no write was missed: the point recovered after the upgrade equals the frozen disk" cmp -s "$work/recovered.img" "$work/truth.img"
    stop_agent
    kill "$server_pid"; wait "$server_pid" || true; server_pid=""

    say "purge: state removed, tracking unpinned"
    check "tracking is pinned while no agent runs" test -e /sys/fs/bpf/tidemark/link
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tidemark-agent tidemark-server >>"$work/host-apt.log" 2>&1 || fail "apt purge on the host"
    host_installed=0
    check "purge unpinned the tracer" test ! -e /sys/fs/bpf/tidemark
    check "purge removed the state" test ! -e /var/lib/tidemark
    check "purge removed the conffiles" test ! -e /etc/tidemark/agent.yaml -a ! -e /etc/tidemark/server.yaml
    rm -rf /etc/tidemark/tls; rmdir /etc/tidemark
}

for m in "${modes[@]}"; do
    case "$m" in
        chroot) run_chroot ;;
        host) run_host ;;
        *) fail "unknown mode '$m' (chroot, host)" ;;
    esac
done
say "packages: all checks passed"
