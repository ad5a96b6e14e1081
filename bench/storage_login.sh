#!/usr/bin/env bash
# Login rate by storage backend (issue 15): Canto on SQLite, then on PostgreSQL, the same
# accounts and the same `canto-bench login` runs (PLAIN over 1000 accounts, SCRAM-SHA-256 over
# 250, 20 concurrent clients, plaintext c2s on loopback), each on a freshly started server.
#
#   bench/storage_login.sh --postgres URL [--logins N] [--runs N] [--out FILE]
#
#   --postgres URL  an empty PostgreSQL database for the second half (its tables are created;
#                   e.g. a database made with `createdb` on tests/postgres/start.sh's server)
#   --logins N      logins per run [1000]
#   --runs N        runs per backend and mechanism [3]
#   --out FILE      also append the raw output lines to FILE
#
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries; otherwise a release build here),
# KEEP=1 keeps the temporary directory.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
POSTGRES=""
LOGINS=1000
RUNS=3
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --postgres) POSTGRES="$2"; shift 2 ;;
        --logins) LOGINS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$POSTGRES" ] || { echo "--postgres URL is required" >&2; exit 2; }
PASSWORD=password

log() { printf '[storage-login %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
build_binaries || true

TMP="$(mktemp -d /tmp/canto-storage-login.XXXXXX)"
SERVER_PID=""
finish() {
    stop_pid "$SERVER_PID" canto
    if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap finish EXIT
trap 'exit 130' INT TERM
PORT=$(free_port 15700 15799) || exit 1
for i in $(seq 1 "$LOGINS"); do echo "user$i@localhost $PASSWORD"; done >"$TMP/users.txt"

for backend in sqlite postgresql; do
    dir="$TMP/$backend"
    mkdir -p "$dir"
    cat >"$dir/canto.toml" <<CONF
data_dir = "$dir/data"
hosts = ["localhost"]

[http]
listen = []
https_listen = []

[s2s]
listen = []

[c2s]
listen = ["127.0.0.1:$PORT"]
direct_tls_listen = []
require_encryption = false

[limits.c2s]
rate = "unlimited"

[log]
level = "warn"
CONF
    if [ "$backend" = postgresql ]; then
        printf '\n[storage]\nbackend = "postgresql"\nurl = "%s"\n' "$POSTGRES" >>"$dir/canto.toml"
    fi
    "$CANTO_BIN" --config "$dir/canto.toml" user import "$TMP/users.txt" >&2 || exit 1
    for mech in plain scram-sha256; do
        for run in $(seq 1 "$RUNS"); do
            "$CANTO_BIN" --config "$dir/canto.toml" serve >"$dir/canto.log" 2>&1 &
            SERVER_PID=$!
            wait_port "$PORT" 30 "$SERVER_PID" || { echo "canto did not start: $(tail -3 "$dir/canto.log")" >&2; exit 1; }
            accounts=()
            [ "$mech" = plain ] || accounts=(--accounts 250)
            # A few logins first load the code paths.
            "$BENCH_BIN" --addr "127.0.0.1:$PORT" --password "$PASSWORD" --mech "$mech" \
                login --count 50 --concurrency 10 >/dev/null || exit 1
            "$BENCH_BIN" --addr "127.0.0.1:$PORT" --password "$PASSWORD" --mech "$mech" \
                --server-pid "$SERVER_PID" login --count "$LOGINS" --concurrency 20 "${accounts[@]}" \
                | sed "s/^/backend=$backend mech=$mech run=$run /" | tee -a "$TMP/results.txt" || exit 1
            stop_pid "$SERVER_PID" canto
            SERVER_PID=""
        done
    done
done
log "load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$OUT" ]; then cat "$TMP/results.txt" >>"$OUT"; fi
