#!/usr/bin/env bash
# Set up rserv and show it working: the 2001 eRServer walkthrough (booktown database, customer
# table, Dr. John's last name Nathan -> Nathaniel) replayed on two throwaway PostgreSQL 15
# clusters, "master" and "slave", on this machine.
#
# Run as root on Debian 12:  bash scripts/demo.sh
# Idempotent: installs what is missing (scripts/setup.sh), builds and installs the extension and
# /usr/local/bin/replicate (a no-op when up to date), then runs the demo in a temporary
# directory that is removed, with both clusters stopped, when the script exits (also on error
# or Ctrl-C). Build output goes to $BUILD_LOG; its tail is shown if the build fails.
set -euo pipefail
set -o errtrace
cd "$(dirname "$0")/.."

START=$SECONDS
PG_BIN=${RSERV_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BIN/pg_config
BUILD_LOG=/tmp/rserv-demo-build.log
export PATH="/usr/local/bin:$HOME/.cargo/bin:$PATH"
# The demo talks to its own clusters only: ignore the caller's libpq environment.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE PGSERVICEFILE \
    PGOPTIONS PGSSLMODE PGAPPNAME 2>/dev/null || true

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
say() { printf '   %s\n' "$*"; }
# Show a command (shell-quoted), then run it.
run() {
    local shown
    printf -v shown '%q ' "$@"
    printf '   $ %s\n' "${shown% }"
    "$@" || die "exit status $?: ${shown% }"
}
die() {
    printf '\ndemo.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
on_err() {
    local rc=$1 line=$2 cmd=$3 i
    # Report once, from the main shell (a failing $(...) also fails the line that uses it).
    [ "$BASH_SUBSHELL" -eq 0 ] || return 0
    for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
        line+=" (in ${FUNCNAME[i]}, called from line ${BASH_LINENO[i]})"
    done
    printf '\ndemo.sh: FAILED (exit status %s) at line %s: %s\n' "$rc" "$line" "$cmd" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

[ "$(id -u)" -eq 0 ] || die "run me as root (setup.sh installs packages; clusters run as the postgres user)"

# ---------------------------------------------------------------------------------------------
step "Install — seed: 'Installing the eR server' (gmake; gmake install)"
bash scripts/setup.sh
# Build noise goes to the log; show its tail if a step fails.
build() {
    local what=$1
    shift
    printf '   %s ... ' "$what"
    if ! "$@" >>"$BUILD_LOG" 2>&1; then
        printf 'failed\n'
        echo "--- last 40 lines of $BUILD_LOG:" >&2
        tail -n 40 "$BUILD_LOG" >&2
        die "$what failed (full log: $BUILD_LOG)"
    fi
    printf 'done\n'
}
: >"$BUILD_LOG"
build "cargo pgrx install -p rserv --release (extension into PostgreSQL 15)" \
    cargo pgrx install -p rserv --release --pg-config "$PG_CONFIG"
build "cargo install --path replicate (-> /usr/local/bin/replicate)" \
    cargo install --path replicate --locked --quiet --root /usr/local
say "gone: 'Installing the Pg module' (cpan, a temporary PostgreSQL root user):"
say "replicate is one self-contained binary; the rserv extension holds the server side."
command -v replicate >/dev/null || die "replicate is not on PATH after cargo install"
say "$(replicate --version)"

# ---------------------------------------------------------------------------------------------
step "Two machines — seed: the master machine and the slave machine 'pma'"
DEMO_DIR=$(mktemp -d /tmp/rserv-demo.XXXXXX)
chown postgres: "$DEMO_DIR"
STARTED=()

cleanup() {
    local rc=$?
    trap - ERR
    set +e
    local name
    for name in "${STARTED[@]}"; do
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DEMO_DIR/$name" -m fast -w -t 30 stop \
            >/dev/null 2>&1 ||
            runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$DEMO_DIR/$name" -m immediate -w -t 30 \
                stop >/dev/null 2>&1
    done
    rm -rf -- "$DEMO_DIR"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() {
    local p=$1
    if command -v ss >/dev/null && ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
        return 1
    fi
    # Something answering on either loopback address means the port is taken.
    if (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null || (: <"/dev/tcp/::1/$p") 2>/dev/null; then
        return 1
    fi
    return 0
}

# start_cluster NAME: initdb + pg_ctl start as postgres, on a free port; sets PORT_<NAME>.
start_cluster() {
    local name=$1 data="$DEMO_DIR/$1" log="$DEMO_DIR/$1.log" port attempt
    (cd "$DEMO_DIR" && runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U postgres -A trust \
        -E UTF8 --locale=C.UTF-8 >"$DEMO_DIR/$name.initdb.log" 2>&1) ||
        { cat "$DEMO_DIR/$name.initdb.log" >&2; die "initdb of the $name cluster failed"; }
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((54000 + RANDOM % 1000))
        port_free "$port" || continue
        cat >>"$data/postgresql.conf" <<EOF
# rserv demo ($name)
listen_addresses = 'localhost'
port = $port
unix_socket_directories = '$DEMO_DIR'
fsync = off
max_connections = 20
EOF
        if (cd "$DEMO_DIR" && runuser -u postgres -- env RUST_BACKTRACE=0 \
            "$PG_BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1); then
            STARTED+=("$name")
            printf -v "PORT_${name^^}" '%s' "$port"
            say "$name: PostgreSQL 15 on localhost:$port (data and socket in $DEMO_DIR)"
            return 0
        fi
        # Lost a race for the port? Try another; anything else is fatal.
        if ! grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "could not start the $name cluster (log above)"
        fi
    done
    die "found no free port for the $name cluster"
}
start_cluster master
start_cluster slave
M=$PORT_MASTER
S=$PORT_SLAVE

# psql as the postgres superuser (admin) or as pma, on one cluster.
psql_as() { # USER PORT DB [psql args...]
    local user=$1 port=$2 db=$3
    shift 3
    psql -X -q -v ON_ERROR_STOP=1 -h localhost -p "$port" -U "$user" -d "$db" "$@"
}
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
