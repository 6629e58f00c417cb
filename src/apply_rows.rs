//! Apply: rows staged as text (UPSERT and UPDATE sections) merged into their table, as its
//! owner.
//!
//! An UPSERT section carries the current rows of identities the window only updated in place.
//! Applying one as UPDATE ... FROM the stage rewrites each row where it is (no delete and
//! re-insert: HOT-friendly, no index churn for unchanged keys) and loads any row the slave
//! lacks. That is exact only where no other unique index or exclusion constraint than the
//! identity's can make two rows collide while some are updated and others not yet (PostgreSQL
//! checks them row by row: two rows swapping a unique value would fail). A table with one is
//! applied as the UPDATE section is: the staged identities deleted, then the rows inserted, in
//! one statement each, which never meets a transient duplicate.

use crate::apply::{apply_settings, delete_staged, staged_identity};
use crate::apply_target::Target;
use crate::security::run_as_owner;
use crate::sql::{count_rows, first, ident_list, quote_ident};
use pgrx::pg_sys;
use std::cell::RefCell;
use std::collections::HashMap;

/// Up to this many staged rows, the merge looks each one up by the table's index instead of
/// hashing the table: the planner cannot know how few rows a session-lived stage holds.
const FEW_ROWS: i64 = 2000;

/// `apply_settings()`, plus index look-ups for a stage of few rows.
pub(crate) fn settings(staged: i64) -> Vec<(&'static str, &'static str)> {
    let mut s = apply_settings();
    if staged <= FEW_ROWS {
        s.push(("enable_hashjoin", "off"));
        s.push(("enable_mergejoin", "off"));
    }
    s
}

/// Run a data-changing statement on a stage's rows, counting the rows it touched. With the
/// settings for a stage of few rows its plan is kept (index look-ups whatever the count up to
/// [`FEW_ROWS`]); a larger stage's statement is planned for the rows it holds.
pub(crate) fn merge_count(sql: &str, settings: &[(&str, &str)], context: &str) -> i64 {
    if settings.contains(&("enable_hashjoin", "off")) {
        crate::sql::kept_count_rows(sql, &[], context)
    } else {
        count_rows(sql, &[], context)
    }
}

/// Rows in a staging table rserv made.
pub(crate) fn staged_rows(stage: &str) -> i64 {
    crate::sql::kept_first::<i64>(
        &format!("SELECT count(*) FROM {stage}"),
        &[],
        "counting staged rows",
    )
    .unwrap_or(0)
}

/// The staged text as the slave column's type, as COPY would read it (modifiers applied on
/// assignment, so a value too long for the slave's column is an error, not cut).
fn value(t: &Target, i: usize) -> String {
    format!(
        "s.c{}::{}",
        i + 1,
        crate::catalog::format_type(t.slave_columns[i].type_oid, -1)
    )
}

/// Every staged column as its slave column's type, in the order of `t.columns`.
fn all_values(t: &Target) -> String {
    (0..t.columns.len())
        .map(|i| value(t, i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replace the rows whose identity is staged with the staged rows: delete, then insert.
pub(crate) fn replace_staged(t: &Target, stage: &str) -> i64 {
    let staged = staged_rows(stage);
    let matches = staged_identity(t, |_, name| {
        t.columns.iter().position(|c| c == name).unwrap_or(0)
    });
    delete_staged(t, stage, &matches, &settings(staged));
    let values = all_values(t);
    let sql = format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {values} FROM {stage} AS s",
        t.table,
        ident_list(&t.columns)
    );
    run_as_owner(t.owner, &apply_settings(), || {
        count_rows(&sql, &[], "inserting changed rows")
    })
}

thread_local! {
    /// (table, its key) -> whether its rows can be updated in place; only ordinary tables,
    /// forgotten when their relcache entry is invalidated (an index, column or key changed).
    static IN_PLACE: RefCell<HashMap<(pg_sys::Oid, Vec<String>), bool>> =
        RefCell::new(HashMap::new());
}

/// A table's relcache entry was invalidated (its indexes or columns may have changed; every
/// table when `relid` is InvalidOid): called from the capture's relcache callback, so rserv
/// takes one of PostgreSQL's ten relcache callback slots, not two.
pub fn forget_relation(relid: pg_sys::Oid) {
    IN_PLACE.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if relid == pg_sys::InvalidOid {
                c.clear();
            } else {
                c.retain(|(r, _), _| *r != relid);
            }
        }
    });
}

