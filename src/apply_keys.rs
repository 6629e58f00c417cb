//! Apply on the slave: the initial copy of a table rserv created empty (`replicate
//! --create-tables`) loads into the table without its primary key, unique and exclusion
//! constraints and builds them after the rows are in, as `pg_dump | psql` does (one sorted
//! index build instead of a million index insertions).
//!
//! Only a table that was empty when its copy began: the constraints' DROP locks the table
//! (ACCESS EXCLUSIVE) until the copy commits, so readers wait for it (a table that held rows,
//! a resync, keeps its constraints and stays readable as it was).
//!
//! Invariant: no statement but the section's own COPY ever sees the table without them, and no
//! transaction commits without them. They are dropped by the initial copy's TRUNCATE section
//! (the table is empty then) and made again, from this server's own text of them, when the
//! INSERT section is merged, before any other section is staged, at `rserv_apply_end()`;
//! a transaction that would commit with one missing (the catalog is asked, so a savepoint
//! rolled back cannot hide one) is refused, and rolls back. Only for a
//! plain table rserv created whose post-data is still pending, and only constraints that
//! `pg_get_constraintdef()` re-creates whole and that nothing else depends on: one with index
//! storage parameters, a tablespace, a statistics target, an extension dependency, a comment
//! or a security label, or that a foreign key, a view's GROUP BY, a replica identity or
//! CLUSTER ON relies on, stays, and the load maintains it.

use crate::catalog::ext_schema;
use crate::error::{fail, SpiOrFail};
use crate::schema::build::run;
use crate::security::{internal_ddl, run_as_owner};
use crate::sql::quote_ident;
use pgrx::pg_sys;
use pgrx::pg_sys::AlterTableType as At;
use pgrx::pg_sys::NodeTag as Tag;
use pgrx::prelude::*;
use std::cell::RefCell;

/// Constraints of one table to make again after its load (kept until the transaction ends).
#[derive(Clone)]
struct Dropped {
    reloid: pg_sys::Oid,
    owner: pg_sys::Oid,
    table: String,
    /// (name, this server's `pg_get_constraintdef()`), in creation order
    constraints: Vec<(String, String)>,
}

thread_local! {
    static DROPPED: RefCell<Vec<Dropped>> = const { RefCell::new(Vec::new()) };
}

/// The initial copy's TRUNCATE section emptied `reloid` (`table`, owned by `owner`): drop the
/// constraints that its load would otherwise maintain row by row, when that is safe.
pub fn drop_for_load(reloid: pg_sys::Oid, owner: pg_sys::Oid, table: &str) {
    let s = ext_schema();
    // (internal dependencies are the constraint's own parts: its index, a deferrable one's
    // recheck triggers; they go and come with it)
    let constraints: Vec<(String, String)> = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT con.conname::text, pg_catalog.pg_get_constraintdef(con.oid) \
                       FROM pg_catalog.pg_constraint con \
                       JOIN pg_catalog.pg_class c ON c.oid = con.conrelid \
                       JOIN pg_catalog.pg_index i ON i.indexrelid = con.conindid \
                       JOIN pg_catalog.pg_class ic ON ic.oid = con.conindid \
                      WHERE con.conrelid = $1 AND con.contype IN ('p', 'u', 'x') \
                        AND c.relkind = 'r' AND NOT c.relispartition AND NOT c.relhassubclass \
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = $1) \
                        AND EXISTS (SELECT 1 FROM {s}._rserv_slave_pending_ p WHERE p.reloid = $1) \
                        AND i.indisvalid AND NOT i.indisreplident AND NOT i.indisclustered \
                        AND ic.reloptions IS NULL AND ic.reltablespace = 0 AND ic.relname = con.conname \
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute ia \
                             WHERE ia.attrelid = con.conindid AND ia.attstattarget >= 0) \
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_seclabel sl \
                             WHERE (sl.classoid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND sl.objoid = con.oid) \
                                OR (sl.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND sl.objoid = con.conindid)) \
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend x \
                             WHERE x.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                               AND x.objid = con.conindid AND x.deptype NOT IN ('a', 'i', 'n')) \
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_description ds \
                             WHERE (ds.classoid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND ds.objoid = con.oid) \
                                OR (ds.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND ds.objoid = con.conindid)) \
                        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                             WHERE ((d.refclassid = 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                                     AND d.refobjid = con.oid) \
                                 OR (d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
                                     AND d.refobjid = con.conindid)) \
                               AND d.deptype <> 'i') \
                      ORDER BY con.oid"
                ),
                None,
                &[reloid.into()],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("reading the constraints of a table to load");
    if constraints.is_empty() {
        return;
    }
    let _internal = internal_ddl();
    run_as_owner(owner, &[], || {
        for (name, _) in &constraints {
            run(
                table,
                &format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_ident(name)),
                Tag::T_AlterTableStmt,
                Some(At::AT_DropConstraint),
            );
        }
    });
    DROPPED.with(|d| {
        d.borrow_mut().push(Dropped {
            reloid,
            owner,
            table: table.to_string(),
            constraints,
        })
    });
}

