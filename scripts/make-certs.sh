#!/usr/bin/env bash
# Creates the TLS material of a Tidemark installation with the openssl CLI:
# a CA, a server certificate, one client certificate per agent and the
# 32-byte replication key (64 hex digits). ECDSA P-256 keys; private keys and
# the replication key are mode 0600. See docs/keys-and-certificates.md.
#
#   scripts/make-certs.sh DIR [--agent NAME ...] [--server-name HOST|IP ...]
#                             [--days N] [--ca-days N] [--agent-expired NAME ...] [--force]
#
# Files in DIR: ca.crt ca.key server.crt server.key NAME.crt NAME.key replication.key
#
# Existing files are never overwritten silently:
#   - ca.crt/ca.key are reused when both exist (to issue more certificates);
#   - server.crt is kept when no --server-name is given, else refused unless --force;
#   - an agent certificate that exists is refused unless --force;
#   - replication.key is never replaced (losing it loses the backups): kept.
# Everything is checked before anything is written.
set -euo pipefail

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() { echo "make-certs.sh: $*" >&2; exit 1; }

dir=""
agents=()
expired_agents=()
server_names=()
days=825
ca_days=3650
force=0
while [ $# -gt 0 ]; do
    case "$1" in
        --agent) [ $# -ge 2 ] || usage; agents+=("$2"); shift 2 ;;
        --agent-expired) [ $# -ge 2 ] || usage; expired_agents+=("$2"); shift 2 ;;
        --server-name) [ $# -ge 2 ] || usage; server_names+=("$2"); shift 2 ;;
        --days) [ $# -ge 2 ] || usage; days="$2"; shift 2 ;;
        --ca-days) [ $# -ge 2 ] || usage; ca_days="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage ;;
        -*) echo "make-certs.sh: unknown option $1" >&2; usage ;;
        *) [ -z "$dir" ] || usage; dir="$1"; shift ;;
    esac
