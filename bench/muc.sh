#!/usr/bin/env bash
# MUC benchmark (XEP-0045, issue 12): Canto, Prosody and ejabberd side by side, with the same
# load tool (canto-bench), accounts and workloads:
#   * muc-idle: IDLE sessions logged in, then each an occupant of a room of IDLE_ROOM:
#     server RSS per occupant (and per session);
#   * muc-join: JOINS clients joining rooms of JOIN_ROOM (0: one room) that other accounts
#     created, 10 joins in flight: joins/s (join presence → self-presence with status 110),
#     server CPU per join;
#   * muc-chatty: CHATTY occupants of one room all sending, each with WINDOW messages not yet
#     received by every occupant, SECONDS measured: messages fully broadcast per second,
#     server CPU per message;
#   * muc-fanout: one room of OCCUPANTS; one sends MESSAGES messages one after the other:
#     time until the last occupant has each (p50, p90), server CPU per message.
# "canto-noarchive" is Canto again, its rooms created with muc#roomconfig_enablearchiving = 0:
# Canto archives every room's messages by default (SQLite), Prosody without mod_muc_mam and
# ejabberd with mam: false do not.
# Every workload runs on a freshly started server (so none inherits another's load or
# memory); each run repeats all four; the table gives the median of the runs.
#
#   bench/muc.sh [--runs N] [--occupants N] [--messages N] [--chatty N] [--seconds S]
#                [--window N] [--joins N] [--join-room N] [--idle N] [--idle-room N]
#                [--servers "canto canto-noarchive prosody ejabberd"] [--workloads "idle join chatty fanout"]
#                [--results DIR] [--out FILE]
#
# --results DIR keeps each run's output in DIR (default: the temporary directory): a later
# call with the same DIR and other --servers adds to it, and the table shows every server
# that has results there (so Canto can be run again alone after a change).
# Everything listens on 127.0.0.1 only (free ports from 15800 for Canto, 15850 for Prosody,
# 15900 for ejabberd, whose Erlang distribution takes a free one from 15950, without epmd);
# configuration, data and logs live in a temporary directory; every server started here is
# stopped by its PID on exit. Prosody and ejabberd come from Debian's packages when missing
# (service starts denied during the install). Configurations come from bench/configs/ as in
# bench/compare.sh, plus the MUC service conference.localhost with its limits out of the way:
# Canto `[muc] max_occupants = 10000, message_rate = 1e6, message_burst = 1e6` and
# `c2s.max_send_queue = 20000` (a joiner gets the room state past the live queue limit, within
# max_send_queue + offline.max_messages: rooms up to max_occupants = 10000 need the room); Prosody
# `Component "conference.localhost" "muc"` with restrict_room_creation = false (no
# mod_muc_limits, no occupant limit by default); ejabberd mod_muc with max_users and
# max_users_presence 10000 (its default 1000 stops presence broadcasts in larger rooms),
# min_message_interval 0, no shaper.
#
# Environment: CANTO_BIN and BENCH_BIN (prebuilt binaries; otherwise `cargo build --release
# -p canto -p canto-bench` here, into CARGO_TARGET_DIR if set), KEEP=1 keeps the temporary
# directory. Defaults: 3 runs, fan-out to 1000, 20 messages, 50 chatty occupants for 10 s
# with window 2, 500 joins in one room, 2000 idle occupants in rooms of 100. One run takes
# about 5 minutes for Prosody on 2 cores (most of it the 1000 joins before the fan-out).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
RUNS=3
OCCUPANTS=1000
MESSAGES=20
CHATTY=50
SECONDS_=10
WINDOW=2
JOINS=500
JOIN_ROOM=0
IDLE=2000
IDLE_ROOM=100
SERVERS="canto canto-noarchive prosody ejabberd"
WORKLOADS="idle join chatty fanout"
RESULTS=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --occupants) OCCUPANTS="$2"; shift 2 ;;
        --messages) MESSAGES="$2"; shift 2 ;;
        --chatty) CHATTY="$2"; shift 2 ;;
        --seconds) SECONDS_="$2"; shift 2 ;;
        --window) WINDOW="$2"; shift 2 ;;
        --joins) JOINS="$2"; shift 2 ;;
        --join-room) JOIN_ROOM="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        --idle-room) IDLE_ROOM="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --workloads) WORKLOADS="$2"; shift 2 ;;
        --results) RESULTS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
