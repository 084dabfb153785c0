#!/usr/bin/env bash
# Builds the two Debian packages from a clean checkout:
#
#   tidemark-agent_<version>_amd64.deb   tidemark-agent, tidemark-bitmap
#   tidemark-server_<version>_amd64.deb  tidemark-server, tidemarkctl
#
#   Packaging/build-deb.sh [--out DIR] [--version VERSION] [--scratch-path DIR]
#
# Release build with the Swift standard library and Foundation linked
# statically, stripped binaries, shared-library dependencies computed with
# dpkg-shlibdeps, man pages and bash completion generated from the argument
# parsers. The version comes from Sources/TidemarkSystem/Version.swift (the one
# place it is written); --version overrides the package version only (used by
# the upgrade test to build a "newer" package of the same tree).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out="$root/Packaging/out"
scratch="$root/.build-pkg"
version=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --scratch-path) scratch="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-deb.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
source_version=$(sed -n 's/^public let tidemarkVersion = "\(.*\)"$/\1/p' Sources/TidemarkSystem/Version.swift)
[ -n "$source_version" ] || { echo "build-deb.sh: no tidemarkVersion in Sources/TidemarkSystem/Version.swift" >&2; exit 1; }
version=${version:-$source_version}
[[ "$version" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "build-deb.sh: '$version' is not a Debian version" >&2; exit 2; }
for tool in dpkg-deb dpkg-shlibdeps fakeroot gzip strip; do
    command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool is missing: apt-get install dpkg-dev fakeroot binutils" >&2; exit 1; }
done
export PATH=/opt/swift/usr/bin:$PATH
arch=$(dpkg --print-architecture)

echo "== release build (static Swift runtime) in $scratch"
# Hardening as Debian builds C: immediate binding, read-only relocations
# (_FORTIFY_SOURCE cannot be passed through -Xcc: it gives glibc headers a
# different body in each Clang module and the Swift build fails.)
flags=(-c release --static-swift-stdlib --scratch-path "$scratch"
       -Xlinker -z -Xlinker now -Xlinker -z -Xlinker relro)
for product in tidemark-agent tidemark-bitmap tidemark-server tidemarkctl; do
    swift build "${flags[@]}" --product "$product" 2>&1 | tail -n 1
done
bin=$(swift build "${flags[@]}" --show-bin-path)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

# man page (section 8 for daemons and admin tools, 1 for the rest) from
# `--experimental-dump-help` of the argument parser.
manpage() { # binary section package-dir
    local name; name=$(basename "$1")
    mkdir -p "$3/usr/share/man/man$2"
    "$1" --experimental-dump-help | python3 Packaging/manpage.py --section "$2" --version "$version" \
        | gzip -9n >"$3/usr/share/man/man$2/$name.$2.gz"
}

completion() { # binary package-dir
    local name; name=$(basename "$1")
    mkdir -p "$2/usr/share/bash-completion/completions"
    "$1" --generate-completion-script bash | sed '1{/^#!/d}' >"$2/usr/share/bash-completion/completions/$name"
}

# package name, description, binaries "name:section" ...
build_package() {
    local pkg=$1 description=$2; shift 2
    local dir="$stage/$pkg"
    mkdir -p "$dir/DEBIAN" "$dir/usr/bin" "$dir/usr/share/doc/$pkg"
    local bins=()
    for spec in "$@"; do
        local b=${spec%%:*} section=${spec##*:}
        install -m 0755 "$bin/$b" "$dir/usr/bin/$b"
        strip --strip-unneeded --remove-section=.comment --remove-section=.note "$dir/usr/bin/$b"
        manpage "$dir/usr/bin/$b" "$section" "$dir"
        completion "$dir/usr/bin/$b" "$dir"
        bins+=("$dir/usr/bin/$b")
    done
    install -m 0755 Packaging/debian/$pkg/postinst Packaging/debian/$pkg/prerm Packaging/debian/$pkg/postrm "$dir/DEBIAN/"
    install -m 0644 Packaging/debian/$pkg/conffiles "$dir/DEBIAN/"
    install -D -m 0644 "Packaging/${pkg#tidemark-}.yaml" "$dir/etc/tidemark/${pkg#tidemark-}.yaml"
    install -D -m 0644 "Packaging/systemd/$pkg.service" "$dir/lib/systemd/system/$pkg.service"
    if [ "$pkg" = tidemark-agent ]; then
        # Run by systemd-shutdown once every filesystem is read-only (docs/shutdown-seal.md).
        install -D -m 0755 Packaging/systemd/system-shutdown/tidemark "$dir/usr/lib/systemd/system-shutdown/tidemark"
    fi
    install -m 0644 Packaging/copyright "$dir/usr/share/doc/$pkg/copyright"
    install -D -m 0644 "Packaging/lintian/$pkg" "$dir/usr/share/lintian/overrides/$pkg"
    printf '%s (%s) stable; urgency=medium\n\n  * Built from %s.\n\n -- Tidemark <packaging@tidemark.invalid>  %s\n' \
        "$pkg" "$version" "$(git rev-parse --short HEAD 2>/dev/null || echo 'a source tree')" "$(date -R -u -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
        | gzip -9n >"$dir/usr/share/doc/$pkg/changelog.gz"

    # Dependencies on shared libraries, as dpkg-shlibdeps computes them.
    local work="$stage/shlibdeps-$pkg"
    mkdir -p "$work/debian"
    printf 'Source: tidemark\n\nPackage: %s\nArchitecture: any\n' "$pkg" >"$work/debian/control"
    local depends
    depends=$(cd "$work" && dpkg-shlibdeps -O "${bins[@]}" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
    [ -n "$depends" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies for $pkg" >&2; exit 1; }
    local size; size=$(du -sk --exclude=DEBIAN "$dir" | cut -f1)
    sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@DEPENDS@/$depends/" -e "s/@SIZE@/$size/" \
        -e "s/@DESCRIPTION@/$description/" Packaging/control.in | sed "s/@PACKAGE@/$pkg/" >"$dir/DEBIAN/control"
    (cd "$dir" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
    local deb="$out/${pkg}_${version}_${arch}.deb"
    # xz -9: its 64 MiB window spans both binaries, so the second copy of the
    # static Swift runtime and ICU data they share costs almost nothing (the
    # default -6, an 8 MiB window, stores it twice: 31 MB instead of 18).
    dpkg-deb --root-owner-group -Zxz -z9 --build "$dir" "$deb" >/dev/null
    echo "$deb ($(du -h "$deb" | cut -f1))"
}

echo "== packages"
build_package tidemark-agent "block-level change tracking and replication agent" \
    tidemark-agent:8 tidemark-bitmap:8
build_package tidemark-server "replication process server and recovery tool" \
    tidemark-server:8 tidemarkctl:8
