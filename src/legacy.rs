//! Entry points of earlier versions whose SQL signature changed. Between installing a new
//! `rserv.so` and `ALTER EXTENSION rserv UPDATE`, a database's catalog still names these
//! symbols: a call then gets a clear error instead of "could not find function", and the
//! earlier version's install script still loads (the upgrade tests start from it).

use crate::error::fail;
use pgrx::prelude::*;

fn upgrade_first(func: &str) -> ! {
    fail(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "rserv: {func}() of an earlier rserv version: this database's rserv must be updated to {}",
            env!("CARGO_PKG_VERSION")
        ),
        "run ALTER EXTENSION rserv UPDATE in this database (its master and slaves may be updated before or after it: README, Upgrading rserv)",
    )
}

/// 1.0.0's rserv_prepare(int, text, text[], text[])
#[pg_extern(sql = false)]
fn rserv_prepare() -> bool {
    upgrade_first("rserv_prepare")
}

/// 1.0.0's rserv_table_list()
#[pg_extern(sql = false)]
fn rserv_table_list() -> bool {
    upgrade_first("rserv_table_list")
}

/// 1.0.0's rserv_slave_table_list()
#[pg_extern(sql = false)]
fn rserv_slave_table_list() -> bool {
    upgrade_first("rserv_slave_table_list")
}

/// 1.0.0's rserv_apply_begin(int8, text, text)
#[pg_extern(sql = false)]
fn rserv_apply_begin() -> bool {
    upgrade_first("rserv_apply_begin")
}
