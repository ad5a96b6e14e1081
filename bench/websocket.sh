#!/usr/bin/env bash
# WebSocket benchmark (RFC 7395, issue 13): Canto and Prosody (mod_websocket) side by side,
# each over TCP and over WebSocket, with the same load tool (canto-bench, `--security ws`
# for WebSocket), accounts and workloads:
#   * idle: IDLE sessions logged in and held: server RSS per session;
#   * msg: PAIRS pairs of sessions exchanging chat messages as fast as a window of 16 allows
#     for SECONDS: delivered messages per second, latency, server CPU per message.
# Every workload runs on a freshly started server; the table gives the median of RUNS runs.
#
#   bench/websocket.sh [--runs N] [--idle N] [--pairs N] [--seconds S]
#                      [--servers "canto prosody"] [--no-archive] [--out FILE]
#
# --no-archive runs Canto without module mam (its default archives every chat message to
# SQLite, fsynced, before delivery; Prosody here loads no mod_mam): like for like, the
# transport is then the only difference.
#
# Everything listens on 127.0.0.1 only (free ports from 16000 for Canto, 16050 for Prosody;
# each server's HTTP port is its c2s port + 1000); configuration, data and logs live in a
# temporary directory; every server started here is stopped by its PID on exit. Prosody comes
# from Debian's package when missing. Both servers allow SASL PLAIN without TLS on loopback
# (Canto `c2s.require_encryption = false`, Prosody `consider_websocket_secure = true` and
# `allow_unencrypted_plain_auth = true`), so neither pays for TLS and the transport is the
# only difference.
#
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries; otherwise `cargo build --release
# -p canto -p canto-bench` here, into CARGO_TARGET_DIR if set), KEEP=1 keeps the temporary
# directory. Defaults: 3 runs, 2000 idle sessions, 50 pairs for 10 s.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RUNS=3
IDLE=2000
PAIRS=50
SECONDS_=10
SERVERS="canto prosody"
NO_ARCHIVE=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        --pairs) PAIRS="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --no-archive) NO_ARCHIVE=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
PASSWORD=password
USERS=$(( IDLE > 2 * PAIRS ? IDLE : 2 * PAIRS ))

log() { printf '[websocket %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

TMP="$(mktemp -d /tmp/canto-ws.XXXXXX)"
RESULTS="$TMP/results"
mkdir -p "$RESULTS"
declare -A PIDS=() NOTE=() PORT=() HPORT=()
trap cleanup EXIT
trap 'exit 130' INT TERM

build_binaries || true
if [[ " $SERVERS " == *" prosody "* ]] && ! command -v prosodyctl >/dev/null; then
    log "installing prosody from Debian's packages"
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q prosody; } >"$TMP/apt.log" 2>&1 ||
        log "apt-get failed: $(tail -1 "$TMP/apt.log")"
    rm -f /usr/sbin/policy-rc.d
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || { echo "openssl failed" >&2; exit 1; }
for i in $(seq 1 "$USERS"); do echo "user$i@localhost $PASSWORD"; done > "$TMP/users.txt"

PORT[canto]=$(free_port 16000 16049) || exit 1
PORT[prosody]=$(free_port 16050 16099) || exit 1
for s in canto prosody; do HPORT[$s]=$(( PORT[$s] + 1000 )); done

configure_canto() {
    local d=$1
    mkdir -p "$d"
    fill "$HERE/configs/canto.toml" "$d/canto.toml" "$d" "${PORT[canto]}"
    sed -i 's/^@LIMITS@$/[limits.c2s]\nrate = "unlimited"/' "$d/canto.toml"
    if [ "$NO_ARCHIVE" = 1 ]; then
        # The default modules (canto config example) but mam; top-level, before any table.
        sed -i '0,/^\[/s//modules = ["disco", "ping", "version", "time", "roster", "vcard", "private", "blocking", "carbons", "pep", "pubsub", "muc", "bookmarks", "last", "smacks", "csi", "upload"]\n\n[/' "$d/canto.toml"
    fi
    # The [http] section's first key is its plain listener (configs/canto.toml).
    sed -i "0,/^listen = \[\]\$/s//listen = [\"127.0.0.1:${HPORT[canto]}\"]/" "$d/canto.toml"
    "$CANTO_BIN" --config "$d/canto.toml" check >"$d/check.log" 2>&1 ||
        { NOTE[canto]="canto check failed: $(tr '\n' ' ' <"$d/check.log")"; return 1; }
    "$CANTO_BIN" --config "$d/canto.toml" user import "$TMP/users.txt" >&2 ||
        { NOTE[canto]="canto user import failed"; return 1; }
}
start_canto() {
    local d=$1
    "$CANTO_BIN" --config "$d/canto.toml" serve >>"$d/canto.log" 2>&1 &
    PIDS[canto]=$!
    wait_port "${HPORT[canto]}" 30 "${PIDS[canto]}" || { NOTE[canto]="did not start: $(tail -2 "$d/canto.log")"; return 1; }
}

