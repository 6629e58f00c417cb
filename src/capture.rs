//! Capture: the `_rserv_log_()` trigger on master tables and `_rserv_debug_()`.
//!
//! The trigger is the only rserv code on the users' write path, so it does as little as
//! possible: it encodes the row identity and appends one row to `_rserv_log_` with
//! `heap_insert` (no SPI, no planner, no index, no permission check on the log), so ordinary
//! users of a replicated table need no rights on rserv's catalog. What it needs to know about
//! the table (key and watched columns) is worked out once per relcache entry, not per row.
//!
//! Trigger arguments, set by `rserv_add_table()`: `@<number of key columns>`, the key columns'
//! attribute numbers, then the watched columns' attribute numbers (none: every column is
//! watched). Attribute numbers survive renames. Triggers made by rserv 1.0 name the columns
//! instead (`<number>`, key names, watched names); they are still understood.

use crate::canonical::CanonicalOutput;
use crate::capture_check::{ensure_rserv_trigger, Claim};
use crate::error::fail;
use crate::sql::{call_hint, qualified};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::CStr;

static DEBUG_LEVEL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Set this session's debug level and return the previous one. At a level above 0 the
/// capture trigger reports every log row it writes (NOTICE); at 2 and above, also updates it
/// skipped because no watched column changed.
#[pg_extern(volatile, parallel_unsafe)]
fn _rserv_debug_(level: i32) -> i32 {
    DEBUG_LEVEL.swap(level, std::sync::atomic::Ordering::Relaxed)
}

fn debug_level() -> i32 {
    DEBUG_LEVEL.load(std::sync::atomic::Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// What the trigger knows about a table
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Config {
    /// the trigger this was read from (re-registration makes a new one)
    tgoid: pg_sys::Oid,
    /// the registered table changes are logged for: the table itself, or for a partition the
    /// partitioned table that was registered (its trigger is a clone of that table's)
    log_reloid: pg_sys::Oid,
    keys: Vec<i32>,
    /// None: every column is watched. Some: the registered watched columns plus every column of
    /// a unique index or exclusion constraint (a stale value there could collide on the slave)
    watched: Option<Vec<i32>>,
}

thread_local! {
    static CONFIGS: RefCell<HashMap<pg_sys::Oid, Config>> = RefCell::new(HashMap::new());
}

/// Relcache invalidation callback: a table's triggers, columns or indexes changed. It also
/// serves the apply's cache of which tables can be updated in place.
#[pg_guard]
unsafe extern "C-unwind" fn forget_relation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    crate::apply_rows::forget_relation(relid);
    CONFIGS.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            if relid == pg_sys::InvalidOid {
                c.clear();
            } else {
                c.remove(&relid);
            }
        }
    });
}

/// Register the backend-wide callbacks the capture trigger relies on (from `_PG_init`).
pub fn register_callbacks() {
    // SAFETY: registering a C callback with static lifetime, once per backend
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget_relation), pg_sys::Datum::from(0usize));
    }
}

/// The table's qualified name, computed only when a message needs it (not per row).
struct TableName<'a> {
    trigger: &'a PgTrigger<'a>,
    name: std::cell::OnceCell<String>,
}

impl<'a> TableName<'a> {
    fn new(trigger: &'a PgTrigger<'a>) -> Self {
        TableName {
            trigger,
            name: std::cell::OnceCell::new(),
        }
    }

    fn get(&self) -> &str {
        self.name.get_or_init(|| {
            qualified(
                &self.trigger.table_schema().unwrap_or_default(),
                &self.trigger.table_name().unwrap_or_default(),
            )
        })
    }
}

impl std::fmt::Display for TableName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

fn bad_arguments(table: &TableName) -> ! {
    fail(
        PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
        format!("_rserv_log_: trigger on table {table} has invalid arguments"),
        format!(
            "re-register the table: {}",
            call_hint("rserv_add_table", table.get(), "")
        ),
    )
}

