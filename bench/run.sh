#!/usr/bin/env bash
# rserv benchmark suite (issues 6 and 18): capture only, replicating, catch-up, continuous lag,
# initial copy, each measured like with like against PostgreSQL's built-in logical replication
# in the same run (capture only: a slot decoded to nowhere; replicating: a subscription).
#
#   bash bench/run.sh [--quick] [--rounds N] [--scale N] [--peers]
#
# Root on Debian 12. Builds nothing by hand: scripts/setup.sh, then cargo pgrx install (release)
# and cargo build -p replicate (release). Starts two throwaway clusters of its own (master and
# slave) as the postgres OS user, on unix sockets only in a private mktemp directory, and
# removes them on exit, whatever happens. Prints a table of figures and writes
# bench/RESULTS.md, bench/lag.png and the raw data in bench/out/. See bench/README.md.
#
# Environment knobs (for development of the suite itself; defaults come from the flags):
#   BENCH_SECS=N      seconds per pgbench TPC-B round          (30; --quick 10)
#   BENCH_LOOP=N      single-row UPDATEs per loop round        (20000; --quick 2000)
#   BENCH_BACKLOG=N   changed rows per catch-up backlog        (1000000; --quick 100000)
#   BENCH_BIG_SCALE=N pgbench scale of the 10x table of the catch-up check (10 x --scale)
#   BENCH_LAG_SECS=N  seconds of each continuous-lag run       (60; --quick 15)
#   BENCH_SKIP="capture replicating catchup big lag copy"   phases to skip (big: the 10x table)
#   BENCH_KEEP=1      keep the cluster directory (its path is printed)
#   BENCH_NO_BUILD=1  skip setup.sh and the two cargo builds (use what is already installed)
#   BENCH_SOURCE=TEXT what was built, for RESULTS.md when the tree is not a git checkout
set -euo pipefail
shopt -s inherit_errexit
unset RUST_BACKTRACE RUST_LIB_BACKTRACE PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS || true
export LC_ALL=C.UTF-8

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
REPO=$(pwd)
BENCH=$REPO/bench
OUT=$BENCH/out
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
COMMAND_LINE="bash bench/run.sh $*"

usage() {
    sed -n '2,23p' "$SELF" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

QUICK=0; ROUNDS=""; SCALE=10; PEERS=0
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --rounds=*) ROUNDS=${1#*=} ;;
        --scale) SCALE=${2:?--scale needs a number}; shift ;;
        --scale=*) SCALE=${1#*=} ;;
        --peers) PEERS=1 ;;
        -h|--help) usage 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; usage 2 ;;
    esac
    shift
done
case "$SCALE" in ''|*[!0-9]*|0) echo "run.sh: --scale must be a positive integer" >&2; exit 2 ;; esac
if [ -n "$ROUNDS" ]; then
    case "$ROUNDS" in ''|*[!0-9]*|0) echo "run.sh: --rounds must be a positive integer" >&2; exit 2 ;; esac
fi
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-3}
    SECS=${BENCH_SECS:-10}; LOOP=${BENCH_LOOP:-2000}
    BACKLOG=${BENCH_BACKLOG:-100000}; LAG_SECS=${BENCH_LAG_SECS:-15}
else
    ROUNDS=${ROUNDS:-5}
    SECS=${BENCH_SECS:-30}; LOOP=${BENCH_LOOP:-20000}
    BACKLOG=${BENCH_BACKLOG:-1000000}; LAG_SECS=${BENCH_LAG_SECS:-60}
fi
# catch-up rounds are long (a 1M-row backlog each): at most 3 unless --rounds says fewer
CU_ROUNDS=$(( ROUNDS < 3 ? ROUNDS : 3 ))
SKIP=" ${BENCH_SKIP:-} "
NACC=$(( SCALE * 100000 ))     # pgbench_accounts rows
BIG_SCALE=${BENCH_BIG_SCALE:-$(( SCALE * 10 ))}
case "$BIG_SCALE" in ''|*[!0-9]*|0) echo "run.sh: BENCH_BIG_SCALE must be a positive integer" >&2; exit 2 ;; esac
BIG_NACC=$(( BIG_SCALE * 100000 ))
BULK_LIMIT=200000              # the issue's bulk UPDATE ... WHERE aid <= 200000

log() { printf '\n== bench %s: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench: ERROR: %s\n' "$*" >&2; exit 1; }
skipped() { case "$SKIP" in *" $1 "*) return 0 ;; esac; return 1; }

[ "$(id -u)" -eq 0 ] || die "run.sh must run as root (it installs packages and starts servers as the postgres user)"
START_EPOCH=$(date +%s)

# ---------------------------------------------------------------- tools and build
if ! [ -x /usr/bin/time ] || ! command -v pgbench >/dev/null; then
    log "apt-get install time (GNU time, for the peak RSS of replicate)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends time >/dev/null