configure_prosody() {
    local d=$1
    mkdir -p "$d/data" "$d/certs"
    fill "$HERE/configs/prosody.cfg.lua" "$d/prosody.cfg.lua" "$d" "${PORT[prosody]}"
    sed -i 's/"admin_shell";/"admin_shell"; "websocket";/' "$d/prosody.cfg.lua"
    local tail_
    tail_=$(cat <<EOF
-- mod_websocket for bench/websocket.sh: plain HTTP on loopback, treated as secure so PLAIN
-- is allowed as on the plaintext c2s port.
http_ports = { ${HPORT[prosody]} }
http_interfaces = { "127.0.0.1" }
https_ports = { }
consider_websocket_secure = true
EOF
)
    # Global options must come before the VirtualHost line.
    awk -v add="$tail_" '/^VirtualHost/ && !done { print add; print ""; done=1 } { print }' \
        "$d/prosody.cfg.lua" > "$d/p.tmp" && mv "$d/p.tmp" "$d/prosody.cfg.lua"
    start_prosody "$d" || return 1
    prosodyctl --config "$d/prosody.cfg.lua" shell \
        ">local um=require'core.usermanager'; local n=0; for i=1,$USERS do if not um.user_exists('user'..i,'localhost') then assert(um.create_user('user'..i,'$PASSWORD','localhost')); n=n+1 end end; return n" >&2 ||
        { NOTE[prosody]="provisioning failed"; stop_server prosody; return 1; }
    stop_server prosody
}
start_prosody() {
    local d=$1
    prosody --config "$d/prosody.cfg.lua" -F >>"$d/stdout.log" 2>&1 &
    PIDS[prosody]=$!
    wait_port "${HPORT[prosody]}" 30 "${PIDS[prosody]}" ||
        { NOTE[prosody]="did not start: $(tail -2 "$d/stdout.log" "$d/prosody.log" 2>/dev/null | tr '\n' ' ')"; return 1; }
}

declare -A MECH=([canto]=scram-sha256 [prosody]=scram-sha1)

bench() { # server transport tag timeout args...
    local s=$1 tr=$2 tag=$3 t=$4; shift 4
    local out="$RESULTS/$s.$tag.txt" addr="127.0.0.1:${PORT[$s]}" sec=plain
    if [ "$tr" = ws ]; then addr="127.0.0.1:${HPORT[$s]}"; sec=ws; fi
    log "$s: $tag"
    if ! timeout "$t" "$BENCH_BIN" --addr "$addr" --security "$sec" --password "$PASSWORD" \
            --mech "${MECH[$s]}" --server-pid "${PIDS[$s]}" "$@" >"$out" 2>"$out.err"; then
        log "$s: $tag failed: $(tail -1 "$out.err")"
        echo "failed: $(tail -1 "$out.err")" >>"$out"
    fi
    grep -v '^$' "$out" | sed 's/^/    /' >&2
}

for s in $SERVERS; do
    "configure_$s" "$TMP/$s" || { log "$s: ${NOTE[$s]}"; continue; }
    for r in $(seq 1 "$RUNS"); do
        for tr in tcp ws; do
            "start_$s" "$TMP/$s" || { log "$s: ${NOTE[$s]}"; break; }
            bench "$s" "$tr" "idle-$tr.$r" 600 idle --count "$IDLE" --settle 3 --baseline-wait 2
            stop_server "$s"
            "start_$s" "$TMP/$s" || { log "$s: ${NOTE[$s]}"; break; }
            bench "$s" "$tr" "msg-$tr.$r" $(( SECONDS_ + 300 )) msg --pairs "$PAIRS" --flood --duration "$SECONDS_"
            stop_server "$s"
        done
    done
done

# ---------------------------------------------------------------- table
field() { # file key: the value of key=value in the file's result line
    grep -o "$2=[^ ]*" "$1" 2>/dev/null | head -1 | cut -d= -f2
}
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print v[int((NR + 1) / 2)] }'; }
med() { # server tag key
    for r in $(seq 1 "$RUNS"); do field "$RESULTS/$1.$2.$r.txt" "$3"; done | grep -v '^$' | median
}
{
    echo "| server | transport | KiB per idle session | msgs/s delivered | p50 µs | p99 µs | server CPU µs/msg |"
    echo "|---|---|---|---|---|---|---|"
    for s in $SERVERS; do
        for tr in tcp ws; do
            echo "| $s | $tr | $(med "$s" "idle-$tr" kib_per_session) | $(med "$s" "msg-$tr" delivered_per_s) | $(med "$s" "msg-$tr" p50_us) | $(med "$s" "msg-$tr" p99_us) | $(med "$s" "msg-$tr" server_cpu_us_per_msg) |"
        done
    done
    for s in $SERVERS; do [ -n "${NOTE[$s]:-}" ] && echo "note: $s: ${NOTE[$s]}"; done
    echo
    echo "medians of $RUNS runs; $IDLE idle sessions; $PAIRS pairs flooding for ${SECONDS_} s; $(nproc) cores$([ "$NO_ARCHIVE" = 1 ] && echo '; Canto without mam')"
} | tee "${OUT:-/dev/null}"
