//! Rejoin, on an old master that another node took over from by failover: what it committed
//! after the last change set the new master received from it.
//!
//! The new master recorded that change set (`_rserv_takeover_.old_syncid`, with its
//! fingerprint); this master still has it in `_rserv_sync_` (prepared, or confirmed: clean-up
//! keeps the log rows every registered slave may still need, and the new master was one).
//! Exactly the transactions that change set's snapshot did not see are the ones the new master
//! never received: their log rows (and recorded schema changes) are listed by
//! [`rserv_changed_since`]. `replicate rejoin` reports them, saves this master's rows, and has
//! the new master send its own version of exactly those rows.

use crate::catalog::ext_schema;
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, require_replicator};
use crate::sql::first;
use pgrx::prelude::*;

/// Every row identity (and schema change) that transactions committed here after change set
/// `syncid` of slave `server` (`fingerprint`: the one the slave applied, when known), with the
/// ids of those transactions: `kind` 'row' (a key), 'truncate' (the table was truncated: every
/// row may differ) or 'ddl' (its definition changed). Refused when this master has no record
/// of that change set (restored from a backup, or never the slave's master).
#[pg_extern(stable, security_definer)]
#[allow(clippy::type_complexity)]
fn rserv_changed_since(
    server: i32,
    syncid: i64,
    fingerprint: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(schema_name, String),
        name!(table_name, String),
        name!(key, Option<Vec<String>>),
        name!(xids, Vec<i64>),
    ),
> {
    let _definer = definer();
    require_replicator("rserv_changed_since");
    let s = ext_schema();
    let known = first::<bool>(
        &format!(
            "SELECT $3::uuid IS NULL OR fingerprint = $3::uuid FROM {s}._rserv_sync_ \
             WHERE server = $1 AND syncid = $2"
        ),
        &[server.into(), syncid.into(), fingerprint.into()],
        "reading _rserv_sync_",
    );
    match known {
        Some(true) => {}
        Some(false) => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: change set {syncid} of slave {server} here is not the one that slave applied (another fingerprint): this database issued that id again (restored from a backup?)"),
            REBUILD_HINT,
        ),
        None => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this database has no record of change set {syncid} of slave {server}: it cannot tell what it committed after it (restored from a backup, or not the master that slave followed?)"),
            REBUILD_HINT,
        ),
    }
    let window = "(x.logid >= y.maxid OR x.logid = ANY (y.active))";
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "WITH y AS (SELECT maxid, active FROM {s}._rserv_sync_ WHERE server = $1 AND syncid = $2) \
                     SELECT CASE WHEN x.key IS NULL THEN 'truncate' ELSE 'row' END, n.nspname::text, \
                            c.relname::text, x.key, pg_catalog.array_agg(DISTINCT x.logid ORDER BY x.logid) \
                       FROM {s}._rserv_log_ x CROSS JOIN y \
                       JOIN pg_catalog.pg_class c ON c.oid = x.reloid \
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      WHERE {window} GROUP BY 1, 2, 3, 4 \
                     UNION ALL \
                     SELECT 'ddl', n.nspname::text, c.relname::text, NULL::pg_catalog.text[], \
                            pg_catalog.array_agg(DISTINCT x.logid ORDER BY x.logid) \
                       FROM {s}._rserv_ddl_ x CROSS JOIN y \
                       JOIN pg_catalog.pg_class c ON c.oid = x.reloid \
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      WHERE {window} GROUP BY 1, 2, 3, 4 \
                     ORDER BY 2, 3, 1, 4"
                ),
                None,
                &[server.into(), syncid.into()],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<Vec<String>>(4)?,
                    r.get::<Vec<i64>>(5)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("reading the log since the takeover");
    TableIterator::new(rows)
}

const REBUILD_HINT: &str = "rebuild it as a new slave of the new master: DROP EXTENSION rserv; CREATE EXTENSION rserv; register its tables with rserv_slave_add_table (each is copied afresh), then replicate from the new master";
