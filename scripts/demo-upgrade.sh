#!/usr/bin/env bash
# The README's walkthrough "Upgrading PostgreSQL 15 -> 18 with seconds of downtime", done on
# throwaway clusters while an application keeps writing: a database on PostgreSQL FROM, a new
# cluster on PostgreSQL TO, every table replicated (replicate run --create-tables) until it has
# caught up, replicate switchover, the application moved to the new cluster, the old one kept as
# its slave (a way back). Then it checks that every write the application saw committed is on
# the new cluster and says how long the application could not write.
#
# Run as root on Debian 12:  bash scripts/demo.sh --upgrade 15 18   (or scripts/demo-upgrade.sh 15 18)
# FROM and TO are any two of 14..18 (a downgrade works too). Installs what is missing: both
# majors with rserv (scripts/setup.sh --pg N, under $RSERV_PG_ROOT, default /opt/rserv-pg) and
# replicate into $RSERV_DEMO_PREFIX/bin (default /usr/local/bin). The clusters live in a
# temporary directory that is removed, with every cluster stopped, when the script exits.
set -euo pipefail
set -o errtrace
cd "$(dirname "$0")/.."

FROM=${1:-15}
TO=${2:-18}
START=$SECONDS
PREFIX=${RSERV_DEMO_PREFIX:-/usr/local}
BUILD_LOG=/tmp/rserv-demo-upgrade-build.log
export PATH="$PREFIX/bin:$HOME/.cargo/bin:$PATH"
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
    PGOPTIONS PGSSLMODE PGAPPNAME 2>/dev/null || true
# shellcheck source=scripts/demo-lib.sh
source scripts/demo-lib.sh

for n in "$FROM" "$TO"; do
    case "$n" in
        14 | 15 | 16 | 17 | 18) ;;
        *) die "usage: $0 FROM TO   (PostgreSQL majors, 14 to 18)" ;;
    esac
done
[ "$FROM" != "$TO" ] || die "FROM and TO are the same major ($FROM)"
[ "$(id -u)" -eq 0 ] || die "run me as root (setup.sh installs packages; clusters run as the postgres user)"

# ---------------------------------------------------------------------------------------------
step "Install: PostgreSQL $FROM and $TO, each with rserv, and replicate"
: >"$BUILD_LOG"
build "scripts/setup.sh --pg $FROM" bash scripts/setup.sh --pg "$FROM"
build "scripts/setup.sh --pg $TO" bash scripts/setup.sh --pg "$TO"
OLD_BIN=$(bash scripts/pg-bin.sh "$FROM")
NEW_BIN=$(bash scripts/pg-bin.sh "$TO")
build "cargo install --path replicate (-> $PREFIX/bin/replicate)" \
    cargo install --path replicate --locked --quiet --root "$PREFIX"
say "$(replicate --version | head -n1): PostgreSQL $FROM in $OLD_BIN, $TO in $NEW_BIN"
# the newer client programs talk to both servers
if [ "$TO" -gt "$FROM" ]; then CLIENT_BIN=$NEW_BIN; else CLIENT_BIN=$OLD_BIN; fi
PSQL=$CLIENT_BIN/psql

# ---------------------------------------------------------------------------------------------
step "The application's database: shop on PostgreSQL $FROM"
demo_dir
start_cluster old "$OLD_BIN"
OLD=$PORT_OLD
psql_as postgres "$OLD" postgres -c "CREATE ROLE app LOGIN" -c "CREATE DATABASE shop OWNER app"
psql_as app "$OLD" shop <<'SQL'
CREATE TABLE customer (id serial PRIMARY KEY, name text NOT NULL, city text);
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer_id int NOT NULL REFERENCES customer, placed timestamptz NOT NULL DEFAULT now(),
                     note text);
CREATE INDEX ON orders (customer_id);
INSERT INTO customer (name, city) SELECT 'customer ' || g, 'city ' || g % 17 FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, note) SELECT 1 + g % 1000, 'order ' || g FROM generate_series(1, 50000) g;
SQL
say "customer (1 000 rows) and orders (50 000 rows, an identity column, a foreign key)"
echo "$OLD" >"$DEMO_DIR/app.port"
# The application: an order every 50 ms, to whichever port app.port names; each committed order
# is written down with the time it was acknowledged, each failed attempt too.
app() {
    local n=0 port id
    while [ ! -e "$DEMO_DIR/app.stop" ]; do
        port=$(cat "$DEMO_DIR/app.port")
        n=$((n + 1))
        if id=$("$PSQL" -X -qAt -h "$DEMO_DIR" -p "$port" -U app -d shop -c \
            "INSERT INTO orders (customer_id, note) VALUES (1 + $n % 1000, 'live $n') RETURNING id" \
            2>>"$DEMO_DIR/app.errors"); then
            printf '%s %s %s\n' "$(date +%s.%N)" "$port" "$id" >>"$DEMO_DIR/app.ok"
        else
            printf '%s %s\n' "$(date +%s.%N)" "$port" >>"$DEMO_DIR/app.failed"
        fi
        sleep 0.05
    done
}
app &
APP_PID=$!
STOP_HOOKS+=("kill $APP_PID")
say "the application writes an order every 50 ms, to the port in app.port ($OLD)"

# Every replicate below is what the README shows; the options pick the demo's clusters. It
# connects as the database's owner, app (allowed to replicate: rserv_grant_replication): the
# tables --create-tables makes on the new cluster belong to the role that replicates, and the
# application needs them to be its own.
R=(replicate --host="$DEMO_DIR" --user=app)

