//! Master: a DDL transaction that changes a replicated table's definition is recorded in
//! `_rserv_ddl_` (the definition before and after, under the transaction's id like a log row),
//! so that every slave follows at exactly that point of its change-set stream. What cannot
//! follow is refused here, before it commits. A change that gives existing rows values a slave
//! could not compute the same way (a table rewrite, a column added with a computed default)
//! also sends the table whole to every slave in the same change set.

use super::diff::{added_with_computed_default, diff};
use crate::catalog::{ext_schema, table_info};
use crate::error::{fail, SpiOrFail};
use crate::schema::{describe, parse_definition};
use crate::security::internal_definer;
use crate::sql::{call_hint, first, qualified};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    /// Relations PostgreSQL rewrote in this backend since rserv last recorded DDL.
    static REWRITTEN: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// For the `table_rewrite` event trigger: relation `rel` is being rewritten.
#[pg_extern(volatile, security_definer)]
fn _rserv_note_rewrite_(rel: pg_sys::Oid) {
    let _definer = internal_definer();
    REWRITTEN.with(|r| r.borrow_mut().push(rel));
}

/// Registered master tables the DDL commands of this event touched: the tables, the tables of
/// indexes, triggers, policies and constraints, the tables using a type altered (in an array,
/// a domain, a composite or a range too), the registered partitioned tables of partitions
/// (at any level), and partitions registered on their own under a partitioned table altered. With `dropped_in`: every registered table with a relation in
/// those schemas (a dropped index, trigger or policy no longer names its table).
fn touched(s: &str, dropped_in: Option<Vec<String>>) -> Vec<pg_sys::Oid> {
    if let Some(schemas) = dropped_in {
        let candidates = crate::sql::column::<pg_sys::Oid>(
            &format!(
                "SELECT t.reloid FROM {s}._rserv_tables_ t WHERE EXISTS ( \
                   SELECT 1 FROM pg_catalog.pg_partition_tree(t.reloid) p \
                     JOIN pg_catalog.pg_class c ON c.oid = p.relid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                    WHERE n.nspname = ANY ($1)) \
                 OR (SELECT n.nspname FROM pg_catalog.pg_class c \
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      WHERE c.oid = t.reloid) = ANY ($1) \
                 ORDER BY 1"
            ),
            &[schemas.into()],
            "finding tables touched by DROP",
        );
        // what this DROP changed, it holds a lock on already; a table another transaction has
        // locked exclusively (an open TRUNCATE, ALTER) was not changed by it, and waiting for
        // that would stall this DROP behind unrelated work
        return candidates
            .into_iter()
            .filter(|reloid| {
                // SAFETY: takes (or already holds) a lock until the end of the transaction
                unsafe {
                    pg_sys::ConditionalLockRelationOid(
                        *reloid,
                        pg_sys::AccessShareLock as pg_sys::LOCKMODE,
                    )
                }
            })
            .collect();
    }
    // types the commands altered (an enum, a domain, a composite type or a constraint of one)
    let altered_types = crate::sql::column::<pg_sys::Oid>(
        "WITH c AS (SELECT classid, objid FROM pg_catalog.pg_event_trigger_ddl_commands()) \
         SELECT objid FROM c WHERE classid = 'pg_catalog.pg_type'::pg_catalog.regclass \
         UNION SELECT k.reltype FROM c JOIN pg_catalog.pg_class k ON k.oid = c.objid \
          WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND k.relkind = 'c' \
         UNION SELECT o.contypid FROM c JOIN pg_catalog.pg_constraint o ON o.oid = c.objid \
          WHERE c.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND o.contypid <> 0",
        &[],
        "finding types altered by DDL",
    );
    let mut rels = crate::sql::column::<pg_sys::Oid>(
        "WITH c AS (SELECT classid, objid FROM pg_catalog.pg_event_trigger_ddl_commands()) \
         SELECT objid FROM c WHERE classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
         UNION SELECT i.indrelid FROM c JOIN pg_catalog.pg_index i ON i.indexrelid = c.objid \
          WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
         UNION SELECT g.tgrelid FROM c JOIN pg_catalog.pg_trigger g ON g.oid = c.objid \
          WHERE c.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
         UNION SELECT p.polrelid FROM c JOIN pg_catalog.pg_policy p ON p.oid = c.objid \
          WHERE c.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass \
         UNION SELECT o.conrelid FROM c JOIN pg_catalog.pg_constraint o ON o.oid = c.objid \
          WHERE c.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND o.conrelid <> 0",
        &[],
        "finding relations touched by DDL",
    );
    if !altered_types.is_empty() {
        // the relations with a column of such a type, or of an array, domain, composite or
        // range over it
        rels.extend(crate::sql::column::<pg_sys::Oid>(
            "WITH RECURSIVE typs(typ) AS ( \
               SELECT unnest($1::pg_catalog.oid[]) \
               UNION SELECT nxt.oid FROM typs u CROSS JOIN LATERAL ( \
                   SELECT t.oid FROM pg_catalog.pg_type t \
                    WHERE (t.typelem = u.typ AND t.typcategory = 'A') OR t.typbasetype = u.typ \
                   UNION ALL SELECT k.reltype FROM pg_catalog.pg_attribute a \
                     JOIN pg_catalog.pg_class k ON k.oid = a.attrelid AND k.relkind = 'c' \
                    WHERE a.atttypid = u.typ AND NOT a.attisdropped \
                   UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r WHERE r.rngsubtype = u.typ \
                   UNION ALL SELECT r.rngmultitypid FROM pg_catalog.pg_range r WHERE r.rngtypid = u.typ) nxt) \
             SELECT DISTINCT a.attrelid FROM pg_catalog.pg_attribute a \
             WHERE a.atttypid IN (SELECT typ FROM typs) AND a.attnum > 0 AND NOT a.attisdropped",
            &[altered_types.into()],
            "finding tables using the types altered",
        ));
    }
    if rels.is_empty() {
        return Vec::new();
    }
    // (in oid order, as their `_rserv_tables_` rows are locked: see record_table)
    crate::sql::column::<pg_sys::Oid>(
        &format!(
            "SELECT DISTINCT t.reloid FROM unnest($1::pg_catalog.oid[]) AS r(rel) \
               CROSS JOIN LATERAL (SELECT r.rel AS a \
                                   UNION SELECT a.relid FROM pg_catalog.pg_partition_ancestors(r.rel) a(relid) \
                                   UNION SELECT d.relid FROM pg_catalog.pg_partition_tree(r.rel) d) up \
               JOIN {s}._rserv_tables_ t ON t.reloid = up.a \
             ORDER BY 1"
        ),
        &[rels.into()],
        "finding tables touched by DDL",
    )
}