PASSWORD=password
# Every workload runs alone on a fresh server and leaves no room behind (the tool destroys
# its rooms), so all of them use the accounts from user1 on.
max() { local m=0 v; for v in "$@"; do [ "$v" -gt "$m" ] && m=$v; done; echo "$m"; }
JOIN_ROOMS=$(( JOIN_ROOM > 0 ? (JOINS + JOIN_ROOM - 1) / JOIN_ROOM : 1 ))
USERS=$(max "$OCCUPANTS" "$CHATTY" $(( JOINS + JOIN_ROOMS )) "$IDLE")

# The server behind a name: canto-noarchive is Canto whose rooms are created with
# muc#roomconfig_enablearchiving = 0 (like Prosody without mod_muc_mam and ejabberd with
# mam: false here); Canto archives every room's messages by default (docs/muc.md).
base() { echo "${1%%-*}"; }
declare -A ROOM_ARGS=([canto-noarchive]="--room-config muc#roomconfig_enablearchiving=0")

log() { printf '[muc %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $(( USERS + 200 )) -gt "$NOFILE" ]; then
    echo "ulimit -n is $NOFILE: too low for $USERS sessions" >&2
    exit 1
fi

TMP="$(mktemp -d /tmp/canto-muc.XXXXXX)"
RESULTS="${RESULTS:-$TMP/results}"
mkdir -p "$RESULTS"
declare -A PIDS=() NOTE=() VERSION=() PORT=()
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- binaries and packages
BUILT=0
if [[ " $SERVERS " == *" canto"* ]]; then
    build_binaries && BUILT=1
elif [ -z "${BENCH_BIN:-}" ]; then
    log "building canto-bench (release)"
    (cd "$ROOT" && cargo build --release -q -p canto-bench) || exit 1
    BENCH_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/canto-bench"
fi
want_pkgs=()
[[ " $SERVERS " == *" prosody "* ]] && ! command -v prosodyctl >/dev/null && want_pkgs+=(prosody)
[[ " $SERVERS " == *" ejabberd "* ]] && ! command -v ejabberdctl >/dev/null && want_pkgs+=(ejabberd)
if [ ${#want_pkgs[@]} -gt 0 ]; then
    log "installing ${want_pkgs[*]} from Debian's packages"
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Deny service starts during the install: the packages would start system-wide
        # daemons on the default XMPP ports.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
    fi
    if ! { timeout 600 apt-get update -q >"$TMP/apt.log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q "${want_pkgs[@]}" >>"$TMP/apt.log" 2>&1; }; then
        log "apt-get failed (tail of the log follows)"; tail -5 "$TMP/apt.log" >&2
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
for s in $SERVERS; do
    case "$s" in
        canto|canto-noarchive) ;;
        prosody) command -v prosodyctl >/dev/null || NOTE[prosody]="not installed: apt-get install prosody failed" ;;
        ejabberd) command -v ejabberdctl >/dev/null || NOTE[ejabberd]="not installed: apt-get install ejabberd failed" ;;
        *) echo "unknown server $s (canto, canto-noarchive, prosody, ejabberd)" >&2; exit 2 ;;
    esac
done
if [ "$BUILT" = 1 ]; then
    VERSION[canto]="built here from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' with local changes')"
elif [ -n "${CANTO_BIN:-}" ]; then
    VERSION[canto]="prebuilt $CANTO_BIN of $(date -u -r "$CANTO_BIN" '+%F %H:%M UTC' 2>/dev/null) (HEAD now $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null))"
fi
VERSION[prosody]="$(dpkg-query -W -f='${Version}' prosody 2>/dev/null)"
VERSION[ejabberd]="$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null)"
for s in $SERVERS; do echo "${VERSION[$(base "$s")]:-}" >"$RESULTS/$(base "$s").version"; done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || { echo "openssl failed" >&2; exit 1; }
cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/both.pem"
for i in $(seq 1 "$USERS"); do echo "user$i@localhost $PASSWORD"; done > "$TMP/users.txt"