/// Columns of the table's unique indexes and exclusion constraints: key columns, and those
/// their expressions and predicates use (PostgreSQL records each as a dependency of the index,
/// or of the constraint an index belongs to).
fn unique_index_columns(reloid: pg_sys::Oid) -> Vec<i32> {
    crate::sql::column_latest::<i32>(
        "SELECT DISTINCT a FROM ( \
           SELECT pg_catalog.unnest(i.indkey::pg_catalog.int2[])::pg_catalog.int4 AS a \
             FROM pg_catalog.pg_index i \
            WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND (i.indisunique OR i.indisexclusion) \
           UNION ALL \
           SELECT d.refobjsubid FROM pg_catalog.pg_depend d \
            WHERE d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
              AND d.refobjid OPERATOR(pg_catalog.=) $1 \
              AND ((d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                    AND d.objid IN (SELECT i.indexrelid FROM pg_catalog.pg_index i \
                                     WHERE i.indrelid OPERATOR(pg_catalog.=) $1 \
                                       AND (i.indisunique OR i.indisexclusion))) \
                OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass \
                    AND d.objid IN (SELECT c.oid FROM pg_catalog.pg_constraint c \
                                     WHERE c.conrelid OPERATOR(pg_catalog.=) $1 \
                                       AND c.contype IN ('p', 'u', 'x'))))) AS x \
         WHERE a OPERATOR(pg_catalog.>) 0",
        &[reloid.into()],
        "reading the table's unique indexes",
    )
}

/// The table whose trigger `tgoid` was cloned from (through every level of partitioning).
pub(crate) fn registered_root(tgoid: pg_sys::Oid) -> pg_sys::Oid {
    crate::sql::first_latest::<pg_sys::Oid>(
        "WITH RECURSIVE up(oid, relid, parent) AS ( \
           SELECT g.oid, g.tgrelid, g.tgparentid FROM pg_catalog.pg_trigger g \
            WHERE g.oid OPERATOR(pg_catalog.=) $1 \
           UNION ALL SELECT g.oid, g.tgrelid, g.tgparentid FROM pg_catalog.pg_trigger g \
             JOIN up ON g.oid OPERATOR(pg_catalog.=) up.parent) \
         SELECT relid FROM up WHERE parent OPERATOR(pg_catalog.=) 0",
        &[tgoid.into()],
        "finding the partitioned table a trigger belongs to",
    )
    .unwrap_or(pg_sys::InvalidOid)
}

/// Attribute numbers of the partitioned table `root` as attribute numbers of its partition
/// (whose columns may come in another order, or after dropped ones): matched by name.
fn root_attnums_here(root: pg_sys::Oid, here: pg_sys::Oid, args: &[String]) -> Vec<String> {
    args.iter()
        .map(|a| {
            crate::sql::first_latest::<i16>(
                "SELECT p.attnum FROM pg_catalog.pg_attribute r JOIN pg_catalog.pg_attribute p \
                   ON p.attname OPERATOR(pg_catalog.=) r.attname AND p.attrelid OPERATOR(pg_catalog.=) $2 \
                  WHERE r.attrelid OPERATOR(pg_catalog.=) $1 \
                    AND r.attnum OPERATOR(pg_catalog.=) $3::pg_catalog.int2 AND NOT p.attisdropped",
                &[root.into(), here.into(), a.parse::<i16>().unwrap_or(0).into()],
                "matching a partition's columns",
            )
            .map_or_else(|| "0".to_string(), |n| n.to_string())
        })
        .collect()
}