# ---------------------------------------------------------------------------------------------
step "1. The new cluster on PostgreSQL $TO: roles, an empty database, rserv"
start_cluster new "$NEW_BIN"
NEW=$PORT_NEW
say "roles are per cluster: copy them (less the bootstrap superuser, which the new cluster has)"
"$CLIENT_BIN/pg_dumpall" -h "$DEMO_DIR" -p "$OLD" -U postgres --roles-only |
    sed '/^CREATE ROLE postgres;$/d' | psql_as postgres "$NEW" postgres
run "$CLIENT_BIN/createdb" -h "$DEMO_DIR" -p "$NEW" -U postgres -O app shop
run "${R[@]}" --slaveport="$NEW" slave-init shop
run "$PSQL" -X -q -o /dev/null -h "$DEMO_DIR" -p "$NEW" -U postgres -d shop -c "SELECT rserv_grant_replication('app')"

# ---------------------------------------------------------------------------------------------
step "2. Every table of shop replicated from the old cluster"
run "${R[@]}" --masterport="$OLD" master-init shop
run "$PSQL" -X -q -o /dev/null -h "$DEMO_DIR" -p "$OLD" -U postgres -d shop -c "SELECT rserv_grant_replication('app')"
ADD_ALL="SELECT rserv_add_table(c.oid::regclass) FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                    AND d.objid = c.oid AND d.deptype = 'e')"
printf '   shop=# %s\n' "$(tr -s ' \n' ' ' <<<"$ADD_ALL")"
psql_as postgres "$OLD" shop -c "$ADD_ALL" >/dev/null

# ---------------------------------------------------------------------------------------------
step "3. Catch up: replicate run --create-tables, while the application writes"
"${R[@]}" --masterport="$OLD" --slaveport="$NEW" run --create-tables shop shop \
    2>"$DEMO_DIR/daemon.log" &
DAEMON_PID=$!
STOP_HOOKS+=("kill $DAEMON_PID")
say "$ replicate --masterport=$OLD --slaveport=$NEW run --create-tables shop shop &"
CAUGHT_UP="SELECT confirmed_syncid IS NOT NULL AND copies_in_progress = 0 AND lag_seconds < 2
             FROM rserv_status"
for _ in $(seq 1 600); do
    [ "$(psql_as postgres "$OLD" shop -At -c "$CAUGHT_UP")" = t ] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$DEMO_DIR/daemon.log" >&2; die "replicate run stopped"; }
    sleep 0.5
done
[ "$(psql_as postgres "$OLD" shop -At -c "$CAUGHT_UP")" = t ] ||
    { tail -n 20 "$DEMO_DIR/daemon.log" >&2; die "the new cluster did not catch up in 5 minutes"; }
run "${R[@]}" --masterport="$OLD" status shop
run "${R[@]}" --masterport="$OLD" --slaveport="$NEW" check shop shop

# ---------------------------------------------------------------------------------------------
step "4. Switchover: the new cluster takes over, the old one becomes its slave"
say "stop the daemon first (it follows the old direction), then:"
kill "$DAEMON_PID"
wait "$DAEMON_PID" || true
run "${R[@]}" --masterport="$OLD" --slaveport="$NEW" switchover shop shop

# ---------------------------------------------------------------------------------------------
step "5. The application moves to the new cluster"
echo "$NEW" >"$DEMO_DIR/app.port"
say "app.port now names $NEW: its writes to the fenced old cluster failed (SQLSTATE 25006) until then"
say "and a way back: the old cluster follows the new one"
"${R[@]}" --masterport="$NEW" --slaveport="$OLD" run shop shop 2>"$DEMO_DIR/daemon-back.log" &
BACK_PID=$!
STOP_HOOKS+=("kill $BACK_PID")
say "$ replicate --masterport=$NEW --slaveport=$OLD run shop shop &"
sleep 3

# ---------------------------------------------------------------------------------------------
step "6. Checks"
touch "$DEMO_DIR/app.stop"
wait "$APP_PID" || true
on_new=$(wc -l <"$DEMO_DIR/app.ok")
[ "$on_new" -gt 0 ] || die "the application never wrote"
# every acknowledged order is on the new cluster
missing=$(awk '{print $3}' "$DEMO_DIR/app.ok" | sort |
    comm -23 - <(psql_as postgres "$NEW" shop -At -c "SELECT id FROM orders" | sort) | wc -l)
[ "$missing" -eq 0 ] || die "$missing acknowledged orders are missing on the new cluster"
after=$(awk -v p="$NEW" '$2 == p' "$DEMO_DIR/app.ok" | wc -l)
[ "$after" -gt 0 ] || die "the application wrote nothing to the new cluster"
say "all $on_new orders the application saw committed are on PostgreSQL $TO ($after of them written there)"
for _ in $(seq 1 120); do
    [ "$(psql_as postgres "$NEW" shop -At -c "SELECT lag_seconds = 0 FROM rserv_status")" = t ] && break
    sleep 0.5
done
run "${R[@]}" --masterport="$NEW" --slaveport="$OLD" check shop shop
gap=$(awk 'NR > 1 && $1 - prev > max { max = $1 - prev } { prev = $1 } END { printf "%.1f", max }' \
    "$DEMO_DIR/app.ok")
failed=$(wc -l <"$DEMO_DIR/app.failed" 2>/dev/null || echo 0)
say "longest time without a committed write: $gap s ($failed attempts refused meanwhile; a write"
say "every 50 ms: the demo moves the application within a moment of the switchover)"
say "$(psql_as postgres "$NEW" shop -At -c "SELECT 'new master: ' || version()")"

printf '\nOK: shop moved from PostgreSQL %s to %s while it was written to (longest pause %s s) in %ss; the old cluster follows the new one (the demo clusters are stopped and removed on exit)\n' \
    "$FROM" "$TO" "$gap" "$((SECONDS - START))"