# ---------------------------------------------------------------- servers
# configure_NAME DIR: writes the configuration; provision_NAME DIR: creates user1..userUSERS
# (starting and stopping the server if it must run for that); start_NAME DIR: starts it, sets
# PIDS[NAME]; each returns non-zero with NOTE[NAME] set when it cannot.
configure_canto() {
    local d=$1
    mkdir -p "$d"
    fill "$HERE/configs/canto.toml" "$d/canto.toml" "$d" "${PORT[canto]}"
    # No c2s rate limit, and the MUC limits out of the way (docs/muc.md). The send queue:
    # joining a room of N occupants queues N + 2 stanzas for the joiner at once (the others'
    # presence, its own, the subject); they may go past c2s.max_send_queue, up to
    # max_send_queue + offline.max_messages (ServiceCtx::deliver_burst), which rooms of up to
    # max_occupants = 10000 need raised. (Before that, the 1000th joiner of a room was closed
    # with policy-violation at the defaults.)
    sed -i 's/^@LIMITS@$/[limits.c2s]\nrate = "unlimited"\n\n[muc]\nmax_occupants = 10000\nmessage_rate = 1000000.0\nmessage_burst = 1000000.0/' "$d/canto.toml"
    sed -i 's/^max_stanza_size = 262144$/&\nmax_send_queue = 20000/' "$d/canto.toml"
    grep -q '^max_send_queue = 20000' "$d/canto.toml" || { NOTE[canto]="could not set c2s.max_send_queue"; return 1; }
    "$CANTO_BIN" --config "$d/canto.toml" check >"$d/check.log" 2>&1 ||
        { NOTE[canto]="canto check failed: $(tr '\n' ' ' <"$d/check.log")"; return 1; }
}
provision_canto() { # the store is filled directly, before the first start
    "$CANTO_BIN" --config "$1/canto.toml" user import "$TMP/users.txt" >&2 ||
        { NOTE[canto]="canto user import failed"; return 1; }
}
start_canto() {
    local d=$1
    "$CANTO_BIN" --config "$d/canto.toml" serve >>"$d/canto.log" 2>&1 &
    PIDS[canto]=$!
    wait_port "${PORT[canto]}" 30 "${PIDS[canto]}" || { NOTE[canto]="did not start: $(tail -2 "$d/canto.log")"; return 1; }
}

configure_prosody() {
    local d=$1
    mkdir -p "$d/data" "$d/certs"
    fill "$HERE/configs/prosody.cfg.lua" "$d/prosody.cfg.lua" "$d" "${PORT[prosody]}"
    cat >>"$d/prosody.cfg.lua" <<'EOF'

-- MUC for bench/muc.sh: rooms created by anyone, no mod_muc_limits (not loaded), no room
-- occupant limit (Prosody has none by default).
Component "conference.localhost" "muc"
	restrict_room_creation = false
EOF
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
    start_prosody "$d" || return 1
    # One admin-shell call creates every account (internal_hashed, SCRAM-SHA-1 with 4096
    # iterations); `prosodyctl register` per account would take a Lua start-up each.
    prosodyctl --config "$d/prosody.cfg.lua" shell \
        ">local um=require'core.usermanager'; local n=0; for i=1,$USERS do if not um.user_exists('user'..i,'localhost') then assert(um.create_user('user'..i,'$PASSWORD','localhost')); n=n+1 end end; return n" >&2 ||
        { NOTE[prosody]="provisioning failed"; stop_server prosody; return 1; }
    stop_server prosody
}

