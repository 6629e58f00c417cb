//! Session-lived staging tables in the caller's `pg_temp`: the master's list of pending row
//! identities (read by the caller's COPY), and the slave's text tables for DELETE and UPDATE
//! sections (filled by the caller's COPY).
//!
//! The caller owns its `pg_temp`, so a relation found there by name could be the caller's own
//! view, or a table with the caller's triggers. rserv therefore never looks one up by a name
//! it did not make: each staging table gets an unpredictable name when rserv creates it, rserv
//! remembers its OID, and before every use checks that this OID is still the plain, trigger-
//! and rule-free table rserv's own role created in this session's temp schema. It is emptied
//! before every use, and created again if the transaction that made it rolled back.
//!
//! Not `ON COMMIT DELETE ROWS`: PostgreSQL then truncates every such table (and rebuilds its
//! TOAST index) at the commit of any transaction that touched a temp table, about 7 ms per
//! table on the bench machine, which was most of a small change set's cycle on both sides.
//! The tables are emptied by DELETE while small and TRUNCATEd once they have grown.

use crate::error::SpiOrFail;
use crate::security::{definer_role, grant, grant_to_caller};
use crate::sql::{first, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

struct Staging {
    kind: String,
    columns: String,
    oid: pg_sys::Oid,
    qualified: String,
}

thread_local! {
    static TABLES: RefCell<Vec<Staging>> = const { RefCell::new(Vec::new()) };
}

/// Every staging table rserv made in this session (they may be all this session's temp schema
/// holds while a table owner's code runs, see `security::run_as_owner`).
pub fn oids() -> Vec<pg_sys::Oid> {
    TABLES.with(|t| t.borrow().iter().map(|s| s.oid).collect())
}

/// Is `oid` still the staging table rserv made under `qualified`?
fn intact(oid: pg_sys::Oid, qualified: &str) -> bool {
    crate::sql::kept_first::<bool>(
        "SELECT c.relkind = 'r' AND c.relpersistence = 't' AND c.relowner = $2 \
                AND c.relnamespace = pg_catalog.pg_my_temp_schema() \
                AND NOT c.relhastriggers AND NOT c.relhasrules AND NOT c.relrowsecurity \
                AND pg_catalog.to_regclass($3) = c.oid \
         FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[oid.into(), definer_role().into(), qualified.into()],
        "checking a staging table",
    )
    .unwrap_or(false)
}

/// Who may do what with a staging table besides rserv itself.
pub struct Access {
    /// privilege of the calling role (e.g. INSERT: its COPY fills the table)
    pub caller: &'static str,
    /// readable by every role of this session (temp tables are private to the session):
    /// statements run as a table's owner read it
    pub public_select: bool,
}

/// The staging table of `kind` with `columns` (a column list in SQL, built by rserv), created
/// on first use in this session; returns its schema-qualified quoted name.
pub fn table(kind: &str, columns: &str, access: Access) -> String {
    let known = TABLES.with(|t| {
        t.borrow()
            .iter()
            .find(|s| s.kind == kind && s.columns == columns)
            .map(|s| (s.oid, s.qualified.clone()))
    });
    if let Some((oid, qualified)) = known {
        if intact(oid, &qualified) {
            return qualified;
        }
        TABLES.with(|t| t.borrow_mut().retain(|s| s.oid != oid));
    }
    let suffix = first::<String>(
        "SELECT pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '')",
        &[],
        "naming a staging table",
    )
    .unwrap_or_default();
    let qualified = format!(
        "pg_temp.{}",
        quote_ident(&format!("_rserv_{kind}_{suffix}"))
    );
    let _staging = crate::security::staging_ddl();
    Spi::run(&format!("CREATE TEMP TABLE {qualified} ({columns})"))
        .or_fail("creating a staging table");
    let oid = first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[qualified.clone().into()],
        "finding the staging table",
    )
    .unwrap_or(pg_sys::InvalidOid);
    if !access.caller.is_empty() {
        grant_to_caller(access.caller, &qualified);
    }
    if access.public_select {
        grant("SELECT", &qualified, "PUBLIC");
    }
    TABLES.with(|t| {
        t.borrow_mut().push(Staging {
            kind: kind.to_string(),
            columns: columns.to_string(),
            oid,
            qualified: qualified.clone(),
        })
    });
    qualified
}

/// `c1 text, c2 text, ...`: a staging table for `n` columns of COPY text.
pub fn text_columns(n: usize) -> String {
    (1..=n)
        .map(|i| format!("c{i} pg_catalog.text"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `c1, c2, ...`
pub fn column_names(n: usize) -> String {
    (1..=n)
        .map(|i| format!("c{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A staging table larger than this is emptied by TRUNCATE (which gives its space back), a
/// smaller one by DELETE (no new file, no catalog change: far cheaper for a few rows).
const TRUNCATE_ABOVE: i64 = 256 * 1024;

/// Empty a staging table before a section fills it, and after its merge (the table outlives
/// sections and transactions; what it held must not). `big`: give its space back now,
/// whatever its size.
pub fn empty(qualified: &str, big: bool) {
    let truncate = big || bytes(qualified).is_none_or(|b| b > TRUNCATE_ABOVE);
    let verb = if truncate { "TRUNCATE" } else { "DELETE FROM" };
    crate::sql::run(
        &format!("{verb} {qualified}"),
        &[],
        "emptying a staging table",
    );
}

/// The size of a staging table rserv made (`pg_relation_size`), read without a statement: a
/// cycle asks about a dozen times. None: not one of rserv's.
fn bytes(qualified: &str) -> Option<i64> {
    let oid = TABLES.with(|t| {
        t.borrow()
            .iter()
            .find(|s| s.qualified == qualified)
            .map(|s| s.oid)
    })?;
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    // SAFETY: opened under a lock and closed again; NULL if the table is gone
    unsafe {
        let rel = pg_sys::try_relation_open(oid, lock);
        if rel.is_null() {
            return None;
        }
        let blocks = pg_sys::RelationGetNumberOfBlocksInFork(rel, pg_sys::ForkNumber::MAIN_FORKNUM);
        pg_sys::relation_close(rel, lock);
        Some(i64::from(blocks) * i64::from(pg_sys::BLCKSZ))
    }
}

/// A large staging table deserves statistics before it is joined with a real one.
/// Returns whether it was large.
pub fn analyze_if_big(qualified: &str, above: i64) -> bool {
    let big = bytes(qualified).is_some_and(|b| b > above);
    if big {
        Spi::run(&format!("ANALYZE {qualified}")).or_fail("analyzing a staging table");
    }
    big
}
