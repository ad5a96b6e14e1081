#!/usr/bin/env bash
# PEP benchmark (XEP-0163, issue 11): Canto and Prosody side by side in one run, with the same
# load tool (canto-bench), accounts and workloads:
#   * pep-fanout: one publish fanned out to CONTACTS contacts in mutual presence subscription
#     whose caps (XEP-0115) ask for the node with +notify; time until the last contact has it
#     and server CPU per publish, over PUBLISHES publishes;
#   * pep-publish: one account publishing to one node of its own with WINDOW IQs in flight
#     for SECONDS seconds: publishes per second and server CPU per publish.
# Each run starts every server afresh on fresh accounts; the table gives the median of RUNS.
#
#   bench/pep.sh [--runs N] [--contacts N] [--publishes N] [--seconds S] [--window N]
#                [--max-items N] [--servers "canto prosody"] [--out FILE]
#
# Everything listens on 127.0.0.1 only (free ports from 15700 for Canto, 15750 for Prosody);
# configuration, data (Canto's SQLite file, Prosody's internal file store) and logs live in a
# temporary directory; every server started here is stopped by its PID on exit. Prosody comes
# from Debian's packages when missing (service starts during the install are denied, so no
# system-wide service comes up). Canto and Prosody use bench/configs/ as bench/compare.sh does,
# Prosody with "pep" added to modules_enabled.
#
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries; otherwise `cargo build --release
# -p canto -p canto-bench` here, into CARGO_TARGET_DIR if set), KEEP=1 keeps the temporary
# directory. Defaults: 3 runs, 500 contacts, 20 publishes, 10 s, window 32, max-items 1: about
# 1 minute for Canto and 2.5 for Prosody on 2 cores (plus the build and the install).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RUNS=3
CONTACTS=500
PUBLISHES=20
SECONDS_=10
WINDOW=32
MAX_ITEMS=1
SERVERS="canto prosody"
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --contacts) CONTACTS="$2"; shift 2 ;;
        --publishes) PUBLISHES="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --window) WINDOW="$2"; shift 2 ;;
        --max-items) MAX_ITEMS="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
PASSWORD=password
# Accounts: run r (1-based) uses user<FAN(r)> as the publisher and the next CONTACTS accounts
# as its contacts, and user<PUB(r)> for pep-publish: no run meets another's subscriptions or
# nodes.
fan_first() { echo $(( 1 + ($1 - 1) * (CONTACTS + 1) )); }
pub_first() { echo $(( RUNS * (CONTACTS + 1) + $1 )); }
USERS=$(( RUNS * (CONTACTS + 2) ))

log() { printf '[pep %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $(( CONTACTS + 200 )) -gt "$NOFILE" ]; then
    echo "ulimit -n is $NOFILE: too low for $CONTACTS contacts" >&2
    exit 1
fi

TMP="$(mktemp -d /tmp/canto-pep.XXXXXX)"
declare -A PIDS=() NOTE=() VERSION=() PORT=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- binaries and packages
BUILT=0
build_binaries && BUILT=1
if [[ " $SERVERS " == *" prosody "* ]] && ! command -v prosodyctl >/dev/null; then
    log "installing prosody from Debian's packages"
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Deny service starts during the install: the package would start a system-wide
        # daemon on the default XMPP ports.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    if ! { timeout 600 apt-get update -q >"$TMP/apt.log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q prosody >>"$TMP/apt.log" 2>&1; }; then
        log "apt-get failed (tail of the log follows)"; tail -5 "$TMP/apt.log" >&2
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
for s in $SERVERS; do
    case "$s" in
        canto) ;;
        prosody) command -v prosodyctl >/dev/null ||
            NOTE[prosody]="not installed: apt-get install prosody failed: $(tail -1 "$TMP/apt.log" 2>/dev/null)" ;;
        *) echo "unknown server $s (canto, prosody)" >&2; exit 2 ;;
    esac
done
if [ "$BUILT" = 1 ]; then
    VERSION[canto]="built here from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' with local changes')"
else
    VERSION[canto]="prebuilt $CANTO_BIN of $(date -u -r "$CANTO_BIN" '+%F %H:%M UTC' 2>/dev/null) (HEAD now $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null))"
fi
VERSION[prosody]="$(dpkg-query -W -f='${Version}' prosody 2>/dev/null)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || { echo "openssl failed" >&2; exit 1; }
cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/both.pem"
for i in $(seq 1 "$USERS"); do echo "user$i@localhost $PASSWORD"; done > "$TMP/users.txt"

