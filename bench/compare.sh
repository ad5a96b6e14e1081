#!/usr/bin/env bash
# Side-by-side benchmark: Canto, Prosody and ejabberd on this machine, in one run, with the
# same load tool (canto-bench), the same accounts and the same workloads; prints one table
# with Canto's advantage over each.
#
#   bench/compare.sh [--out FILE] [--servers "canto prosody ejabberd"] [--quick]
#
# Everything listens on 127.0.0.1 only, on ports 15222 (Canto), 15322 (Prosody), 15422 and
# 15470 (ejabberd, Erlang distribution without epmd); configuration, data and logs live in a
# temporary directory; every server started here is stopped by its PID on exit. Prosody and
# ejabberd are installed from Debian's packages when missing (service starts during the
# install are denied, so no system-wide service comes up on the default ports).
#
# Environment knobs (defaults in brackets): IDLE [2000] sessions per idle run, LOGINS [1000]
# logins per login run over LOGIN_ACCOUNTS [250] accounts, PAIRS [50] and WINDOW [16] for
# the flood, RATE [2000] msgs/s for the paced run, DURATION [10] and WARMUP [2] seconds per
# msg run, FANOUT [500] contacts and ROUNDS [10] presence changes, CANTO_BIN and BENCH_BIN
# (prebuilt binaries; otherwise `cargo build --release` here), KEEP=1 keeps the temporary
# directory. The whole run takes about 5 minutes on 2 cores (plus the build and, the first
# time, the package install).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
OUT=""
SERVERS="canto prosody ejabberd"
QUICK=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --servers) SERVERS="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

IDLE=${IDLE:-2000}
LOGINS=${LOGINS:-1000}
LOGIN_ACCOUNTS=${LOGIN_ACCOUNTS:-250}
PAIRS=${PAIRS:-50}
WINDOW=${WINDOW:-16}
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
FANOUT=${FANOUT:-500}
ROUNDS=${ROUNDS:-10}
if [ "$QUICK" = 1 ]; then
    IDLE=300 LOGINS=200 LOGIN_ACCOUNTS=100 PAIRS=10 DURATION=3 WARMUP=1 FANOUT=50 ROUNDS=3
fi
# Accounts: 1..IDLE for idle and login, then the pairs of the flood, the pairs of the paced
# run, then the fan-out hub and its contacts. Runs that leave state behind (subscriptions,
# offline messages from a paced run a server could not keep up with) touch no other run.
FLOOD_FIRST=$(( (IDLE > LOGIN_ACCOUNTS ? IDLE : LOGIN_ACCOUNTS) + 1 ))
RATE_FIRST=$(( FLOOD_FIRST + 2 * PAIRS ))
FANOUT_FIRST=$(( RATE_FIRST + 2 * PAIRS ))
USERS=$(( FANOUT_FIRST + FANOUT ))
PASSWORD=password

PORT_canto=15222
PORT_prosody=15322
PORT_ejabberd=15422
EJABBERD_DIST_PORT=15470
EJABBERD_NODE=canto-bench-ejabberd@localhost
EJABBERD_COOKIE=canto-bench-$$

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

# ---------------------------------------------------------------- preflight
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ $(( IDLE + 200 )) -gt "$NOFILE" ]; then
    echo "ulimit -n is $NOFILE: too low for IDLE=$IDLE sessions (tool and server each need one fd per session)" >&2
    exit 1
fi
for p in $PORT_canto $PORT_prosody $PORT_ejabberd $EJABBERD_DIST_PORT; do
    if port_in_use "$p"; then
        echo "port $p on this machine is in use; stop what listens there first" >&2
        exit 1
    fi
done

TMP="$(mktemp -d /tmp/canto-compare.XXXXXX)"
declare -A PIDS=()   # server name -> PID of the running server
declare -A NOTE=()   # server name -> why it has no figures
declare -A VERSION=()

trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- binaries and packages
BUILT=0
build_binaries && BUILT=1

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
    if ! { apt-get update -q >"$TMP/apt.log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want_pkgs[@]}" >>"$TMP/apt.log" 2>&1; }; then
        log "apt-get failed (tail of the log follows)"; tail -5 "$TMP/apt.log" >&2
    fi
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
command -v prosodyctl >/dev/null || NOTE[prosody]="not installed: apt-get install prosody failed (see the log above)"
command -v ejabberdctl >/dev/null || NOTE[ejabberd]="not installed: apt-get install ejabberd failed (see the log above)"
if [ "$BUILT" = 1 ]; then
    VERSION[canto]="built here from $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo ' with local changes')"
