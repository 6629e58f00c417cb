#!/usr/bin/env bash
# Initial copy of a real schema: pagila (tests/data/pagila) loaded SCALE times, each copy in a
# schema of its own (pagila_1 … pagila_N: 15 tables, 7 monthly partitions, 13 sequences, an
# enum and domains, 31 indexes, 35 foreign keys, 15 triggers each), copied into an empty
# database of a second cluster by
#   rserv: `replicate --create-tables` (the slave has rserv, the schemas and the trigger
#          function last_updated() of each copy: what rserv does not copy; not timed)
#   pg_dump: `pg_dump -n 'pagila_*' | psql` (everything: types, functions, views, tables, data,
#          indexes, constraints, triggers), from a clone of the master database made before
#          rserv was installed there (same data, without rserv's capture triggers)
# rounds interleaved, the order alternating. Prints each round, the medians and the ratio
# (pg_dump seconds ÷ rserv seconds: > 1 means rserv is faster).
#
#   bash bench/copy_pagila.sh [--scale N] [--rounds N] [--pg-bindir DIR]
#
# Root on Debian 12. Builds rserv (cargo pgrx package, release, into a private directory) and
# replicate (--release) unless BENCH_NO_BUILD=1, and pins both like bench/run.sh does: the
# extension is created as version 1.1.NNNNNN (see below) from a private copy of its install script
# pointing at a private copy of rserv.so (the script file is removed on exit), so another
# engineer's install meanwhile cannot change what is measured. Nothing else is installed.
# Two throwaway clusters (fsync on, default settings), unix sockets only, in a mktemp
# directory removed on exit. Defaults: --scale 10, --rounds 3,
# --pg-bindir /usr/lib/postgresql/15/bin (rserv.control must be installed there).
set -euo pipefail
shopt -s inherit_errexit
unset RUST_BACKTRACE RUST_LIB_BACKTRACE PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS || true
export LC_ALL=C.UTF-8

SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
REPO=$(pwd)
DATA=$REPO/tests/data/pagila
SCALE=10; ROUNDS=3; PG_BIN=/usr/lib/postgresql/15/bin
while [ $# -gt 0 ]; do
    case "$1" in
        --scale) SCALE=${2:?}; shift ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --pg-bindir) PG_BIN=${2:?}; shift ;;
        -h|--help) sed -n '2,24p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "copy_pagila.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
for n in "$SCALE" "$ROUNDS"; do
    case "$n" in ''|*[!0-9]*|0) echo "copy_pagila.sh: --scale and --rounds take positive integers" >&2; exit 2 ;; esac
done
PG_CONFIG=$PG_BIN/pg_config

log() { printf '== copy %s: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'copy_pagila: ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (servers run as the postgres OS user)"
[ -x "$PG_CONFIG" ] || die "$PG_CONFIG not found"
SHAREDIR=$("$PG_CONFIG" --sharedir)
[ -f "$SHAREDIR/extension/rserv.control" ] || die "rserv is not installed in $SHAREDIR"

WORK=$(mktemp -d /tmp/rserv-copy.XXXXXX)
chown postgres:postgres "$WORK"
chmod 711 "$WORK"
# The build measured is installed under a version name of its own, as bench/run.sh does: the
# tree's MAJOR.MINOR with a patch number of this run's (replicate drives an extension by the
# major.minor of its version), reserved by creating its install script exclusively.
EXT_VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$REPO/Cargo.toml")
case "$EXT_VERSION" in *.*.*) ;; *) die "no [workspace.package] version in Cargo.toml" ;; esac
BENCH_VERSION=""
EXT_SQL=""
for _ in $(seq 1 50); do
    v="${EXT_VERSION%.*}.$(( 100000 + RANDOM * 32768 + RANDOM ))"
    if ( set -C; : >"$SHAREDIR/extension/rserv--$v.sql" ) 2>/dev/null; then
        BENCH_VERSION=$v; EXT_SQL=$SHAREDIR/extension/rserv--$v.sql; break
    fi