# ---------------------------------------------------------------- servers
# start_NAME DIR: starts the server with data in DIR, sets PIDS[NAME]; non-zero with
# NOTE[NAME] set when it cannot. provision_NAME DIR: creates user1..userUSERS.
start_canto() {
    local d=$1
    mkdir -p "$d"
    "$CANTO_BIN" --config "$d/canto.toml" serve >>"$d/canto.log" 2>&1 &
    PIDS[canto]=$!
    wait_port "${PORT[canto]}" 30 "${PIDS[canto]}" || { NOTE[canto]="did not start: $(tail -2 "$d/canto.log")"; return 1; }
}
provision_canto() { # before the first start: the store is filled directly
    local d=$1
    mkdir -p "$d"
    fill "$HERE/configs/canto.toml" "$d/canto.toml" "$d" "${PORT[canto]}"
    # No c2s rate limit (the default holds the publisher back).
    sed -i 's/^@LIMITS@$/[limits.c2s]\nrate = "unlimited"/' "$d/canto.toml"
    "$CANTO_BIN" --config "$d/canto.toml" check >"$d/check.log" 2>&1 ||
        { NOTE[canto]="canto check failed: $(tr '\n' ' ' <"$d/check.log")"; return 1; }
    "$CANTO_BIN" --config "$d/canto.toml" user import "$TMP/users.txt" >&2 ||
        { NOTE[canto]="canto user import failed"; return 1; }
}

start_prosody() {
    local d=$1
    prosody --config "$d/prosody.cfg.lua" -F >>"$d/stdout.log" 2>&1 &
    PIDS[prosody]=$!
    wait_port "${PORT[prosody]}" 30 "${PIDS[prosody]}" ||
        { NOTE[prosody]="did not start: $(tail -2 "$d/stdout.log" "$d/prosody.log" 2>/dev/null | tr '\n' ' ')"; return 1; }
}
provision_prosody() { # starts the server to create the accounts inside it
    local d=$1
    mkdir -p "$d/data" "$d/certs"
    fill "$HERE/configs/prosody.cfg.lua" "$d/prosody.cfg.lua" "$d" "${PORT[prosody]}"
    sed -i 's/"admin_shell";/"admin_shell"; "pep";/' "$d/prosody.cfg.lua"
    grep -q '"pep"' "$d/prosody.cfg.lua" || { NOTE[prosody]="could not add pep to modules_enabled"; return 1; }
    start_prosody "$d" || return 1
    # One admin-shell call creates every account (internal_hashed, SCRAM-SHA-1 with 4096
    # iterations); `prosodyctl register` per account would take a Lua start-up each.
    prosodyctl --config "$d/prosody.cfg.lua" shell \
        ">local um=require'core.usermanager'; local n=0; for i=1,$USERS do if not um.user_exists('user'..i,'localhost') then assert(um.create_user('user'..i,'$PASSWORD','localhost')); n=n+1 end end; return n" >&2 ||
        { NOTE[prosody]="provisioning failed"; stop_server prosody; return 1; }
    stop_server prosody
}

declare -A MECH=([canto]=scram-sha256 [prosody]=scram-sha1)

bench() { # server tag timeout args...
    local s=$1 tag=$2 t=$3; shift 3
    local out="$TMP/results/$s.$tag.txt"
    mkdir -p "$TMP/results"
    log "$s: $tag"
    if ! timeout "$t" "$BENCH_BIN" --addr "127.0.0.1:${PORT[$s]}" --password "$PASSWORD" \
            --mech "${MECH[$s]}" --server-pid "${PIDS[$s]}" "$@" >"$out" 2>"$out.err"; then
        log "$s: $tag failed: $(tail -1 "$out.err")"
        echo "failed: $(tail -1 "$out.err")" >>"$out"
    fi
    grep -v '^$' "$out" | sed 's/^/    /' >&2
}

