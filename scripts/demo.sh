#!/usr/bin/env bash
# Set up rserv and show it working: the 2001 eRServer walkthrough (booktown database, customer
# table, Dr. John's last name Nathan -> Nathaniel) replayed on two throwaway PostgreSQL 15
# clusters, "master" and "slave", on this machine.
#
# Run as root on Debian 12:  bash scripts/demo.sh
#                            bash scripts/demo.sh --upgrade 15 18   (scripts/demo-upgrade.sh: a
#                            database moved from one PostgreSQL major to another while written)
# Idempotent: installs what is missing (scripts/setup.sh), builds and installs the extension and
# /usr/local/bin/replicate ($RSERV_DEMO_PREFIX/bin; a no-op when up to date; the extension goes
# into $RSERV_PG_BINDIR's PostgreSQL, default the system's 15), then runs the demo in a temporary
# directory that is removed, with both clusters stopped, when the script exits (also on error
# or Ctrl-C). Build output goes to $BUILD_LOG; its tail is shown if the build fails.
set -euo pipefail
set -o errtrace
cd "$(dirname "$0")/.."
if [ "${1:-}" = --upgrade ]; then
    shift
    exec bash scripts/demo-upgrade.sh "$@"
fi

START=$SECONDS
PG_BIN=${RSERV_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BIN/pg_config
BUILD_LOG=/tmp/rserv-demo-build.log
# where replicate is installed (bin/ below it)
PREFIX=${RSERV_DEMO_PREFIX:-/usr/local}
export PATH="$PREFIX/bin:$HOME/.cargo/bin:$PATH"
# The demo talks to its own clusters only: ignore the caller's libpq environment.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
    PGOPTIONS PGSSLMODE PGAPPNAME 2>/dev/null || true

# shellcheck source=scripts/demo-lib.sh
source scripts/demo-lib.sh

[ "$(id -u)" -eq 0 ] || die "run me as root (setup.sh installs packages; clusters run as the postgres user)"

# ---------------------------------------------------------------------------------------------
step "Install — seed: 'Installing the eR server' (gmake; gmake install)"
bash scripts/setup.sh
: >"$BUILD_LOG"
build "cargo pgrx install -p rserv --release (extension into PostgreSQL 15)" \
    cargo pgrx install -p rserv --release --pg-config "$PG_CONFIG"
build "cargo install --path replicate (-> $PREFIX/bin/replicate)" \
    cargo install --path replicate --locked --quiet --root "$PREFIX"
say "gone: 'Installing the Pg module' (cpan, a temporary PostgreSQL root user):"
say "replicate is one self-contained binary; the rserv extension holds the server side."
command -v replicate >/dev/null || die "replicate is not on PATH after cargo install"
say "$(replicate --version)"

# ---------------------------------------------------------------------------------------------
step "Two machines — seed: the master machine and the slave machine 'pma'"
demo_dir
start_cluster master "$PG_BIN"
start_cluster slave "$PG_BIN"
M=$PORT_MASTER
S=$PORT_SLAVE

on_both() { # describe what, then run psql_as USER {M,S} DB ARGS for each cluster
    local user=$1 db=$2
    shift 2
    local side port
    for side in master slave; do
        [ "$side" = master ] && port=$M || port=$S
        psql_as "$user" "$port" "$db" "$@" || die "on the $side: psql $* failed"
    done
}

# ---------------------------------------------------------------------------------------------
step "Step 3 — create the user pma (createuser pma), on both"
say "superuser for now (a later change brings a least-privilege role); local trust auth, no password"
on_both postgres postgres -c "CREATE ROLE pma LOGIN SUPERUSER"

step "Step 4 — createdb booktown, on both (owned by pma)"
on_both postgres postgres -c "CREATE DATABASE booktown OWNER pma"

step "The booktown customer table, on the master only"
CUSTOMER_SQL="
CREATE TABLE customer (cust_id integer PRIMARY KEY, lastname text, firstname text);
INSERT INTO customer VALUES
    (1, 'Jackson', 'Annie'),
    (2, 'Gould', 'Ed'),
    (3, 'Bank', 'Jenny'),
    (10, 'Nathan', 'John'),
    (12, 'Kent', 'Clark');"
psql_as pma "$M" booktown -c "$CUSTOMER_SQL"
psql_as pma "$M" booktown -c "SELECT * FROM customer ORDER BY cust_id"

step "Steps 1, 2, 5 — pg_dump booktown, scp it to the slave, psql booktown < booktown.db"
say "gone: the slave database stays empty; replicate --create-tables (step 10) creates the table"
say "from the master's definition and the first change set copies its rows, consistently with"
say "every change made meanwhile."

step "Step 6 — pg_hba.conf on the slave"
say "gone for the demo: both clusters listen on localhost only, with trust authentication."
say "A real slave needs a pg_hba.conf line for the host running replicate (scram-sha-256)."

step "Step 7 — ./MasterInit booktown  (= CREATE EXTENSION rserv on the master)"
run replicate --user=pma --masterhost=localhost --masterport="$M" master-init booktown

step "Step 8 — ./MasterAddTable booktown customer lastname"
say "cust_id (the primary key) identifies rows; lastname is the watched column: an UPDATE is"
say "replicated when it changes lastname; INSERT and DELETE always are."
run replicate --user=pma --masterhost=localhost --masterport="$M" \
    master-add-table booktown customer lastname
say "gone: the 'ProcedureCreate: procedure _rserv_log_ already exists' clean-up; running it"
say "again is harmless:"
run replicate --user=pma --masterhost=localhost --masterport="$M" \
    master-add-table booktown customer lastname

step "Step 9 — ./SlaveInit booktown  (= CREATE EXTENSION rserv on the slave)"
run replicate --user=pma --slavehost=localhost --slaveport="$S" slave-init booktown

step "Step 10 — ./SlaveAddTable booktown customer lastname, and the initial copy"
say "replicate --create-tables creates and registers (SlaveAddTable) the missing table on the"
say "slave; this first run copies the table in one slave transaction (a copy that is"
say "interrupted leaves the slave as it was and is redone by the next run)."
run replicate --user=pma --masterhost=localhost --masterport="$M" --slavehost=localhost \
    --slaveport="$S" --create-tables --verbose booktown booktown
psql_as pma "$S" booktown -c "SELECT * FROM customer ORDER BY cust_id"

step "Step 11 — on the master, Dr. John's last name Nathan -> Nathaniel, then ./Replicate"
UPDATE_SQL="UPDATE customer SET lastname = 'Nathaniel' WHERE cust_id = 10;"
printf '   master=# %s\n' "$UPDATE_SQL"
psql_as pma "$M" booktown -c "$UPDATE_SQL"
# The seed's command line; --host (the socket directory) is the default for both sides, the
# --masterhost/--slavehost and ports pick the two clusters.
REPLICATE=(replicate --user=pma --host="$DEMO_DIR" --masterhost=localhost --masterport="$M"
    --slavehost=localhost --slaveport="$S" --verbose booktown booktown)
run "${REPLICATE[@]}"

step "Step 12 — log into the slave database and look for the change"
SHOW_10="SELECT * FROM customer WHERE cust_id = 10"
printf '   $ psql -h localhost -p %s -U pma booktown -c "%s"\n' "$S" "$SHOW_10"
psql_as pma "$S" booktown -c "$SHOW_10"
got=$(psql_as pma "$S" booktown -At -c "SELECT lastname FROM customer WHERE cust_id = 10")
[ "$got" = Nathaniel ] || die "the slave has lastname '$got' for cust_id 10, expected 'Nathaniel'"

step "Step 13 — 'why the replication does not run automatically': still one cycle per run"
say "run replicate again (from cron, or a loop) for later changes. Second round on the master:"
ROUND2_SQL="INSERT INTO customer VALUES (13, 'Wayne', 'Bruce'); DELETE FROM customer WHERE cust_id = 2;"
printf '   master=# %s\n' "$ROUND2_SQL"
psql_as pma "$M" booktown -c "$ROUND2_SQL"
run "${REPLICATE[@]}"
say "the slave's customer table now:"
psql_as pma "$S" booktown -c "SELECT * FROM customer ORDER BY cust_id"
say "and nothing left to send:"
run "${REPLICATE[@]}"

step "Beyond the seed — schema changes, partitions and sequences follow the stream"
say "a partitioned orders table with an identity column, registered on the master only;"
say "--create-tables builds its whole tree (and its sequence) on the slave:"
ORDERS_SQL="
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY, placed date NOT NULL,
                     cust_id integer NOT NULL, PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);
