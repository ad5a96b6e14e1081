# Shared by the bench scripts (sourced, not run): building the binaries, finding a free
# loopback port, waiting for a server to listen and stopping it by its PID. Each script
# defines `log` before sourcing this file.

# Sets CANTO_BIN and BENCH_BIN, building them (release) in $ROOT when either is unset.
# Returns 0 when it built, 1 when both were given.
build_binaries() {
    if [ -n "${CANTO_BIN:-}" ] && [ -n "${BENCH_BIN:-}" ]; then return 1; fi
    log "building canto and canto-bench (release)"
    (cd "$ROOT" && cargo build --release -q -p canto -p canto-bench) || exit 1
    local td="${CARGO_TARGET_DIR:-$ROOT/target}"
    CANTO_BIN=${CANTO_BIN:-$td/release/canto}
    BENCH_BIN=${BENCH_BIN:-$td/release/canto-bench}
    return 0
}

# Whether something listens on 127.0.0.1/any address at TCP port $1.
port_in_use() {
    ss -Hltn "sport = :$1" | grep -q .
}

# Prints the first port in $1..$2 nobody listens on; fails when there is none.
free_port() {
    local p
    for p in $(seq "$1" "$2"); do
        if ! port_in_use "$p"; then echo "$p"; return 0; fi
    done
    echo "no free port in $1-$2" >&2
    return 1
}

# Waits up to $2 seconds for port $1 to listen; fails at once if process $3 exits.
wait_port() {
    local _
    for _ in $(seq 1 $(( $2 * 10 ))); do
        kill -0 "$3" 2>/dev/null || return 1
        port_in_use "$1" && return 0
        sleep 0.1
    done
    return 1
}

# Stops process $1 (named $2 in the log): SIGTERM, up to 15 s, then SIGKILL; reaps it.
stop_pid() {
    local pid=$1 name=${2:-server} _
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (PID $pid) ignored SIGTERM for 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# For the side-by-side scripts (compare.sh, pep.sh, muc.sh), which keep the servers they start
# in an associative array PIDS (name -> pid) and their files under TMP.
stop_server() { # name
    stop_pid "${PIDS[$1]:-}" "$1"
    unset "PIDS[$1]"
}

cleanup() { # every server still running, then TMP (kept with KEEP=1)
    for name in "${!PIDS[@]}"; do stop_server "$name"; done
    if [ "${KEEP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}

fill() { # template out dir port: a configuration from bench/configs/
    sed -e "s|@DIR@|$3|g" -e "s|@PORT@|$4|g" -e "s|@CERT@|$TMP/cert.pem|g" \
        -e "s|@KEY@|$TMP/key.pem|g" -e "s|@PEM@|$TMP/both.pem|g" "$1" > "$2"
}