run_server() { # name
    local s=$1 d="$TMP/$1" r
    log "$s: provision $USERS accounts"
    "provision_$s" "$d" || return 1
    for r in $(seq 1 "$RUNS"); do
        "start_$s" "$d" || return 1
        bench "$s" "fanout.$r" $(( 120 + CONTACTS * 2 )) --first "$(fan_first "$r")" \
            pep-fanout --contacts "$CONTACTS" --publishes "$PUBLISHES"
        bench "$s" "publish.$r" $(( SECONDS_ + 120 )) --first "$(pub_first "$r")" \
            pep-publish --seconds "$SECONDS_" --window "$WINDOW" --max-items "$MAX_ITEMS"
        stop_server "$s"
    done
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START=$SECONDS
PORT[canto]=$(free_port 15700 15749) || exit 1
PORT[prosody]=$(free_port 15750 15799) || exit 1
for s in $SERVERS; do
    [ -n "${NOTE[$s]:-}" ] && { log "$s: skipped: ${NOTE[$s]}"; continue; }
    run_server "$s" || { log "$s: ${NOTE[$s]:-failed}"; stop_server "$s"; }
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- the table
median() { # server tag key -> median over the runs, n/a when none has it
    local s=$1 tag=$2 key=$3 r
    for r in $(seq 1 "$RUNS"); do
        local f="$TMP/results/$s.$tag.$r.txt"
        [ -f "$f" ] && grep -o "\b$key=[0-9.]*" "$f" | head -1 | cut -d= -f2
    done | grep . | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a"; exit }
        print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
runs_of() { # server tag key -> the runs' values, comma-separated
    local s=$1 tag=$2 key=$3 r out=""
    for r in $(seq 1 "$RUNS"); do
        local f="$TMP/results/$s.$tag.$r.txt" v=""
        [ -f "$f" ] && v=$(grep -o "\b$key=[0-9.]*" "$f" | head -1 | cut -d= -f2)
        out="$out${out:+, }${v:-–}"
    done
    echo "$out"
}
ratio() { # canto other higher|lower -> Canto's advantage (>1 better)
    awk -v c="$1" -v o="$2" -v d="$3" 'BEGIN {
        if (c !~ /^[0-9.]+$/ || o !~ /^[0-9.]+$/ || c + 0 <= 0 || o + 0 <= 0) { print "–"; exit }
        r = (d == "higher") ? c / o : o / c
        printf (r >= 10 ? "%.0f×" : "%.1f×"), r }'
}
ROWS=(
    "fan-out to $CONTACTS: all received, p50 ms|fanout|all_received_p50_ms|lower"
    "fan-out to $CONTACTS: all received, p99 ms|fanout|all_received_p99_ms|lower"
    "fan-out to $CONTACTS: server CPU ms per publish (schedstat)|fanout|server_cpu_ms_per_publish|lower"
    "fan-out to $CONTACTS: server CPU ms per publish (ticks)|fanout|server_cpu_ms_per_publish_ticks|lower"
    "fan-out: kernel share of that CPU|fanout|server_kernel_share|none"
    "fan-out: publisher's IQ result, p50 ms|fanout|publish_result_p50_ms|lower"
    "fan-out: disco#info queries answered (caps)|fanout|caps_queries_answered|none"
    "publish, window $WINDOW: publishes/s|publish|publishes_per_s|higher"
    "publish: result p50 ms|publish|result_p50_ms|lower"
    "publish: result p99 ms|publish|result_p99_ms|lower"
    "publish: server CPU µs per publish|publish|server_cpu_us_per_publish|lower"
    "publish: server CPU, cores|publish|server_cpu_cores|none"
    "publish: kernel share of that CPU|publish|server_kernel_share|none"
)
{
    echo "| workload (median of $RUNS runs) | Canto | Prosody | Canto vs Prosody | Canto runs | Prosody runs |"
    echo "|---|---:|---:|---:|---|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label tag key dir <<<"$row"
        c=$(median canto "$tag" "$key"); p=$(median prosody "$tag" "$key")
        if [ "$dir" = none ]; then rp=""; else rp=$(ratio "$c" "$p" "$dir"); fi
        echo "| $label | $c | $p | $rp | $(runs_of canto "$tag" "$key") | $(runs_of prosody "$tag" "$key") |"
    done
    echo
    echo "× = how many times better Canto is (higher rate, or lower cost/latency)."
    echo "Versions: Canto ${VERSION[canto]}, Prosody ${VERSION[prosody]:-n/a}. $CONTACTS contacts, $PUBLISHES timed publishes per run; publish: ${SECONDS_} s, window $WINDOW, max_items $MAX_ITEMS. Load average before/after: $LOAD_BEFORE / $LOAD_AFTER; $(( SECONDS - START )) s."
    for s in $SERVERS; do
        [ -n "${NOTE[$s]:-}" ] && echo "**$s: ${NOTE[$s]}**"
    done
    for f in "$TMP"/results/*.txt; do
        [ -f "$f" ] && grep -q '^failed' "$f" && echo "failed: $(basename "$f" .txt): $(grep '^failed' "$f" | head -1)"
    done
} >"$TMP/table.md"

cat "$TMP/table.md"
if [ -n "$OUT" ]; then
    cp "$TMP/table.md" "$OUT"
    for f in "$TMP"/results/*.txt; do [ -f "$f" ] && { echo "== $(basename "$f" .txt)"; cat "$f"; }; done >"$OUT.raw"
    log "table written to $OUT, raw lines to $OUT.raw"
fi
