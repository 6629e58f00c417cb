//! Table registry on the slave: `rserv_slave_add_table` / `rserv_slave_remove_table`, the
//! protection trigger that refuses local writes to received tables, and the list of tables the
//! slave receives (which the master sends only).

use crate::catalog::{ext_schema, table_info, RegClass, PROTECT_TRIGGER};
use crate::error::{fail, SpiOrFail};
use crate::identity::{check_table_kind, resolve_identity};
use crate::partitions::check_partition_overlap;
use crate::registry::{depend_on_extension, drop_trigger, required, trigger_oid};
use crate::security::{definer, internal_ddl, require_replicator, require_table_owner};
use crate::sql::{call_hint, count_rows, first, qualified, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Register a table on the slave. The identity must match the master's registration;
/// `column_name` is accepted as on the master (a key, or a watched column, which only the
/// master uses). Local writes to the table are refused from now on. A table registered anew
/// receives a fresh copy of the master's rows with the next change set, whatever it holds.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_add_table(tbl: Option<RegClass>, column_name: default!(Option<String>, "NULL")) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_slave_add_table");
    let info = table_info(reloid);
    check_table_kind(&info);
    check_partition_overlap(&info, "_rserv_slave_tables_", "rserv_slave_remove_table");
    let table = info.qualified();
    // Which tables a slave receives is a replication decision: a table owner who may not
    // replicate could otherwise have a master's rows copied into a table of theirs (or stop
    // every change set naming a table the master lacks). And the statements the apply runs on
    // the table run as its owner, whom the registering replicator must be able to act as.
    require_replicator("rserv_slave_add_table");
    require_table_owner(info.owner, &table, "rserv_slave_add_table");
    let s = ext_schema();
    let old_key = first::<Vec<String>>(
        &format!("SELECT key::text[] FROM {s}._rserv_slave_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading _rserv_slave_tables_",
    );
    let identity = resolve_identity(&info, column_name.as_deref(), old_key.as_ref());
    match old_key {
        Some(k) if k != identity.key => fail(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "rserv: table {table} is already registered as a slave table with identity ({}), not ({})",
                k.join(", "),
                identity.key.join(", ")
            ),
            format!(
                "to change it: {}, then register it again",
                call_hint("rserv_slave_remove_table", &table, "")
            ),
        ),
        Some(_) if trigger_oid(reloid, PROTECT_TRIGGER).is_some() => {
            notice!(
                "rserv: table {} is already registered as a slave table (identity ({})); nothing changed",
                table,
                identity.key.join(", ")
            );
            return;
        }
        Some(_) => {}
        None => {
            Spi::run_with_args(
                &format!(
                    "INSERT INTO {s}._rserv_slave_tables_ (reloid, tname, cname, key, needs_copy) \
                     VALUES ($1, $2, $3, $4::name[], true)"
                ),
                &[
                    reloid.into(),
                    table.clone().into(),
                    column_name.into(),
                    identity.key.clone().into(),
                ],
            )
            .or_fail("inserting into _rserv_slave_tables_");
        }
    }
    let _internal = internal_ddl();
    drop_trigger(reloid, &table, PROTECT_TRIGGER);
    protect(&s, reloid, &table);
    // a statement on a partition does not fire its parent's statement triggers (a table that
    // is not partitioned has nothing more to protect)
    if info.relkind == "p" {
        reconcile_protection(&s);
    }
}

pub fn protect(s: &str, reloid: pg_sys::Oid, table: &str) {
    if trigger_oid(reloid, PROTECT_TRIGGER).is_some() {
        return; // (the DDL guard, run by each CREATE TRIGGER, may have made it meanwhile)
    }
    let _internal = internal_ddl();
    Spi::run(&format!(
        "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} \
         FOR EACH STATEMENT EXECUTE FUNCTION {s}._rserv_protect_()",
        quote_ident(PROTECT_TRIGGER)
    ))
    .or_fail("creating the protection trigger");
    depend_on_extension(reloid, PROTECT_TRIGGER);
}

