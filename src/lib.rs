//! rserv: trigger-based asynchronous master-to-slave table replication for PostgreSQL.
//!
//! Modules by protocol step (ARCHITECTURE.md says which invariant each keeps):
//! - master: [`registry`] (tables; [`identity`] the rules shared with the slave, [`partitions`]),
//!   [`capture`] (the `_rserv_log_()` trigger), [`wakeup`] (NOTIFY at commit), [`changeset`]
//!   and [`sections`] (prepare: change sets bounded by MVCC snapshots), [`slaves`]
//!   (registration, confirm, drop), [`cleanup`] (log clean-up), [`schema`] (table definitions
//!   for new slaves), [`sequences`] (sequence state in every change set), [`ddl`] (schema
//!   changes recorded on the master, followed on the slave)
//! - slave: [`slave_registry`] (received tables, protection), [`apply`], [`apply_target`] and
//!   [`apply_copy`]; [`negotiate`] (which change sets it reads)
//! - takeover: [`fence`] (a master refusing writes), [`takeover`] (promote, demote: a
//!   switchover), [`failover`] (other slaves re-pointed), [`rejoin`] (what an old master
//!   committed after the takeover point)
//! - both: [`security`] (who may do what, as whom), [`staging`] (temp tables), [`node`]
//! - shared pieces: [`catalog`], [`canonical`], [`sql`], [`error`], [`guc`]; [`legacy`]
//!   (earlier versions' entry points)

use pgrx::prelude::*;

mod apply;
mod apply_copy;
mod apply_keys;
mod apply_rows;
mod apply_target;
mod canonical;
mod capture;
mod capture_check;
mod catalog;
mod changeset;
mod cleanup;
mod ddl;
mod error;
mod failover;
mod fence;
mod guc;
mod identity;
mod internal_ddl;
mod legacy;
mod negotiate;
mod node;
mod partitions;
mod registry;
mod rejoin;
mod replica_window;
mod schema;
mod sections;
mod security;
mod sequences;
mod slave_registry;
mod slaves;
mod sql;
mod staging;
mod takeover;
mod wakeup;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", bootstrap);
extension_sql_file!("../sql/finalize.sql", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx attaches a Rust backtrace to every ERROR raised through it when the server's
    // environment asks for backtraces (RUST_BACKTRACE=1); users must see rserv's message and
    // hint, not a stack dump. RUST_LIB_BACKTRACE wins over RUST_BACKTRACE for captures.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    guc::register();
    capture::register_callbacks();
    wakeup::register_callbacks();
    ddl::register_callbacks();
    apply_keys::register_callbacks();
    internal_ddl::register_callbacks();
    apply_copy::install();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
