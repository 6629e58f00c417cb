//! Building and running SQL: the server's own quoting, one-row look-ups, transaction-local
//! settings. Names and values are never pasted into statements any other way.

use crate::error::{fail, SpiOrFail};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData};
use pgrx::PgOid;
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

/// A statement's text, its argument types and whether it may write: what a kept plan is for.
type PlanKey = (String, Vec<pg_sys::Oid>, bool);

/// Plans of the statements rserv runs again and again (a daemon's cycle runs the same few
/// dozen catalog look-ups each time), kept for the session as PL/pgSQL keeps its statements'.
/// PostgreSQL's plan cache re-plans one when what it reads changes (DDL, ANALYZE, another
/// search_path, another role under row security). At most this many: statements that name
/// tables would otherwise grow with the number of tables.
const MAX_PLANS: usize = 256;

thread_local! {
    static PLANS: std::cell::RefCell<std::collections::HashMap<PlanKey, std::rc::Rc<OwnedPreparedStatement>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The kept plan of `sql` for arguments of these types (prepared on first use). The map is
/// not borrowed while a plan runs: a statement may fire code that runs rserv's own queries.
fn kept_plan(
    client: &SpiClient<'_>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    mutating: bool,
) -> Result<std::rc::Rc<OwnedPreparedStatement>, pgrx::spi::Error> {
    let key: PlanKey = (
        sql.to_string(),
        args.iter().map(|a| a.oid()).collect(),
        mutating,
    );
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let types: Vec<PgOid> = key.1.iter().map(|o| PgOid::from(*o)).collect();
    let prepared = if mutating {
        client.prepare_mut(sql, &types)?
    } else {
        client.prepare(sql, &types)?
    };
    let plan = std::rc::Rc::new(prepared.keep());
    PLANS.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() >= MAX_PLANS {
            // per-table statements of a database with very many tables: start over
            p.clear();
        }
        p.insert(key, plan.clone());
    });
    Ok(plan)
}

/// Run a kept plan with PostgreSQL's generic plan for it: a kept statement's plan must not
/// depend on its arguments' values (see [`kept_first`]), and re-planning it for each call's
/// values (what the plan cache does while a custom plan looks cheaper) is the cost kept plans
/// are for saving. The setting is in force only while the statement runs (a GUC nest level,
/// closed here or by the transaction's abort): closing it also undoes any setting the
/// statement itself changed, so never for a statement that changes settings (`set_config`) or
/// runs a user's code.
fn generic<R>(args: usize, f: impl FnOnce() -> R) -> R {
    if args == 0 {
        return f(); // a statement without arguments always has its generic plan
    }
    // SAFETY: opens a GUC nest level closed below (or by the (sub)transaction's abort)
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    crate::security::set_option("plan_cache_mode", "force_generic_plan");
    let out = f();
    // SAFETY: closes the nest level opened above, restoring the session's own setting
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
    out
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

/// The first column of every row of the read-only query `sql`, read at the latest snapshot
/// (every transaction committed by now, and this one's own changes so far), not this
/// transaction's: for the capture trigger, whose relcache and catalog look-ups already see
/// what committed after a REPEATABLE READ transaction's snapshot (a table registered, a
/// partition or a unique index created since), so that its SQL reads agree with them.
/// (pgrx's SPI client runs a query read-write once the transaction has an xid, and a
/// read-write query takes the transaction's snapshot.)
pub fn column_latest<T: FromDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
) -> Vec<T> {
    let query = c_string(sql);
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.oid()).collect();
    let (mut values, nulls): (Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) = args
        .iter()
        .map(|a| match a.datum() {
            Some(d) => (d.sans_lifetime(), b' ' as std::ffi::c_char),
            None => (pg_sys::Datum::from(0usize), b'n' as std::ffi::c_char),
        })
        .unzip();
    let mut out = Vec::new();
    // SAFETY: a read-only query (it runs with the active snapshot, pushed and popped here; an
    // error's abort pops it and closes SPI); every value is converted to an owned Rust value
    // before SPI_finish frees the result
    unsafe {
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        pg_sys::SPI_connect();
        let rc = pg_sys::SPI_execute_with_args(
            query.as_ptr(),
            types.len() as i32,
            types.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_ptr(),
            true,
            0,
        );
        if rc != pg_sys::SPI_OK_SELECT as i32 {
            fail(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("rserv: {context}: SPI error {rc}"),
                "",
            );
        }
        let tuptable = pg_sys::SPI_tuptable;
        if !tuptable.is_null() {
            for i in 0..pg_sys::SPI_processed as usize {
                let tuple = *(*tuptable).vals.add(i);
                let mut is_null = false;
                let datum = pg_sys::SPI_getbinval(tuple, (*tuptable).tupdesc, 1, &mut is_null);
                if let Some(v) = T::from_datum(datum, is_null) {
                    out.push(v);
                }
            }
        }
        pg_sys::SPI_finish();
        pg_sys::PopActiveSnapshot();
    }
    out
}

