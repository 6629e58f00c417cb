#!/usr/bin/env bash
# Runs the extension's SQL regression tests (pg_regress) against a throwaway PostgreSQL cluster.
#
#   pg_test/installcheck.sh            # every test in pg_test/schedule
#   pg_test/installcheck.sh foo bar    # only pg_test/sql/foo.sql and pg_test/sql/bar.sql
#
# Layout: pg_test/sql/<name>.sql, pg_test/expected/<name>.out, pg_test/schedule ("test: a b" lines).
# The rserv extension must already be installed into the system PostgreSQL (nothing is built here).
# If pg_test/regress.conf exists it is included into the cluster's postgresql.conf (e.g. for
# shared_preload_libraries).
#
# On failure: pg_test/regression.diffs (also printed) and pg_test/results/<name>.out (the actual
# output, to copy to pg_test/expected/ once checked) are left behind, and the server log tail is
# printed. Exits non-zero on any failure. The cluster is always stopped and its temporary
# directory removed (set RSERV_KEEP_REGRESS=1 to keep the directory, e.g. to read the full log).
#
# Environment: RSERV_PG_BINDIR (default /usr/lib/postgresql/15/bin, else `pg_config --bindir`).
# PostgreSQL refuses to run as root: as root, every server/client program runs as user postgres.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd) # the pg_test directory
DB=rserv_regress
REGRESS_PID=

