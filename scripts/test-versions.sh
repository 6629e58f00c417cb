#!/usr/bin/env bash
# rserv on every supported PostgreSQL major and across them: what scripts/test.sh only samples
# (test.sh runs the whole suite on 15 plus the slice 15 -> 18 and 18 -> 15). As root on
# Debian 12. Installs what is missing with scripts/setup.sh --pg N (into $RSERV_PG_ROOT/N,
# default /opt/rserv-pg/N; never into the system's PostgreSQL).
#
#   scripts/test-versions.sh [--majors "14 15 16 17 18"] [--no-setup] [--full]
#
# Steps, for the majors given (default all five):
#   1. set up each major with rserv built for it (skipped with --no-setup: the installations
#      scripts/pg-bin.sh N finds are used as they are, e.g. RSERV_PG15_BINDIR=<your own 15>)
#   2. per major: cargo clippy -D warnings of the extension built for it (feature pgN), and the
#      SQL API's pg_regress suite (pg_test/)
#   3. every ordered pair of majors: tests/tests/versions.rs (type matrix, --create-tables, a
#      concurrent workload, infinite intervals refused by majors before 17, a switchover):
#      20 pairs, about 5 minutes
#   4. with 15 among the majors: rserv upgraded in place from the previous release while
#      replication runs, tests/tests/rolling.rs (scripts/build-release.sh 1.0.0 builds that
#      release from its tag first: about 10 minutes once, then cached; the tests take about 2)
#   5. with --full, per major: the extension's #[pg_test]s (not 15's, which scripts/test.sh runs
#      against the system's 15) and every multi-cluster integration test of tests/ (the whole
#      suite; about as long as scripts/test.sh, per major)
# and ends with one line "rserv versions: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")/.."

majors="14 15 16 17 18"
setup=1
full=
while [ $# -gt 0 ]; do
    case "$1" in
        --majors) majors=$2; shift ;;
        --no-setup) setup= ;;
        --full) full=1 ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "test-versions.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for n in $majors; do
    case "$n" in
        14 | 15 | 16 | 17 | 18) ;;
        *) echo "test-versions.sh: PostgreSQL $n is not supported (14 to 18)" >&2; exit 2 ;;
    esac
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

if [ -n "$setup" ]; then
    for n in $majors; do
        step "PostgreSQL $n: server and rserv (scripts/setup.sh --pg $n)"
        bash scripts/setup.sh --pg "$n"
    done
fi
cargo build -p replicate --quiet

# Every major's bin directory, for the tests (rserv_tests::pg_bindir_for reads these).
for n in $majors; do
    bin=$(bash scripts/pg-bin.sh "$n")
    export "RSERV_PG${n}_BINDIR=$bin"
    step "PostgreSQL $n: cargo clippy -p rserv --no-default-features --features pg$n"
    check run cargo clippy -p rserv --no-default-features --features "pg$n" --quiet -- -D warnings
    step "PostgreSQL $n ($bin): SQL API regression tests (pg_regress)"
    check run env RSERV_PG_BINDIR="$bin" pg_test/installcheck.sh
done

pairs=()
for n in $majors; do
    for m in $majors; do
        [ "$n" != "$m" ] && pairs+=("from_${n}_to_${m}")
    done
done
if [ ${#pairs[@]} -gt 0 ]; then
    step "replication across majors: ${pairs[*]}"
    check run cargo test --no-fail-fast -p rserv-tests --test versions -- --ignored --exact "${pairs[@]}"
fi

if [[ " $majors " == *" 15 "* ]]; then
    step "rserv upgraded in place from 1.0.0 while replication runs (tests/tests/rolling.rs)"
    if check run bash scripts/build-release.sh 1.0.0; then
        check run env RSERV_PG_BINDIR="$RSERV_PG15_BINDIR" \
            cargo test --no-fail-fast -p rserv-tests --test rolling -- --ignored
    fi
fi

if [ -n "$full" ]; then
    for n in $majors; do
        var=RSERV_PG${n}_BINDIR
        bin=${!var}
        # (15's run in scripts/test.sh: cargo-pgrx's pg15 is the system's server, not touched here)
        if [ "$n" != 15 ]; then
            step "PostgreSQL $n: extension #[pg_test]s"
            rm -rf "$pgdata"
            check run cargo pgrx test "pg$n" -p rserv --no-default-features --runas postgres --pgdata "$pgdata"
            # cargo pgrx test installed its test build into cargo-pgrx's pg$n: put the real one back
            bash scripts/install-extension.sh --pg-config "$bin/pg_config"
        fi
        step "PostgreSQL $n: replicate's unit tests and the multi-cluster integration tests"
        check run env RSERV_PG_BINDIR="$bin" cargo test --no-fail-fast -p replicate -p rserv-tests
    done
fi

# (grep finds nothing when, say, no pg_regress test failed: not an error)
# the sum of the first number of every match of $1 in the log
count() {
    { grep -oE "$1" "$log" || true; } |
        awk '{ if (match($0, /[0-9]+/)) s += substr($0, RSTART, RLENGTH) } END { print s + 0 }'
}
passed=$(count 'test result: [a-zA-Z]+\. [0-9]+ passed')
failed=$(count '[0-9]+ failed;')
regress=$(count 'All [0-9]+ tests passed')
regress_failed=$(count '[0-9]+ of [0-9]+ tests failed')
printf '\nrserv versions: %d passed, %d failed\n' $((passed + regress)) $((failed + regress_failed))
[ "$failed_steps" -eq 0 ]