/// The constraints of `t` that are missing from its table now (none when the table is gone).
/// Read through the catalog caches, not SPI: the pre-commit check runs without a snapshot.
/// Each constraint's index bears its name (`drop_for_load` takes no other).
fn missing(t: &Dropped) -> Vec<&(String, String)> {
    // SAFETY: catalog cache look-ups by OID and name, inside a transaction
    let namespace = unsafe { pg_sys::get_rel_namespace(t.reloid) };
    if namespace == pg_sys::InvalidOid {
        return Vec::new();
    }
    t.constraints
        .iter()
        .filter(|(name, _)| {
            let c = crate::sql::c_string(name);
            // SAFETY: as above; `c` outlives the call
            unsafe {
                let index = pg_sys::get_relname_relid(c.as_ptr(), namespace);
                index == pg_sys::InvalidOid || pg_sys::IndexGetRelation(index, true) != t.reloid
            }
        })
        .collect()
}

/// Make again what [`drop_for_load`] dropped, for every table but `loading` (whose COPY is
/// about to run). Only what is missing: a savepoint rolled back may have brought some back.
pub fn restore(loading: Option<pg_sys::Oid>) {
    let due: Vec<Dropped> = DROPPED.with(|d| {
        d.borrow()
            .iter()
            .filter(|x| Some(x.reloid) != loading)
            .cloned()
            .collect()
    });
    let work: Vec<(&Dropped, Vec<&(String, String)>)> = due
        .iter()
        .map(|t| (t, missing(t)))
        .filter(|(_, m)| !m.is_empty())
        .collect();
    if work.is_empty() {
        return; // (internal_ddl() would end the apply's replica window for nothing)
    }
    let _internal = internal_ddl();
    for (t, constraints) in work {
        run_as_owner(t.owner, &[], || {
            for (name, definition) in constraints {
                run(
                    &t.table,
                    &format!(
                        "ALTER TABLE {} ADD CONSTRAINT {} {definition}",
                        t.table,
                        quote_ident(name)
                    ),
                    Tag::T_AlterTableStmt,
                    Some(At::AT_AddConstraint),
                );
            }
        });
    }
}

/// The transaction ended: whatever was dropped is back (commit) or was never dropped (abort).
fn forget() {
    DROPPED.with(|d| d.borrow_mut().clear());
}

/// Before COMMIT (or PREPARE TRANSACTION): every constraint dropped for a load is in the
/// catalog again. Read from the catalog, not from what `restore` did: a savepoint rolled back
/// after it would have taken them away again.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
            if DROPPED.with(|d| !d.borrow().is_empty()) =>
        {
            let dropped = DROPPED.with(|d| d.borrow().clone());
            let unfinished: Vec<String> = dropped
                .iter()
                .filter(|t| !missing(t).is_empty())
                .map(|t| t.table.clone())
                .collect();
            forget();
            if !unfinished.is_empty() {
                fail(
                    PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
                    format!(
                        "rserv: the initial copy of {} is not finished: its keys are not built yet",
                        unfinished.join(", ")
                    ),
                    "call rserv_apply_merge() for the table's INSERT section, or rserv_apply_end(), before COMMIT (replicate does)",
                );
            }
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => forget(),
        _ => {}
    }
}

pub fn register_callbacks() {
    // SAFETY: registers a static callback once per backend (from _PG_init)
    unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_event), std::ptr::null_mut()) };
}