/// After DDL (called by the DDL guards): record what changed in the definitions of the
/// replicated tables it touched. `dropped_in`: the schemas of objects a DROP removed.
#[pg_extern(volatile, security_definer)]
fn _rserv_record_ddl_(dropped_in: default!(Option<Vec<String>>, "NULL")) {
    let _definer = internal_definer();
    let s = ext_schema();
    for reloid in touched(&s, dropped_in) {
        record_table(&s, reloid);
    }
}

/// Was `reloid`, or a partition of it, rewritten since the last recorded DDL?
fn rewritten(reloid: pg_sys::Oid) -> bool {
    let tree = crate::sql::column::<pg_sys::Oid>(
        "SELECT $1 UNION SELECT relid FROM pg_catalog.pg_partition_tree($1)",
        &[reloid.into()],
        "listing the table's partitions",
    );
    REWRITTEN.with(|r| {
        let mut r = r.borrow_mut();
        let hit = r.iter().any(|o| tree.contains(o));
        r.retain(|o| !tree.contains(o));
        hit
    })
}

fn record_table(s: &str, reloid: pg_sys::Oid) {
    // The table's row is locked before the definition is read and the table described: DDL of
    // another transaction on it that does not lock this one out (two CREATE INDEX, ShareLock)
    // has committed by then, and both reads (each a statement of its own, with its own
    // snapshot at READ COMMITTED) see it; otherwise the later of the two would record a
    // definition without the other's change. At REPEATABLE READ, PostgreSQL refuses the lock
    // of a row updated since the snapshot (a serialization failure: the DDL is retried).
    let stored = first::<pgrx::JsonB>(
        &format!("SELECT definition FROM {s}._rserv_tables_ WHERE reloid = $1 FOR NO KEY UPDATE"),
        &[reloid.into()],
        "locking the table's definition",
    );
    let now = describe(reloid);
    let store = |key: Option<Vec<String>>| {
        Spi::run_with_args(
            &format!(
                "UPDATE {s}._rserv_tables_ SET definition = $2, tname = $3, key = coalesce($4, key) \
                 WHERE reloid = $1"
            ),
            &[
                reloid.into(),
                pgrx::JsonB(now.clone()).into(),
                table_info(reloid).qualified().into(),
                key.into(),
            ],
        )
        .or_fail("recording the table's definition")
    };
    let Some(before) = stored.map(|j| j.0) else {
        store(None);
        return;
    };
    // a rewrite may change every row without changing the definition (`TYPE text USING upper(v)`)
    let rewritten = rewritten(reloid);
    if before == now && !rewritten {
        return;
    }
    crate::fence::refuse_ddl_while_fenced(&table_info(reloid).qualified());
    let (old, new) = (
        parse_definition(before.clone()),
        parse_definition(now.clone()),
    );
    let table = qualified(&new.schema, &new.table);
    let steps = diff(&old, &new);
    if !steps.unsupported.is_empty() {
        fail(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "rserv: this change to replicated table {table} cannot follow to the slaves: {}",
                steps.unsupported.join("; ")
            ),
            format!(
                "remove the table from replication first ({} on the master, rserv_slave_remove_table on slaves), change it on every side, then register it again",
                call_hint("rserv_remove_table", &table, "")
            ),
        );
    }
    let recopy = rewritten || !added_with_computed_default(&old, &new).is_empty();
    // the registered key follows renames of its columns (matched by attribute number)
    let key = first::<Vec<String>>(
        &format!("SELECT key::text[] FROM {s}._rserv_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading the table's key",
    )
    .map(|key| {
        key.iter()
            .map(|k| {
                old.columns
                    .iter()
                    .find(|c| &c.name == k)
                    .and_then(|c| new.columns.iter().find(|n| n.attnum == c.attnum))
                    .map(|n| n.name.clone())
                    .unwrap_or_else(|| k.clone())
            })
            .collect::<Vec<_>>()
    });
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_ddl_ (logid, reloid, old, new, recopy) \
             VALUES (pg_catalog.txid_current(), $1, $2, $3, $4)"
        ),
        &[
            reloid.into(),
            pgrx::JsonB(before).into(),
            pgrx::JsonB(now.clone()).into(),
            recopy.into(),
        ],
    )
    .or_fail("recording the DDL");
    store(key);
    // a column added with a serial or identity brings a sequence of the table's
    crate::sequences::register_table_sequences(s, reloid);
    if recopy {
        // every slave gets the table whole with the change set that carries this DDL
        Spi::run_with_args(
            &format!("DELETE FROM {s}._rserv_server_tables_ WHERE reloid = $1"),
            &[reloid.into()],
        )
        .or_fail("scheduling fresh copies");
    }
    crate::wakeup::something_logged();
}

/// The definition a table is registered with (what later DDL is compared with).
pub fn remember_definition(s: &str, reloid: pg_sys::Oid) {
    Spi::run_with_args(
        &format!("UPDATE {s}._rserv_tables_ SET definition = $2 WHERE reloid = $1"),
        &[reloid.into(), pgrx::JsonB(describe(reloid)).into()],
    )
    .or_fail("recording the table's definition");
}
