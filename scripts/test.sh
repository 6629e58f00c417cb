#!/usr/bin/env bash
# The whole test suite (the README's test command; .ci/run calls exactly this). Runs as root on
# a fresh Debian 12 machine: installs what is missing, then runs, in order,
#   1. cargo fmt --check and cargo clippy -D warnings
#   2. the extension's #[pg_test]s (cargo pgrx test, servers run as the postgres user)
#   3. the SQL API's pg_regress suite (pg_test/) against a throwaway cluster
#   4. replicate's unit tests and the multi-cluster integration tests (tests/)
#   5. a slice of the tests across PostgreSQL majors: 15 -> 18 and 18 -> 15 (sets up 18 under
#      /opt/rserv-pg/18 with scripts/setup.sh --pg 18, a few minutes the first time, then two
#      tests of about a minute together; scripts/test-versions.sh runs every pair of 14..18, the
#      SQL API suite on each, and with --full the whole suite on every major)
#   6. rserv upgraded in place from the previous release (1.0.0, built from its git tag by
#      scripts/build-release.sh into a PostgreSQL 15 of its own, a few minutes the first time)
#      while replication runs (tests/tests/rolling.rs)
# and ends with one line "rserv: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A backtrace setting would make the Rust extension append backtraces to server errors.
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

log=$(mktemp /tmp/rserv-test-log.XXXXXX)
trap 'rm -f "$log"' EXIT
step() { printf '\n== %s\n' "$*"; }
run() { "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }

step "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "extension #[pg_test]s"
pgdata=/tmp/rserv-pgtest-$$
trap 'rm -f "$log"; rm -rf "$pgdata"' EXIT
run cargo pgrx test pg15 -p rserv --runas postgres --pgdata "$pgdata"

step "install the extension (replaces the pg_test build; atomically, see the script)"
bash scripts/install-extension.sh --pg-config "$PG_CONFIG"

step "SQL API regression tests (pg_regress)"
run pg_test/installcheck.sh

step "replicate unit tests and multi-cluster integration tests"
cargo build -p replicate --quiet
run cargo test --no-fail-fast -p replicate -p rserv-tests

step "replication across PostgreSQL majors (a slice; scripts/test-versions.sh runs them all)"
bash scripts/setup.sh --pg 18
# 15 is the system's, with the extension installed above
RSERV_PG15_BINDIR=$(dirname "$PG_CONFIG") RSERV_PG18_BINDIR=$(bash scripts/pg-bin.sh 18) \
    run cargo test --no-fail-fast -p rserv-tests --test versions -- --ignored --exact \
    from_15_to_18 from_18_to_15

step "rserv upgraded in place from 1.0.0 while replication runs (tests/tests/rolling.rs)"
bash scripts/setup.sh --pg 15 --no-extension
bash scripts/build-release.sh 1.0.0
# the new side: the system's 15, with this tree's rserv installed above
RSERV_PG_BINDIR=$(dirname "$PG_CONFIG") \
    run cargo test --no-fail-fast -p rserv-tests --test rolling -- --ignored

passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
regress=$(grep -oE 'All [0-9]+ tests passed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
printf '\nrserv: %d passed, %d failed\n' $((passed + regress)) "$failed"
