#!/usr/bin/env bash
# Message throughput with XEP-0198 stream management and XEP-0352 client state indication:
# the msg flood of docs/benchmarks.md (canto-bench msg --flood) against a release build of
# Canto, once per variant and run, each on a freshly started server and on its own accounts,
# the variants interleaved (each round in a rotated order) so that the machine's other load
# spreads over all of them; then the median delivered msgs/s and server CPU µs per message
# per variant, and each variant against plain.
#
#   bench/sm_csi.sh [--runs N] [--out FILE]
#
# Environment (defaults in brackets): VARIANTS ["plain sm csi-active csi-inactive
# sm+csi-active sm+csi-inactive"], PAIRS [50], WINDOW [16], DURATION [10], WARMUP [2],
# SM_EVERY [16] (a sender's <r/> every N messages), RATE (a fixed total rate in msgs/s
# instead of the flood: for latency and CPU per message when nothing batches), CANTO_BIN and
# BENCH_BIN (prebuilt binaries; otherwise `cargo build --release -p canto -p canto-bench`
# here), KEEP=1 keeps the temporary directory, PIN=1 runs the server on CPU 0 and the load
# tool on CPU 1 (taskset), so that the tool's own work (its XEP-0198 answers included) takes
# no CPU from the server. Canto listens on 127.0.0.1 (a free port in 15700-15799) only and is
# stopped by its PID.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RUNS=3
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
VARIANTS=${VARIANTS:-"plain sm csi-active csi-inactive sm+csi-active sm+csi-inactive"}
PAIRS=${PAIRS:-50}
WINDOW=${WINDOW:-16}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
SM_EVERY=${SM_EVERY:-16}
RATE=${RATE:-}
if [ -n "$RATE" ]; then
    PACE="--rate $RATE"; MODE_DESC="rate $RATE msgs/s"
else
    PACE="--flood --window $WINDOW"; MODE_DESC="flood, window $WINDOW"