/// Every partition of a received partitioned table refuses local writes like the table itself;
/// a table that left one (DETACH) or was never received loses the protection.
pub fn reconcile_protection(s: &str) {
    let _internal = internal_ddl();
    let (missing, stray) = Spi::connect(|client| {
        // pg_partition_tree() has no rows for a table that is not partitioned
        // and, while a switchover fences this master, its replicated tables
        let protected_tree = format!(
            "SELECT t.reloid FROM {s}._rserv_slave_tables_ t UNION \
             SELECT p.relid FROM {s}._rserv_slave_tables_ t \
             CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.reloid) p UNION \
             SELECT t.reloid FROM {s}._rserv_tables_ t WHERE EXISTS (SELECT 1 FROM {s}._rserv_fence_) UNION \
             SELECT p.relid FROM {s}._rserv_tables_ t \
             CROSS JOIN LATERAL pg_catalog.pg_partition_tree(t.reloid) p \
             WHERE EXISTS (SELECT 1 FROM {s}._rserv_fence_)"
        );
        let names = |sql: &str| -> Result<Vec<(pg_sys::Oid, String)>, pgrx::spi::Error> {
            client
                .select(sql, None, &[])?
                .map(|r| {
                    Ok((
                        r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                        r.get::<String>(2)?.unwrap_or_default(),
                    ))
                })
                .collect()
        };
        let named = "pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)";
        let missing = names(&format!(
            "SELECT c.oid, {named} FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid IN ({protected_tree}) AND c.relkind IN ('r', 'p') \
               AND c.oid NOT IN (SELECT reloid FROM {s}._rserv_slave_tables_) \
               AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger g \
                                WHERE g.tgrelid = c.oid AND g.tgname = '_rserv_protect_t_')"
        ))?;
        let stray = names(&format!(
            "SELECT c.oid, {named} FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_trigger g ON g.tgrelid = c.oid AND g.tgname = '_rserv_protect_t_' \
             WHERE c.oid NOT IN ({protected_tree})"
        ))?;
        Ok::<_, pgrx::spi::Error>((missing, stray))
    })
    .or_fail("checking the protection of partitions");
    for (reloid, name) in missing {
        protect(s, reloid, &name);
    }
    for (reloid, name) in stray {
        drop_trigger(reloid, &name, PROTECT_TRIGGER);
    }
}

/// Stop receiving a table on this slave; it becomes an ordinary writable table again.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_remove_table(tbl: Option<RegClass>) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_slave_remove_table");
    let info = table_info(reloid);
    let table = info.qualified();
    require_table_owner(info.owner, &table, "rserv_slave_remove_table");
    let s = ext_schema();
    let removed = count_rows(
        &format!("DELETE FROM {s}._rserv_slave_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "deleting from _rserv_slave_tables_",
    );
    drop_trigger(reloid, &table, PROTECT_TRIGGER);
    reconcile_protection(&s);
    if removed == 0 {
        notice!(
            "rserv: table {} is not registered on this slave; nothing to remove",
            table
        );
    }
}

/// Tables this slave receives (the master sends only these); `needs_copy`: registered anew,
/// the next change set must carry all of its rows.
#[pg_extern(stable, security_definer, name = "rserv_slave_table_list")]
#[allow(clippy::type_complexity)]
fn rserv_slave_table_list_v11() -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(table_name, String),
        name!(needs_copy, bool),
    ),
> {
    let _definer = definer();
    require_replicator("rserv_slave_table_list");
    let s = ext_schema();
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, t.needs_copy FROM {s}._rserv_slave_tables_ t \
                     JOIN pg_catalog.pg_class c ON c.oid = t.reloid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2"
                ),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<bool>(3)?.unwrap_or(true),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("listing the slave's tables");
    TableIterator::new(rows)
}

/// The slave's registration of `schema.name`: (reloid, key columns).
pub fn slave_table(schema: &str, name: &str) -> Option<(pg_sys::Oid, Vec<String>)> {
    let s = ext_schema();
    crate::sql::rows(
        &format!(
            "SELECT t.reloid, t.key::text[] FROM {s}._rserv_slave_tables_ t \
             JOIN pg_catalog.pg_class c ON c.oid = t.reloid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2"
        ),
        &[schema.into(), name.into()],
        "reading _rserv_slave_tables_",
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
            ))
        },
    )
    .pop()
}