CREATE TABLE orders_2025 PARTITION OF orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE orders_2026 PARTITION OF orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO orders (placed, cust_id) VALUES ('2025-05-01', 1), ('2026-02-03', 10);
SELECT rserv_add_table('orders');"
psql_as pma "$M" booktown -c "$ORDERS_SQL" >/dev/null
run replicate --user=pma --host="$DEMO_DIR" --masterhost=localhost --masterport="$M" \
    --slavehost=localhost --slaveport="$S" --create-tables booktown booktown
say "now, on the master only: a new column, a new partition, more orders:"
DDL_SQL="ALTER TABLE customer ADD COLUMN email text DEFAULT 'unknown';
CREATE TABLE orders_2027 PARTITION OF orders FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
INSERT INTO orders (placed, cust_id) VALUES ('2027-03-04', 12);
UPDATE customer SET email = 'annie@example.org', lastname = 'Jackson-Lee' WHERE cust_id = 1;"
printf '   master=# %s\n' "$DDL_SQL"
psql_as pma "$M" booktown -c "$DDL_SQL" >/dev/null
run "${REPLICATE[@]}"
say "the slave followed with no manual step (customer is registered with watched column lastname:"
say "an UPDATE reaches the slave when it changes lastname, as the seed's watched columns did):"
psql_as pma "$S" booktown -c "SELECT * FROM customer ORDER BY cust_id"
psql_as pma "$S" booktown -c "SELECT tableoid::regclass AS partition, * FROM orders ORDER BY id"
say "and its identity sequence is where the master's is (a promoted slave never reuses an id):"
psql_as pma "$S" booktown -c "SELECT last_value FROM orders_id_seq"
for q in "SELECT id, placed, cust_id FROM orders ORDER BY id" \
         "SELECT relid::text FROM pg_partition_tree('orders') ORDER BY 1" \
         "SELECT last_value FROM orders_id_seq"; do
    [ "$(psql_as pma "$M" booktown -At -c "$q")" = "$(psql_as pma "$S" booktown -At -c "$q")" ] \
        || die "master and slave differ: $q"
done

say "the last change set the slave applied (GetSyncID):"
run replicate --user=pma --slavehost=localhost --slaveport="$S" sync-id booktown

# Master and slave must hold the same rows.
DUMP_SQL="SELECT cust_id, lastname, firstname, email FROM customer ORDER BY cust_id"
master_rows=$(psql_as pma "$M" booktown -At -c "$DUMP_SQL")
slave_rows=$(psql_as pma "$S" booktown -At -c "$DUMP_SQL")
if [ "$master_rows" != "$slave_rows" ]; then
    diff <(printf '%s\n' "$master_rows") <(printf '%s\n' "$slave_rows") | sed 's/^/   /' >&2 || true
    die "master and slave customer tables differ (< master, > slave)"
fi

printf '\nOK: rserv replicated booktown.customer master:%s -> slave:%s (update, insert, delete, a new column, a new partition) in %ss (the demo clusters are stopped and removed on exit)\n' \
    "$M" "$S" "$((SECONDS - START))"