done
[ -n "$dir" ] || usage
command -v openssl >/dev/null || die "the openssl command is missing (apt-get install openssl)"
[[ "$days" =~ ^[1-9][0-9]*$ ]] || die "--days needs a positive number of days, not '$days'"
[[ "$ca_days" =~ ^[1-9][0-9]*$ ]] || die "--ca-days needs a positive number of days, not '$ca_days'"
valid_name() { [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] && [ "${#1}" -le 64 ]; }
explicit_server=$(( ${#server_names[@]} > 0 ))
[ ${#server_names[@]} -gt 0 ] || server_names=(127.0.0.1 localhost)
if [ ${#agents[@]} -eq 0 ] && [ ${#expired_agents[@]} -eq 0 ]; then
    # The agent's default id (agent_id in agent.yaml): agent-<host name>, other characters as '-'.
    default_agent="agent-$(hostname | tr -c 'A-Za-z0-9._\n-' '-')"
    agents=("${default_agent:0:64}")
fi
for n in ${agents[@]+"${agents[@]}"} ${expired_agents[@]+"${expired_agents[@]}"}; do
    valid_name "$n" || die "agent name '$n' must be 1-64 characters of A-Z a-z 0-9 . _ - (it becomes the certificate's CN and a file name)"
    case "$n" in ca|server|replication) die "agent name '$n' collides with the file $n.*" ;; esac
done
san=""
for h in "${server_names[@]}"; do
    if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san+="${san:+,}IP:$h"
    elif [[ "$h" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then san+="${san:+,}DNS:$h"
    else die "server name '$h' is neither a host name nor an IP address"; fi
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# ---- check before writing anything ----
reuse_ca=0
if [ -e "$dir/ca.crt" ] && [ -e "$dir/ca.key" ]; then
    reuse_ca=1
elif [ -e "$dir/ca.crt" ] || [ -e "$dir/ca.key" ]; then
    die "$dir holds only one of ca.crt and ca.key; restore the other or remove both to create a new CA"
fi
make_server=1
if [ -e "$dir/server.crt" ] || [ -e "$dir/server.key" ]; then
    if [ "$explicit_server" = 1 ]; then
        [ "$force" = 1 ] || die "$dir/server.crt exists (use --force to replace it)"
    else
        make_server=0
    fi
fi
if [ "$reuse_ca" = 0 ] && [ "$make_server" = 0 ]; then
    die "$dir has a server certificate but no CA; remove server.crt/server.key or restore ca.crt/ca.key"
fi
for n in ${agents[@]+"${agents[@]}"} ${expired_agents[@]+"${expired_agents[@]}"}; do
    if [ -e "$dir/$n.crt" ] || [ -e "$dir/$n.key" ]; then
        [ "$force" = 1 ] || die "$dir/$n.crt exists (use --force to replace it)"
    fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>"$work/err" || { cat "$work/err" >&2; die "cannot create a P-256 key"; }; }
serial() { echo "0x$(openssl rand -hex 16)"; }
# install SRC DEST MODE: atomic rename into DIR
install_file() { chmod "$3" "$1"; mv -f "$1" "$2"; }

# ---- CA ----
if [ "$reuse_ca" = 1 ]; then
    openssl x509 -in "$dir/ca.crt" -noout 2>/dev/null || die "$dir/ca.crt is not a PEM certificate"
    echo "using the existing CA in $dir/ca.crt"
else
    newkey "$work/ca.key"
    openssl req -new -x509 -sha256 -key "$work/ca.key" -subj "/CN=Tidemark CA $(hostname -s 2>/dev/null || hostname) $(date -u +%Y%m%d%H%M%S)" \
        -days "$ca_days" -set_serial "$(serial)" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$work/ca.crt"
    install_file "$work/ca.key" "$dir/ca.key" 600
    install_file "$work/ca.crt" "$dir/ca.crt" 644
    echo "created CA $dir/ca.crt"
fi

# sign NAME CN EKU SAN: NAME.key + NAME.crt valid for $days days
sign() {
    local name="$1" cn="$2" eku="$3" sanline="$4"
    newkey "$work/$name.key"
    openssl req -new -key "$work/$name.key" -subj "/CN=$cn" -out "$work/$name.csr"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$eku"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid,issuer"
        [ -z "$sanline" ] || echo "subjectAltName=$sanline"
    } > "$work/$name.ext"
    openssl x509 -req -sha256 -in "$work/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
        -set_serial "$(serial)" -days "$days" -extfile "$work/$name.ext" -out "$work/$name.crt" 2>"$work/err" \
        || { cat "$work/err" >&2; die "signing $name.crt failed"; }
    install_file "$work/$name.key" "$dir/$name.key" 600
    install_file "$work/$name.crt" "$dir/$name.crt" 644
}

# sign_expired NAME: a client certificate valid from 2020-01-01 to 2020-01-02 (for tests).
# `openssl x509` of OpenSSL 3.0 cannot set dates; `openssl ca` can.
sign_expired() {
    local name="$1"
    newkey "$work/$name.key"
    openssl req -new -key "$work/$name.key" -subj "/CN=$name" -out "$work/$name.csr"
    mkdir -p "$work/ca-db"
    : > "$work/ca-db/index.txt"
    openssl rand -hex 16 > "$work/ca-db/serial"
    cat > "$work/ca.cnf" <<EOF
[ ca ]
default_ca = tm
[ tm ]
database = $work/ca-db/index.txt
new_certs_dir = $work/ca-db
serial = $work/ca-db/serial
default_md = sha256
policy = policy_cn
unique_subject = no
copy_extensions = none
x509_extensions = ext
[ policy_cn ]
commonName = supplied
[ ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF
    openssl ca -batch -config "$work/ca.cnf" -cert "$dir/ca.crt" -keyfile "$dir/ca.key" -in "$work/$name.csr" \
        -out "$work/$name.crt" -startdate 20200101000000Z -enddate 20200102000000Z -notext >"$work/err" 2>&1 \
        || { cat "$work/err" >&2; die "signing the expired certificate $name.crt failed"; }
    if openssl x509 -in "$work/$name.crt" -noout -checkend 0 >/dev/null; then
        die "$name.crt was meant to be expired but is still valid"
    fi
    install_file "$work/$name.key" "$dir/$name.key" 600
    install_file "$work/$name.crt" "$dir/$name.crt" 644
}

if [ "$make_server" = 1 ]; then
    sign server "${server_names[0]}" serverAuth "$san"
    echo "created server certificate $dir/server.crt for $san"
else
    echo "keeping the existing server certificate $dir/server.crt"
fi
for n in ${agents[@]+"${agents[@]}"}; do
    sign "$n" "$n" clientAuth ""
    echo "created agent certificate $dir/$n.crt (CN=$n)"
done
for n in ${expired_agents[@]+"${expired_agents[@]}"}; do
    sign_expired "$n"
    echo "created EXPIRED agent certificate $dir/$n.crt (CN=$n, for tests)"
done

# ---- replication key: 32 random bytes, never replaced ----
if [ -e "$dir/replication.key" ]; then
    echo "keeping the existing replication key $dir/replication.key"
else
    # 32 random bytes as 64 hex digits and a newline, the format ReplicationKey.generate writes.
    openssl rand -hex 32 > "$work/replication.key"
    grep -Eqx '[0-9a-f]{64}' "$work/replication.key" || die "openssl rand did not produce a 32-byte key"
    install_file "$work/replication.key" "$dir/replication.key" 600
    echo "created replication key $dir/replication.key (keep a copy offline: without it no backup can be read)"
fi