/// Is slave table `reloid` waiting for its initial copy?
pub fn needs_copy(reloid: pg_sys::Oid) -> bool {
    let s = ext_schema();
    crate::sql::kept_first::<bool>(
        &format!("SELECT needs_copy FROM {s}._rserv_slave_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading _rserv_slave_tables_",
    )
    .unwrap_or(false)
}

/// Have every table this slave receives copied afresh with the next change set (after a
/// restore from a backup, or to start over); the slave also forgets which server id it was,
/// and no longer awaits a failover's comparison (the copy makes it equal to its master).
/// Returns how many tables will be copied.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_resync() -> i64 {
    let _definer = definer();
    require_replicator("rserv_slave_resync");
    let s = ext_schema();
    // and its change sets: their ids may mean something else to its master now (a master
    // restored from a backup issues them again)
    Spi::run(&format!(
        "UPDATE {s}._rserv_slave_sync_ SET server = NULL, syncid = 0, snapshot = NULL, needs_check = false"
    ))
    .or_fail("forgetting the server id");
    count_rows(
        &format!("UPDATE {s}._rserv_slave_tables_ SET needs_copy = true"),
        &[],
        "marking tables for a fresh copy",
    )
}

/// The table now holds the master's rows as of the change set being applied.
pub fn mark_copied(reloid: pg_sys::Oid) {
    let s = ext_schema();
    Spi::run_with_args(
        &format!(
            "UPDATE {s}._rserv_slave_tables_ SET needs_copy = false WHERE reloid = $1 AND needs_copy"
        ),
        &[reloid.into()],
    )
    .or_fail("recording the copy");
}

/// Does this database receive `reloid` (or a partitioned table it is a partition of:
/// `pg_partition_ancestors` has no rows for a table that is not a partition)? Read
/// as the writer (`_rserv_slave_tables_.reloid` is readable to PUBLIC), with the operator and
/// function named in pg_catalog whatever its search_path.
fn received(reloid: pg_sys::Oid) -> bool {
    let s = ext_schema();
    first::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {s}._rserv_slave_tables_ t \
                             WHERE t.reloid OPERATOR(pg_catalog.=) ANY (ARRAY[$1::pg_catalog.oid] \
                                   OPERATOR(pg_catalog.||) ARRAY(SELECT a.relid::pg_catalog.oid \
                                   FROM pg_catalog.pg_partition_ancestors($1::pg_catalog.regclass) a)))"
        ),
        &[reloid.into()],
        "reading _rserv_slave_tables_",
    )
    .unwrap_or(false)
}

/// BEFORE statement trigger on slave tables: local writes would make the slave diverge from
/// its master, so they are refused unless the session asks for them. The apply itself runs
/// with session_replication_role = replica, where this trigger does not fire.
#[pg_trigger]
fn _rserv_protect_<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    // (a slave's own choice to differ from its master; never a fenced master's, whose tables
    // carry this trigger while another node takes over: the write would be lost. Decided by
    // the table being received, which a fence does not change: a transaction whose snapshot
    // is older than the fence does not see `_rserv_fence_`'s row.)
    let reloid = trigger.relation()?.oid();
    if crate::guc::ALLOW_SLAVE_WRITES.get() && received(reloid) && crate::fence::fence().is_none() {
        return Ok(None);
    }
    let op = match trigger.trigger_data().tg_event & pg_sys::TRIGGER_EVENT_OPMASK {
        pg_sys::TRIGGER_EVENT_INSERT => "INSERT",
        pg_sys::TRIGGER_EVENT_DELETE => "DELETE",
        pg_sys::TRIGGER_EVENT_UPDATE => "UPDATE",
        _ => "TRUNCATE",
    };
    let table = qualified(
        &trigger.table_schema().unwrap_or_default(),
        &trigger.table_name().unwrap_or_default(),
    );
    if let Some((kind, successor)) = crate::fence::fence() {
        crate::fence::refuse_write(&kind, successor.as_deref(), op, &table);
    }
    if !received(reloid) {
        // (neither received nor, as this transaction's snapshot shows, fenced: the protection
        // came after that snapshot)
        fail(
            PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            format!("rserv: local {op} on table {table} refused: this node's replication role changed after this transaction took its snapshot (a fence for a switchover or a failover, or the table became a slave table)"),
            "write on the master; a new transaction sees the role and says which",
        );
    }
    fail(
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        format!("rserv: table {table} is a replication slave table; local {op} refused"),
        "write on the master, or SET rserv.allow_slave_writes = on to write here anyway (the slave then differs from its master)",
    )
}