else
    VERSION[canto]="prebuilt $CANTO_BIN of $(date -u -r "$CANTO_BIN" '+%F %H:%M UTC' 2>/dev/null) (HEAD now $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null))"
fi
VERSION[prosody]="$(dpkg-query -W -f='${Version}' prosody 2>/dev/null)"
VERSION[ejabberd]="$(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null)"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null || { echo "openssl failed" >&2; exit 1; }
cat "$TMP/cert.pem" "$TMP/key.pem" > "$TMP/both.pem"
for i in $(seq 1 "$USERS"); do echo "user$i@localhost $PASSWORD"; done > "$TMP/users.txt"

# ---------------------------------------------------------------- per-server start and provisioning
# start_NAME DIR: starts the server with data in DIR, sets PIDS[NAME]; returns non-zero with
# NOTE[NAME] set when it cannot. provision_NAME DIR: creates user1..userUSERS.

start_canto() {
    local d=$1
    mkdir -p "$d"
    local limits=""
    if "$CANTO_BIN" config example | grep -q '"unlimited"'; then
        limits='[limits.c2s]\nrate = "unlimited"'
    fi
    fill "$HERE/configs/canto.toml" "$d/canto.toml" "$d" "$PORT_canto"
    if [ -n "$limits" ]; then
        sed -i "s/^@LIMITS@\$/$limits/" "$d/canto.toml"
    else
        sed -i 's/^@LIMITS@$//' "$d/canto.toml"
    fi
    if ! "$CANTO_BIN" --config "$d/canto.toml" check >"$d/check.log" 2>&1; then
        NOTE[canto]="canto check failed: $(tr '\n' ' ' <"$d/check.log")"; return 1
    fi
    "$CANTO_BIN" --config "$d/canto.toml" serve >"$d/canto.log" 2>&1 &
    PIDS[canto]=$!
    wait_port "$PORT_canto" 30 "${PIDS[canto]}" || { NOTE[canto]="did not start: $(tail -2 "$d/canto.log")"; return 1; }
}
provision_canto() {
    "$CANTO_BIN" --config "$1/canto.toml" user import "$TMP/users.txt" >&2
}

start_prosody() {
    local d=$1
    mkdir -p "$d/data" "$d/certs"
    fill "$HERE/configs/prosody.cfg.lua" "$d/prosody.cfg.lua" "$d" "$PORT_prosody"
    prosody --config "$d/prosody.cfg.lua" -F >"$d/stdout.log" 2>&1 &
    PIDS[prosody]=$!
    wait_port "$PORT_prosody" 30 "${PIDS[prosody]}" ||
        { NOTE[prosody]="did not start: $(tail -2 "$d/stdout.log" "$d/prosody.log" 2>/dev/null | tr '\n' ' ')"; return 1; }
}
provision_prosody() {
    # One admin-shell call creates every account inside the server (internal_hashed,
    # SCRAM-SHA-1 keys with 4096 iterations); `prosodyctl register` per account would take
    # a Lua start-up each.
    prosodyctl --config "$1/prosody.cfg.lua" shell \
        ">local um=require'core.usermanager'; local n=0; for i=1,$USERS do if not um.user_exists('user'..i,'localhost') then assert(um.create_user('user'..i,'$PASSWORD','localhost')); n=n+1 end end; return n" >&2
}

start_ejabberd() {
    local d=$1
    mkdir -p "$d/spool" "$d/logs"
    fill "$HERE/configs/ejabberd.yml" "$d/ejabberd.yml" "$d" "$PORT_ejabberd"
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
        >"$d/stdout.log" 2>&1 ) &
    PIDS[ejabberd]=$!
    wait_port "$PORT_ejabberd" 60 "${PIDS[ejabberd]}" ||
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
provision_ejabberd() {
    # ejabberd_auth:try_register in the running node, in 4 parallel workers, through
    # erl_call (one call instead of an `ejabberdctl register` VM start per account).
    local out
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
    # {ok, {created, N}}; a failed registration makes the sum fail.
    [[ "$out" =~ created,\ ?[0-9]+ ]]
}

# ---------------------------------------------------------------- workloads
declare -A MECH=([canto]=scram-sha256 [prosody]=scram-sha1 [ejabberd]=scram-sha256)

bench() { # server tag timeout args...
    local s=$1 tag=$2 t=$3; shift 3
    local out="$TMP/results/$s.$tag.txt"
    mkdir -p "$TMP/results"
    log "$s: $tag"
    if ! timeout "$t" "$BENCH_BIN" --addr "127.0.0.1:$(eval echo \$PORT_$s)" --password "$PASSWORD" \
            --server-pid "${PIDS[$s]}" "$@" >"$out" 2>"$out.err"; then
        log "$s: $tag failed: $(tail -1 "$out.err")"
        echo "failed: $(tail -1 "$out.err")" >>"$out"
    fi
    grep -v '^$' "$out" | sed 's/^/    /' >&2
}

