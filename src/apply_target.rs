//! Apply on the slave: the table a section names, resolved and checked once per transaction.
//! The master names the table and its columns; the slave's table registered under that name
//! receives them (columns matched by name, extra slave columns allowed), and each column the
//! master sends must arrive unchanged: the same type, or one that holds every value without
//! rounding or a lossy cast (`lossless`).

use crate::catalog::{table_columns, table_info, Column};
use crate::error::fail;
use crate::slave_registry::slave_table;
use crate::sql::{call_hint, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// A section's table as resolved in the current apply transaction.
#[derive(Clone)]
pub(crate) struct Target {
    pub reloid: pg_sys::Oid,
    pub owner: pg_sys::Oid,
    pub table: String,
    /// `ONLY ` for an ordinary table; nothing for a partitioned one (its rows are in partitions)
    pub only: &'static str,
    pub key: Vec<String>,
    pub columns: Vec<String>,
    /// the slave's columns, in the order of `columns`
    pub slave_columns: Vec<Column>,
}

/// Type names as format_type() prints them, without a schema qualification that depends on
/// each side's search_path.
fn unqualified(type_name: &str) -> &str {
    match type_name.rfind('.') {
        Some(i) if !type_name[..i].contains('(') => &type_name[i + 1..],
        _ => type_name,
    }
}

/// The type and modifier a master's `format_type()` text names on this slave, if it exists.
fn parse_type(name: &str) -> Option<(pg_sys::Oid, i32)> {
    // to_regtype() never raises; parseTypeString() then cannot fail either
    crate::sql::kept_first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regtype($1)::oid",
        &[name.into()],
        "looking up a type",
    )?;
    let c = crate::sql::c_string(name);
    let (mut oid, mut typmod) = (pg_sys::InvalidOid, -1i32);
    // SAFETY: both out-parameters live across the call; the name exists (checked above)
    unsafe {
        #[cfg(any(feature = "pg14", feature = "pg15"))]
        pg_sys::parseTypeString(c.as_ptr(), &mut oid, &mut typmod, true);
        #[cfg(not(any(feature = "pg14", feature = "pg15")))]
        pg_sys::parseTypeString(c.as_ptr(), &mut oid, &mut typmod, std::ptr::null_mut());
    }
    (oid != pg_sys::InvalidOid).then_some((oid, typmod))
}

/// Does every value of the master's column type arrive unchanged in the slave's? The same type
/// with the same modifier (or none on the slave: `numeric` takes any `numeric(p,s)`), a wider
/// length where a too long value would be an error anyway, a domain over such a type (its
/// checks then apply, as errors), or a widening that loses nothing. A narrower modifier would
/// round or pad values silently (`numeric(10,3)` into `numeric(10,2)`), and so would an
/// implicit cast such as numeric to double precision: refused.
fn lossless(master: (pg_sys::Oid, i32), slave: &Column) -> bool {
    crate::sql::kept_first::<bool>(
        "WITH s AS (SELECT coalesce(nullif(t.typbasetype, 0), t.oid) AS t, \
                           CASE WHEN t.typbasetype <> 0 THEN t.typtypmod ELSE $4 END AS m \
                    FROM pg_catalog.pg_type t WHERE t.oid = $3), \
              widening(f, t) AS (VALUES \
                ('pg_catalog.int2'::pg_catalog.regtype, 'pg_catalog.int4'::pg_catalog.regtype), \
                ('pg_catalog.int2', 'pg_catalog.int8'), ('pg_catalog.int4', 'pg_catalog.int8'), \
                ('pg_catalog.int2', 'pg_catalog.numeric'), ('pg_catalog.int4', 'pg_catalog.numeric'), \
                ('pg_catalog.int8', 'pg_catalog.numeric'), ('pg_catalog.float4', 'pg_catalog.float8'), \
                ('pg_catalog.varchar', 'pg_catalog.text'), ('pg_catalog.text', 'pg_catalog.varchar'), \
                ('pg_catalog.cidr', 'pg_catalog.inet')) \
         SELECT CASE WHEN s.t = $1 THEN s.m = -1 OR s.m = $2 \
                          OR ($2 <> -1 AND s.m > $2 \
                              AND s.t IN ('pg_catalog.varchar'::pg_catalog.regtype, 'pg_catalog.varbit'::pg_catalog.regtype)) \
                     ELSE s.m = -1 AND EXISTS (SELECT 1 FROM widening w WHERE w.f = $1 AND w.t = s.t) \
                END FROM s",
        &[
            master.0.into(),
            master.1.into(),
            slave.type_oid.into(),
            slave.typmod.into(),
        ],
        "checking column types",
    )
    .unwrap_or(false)
}