/// Whether the rows of `t` can be updated where they are: not with another unique index or
/// exclusion constraint (on the table or any partition of it), nor with a non-key column of
/// the slave's that only takes generated values (GENERATED ALWAYS AS IDENTITY refuses
/// UPDATE ... SET), nor with an ON UPDATE rule that fires in replica mode (ENABLE ALWAYS or
/// REPLICA: PostgreSQL refuses DO ALSO and DO INSTEAD rules on the `WITH ... RETURNING` the
/// UPDATE runs in, and rows replaced never met such a rule before rserv updated in place). Remembered for an ordinary table (a partition's own index invalidates the
/// partition, not its root: a partitioned table is looked at every time).
fn in_place_possible(t: &Target) -> bool {
    let id = (t.reloid, t.key.clone());
    if let Some(known) = IN_PLACE.with(|c| c.borrow().get(&id).copied()) {
        return known;
    }
    let possible = query_in_place(t);
    if !t.only.is_empty() {
        IN_PLACE.with(|c| c.borrow_mut().insert(id, possible));
    }
    possible
}

fn query_in_place(t: &Target) -> bool {
    first::<bool>(
        "WITH rels AS (SELECT $1::pg_catalog.oid AS relid \
                       UNION SELECT relid FROM pg_catalog.pg_partition_tree($1)) \
         SELECT NOT EXISTS ( \
                  SELECT 1 FROM pg_catalog.pg_index i JOIN rels ON rels.relid = i.indrelid \
                   WHERE (i.indisunique OR i.indisexclusion) \
                     AND (i.indisexclusion OR i.indexprs IS NOT NULL OR i.indpred IS NOT NULL \
                          OR (SELECT pg_catalog.array_agg(a.attname::pg_catalog.text COLLATE \"C\" ORDER BY a.attname::pg_catalog.text COLLATE \"C\") \
                                FROM pg_catalog.pg_attribute a \
                               WHERE a.attrelid = i.indrelid \
                                 AND a.attnum = ANY ((i.indkey::pg_catalog.int2[])[0:i.indnkeyatts - 1])) \
                             IS DISTINCT FROM \
                             (SELECT pg_catalog.array_agg(k COLLATE \"C\" ORDER BY k COLLATE \"C\") \
                                FROM pg_catalog.unnest($2::pg_catalog.text[]) AS k))) \
            AND NOT EXISTS ( \
                  SELECT 1 FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                     AND a.attidentity = 'a' AND a.attname::pg_catalog.text <> ALL ($2::pg_catalog.text[])) \
            AND NOT EXISTS ( \
                  SELECT 1 FROM pg_catalog.pg_rewrite r JOIN rels ON rels.relid = r.ev_class \
                   WHERE r.ev_type = '2' AND r.ev_enabled IN ('A', 'R'))",
        &[t.reloid.into(), t.key.clone().into()],
        "checking whether rows can be updated in place",
    )
    .unwrap_or(false)
}

/// Merge an UPSERT section: the staged rows updated in place (those the slave lacks
/// inserted), or replaced where updating in place could collide. Returns the rows written.
pub(crate) fn merge_upsert(t: &Target, stage: &str) -> i64 {
    let non_key: Vec<usize> = (0..t.columns.len())
        .filter(|&i| !t.key.contains(&t.columns[i]))
        .collect();
    if !in_place_possible(t) {
        return replace_staged(t, stage);
    }
    let staged = staged_rows(stage);
    let settings = settings(staged);
    let matches = staged_identity(t, |_, name| {
        t.columns.iter().position(|c| c == name).unwrap_or(0)
    });
    let updated = if non_key.is_empty() {
        // nothing to rewrite: a row that is there is already what the master has (read as
        // the owner: the key's equality operator may be the owner's code)
        let sql = format!(
            "SELECT count(*) FROM {stage} AS s WHERE EXISTS (SELECT 1 FROM {}{} AS t WHERE {matches})",
            t.only, t.table
        );
        run_as_owner(t.owner, &settings, || {
            first::<i64>(&sql, &[], "looking for staged rows").unwrap_or(0)
        })
    } else {
        let set = non_key
            .iter()
            .map(|&i| format!("{} = {}", quote_ident(&t.columns[i]), value(t, i)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE {}{} AS t SET {set} FROM {stage} AS s WHERE {matches}",
            t.only, t.table
        );
        run_as_owner(t.owner, &settings, || {
            merge_count(&sql, &settings, "updating changed rows")
        })
    };
    if updated >= staged {
        return updated;
    }
    // rows the slave lacks (a table received before rserv told inserts from updates)
    let values = all_values(t);
    let sql = format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {values} FROM {stage} AS s \
         WHERE NOT EXISTS (SELECT 1 FROM {}{} AS t WHERE {matches})",
        t.table,
        ident_list(&t.columns),
        t.only,
        t.table
    );
    let inserted = run_as_owner(t.owner, &settings, || {
        merge_count(&sql, &settings, "inserting changed rows")
    });
    updated + inserted
}
