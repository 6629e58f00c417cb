//! Test harness for rserv's multi-cluster integration tests.
//!
//! - [`cluster`]: [`Cluster`], a throwaway PostgreSQL server (15 unless a test asks for another
//!   major) in its own directory under `/tmp`, on its own port, torn down on drop;
//! - [`binary`]: running the workspace's `replicate` binary with a clean environment
//!   ([`run_replicate`]);
//! - [`bank`]: the money-transfer workload of the switchover and failover tests;
//! - [`pair`]: a master and a slave cluster with rserv, and the assertions replication tests
//!   share; [`daemon`]: a `replicate run` process; [`oracle`]: what a slave must hold after a
//!   cycle; [`proxy`]: a TCP proxy that cuts connections; [`roles`]: roles and helpers of the
//!   security tests; [`rng`]: the seeded PRNG of the random workloads; [`matrix`]: the type
//!   matrix (every built-in type with its awkward values) of the type and version tests.
//!
//! Environment knobs:
//! * `RSERV_KEEP_CLUSTERS` — do not delete cluster directories on drop (their path is printed).
//! * `RSERV_PG_BINDIR` — PostgreSQL bin directory (default `/usr/lib/postgresql/15/bin`,
//!   else `pg_config --bindir`).
//! * `RSERV_PG<N>_BINDIR` (e.g. `RSERV_PG17_BINDIR`) — bin directory of PostgreSQL N for tests
//!   across majors; default `$RSERV_PG_ROOT/N/bin` (`RSERV_PG_ROOT` default `/opt/rserv-pg`),
//!   where `scripts/setup.sh --pg N` installs it.
//! * `RSERV_PROFILE` — cargo profile directory holding `replicate` (default `debug`).
//! * `RSERV_REPLICATE_BIN` — explicit path of the `replicate` binary (overrides the lookup).
//! * `RSERV_REPLICATE_TIMEOUT` — seconds after which [`run_replicate`] kills `replicate` and
//!   panics (default 300).

pub mod bank;
pub mod binary;
pub mod cluster;
pub mod daemon;
pub mod gen;
pub mod matrix;
pub mod oracle;
pub mod pair;
pub mod proxy;
pub mod rng;
pub mod roles;

pub use binary::{
    replicate_bin, replicate_command, run_replicate, run_replicate_env, run_replicate_of, Stepped,
};
pub use cluster::{pg_bindir, pg_bindir_for, Cluster};
/// Full text of a postgres error, including SQLSTATE, detail, hint, position and context:
/// `replicate`'s own description, in its verbose form.
pub use replicate::error::describe_pg_verbose as describe_pg_error;

/// Environment variables that libpq-style clients read; never passed on to `replicate` or the
/// server programs.
fn is_pg_env(key: &std::ffi::OsStr) -> bool {
    key.to_string_lossy().starts_with("PG")
}

/// Run a command that must succeed (a file operation of a test).
pub fn run_ok(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("command");
    assert!(out.status.success(), "{cmd:?}: {out:?}");
}
