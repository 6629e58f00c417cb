#!/usr/bin/env bash
# The switchover's write-unavailability window under a steady pgbench load (issue 16).
#
#   bash bench/switchover.sh [--pg-bindir DIR] [--debug] [--rounds N] [--rate TPS]
#                            [--clients N] [--scale N]
#
# Needs the rserv extension installed in the PostgreSQL tree of DIR (default
# /usr/lib/postgresql/15/bin): scripts/install-extension.sh [--release] --pg-config DIR/pg_config.
# Builds replicate and the driver (tests/src/bin/rserv-switchover-bench.rs; release unless
# --debug), which starts two throwaway clusters with the test harness (fsync off, unix sockets
# and 127.0.0.1 on private ports, removed at the end), replicates a pgbench database between
# them with one `replicate run` daemon and switches over back and forth under pgbench. Prints
# the figures and writes them to bench/SWITCHOVER.md. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
CMDLINE="bash bench/switchover.sh $*"
BINDIR=/usr/lib/postgresql/15/bin
PROFILE=release
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --pg-bindir) BINDIR=${2:?--pg-bindir needs a directory}; shift ;;
        --debug) PROFILE=debug ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$1") ;;
    esac
    shift
done
[ -x "$BINDIR/pgbench" ] || { echo "switchover.sh: no pgbench in $BINDIR" >&2; exit 2; }
if [ "$PROFILE" = release ]; then
    cargo build --release -q -p replicate -p rserv-tests --bins
else
    cargo build -q -p replicate -p rserv-tests --bins
fi
export RSERV_PG_BINDIR=$BINDIR RSERV_REPLICATE_BIN=$PWD/target/$PROFILE/replicate
unset RUST_BACKTRACE RUST_LIB_BACKTRACE
out=$("target/$PROFILE/rserv-switchover-bench" "${ARGS[@]}")
echo "$out"
{
    echo "# Switchover write-unavailability window"
    echo
    echo "\`$CMDLINE\` (replicate: $PROFILE build; the extension as installed in $BINDIR; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%d))."
    echo "replicate: fence to the new master's promotion commit, as \`replicate switchover\` reports it;"
    echo "probe: a client writing every 2 ms and trying the other node when refused, from its last"
    echo "write accepted by the old master to its first accepted by the new one; daemon follows: a"
    echo "row written on the new master right after the switchover, until the old master has it"
    echo "(the same \`replicate run\` daemon, following the flip)."
    echo
    echo '```'
    echo "$out"
    echo '```'
} > bench/SWITCHOVER.md
