#!/usr/bin/env bash
# Soak the generative differential test: run random schedules (seed S, S+1, ...) for as long
# as asked; on the first failure print the failing seed and its minimal (shrunk) schedule, in
# a form people read and as JSON that a regression test in tests/tests/generative.rs replays.
#
#   scripts/soak.sh [--seconds N] [--seed S] [--count N] [--keep-going] [--no-shrink]
#                   [--shrink-seconds N] [--print] [--replay FILE] [--compact FILE] [--verbose]
#
# Defaults: 600 seconds, a first seed from the clock. `--seed S --count 1` replays one seed
# (and shrinks it if it fails). Exit status 1 when a seed failed.
# RSERV_GEN_AVOID=charkey,rls,... switches generator features off (tests/src/gen/workload.rs);
# RSERV_GEN_TRACE=1 prints every step. The clusters use the PostgreSQL in RSERV_PG_BINDIR
# (see tests/src/lib.rs) with the rserv extension already installed there: this script
# installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
args=("$@")
if [[ " ${args[*]-} " != *" --seconds "* && " ${args[*]-} " != *" --count "* ]]; then
    args=(--seconds 600 "${args[@]}")
fi
cargo build --quiet -p rserv-tests --bin rserv-gen || exit 2
target=${CARGO_TARGET_DIR:-target}
"$target/debug/rserv-gen" "${args[@]}" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' INT TERM
rc=0
while kill -0 "$child" 2>/dev/null; do
    wait "$child"
    rc=$?
done
# An interrupted run cannot stop its clusters itself: stop and remove those it left.
bindir=${RSERV_PG_BINDIR:-/usr/lib/postgresql/15/bin}
for d in /tmp/rserv-test-soak_[ms]-"$child"-*; do
    [[ -d $d ]] || continue
    if [[ -f $d/data/postmaster.pid ]]; then
        if [[ $(id -u) == 0 ]]; then
            runuser -u postgres -- "$bindir/pg_ctl" -D "$d/data" -m immediate stop >/dev/null 2>&1
        else
            "$bindir/pg_ctl" -D "$d/data" -m immediate stop >/dev/null 2>&1
        fi
    fi
    rm -rf "$d"
done
exit "$rc"
