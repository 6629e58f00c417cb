//! This database's rserv identity: its node id (a slave records the id of the master it
//! follows, a master binds each slave id to a node) and the installed version.

use crate::catalog::{ext_schema, ext_version};
use crate::security::{definer, require_replicator};
use pgrx::prelude::*;

/// This database's rserv node id. Only roles that may replicate read it: it is what binds a
/// slave to its master.
#[pg_extern(stable, security_definer)]
fn rserv_node_id() -> String {
    let _definer = definer();
    require_replicator("rserv_node_id");
    let s = ext_schema();
    crate::sql::kept_first::<String>(
        &format!("SELECT node_id::text FROM {s}._rserv_node_"),
        &[],
        "reading _rserv_node_",
    )
    .unwrap_or_else(|| {
        crate::error::fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "rserv: this database has no node id (_rserv_node_ is empty)",
            "recreate the extension: DROP EXTENSION rserv; CREATE EXTENSION rserv",
        )
    })
}

/// Version of the rserv extension installed in this database.
#[pg_extern(stable)]
fn rserv_version() -> String {
    ext_version()
}