done
[ -n "$BENCH_VERSION" ] || { rm -rf "$WORK"; die "could not reserve an install script name in $SHAREDIR/extension"; }
STARTED=()
cleanup() {
    local rc=$? d
    set +e
    trap - EXIT INT TERM
    for d in "${STARTED[@]}"; do
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$d" -m immediate -w -t 60 stop >/dev/null 2>&1
    done
    if [ -n "$EXT_SQL" ]; then rm -f "$EXT_SQL"; fi
    if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
        tail -n 20 "$WORK"/*/server.log >&2 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build, pinned
export PATH="$HOME/.cargo/bin:$PATH"
PKG=$WORK/pkg
if [ "${BENCH_NO_BUILD:-0}" != 1 ]; then
    log "build: cargo pgrx package -p rserv (release), cargo build -p replicate --release"
    { cargo pgrx package -p rserv --pg-config "$PG_CONFIG" --out-dir "$PKG" &&
      cargo build -p replicate --release; } >"$WORK/build.log" 2>&1 ||
        { tail -n 30 "$WORK/build.log" >&2; die "build failed"; }
    SO=$(find "$PKG" -name rserv.so | head -n 1)
    SQL=$(find "$PKG" -name 'rserv--*.sql' ! -name 'rserv--*--*' | head -n 1)
else
    SO=$("$PG_CONFIG" --pkglibdir)/rserv.so
    SQL=$SHAREDIR/extension/rserv--$EXT_VERSION.sql
fi
[ -f "$SO" ] && [ -f "$SQL" ] || die "no rserv.so / install script found"
REPLICATE_SRC=${REPLICATE:-$REPO/target/release/replicate}
[ -x "$REPLICATE_SRC" ] || die "$REPLICATE_SRC is missing"
mkdir -p "$WORK/bin" "$WORK/lib"
cp "$REPLICATE_SRC" "$WORK/bin/replicate"
cp "$SO" "$WORK/lib/rserv.so"
chmod 755 "$WORK/bin" "$WORK/lib" "$WORK/lib/rserv.so"
REPLICATE=$WORK/bin/replicate
grep -q MODULE_PATHNAME "$SQL" || die "$SQL has no MODULE_PATHNAME"
sed "s|MODULE_PATHNAME|$WORK/lib/rserv.so|g" "$SQL" >"$EXT_SQL"

# ---------------------------------------------------------------- clusters
pick_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 42000 + RANDOM % 8000 ))
        [ -e "/tmp/.s.PGSQL.$p" ] && continue
        ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && continue
        [ "$p" = "${MPORT:-}" ] && continue
        echo "$p"; return 0
    done
    die "no free port"
}
start_cluster() {   # name port
    local dir=$WORK/$1
    runuser -u postgres -- mkdir -p "$dir"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 --no-instructions >"$WORK/$1.initdb.log" 2>&1 || die "initdb $1 failed"
    runuser -u postgres -- tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
listen_addresses = ''
unix_socket_directories = '$WORK'
port = $2
fsync = on
log_min_messages = warning
EOF
    STARTED+=("$dir/data")
    runuser -u postgres -- env -u RUST_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
        -w -t 60 start >/dev/null || die "cluster $1 did not start"
}
MPORT=$(pick_port); start_cluster master "$MPORT"
SPORT=$(pick_port); start_cluster slave "$SPORT"
m() { local db=$1; shift; "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$MPORT" -U postgres -d "$db" "$@"; }
s() { local db=$1; shift; "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$SPORT" -U postgres -d "$db" "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# ---------------------------------------------------------------- the source database
log "master: pagila x $SCALE (schemas pagila_1 .. pagila_$SCALE)"
m postgres -c "CREATE DATABASE src"
for k in $(seq 1 "$SCALE"); do
    m src -c "CREATE SCHEMA pagila_$k"
    sed "s/public\./pagila_$k./g" "$DATA/pagila-schema.sql" | m src >/dev/null
    sed "s/public\./pagila_$k./g" "$DATA/pagila-data.sql" | m src >/dev/null
done
# pg_dump's source: the same database without rserv (on src, pg_dump would also dump rserv's
# capture triggers, whose function the target lacks)
m postgres -c "CREATE DATABASE plain TEMPLATE src"
m src -c "CREATE EXTENSION rserv VERSION '$BENCH_VERSION'"
m src -c "SELECT count(rserv_add_table(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname LIKE 'pagila\_%' AND c.relkind IN ('r', 'p') AND NOT c.relispartition" >/dev/null
m src -c "VACUUM ANALYZE" -c CHECKPOINT
TABLES=$(m src -Atc "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname LIKE 'pagila\_%' AND c.relkind = 'r'")
BYTES=$(m src -Atc "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c
                    JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname LIKE 'pagila\_%' AND c.relkind = 'r'")

# count and md5 of every table's rows, in one line
HASH="SELECT string_agg(format('%s.%s %s', schemaname, relname, h), ' ' ORDER BY schemaname, relname) FROM (
        SELECT n.nspname AS schemaname, c.relname,
               (xpath('/table/row/h/text()', query_to_xml(format(
                   'SELECT count(*) || '':'' || md5(coalesce(string_agg(t::text, '','' ORDER BY t::text), '''')) AS h FROM ONLY %I.%I t',
                   n.nspname, c.relname), false, false, '')))[1]::text AS h
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname LIKE 'pagila\_%' AND c.relkind = 'r') x"
WANT=$(m src -Atc "SET TimeZone = 'UTC'" -c "$HASH")
ROWS=$(echo "$WANT" | tr ' ' '\n' | awk -F: '/:/ { n += $1 } END { print n }')
log "master: $ROWS rows in $TABLES tables and partitions, $BYTES with indexes"

# ---------------------------------------------------------------- rounds
declare -A SECS
for r in $(seq 1 "$ROUNDS"); do
    order="pg_dump rserv"; [ $(( r % 2 )) = 0 ] && order="rserv pg_dump"
    for meth in $order; do
        s postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS dst" -c "CREATE DATABASE dst"
        if [ "$meth" = rserv ]; then
            s dst -c "CREATE EXTENSION rserv VERSION '$BENCH_VERSION'"
            for k in $(seq 1 "$SCALE"); do
                s dst -c "CREATE SCHEMA pagila_$k"
                sed -n '/^CREATE FUNCTION public.last_updated()/,/^END \$\$;/p' "$DATA/pagila-schema.sql" |
                    sed "s/public\./pagila_$k./g" | s dst
            done
        fi
        m postgres -c CHECKPOINT; s postgres -c CHECKPOINT
        t0=$(now)
        if [ "$meth" = pg_dump ]; then
            "$PG_BIN/pg_dump" -h "$WORK" -p "$MPORT" -U postgres -n 'pagila_*' plain | s dst >/dev/null
        else
            # a new slave database each round: its own server id
            "$REPLICATE" --masterhost="$WORK" --masterport="$MPORT" --slavehost="$WORK" --slaveport="$SPORT" \
                --user=postgres --server="$r" --create-tables src dst >"$WORK/replicate-$r.log" 2>&1 ||
                { cat "$WORK/replicate-$r.log" >&2; die "replicate --create-tables failed"; }
        fi
        secs=$(since "$t0")
        got=$(s dst -Atc "SET TimeZone = 'UTC'" -c "$HASH")
        [ "$got" = "$WANT" ] || die "round $r: $meth's copy differs from the master"
        SECS[$meth]="${SECS[$meth]:-} $secs"
        printf 'round %d  %-8s %8.3f s  (every table checked equal to the master)\n' "$r" "$meth" "$secs"
    done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
range() { tr ' ' '\n' | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s–%s", lo, hi }'; }
MD=$(echo "${SECS[pg_dump]}" | median); MR=$(echo "${SECS[rserv]}" | median)
echo
echo "pagila x $SCALE: $ROWS rows, $TABLES tables and partitions, $BYTES; $ROUNDS rounds; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-44s %8s s  (%s)\n' "pg_dump -n 'pagila_*' | psql" "$MD" "$(echo "${SECS[pg_dump]}" | range)"
printf '%-44s %8s s  (%s)\n' "replicate --create-tables" "$MR" "$(echo "${SECS[rserv]}" | range)"
printf 'ratio (pg_dump seconds / rserv seconds): %s\n' "$(awk -v a="$MD" -v b="$MR" 'BEGIN { printf "%.2f", a / b }')"
