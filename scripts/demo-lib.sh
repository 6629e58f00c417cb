# Shared by scripts/demo.sh and scripts/demo-upgrade.sh (sourced, not run): messages, the build
# step, and throwaway clusters in a temporary directory that is removed, with every cluster
# stopped, when the demo exits (also on error or Ctrl-C).
#
# The caller sets BUILD_LOG before build(), and calls demo_dir before start_cluster.

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD= PLAIN=; fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
say() { printf '   %s\n' "$*"; }
# Show a command (shell-quoted), then run it.
run() {
    local shown
    printf -v shown '%q ' "$@"
    printf '   $ %s\n' "${shown% }"
    "$@" || die "exit status $?: ${shown% }"
}
die() {
    printf '\n%s: FAILED: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}
on_err() {
    local rc=$1 line=$2 cmd=$3 i
    # Report once, from the main shell (a failing $(...) also fails the line that uses it).
    [ "$BASH_SUBSHELL" -eq 0 ] || return 0
    for ((i = 1; i < ${#FUNCNAME[@]} - 1; i++)); do
        line+=" (in ${FUNCNAME[i]}, called from line ${BASH_LINENO[i]})"
    done
    printf '\n%s: FAILED (exit status %s) at line %s: %s\n' "$(basename "$0")" "$rc" "$line" "$cmd" >&2
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

# Build noise goes to $BUILD_LOG; show its tail if a step fails.
build() {
    local what=$1
    shift
    printf '   %s ... ' "$what"
    if ! "$@" >>"$BUILD_LOG" 2>&1; then
        printf 'failed\n'
        echo "--- last 40 lines of $BUILD_LOG:" >&2
        tail -n 40 "$BUILD_LOG" >&2
        die "$what failed (full log: $BUILD_LOG)"
    fi
    printf 'done\n'
}

# DEMO_DIR: the clusters' data, logs and sockets; STARTED: "name bindir" of each running one;
# STOP_HOOKS: commands run first at exit (background jobs of the demo).
STARTED=()
STOP_HOOKS=()
demo_dir() {
    DEMO_DIR=$(mktemp -d /tmp/rserv-demo.XXXXXX)
    chown postgres: "$DEMO_DIR"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}
cleanup() {
    local rc=$?
    trap - ERR
    set +e
    local entry name bin hook
    for hook in "${STOP_HOOKS[@]}"; do eval "$hook" >/dev/null 2>&1; done
    for entry in "${STARTED[@]}"; do
        name=${entry%% *} bin=${entry#* }
        runuser -u postgres -- "$bin/pg_ctl" -D "$DEMO_DIR/$name" -m fast -w -t 30 stop \
            >/dev/null 2>&1 ||
            runuser -u postgres -- "$bin/pg_ctl" -D "$DEMO_DIR/$name" -m immediate -w -t 30 \
                stop >/dev/null 2>&1
    done
    rm -rf -- "$DEMO_DIR"
    exit "$rc"
}

port_free() {
    local p=$1
    if command -v ss >/dev/null && ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then
        return 1
    fi
    # Something answering on either loopback address means the port is taken.
    if (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null || (: <"/dev/tcp/::1/$p") 2>/dev/null; then
        return 1
    fi
    return 0
}

# start_cluster NAME BINDIR: initdb + pg_ctl start as postgres with the programs of BINDIR, on a
# free port; sets PORT_<NAME>.
start_cluster() {
    local name=$1 bin=$2 data="$DEMO_DIR/$1" log="$DEMO_DIR/$1.log" port attempt version
    (cd "$DEMO_DIR" && runuser -u postgres -- "$bin/initdb" -D "$data" -U postgres -A trust \
        -E UTF8 --locale=C.UTF-8 >"$DEMO_DIR/$name.initdb.log" 2>&1) ||
        { cat "$DEMO_DIR/$name.initdb.log" >&2; die "initdb of the $name cluster failed"; }
    version=$("$bin/postgres" --version | sed -E 's/.* ([0-9]+)\..*/\1/')
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        port=$((54000 + RANDOM % 1000))
        port_free "$port" || continue
        cat >>"$data/postgresql.conf" <<CONF
# rserv demo ($name)
listen_addresses = 'localhost'
port = $port
unix_socket_directories = '$DEMO_DIR'
fsync = off
max_connections = 20
CONF
        if (cd "$DEMO_DIR" && runuser -u postgres -- env RUST_BACKTRACE=0 \
            "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1); then
            STARTED+=("$name $bin")
            printf -v "PORT_${name^^}" '%s' "$port"
            say "$name: PostgreSQL $version on localhost:$port (data and socket in $DEMO_DIR)"
            return 0
        fi
        # Lost a race for the port? Try another; anything else is fatal.
        if ! grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null; then
            tail -n 20 "$log" >&2 || true
            die "could not start the $name cluster (log above)"
        fi
    done
    die "found no free port for the $name cluster"
}

# psql as USER on the cluster at PORT, database DB: psql_as USER PORT DB [psql args...]
psql_as() {
    local user=$1 port=$2 db=$3
    shift 3
    "${PSQL:-psql}" -X -q -v ON_ERROR_STOP=1 -h localhost -p "$port" -U "$user" -d "$db" "$@"
}
