#!/usr/bin/env bash
# rserv on every supported PostgreSQL major, and across them: the full matrix that
# scripts/test.sh samples (test.sh runs the whole suite on 15 and a cross-version slice).
# As root on Debian 12; installs what is missing (scripts/setup.sh --pg N for each major, into
# $RSERV_PG_ROOT/N, default /opt/rserv-pg/N; never into the system's PostgreSQL).
#
#   scripts/test-versions.sh [--majors "14 15 16 17 18"] [--quick]
#
# Steps, for the majors given (default all five):
#   1. set up each major with rserv built for it (cargo feature pgN)
#   2. per major: the extension's #[pg_test]s (not 15's: test.sh runs those against the system's
#      15), the SQL API's pg_regress suite, and (without --quick) every multi-cluster integration
#      test of tests/ on that major
#   3. every ordered pair of majors: tests/tests/versions.rs (type matrix, --create-tables, a
#      concurrent workload, values only newer majors have)
#   4. the rolling upgrade from rserv 1.0.0 (scripts/build-release.sh, tests/tests/rolling.rs),
#      when 15 is among the majors
# and ends with one line "rserv versions: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."

majors="14 15 16 17 18"
quick=
while [ $# -gt 0 ]; do
    case "$1" in
        --majors) majors=$2; shift ;;
        --quick) quick=1 ;;
        -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "test-versions.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
export PATH="$HOME/.cargo/bin:$PATH"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

log=$(mktemp /tmp/rserv-test-versions.XXXXXX)
pgdata=/tmp/rserv-pgtest-versions-$$
trap 'rm -f "$log"; rm -rf "$pgdata"' EXIT
step() { printf '\n== %s\n' "$*"; }
run() { "$@" 2>&1 | tee -a "$log"; return "${PIPESTATUS[0]}"; }
failed_steps=0
# A failing step is counted and the script goes on with the next one.
check() { "$@" || { failed_steps=$((failed_steps + 1)); echo "FAILED: $*" | tee -a "$log"; }; }

for n in $majors; do
    step "PostgreSQL $n: server and rserv (scripts/setup.sh --pg $n)"
    bash scripts/setup.sh --pg "$n"
done
cargo build -p replicate --quiet

filter=()
for n in $majors; do
    bin=$(bash scripts/pg-bin.sh "$n")
    export "RSERV_PG${n}_BINDIR=$bin"
    if [ "$n" != 15 ]; then
        step "PostgreSQL $n: extension #[pg_test]s"
        rm -rf "$pgdata"
        check run cargo pgrx test "pg$n" -p rserv --no-default-features --runas postgres --pgdata "$pgdata"
        # cargo pgrx test installed its test build: put the real one back
        bash scripts/install-extension.sh --pg-config "$bin/pg_config"
    fi
    step "PostgreSQL $n: SQL API regression tests (pg_regress)"
    check run env RSERV_PG_BINDIR="$bin" pg_test/installcheck.sh
    if [ -z "$quick" ]; then
        step "PostgreSQL $n: multi-cluster integration tests"
        check run env RSERV_PG_BINDIR="$bin" cargo test --no-fail-fast -p rserv-tests
    fi
    for m in $majors; do
        [ "$n" != "$m" ] && filter+=("from_${n}_to_${m}")
    done
done

if [ ${#filter[@]} -gt 0 ]; then
    step "replication across majors: ${filter[*]}"
    check run cargo test --no-fail-fast -p rserv-tests --test versions -- --ignored --exact \
        $(printf '%s ' "${filter[@]}")
fi

if [[ " $majors " == *" 15 "* ]]; then
    step "rolling upgrade from rserv 1.0.0 (built from its tag)"
    old_env=$(bash scripts/build-release.sh 1.0.0 | tail -n 1)
    check run env $old_env RSERV_PG_BINDIR="$RSERV_PG15_BINDIR" \
        cargo test --no-fail-fast -p rserv-tests --test rolling -- --ignored
fi

passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -oE '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
regress=$(grep -oE 'All [0-9]+ tests passed' "$log" | grep -oE '[0-9]+' | awk '{s+=$1} END {print s+0}')
regress_failed=$(grep -oE '[0-9]+ of [0-9]+ tests failed' "$log" | awk '{s+=$1} END {print s+0}')
printf '\nrserv versions: %d passed, %d failed\n' $((passed + regress)) $((failed + regress_failed))
[ "$failed_steps" -eq 0 ]