# Every workload group runs on a freshly started server: RSS deltas are only meaningful on a
# process that has not yet grown and freed memory for other workloads, and servers that slow
# down after many sessions came and went (Prosody does: see docs/benchmarks.md) should not
# carry that into the next figure.
fresh() { # server function
    local s=$1
    "start_$s" "$TMP/$s" || return 1
    "$2" "$s"
    stop_server "$s"
}
group_idle_plain() { # a few logins first load the code paths
    bench "$1" warm-idle-plain 120 --mech "${MECH[$1]}" login --count 50 --concurrency 10
    bench "$1" idle-plain 300 --mech "${MECH[$1]}" idle --count "$IDLE" --concurrency 20 --settle 5 --baseline-wait 5
}
group_idle_tls() {
    bench "$1" warm-idle-tls 120 --security starttls --mech "${MECH[$1]}" login --count 50 --concurrency 10
    bench "$1" idle-tls 300 --security starttls --mech "${MECH[$1]}" idle --count "$IDLE" --concurrency 20 --settle 5 --baseline-wait 5
}
group_login() {
    bench "$1" login-plain 300 --mech plain login --count "$LOGINS" --concurrency 20
    bench "$1" login-scram 300 --mech "${MECH[$1]}" login --count "$LOGINS" --concurrency 20 --accounts "$LOGIN_ACCOUNTS"
}
group_flood() {
    bench "$1" msg-flood $(( DURATION + WARMUP + 120 )) --first "$FLOOD_FIRST" msg --pairs "$PAIRS" --flood --window "$WINDOW" --duration "$DURATION" --warmup "$WARMUP"
}
group_rate() {
    bench "$1" msg-rate $(( DURATION + WARMUP + 120 )) --first "$RATE_FIRST" msg --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP"
}
group_fanout() {
    bench "$1" fanout 300 --first "$FANOUT_FIRST" fanout --contacts "$FANOUT" --rounds "$ROUNDS"
}

run_server() { # name
    local s=$1 d="$TMP/$1"
    log "$s: provision $USERS accounts"
    mkdir -p "$d"
    local t0=$SECONDS
    if [ "$s" = canto ]; then
        # Canto imports into its store directly, before the first start.
        fill "$HERE/configs/canto.toml" "$d/canto.toml" "$d" "$PORT_canto"
        sed -i 's/^@LIMITS@$//' "$d/canto.toml"
        provision_canto "$d" || { NOTE[canto]="canto user import failed"; return 1; }
    else
        "start_$s" "$d" || return 1
        "provision_$s" "$d" || { NOTE[$s]="provisioning failed"; stop_server "$s"; return 1; }
        stop_server "$s"
    fi
    log "$s: provisioned in $(( SECONDS - t0 )) s"
    local g
    for g in idle_plain idle_tls login flood rate fanout; do
        fresh "$s" "group_$g" || return 1
    done
}

LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
START=$SECONDS
for s in $SERVERS; do
    [ -n "${NOTE[$s]:-}" ] && { log "$s: skipped: ${NOTE[$s]}"; continue; }
    run_server "$s" || { log "$s: ${NOTE[$s]:-failed}"; stop_server "$s"; }
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- the table
val() { # server tag key
    local f="$TMP/results/$1.$2.txt"
    [ -f "$f" ] || { echo "n/a"; return; }
    local v
    v=$(grep -o "\b$3=[^ ]*" "$f" | head -1 | cut -d= -f2)
    echo "${v:-n/a}"
}
# ratio VALUE_CANTO VALUE_OTHER higher|lower -> Canto's advantage (>1 better)
ratio() {
    awk -v c="$1" -v o="$2" -v d="$3" 'BEGIN {
        if (c !~ /^-?[0-9.]+$/ || o !~ /^-?[0-9.]+$/ || c + 0 <= 0 || o + 0 <= 0) { print "–"; exit }
        r = (d == "higher") ? c / o : o / c
        printf (r >= 10 ? "%.0f×" : "%.1f×"), r }'
}
fmt() { awk -v v="$1" 'BEGIN { if (v !~ /^-?[0-9.]+$/) { print v; exit }
    if (v + 0 >= 100) printf "%.0f", v;
    else if (v + 0 >= 10) printf "%.1f", v; else printf "%.2f", v }'; }