fi
mkdir -p "$OUT"
rm -f "$OUT"/*.tsv "$OUT"/*.csv "$OUT"/*.txt "$OUT"/*.log "$OUT"/*.sql

WORK=$(mktemp -d /tmp/rserv-bench.XXXXXX)
chown postgres:postgres "$WORK"
chmod 700 "$WORK"
SOCK=$WORK
STARTED=()      # data directories of running clusters
BG_PIDS=()      # background jobs of this script
PG_SHAREDIR=$("$PG_CONFIG" --sharedir)
# the rserv version this tree builds (the workspace's package version)
EXT_VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")
case "$EXT_VERSION" in *.*.*) ;; *) die "no [workspace.package] version in Cargo.toml" ;; esac
EXT_SQL=""      # this run's install script (see "pin" below), removed on exit
BENCH_VERSION=""
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    # slave (subscriber) first, so its apply workers do not reconnect to a dying master
    local i
    for (( i=${#STARTED[@]}-1; i>=0; i-- )); do
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "${STARTED[$i]}" -m immediate -w -t 60 stop >/dev/null 2>&1
    done
    if [ -n "$EXT_SQL" ]; then rm -f "$EXT_SQL"; fi
    cp "$WORK/master/server.log" "$OUT/master.server.log" 2>/dev/null
    cp "$WORK/slave/server.log" "$OUT/slave.server.log" 2>/dev/null
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "bench: clusters stopped; directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    if [ "$rc" -ne 0 ]; then
        echo "bench: FAILED (exit $rc)${STARTED[0]:+; server logs: $OUT/master.server.log, $OUT/slave.server.log}" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The rserv build this run measures is installed under a version name of its own: the tree's
# MAJOR.MINOR with a patch number of this run's (replicate drives an extension by the
# major.minor of its version, so the name must read as a version of the release built here).
# The name is reserved by creating its install script exclusively; it is filled in below.
for _ in $(seq 1 50); do
    v="${EXT_VERSION%.*}.$(( 100000 + RANDOM * 32768 + RANDOM ))"
    if ( set -C; : >"$PG_SHAREDIR/extension/rserv--$v.sql" ) 2>/dev/null; then
        BENCH_VERSION=$v; EXT_SQL=$PG_SHAREDIR/extension/rserv--$v.sql; break
    fi
done
[ -n "$BENCH_VERSION" ] || die "could not reserve an install script name in $PG_SHAREDIR/extension"

if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "build: scripts/setup.sh, cargo pgrx install --release, cargo build -p replicate --release"
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! { bash scripts/setup.sh &&
           cargo pgrx install -p rserv --release --pg-config "$PG_CONFIG" &&
           cargo build -p replicate --release; } >"$OUT/build.log" 2>&1; then
        tail -n 40 "$OUT/build.log" >&2
        die "build failed (full log: $OUT/build.log)"
    fi
fi
# Pin what this run measures. The machine is shared: another engineer's `cargo pgrx install`
# (often a debug build, sometimes of a newer source tree) can replace the installed rserv.so
# and rserv--VERSION.sql in the middle of a run, and a rebuild can replace
# target/release/replicate. So this build is copied now: replicate to $WORK/bin, the library
# to $WORK/lib, and the install script to rserv--$BENCH_VERSION.sql with the library's
# absolute path in place of MODULE_PATHNAME. The benchmark creates the extension with
# VERSION '$BENCH_VERSION' (removed again on exit), so nothing else can swap it.
PKGLIB_SO=$("$PG_CONFIG" --pkglibdir)/rserv.so
INSTALLED_SQL=$PG_SHAREDIR/extension/rserv--$EXT_VERSION.sql
[ -x "$REPO/target/release/replicate" ] || die "target/release/replicate is missing"
[ -f "$REPO/target/release/librserv.so" ] || die "target/release/librserv.so is missing"
[ -f "$INSTALLED_SQL" ] || die "$INSTALLED_SQL is missing"
if ! cmp -s "$REPO/target/release/librserv.so" "$PKGLIB_SO"; then
    die "the installed $PKGLIB_SO is not this run's release build (another install ran meanwhile?); run again${BENCH_NO_BUILD:+ without BENCH_NO_BUILD}"
fi
mkdir -p "$WORK/bin" "$WORK/lib"
cp "$REPO/target/release/replicate" "$WORK/bin/replicate"
cp "$REPO/target/release/librserv.so" "$WORK/lib/rserv.so"
chmod 755 "$WORK/bin" "$WORK/lib" "$WORK/lib/rserv.so"
REPLICATE=$WORK/bin/replicate
RSERV_SO=$WORK/lib/rserv.so
grep -q "MODULE_PATHNAME" "$INSTALLED_SQL" || die "$INSTALLED_SQL has no MODULE_PATHNAME"
sed "s|MODULE_PATHNAME|$RSERV_SO|g" "$INSTALLED_SQL" >"$EXT_SQL"
cp "$INSTALLED_SQL" "$OUT/rserv-install.sql"

# pgbench comes with postgresql-15 (installed by setup.sh)
command -v pgbench >/dev/null || die "pgbench not found (setup.sh installs postgresql-15)"
if ! python3 -c 'import matplotlib' 2>/dev/null; then
    log "pip install matplotlib (for bench/lag.png)"
    python3 -m pip install -q matplotlib >"$OUT/pip.log" 2>&1 || die "pip install matplotlib failed: $OUT/pip.log"
fi

# ---------------------------------------------------------------- clusters

# A private port per cluster. The servers listen on no TCP address, only on a unix socket in
# $WORK, so the number only names the socket; still pick one nobody else uses.
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 42000 + RANDOM % 8000 ))
        [ -e "/tmp/.s.PGSQL.$p" ] && continue
        ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && continue
        [ "$p" = "${MPORT:-}" ] && continue
        echo "$p"; return 0
    done
    die "no free port found"
}

start_cluster() {   # name port
    local name=$1 port=$2 dir=$WORK/$1
    runuser -u postgres -- mkdir -p "$dir"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 --no-instructions >"$OUT/$name.initdb.log" 2>&1 ||
        { cat "$OUT/$name.initdb.log" >&2; die "initdb $name failed"; }
    # Defaults except what replication needs and where the sockets go. fsync stays ON.
    runuser -u postgres -- tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF

# rserv bench
listen_addresses = ''
unix_socket_directories = '$SOCK'
port = $port
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 100
# a re-enabled subscription's apply worker starts at once, not up to 5 s later
wal_retrieve_retry_interval = '100ms'
log_min_messages = warning
log_line_prefix = '%m [%p] %d '
# slow statements, and the plans of the slowest (nested ones too: rserv's SPI queries), go to
# the server logs (copied to bench/out/): where a cycle spends its time
log_min_duration_statement = 250
session_preload_libraries = 'auto_explain'
auto_explain.log_min_duration = '1s'
auto_explain.log_nested_statements = on
EOF
    STARTED+=("$dir/data")
    runuser -u postgres -- env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" \
        -l "$dir/server.log" -w -t 60 start >/dev/null ||
        { tail -n 30 "$dir/server.log" >&2; die "cluster $name did not start"; }
}

MPORT=$(pick_port)
start_cluster master "$MPORT"
SPORT=$(pick_port)
start_cluster slave "$SPORT"
log "clusters up: master port $MPORT, slave port $SPORT, sockets in $SOCK"


# psql on the master (m) / slave (s): db, then psql arguments
PSQL_TIMEOUT=3600
m() { local db=$1; shift; timeout "$PSQL_TIMEOUT" psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$MPORT" -U postgres -d "$db" "$@"; }
s() { local db=$1; shift; timeout "$PSQL_TIMEOUT" psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$SPORT" -U postgres -d "$db" "$@"; }
mval() { m "$1" -Atc "$2"; }
sval() { s "$1" -Atc "$2"; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
calc() { awk "BEGIN { printf \"%.6g\", $1 }"; }

# one figure: phase config round metric value
rec() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/results.tsv"; }
info() { printf '%s\t%s\n' "$1" "$2" >>"$OUT/info.tsv"; }

# Wait, inside one server session, until SQL condition $3 holds in db $2 ("m" or "s" is $1);
# fails after $4 seconds. Polls every 20 ms.
wait_for() {
    local side=$1 db=$2 cond=$3 secs=${4:-600}
    "$side" "$db" -c "DO \$w\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
        LOOP
            EXIT WHEN ($cond);
            IF clock_timestamp() - t0 > interval '$secs seconds' THEN
                RAISE EXCEPTION 'bench: timed out after % s waiting for: %', $secs, \$c\$$cond\$c\$;
            END IF;
            PERFORM pg_sleep(0.02);
        END LOOP; END \$w\$"
}

# ---------------------------------------------------------------- machine and settings
{
    info date "$(date -u '+%Y-%m-%d %H:%M UTC')"
    info command "$COMMAND_LINE"
    info nproc "$(nproc)"
    info memory "$(free -h | awk '/^Mem:/ {print $2}') total, $(free -h | awk '/^Mem:/ {print $7}') available at start"
    info cpu "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    info loadavg_start "$(cut -d' ' -f1-3 /proc/loadavg)"
    info pg_version "$(mval postgres 'SELECT version()')"
    if git -C "$REPO" rev-parse --short HEAD >/dev/null 2>&1; then
        info rserv_commit "$(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet HEAD -- . ':!bench' 2>/dev/null || echo ' + uncommitted changes')"
    else
        info rserv_commit "${BENCH_SOURCE:-unknown (not a git checkout)}"
    fi
    info settings "$(mval postgres "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
        FROM pg_settings WHERE name IN ('fsync','synchronous_commit','full_page_writes','wal_level',
        'shared_buffers','work_mem','maintenance_work_mem','max_wal_size','checkpoint_timeout',
        'autovacuum','wal_compression','max_connections','effective_cache_size','wal_retrieve_retry_interval','log_min_duration_statement','jit')")"
    info scale "$SCALE"
    info rounds "$ROUNDS (catch-up: $CU_ROUNDS)"
    info quick "$QUICK"
    info secs "$SECS"
    info loop "$LOOP"
    info backlog "$BACKLOG"
    info lag_secs "$LAG_SECS"
    info big_scale "$BIG_SCALE"
    info rserv_so "release build, $(stat -c %s "$RSERV_SO") bytes, md5 $(md5sum <"$RSERV_SO" | cut -c1-12), pinned as version $BENCH_VERSION"
    info other_postgres "$(pgrep -c -u postgres -x postgres 2>/dev/null || echo 0) postgres processes on the machine (ours included: about 14)"
}

# ---------------------------------------------------------------- template databases
# The same deterministic pgbench data on both clusters; every benchmark database is a clone.
make_db() {   # side db scale: a pgbench database (pgbench -i) with the bench's extra tables
    local side=$1 db=$2 scale=$3 port
    [ "$side" = m ] && port=$MPORT || port=$SPORT
    "$side" postgres -c "CREATE DATABASE $db"
    timeout 3600 pgbench -h "$SOCK" -p "$port" -U postgres -i -s "$scale" -q "$db" >"$OUT/pgbench-init-$db-$side.log" 2>&1 ||
        { cat "$OUT/pgbench-init-$db-$side.log" >&2; die "pgbench -i failed"; }
    "$side" "$db" -c "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY" \
        -c "CREATE TABLE bench_marker (id int PRIMARY KEY, v bigint NOT NULL)" \
        -c "INSERT INTO bench_marker VALUES (1, 0)" \
        -c "CREATE TABLE bench_hb (id int PRIMARY KEY, ts timestamptz NOT NULL)" \
        -c "INSERT INTO bench_hb VALUES (1, '2000-01-01 00:00:00+00')" \
        -c "VACUUM ANALYZE"
}
clone() {   # side db [template]
    "$1" postgres -c "CREATE DATABASE $2 TEMPLATE ${3:-tpl} STRATEGY FILE_COPY"
}
PGB_TABLES="pgbench_accounts pgbench_branches pgbench_tellers pgbench_history"
rserv_master() {   # db [extra tables...]
    local db=$1 t; shift
    m "$db" -c "CREATE EXTENSION rserv VERSION '$BENCH_VERSION'"
    for t in $PGB_TABLES "$@"; do m "$db" -c "SELECT rserv_add_table('$t')" >/dev/null; done
}
rserv_slave() {   # db [extra tables...]
    local db=$1 t; shift
    s "$db" -c "CREATE EXTENSION rserv VERSION '$BENCH_VERSION'"
    for t in $PGB_TABLES "$@"; do s "$db" -c "SELECT rserv_slave_add_table('$t')" >/dev/null; done
}
# replicate one cycle, db on both sides; extra args before the databases
replicate_cycle() {   # db [replicate args...]
    local db=$1; shift
    timeout 3600 "$REPLICATE" --masterhost="$SOCK" --masterport="$MPORT" --slavehost="$SOCK" \
        --slaveport="$SPORT" --user=postgres "$@" "$db" "$db"
}
setup_cycle() {   # db: an untimed replicate cycle, its output kept in bench/out/
    replicate_cycle "$1" >>"$OUT/replicate-setup-$1.log" 2>&1 ||
        { tail -n 20 "$OUT/replicate-setup-$1.log" >&2; die "replicate failed on $1"; }
}
bg_forget() {   # pid: a background job that has ended, no longer one for cleanup to stop
    local keep=() p
    for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    BG_PIDS=("${keep[@]}")
}

# `replicate run`, the daemon, on db (both sides). daemon_stop records its peak RSS (VmHWM).
DMN_PID=""
daemon_start() {   # db tag
    "$REPLICATE" --masterhost="$SOCK" --masterport="$MPORT" --slavehost="$SOCK" --slaveport="$SPORT" \
        --user=postgres run "$1" "$1" >"$OUT/daemon-$2.log" 2>&1 & DMN_PID=$!; BG_PIDS+=("$DMN_PID")
    sleep 1
    kill -0 "$DMN_PID" 2>/dev/null || { cat "$OUT/daemon-$2.log" >&2; die "replicate run did not start"; }
}
daemon_stop() {   # phase metric config round: stop the daemon (SIGTERM), record its peak RSS in kB
    local hwm drc=0
    kill -0 "$DMN_PID" 2>/dev/null || die "replicate run (pid $DMN_PID) died during the run"
    hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$DMN_PID/status")
    [ -n "$hwm" ] && rec "$1" "$2" "$3" "$4" "$hwm"
    # SIGTERM stops the daemon between cycles; give it 60 s
    kill -TERM "$DMN_PID"
    for _ in $(seq 1 600); do kill -0 "$DMN_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$DMN_PID" 2>/dev/null; then kill -KILL "$DMN_PID"; die "replicate run ignored SIGTERM for 60 s"; fi
    wait "$DMN_PID" || drc=$?
    bg_forget "$DMN_PID"
    case "$drc" in 0|130|143) ;; *) die "replicate run exited with status $drc (log in $OUT/daemon-*.log)" ;; esac
}

# Built-in logical replication. lr_publish: a publication of the pgbench tables and the marker
# (the same tables rserv replicates); lr_setup adds an enabled subscription on the slave.
lr_publish() {   # db [extra tables...]
    local db=$1 tables; shift
    tables=$(echo $PGB_TABLES bench_marker "$@" | tr ' ' ',')
    m "$db" -c "CREATE PUBLICATION ${db}_pub FOR TABLE $tables"
}
lr_setup() {   # db [extra tables...]: publication on the master, enabled subscription on the slave
    local db=$1
    lr_publish "$@"
    s "$db" -c "SET client_min_messages = warning" \
        -c "CREATE SUBSCRIPTION ${db}_sub CONNECTION 'host=$SOCK port=$MPORT user=postgres dbname=$db'
                PUBLICATION ${db}_pub WITH (copy_data = false)"
    slave_sync "$db" >/dev/null
}
# make a marker change on the master and wait until the slave shows it (through rserv or a
# subscription, whichever replicates db): afterwards the slave has everything committed before
# it. Prints the seconds it took.
slave_sync() {   # db [timeout]
    local db=$1 secs=${2:-1800} v t0
    v=$(date +%s%N)
    m "$db" -c "UPDATE bench_marker SET v = $v WHERE id = 1"
    t0=$(now)
    wait_for s "$db" "(SELECT v FROM bench_marker WHERE id = 1) = $v" "$secs"
    since "$t0"
}
lr_disable() {   # db: stop the subscription and wait until its walsender is gone
    s "$1" -c "ALTER SUBSCRIPTION ${1}_sub DISABLE"
    wait_for m "$1" "NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '${1}_sub' AND active)" 120
}
lr_enable() { s "$1" -c "ALTER SUBSCRIPTION ${1}_sub ENABLE"; }
lr_drop() {   # db: drop the subscription (and its slot on the master)
    s "$1" -c "SET client_min_messages = warning" -c "DROP SUBSCRIPTION ${1}_sub"
}

# Logical decoding to nowhere: built-in logical replication's capture cost alone. A fresh
# pgoutput slot (created for the round, dropped after it) whose changes pg_recvlogical receives
# into /dev/null: the walsender decodes every transaction as for a subscriber, nothing applies.
DEC_PID=""
dec_slot_active() {   # db: SQL, the decoding walsender of db's slot is streaming
    echo "EXISTS (SELECT 1 FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
        WHERE s.slot_name = '${1}_slot' AND r.state = 'streaming')"
}
dec_start() {   # db
    local db=$1 slot=${1}_slot
    m "$db" -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$slot'" >/dev/null
    m "$db" -c "SELECT pg_create_logical_replication_slot('$slot', 'pgoutput')" >/dev/null
    "$PG_BIN/pg_recvlogical" -h "$SOCK" -p "$MPORT" -U postgres -d "$db" --slot="$slot" --start --no-loop \
        -o proto_version=1 -o publication_names="${db}_pub" --fsync-interval=0 --status-interval=1 \
        -f /dev/null >>"$OUT/recvlogical-$db.log" 2>&1 & DEC_PID=$!; BG_PIDS+=("$DEC_PID")
    wait_for m "$db" "$(dec_slot_active "$db")" 60
}
dec_drain() {   # db: seconds until the decoder has read all the WAL written before now
    local db=$1 lsn t0
    lsn=$(mval "$db" "SELECT pg_current_wal_insert_lsn()")
    # a published change after that point, so the WAL up to it is flushed and gets decoded
    m "$db" -c "UPDATE bench_marker SET v = v + 1 WHERE id = 1"
    t0=$(now)
    kill -0 "$DEC_PID" 2>/dev/null || die "pg_recvlogical died during the round ($OUT/recvlogical-$db.log)"
    wait_for m "$db" "$(dec_slot_active "$db") AND (SELECT r.sent_lsn >= '$lsn' FROM pg_replication_slots s
        JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '${db}_slot')" 600
    since "$t0"
}
dec_stop() {   # db: stop pg_recvlogical, drop the slot
    local db=$1
    kill -0 "$DEC_PID" 2>/dev/null || die "pg_recvlogical died during the round ($OUT/recvlogical-$db.log)"
    kill -INT "$DEC_PID"
    for _ in $(seq 1 300); do kill -0 "$DEC_PID" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$DEC_PID" 2>/dev/null && kill -TERM "$DEC_PID"
    wait "$DEC_PID" || true
    bg_forget "$DEC_PID"
    wait_for m "$db" "NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '${db}_slot' AND active)" 60
    m "$db" -c "SELECT pg_drop_replication_slot('${db}_slot')" >/dev/null
}

# md5 over every row of the four pgbench tables, in key order; pgbench_accounts: its row count,
# then count and md5 of the rows matching $1 (true: all of them)
table_hash() {   # [accounts filter]
    echo "SELECT string_agg(x, ' ') FROM (
    SELECT (SELECT count(*) FROM pgbench_accounts) || ':' || (SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY aid)) FROM pgbench_accounts t WHERE ${1:-true}) AS x
    UNION ALL SELECT (SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY bid)) FROM pgbench_branches t)
    UNION ALL SELECT (SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY tid)) FROM pgbench_tellers t)
    UNION ALL SELECT (SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY hid)) FROM pgbench_history t)) h"
}
verify_equal() {   # db what [accounts filter]: the slave's tables equal the master's
    local q a b pm ps
    q=$(table_hash "${3:-}")
    mval "$1" "$q" >"$WORK/hash.m" & pm=$!
    sval "$1" "$q" >"$WORK/hash.s" & ps=$!
    wait "$pm" || die "$2: hashing the master's tables failed"
    wait "$ps" || die "$2: hashing the slave's tables failed"
    a=$(cat "$WORK/hash.m"); b=$(cat "$WORK/hash.s")
    if [ "$a" != "$b" ]; then
        echo "master: $a" >&2; echo "slave:  $b" >&2
        die "$2: the slave differs from the master"
    fi
    if [ -n "${3:-}" ]; then
        echo "   verified: slave = master (${a%%:*} accounts rows, md5 of those where $3; md5 of every row of the other three tables)" >&2
    else
        echo "   verified: slave = master (${a%%:*} accounts rows, md5 of every row of the four tables)" >&2
    fi
}

pgbench_tps() {   # file: the tps pgbench reported, without connection time
    awk '/^tps = / { print $3; exit }' "$1"
}
tpcb_round() {   # db log: pgbench TPC-B for $SECS s on the master's db; prints the TPS
    timeout $(( SECS + 300 )) pgbench -h "$SOCK" -p "$MPORT" -U postgres -c 4 -j 2 -T "$SECS" "$1" \
        >"$2" 2>&1 || { cat "$2" >&2; die "pgbench failed"; }
    pgbench_tps "$2"
}

log "template databases (pgbench -i -s $SCALE, pgbench_history gets hid bigserial PRIMARY KEY)"
make_db m tpl "$SCALE"
make_db s tpl "$SCALE"
m postgres -c CHECKPOINT; s postgres -c CHECKPOINT

rotate() {   # round: the three configurations, starting one further each round
    local r=$1 a=(none rserv logical)
    echo "${a[$(( r % 3 ))]} ${a[$(( (r + 1) % 3 ))]} ${a[$(( (r + 2) % 3 ))]}"
}
CONFIGS="none rserv logical"
declare -A NEXT_AID   # db -> highest aid so far (inserts take fresh ones above it)

# ================================================================ 1. capture only
# none: no replication. rserv: the four tables registered with rserv_add_table (the capture
# triggers), no slave, no replicate; the log emptied before each round. logical: a publication
# of the same tables and a fresh slot decoded to /dev/null by pg_recvlogical (dec_start).
cap_before() {   # cfg: same starting conditions for each configuration
    local db=cap_$1
    if [ "$1" = rserv ]; then m "$db" -c "TRUNCATE _rserv_log_"; fi
    m "$db" -c "VACUUM pgbench_accounts"
    if [ "$1" = logical ]; then dec_start "$db"; fi
    m "$db" -c CHECKPOINT
}
cap_after() {   # cfg round
    if [ "$1" = logical ]; then
        # seconds the decoder still needed after the round
        rec capture dec_drain logical "$2" "$(dec_drain cap_logical)"
        dec_stop cap_logical
    fi
}

if ! skipped capture; then
    log "1. capture only: pgbench TPC-B -c 4 -j 2 -T $SECS, $ROUNDS interleaved rounds of none / rserv (triggers) / logical (slot decoded to /dev/null)"
    for c in $CONFIGS; do clone m "cap_$c"; done
    rserv_master cap_rserv
    lr_publish cap_logical
    cat >"$OUT/update1.sql" <<EOF
\set n random(1, $NACC)
UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :n;
EOF
    rec_log_size() {   # figure db round: rows and bytes of the rserv log after a round
        local rows bytes
        read -r rows bytes < <(mval "$2" "SELECT count(*), pg_total_relation_size('_rserv_log_') FROM _rserv_log_" | tr '|' ' ')
        rec capture "$1_log_rows" rserv "$3" "$rows"
        rec capture "$1_log_bytes" rserv "$3" "$bytes"
    }
    for r in $(seq 1 "$ROUNDS"); do
        for c in $(rotate "$r"); do
            db=cap_$c
            cap_before "$c"
            tps=$(tpcb_round "$db" "$OUT/pgbench-$c-$r.log")
            rec capture tpcb_tps "$c" "$r" "$tps"
            if [ "$c" = rserv ]; then rec_log_size tpcb "$db" "$r"; fi
            cap_after "$c" "$r"
            echo "   round $r  $c: $tps TPS" >&2
        done
    done

    log "1b. single-row UPDATE loop: $LOOP autocommit UPDATEs in one session, $ROUNDS rounds"
    for r in $(seq 1 "$ROUNDS"); do
        for c in $(rotate "$r"); do
            db=cap_$c
            cap_before "$c"
            timeout 1800 pgbench -n -h "$SOCK" -p "$MPORT" -U postgres -c 1 -j 1 -t "$LOOP" -f "$OUT/update1.sql" "$db" \
                >"$OUT/loop-$c-$r.log" 2>&1 || { cat "$OUT/loop-$c-$r.log" >&2; die "pgbench loop failed"; }
            tps=$(pgbench_tps "$OUT/loop-$c-$r.log")
            secs=$(calc "$LOOP / $tps")
            rec capture loop_secs "$c" "$r" "$secs"
            cap_after "$c" "$r"
            echo "   round $r  $c: $LOOP updates in $secs s" >&2
        done
    done

    log "1c. bulk UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $BULK_LIMIT, $ROUNDS rounds"
    for r in $(seq 1 "$ROUNDS"); do
        for c in $(rotate "$r"); do
            db=cap_$c
            cap_before "$c"
            t0=$(now)
            m "$db" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $BULK_LIMIT"
            secs=$(since "$t0")
            rec capture bulk_secs "$c" "$r" "$secs"
            if [ "$c" = rserv ]; then rec_log_size bulk "$db" "$r"; fi
            cap_after "$c" "$r"
            echo "   round $r  $c: $secs s" >&2
        done
    done
    for c in $CONFIGS; do m postgres -c "DROP DATABASE cap_$c"; done
fi

# ================================================================ 2. replicating
# none: no replication. rserv: `replicate run` (the daemon) applying into the slave cluster.
# logical: a subscription on the slave cluster applying. Each round starts with the slave
# current and ends when it has everything (then compared with the master); the daemon and the
# subscription run only during their own rounds.
# The bulk workload (issue 18): 20 UPDATEs of 10k rows and 50 INSERTs of 1k fresh rows into
# pgbench_accounts, autocommit statements of one psql script, updates and inserts interleaved.
bulk_workload_sql() {   # db: the script on stdout (its inserts start above NEXT_AID[db])
    awk -v base="${NEXT_AID[$1]}" -v sc="$SCALE" 'BEGIN {
        n = 0
        for (k = 0; k < 10; k++) {
            for (j = 0; j < 2; j++) {
                lo = (2 * k + j) * 10000 + 1
                printf "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN %d AND %d;\n", lo, lo + 9999
            }
            for (j = 0; j < 5; j++) {
                printf "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT g, 1 + g %% %d, 0, %s FROM generate_series(%d, %d) g;\n", sc, "'\''bulk'\''", base + n + 1, base + n + 1000
                n += 1000
            }
        } }'
}
BULK_WORKLOAD_ROWS=250000   # 200k updated + 50k inserted
rep_before() {   # cfg tag
    local db=rep_$1
    case "$1" in
        rserv) daemon_start "$db" "$2"; slave_sync "$db" 600 >/dev/null ;;
        logical) lr_enable "$db"; slave_sync "$db" >/dev/null ;;
    esac
    m "$db" -c "VACUUM pgbench_accounts"
    if [ "$1" != none ]; then s "$db" -c "VACUUM pgbench_accounts"; fi
    m postgres -c CHECKPOINT; s postgres -c CHECKPOINT
}
rep_after() {   # cfg figure round: stop replicating once the slave has everything, compare
    local db=rep_$1 drain
    [ "$1" = none ] && return 0
    drain=$(slave_sync "$db")   # seconds the slave still needed after the workload
    rec replicating "${2}_drain_secs" "$1" "$3" "$drain"
    case "$1" in
        rserv) daemon_stop replicating "rss_kb_$2" rserv "$3" ;;
        logical) lr_disable "$db" ;;
    esac
    verify_equal "$db" "replicating, $1 $2 round $3"
}

if ! skipped replicating; then
    log "2. replicating: pgbench TPC-B -c 4 -j 2 -T $SECS and the bulk workload, $ROUNDS interleaved rounds of none / rserv (replicate run) / logical (subscription)"
    for c in $CONFIGS; do clone m "rep_$c"; NEXT_AID[rep_$c]=$NACC; done
    clone s rep_rserv; clone s rep_logical
    rserv_master rep_rserv bench_marker
    rserv_slave rep_rserv bench_marker
    setup_cycle rep_rserv
    lr_setup rep_logical
    lr_disable rep_logical
    for r in $(seq 1 "$ROUNDS"); do
        for c in $(rotate "$r"); do
            db=rep_$c
            rep_before "$c" "rep-tpcb-$r"
            tps=$(tpcb_round "$db" "$OUT/rep-pgbench-$c-$r.log")
            rec replicating tpcb_tps "$c" "$r" "$tps"
            echo "   round $r  $c: $tps TPS" >&2
            rep_after "$c" tpcb "$r"
        done
    done

    log "2b. bulk workload (20 x 10k-row UPDATE + 50 x 1k-row INSERT, autocommit), $ROUNDS rounds"
    for r in $(seq 1 "$ROUNDS"); do
        for c in $(rotate "$r"); do
            db=rep_$c
            bulk_workload_sql "$db" >"$OUT/bulk-workload.sql"
            NEXT_AID[$db]=$(( ${NEXT_AID[$db]} + 50000 ))
            rep_before "$c" "rep-bulk-$r"
            t0=$(now)
            m "$db" -f "$OUT/bulk-workload.sql" >/dev/null
            secs=$(since "$t0")
            rec replicating bulk_secs "$c" "$r" "$secs"
            all=""
            if [ "$c" != none ]; then
                # until the slave has it all, from the start of the script
                slave_sync "$db" >/dev/null
                all=$(since "$t0")
                rec replicating bulk_slave_secs "$c" "$r" "$all"
            fi
            echo "   round $r  $c: script $secs s${all:+, slave complete after $all s}" >&2
            rep_after "$c" bulk "$r"
        done
    done
    lr_drop rep_logical
    for c in $CONFIGS; do m postgres -c "DROP DATABASE rep_$c"; done
    s postgres -c "DROP DATABASE rep_rserv"; s postgres -c "DROP DATABASE rep_logical"
fi

# ================================================================ 3. catch-up
# Backlog of $BACKLOG changed rows of pgbench_accounts: half updates of existing rows (aid from
# 1), half fresh inserts (aid above everything so far), (large) as 4 transactions or (small) as
# 1000-row transactions (500 updates + 500 inserts each). (big) is (large) on a table 10x as
# large (pgbench scale $BIG_SCALE): the same backlog, the catch-up time should not follow the table.
UPD=$(( BACKLOG / 2 )); [ "$UPD" -gt "$NACC" ] && UPD=$NACC
INS=$(( BACKLOG - UPD ))
backlog_sql() {   # kind db: SQL for psql -f on stdout
    local kind=$1 db=$2 base=${NEXT_AID[$2]}
    if [ "$kind" = large ]; then
        awk -v u="$UPD" -v i="$INS" -v base="$base" -v sc="$SCALE" 'BEGIN {
            h = int(u / 2); printf "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN 1 AND %d;\n", h
            printf "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN %d AND %d;\n", h + 1, u
            h = int(i / 2)
            printf "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT g, 1 + g %% %d, 0, %s FROM generate_series(%d, %d) g;\n", sc, "'\''backlog'\''", base + 1, base + h
            printf "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT g, 1 + g %% %d, 0, %s FROM generate_series(%d, %d) g;\n", sc, "'\''backlog'\''", base + h + 1, base + i }'
    else
        awk -v u="$UPD" -v i="$INS" -v base="$base" -v sc="$SCALE" 'BEGIN {
            nu = 0; ni = 0
            while (nu < u || ni < i) {
                a = (u - nu < 500) ? u - nu : 500; b = (i - ni < 500) ? i - ni : 500
                printf "BEGIN;\n"
                if (a > 0) printf "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN %d AND %d;\n", nu + 1, nu + a
                if (b > 0) printf "INSERT INTO pgbench_accounts (aid, bid, abalance, filler) SELECT g, 1 + g %% %d, 0, %s FROM generate_series(%d, %d) g;\n", sc, "'\''backlog'\''", base + ni + 1, base + ni + b
                printf "COMMIT;\n"
                nu += a; ni += b
            } }'
    fi
}
prep_backlog() {   # db: the same starting state on both sides for each turn
    m "$1" -c "VACUUM ANALYZE pgbench_accounts" -c CHECKPOINT
    s "$1" -c "VACUUM ANALYZE pgbench_accounts" -c CHECKPOINT
}
build_backlog() {   # kind db: prints the seconds it took on the master
    local t0 f=$OUT/backlog-$1.sql
    backlog_sql "$1" "$2" >"$f"
    t0=$(now)
    m "$2" -f "$f"
    since "$t0"
}
explain_prepare() {   # db: EXPLAIN ANALYZE of rserv_prepare's queries on the current backlog
    {
        echo "-- rserv_prepare on a backlog of $BACKLOG changed rows ($1), $(date -u '+%F %T UTC')"
        m "$1" -f - <<'EOF'
SET client_min_messages = warning;
-- the one slave registered on this master (replicate registers it by its node id)
SELECT server AS srv, coalesce(node::text, '') AS node FROM _rserv_servers_ ORDER BY server LIMIT 1 \gset
\timing on
BEGIN ISOLATION LEVEL REPEATABLE READ;
-- what the prepare's collect step reads into its pending table, with the last confirmed snapshot
EXPLAIN (ANALYZE, BUFFERS)
SELECT l.reloid, l.key FROM _rserv_log_ AS l,
  LATERAL (SELECT maxid, active FROM _rserv_sync_ WHERE server = :srv AND status > 0 ORDER BY syncid DESC LIMIT 1) c
WHERE l.reloid IN (SELECT reloid FROM _rserv_tables_) AND (l.logid >= c.maxid OR l.logid = ANY (c.active));
CREATE TEMP TABLE bench_sections AS SELECT * FROM rserv_prepare(:srv, nullif(:'node', ''));
SELECT section, table_name, query FROM bench_sections;
SELECT format('EXPLAIN (ANALYZE, BUFFERS) %s', query) FROM bench_sections WHERE query IS NOT NULL \gexec
ROLLBACK;
EOF
    } >>"$OUT/prepare-plans.txt" 2>&1
}

if ! skipped catchup; then
    CU_KINDS="large small"
    BIG_FILTER="aid <= $UPD OR aid > $BIG_NACC"   # the rows a backlog touches on the big table
    if ! skipped big; then CU_KINDS="large small big"; fi
    log "3. catch-up: backlog of $BACKLOG rows ($UPD updates + $INS inserts), turns: $CU_KINDS (big: large on a $BIG_NACC-row table), $CU_ROUNDS rounds"
    for db in cu_rserv cu_logical; do clone m "$db"; clone s "$db"; NEXT_AID[$db]=$NACC; done
    if ! skipped big; then
        log "3. the 10x table: pgbench -i -s $BIG_SCALE on both clusters (untimed)"
        make_db m cub_rserv "$BIG_SCALE" & p1=$!; BG_PIDS+=("$p1")
        make_db s cub_rserv "$BIG_SCALE" & p2=$!; BG_PIDS+=("$p2")
        wait "$p1" || die "creating the big table on the master failed"
        wait "$p2" || die "creating the big table on the slave failed"
        bg_forget "$p1"; bg_forget "$p2"
        clone m cub_logical cub_rserv; clone s cub_logical cub_rserv
        NEXT_AID[cub_rserv]=$BIG_NACC; NEXT_AID[cub_logical]=$BIG_NACC
        m postgres -c CHECKPOINT; s postgres -c CHECKPOINT
    fi
    cu_db() {   # sys kind
        if [ "$2" = big ]; then echo "cub_$1"; else echo "cu_$1"; fi
    }
    for kind in $CU_KINDS; do
        [ "$kind" = small ] && continue
        db=$(cu_db rserv "$kind")
        rserv_master "$db"
        rserv_slave "$db"
        # the slave is current: one confirmed change set, an empty log
        m "$db" -c "UPDATE pgbench_branches SET filler = 'start' WHERE bid = 1"
        t0=$(now)
        first=$(replicate_cycle "$db" 2>&1) || { echo "$first" >&2; die "the first replicate cycle failed"; }
        secs=$(since "$t0")
        echo "$first" >"$OUT/replicate-first-$db.log"
        if [ "$kind" = large ]; then
            # a build that copies registered tables on the first cycle (issue 4 in progress) shows here
            sent=$(printf '%s\n' "$first" | sed -n 's/.*applied: \([0-9]*\) rows sent.*/\1/p' | head -n1)
            rec copy first_cycle_secs rserv 1 "$secs"
            rec copy first_cycle_rows rserv 1 "${sent:-0}"
        fi
        db=$(cu_db logical "$kind")
        lr_setup "$db"
        lr_disable "$db"
    done
    for r in $(seq 1 "$CU_ROUNDS"); do
        for kind in $CU_KINDS; do
            shape=$kind; [ "$kind" = big ] && shape=large
            filter=""; [ "$kind" = big ] && filter=$BIG_FILTER
            order="rserv logical"; [ $(( r % 2 )) = 0 ] && order="logical rserv"
            for sys in $order; do
                db=$(cu_db "$sys" "$kind")
                prep_backlog "$db"
                rss=""
                if [ "$sys" = rserv ]; then
                    build=$(build_backlog "$shape" "$db")
                    NEXT_AID[$db]=$(( ${NEXT_AID[$db]} + INS ))
                    m "$db" -c CHECKPOINT; s "$db" -c CHECKPOINT
                    read -r rows bytes < <(mval "$db" "SELECT count(*), pg_total_relation_size('_rserv_log_') FROM _rserv_log_" | tr '|' ' ')
                    rec catchup "log_rows_$kind" rserv "$r" "$rows"
                    rec catchup "log_bytes_$kind" rserv "$r" "$bytes"
                    if [ "$r" = 1 ] && [ "$kind" != small ]; then
                        # diagnostics only: a failure is in the file, the measurement goes on
                        explain_prepare "$db" || echo "   (EXPLAIN of the prepare failed: $OUT/prepare-plans.txt)" >&2
                    fi
                    t0=$(now)
                    /usr/bin/time -v -o "$OUT/time-$kind-$r.txt" timeout 3600 \
                        "$REPLICATE" --masterhost="$SOCK" --masterport="$MPORT" --slavehost="$SOCK" \
                        --slaveport="$SPORT" --user=postgres --verbose "$db" "$db" >"$OUT/replicate-$kind-$r.log" 2>&1 ||
                        { cat "$OUT/replicate-$kind-$r.log" >&2; die "replicate failed"; }
                    secs=$(since "$t0")
                    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$OUT/time-$kind-$r.txt")
                    rec catchup "rss_kb_$kind" rserv "$r" "$rss"
                    rec catchup "log_bytes_after_clean_$kind" rserv "$r" "$(mval "$db" "SELECT pg_total_relation_size('_rserv_log_')")"
                    rec catchup "log_rows_after_clean_$kind" rserv "$r" "$(mval "$db" "SELECT count(*) FROM _rserv_log_")"
                    m "$db" -c "VACUUM _rserv_log_"
                    rec catchup "log_bytes_after_vacuum_$kind" rserv "$r" "$(mval "$db" "SELECT pg_total_relation_size('_rserv_log_')")"
                    # one cycle must have drained it: a second one finds nothing
                    again=$(replicate_cycle "$db" --verbose 2>&1) || { echo "$again" >&2; die "second replicate cycle failed"; }
                    case "$again" in *sync-ed*) ;; *) echo "$again" >&2; die "a second replicate cycle still found changes after the catch-up" ;; esac
                else
                    # the walsender first skips the WAL written since its last run (other
                    # databases): do that now, untimed, then stop it while the backlog builds
                    lr_enable "$db"; slave_sync "$db" >/dev/null; lr_disable "$db"
                    build=$(build_backlog "$shape" "$db")
                    NEXT_AID[$db]=$(( ${NEXT_AID[$db]} + INS ))
                    v=$(date +%s%N)
                    m "$db" -c "UPDATE bench_marker SET v = $v WHERE id = 1"
                    m "$db" -c CHECKPOINT; s "$db" -c CHECKPOINT
                    t0=$(now)
                    lr_enable "$db"
                    wait_for s "$db" "(SELECT v FROM bench_marker WHERE id = 1) = $v" 3600
                    secs=$(since "$t0")
                    lr_disable "$db"
                fi
                rate=$(calc "$BACKLOG / $secs")
                rec catchup "secs_$kind" "$sys" "$r" "$secs"
                rec catchup "rows_per_s_$kind" "$sys" "$r" "$rate"
                rec catchup "build_secs_$kind" "$sys" "$r" "$build"
                echo "   round $r  $kind  $sys: backlog built in $build s, caught up in $secs s ($rate rows/s)${rss:+, replicate RSS $rss kB}" >&2
                verify_equal "$db" "catch-up, $sys $kind round $r" "$filter"
            done
        done
    done
    for kind in $CU_KINDS; do
        [ "$kind" = small ] && continue
        lr_drop "$(cu_db logical "$kind")"
        for sys in rserv logical; do
            db=$(cu_db "$sys" "$kind"); m postgres -c "DROP DATABASE $db"; s postgres -c "DROP DATABASE $db"
        done
    done
