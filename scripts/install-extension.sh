#!/usr/bin/env bash
# Builds the rserv extension and installs it into a PostgreSQL installation atomically: every
# file is written under a temporary name next to its destination and renamed into place, so a
# server that has rserv.so mapped keeps its copy (a new inode), and never sees a half-written
# library (`cargo pgrx install` rewrites rserv.so in place, which can crash running servers).
#
#   scripts/install-extension.sh [--release] [--pg-config PATH] [--features "a b"]
#
# The extension is built for the major version of PATH (cargo feature pgNN, 14 to 18; default
# /usr/lib/postgresql/15/bin/pg_config); --features adds others (e.g. pg_test).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=(--debug)
pg_config=/usr/lib/postgresql/15/bin/pg_config
features=
while [ $# -gt 0 ]; do
    case "$1" in
        --release) profile=() ;;
        --pg-config) pg_config=$2; shift ;;
        --features) features=$2; shift ;;
        *) echo "install-extension.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
export PATH="$HOME/.cargo/bin:$PATH"
version=$("$pg_config" --version) || { echo "install-extension.sh: cannot run $pg_config" >&2; exit 1; }
major=$(sed -nE 's/^PostgreSQL ([0-9]+).*/\1/p' <<<"$version")
case "$major" in
    14 | 15 | 16 | 17 | 18) ;;
    *) echo "install-extension.sh: $pg_config is $version; rserv builds for PostgreSQL 14 to 18" >&2; exit 1 ;;
esac
out=$(mktemp -d /tmp/rserv-package.XXXXXX)
trap 'rm -rf "$out"' EXIT
cargo pgrx package -p rserv "${profile[@]}" --no-default-features --features "pg$major${features:+ $features}" --pg-config "$pg_config" --out-dir "$out" >/dev/null
# the package mirrors the installation's absolute paths
(cd "$out" && find . -type f) | while read -r f; do
    dest=/${f#./}
    dir=$(dirname "$dest")
    mkdir -p "$dir"
    tmp=$(mktemp "$dir/.rserv-install.XXXXXX")
    install -m 0644 "$out/$f" "$tmp"
    [ "${dest##*.}" = so ] && chmod 0755 "$tmp"
    mv -f "$tmp" "$dest"
done
# install scripts of earlier versions, frozen as they shipped: the upgrade tests create a database
# at such a version and ALTER EXTENSION ... UPDATE it (pgrx packages only the current one)
extdir="$("$pg_config" --sharedir)/extension"
for f in sql/archive/rserv--*.sql; do
    [ -e "$f" ] || continue
    tmp=$(mktemp "$extdir/.rserv-install.XXXXXX")
    install -m 0644 "$f" "$tmp"
    mv -f "$tmp" "$extdir/$(basename "$f")"
done
echo "installed rserv $(sed -nE 's/^version = "([^"]+)".*/\1/p' Cargo.toml | head -n1) into $("$pg_config" --pkglibdir)" >&2