/// [`column_latest`]'s first value.
pub fn first_latest<T: FromDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
) -> Option<T> {
    column_latest(sql, args, context).into_iter().next()
}

/// [`first`] with its plan kept for the session: for the catalog look-ups rserv repeats on
/// every call (a daemon's cycle runs the same few dozen), never for a statement whose best plan
/// depends on how many rows a stage or the log holds, or on planner settings changed around
/// it (PostgreSQL re-plans a kept plan when what it reads changes, not when settings do).
pub fn kept_first<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
) -> Option<T> {
    kept_rows(sql, args, context, true, Some(1), |r| r.get::<T>(1))
        .pop()
        .flatten()
}

/// A kept statement's rows (at most `limit`), each read by `read`, run with its generic plan.
fn kept_rows<R>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
    mutating: bool,
    limit: Option<std::ffi::c_long>,
    read: impl FnMut(SpiHeapTupleData<'_>) -> Result<R, pgrx::spi::Error>,
) -> Vec<R> {
    Spi::connect_mut(|client| {
        let plan = kept_plan(client, sql, args, mutating)?;
        let tab = generic(args.len(), || {
            if mutating {
                client.update(&*plan, limit, args)
            } else {
                client.select(&*plan, limit, args)
            }
        })?;
        tab.map(read).collect::<Result<Vec<_>, _>>()
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

/// Every row of a query, each read by `read` (the plan kept, see [`kept_first`]).
pub fn rows<R>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
    read: impl FnMut(SpiHeapTupleData<'_>) -> Result<R, pgrx::spi::Error>,
) -> Vec<R> {
    kept_rows(sql, args, context, false, None, read)
}

/// [`rows`] of a statement that writes (`... RETURNING`).
pub fn rows_mut<R>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
    read: impl FnMut(SpiHeapTupleData<'_>) -> Result<R, pgrx::spi::Error>,
) -> Vec<R> {
    kept_rows(sql, args, context, true, None, read)
}

/// Run a statement for its effect (its plan kept, see [`kept_first`]).
pub fn run(sql: &str, args: &[pgrx::datum::DatumWithOid], context: &str) {
    Spi::connect_mut(|client| {
        let plan = kept_plan(client, sql, args, true)?;
        // no forced generic plan here: its GUC nest level would undo a SET LOCAL the
        // statement makes (set_local runs through here)
        client.update(&*plan, None, args).map(|_| ())
    })
    .or_fail(context)
}

/// `SET LOCAL name = value`, as `set_config(name, value, true)` does: with the current user's
/// authority, for the transaction.
pub fn set_local(name: &str, value: &str) {
    // SAFETY: plain read of the backend's user state
    let context = if unsafe { pg_sys::superuser() } {
        pg_sys::GucContext::PGC_SUSET
    } else {
        pg_sys::GucContext::PGC_USERSET
    };
    set_config_option(name, value, context, pg_sys::GucAction::GUC_ACTION_LOCAL);
}

/// PostgreSQL's `set_config_option` for a session-level source: `context` is the authority it
/// is set with, `action` its scope (session, transaction or GUC nest level). Names and values
/// are passed as C strings, never pasted into SQL.
pub fn set_config_option(
    name: &str,
    value: &str,
    context: pg_sys::GucContext::Type,
    action: pg_sys::GucAction::Type,
) {
    let (n, v) = (c_string(name), c_string(value));
    // SAFETY: both strings live across the call; ERROR on a bad name or value
    unsafe {
        pg_sys::set_config_option(
            n.as_ptr(),
            v.as_ptr(),
            context,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            pg_sys::PGERROR as i32,
            false,
        );
    }
}

/// `current_setting(name)`, without a statement.
pub fn current_setting(name: &str) -> String {
    let n = c_string(name);
    // SAFETY: returns a palloc'd C string (ERROR for an unknown name)
    unsafe {
        CStr::from_ptr(pg_sys::GetConfigOptionByName(
            n.as_ptr(),
            std::ptr::null_mut(),
            false,
        ))
    }
    .to_string_lossy()
    .into_owned()
}

/// [`count_rows`] with its plan kept (see [`kept_first`]).
pub fn kept_count_rows(sql: &str, args: &[pgrx::datum::DatumWithOid], context: &str) -> i64 {
    kept_first::<i64>(
        &format!("WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d"),
        args,
        context,
    )
    .unwrap_or(0)
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
