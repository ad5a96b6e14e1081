#!/usr/bin/env bash
# Starts (or reuses) the PostgreSQL server the storage tests use, and prints its URL.
#
#   url=$(tests/postgres/start.sh) && export CANTO_TEST_POSTGRES_URL=$url
#
# Debian's PostgreSQL binaries (package `postgresql`), a private data directory under /tmp
# (owned by the `postgres` user when run as root: initdb and postgres refuse to run as root),
# trust authentication, listening on 127.0.0.1 only, on a private port. Idempotent: a server
# already answering on the port is reused. Stop it with `tests/postgres/stop.sh`.
#
# Overrides: CANTO_PG_PORT (55432), CANTO_PG_DATA (/tmp/canto-postgres-$PORT).
set -euo pipefail

port=${CANTO_PG_PORT:-55432}
data=${CANTO_PG_DATA:-/tmp/canto-postgres-$port}
url="postgres://postgres@127.0.0.1:$port/postgres"

bin=""
for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        bin=$dir
        break
    fi
done
if [ -z "$bin" ]; then
    echo "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin: apt-get install postgresql" >&2
    exit 1
fi

# As root, everything runs as the `postgres` user (created by Debian's package); otherwise as
# the calling user.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    echo "$url"
    exit 0
fi

if [ ! -s "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" != 0 ] || chown postgres:postgres "$data"
    chmod 700 "$data"
    # The `postgres` superuser, no password (trust), on loopback only.
    as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >"$data.initdb.log" 2>&1 || {
        cat "$data.initdb.log" >&2
        exit 1
    }
fi

# The socket goes into the data directory (Debian's /var/run/postgresql may not exist or not
# be writable); enough connections for tests running in parallel, each with its own pool.
# Durability settings stay at their defaults (fsync, synchronous_commit on).
as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
    -o "-p $port -h 127.0.0.1 -k $data -c max_connections=300" start >/dev/null || {
    tail -n 30 "$data/server.log" >&2 || true
    exit 1
}
echo "$url"
