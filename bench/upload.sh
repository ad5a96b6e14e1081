#!/usr/bin/env bash
# Upload benchmark (XEP-0363, issue 13): Canto's upload service with a file of SIZE MiB,
# PUT (streamed) and GET back over plain HTTP on loopback, the digests compared; the server's
# resident memory before, at its peak during each transfer (sampled every 50 ms) and after.
# Beside it, the disk's own speed for the same bytes: `dd` writing SIZE MiB with an fsync at
# the end (the upload service fsyncs a file before answering 201) and reading it back.
#
#   bench/upload.sh [--size MIB] [--runs N] [--out FILE]
#
# Everything listens on 127.0.0.1 only (a free port from 16100, its HTTP port + 1000); files
# live in a temporary directory (on the same disk as the dd reference); the server is stopped
# by its PID on exit. Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries; otherwise
# `cargo build --release -p canto -p canto-bench` here), KEEP=1 keeps the temporary directory.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SIZE=100
RUNS=3
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

log() { printf '[upload %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

TMP="$(mktemp -d /tmp/canto-upload.XXXXXX)"
declare -A PIDS=()
trap cleanup EXIT
trap 'exit 130' INT TERM
build_binaries || true

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || { echo "openssl failed" >&2; exit 1; }
PORT=$(free_port 16100 16149) || exit 1
HPORT=$(( PORT + 1000 ))
d="$TMP/canto"
mkdir -p "$d"
fill "$HERE/configs/canto.toml" "$d/canto.toml" "$d" "$PORT"
sed -i 's/^@LIMITS@$/[limits.c2s]\nrate = "unlimited"/' "$d/canto.toml"
sed -i "0,/^listen = \[\]\$/s//listen = [\"127.0.0.1:$HPORT\"]\nexternal_url = \"http:\/\/127.0.0.1:$HPORT\"/" "$d/canto.toml"
printf '\n[upload]\nmax_file_size = %d\nquota = %d\n' $(( (SIZE + 1) * 1024 * 1024 )) $(( (SIZE + 1) * RUNS * 2 * 1024 * 1024 )) >>"$d/canto.toml"
"$CANTO_BIN" --config "$d/canto.toml" check >&2 || exit 1
echo "user1@localhost password" | "$CANTO_BIN" --config "$d/canto.toml" user import >&2 || exit 1
"$CANTO_BIN" --config "$d/canto.toml" serve >>"$d/canto.log" 2>&1 &
PIDS[canto]=$!
wait_port "$HPORT" 30 "${PIDS[canto]}" || { log "canto did not start: $(tail -2 "$d/canto.log")"; exit 1; }

field() { grep -o "$2=[^ ]*" "$1" 2>/dev/null | head -1 | cut -d= -f2; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }
for r in $(seq 1 "$RUNS"); do
    log "run $r: canto-bench upload --size-mib $SIZE"
    "$BENCH_BIN" --addr "127.0.0.1:$PORT" --password password --server-pid "${PIDS[canto]}" \
        upload --size-mib "$SIZE" >"$TMP/upload.$r.txt" 2>"$TMP/upload.$r.err" ||
        log "failed: $(tail -1 "$TMP/upload.$r.err")"
    sed 's/^/    /' "$TMP/upload.$r.txt" >&2
    # The disk alone: the same bytes written in 256 KiB blocks with one fsync at the end, as the
    # service does (from /dev/zero: a source file would add its own dirty pages to flush).
    rm -f "$d"/data/upload/*/data 2>/dev/null
    w=$( { /usr/bin/time -f %e dd if=/dev/zero of="$TMP/ref" bs=256k count=$(( SIZE * 4 )) conv=fsync status=none; } 2>&1 )
    echo "dd_write_mib_per_s=$(awk -v s="$SIZE" -v t="$w" 'BEGIN { printf "%.1f", s / t }')" >>"$TMP/upload.$r.txt"
    rm -f "$TMP/ref"
done
med() { for r in $(seq 1 "$RUNS"); do field "$TMP/upload.$r.txt" "$1"; done | grep -v '^$' | median; }
{
    echo "| file | PUT MiB/s | disk write MiB/s (dd, fsync) | GET MiB/s | server RSS before KiB | peak during PUT KiB | peak during GET KiB | after KiB |"
    echo "|---|---|---|---|---|---|---|---|"
    echo "| $SIZE MiB | $(med put_mib_per_s) | $(med dd_write_mib_per_s) | $(med get_mib_per_s) | $(med server_rss_before_kib) | $(med server_rss_peak_put_kib) | $(med server_rss_peak_get_kib) | $(med server_rss_after_kib) |"
    echo
    echo "medians of $RUNS runs; loopback, plain HTTP; $(nproc) cores"
} | tee "${OUT:-/dev/null}"