fi

# ================================================================ 4. continuous lag
# Heartbeat: bench_hb's one row gets clock_timestamp() every 100 ms on the master; the slave
# samples clock_timestamp() - ts every 10 ms (both in one server session each).
heartbeat() {   # db secs out: one UPDATE of the heartbeat row every 100 ms; out gets each ts
    m "$1" -c "DO \$h\$ DECLARE t0 timestamptz := clock_timestamp(); v timestamptz; BEGIN
        FOR i IN 1..$(( $2 * 10 )) LOOP
            UPDATE bench_hb SET ts = clock_timestamp() WHERE id = 1 RETURNING ts INTO v;
            COMMIT;
            RAISE NOTICE 'HB %', extract(epoch FROM v);
            PERFORM pg_sleep(greatest(0, extract(epoch FROM t0 + i * interval '100 ms' - clock_timestamp())));
        END LOOP; END \$h\$" 2>&1 | sed -n 's/.*HB \(.*\)/\1/p' >"$3"
}
sampler() {   # db secs out: every 10 ms, the sample time and the heartbeat ts the slave shows
    s "$1" -c "DO \$h\$ DECLARE t0 timestamptz := clock_timestamp(); r record; BEGIN
        FOR i IN 1..$(( $2 * 100 )) LOOP
            SELECT extract(epoch FROM clock_timestamp()) AS t, extract(epoch FROM ts) AS ts
              INTO r FROM bench_hb WHERE id = 1;
            RAISE NOTICE 'LAG %,%', r.t, r.ts;
            PERFORM pg_sleep(greatest(0, extract(epoch FROM t0 + i * interval '10 ms' - clock_timestamp())));
        END LOOP; END \$h\$" 2>&1 | sed -n 's/.*LAG \(.*\)/\1/p' >"$3"
}
lag_run() {   # sys rate
    local sys=$1 rate=$2 db=lag_$1 out=$OUT/lag-$1-$2.csv tag=$1-$2 load_secs end cycles=0 t0 hb_pid smp_pid pgb_pid
    [ "$sys" = daemon ] && db=lag_rserv
    load_secs=$(( LAG_SECS + 4 ))
    m "$db" -c "VACUUM ANALYZE" -c CHECKPOINT
    case "$sys" in
        rserv) setup_cycle "$db" ;;
        daemon) setup_cycle "$db"; daemon_start "$db" "$tag" ;;
        logical) lr_enable "$db"; slave_sync "$db" >/dev/null ;;
    esac
    heartbeat "$db" "$load_secs" "$OUT/hb-$tag.csv" & hb_pid=$!; BG_PIDS+=("$hb_pid")
    timeout $(( load_secs + 120 )) pgbench -n -h "$SOCK" -p "$MPORT" -U postgres -c 4 -j 2 -R "$rate" -T "$load_secs" "$db" \
        >"$OUT/lagload-$tag.log" 2>&1 & pgb_pid=$!; BG_PIDS+=("$pgb_pid")
    ( sleep 2; sampler "$db" "$LAG_SECS" "$out" ) & smp_pid=$!; BG_PIDS+=("$smp_pid")
    if [ "$sys" = rserv ]; then
        # "cycle loop, no daemon yet": replicate cycles back to back for the whole run
        end=$(( $(date +%s) + load_secs ))
        t0=$(now)
        while [ "$(date +%s)" -lt "$end" ] && [ "$cycles" -lt 100000 ]; do
            replicate_cycle "$db" >>"$OUT/lagcycles-$tag.log" 2>&1 || die "replicate failed during the lag run ($OUT/lagcycles-$tag.log)"
            cycles=$(( cycles + 1 ))
        done
        rec lag cycles "$sys" "$rate" "$cycles"
        rec lag cycle_secs "$sys" "$rate" "$(calc "$(since "$t0") / $cycles")"
    fi
    wait "$pgb_pid" || { cat "$OUT/lagload-$tag.log" >&2; die "pgbench -R failed"; }
    wait "$hb_pid" || die "heartbeat writer failed"
    wait "$smp_pid" || die "lag sampler failed"
    bg_forget "$pgb_pid"; bg_forget "$hb_pid"; bg_forget "$smp_pid"
    if [ "$sys" = daemon ]; then daemon_stop lag rss_kb daemon "$rate"; fi
    if [ "$sys" = logical ]; then slave_sync "$db" >/dev/null; lr_disable "$db"; fi
    rec lag achieved_tps "$sys" "$rate" "$(pgbench_tps "$OUT/lagload-$tag.log")"
    [ -s "$out" ] || die "no lag samples in $out"
    local extra=""
    [ "$sys" = rserv ] && extra=", $cycles replicate cycles"
    echo "   $sys at $rate TPS: $(wc -l <"$out") lag samples$extra" >&2
}
if ! skipped lag; then
    # about half the master's maximum: from the capture phase's no-replication TPS median
    touch "$OUT/results.tsv"
    MAXTPS=$(awk -F'\t' '$1 == "capture" && $2 == "tpcb_tps" && $3 == "none" { print $5 }' "$OUT/results.tsv" |
        sort -g | awk '{ a[NR] = $1 } END { if (NR) print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
    if [ -z "$MAXTPS" ]; then
        log "4. measuring the master's maximum TPS for the lag runs (capture phase skipped)"
        clone m maxtps
        MAXTPS=$(tpcb_round maxtps "$OUT/maxtps.log")
        m postgres -c "DROP DATABASE maxtps"
    fi
    HALF=$(awk -v t="$MAXTPS" 'BEGIN { printf "%d", t / 2 }')
    info max_tps "$MAXTPS"
    log "4. continuous lag: pgbench -R 300 and -R $HALF (half of $MAXTPS), $LAG_SECS s each, heartbeat every 100 ms"
    for db in lag_rserv lag_logical; do clone m "$db"; clone s "$db"; done
    rserv_master lag_rserv bench_hb
    rserv_slave lag_rserv bench_hb
    setup_cycle lag_rserv
    lr_setup lag_logical bench_hb
    lr_disable lag_logical
    LAG_SYSTEMS="rserv logical"
    # `replicate run` (the daemon) where this build has it
    if "$REPLICATE" run --help >/dev/null 2>&1; then LAG_SYSTEMS="daemon rserv logical"; fi
    info lag_systems "$LAG_SYSTEMS"
    for rate in 300 "$HALF"; do
        for sys in $LAG_SYSTEMS; do lag_run "$sys" "$rate"; done
    done
    lr_drop lag_logical
    for db in lag_rserv lag_logical; do m postgres -c "DROP DATABASE $db"; s postgres -c "DROP DATABASE $db"; done
fi

# ================================================================ 5. initial copy
ACCOUNTS_HASH="SELECT count(*) || ':' || md5(string_agg(md5(t::text), '' ORDER BY aid)) FROM pgbench_accounts t"
if ! skipped copy; then
    HAVE_COPY=0
    "$REPLICATE" --help 2>&1 | grep -q -- '--create-tables' && HAVE_COPY=1
    if [ "$HAVE_COPY" = 1 ]; then
        log "5. initial copy of pgbench_accounts ($NACC rows): replicate --create-tables into an empty database vs pg_dump -t pgbench_accounts | psql, $CU_ROUNDS rounds"
        clone m copy_rs
        m copy_rs -c "CREATE EXTENSION rserv VERSION '$BENCH_VERSION'" -c "SELECT rserv_add_table('pgbench_accounts')" >/dev/null
        want=$(mval copy_rs "$ACCOUNTS_HASH")
    else
        log "5. initial copy: rserv not implemented (issue 4); reference pg_dump -t pgbench_accounts | psql"
    fi
    for r in $(seq 1 "$CU_ROUNDS"); do
        order="pg_dump rserv"; [ $(( r % 2 )) = 0 ] && order="rserv pg_dump"
        for meth in $order; do
            [ "$meth" = rserv ] && [ "$HAVE_COPY" = 0 ] && continue
            s postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS copy_target" -c "CREATE DATABASE copy_target"
            if [ "$meth" = rserv ]; then
                s copy_target -c "CREATE EXTENSION rserv VERSION '$BENCH_VERSION'"
            fi
            m postgres -c CHECKPOINT; s postgres -c CHECKPOINT
            t0=$(now)
            if [ "$meth" = pg_dump ]; then
                timeout 3600 pg_dump -h "$SOCK" -p "$MPORT" -U postgres -t pgbench_accounts tpl | s copy_target >/dev/null
            else
                # a new slave each round: its own server id
                /usr/bin/time -v -o "$OUT/time-copy-$r.txt" timeout 3600 "$REPLICATE" --masterhost="$SOCK" \
                    --masterport="$MPORT" --slavehost="$SOCK" --slaveport="$SPORT" --user=postgres --server="$r" \
                    --create-tables copy_rs copy_target >"$OUT/replicate-copy-$r.log" 2>&1 ||
                    { cat "$OUT/replicate-copy-$r.log" >&2; die "replicate --create-tables failed"; }
            fi
            secs=$(since "$t0")
            got=$(sval copy_target "$ACCOUNTS_HASH")
            [ "${got%%:*}" = "$NACC" ] || die "$meth copied ${got%%:*} rows, expected $NACC"
            if [ "$meth" = rserv ]; then
                [ "$got" = "$want" ] || die "the slave's pgbench_accounts differs from the master's after the initial copy"
                rec copy copy_rss_kb rserv "$r" "$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$OUT/time-copy-$r.txt")"
            fi
            rec copy dump_secs "$meth" "$r" "$secs"
            rec copy dump_rows_per_s "$meth" "$r" "$(calc "$NACC / $secs")"
            echo "   round $r  $meth: $NACC rows in $secs s" >&2
        done
    done
    rec copy bytes pg_dump 1 "$(sval copy_target "SELECT pg_total_relation_size('pgbench_accounts')")"
    s postgres -c "DROP DATABASE copy_target"
    if [ "$HAVE_COPY" = 1 ]; then m postgres -c "DROP DATABASE copy_rs"; fi
