#!/usr/bin/env bash
# Make the certificates of a Dask cluster secured with TLS: a private certificate authority
# and one key pair signed by it for the scheduler, the workers and the clients.
#
#   infra/make-dask-certs.sh DIR [DAYS]
#
# Writes into DIR (created, mode 700; refused if it already holds a ca.pem):
#   ca.pem                         the cluster's CA certificate: every machine needs it
#   ca-key.pem                     the CA's private key: only to sign more certificates; keep it
#                                  off the cluster's machines
#   scheduler.pem, scheduler-key.pem   for `dask scheduler` (infra/start.sh uses them)
#   worker.pem, worker-key.pem         for every `dask worker`
#   client.pem, client-key.pem         for whatever submits work: the CLI, the Prefect worker
# DAYS: validity, default 825. Keys are EC P-256, private keys mode 600.
#
# Dask's TLS is mutual (distributed/security.py: CERT_REQUIRED on both sides): with
# `DASK_TLS_DIR=DIR infra/start.sh`, only a holder of a key pair signed by this CA can talk
# to the scheduler or a worker. Dask does not check host names (check_hostname is off: a
# dedicated CA identifies the cluster), so the certificates name roles, not hosts.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") usage >&2; die "no directory given" ;;
esac
dir="$1"
days="${2:-825}"
[[ "$days" =~ ^[1-9][0-9]*$ ]] || die "DAYS must be a positive integer, not '$days'"
command -v openssl >/dev/null || die "openssl is needed"
[[ ! -e "$dir/ca.pem" ]] || die "$dir/ca.pem exists: refusing to replace a cluster's CA (choose another directory)"

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
work="$(mktemp -d "$dir/.make-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key "$work/ca-key.pem"
openssl req -x509 -new -key "$work/ca-key.pem" -sha256 -days "$days" -subj "/CN=binance-lake Dask CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$work/ca.pem"

for role in scheduler worker client; do
    key "$work/$role-key.pem"
    openssl req -new -key "$work/$role-key.pem" -subj "/CN=binance-lake-dask-$role" -out "$work/$role.csr"
    # Both usages: a worker serves (to the scheduler and other workers) and connects (to the scheduler).
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth,clientAuth" >"$work/$role.ext"
    openssl x509 -req -in "$work/$role.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -CAcreateserial \
        -days "$days" -sha256 -extfile "$work/$role.ext" -out "$work/$role.pem" 2>/dev/null
    openssl verify -CAfile "$work/ca.pem" "$work/$role.pem" >/dev/null || die "$role certificate does not verify"
done

chmod 644 "$work/ca.pem" "$work"/{scheduler,worker,client}.pem
chmod 600 "$work"/*-key.pem
for f in ca.pem ca-key.pem scheduler.pem scheduler-key.pem worker.pem worker-key.pem client.pem client-key.pem; do
    mv "$work/$f" "$dir/$f"
done
echo "Dask TLS certificates in $dir (valid $days days): start the cluster with DASK_TLS_DIR=$dir infra/start.sh"
