#!/usr/bin/env bash
# MAM benchmark (XEP-0313 over SQLite): fills one account's archive with COUNT messages, starts
# a release build of Canto with `mam` enabled on 127.0.0.1 (a free port), times pages of 50
# from the middle of the archive and the other query kinds of `canto-bench mam`, stops the
# server by its PID.
#
#   bench/mam.sh [--count N] [--queries N] [--runs N] [--data DIR] [--out FILE]
#
#   --count N     messages in the archive [1000000]
#   --queries N   queries per kind and run [200]
#   --runs N      query runs against the same server [3]
#   --data DIR    keep the configuration and filled database in DIR and reuse them when
#                 DIR already holds an archive of N messages (the fill takes ~25 s per
#                 million); default: a fresh /tmp/canto-mam.* removed at the end (KEEP=1
#                 keeps it)
#   --out FILE    also append the raw output lines to FILE
#   --postgres URL  store in this PostgreSQL database instead of SQLite (`storage.backend =
#                 "postgresql"`; the database must exist and is filled like the SQLite file;
#                 with --data, reused when the mark file says it was filled)
#
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries; otherwise `cargo build --release
# -p canto -p canto-bench` here, into CARGO_TARGET_DIR if set), KEEP=1.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
COUNT=1000000
QUERIES=200
RUNS=3
DATA=""
OUT=""
POSTGRES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --postgres) POSTGRES="$2"; shift 2 ;;
        --count) COUNT="$2"; shift 2 ;;
        --queries) QUERIES="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
USER_JID=alice@localhost
PASSWORD=password

log() { printf '[mam %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
build_binaries || true

if [ -n "$DATA" ]; then
    mkdir -p "$DATA" && DIR="$(cd "$DATA" && pwd)"
else
    DIR="$(mktemp -d /tmp/canto-mam.XXXXXX)"
fi
SERVER_PID=""
cleanup() {
    stop_pid "$SERVER_PID" canto
    SERVER_PID=""
    if [ -z "$DATA" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free port on 127.0.0.1.
PORT=$(free_port 15600 15699) || exit 1

# Canto's defaults plus `mam`; plaintext c2s on loopback; SQLite under DIR/data; no c2s rate
# limit (the default 10 kB/s holds a client sending a query every 2 ms for 0.4 s now and then).
cat >"$DIR/canto.toml" <<EOF
data_dir = "$DIR/data"
hosts = ["localhost"]
modules = ["disco", "ping", "version", "time", "roster", "vcard", "private", "blocking",
           "carbons", "last", "mam"]

[http]
listen = []
https_listen = []

[c2s]
listen = ["127.0.0.1:$PORT"]
direct_tls_listen = []
require_encryption = false

[limits.c2s]
rate = "unlimited"

[log]
level = "warn"
EOF
if [ -n "$POSTGRES" ]; then
    printf '\n[storage]\nbackend = "postgresql"\nurl = "%s"\n' "$POSTGRES" >>"$DIR/canto.toml"
fi
"$CANTO_BIN" --config "$DIR/canto.toml" check >&2 || exit 1

MARK="$DIR/filled-$COUNT${POSTGRES:+-postgresql}"
if [ -f "$MARK" ]; then
    log "reusing the archive of $COUNT messages in $DIR/data"
else
    rm -rf "$DIR/data" "$DIR"/filled-*
    "$CANTO_BIN" --config "$DIR/canto.toml" user add "$USER_JID" --password "$PASSWORD" >&2 || exit 1
    log "filling the archive of $USER_JID with $COUNT messages"
    if [ -n "$POSTGRES" ]; then FILL_TARGET=(--postgres "$POSTGRES"); else FILL_TARGET=(--data-dir "$DIR/data"); fi
    "$BENCH_BIN" mam-fill "${FILL_TARGET[@]}" --user "$USER_JID" --count "$COUNT" \
        | tee -a "$DIR/results.txt" || exit 1
    touch "$MARK"
fi

"$CANTO_BIN" --config "$DIR/canto.toml" serve >"$DIR/canto.log" 2>&1 &
SERVER_PID=$!
wait_port "$PORT" 30 "$SERVER_PID" || { echo "canto did not start: $(tail -3 "$DIR/canto.log")" >&2; exit 1; }
log "canto (PID $SERVER_PID) listens on 127.0.0.1:$PORT; load average $(cut -d' ' -f1-3 /proc/loadavg)"

for run in $(seq 1 "$RUNS"); do
    log "query run $run of $RUNS"
    "$BENCH_BIN" --addr "127.0.0.1:$PORT" --password "$PASSWORD" --server-pid "$SERVER_PID" \
        mam --user "$USER_JID" --queries "$QUERIES" | sed "s/^mam: /mam: run=$run /" \
        | tee -a "$DIR/results.txt" || exit 1
done
log "load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ -n "$OUT" ]; then cat "$DIR/results.txt" >>"$OUT"; fi