/// Read the trigger's arguments into attribute numbers of the table as it is now.
unsafe fn read_config(
    trigger: &PgTrigger,
    reloid: pg_sys::Oid,
    tupdesc: pg_sys::TupleDesc,
    table: &TableName,
) -> Config {
    // Everything below reads catalogs with SQL, inside the writer's statement: no operator or
    // function of the writer's search_path may resolve there (another role's `=` would run as
    // the writer). Restored when this returns.
    let _path = crate::security::internal_definer();
    // (once per table and backend: the result is cached by the caller)
    ensure_rserv_trigger(trigger, reloid, table.get(), Claim::Row);
    let mut args = trigger.extra_args().unwrap_or_default();
    let mut log_reloid = reloid;
    if trigger.trigger().tgisclone {
        // a partition: the arguments number the registered partitioned table's columns
        log_reloid = registered_root(trigger.trigger().tgoid);
        if args.len() > 1 && args[0].starts_with('@') {
            let mapped = root_attnums_here(log_reloid, reloid, &args[1..]);
            args.truncate(1);
            args.extend(mapped);
        }
    }
    let Some(first) = args.first() else {
        bad_arguments(table)
    };
    let (nkeys, by_number) = match first.strip_prefix('@') {
        Some(n) => (n.parse::<usize>().ok(), true),
        None => (first.parse::<usize>().ok(), false),
    };
    let nkeys = match nkeys {
        Some(n) if n >= 1 && n < args.len() => n,
        _ => bad_arguments(table),
    };
    let live = |attnum: i32| {
        attnum >= 1 && attnum <= (*tupdesc).natts && !attr(tupdesc, attnum).attisdropped
    };
    let attnum = |arg: &String| -> Option<i32> {
        if by_number {
            arg.parse::<i32>().ok().filter(|&n| live(n))
        } else {
            let cname = std::ffi::CString::new(arg.as_str()).ok()?;
            let n = pg_sys::SPI_fnumber(tupdesc, cname.as_ptr());
            (n > 0).then_some(n)
        }
    };
    let keys = args[1..=nkeys]
        .iter()
        .map(|a| match attnum(a) {
            Some(n) => n,
            None => fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "_rserv_log_: a key column registered for replication no longer exists in table {table}"
                ),
                format!(
                    "{}, then register the table again with its new key",
                    call_hint("rserv_remove_table", table.get(), "")
                ),
            ),
        })
        .collect();
    let watched = if nkeys + 1 == args.len() {
        None
    } else {
        let mut cols: Vec<i32> = args[nkeys + 1..].iter().filter_map(attnum).collect();
        if cols.is_empty() && by_number {
            // every watched column was dropped: watch everything rather than nothing
            None
        } else {
            for c in unique_index_columns(reloid) {
                if !cols.contains(&c) {
                    cols.push(c);
                }
            }
            Some(cols)
        }
    };
    Config {
        tgoid: trigger.trigger().tgoid,
        log_reloid,
        keys,
        watched,
    }
}

unsafe fn config(
    trigger: &PgTrigger,
    reloid: pg_sys::Oid,
    tupdesc: pg_sys::TupleDesc,
    table: &TableName,
) -> Config {
    let tgoid = trigger.trigger().tgoid;
    let cached = CONFIGS.with(|c| {
        c.borrow()
            .get(&reloid)
            .filter(|x| x.tgoid == tgoid)
            .cloned()
    });
    if let Some(c) = cached {
        return c;
    }
    let c = read_config(trigger, reloid, tupdesc, table);
    CONFIGS.with(|m| m.borrow_mut().insert(reloid, c.clone()));
    c
}

// ---------------------------------------------------------------------------------------------
// Encoding and logging
// ---------------------------------------------------------------------------------------------

thread_local! {
    /// (trigger function, its extension's _rserv_log_): the log to append to, looked up once
    /// per backend. A new extension brings a new function OID, so this never goes stale.
    static LOG_REL: Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

pub(crate) unsafe fn log_relation(tgfoid: pg_sys::Oid) -> pg_sys::Oid {
    let (f, log) = LOG_REL.with(|c| c.get());
    if f == tgfoid && log != pg_sys::InvalidOid {
        return log;
    }
    // The log lives in the schema of the trigger function: the extension's schema.
    let nsp = pg_sys::get_func_namespace(tgfoid);
    let log = pg_sys::get_relname_relid(c"_rserv_log_".as_ptr(), nsp);
    if log == pg_sys::InvalidOid {
        fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            "_rserv_log_: the rserv catalog table _rserv_log_ is missing",
            "reinstall the extension: DROP EXTENSION rserv; CREATE EXTENSION rserv",
        );
    }
    LOG_REL.with(|c| c.set((tgfoid, log)));
    log
}

/// Identity of one row as canonical text, one element per key column.
unsafe fn key_text(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    keys: &[i32],
    table: &TableName,
) -> Vec<String> {
    key_text_named(tuple, tupdesc, keys, table.get())
}

unsafe fn key_text_named(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    keys: &[i32],
    table: &str,
) -> Vec<String> {
    let _canonical = CanonicalOutput::enter();
    keys.iter()
        .map(|&attnum| {
            let mut isnull = false;
            let datum = pg_sys::SPI_getbinval(tuple, tupdesc, attnum, &mut isnull);
            if isnull {
                let name = CStr::from_ptr(pg_sys::SPI_fname(tupdesc, attnum)).to_string_lossy();
                fail(
                    PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                    format!("_rserv_log_: key column \"{name}\" of table {table} is NULL"),
                    "rows of a replicated table need a non-NULL identity",
                );
            }
            let typoid = pg_sys::SPI_gettypeid(tupdesc, attnum);
            let mut out_fn = pg_sys::InvalidOid;
            let mut is_varlena = false;
            pg_sys::getTypeOutputInfo(typoid, &mut out_fn, &mut is_varlena);
            let text = pg_sys::OidOutputFunctionCall(out_fn, datum);
            CStr::from_ptr(text).to_string_lossy().into_owned()
        })
        .collect()
}