fi

# ================================================================ 6. peers
if [ "$PEERS" = 1 ]; then
    log "6. peers: which Debian packages are installable"
    apt-get update -qq >/dev/null 2>&1 || true
    for pkg in postgresql-15-slony1-2 slony1-2-bin postgresql-15-pgq3 pgqd londiste bucardo; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ { print $2 }')
        info "peer_$pkg" "${cand:-not in the archive}"
        echo "   $pkg: candidate ${cand:-none}" >&2
    done
    info peers "Londiste, Bucardo and Slony-I runs are not implemented in this suite yet: skipped (packages listed above)"
    echo "   peer runs are not implemented yet: skipped (see RESULTS.md)" >&2
else
    info peers "skipped (run with --peers)"
fi

# ---------------------------------------------------------------- report
info loadavg_end "$(cut -d' ' -f1-3 /proc/loadavg)"
info other_postgres_end "$(pgrep -c -u postgres -x postgres 2>/dev/null || echo 0) postgres processes on the machine (ours included)"
info duration_s "$(( $(date +%s) - START_EPOCH ))"
python3 "$BENCH/report.py" "$OUT" "$BENCH"
log "done in $(( $(date +%s) - START_EPOCH )) s: bench/RESULTS.md, bench/lag.png, raw data in bench/out/"
