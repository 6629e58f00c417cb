//! rserv: trigger-based asynchronous master-to-slave table replication for PostgreSQL.
//!
//! Modules by concern:
//! - [`capture`]: the `_rserv_log_()` trigger that records changed row identities
//! - [`registry`]: registering tables on the master and on the slave
//! - [`sync`]: change sets bounded by MVCC snapshots; confirm; log clean-up
//! - [`apply`]: applying a change set on the slave in one transaction
//! - [`common`]: quoting, errors, catalog look-ups shared by the above

use pgrx::prelude::*;

mod apply;
mod capture;
mod common;
mod registry;
mod sync;

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
    apply::register_gucs();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