unsafe fn attr(tupdesc: pg_sys::TupleDesc, attnum: i32) -> &'static pg_sys::FormData_pg_attribute {
    #[cfg(not(feature = "pg18"))]
    return &*(*tupdesc).attrs.as_ptr().add((attnum - 1) as usize);
    // PostgreSQL 18 keeps the full attributes after compact ones: its TupleDescAttr() finds them
    #[cfg(feature = "pg18")]
    return &*pg_sys::TupleDescAttr(tupdesc, attnum - 1);
}

/// Binary equality of one column in two row versions. Values that are equal but stored
/// differently count as changed: that only logs a row too many, never one too few.
unsafe fn column_unchanged(
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    attnum: i32,
) -> bool {
    let a = attr(tupdesc, attnum);
    if a.attisdropped {
        return true;
    }
    let (mut n1, mut n2) = (false, false);
    let d1 = pg_sys::SPI_getbinval(old, tupdesc, attnum, &mut n1);
    let d2 = pg_sys::SPI_getbinval(new, tupdesc, attnum, &mut n2);
    if n1 || n2 {
        return n1 == n2;
    }
    if a.attbyval {
        return d1.value() == d2.value();
    }
    let (p1, p2) = (d1.cast_mut_ptr::<u8>(), d2.cast_mut_ptr::<u8>());
    let len = match a.attlen {
        l if l > 0 => l as usize,
        -1 => {
            let l1 = pgrx::varlena::varsize_any(p1 as *const pg_sys::varlena);
            if l1 != pgrx::varlena::varsize_any(p2 as *const pg_sys::varlena) {
                return false;
            }
            l1
        }
        _ => {
            return CStr::from_ptr(p1 as *const std::ffi::c_char)
                == CStr::from_ptr(p2 as *const std::ffi::c_char)
        }
    };
    std::slice::from_raw_parts(p1, len) == std::slice::from_raw_parts(p2, len)
}

/// What a log row says happened to its identity (the `deleted` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logged {
    /// inserted (NULL): it did not exist before this transaction's change. Every way an
    /// identity can stop existing logs it as gone, so an identity the window logged only as
    /// inserted (or inserted and updated) was absent at the window's start: the slave loads it
    /// without looking for it first.
    Inserted,
    /// updated in place (false); rserv 1.0 also logged inserts so
    Updated,
    /// possibly gone (true): deleted, the old identity of a key change, a partition emptied or
    /// detached, a TRUNCATE (`key` NULL), or marked by `rserv_touch`
    Gone,
}

impl Logged {
    fn datum(self) -> (pg_sys::Datum, bool) {
        match self {
            Logged::Inserted => (pg_sys::Datum::from(false), true),
            Logged::Updated => (pg_sys::Datum::from(false), false),
            Logged::Gone => (pg_sys::Datum::from(true), false),
        }
    }
}

/// Append one row to `_rserv_log_`: (table, writer's top-level xid, what happened, identity).
/// `key` None records a TRUNCATE of the whole table.
unsafe fn append_log(
    trigger: &PgTrigger,
    table: &TableName,
    reloid: pg_sys::Oid,
    deleted: Logged,
    key: Option<&[String]>,
) {
    insert_log_row(log_relation(trigger.trigger().tgfoid), reloid, deleted, key);
    if debug_level() > 0 {
        let what = match key {
            None => "TRUNCATE".to_string(),
            Some(k) => format!("key {k:?}"),
        };
        notice!("_rserv_log_: {} {} {:?}", table, what, deleted);
    }
}

