//! The fence: a master whose replicated tables refuse local writes as a slave's do, because
//! another node is taking over (`kind` 'switchover', see `takeover.rs`) or has taken over
//! while this one was unreachable ('deposed': a failover; `replicate rejoin` makes it a slave).
//!
//! While `_rserv_fence_` holds its row, `reconcile_protection` puts the slave's protection
//! trigger on every replicated table (and partition); the trigger reads the row to say why it
//! refuses. Taking the fence waits for the writers in flight (the trigger's lock), except for
//! prepared (2PC) transactions, which would hold it forever: those are named instead.

use crate::catalog::{ext_schema, table_info};
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, own_triggers, require_replicator, require_table_owner};
use crate::slave_registry::reconcile_protection;
use crate::sql::first;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Why this master is fenced, and for whom: (kind, successor node id), or None.
pub fn fence() -> Option<(String, Option<String>)> {
    let s = ext_schema();
    Spi::connect(|client| {
        let mut out = None;
        for r in client.select(
            &format!("SELECT kind, successor::text FROM {s}._rserv_fence_"),
            None,
            &[],
        )? {
            out = Some((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or(None)
}

/// Is this master fenced (by a switchover, or as a deposed master)?
pub fn fenced() -> bool {
    fence().is_some()
}

/// The error the protection trigger raises for a local `op` on `table` of a fenced master.
pub fn refuse_write(kind: &str, successor: Option<&str>, op: &str, table: &str) -> ! {
    let who = successor.unwrap_or("another node");
    if kind == "deposed" {
        fail(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("rserv: this node is no longer the master ({who} took over by failover): local {op} on replicated table {table} refused"),
            "write on the new master; run replicate rejoin to make this node its slave",
        );
    }
    fail(
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        format!("rserv: switchover in progress, this node is becoming a slave: local {op} on replicated table {table} refused"),
        "write on the new master (the slave taking over); retry there",
    )
}

/// A schema change of replicated table `table` (its definition, a rewrite of its rows, a
/// partition arriving or leaving) on a fenced master: refused. The node taking over has (or is
/// about to have) its last change set, so the change would reach no slave, and the demoted
/// master would differ from the new one without a trace.
pub fn refuse_ddl_while_fenced(table: &str) {
    if let Some((kind, successor)) = fence() {
        let who = successor.unwrap_or_else(|| "another node".into());
        fail(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!(
                "rserv: this master is fenced ({}): schema change of replicated table {table} refused",
                if kind == "deposed" {
                    format!("{who} took over by failover")
                } else {
                    format!("switchover to {who} in progress")
                }
            ),
            "change the table on the new master: the slaves (and this node, once it follows it) follow",
        );
    }
}

/// The tables in `catalog` (`_rserv_tables_` or `_rserv_slave_tables_`) with their identity;
/// the caller must be able to act as each one's owner.
pub fn owned_tables(s: &str, catalog: &str, func: &str) -> Vec<(pg_sys::Oid, Vec<String>)> {
    let rows = crate::registry::keyed_tables(s, &format!("{catalog} t"));
    for (reloid, _) in &rows {
        let info = table_info(*reloid);
        require_table_owner(info.owner, &info.qualified(), func);
    }
    rows
}

/// Prepared transactions holding a lock on a replicated table (or one of its partitions): the
/// fence would wait for them forever, and one committed later would change a table that is no
/// longer this node's to change. Refused, naming each (gid, owner, prepared at, tables).
fn refuse_prepared_transactions(s: &str) {
    let held = first::<String>(
        &format!(
            "SELECT pg_catalog.string_agg(pg_catalog.format('%L (owner %s, prepared at %s, on %s)', \
                                          x.gid, x.owner, x.prepared, x.tables), '; ' ORDER BY x.prepared) \
             FROM (SELECT p.gid, p.owner::text AS owner, p.prepared, \
                          pg_catalog.string_agg(DISTINCT l.relation::pg_catalog.regclass::text, ', ') AS tables \
                     FROM pg_catalog.pg_locks l \
                     JOIN pg_catalog.pg_locks x ON x.locktype = 'transactionid' AND x.pid IS NULL \
                                               AND x.virtualtransaction = l.virtualtransaction \
                     JOIN pg_catalog.pg_prepared_xacts p ON p.transaction = x.transactionid \
                    WHERE l.locktype = 'relation' AND l.pid IS NULL \
                      AND l.database = (SELECT oid FROM pg_catalog.pg_database \
                                         WHERE datname = pg_catalog.current_database()) \
                      AND l.relation IN (SELECT t.reloid FROM {s}._rserv_tables_ t \
                                         UNION SELECT p.relid FROM {s}._rserv_tables_ t \
                                         CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.reloid) p) \
                    GROUP BY 1, 2, 3) x"
        ),
        &[],
        "looking for prepared transactions",
    );
    if let Some(list) = held {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("rserv: prepared transactions hold replicated tables, the fence would wait for them forever: {list}"),
            "finish each with COMMIT PREPARED 'gid' or ROLLBACK PREPARED 'gid' (as its owner, in this database), then run the command again",
        );
    }
}

/// Fence this master: every replicated table refuses local writes from this transaction's
/// commit on, until [`crate::takeover`]'s demote makes them slave tables or [`rserv_unfence`]
/// lifts it. `successor`: the node id of the node taking over; `kind`: 'switchover' (step 1
/// of a switchover) or 'deposed' (another node took over by failover: only `replicate rejoin`
/// lifts it, by making this node a slave). Waits for the writers in flight (run it with a
/// `lock_timeout`); prepared transactions on the tables are refused, named. Returns the
/// tables fenced.
#[pg_extern(volatile, security_definer)]
fn rserv_fence(successor: Option<String>, kind: default!(Option<String>, "'switchover'")) -> i64 {
    let _definer = definer();
    require_replicator("rserv_fence");
    crate::takeover::durable();
    let kind = kind.unwrap_or_else(|| "switchover".into());
    if kind != "switchover" && kind != "deposed" {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("rserv: unknown fence kind {kind:?}"),
            "'switchover' or 'deposed'",
        );
    }
    let s = ext_schema();
    let tables = owned_tables(&s, "_rserv_tables_", "rserv_fence");
    refuse_prepared_transactions(&s);
    // a deposed master stays deposed: a switchover's fence does not soften it
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_fence_ (successor, kind) VALUES ($1::uuid, $2) \
             ON CONFLICT (singleton) DO UPDATE SET \
                 successor = coalesce(excluded.successor, {s}._rserv_fence_.successor), \
                 kind = CASE WHEN {s}._rserv_fence_.kind = 'deposed' THEN 'deposed' ELSE excluded.kind END"
        ),
        &[successor.into(), kind.into()],
    )
    .or_fail("fencing");
    let _own = own_triggers();
    reconcile_protection(&s);
    tables.len() as i64
}

/// Lift a switchover's fence (an aborted switchover): the replicated tables accept writes again.
/// Refused for a deposed master (another node took over: `replicate rejoin` makes it a slave).
/// The caller checks that the successor has not been promoted (two masters would then accept
/// writes).
#[pg_extern(volatile, security_definer)]
fn rserv_unfence() -> bool {
    let _definer = definer();
    require_replicator("rserv_unfence");
    let s = ext_schema();
    owned_tables(&s, "_rserv_tables_", "rserv_unfence");
    if let Some((kind, successor)) = fence() {
        if kind == "deposed" {
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "rserv: this node was replaced by {} (failover): its fence stays until it rejoins as a slave",
                    successor.unwrap_or_else(|| "another node".into())
                ),
                "run replicate rejoin with the new master",
            );
        }
    }
    let lifted = crate::sql::count_rows(
        &format!("DELETE FROM {s}._rserv_fence_"),
        &[],
        "lifting the fence",
    ) > 0;
    let _own = own_triggers();
    reconcile_protection(&s);
    lifted
}
