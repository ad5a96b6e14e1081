#!/usr/bin/env bash
# Federation benchmark (issue 14): messages per second and latency when every message
# crosses a server-to-server stream, and the time to set one up.
#   * canto-canto: two Cantos on 127.0.0.2 and 127.0.0.3, serving those addresses as their
#     domains (an IP-literal domain needs no DNS: RFC 6120 §3.2.1 connects to it directly);
#     self-signed certificates, so the streams authenticate with dialback (XEP-0220), whose
#     callback is part of the set-up time;
#   * canto-prosody: Canto on 127.0.0.2 and Prosody 0.12 on 127.0.0.4, likewise.
# canto-bench `msg --peer-addr` logs PAIRS senders in on one server and their partners on
# the other: the first message each way is timed on its own (DNS, TCP, TLS, authentication,
# delivery), then a flood with a window of 16 for SECONDS and a fixed-rate run (RATE msg/s) for
# the latency. Canto runs without module mam (no fsync per message: the stream is measured).
#
#   bench/s2s.sh [--pairs N] [--seconds S] [--rate R] [--peers "canto prosody"]
#
# Everything on loopback addresses; servers started here are stopped by PID on exit.
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries), KEEP=1 keeps the temporary directory.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PAIRS=20
SECONDS_=10
RATE=2000
PEERS="canto prosody"
while [ $# -gt 0 ]; do
    case "$1" in
        --pairs) PAIRS="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --peers) PEERS="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
log() { printf '[s2s %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
declare -A PIDS
TMP="$(mktemp -d /tmp/canto-s2s.XXXXXX)"
trap cleanup EXIT
build_binaries

canto_config() { # name address
    local d="$TMP/$1"
    mkdir -p "$d"
    cat > "$d/canto.toml" <<CFG
data_dir = "$d/data"
hosts = ["$2"]
modules = ["disco", "ping", "version", "time", "roster", "vcard", "private", "blocking",
           "carbons", "last"]

[http]
listen = []
https_listen = []

[c2s]
listen = ["$2:5222"]
direct_tls_listen = []
require_encryption = false

[s2s]
listen = ["$2:5269"]
secure_auth = false
rate = "unlimited"

[limits.c2s]
rate = "unlimited"

[log]
level = "info"
CFG
    local i
    for i in $(seq 1 "$PAIRS"); do echo "user$i@$2 password"; done |
        "$CANTO_BIN" --config "$d/canto.toml" user import >/dev/null || exit 1
}

start_canto() { # name address
    "$CANTO_BIN" --config "$TMP/$1/canto.toml" serve 2> "$TMP/$1/log" &
    PIDS[$1]=$!
    wait_port_addr "$2" 5222 "${PIDS[$1]}" || { log "$1 did not start"; tail "$TMP/$1/log"; exit 1; }
}

wait_port_addr() { # address port pid
    local _
    for _ in $(seq 1 100); do
        kill -0 "$3" 2>/dev/null || return 1
        ss -Hltn "src $1 and sport = :$2" | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

start_prosody() { # address
    command -v prosody >/dev/null || { log "prosody is not installed (apt-get install prosody)"; exit 1; }
    local d="$TMP/prosody"
    mkdir -p "$d/data"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$1" \
        -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null
    cat > "$d/prosody.cfg.lua" <<CFG
pidfile = "$d/prosody.pid"
data_path = "$d/data"
log = { info = "$d/prosody.log" }
run_as_root = true
daemonize = false
interfaces = { "$1" }
c2s_ports = { 5222 }
s2s_ports = { 5269 }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
s2s_secure_auth = false
s2s_require_encryption = false
modules_enabled = { "roster", "saslauth", "tls", "dialback", "disco", "ping", "presence" }
modules_disabled = { "offline", "c2s_limits" }
limits = { c2s = { rate = "1000mb/s" }, s2sin = { rate = "1000mb/s" } }
certificates = "$d"
ssl = { certificate = "$d/cert.pem", key = "$d/key.pem" }
VirtualHost "$1"
CFG
    local i
    for i in $(seq 1 "$PAIRS"); do
        prosodyctl --config "$d/prosody.cfg.lua" register "user$i" "$1" password >/dev/null 2>&1 || true
    done
    prosody --config "$d/prosody.cfg.lua" -F > "$d/stdout" 2>&1 &
    PIDS[prosody]=$!
    wait_port_addr "$1" 5222 "${PIDS[prosody]}" || { log "prosody did not start"; cat "$d/stdout"; exit 1; }
}

run_pair() { # label peer_addr peer_domain
    log "$1: first messages, then a flood for ${SECONDS_}s"
    "$BENCH_BIN" --addr 127.0.0.2:5222 --domain 127.0.0.2 --server-pid "${PIDS[a]}" \
        msg --pairs "$PAIRS" --flood --duration "$SECONDS_" \
        --peer-addr "$2:5222" --peer-domain "$3" 2>&1 | sed "s/^/$1 flood: /"
    log "$1: ${RATE} msg/s for ${SECONDS_}s"
    "$BENCH_BIN" --addr 127.0.0.2:5222 --domain 127.0.0.2 --server-pid "${PIDS[a]}" \
        msg --pairs "$PAIRS" --rate "$RATE" --duration "$SECONDS_" \
        --peer-addr "$2:5222" --peer-domain "$3" 2>&1 | sed "s/^/$1 rate: /"
}

canto_config a 127.0.0.2
start_canto a 127.0.0.2
for peer in $PEERS; do
    case "$peer" in
        canto)
            canto_config b 127.0.0.3
            start_canto b 127.0.0.3
            run_pair canto-canto 127.0.0.3 127.0.0.3
            stop_server b
            ;;
        prosody)
            start_prosody 127.0.0.4
            run_pair canto-prosody 127.0.0.4 127.0.0.4
            stop_server prosody
            ;;
    esac
done
grep -h "outgoing stream authenticated" "$TMP"/a/log | sed 's/^/canto a: /' | head -5
