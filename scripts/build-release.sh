#!/usr/bin/env bash
# Builds an earlier rserv release from this repository's history, for the rolling-upgrade test
# (tests/tests/rolling.rs) and for trying an upgrade by hand: that release's extension installed
# into its own copy of PostgreSQL 15, and its replicate binary. Idempotent: a release already
# built is left as it is (a few seconds); the first build takes about as long as building rserv.
#
#   scripts/build-release.sh [VERSION]      (default 1.0.0; the only earlier release so far)
#
# Result, under $RSERV_PG_ROOT/releases/VERSION (default /opt/rserv-pg/releases/VERSION):
#   src/        the release's sources (git archive of tag vVERSION)
#   pg15/       a copy of $RSERV_PG_ROOT/15 (scripts/setup.sh --pg 15) holding that release's
#               rserv only (its server starts the data directories of any PostgreSQL 15)
#   replicate   its replicate binary
# The last line printed is the environment the test reads:
#   RSERV_OLD_PG_BINDIR=<...>/pg15/bin RSERV_OLD_REPLICATE=<...>/replicate
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-1.0.0}
# Releases by commit, for clones that lack the tags (a CI clone of main only).
declare -A RELEASE_COMMIT=([1.0.0]=13a95acdba584ad81082b0627f32de1c34419ce7)
root=${RSERV_PG_ROOT:-/opt/rserv-pg}
dest=$root/releases/$version
log() { printf '== build-release: %s\n' "$*" >&2; }
die() { printf 'build-release.sh: %s\n' "$*" >&2; exit 1; }

if git rev-parse -q --verify "refs/tags/v$version^{commit}" >/dev/null; then
    commit=$(git rev-parse "refs/tags/v$version^{commit}")
elif [ -n "${RELEASE_COMMIT[$version]:-}" ] && git cat-file -e "${RELEASE_COMMIT[$version]}^{commit}" 2>/dev/null; then
    commit=${RELEASE_COMMIT[$version]}
else
    die "no tag v$version (nor a known commit of it) in this repository: git fetch --tags"
fi
[ -x "$root/15/bin/pg_config" ] ||
    die "PostgreSQL 15 is not set up in $root/15: run scripts/setup.sh --pg 15 --no-extension"
export PATH="$HOME/.cargo/bin:$PATH"
unset RUST_BACKTRACE RUST_LIB_BACKTRACE

if [ "$(cat "$dest/.built" 2>/dev/null)" != "$commit" ]; then
    log "building rserv $version ($commit) in $dest"
    rm -rf "$dest"
    mkdir -p "$dest/src"
    git archive "$commit" | tar -x -C "$dest/src"
    grep -q "^version = \"$version\"" "$dest/src/Cargo.toml" || die "commit $commit is not rserv $version"
    # its own PostgreSQL 15: a copy without this tree's rserv
    cp -a "$root/15/." "$dest/pg15/"
    rm -f "$dest/pg15/.rserv-source"
    pg_config=$dest/pg15/bin/pg_config
    pkglib=$("$pg_config" --pkglibdir)
    ext=$("$pg_config" --sharedir)/extension
    rm -f "$pkglib/rserv.so" "$ext"/rserv.control "$ext"/rserv--*.sql
    # a target directory of its own: the release's build never invalidates this tree's
    export CARGO_TARGET_DIR=$dest/target
    (cd "$dest/src" &&
        cargo pgrx package -p rserv --debug --pg-config "$pg_config" --out-dir "$dest/package" >&2 &&
        cargo build -p replicate --locked >&2)
    # the package mirrors the installation's absolute paths
    (cd "$dest/package" && find . -type f) | while read -r f; do
        mkdir -p "$(dirname "/${f#./}")"
        install -m 0644 "$dest/package/$f" "/${f#./}"
    done
    chmod 0755 "$pkglib/rserv.so"
    install -m 0755 "$CARGO_TARGET_DIR/debug/replicate" "$dest/replicate"
    rm -rf "$dest/package" "$CARGO_TARGET_DIR"
    echo "$commit" >"$dest/.built"
fi
[ -f "$("$dest/pg15/bin/pg_config" --sharedir)/extension/rserv--$version.sql" ] ||
    die "$dest/pg15 has no rserv $version install script"
log "rserv $version: $dest/pg15/bin (extension), $dest/replicate"
echo "RSERV_OLD_PG_BINDIR=$dest/pg15/bin RSERV_OLD_REPLICATE=$dest/replicate"
