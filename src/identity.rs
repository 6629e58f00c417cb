//! What may be replicated and how its rows are identified, the same on master and slave
//! (`registry.rs`, `slave_registry.rs`): permanent ordinary or partitioned tables only; the
//! identity is the primary key or a unique NOT NULL key, never of a type whose text form
//! depends on session settings; other columns a registration names are watched columns.

use crate::catalog::{table_columns, Column, TableInfo};
use crate::error::{fail, SpiOrFail};
use crate::sql::first;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Types whose text form depends on session settings or catalog state, so two sessions could
/// disagree on a row's identity (also as a domain's base type or an array's element type).
const UNSTABLE_KEY_TYPES: &[pg_sys::Oid] = &[
    pg_sys::MONEYOID,
    pg_sys::REGCLASSOID,
    pg_sys::REGPROCOID,
    pg_sys::REGPROCEDUREOID,
    pg_sys::REGOPEROID,
    pg_sys::REGOPERATOROID,
    pg_sys::REGTYPEOID,
    pg_sys::REGCONFIGOID,
    pg_sys::REGDICTIONARYOID,
    pg_sys::REGNAMESPACEOID,
    pg_sys::REGROLEOID,
    pg_sys::REGCOLLATIONOID,
];

fn unstable_key_type(typoid: pg_sys::Oid) -> bool {
    // SAFETY: syscache look-ups of an existing type
    unsafe {
        let base = pg_sys::getBaseType(typoid);
        let elem = pg_sys::get_element_type(base);
        let t = if elem == pg_sys::InvalidOid {
            base
        } else {
            pg_sys::getBaseType(elem)
        };
        UNSTABLE_KEY_TYPES.contains(&t)
    }
}

/// Unique indexes usable as row identity: valid, not partial, no expressions, every column NOT
/// NULL. The primary key, if any, comes first.
fn identity_candidates(reloid: pg_sys::Oid) -> Vec<(bool, Vec<String>)> {
    Spi::connect(|client| {
        let tab = client.select(
            "SELECT i.indisprimary, \
                    array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull) \
             FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND k.ord <= i.indnkeyatts \
             GROUP BY i.indexrelid, i.indisprimary \
             ORDER BY i.indisprimary DESC, i.indexrelid",
            None,
            &[reloid.into()],
        )?;
        let mut out = Vec::new();
        for r in tab {
            let primary = r.get::<bool>(1)?.unwrap_or(false);
            let cols = r.get::<Vec<String>>(2)?.unwrap_or_default();
            if r.get::<bool>(3)?.unwrap_or(false) {
                out.push((primary, cols));
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading the table's unique indexes")
}

/// Only permanent ordinary and partitioned tables can be replicated: a temporary table has no
/// master state to follow, and an unlogged one is emptied by crash recovery without any trigger
/// firing, which would leave a slave silently different. A partitioned table is replicated with
/// every partition it has and will have.
pub fn check_table_kind(info: &TableInfo) {
    let table = info.qualified();
    match info.relkind.as_str() {
        "r" | "p" => {}
        _ => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is not a table"),
            "only ordinary tables can be replicated",
        ),
    }
    match info.persistence.as_str() {
        "t" => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is a temporary table"),
            "temporary tables cannot be replicated",
        ),
        "u" => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is an unlogged table"),
            format!(
                "crash recovery empties unlogged tables without telling rserv; make it logged first: ALTER TABLE {table} SET LOGGED"
            ),
        ),
        _ => {}
    }
    let member = first::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend WHERE classid = 'pg_catalog.pg_class'::regclass \
         AND objid = $1 AND deptype = 'e')",
        &[info.reloid.into()],
        "checking extension membership",
    )
    .unwrap_or(false);
    if member {
        fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} belongs to an extension"),
            "tables of extensions (such as rserv's own catalog) are not replicated",
        );
    }
}

/// Columns named by the user: one column name exactly as written, or a comma-separated list.
fn named_columns(info: &TableInfo, cols: &[Column], column_name: &str) -> Vec<String> {
    let exists = |n: &str| cols.iter().any(|c| c.name == n);
    let names: Vec<String> = if exists(column_name) {
        vec![column_name.to_string()]
    } else {
        column_name
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    for n in &names {
        if !exists(n) {
            let list: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "rserv: column \"{n}\" does not exist in table {}",
                    info.qualified()
                ),
                format!("columns of {} are: {}", info.qualified(), list.join(", ")),
            );
        }
    }
    names
}

/// Row identity and watched columns for a registration. `watched` None = every column.
pub struct Identity {
    pub key: Vec<String>,
    pub watched: Option<Vec<String>>,
}

/// `registered`: the identity of an existing registration, which stays the identity when
/// `column_name` names watched columns (or nothing).
pub fn resolve_identity(
    info: &TableInfo,
    column_name: Option<&str>,
    registered: Option<&Vec<String>>,
) -> Identity {
    let table = info.qualified();
    let cols = table_columns(info.reloid);
    let candidates = identity_candidates(info.reloid);
    let named = column_name.map(|c| named_columns(info, &cols, c));

    // A column list that is exactly a unique NOT NULL key is the identity (`MasterAddTable db
    // test k`); anything else names watched columns and the primary key is the identity.
    let as_key = named.as_ref().and_then(|n| {
        let mut want = n.clone();
        want.sort();
        candidates.iter().find(|(_, c)| {
            let mut have = c.clone();
            have.sort();
            have == want
        })
    });
    let identity = match (as_key, &named) {
        (Some((_, key)), _) => Identity {
            key: key.clone(),
            watched: None,
        },
        (None, named) => match registered.or_else(|| {
            candidates
                .iter()
                .find(|(primary, _)| *primary)
                .map(|(_, c)| c)
        }) {
            Some(pk) => Identity {
                key: pk.clone(),
                watched: named.clone(),
            },
            None => {
                let uniques: Vec<String> = candidates
                    .iter()
                    .map(|(_, c)| format!("'{}'", c.join(",")))
                    .collect();
                let hint = if uniques.is_empty() {
                    format!("add a primary key: ALTER TABLE {table} ADD PRIMARY KEY (...)")
                } else {
                    format!(
                        "add a primary key, or pass a unique NOT NULL key as column_name: {}",
                        uniques.join(" or ")
                    )
                };
                let what = match named {
                    Some(n) => format!(
                        "rserv: table {table} has no primary key and \"{}\" is not a unique NOT NULL key",
                        n.join(",")
                    ),
                    None => format!("rserv: table {table} has no primary key"),
                };
                fail(PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION, what, hint)
            }
        },
    };
    for k in &identity.key {
        if let Some(c) = cols.iter().find(|c| &c.name == k) {
            if unstable_key_type(c.type_oid) {
                fail(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "rserv: key column \"{k}\" of table {table} has type {}, whose text form depends on session settings",
                        c.type_name
                    ),
                    "use a primary key of another type",
                );
            }
        }
    }
    identity
}

pub fn describe(identity: &Identity) -> String {
    let watched = match &identity.watched {
        None => "all columns".to_string(),
        Some(w) => w.join(", "),
    };
    format!(
        "identity ({}), watched: {}",
        identity.key.join(", "),
        watched
    )
}