/// Rows the master sends as `master_type` text must load into this slave's column without
/// losing anything (see `lossless`); otherwise the apply stops before it changes anything.
fn check_type(table: &str, column: &str, master_type: &str, slave: &Column) {
    // the same type, named from each side's schemas (a domain here is checked by its base: the
    // master sends its own domains' base types)
    // SAFETY: syscache look-up of an existing type
    let domain = unsafe { pg_sys::get_typtype(slave.type_oid) } as u8 == b'd';
    if !domain && unqualified(master_type) == unqualified(&slave.type_name) {
        return;
    }
    if parse_type(master_type).is_some_and(|m| lossless(m, slave)) {
        return;
    }
    fail(
        PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
        format!(
            "rserv: column \"{column}\" of table {table} is {master_type} on the master but {} on this slave",
            slave.type_name
        ),
        format!(
            "values would change on the way; make the types match, e.g. on the slave: ALTER TABLE {table} ALTER COLUMN {} TYPE {master_type}",
            quote_ident(column)
        ),
    );
}

pub(crate) fn resolve_uncached(
    schema: &str,
    name: &str,
    columns: &[String],
    key: &[String],
    types: Option<&[String]>,
) -> Target {
    let table = crate::sql::qualified(schema, name);
    let Some((reloid, slave_key)) = slave_table(schema, name) else {
        fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "rserv: table {table} is replicated by the master but not registered on this slave"
            ),
            format!(
                "on the slave, create the table and run: {}",
                call_hint("rserv_slave_add_table", &table, "")
            ),
        );
    };
    // No DDL may change the table between the checks below and the statements that use them.
    // SAFETY: a lock held until the end of the transaction, as any writer of the table takes
    unsafe {
        pg_sys::LockRelationOid(reloid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
    }
    let info = table_info(reloid);
    if !matches!(info.relkind.as_str(), "r" | "p") || info.persistence != "p" {
        fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: slave table {table} is not an ordinary logged table"),
            format!(
                "make it one, or stop receiving it: {}",
                call_hint("rserv_slave_remove_table", &table, "")
            ),
        );
    }
    let mut a = slave_key.clone();
    let mut b = key.to_vec();
    a.sort();
    b.sort();
    if a != b {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
            format!(
                "rserv: table {table} has identity ({}) on the master but ({}) on this slave",
                key.join(", "),
                slave_key.join(", ")
            ),
            "register the table with the same key on both sides",
        );
    }
    let cols = table_columns(reloid);
    let mut slave_columns = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        match cols.iter().find(|x| &x.name == c) {
            None => fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("rserv: column \"{c}\" of table {table} is sent by the master but does not exist on this slave"),
                format!("add the column on the slave: ALTER TABLE {table} ADD COLUMN {} ...", quote_ident(c)),
            ),
            Some(x) if x.generated => fail(
                PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                format!("rserv: column \"{c}\" of table {table} is generated on this slave but not on the master"),
                "define the column the same way on both sides",
            ),
            Some(x) => {
                if let Some(t) = types.and_then(|t| t.get(i)) {
                    check_type(&table, c, t, x);
                }
                slave_columns.push(x.clone());
            }
        }
    }
    // the master's generated columns (named after the types of the columns it sends)
    let generated_there = types
        .unwrap_or_default()
        .iter()
        .skip(columns.len())
        .filter_map(|t| t.strip_prefix(crate::sections::GENERATED_MARK));
    for c in generated_there {
        if cols.iter().any(|x| x.name == c && !x.generated) {
            fail(
                PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION,
                format!("rserv: column \"{c}\" of table {table} is generated on the master but not on this slave, where it would stay empty"),
                format!(
                    "define it the same way on the slave: ALTER TABLE {table} DROP COLUMN {0}, ADD COLUMN {0} ... GENERATED ALWAYS AS (...) STORED",
                    quote_ident(c)
                ),
            );
        }
    }
    Target {
        reloid,
        owner: info.owner,
        only: if info.relkind == "p" { "" } else { "ONLY " },
        table,
        key: key.to_vec(),
        columns: columns.to_vec(),
        slave_columns,
    }
}

/// The key columns of `t` (slave side), in key order.
pub(crate) fn key_columns(t: &Target) -> Vec<Column> {
    let cols = table_columns(t.reloid);
    t.key
        .iter()
        .filter_map(|k| cols.iter().find(|c| &c.name == k).cloned())
        .collect()
}