/// Append one row to log `log_oid` with `heap_insert` (no privilege needed on the log).
pub unsafe fn insert_log_row(
    log_oid: pg_sys::Oid,
    reloid: pg_sys::Oid,
    deleted: Logged,
    key: Option<&[String]>,
) {
    let xid = pg_sys::GetTopFullTransactionId().value as i64;
    let key_datum = match key {
        None => pg_sys::Datum::from(0usize),
        Some(parts) => {
            let mut elems: Vec<pg_sys::Datum> = parts
                .iter()
                .map(|p| {
                    pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
                        p.as_ptr() as *const std::ffi::c_char,
                        p.len() as i32,
                    ))
                })
                .collect();
            pg_sys::Datum::from(pg_sys::construct_array(
                elems.as_mut_ptr(),
                elems.len() as i32,
                pg_sys::TEXTOID,
                -1,
                false,
                pg_sys::TYPALIGN_INT as std::ffi::c_char,
            ))
        }
    };
    let log = pg_sys::table_open(log_oid, pg_sys::RowExclusiveLock as i32);
    // a log made by rserv 1.0 takes no NULL until clean-up relaxes it: an insert is logged as
    // an update there (the slave then updates in place or inserts: exact either way)
    let deleted = match deleted {
        Logged::Inserted if attr((*log).rd_att, 3).attnotnull => Logged::Updated,
        other => other,
    };
    let (deleted, inserted) = deleted.datum();
    let mut values = [
        pg_sys::Datum::from(reloid.to_u32()),
        pg_sys::Datum::from(xid),
        deleted,
        key_datum,
    ];
    let mut nulls = [false, false, inserted, key.is_none()];
    let tuple = pg_sys::heap_form_tuple((*log).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::simple_heap_insert(log, tuple);
    pg_sys::table_close(log, pg_sys::NoLock as i32);
    crate::wakeup::something_logged();
}

thread_local! {
    /// (transaction, command, partitioned table) whose TRUNCATE is under way: its partitions'
    /// own TRUNCATE triggers, which fire right after, then have nothing to add.
    static ROOT_TRUNCATED: Cell<(u64, u32, pg_sys::Oid)> =
        const { Cell::new((0, 0, pg_sys::InvalidOid)) };
}

fn command() -> (u64, u32) {
    // SAFETY: plain reads of the backend's transaction state
    unsafe {
        (
            pg_sys::GetTopFullTransactionIdIfAny().value,
            pg_sys::GetCurrentCommandId(false),
        )
    }
}

/// A TRUNCATE of a replicated table. Arguments: none (an ordinary table: the whole table is
/// gone); `@root` (a registered partitioned table, before it and its partitions are emptied);
/// `@part, <root>, <root's key attribute numbers>` (a partition of one, emptied on its own:
/// only its rows leave the partitioned table, so each of their identities is logged as deleted).
unsafe fn truncated(trigger: &PgTrigger, table: &TableName, reloid: pg_sys::Oid) {
    let args = trigger.extra_args().unwrap_or_default();
    // (this command, before anything below can advance its id)
    let (x, c) = command();
    let part_of = match args.first().map(String::as_str) {
        Some("@part") if args.len() > 2 => {
            Some(pg_sys::Oid::from(args[1].parse::<u32>().unwrap_or(0)))
        }
        _ => None,
    };
    if let Some(root) = part_of {
        // the whole tree is being emptied: its root's trigger logged that, once (and logging
        // nothing is all a look-alike could get here)
        if ROOT_TRUNCATED.with(|r| r.get()) == (x, c, root) {
            return;
        }
    }
    // as in read_config: nothing of the writer's search_path may resolve in rserv's SQL
    let _path = crate::security::internal_definer();
    let claim = match part_of {
        Some(root) => Claim::PartTruncate { root },
        None => Claim::Truncate,
    };
    ensure_rserv_trigger(trigger, reloid, table.get(), claim);
    match (args.first().map(String::as_str), part_of) {
        (Some("@root"), _) => {
            ROOT_TRUNCATED.with(|r| r.set((x, c, reloid)));
            append_log(trigger, table, reloid, Logged::Gone, None);
        }
        (_, Some(root)) => log_every_identity(trigger, table, reloid, root, &args[2..]),
        _ => append_log(trigger, table, reloid, Logged::Gone, None),
    }
}

/// Log every identity in partition `part` as deleted from `root`.
unsafe fn log_every_identity(
    trigger: &PgTrigger,
    _table: &TableName,
    part: pg_sys::Oid,
    root: pg_sys::Oid,
    root_keys: &[String],
) {
    log_rows_of(
        log_relation(trigger.trigger().tgfoid),
        root,
        part,
        root_keys,
        Logged::Gone,
    );
}