EJABBERD_NODE=canto-muc-ejabberd@localhost
EJABBERD_COOKIE=canto-muc-$$
configure_ejabberd() {
    local d=$1
    mkdir -p "$d/spool" "$d/logs"
    fill "$HERE/configs/ejabberd.yml" "$d/ejabberd.yml" "$d" "${PORT[ejabberd]}"
    cat >>"$d/ejabberd.yml" <<'EOF'
  # MUC for bench/muc.sh: rooms created by anyone, 10000 occupants, presence broadcast in
  # rooms of any size (max_users_presence defaults to 1000), no message or presence interval.
  mod_muc:
    access: all
    access_create: all
    max_users: 10000
    max_users_presence: 10000
    max_user_conferences: 10000
    min_message_interval: 0
    min_presence_interval: 0
    default_room_options:
      max_users: 10000
      mam: false
      logging: false
EOF
}
erl_eval() { # expression in $1 or on stdin, evaluated in the running ejabberd node
    local erl_call
    erl_call=$(command -v erl_call || ls /usr/lib/erlang/lib/erl_interface-*/bin/erl_call 2>/dev/null | head -1)
    [ -n "$erl_call" ] || { echo "erl_call not found" >&2; return 1; }
    if [ $# -gt 0 ]; then
        echo "$1" | "$erl_call" -address "127.0.0.1:$EJABBERD_DIST_PORT" -c "$EJABBERD_COOKIE" -timeout 600 -e
    else
        "$erl_call" -address "127.0.0.1:$EJABBERD_DIST_PORT" -c "$EJABBERD_COOKIE" -timeout 600 -e
    fi
}
start_ejabberd() {
    local d=$1
    # What `ejabberdctl foreground` runs, minus the switch to the ejabberd user and epmd:
    # Erlang distribution (for provisioning) on a fixed loopback port.
    local libs=/usr/lib/x86_64-linux-gnu
    [ -d "$libs" ] || libs=/usr/lib/$(uname -m)-linux-gnu
    ( cd "$d" && exec env ERL_LIBS="$libs" EJABBERD_CONFIG_PATH="$d/ejabberd.yml" \
        EJABBERD_LOG_PATH="$d/logs/ejabberd.log" HOME="$d" ERL_MAX_PORTS=32000 \
        ERL_CRASH_DUMP="$d/logs/erl_crash.dump" ERL_CRASH_DUMP_BYTES=0 \
        erl -sname "$EJABBERD_NODE" -setcookie "$EJABBERD_COOKIE" -start_epmd false \
            -erl_epmd_port "$EJABBERD_DIST_PORT" -kernel inet_dist_use_interface '{127,0,0,1}' \
            +K true +P 250000 -noinput -mnesia dir "\"$d/spool\"" -s ejabberd \
        >>"$d/stdout.log" 2>&1 ) &
    PIDS[ejabberd]=$!
    wait_port "${PORT[ejabberd]}" 60 "${PIDS[ejabberd]}" ||
        { NOTE[ejabberd]="did not start: $(tail -3 "$d/logs/ejabberd.log" "$d/stdout.log" 2>/dev/null | tr '\n' ' ')"; return 1; }
    # The listener opens before every module has started: wait for the application.
    local i
    for i in $(seq 1 120); do
        erl_eval 'lists:keymember(ejabberd, 1, application:which_applications()).' 2>/dev/null |
            grep -q true && return 0
        sleep 0.5
    done
    NOTE[ejabberd]="started but not ready within 60 s"; return 1
}
provision_ejabberd() {
    # ejabberd_auth:try_register in the running node, in 4 parallel workers, through
    # erl_call (one call instead of an `ejabberdctl register` VM start per account).
    local d=$1 out
    start_ejabberd "$d" || return 1
    out=$(erl_eval <<EOF
Reg = fun(From, To) -> lists:foldl(fun(N, Acc) ->
        case ejabberd_auth:try_register(<<"user", (integer_to_binary(N))/binary>>, <<"localhost">>, <<"$PASSWORD">>) of
            ok -> Acc + 1; {error, exists} -> Acc; E -> exit(E) end end, 0, lists:seq(From, To)) end,
Parent = self(), Total = $USERS, Step = (Total + 3) div 4,
Refs = [begin R = make_ref(), F = 1 + I * Step, T = min(Total, (I + 1) * Step),
        spawn(fun() -> Parent ! {R, catch Reg(F, T)} end), R end || I <- lists:seq(0, 3)],
{created, lists:sum([receive {R, Res} -> Res end || R <- Refs])}.
EOF
)
    echo "$out" >&2
    stop_server ejabberd
    # {ok, {created, N}}; a failed registration makes the sum fail.
    [[ "$out" =~ created,\ ?[0-9]+ ]] || { NOTE[ejabberd]="provisioning failed: $out"; return 1; }
}

declare -A MECH=([canto]=scram-sha256 [prosody]=scram-sha1 [ejabberd]=scram-sha256)

bench() { # server tag timeout args...
    local s=$1 tag=$2 t=$3; shift 3
    local b out="$RESULTS/$s.$tag.txt" extra
    b=$(base "$s")
    read -ra extra <<<"${ROOM_ARGS[$s]:-}"
    log "$s: $tag"
    if ! timeout "$t" "$BENCH_BIN" --addr "127.0.0.1:${PORT[$b]}" --password "$PASSWORD" \
            --mech "${MECH[$b]}" --server-pid "${PIDS[$b]}" "$@" "${extra[@]}" >"$out" 2>"$out.err"; then
        log "$s: $tag failed: $(tail -1 "$out.err")"
        echo "failed: $(tail -1 "$out.err")" >>"$out"
    fi
    grep -v '^$' "$out" | sed 's/^/    /' >&2
}

workload() { # server workload run: on a freshly started server
    local s=$1 w=$2 r=$3 b
    b=$(base "$s")
    "start_$b" "$TMP/$s" || { NOTE[$s]="${NOTE[$b]:-did not start}"; return 1; }
    case "$w" in
        idle) bench "$s" "idle.$r" 600 muc-idle --occupants "$IDLE" --room-size "$IDLE_ROOM" --settle 3 --baseline-wait 3 ;;
        join) bench "$s" "join.$r" 600 muc-join --joins "$JOINS" --room-size "$JOIN_ROOM" ;;
        chatty) bench "$s" "chatty.$r" $(( SECONDS_ + 300 )) muc-chatty --occupants "$CHATTY" --window "$WINDOW" --duration "$SECONDS_" --warmup 2 ;;
        fanout) bench "$s" "fanout.$r" 1200 muc-fanout --occupants "$OCCUPANTS" --messages "$MESSAGES" ;;
        *) echo "unknown workload $w (idle, join, chatty, fanout)" >&2; exit 2 ;;
    esac
    stop_server "$b"
}

