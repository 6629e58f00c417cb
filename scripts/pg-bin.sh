#!/usr/bin/env bash
# Prints the bin directory of PostgreSQL N as scripts/setup.sh --pg N installs it:
# $RSERV_PG_ROOT/N/bin (default /opt/rserv-pg/N/bin), or $RSERV_PG<N>_BINDIR when that is set
# (an installation of your own; the tests read the same variable). Fails, saying what to run,
# when that major is not set up there.
#
#   scripts/pg-bin.sh N          e.g. RSERV_PG_BINDIR=$(scripts/pg-bin.sh 17) pg_test/installcheck.sh
set -euo pipefail
n=${1:-}
case "$n" in
    14 | 15 | 16 | 17 | 18) ;;
    *) echo "usage: $0 N   (N = 14, 15, 16, 17 or 18)" >&2; exit 2 ;;
esac
var=RSERV_PG${n}_BINDIR
bin=${!var:-${RSERV_PG_ROOT:-/opt/rserv-pg}/$n/bin}
if [ ! -x "$bin/pg_ctl" ] || [ ! -x "$bin/pg_config" ]; then
    echo "pg-bin.sh: PostgreSQL $n is not set up in $bin: run scripts/setup.sh --pg $n" >&2
    exit 1
fi
got=$("$bin/pg_config" --version)
if [[ $got != "PostgreSQL $n."* ]]; then
    echo "pg-bin.sh: $bin holds $got, not PostgreSQL $n" >&2
    exit 1
fi
echo "$bin"