/// Log every row of partition `part` of registered table `root` as an identity of `root`:
/// deleted (the partition was emptied or detached) or present (attached). `root_keys`: the key
/// columns' attribute numbers in `root`. Read as the partition's owner, who may read it
/// whoever changes it.
pub unsafe fn log_rows_of(
    log_oid: pg_sys::Oid,
    root: pg_sys::Oid,
    part: pg_sys::Oid,
    root_keys: &[String],
    deleted: Logged,
) {
    let here = root_attnums_here(root, part, root_keys);
    let info = crate::catalog::table_info(part);
    let names: Vec<String> = here
        .iter()
        .map(|a| {
            crate::sql::first_latest::<String>(
                "SELECT pg_catalog.quote_ident(attname) FROM pg_catalog.pg_attribute \
                  WHERE attrelid OPERATOR(pg_catalog.=) $1 AND attnum OPERATOR(pg_catalog.=) $2::pg_catalog.int2",
                &[part.into(), a.parse::<i16>().unwrap_or(0).into()],
                "naming a partition's key columns",
            )
            .unwrap_or_default()
        })
        .collect();
    let sql = crate::sql::c_string(&format!(
        "SELECT {} FROM ONLY {}",
        names.join(", "),
        info.qualified()
    ));
    let keys: Vec<i32> = (1..=names.len() as i32).collect();
    let name = info.qualified();
    crate::security::run_as_owner(info.owner, &[], || {
        // Every row there is, whatever this transaction's isolation: the partition is locked
        // ACCESS EXCLUSIVE (TRUNCATE, ATTACH, DETACH), so no writer is left in progress, and a
        // REPEATABLE READ snapshot taken earlier would miss rows committed since.
        pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
        pg_sys::SPI_connect();
        pg_sys::SPI_execute(sql.as_ptr(), true, 0);
        let tuptable = pg_sys::SPI_tuptable;
        if !tuptable.is_null() {
            for i in 0..pg_sys::SPI_processed as usize {
                let tuple = *(*tuptable).vals.add(i);
                let key = key_text_named(tuple, (*tuptable).tupdesc, &keys, &name);
                insert_log_row(log_oid, root, deleted, Some(&key));
            }
        }
        pg_sys::SPI_finish();
        pg_sys::PopActiveSnapshot();
    });
}

