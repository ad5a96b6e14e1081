#!/usr/bin/env bash
# Cluster benchmark (issue 15): what a message costs when it goes from one node to another
# over NATS, against the same traffic on a single node. Targets: cross-node delivery adds
# ≤ 0.3 ms p50 on loopback and keeps ≥ 50% of single-node throughput per node.
#   * single: one Canto without [cluster];
#   * cross: nodes a and b (one nats-server, one shared SQLite file) with every pair split,
#     one account on a and its partner on b (canto-bench `msg --peer-addr` with the same
#     domain), so every message in both directions crosses the cluster;
#   * local: the same cluster, both partners on node a (cluster mode on, no hop);
#   * parallel: the same cluster, each node with its own local pairs at once (per-node flood).
# Each is a flood (window 16) for SECONDS after a 2 s warm-up, and a fixed-rate run (RATE
# msg/s in total) for the latency; ROUNDS rounds, then the medians. Canto runs without module
# mam (no storage per message: the shared SQLite file only holds the accounts).
#
#   bench/cluster.sh [--pairs N] [--seconds S] [--rate R] [--rounds K]
#
# Everything on 127.0.0.1 (free ports); servers started here are stopped by PID on exit.
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries), NATS_BIN (default nats-server on
# PATH or /usr/sbin/nats-server), KEEP=1 keeps the temporary directory.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PAIRS=20
SECONDS_=10
RATE=2000
ROUNDS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
declare -A PIDS
declare -A PORTS
TMP="$(mktemp -d /tmp/canto-cluster.XXXXXX)"
trap cleanup EXIT
build_binaries
NATS_BIN=${NATS_BIN:-$(command -v nats-server || echo /usr/sbin/nats-server)}
[ -x "$NATS_BIN" ] || { log "nats-server is not installed (apt-get install nats-server)"; exit 1; }
RESULTS="$TMP/results"
: > "$RESULTS"

start_nats() {
    PORTS[nats]=$(free_port 14222 14299) || exit 1
    "$NATS_BIN" -a 127.0.0.1 -p "${PORTS[nats]}" > "$TMP/nats.log" 2>&1 &
    PIDS[nats]=$!
    wait_port "${PORTS[nats]}" 10 "${PIDS[nats]}" || { log "nats-server did not start"; cat "$TMP/nats.log"; exit 1; }
}

canto_config() { # name cluster(0|1) first-port last-port (distinct ranges: not listening yet)
    local d="$TMP/$1"
    mkdir -p "$d"
    PORTS[$1]=$(free_port "$3" "$4") || exit 1
    cat > "$d/canto.toml" <<CFG
data_dir = "$d/data"
hosts = ["localhost"]
modules = ["disco", "ping", "version", "time", "roster", "vcard", "private", "blocking",
           "carbons", "last"]

[http]
listen = []
https_listen = []

[c2s]
listen = ["127.0.0.1:${PORTS[$1]}"]
direct_tls_listen = []
require_encryption = false

[s2s]
listen = []

[storage]
backend = "sqlite"
path = "$TMP/shared.sqlite"

[limits.c2s]
rate = "unlimited"

[log]
level = "info"
CFG
    if [ "$2" = 1 ]; then
        cat >> "$d/canto.toml" <<CFG

[cluster]
nats_url = "nats://127.0.0.1:${PORTS[nats]}"
node_name = "$1"
CFG
    fi
}

start_canto() { # name
    "$CANTO_BIN" --config "$TMP/$1/canto.toml" serve 2>> "$TMP/$1/log" &
    PIDS[$1]=$!
    wait_port "${PORTS[$1]}" 10 "${PIDS[$1]}" || { log "$1 did not start"; tail "$TMP/$1/log"; exit 1; }
}

wait_cluster() { # until node a lists b as a peer and b lists a (canto cluster status)
    local _ st
    for _ in $(seq 1 20); do
        st=$("$CANTO_BIN" --config "$TMP/a/canto.toml" cluster status 2>/dev/null)
        if echo "$st" | awk '$1 == "a" && $NF ~ /(^|,)b(,|$)/ { a = 1 } $1 == "b" && $NF ~ /(^|,)a(,|$)/ { b = 1 } END { exit !(a && b) }'; then
            echo "$st" | sed 's/^/cluster status: /' >&2
            return 0
        fi
        sleep 0.5
    done
    log "the nodes do not see each other:"; echo "$st" >&2
    return 1
}

# canto-bench msg on node $2 (a or b) with the accounts from $3 on; the output line goes to
# RESULTS labelled $1. Further arguments go to `msg`.
bench() { # label node first msg-args…
    local label=$1 node=$2 first=$3 watch=()
    shift 3
    [ -n "${PIDS[b]:-}" ] && [ "$node" = a ] && watch+=(--watch-pid "b=${PIDS[b]}")
    [ -n "${PIDS[b]:-}" ] && [ "$node" = b ] && watch+=(--watch-pid "a=${PIDS[a]}")
    [ -n "${PIDS[nats]:-}" ] && watch+=(--watch-pid "nats=${PIDS[nats]}")
    "$BENCH_BIN" --addr "127.0.0.1:${PORTS[$node]}" --domain localhost --first "$first" \
        --server-pid "${PIDS[$node]}" \
        msg --pairs "$PAIRS" --duration "$SECONDS_" "${watch[@]}" "$@" 2>&1 |
        sed "s/^/$label: /" | tee -a "$RESULTS" >&2
}

flood_and_rate() { # label node first [msg-args…]
    local label=$1 node=$2 first=$3
    shift 3
    log "$label: flood for ${SECONDS_}s"
    bench "$label flood" "$node" "$first" --flood "$@"
    log "$label: ${RATE} msg/s for ${SECONDS_}s"
    bench "$label rate" "$node" "$first" --rate "$RATE" "$@"
}

# Accounts user1 … user<4·PAIRS> in the shared file: the cross runs use 1…2P (a's half
# 1…P, b's P+1…2P), the parallel run 1…2P on a and 2P+1…4P on b.
canto_config a 0 15222 15260
for i in $(seq 1 $(( 4 * PAIRS ))); do echo "user$i@localhost password"; done |
    "$CANTO_BIN" --config "$TMP/a/canto.toml" user import >/dev/null || exit 1

log "single node"
start_canto a
for r in $(seq 1 "$ROUNDS"); do flood_and_rate "single r$r" a 1; done
stop_server a

start_nats
log "two-node cluster on nats-server 127.0.0.1:${PORTS[nats]}"
canto_config a 1 15222 15260
canto_config b 1 15261 15299
start_canto a
start_canto b
wait_cluster || exit 1
peer=(--peer-addr "127.0.0.1:${PORTS[b]}" --peer-domain localhost)
for r in $(seq 1 "$ROUNDS"); do
    flood_and_rate "cross r$r" a 1 "${peer[@]}"
    flood_and_rate "local r$r" a 1
    log "parallel r$r: each node its own pairs, flood for ${SECONDS_}s"
    bench "parallel-a r$r flood" a 1 --flood &
    PIDS[bench_a]=$!
    bench "parallel-b r$r flood" b $(( 2 * PAIRS + 1 )) --flood &
    PIDS[bench_b]=$!
    wait "${PIDS[bench_a]}" "${PIDS[bench_b]}"
    unset "PIDS[bench_a]" "PIDS[bench_b]"
done
"$CANTO_BIN" --config "$TMP/a/canto.toml" cluster status 2>/dev/null | sed 's/^/cluster status: /' >&2

# Medians over the rounds: one line per run kind.
log "medians of $ROUNDS round(s)"
awk '
function med(key,   n, i, j, t, v) {
    n = split(vals[key], v, " ")
    for (i = 2; i <= n; i++) for (j = i; j > 1 && v[j] + 0 < v[j - 1] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return n ? v[int((n + 1) / 2)] : "-"
}
/msg: mode=/ {
    kind = $1 " " $3; sub(/:$/, "", kind)
    if (!(kind in seen)) { seen[kind] = 1; order[++k] = kind }
    for (i = 1; i <= NF; i++) if (split($i, kv, "=") == 2) vals[kind SUBSEP kv[1]] = vals[kind SUBSEP kv[1]] " " kv[2]
}
END {
    printf "%-20s %12s %9s %9s %12s %10s %10s %10s %6s\n", "run", "delivered/s", "p50_us", "p99_us", "node_us/msg", "other_us", "nats_us", "node_cores", "lost"
    for (i = 1; i <= k; i++) {
        c = order[i]
        other = med(c SUBSEP "b_cpu_us_per_msg"); if (other == "-") other = med(c SUBSEP "a_cpu_us_per_msg")
        printf "%-20s %12s %9s %9s %12s %10s %10s %10s %6s\n", c, med(c SUBSEP "delivered_per_s"), med(c SUBSEP "p50_us"), med(c SUBSEP "p99_us"), med(c SUBSEP "server_cpu_us_per_msg"), other, med(c SUBSEP "nats_cpu_us_per_msg"), med(c SUBSEP "server_cpu_cores"), med(c SUBSEP "lost")
    }
}' "$RESULTS"
