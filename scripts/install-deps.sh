#!/usr/bin/env bash
# Installs what building and testing Tidemark needs on Debian 12, idempotently.
set -euo pipefail
pkgs=(libbpf-dev libelf-dev libext2fs-dev liburing-dev libzstd-dev zlib1g-dev libssl-dev openssl zstd fio e2fsprogs xfsprogs postgresql util-linux xxd python3-seccomp bpftool
      dpkg-dev fakeroot binutils debootstrap lintian)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "error: installing packages needs root (run with sudo)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
export PATH=/opt/swift/usr/bin:$PATH
command -v swift >/dev/null || { echo "error: Swift 6 toolchain not found (expected /opt/swift/usr/bin/swift)" >&2; exit 1; }
# The tracer needs the BPF filesystem (the agent mounts it itself if missing; tracepoints attach through BPF, not tracefs).
if [ "$(id -u)" = 0 ]; then
  mountpoint -q /sys/fs/bpf || { mount -t bpf bpf /sys/fs/bpf && echo "mounted the BPF filesystem at /sys/fs/bpf"; }
fi