run_server() { # name
    local s=$1 d="$TMP/$1" r w b
    b=$(base "$s")
    log "$s: provision $USERS accounts"
    "configure_$b" "$d" || { NOTE[$s]="${NOTE[$b]:-}"; return 1; }
    "provision_$b" "$d" || { NOTE[$s]="${NOTE[$b]:-}"; return 1; }
    for r in $(seq 1 "$RUNS"); do
        for w in $WORKLOADS; do
            workload "$s" "$w" "$r" || return 1
        done
    done
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START=$SECONDS
PORT[canto]=$(free_port 15800 15849) || exit 1
PORT[prosody]=$(free_port 15850 15899) || exit 1
PORT[ejabberd]=$(free_port 15900 15949) || exit 1
EJABBERD_DIST_PORT=$(free_port 15950 15999) || exit 1
for s in $SERVERS; do
    rm -f "$RESULTS/$s".*.txt "$RESULTS/$s".*.err
    [ -n "${NOTE[$s]:-}" ] && { log "$s: skipped: ${NOTE[$s]}"; continue; }
    run_server "$s" || { log "$s: ${NOTE[$s]:-failed}"; stop_server "$(base "$s")"; }
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(date -u '+%F %H:%M UTC'): $SERVERS, load average $LOAD_BEFORE before, $LOAD_AFTER after, $(( SECONDS - START )) s" >>"$RESULTS/runs.log"

# ---------------------------------------------------------------- the table
runs_in() { # server tag -> the run numbers with a result file
    local f
    for f in "$RESULTS/$1.$2".*.txt; do [ -f "$f" ] && basename "$f" .txt | awk -F. '{ print $NF }'; done | sort -n
}
value() { # file key
    [ -f "$1" ] && grep -o "\b$2=[0-9.]*" "$1" | head -1 | cut -d= -f2
}
median() { # server tag key -> median over the runs, n/a when none has it
    local s=$1 tag=$2 key=$3 r
    for r in $(runs_in "$s" "$tag"); do value "$RESULTS/$s.$tag.$r.txt" "$key"; done |
        grep . | sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a"; exit }
        print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
runs_of() { # server tag key -> the runs' values, comma-separated
    local s=$1 tag=$2 key=$3 r out=""
    for r in $(runs_in "$s" "$tag"); do
        local v
        v=$(value "$RESULTS/$s.$tag.$r.txt" "$key")
        out="$out${out:+, }${v:-–}"
    done
    echo "${out:-–}"
}
ratio() { # canto other higher|lower -> Canto's advantage (>1 better)
    awk -v c="$1" -v o="$2" -v d="$3" 'BEGIN {
        if (c !~ /^[0-9.]+$/ || o !~ /^[0-9.]+$/ || c + 0 <= 0 || o + 0 <= 0) { print "–"; exit }
        r = (d == "higher") ? c / o : o / c
        printf (r >= 10 ? "%.0f×" : "%.1f×"), r }'
}
JROOM=$([ "$JOIN_ROOM" -gt 0 ] && echo "rooms of $JOIN_ROOM" || echo "one room")
ROWS=(
    "fan-out to $OCCUPANTS: last occupant has it, p50 ms|fanout|all_received_p50_ms|lower"
    "fan-out to $OCCUPANTS: last occupant has it, p90 ms|fanout|all_received_p90_ms|lower"
    "fan-out to $OCCUPANTS: server CPU ms per message|fanout|server_cpu_ms_per_msg|lower"
    "fan-out to $OCCUPANTS: server CPU ms per message (schedstat p50)|fanout|server_cpu_ms_per_msg_schedstat_p50|lower"
    "fan-out: setup, $OCCUPANTS joins, s|fanout|join_s|lower"
    "chatty, $CHATTY senders: messages fully broadcast/s|chatty|delivered_per_s|higher"
    "chatty: latency p50 ms (window $WINDOW)|chatty|latency_p50_ms|lower"
    "chatty: server CPU µs per message|chatty|server_cpu_us_per_msg|lower"
    "chatty: server CPU, cores|chatty|server_cpu_cores|none"
    "chatty: messages rejected|chatty|rejected|none"
    "join, $JOINS into $JROOM: joins/s|join|joins_per_s|higher"
    "join: p50 ms (10 in flight)|join|join_p50_ms|lower"
    "join: p99 ms|join|join_p99_ms|lower"
    "join: server CPU µs per join|join|server_cpu_us_per_join|lower"
    "idle, $IDLE occupants in rooms of $IDLE_ROOM: KiB RSS per occupant|idle|kib_per_occupant|lower"
    "idle: KiB RSS per session (before joining)|idle|kib_per_session|lower"
)
{
    echo "| workload (median of runs) | Canto | Canto, no archive | Prosody | ejabberd | Canto vs Prosody | Canto vs ejabberd | no archive vs Prosody | no archive vs ejabberd |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label tag key dir <<<"$row"
        c=$(median canto "$tag" "$key"); n=$(median canto-noarchive "$tag" "$key")
        p=$(median prosody "$tag" "$key"); e=$(median ejabberd "$tag" "$key")
        if [ "$dir" = none ]; then rp="" re="" np="" ne=""; else
            rp=$(ratio "$c" "$p" "$dir"); re=$(ratio "$c" "$e" "$dir")
            np=$(ratio "$n" "$p" "$dir"); ne=$(ratio "$n" "$e" "$dir"); fi
        echo "| $label | $c | $n | $p | $e | $rp | $re | $np | $ne |"
    done
    echo
    echo "Each run's figures:"
    echo
    echo "| workload | Canto runs | Canto, no archive, runs | Prosody runs | ejabberd runs |"
    echo "|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label tag key dir <<<"$row"
        echo "| $label | $(runs_of canto "$tag" "$key") | $(runs_of canto-noarchive "$tag" "$key") | $(runs_of prosody "$tag" "$key") | $(runs_of ejabberd "$tag" "$key") |"
    done
    echo
    echo "× = how many times better Canto is (higher rate, or lower cost/latency). Canto archives every room's messages by default (SQLite, muc_log); \"no archive\": rooms created with muc#roomconfig_enablearchiving = 0, as Prosody (no mod_muc_mam) and ejabberd (mam: false) run here."
    echo "Versions: Canto $(cat "$RESULTS/canto.version" 2>/dev/null || echo n/a), Prosody $(cat "$RESULTS/prosody.version" 2>/dev/null || echo n/a), ejabberd $(cat "$RESULTS/ejabberd.version" 2>/dev/null || echo n/a)."
    echo "Runs:"; sed 's/^/- /' "$RESULTS/runs.log"
    for s in $SERVERS; do
        [ -n "${NOTE[$s]:-}" ] && echo "**$s: ${NOTE[$s]}**"
    done
    for f in "$RESULTS"/*.txt; do
        [ -f "$f" ] && grep -q '^failed' "$f" && echo "failed: $(basename "$f" .txt): $(grep '^failed' "$f" | head -1)"
    done
} >"$TMP/table.md"

cat "$TMP/table.md"
if [ -n "$OUT" ]; then
    cp "$TMP/table.md" "$OUT"
    for f in "$RESULTS"/*.txt; do [ -f "$f" ] && { echo "== $(basename "$f" .txt)"; cat "$f"; }; done >"$OUT.raw"
    log "table written to $OUT, raw lines to $OUT.raw"
fi
