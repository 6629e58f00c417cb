#!/usr/bin/env bash
# Installs everything rserv needs on a Debian 12 machine, as root. Idempotent: each step is
# skipped when what it provides is already present, so a second run takes a second or two.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
# cargo-pgrx must match the pgrx crate exactly: read the pin from Cargo.toml.
PGRX_VERSION=$(sed -nE 's/^pgrx = \{? *(version = )?"=([0-9.]+)".*/\2/p' Cargo.toml | head -n1)
: "${PGRX_VERSION:?could not read the pgrx version from Cargo.toml}"

log() { printf '== setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh installs system packages and must run as root (it drops to the postgres user where needed)" >&2
    exit 1
fi

need_apt=()
# libssl-dev + pkg-config: replicate's TLS (openssl crate); openssl: the TLS tests make their
# own certificates with it.
for pkg in postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo pkg-config \
    libssl-dev openssl; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
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
if ! grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
    log "cargo pgrx init --pg$PG_MAJOR $PG_CONFIG"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
fi
log "ready: cargo-pgrx $PGRX_VERSION, PostgreSQL $($PG_CONFIG --version)"