/// The capture trigger (AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW, and AFTER TRUNCATE
/// FOR EACH STATEMENT). Logs which row identities changed; prepare later reads their
/// current contents, so intermediate values never need to be stored.
#[pg_trigger]
fn _rserv_log_<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let td = trigger.trigger_data();
    let event = td.tg_event;
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    // SAFETY: tg_relation and the tuples are valid for the duration of a trigger call
    unsafe {
        let rel = td.tg_relation;
        let reloid = (*rel).rd_id;
        let table = TableName::new(trigger);
        if op == pg_sys::TRIGGER_EVENT_TRUNCATE {
            truncated(trigger, &table, reloid);
            return Ok(None);
        }
        if event & pg_sys::TRIGGER_EVENT_BEFORE != 0 {
            fail(
                PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
                "_rserv_log_: must be fired AFTER the change",
                "",
            );
        }
        if event & pg_sys::TRIGGER_EVENT_ROW == 0 {
            fail(
                PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
                "_rserv_log_: can't process STATEMENT events other than TRUNCATE",
                "",
            );
        }
        let tupdesc = (*rel).rd_att;
        let cfg = config(trigger, reloid, tupdesc, &table);
        match op {
            pg_sys::TRIGGER_EVENT_INSERT => {
                let key = key_text(td.tg_trigtuple, tupdesc, &cfg.keys, &table);
                append_log(
                    trigger,
                    &table,
                    cfg.log_reloid,
                    Logged::Inserted,
                    Some(&key),
                );
            }
            pg_sys::TRIGGER_EVENT_DELETE => {
                let key = key_text(td.tg_trigtuple, tupdesc, &cfg.keys, &table);
                append_log(trigger, &table, cfg.log_reloid, Logged::Gone, Some(&key));
            }
            _ => {
                let (old, new) = (td.tg_trigtuple, td.tg_newtuple);
                let key_changed = cfg
                    .keys
                    .iter()
                    .any(|&a| !column_unchanged(old, new, tupdesc, a));
                let watched_changed = key_changed
                    || match &cfg.watched {
                        None => {
                            (1..=(*tupdesc).natts).any(|a| !column_unchanged(old, new, tupdesc, a))
                        }
                        Some(cols) => cols
                            .iter()
                            .any(|&a| !column_unchanged(old, new, tupdesc, a)),
                    };
                if !watched_changed {
                    if debug_level() > 1 {
                        notice!(
                            "_rserv_log_: UPDATE on {table} changed no watched column: not logged"
                        );
                    }
                    return Ok(None);
                }
                // The old identity is gone, the new one holds the row: it did not exist
                // before (a unique key), unless something logged as gone held it.
                let now = if key_changed {
                    let old_key = key_text(old, tupdesc, &cfg.keys, &table);
                    append_log(
                        trigger,
                        &table,
                        cfg.log_reloid,
                        Logged::Gone,
                        Some(&old_key),
                    );
                    Logged::Inserted
                } else {
                    Logged::Updated
                };
                let key = key_text(new, tupdesc, &cfg.keys, &table);
                append_log(trigger, &table, cfg.log_reloid, now, Some(&key));
            }
        }
    }
    Ok(None)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn logged() -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                "SELECT format('%s %s', CASE WHEN deleted THEN 't' WHEN NOT deleted THEN 'f' ELSE 'i' END, key) \
                 FROM _rserv_log_ ORDER BY 1",
                None,
                &[],
            )?
            .map(|r| r.get::<String>(1).map(|v| v.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
    }

    #[pg_test]
    fn identity_text_ignores_session_settings() {
        Spi::run(
            "CREATE TABLE ev (at timestamptz, score float8, b bytea[], PRIMARY KEY (at, score, b));
             SELECT rserv_add_table('ev');
             SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kathmandu'; SET extra_float_digits = -3;
             SET bytea_output = 'escape';
             INSERT INTO ev VALUES ('2024-03-01 10:00:00+00', 0.1::float8 + 0.2::float8, ARRAY['\\x01ff'::bytea]);",
        )
        .unwrap();
        // the writer's session would print "01/03/2024 15:45:00 +0545", "0.3" and escape bytea
        assert_eq!(
            logged(),
            vec!["i {\"2024-03-01 10:00:00+00\",0.30000000000000004,\"{\\\"\\\\\\\\x01ff\\\"}\"}"]
        );
    }

    #[pg_test]
    fn updates_log_only_watched_changes_and_both_keys() {
        Spi::run(
            "CREATE TABLE c (id int PRIMARY KEY, watched text, other text);
             INSERT INTO c VALUES (1, 'a', 'b');
             SELECT rserv_add_table('c', 'watched');
             UPDATE c SET other = 'not logged';
             UPDATE c SET watched = 'logged';
             UPDATE c SET id = 2;
             DELETE FROM c;",
        )
        .unwrap();
        // the update of an unwatched column logged nothing; the key change logged both keys
        assert_eq!(logged(), vec!["f {1}", "i {2}", "t {1}", "t {2}"]);
    }

    #[pg_test]
    fn each_change_logs_what_happened() {
        Spi::run(
            "CREATE TABLE w (id int PRIMARY KEY, v text);
             SELECT rserv_add_table('w');
             INSERT INTO w VALUES (1, 'a'), (2, 'b');
             UPDATE w SET v = 'c' WHERE id = 1;
             UPDATE w SET id = 3 WHERE id = 2;
             DELETE FROM w WHERE id = 1;",
        )
        .unwrap();
        // inserted (NULL), updated in place (false), possibly gone (true): the old key of a
        // key change and a delete are gone, the new key of a key change is inserted
        assert_eq!(
            logged(),
            vec!["f {1}", "i {1}", "i {2}", "i {3}", "t {1}", "t {2}"]
        );
    }

    #[pg_test]
    fn unique_columns_count_as_watched() {
        Spi::run(
            "CREATE TABLE u (id int PRIMARY KEY, w text, code text UNIQUE, other text);
             INSERT INTO u VALUES (1, 'a', 'x', 'o');
             SELECT rserv_add_table('u', 'w');
             UPDATE u SET other = 'not logged';
             UPDATE u SET code = 'y';",
        )
        .unwrap();
        assert_eq!(logged(), vec!["f {1}"]);
    }

    #[pg_test]
    fn truncate_logs_a_null_key() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t'); TRUNCATE t;")
            .unwrap();
        assert_eq!(logged(), vec!["t "]);
    }

    #[pg_test]
    fn debug_level_round_trips() {
        assert_eq!(
            Spi::get_one::<i32>("SELECT _rserv_debug_(2)").unwrap(),
            Some(0)
        );
        assert_eq!(
            Spi::get_one::<i32>("SELECT _rserv_debug_(0)").unwrap(),
            Some(2)
        );
    }
}