log() { printf '== installcheck: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PG_BIN=${RSERV_PG_BINDIR:-/usr/lib/postgresql/15/bin}
if [ ! -x "$PG_BIN/pg_ctl" ]; then
    PG_BIN=$(pg_config --bindir 2>/dev/null) || die "PostgreSQL binaries not found; set RSERV_PG_BINDIR"
fi
[ -x "$PG_BIN/pg_ctl" ] || die "no pg_ctl in $PG_BIN"
PG_REGRESS=$(dirname "$("$PG_BIN/pg_config" --pgxs)")/../test/regress/pg_regress
[ -x "$PG_REGRESS" ] || die "pg_regress not found at $PG_REGRESS (install postgresql-server-dev-15)"

# Never let the caller's libpq environment redirect the tests to another server.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^PG' || true)
export LC_ALL=C LANG=C

if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "running as root but there is no 'postgres' OS user"
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

# Which tests: arguments, else the schedule.
if [ $# -gt 0 ]; then
    for t in "$@"; do
        [ -f "$SRC/sql/$t.sql" ] || die "no such test: $SRC/sql/$t.sql"
    done
    TESTS=("$@")
else
    [ -f "$SRC/schedule" ] || die "no $SRC/schedule (or give test names as arguments)"
    TESTS=()
fi

# Artifacts of a previous run.
rm -rf "$SRC/results" "$SRC/regression.diffs" "$SRC/regression.out"

TMP=$(mktemp -d /tmp/rserv-regress.XXXXXX)
DATA=$TMP/data
SERVER_LOG=$TMP/server.log
# listen_addresses='' and a private socket directory: the port only names the socket file, so
# it cannot clash with any other server.
PORT=$((40000 + $$ % 20000))

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${REGRESS_PID:-}" ]; then
        kill -TERM "$REGRESS_PID" 2>/dev/null || true
    fi
    if [ -f "$DATA/postmaster.pid" ]; then
        (cd "$TMP" && as_pg "$PG_BIN/pg_ctl" -D "$DATA" -m immediate -w -t 60 stop) >/dev/null 2>&1 || true
    fi
    if [ -n "${RSERV_KEEP_REGRESS:-}" ]; then
        log "RSERV_KEEP_REGRESS set: keeping $TMP"
    else
        if [ -n "${REGRESS_PID:-}" ]; then wait "$REGRESS_PID" 2>/dev/null || true; fi
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

server_log_tail() {
    echo "--- server log tail ($SERVER_LOG) ---" >&2
    tail -n "${1:-40}" "$SERVER_LOG" >&2 2>/dev/null || echo "(no server log)" >&2
    echo "--- end of server log ---" >&2
}

# Inputs are copied so that the postgres user can read them wherever the checkout lives.
mkdir -p "$TMP/in" "$TMP/out"
cp -R "$SRC/." "$TMP/in/"
rm -rf "$TMP/in/results" "$TMP/in/regression.diffs" "$TMP/in/regression.out"
# pg_regress aborts the whole run when an expected file is missing; give new tests an empty one so
# that their complete output shows up in regression.diffs (and in results/) instead.
if [ ${#TESTS[@]} -gt 0 ]; then
    names=("${TESTS[@]}")
else
    mapfile -t names < <(sed -nE 's/^[[:space:]]*test:[[:space:]]*//p' "$SRC/schedule" | tr -s ' \t' '\n' | sed '/^$/d')
fi
mkdir -p "$TMP/in/expected"
for t in "${names[@]}"; do
    if [ ! -f "$TMP/in/expected/$t.out" ]; then
        log "WARNING: no expected/$t.out: the whole output of $t will show as a difference"
        : >"$TMP/in/expected/$t.out"
    fi
done
if [ "$(id -u)" -eq 0 ]; then chown -R postgres: "$TMP"; fi
cd "$TMP" # the postgres user must be able to access the working directory

log "initdb in $DATA"
if ! as_pg "$PG_BIN/initdb" -D "$DATA" -E UTF8 --no-locale -A trust -U postgres --no-sync \
    >"$TMP/initdb.log" 2>&1; then
    cat "$TMP/initdb.log" >&2
    die "initdb failed"
fi
{
    echo
    echo "# rserv installcheck"
    echo "listen_addresses = ''"
    echo "port = $PORT"
    echo "unix_socket_directories = '$TMP'"
    echo "fsync = off"
    echo "synchronous_commit = off"
    echo "full_page_writes = off"
    echo "max_connections = 20"
    echo "shared_buffers = 32MB"
    echo "lc_messages = 'C'"
    if [ -f "$SRC/regress.conf" ]; then echo "include '$TMP/in/regress.conf'"; fi
} >>"$DATA/postgresql.conf"

log "starting the server (socket $TMP/.s.PGSQL.$PORT)"
if ! as_pg "$PG_BIN/pg_ctl" -D "$DATA" -l "$SERVER_LOG" -w -t 60 start >"$TMP/pg_ctl.log" 2>&1; then
    cat "$TMP/pg_ctl.log" >&2
    server_log_tail
    die "pg_ctl start failed"
fi

# The same database settings pg_regress uses when it creates the database itself.
if ! as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PORT" -U postgres -d postgres \
    >"$TMP/createdb.log" 2>&1 <<SQL; then
CREATE DATABASE "$DB" TEMPLATE template0;
ALTER DATABASE "$DB" SET lc_messages TO 'C';
ALTER DATABASE "$DB" SET lc_monetary TO 'C';
ALTER DATABASE "$DB" SET lc_numeric TO 'C';
ALTER DATABASE "$DB" SET lc_time TO 'C';
ALTER DATABASE "$DB" SET bytea_output TO 'hex';
ALTER DATABASE "$DB" SET timezone_abbreviations TO 'Default';
SQL
    cat "$TMP/createdb.log" >&2
    server_log_tail
    die "creating database $DB failed"
fi

args=(--use-existing --bindir="$PG_BIN" --host="$TMP" --port="$PORT" --user=postgres
    --dbname="$DB" --inputdir="$TMP/in" --outputdir="$TMP/out")
if [ ${#TESTS[@]} -gt 0 ]; then
    args+=("${TESTS[@]}")
else
    args+=(--schedule="$TMP/in/schedule")
fi

# In the background so that a signal to this script triggers the cleanup at once.
rc=0
as_pg "$PG_REGRESS" "${args[@]}" &
REGRESS_PID=$!
wait "$REGRESS_PID" || rc=$?
REGRESS_PID=

if [ "$rc" -ne 0 ]; then
    if [ -f "$TMP/out/regression.diffs" ]; then
        cp "$TMP/out/regression.diffs" "$SRC/regression.diffs"
        echo "--- $SRC/regression.diffs ---" >&2
        cat "$SRC/regression.diffs" >&2
        echo "--- end of regression.diffs ---" >&2
    fi
    [ -f "$TMP/out/regression.out" ] && cp "$TMP/out/regression.out" "$SRC/regression.out"
    if [ -d "$TMP/out/results" ]; then
        cp -R "$TMP/out/results" "$SRC/results"
        log "actual outputs are in $SRC/results/"
    fi
    server_log_tail
    die "pg_regress failed (exit $rc); see $SRC/regression.diffs"
fi
log "all tests passed"
