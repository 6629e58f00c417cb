//! Building and running SQL: the server's own quoting, one-row look-ups, transaction-local
//! settings. Names and values are never pasted into statements any other way.

use crate::error::{fail, SpiOrFail};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

/// A Rust string as a C string; names and values with NUL bytes are refused.
pub fn c_string(s: &str) -> CString {
    match CString::new(s) {
        Ok(c) => c,
        Err(_) => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "rserv: names and values may not contain NUL bytes",
            "",
        ),
    }
}

/// `quote_ident()`: the server's own identifier quoting.
pub fn quote_ident(s: &str) -> String {
    let c = c_string(s);
    // SAFETY: quote_identifier returns its argument or a palloc'd copy, both valid C strings
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `quote_literal()`: the server's own literal quoting.
pub fn quote_literal(s: &str) -> String {
    let c = c_string(s);
    // SAFETY: quote_literal_cstr returns a palloc'd, NUL-terminated string
    unsafe { CStr::from_ptr(pg_sys::quote_literal_cstr(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `SELECT func('table')` with the table name quoted as a literal, for hints users can paste.
pub fn call_hint(func: &str, table: &str, extra: &str) -> String {
    format!("SELECT {func}({}{extra})", quote_literal(table))
}

/// Schema-qualified, quoted name of a relation, e.g. `public."Order Lines"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// Comma-separated quoted identifiers.
pub fn ident_list(names: &[String]) -> String {
    names
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// First column of the first row, or None when the query returns no row (or NULL).
/// `Spi::get_one` treats "no row" as an error; catalog look-ups need the difference.
pub fn first<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
) -> Option<T> {
    Spi::connect_mut(|client| {
        let tab = client.update(sql, Some(1), args)?;
        match tab.into_iter().next() {
            Some(row) => row.get::<T>(1),
            None => Ok(None),
        }
    })
    .or_fail(context)
}

/// Every value of the first column.
pub fn column<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
) -> Vec<T> {
    Spi::connect(|client| {
        client
            .select(sql, None, args)?
            .filter_map(|r| r.get::<T>(1).transpose())
            .collect::<Result<Vec<_>, _>>()
    })
    .or_fail(context)
}

/// `SET LOCAL name = value` through set_config(), so nothing is pasted into SQL.
pub fn set_local(name: &str, value: &str) {
    Spi::run_with_args(
        "SELECT pg_catalog.set_config($1, $2, true)",
        &[name.into(), value.into()],
    )
    .or_fail("changing a setting");
}

/// Number of rows a data-changing statement touched (run through `WITH d AS (... RETURNING 1)`).
pub fn count_rows(sql: &str, args: &[pgrx::datum::DatumWithOid], context: &str) -> i64 {
    first::<i64>(
        &format!("WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d"),
        args,
        context,
    )
    .unwrap_or(0)
}
