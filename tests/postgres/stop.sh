#!/usr/bin/env bash
# Stops the test PostgreSQL server started by tests/postgres/start.sh (same overrides).
# With --clean, also removes its data directory.
set -euo pipefail

port=${CANTO_PG_PORT:-55432}
data=${CANTO_PG_DATA:-/tmp/canto-postgres-$port}

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r | head -n 1)
[ -n "$bin" ] || { echo "PostgreSQL binaries not found" >&2; exit 1; }
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
if [ -s "$data/postmaster.pid" ]; then
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop
fi
if [ "${1:-}" = --clean ]; then
    rm -rf "$data" "$data.initdb.log"
fi