ROWS=(
    "login, PLAIN: logins/s|login-plain|logins_per_s|higher"
    "login, PLAIN: server CPU µs per login|login-plain|server_cpu_us_per_login|lower"
    "login, SCRAM¹: logins/s|login-scram|logins_per_s|higher"
    "login, SCRAM¹: server CPU µs per login|login-scram|server_cpu_us_per_login|lower"
    "login, SCRAM¹: p99 ms|login-scram|p99_ms|lower"
    "idle, plaintext + SCRAM¹: KiB RSS per session|idle-plain|kib_per_session|lower"
    "idle, STARTTLS + SCRAM¹: KiB RSS per session|idle-tls|kib_per_session|lower"
    "msg flood: delivered msgs/s|msg-flood|delivered_per_s|higher"
    "msg flood: server CPU µs per message|msg-flood|server_cpu_us_per_msg|lower"
    "msg flood: p99 ms (saturated)²|msg-flood|p99_us|lower"
    "msg flood: load tool CPU, cores|msg-flood|tool_cpu_cores|none"
    "msg $RATE/s: p50 µs|msg-rate|p50_us|lower"
    "msg $RATE/s: p99 µs|msg-rate|p99_us|lower"
    "msg $RATE/s: server CPU µs per message|msg-rate|server_cpu_us_per_msg|lower"
    "fan-out to $FANOUT: all received, p50 ms|fanout|all_received_p50_ms|lower"
    "fan-out to $FANOUT: all received, max ms|fanout|all_received_max_ms|lower"
    "fan-out to $FANOUT: server CPU ms per change|fanout|server_cpu_ms_per_round|lower"
    "roster fetch, $FANOUT items: p50 ms|fanout|roster_fetch_p50_ms|lower"
)

{
    echo "| workload | Canto | Prosody | ejabberd | Canto vs Prosody | Canto vs ejabberd |"
    echo "|---|---:|---:|---:|---:|---:|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r label tag key dir <<<"$row"
        c=$(val canto "$tag" "$key"); p=$(val prosody "$tag" "$key"); e=$(val ejabberd "$tag" "$key")
        if [ "$key" = p99_us ] && [ "$tag" = msg-flood ]; then
            for v in c p e; do
                eval "x=\$$v"
                [[ "$x" =~ ^[0-9.]+$ ]] && eval "$v=\$(awk -v x=$x 'BEGIN{printf \"%.1f\", x/1000}')"
            done
        fi
        if [ "$dir" = none ]; then rp="" re=""; else rp=$(ratio "$c" "$p" "$dir"); re=$(ratio "$c" "$e" "$dir"); fi
        echo "| $label | $(fmt "$c") | $(fmt "$p") | $(fmt "$e") | $rp | $re |"
    done
    echo
    echo "¹ SCRAM-SHA-256 for Canto and ejabberd (stored SCRAM-SHA-256 keys); SCRAM-SHA-1 for Prosody 0.12, which stores only SCRAM-SHA-1 keys. All three: 4096 iterations; the client caches salted passwords."
    echo "² $PAIRS pairs, window $WINDOW per sender: $(( 2 * PAIRS * WINDOW )) messages in flight, so this is queueing time, not a latency target."
    echo "× = how many times better Canto is (higher throughput, or lower cost/latency); <1× means worse."
    echo
    echo "Versions: Canto ${VERSION[canto]}, Prosody ${VERSION[prosody]:-n/a}, ejabberd ${VERSION[ejabberd]:-n/a}. Accounts: $USERS; idle $IDLE sessions per run; logins $LOGINS (SCRAM over $LOGIN_ACCOUNTS accounts); msg: $PAIRS pairs, ${DURATION}s measured after ${WARMUP}s warm-up. Load average before/after: $LOAD_BEFORE / $LOAD_AFTER; ulimit -n $NOFILE; $(( SECONDS - START )) s."
    for s in canto prosody ejabberd; do
        [ -n "${NOTE[$s]:-}" ] && echo "**$s: ${NOTE[$s]}**"
    done
    for f in "$TMP"/results/*.txt; do
        [ -f "$f" ] && grep -q '^failed' "$f" && echo "failed: $(basename "$f" .txt): $(grep '^failed' "$f" | head -1)"
    done
} >"$TMP/table.md"

cat "$TMP/table.md"
if [ -n "$OUT" ]; then cp "$TMP/table.md" "$OUT"; log "table written to $OUT"; fi
# The raw lines, for the record.
if [ -n "$OUT" ]; then
    for f in "$TMP"/results/*.txt; do [ -f "$f" ] && { echo "== $(basename "$f" .txt)"; cat "$f"; }; done >"$OUT.raw"
fi