fi
PASSWORD=password
SERVER_CPU=() TOOL_CPU=() PIN_DESC="server and tool share the CPUs"
if [ "${PIN:-0}" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || { echo "PIN=1 needs two CPUs" >&2; exit 2; }
    SERVER_CPU=(taskset -c 0) TOOL_CPU=(taskset -c 1) PIN_DESC="server pinned to CPU 0, tool to CPU 1"
fi

log() { printf '[sm_csi %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
build_binaries || true

TMP="$(mktemp -d /tmp/canto-sm-csi.XXXXXX)"
SERVER_PID=""
stop_server() {
    stop_pid "$SERVER_PID" canto
    SERVER_PID=""
}
cleanup() {
    stop_server
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$TMP"; else log "kept $TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(free_port 15700 15799) || exit 1

# As bench/configs/canto.toml (compare.sh) without TLS: SQLite, offline messages, no rate limit.
cat >"$TMP/canto.toml" <<EOF
data_dir = "$TMP/data"
hosts = ["localhost"]

[http]
listen = []
https_listen = []

[c2s]
listen = ["127.0.0.1:$PORT"]
direct_tls_listen = []
require_encryption = false

[offline]
max_messages = 1000

[limits.c2s]
rate = "unlimited"

[log]
level = "warn"
EOF
# EXTRA_CONFIG: TOML appended to the server's configuration (e.g. a [stream_management] table).
if [ -n "${EXTRA_CONFIG:-}" ]; then printf '\n%s\n' "$EXTRA_CONFIG" >>"$TMP/canto.toml"; fi
"$CANTO_BIN" --config "$TMP/canto.toml" check >&2 || exit 1

read -r -a VS <<<"$VARIANTS"
NV=${#VS[@]}
USERS=$(( RUNS * NV * 2 * PAIRS ))
for i in $(seq 1 "$USERS"); do echo "user$i@localhost $PASSWORD"; done >"$TMP/users.txt"
"$CANTO_BIN" --config "$TMP/canto.toml" user import "$TMP/users.txt" >&2 || exit 1

flags() { # variant -> canto-bench msg flags
    local f=""
    case "$1" in *sm*) f="$f --sm --sm-request-every $SM_EVERY" ;; esac
    case "$1" in *csi-active*) f="$f --csi active" ;; *csi-inactive*) f="$f --csi inactive" ;; esac
    echo "$f"
}

RESULTS="$TMP/results.txt"
: >"$RESULTS"
k=0
for run in $(seq 1 "$RUNS"); do
    # Each round starts one variant further on: no variant always runs first (or last) in its
    # round, after the same neighbour.
    for j in $(seq 0 $(( NV - 1 ))); do
        v=${VS[$(( (j + run - 1) % NV ))]}
        first=$(( 1 + k * 2 * PAIRS ))
        k=$(( k + 1 ))
        "${SERVER_CPU[@]}" "$CANTO_BIN" --config "$TMP/canto.toml" serve >"$TMP/canto.log" 2>&1 &
        SERVER_PID=$!
        wait_port "$PORT" 30 "$SERVER_PID" || { echo "canto did not start: $(tail -3 "$TMP/canto.log")" >&2; exit 1; }
        load="$(cut -d' ' -f1 /proc/loadavg)"
        # shellcheck disable=SC2046
        line=$(timeout $(( DURATION + WARMUP + 120 )) "${TOOL_CPU[@]}" "$BENCH_BIN" --addr "127.0.0.1:$PORT" \
            --password "$PASSWORD" --server-pid "$SERVER_PID" --first "$first" \
            msg --pairs "$PAIRS" $PACE --duration "$DURATION" \
            --warmup "$WARMUP" $(flags "$v") | grep '^msg:')
        stop_server
        echo "variant=$v run=$run load1=$load $line" | tee -a "$RESULTS"
    done
done

# Medians per variant, and the median over the runs of each run's ratio to plain in the
# same round (rounds are ~1 minute apart: the machine's other load changes less within one).
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
field() { grep -o "\b$1=[^ ]*" | cut -d= -f2; }
value() { grep "^variant=$1 run=$2 " "$RESULTS" | field "$3" | head -1; }
paired() { # variant key -> median over runs of (variant / plain - 1), in %
    local r a b
    for r in $(seq 1 "$RUNS"); do
        a=$(value "$1" "$r" "$2"); b=$(value plain "$r" "$2")
        awk -v a="$a" -v b="$b" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b + 0 > 0) printf "%.2f\n", (a / b - 1) * 100 }'
    done | median
}
{
    echo "| variant | delivered msgs/s (median of $RUNS) | server CPU µs/msg (median) | msgs/s vs plain, same round (median) | CPU/msg vs plain, same round (median) | p50 / p99 µs (medians) | runs: msgs/s | runs: CPU µs/msg |"
    echo "|---|---:|---:|---:|---:|---:|---|---|"
    for v in "${VS[@]}"; do
        rate=$(grep "^variant=$v " "$RESULTS" | field delivered_per_s | median)
        cpu=$(grep "^variant=$v " "$RESULTS" | field server_cpu_us_per_msg | median)
        all=$(grep "^variant=$v " "$RESULTS" | field delivered_per_s | paste -sd' ')
        allc=$(grep "^variant=$v " "$RESULTS" | field server_cpu_us_per_msg | paste -sd' ')
        p50=$(grep "^variant=$v " "$RESULTS" | field p50_us | median)
        p99=$(grep "^variant=$v " "$RESULTS" | field p99_us | median)
        if [ "$v" = plain ]; then rr="" rc=""; else
            rr="$(paired "$v" delivered_per_s) %"; rc="$(paired "$v" server_cpu_us_per_msg) %"
        fi
        echo "| $v | $rate | $cpu | $rr | $rc | $p50 / $p99 | $all | $allc |"
    done
    echo
    echo "$PAIRS pairs, $MODE_DESC, ${DURATION} s after ${WARMUP} s; sm: <r/> every $SM_EVERY messages per sender; $PIN_DESC; load average now $(cut -d' ' -f1-3 /proc/loadavg)."
} | tee "$TMP/table.md"
if [ -n "$OUT" ]; then { cat "$TMP/table.md"; echo; cat "$RESULTS"; } >>"$OUT"; fi
