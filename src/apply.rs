//! Apply on the slave: one transaction per change set.
//!
//! `replicate` calls, in one slave transaction: `rserv_apply_begin()` (locks, checks the sync
//! id and the master, records the new sync id), then per section `rserv_apply_stage()` (checks
//! the table and returns the COPY command that loads the section's rows: a DELETE section's
//! keys into a staging table, an INSERT section's rows straight into the table), the COPY
//! itself, and `rserv_apply_merge()` (the set-based DELETE; an INSERT from a staging table when
//! the caller may not write the table itself), then COMMIT. Any error anywhere rolls the whole
//! change set back.

use crate::common::{
    call_hint, definer, drop_temp_table, ext_schema, ext_version, fail, first, grant_to_caller,
    qualified, quote_ident, require_replicator, set_canonical_settings_local, set_local,
    table_columns, SpiOrFail,
};
use crate::registry::slave_table;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::sync::atomic::{AtomicU64, Ordering};

/// `rserv.allow_slave_writes`: let this session write to slave tables.
pub static ALLOW_SLAVE_WRITES: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn register_gucs() {
    GucRegistry::define_bool_guc(
        c"rserv.allow_slave_writes",
        c"Allow local writes to tables this database receives from an rserv master.",
        c"Off by default: local writes make a slave differ from its master.",
        &ALLOW_SLAVE_WRITES,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// Top-level transaction that called rserv_apply_begin(); stage and merge require it.
static APPLYING_XACT: AtomicU64 = AtomicU64::new(0);

fn current_xact() -> u64 {
    // SAFETY: plain read of the backend's transaction state
    unsafe { pg_sys::GetTopFullTransactionIdIfAny().value }
}

fn require_apply_begun() {
    let x = current_xact();
    if x == 0 || APPLYING_XACT.load(Ordering::Relaxed) != x {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "rserv: call rserv_apply_begin() first, in the same transaction",
            "",
        );
    }
}

/// Last change set applied on this slave (the seed's GetSyncID); NULL if none yet.
#[pg_extern(stable, security_definer)]
fn rserv_slave_sync_id() -> Option<i64> {
    let _definer = definer();
    let s = ext_schema();
    first::<i64>(
        &format!("SELECT syncid FROM {s}._rserv_slave_sync_"),
        &[],
        "reading _rserv_slave_sync_",
    )
}

/// Master node id this slave follows; NULL before the first apply.
#[pg_extern(stable, security_definer)]
fn rserv_slave_master_id() -> Option<String> {
    let _definer = definer();
    let s = ext_schema();
    first::<String>(
        &format!("SELECT master::text FROM {s}._rserv_slave_sync_"),
        &[],
        "reading _rserv_slave_sync_",
    )
}

/// Start applying change set `syncid` from master `master` (its rserv_node_id()) running rserv
/// `version`. Returns false when this slave already has that change set or a newer one: the
/// caller rolls back, nothing else is done (an old or repeated change set is a no-op).
/// Concurrent appliers on one slave queue here: the second sees the first's sync id.
#[pg_extern(volatile, security_definer)]
fn rserv_apply_begin(syncid: i64, master: String, version: String) -> bool {
    let _definer = definer();
    require_replicator("rserv_apply_begin");
    // SAFETY: reading backend transaction state
    if !unsafe { pg_sys::IsTransactionBlock() } {
        fail(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "rserv_apply_begin() must run inside a transaction block",
            "BEGIN; SELECT rserv_apply_begin(...); ...; COMMIT",
        );
    }
    let s = ext_schema();
    let own = ext_version();
    if own != version {
        fail(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("rserv: the master runs rserv {version} but this slave runs rserv {own}"),
            "install the same rserv version on both and run ALTER EXTENSION rserv UPDATE",
        );
    }
    Spi::run(&format!(
        "LOCK TABLE {s}._rserv_slave_sync_ IN EXCLUSIVE MODE"
    ))
    .or_fail("locking _rserv_slave_sync_");
    // Compared as uuid, so any spelling of the same id matches and a malformed one is an error.
    let current = Spi::connect(|client| {
        let tab = client.select(
            &format!("SELECT syncid, master::text, master = $1::uuid FROM {s}._rserv_slave_sync_"),
            None,
            &[master.clone().into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_slave_sync_");
    if let Some((applied, from, same)) = &current {
        if !same {
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("rserv: this slave follows master {from}, but the change set comes from master {master}"),
                "replicate each slave from one master only; to switch masters, reset the slave: DELETE FROM _rserv_slave_sync_ (after making its tables equal to the new master)",
            );
        }
        if *applied >= syncid {
            notice!(
                "rserv: slave is already at change set {}; change set {} skipped",
                applied,
                syncid
            );
            return false;
        }
    }
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_slave_sync_ AS x (syncid, synctime, master) VALUES ($1, now(), $2::uuid) \
             ON CONFLICT (singleton) DO UPDATE SET syncid = excluded.syncid, synctime = excluded.synctime"
        ),
        &[syncid.into(), master.into()],
    )
    .or_fail("recording the sync id");
    // Replica mode: user triggers and foreign keys of the slave do not fire for replicated
    // rows (as in built-in logical replication); the change set as a whole is consistent.
    set_local("session_replication_role", "replica");
    // The master is told this change set is applied right after COMMIT returns: it must be
    // durable by then, whatever the slave's own synchronous_commit.
    set_local("synchronous_commit", "on");
    set_local("work_mem", "64MB");
    set_canonical_settings_local();
    APPLYING_XACT.store(current_xact(), Ordering::Relaxed);
    true
}

#[derive(Clone)]
struct Target {
    reloid: pg_sys::Oid,
    table: String,
    key: Vec<String>,
    columns: Vec<String>,
}

/// A section's table as resolved in the current apply transaction, so that its stage and
/// merge calls (and the DELETE and INSERT sections of one table) check the catalogs once.
struct Resolved {
    schema: String,
    name: String,
    columns: Vec<String>,
    key: Vec<String>,
    /// the master's column types were checked too
    typed: bool,
    target: Target,
    key_stage: Option<String>,
    may_insert: Option<bool>,
}

thread_local! {
    static RESOLVED: std::cell::RefCell<(u64, Vec<Resolved>)> =
        const { std::cell::RefCell::new((0, Vec::new())) };
}

/// Run `f` on this transaction's cache entry for `t`, if there is one.
fn with_resolved<R>(t: &Target, f: impl FnOnce(&mut Resolved) -> R) -> Option<R> {
    let x = current_xact();
    RESOLVED.with(|r| {
        let mut r = r.borrow_mut();
        if r.0 != x {
            return None;
        }
        r.1.iter_mut()
            .find(|e| e.target.reloid == t.reloid && e.target.columns == t.columns)
            .map(f)
    })
}

thread_local! {
    /// Tables emptied by a TRUNCATE section in the current apply transaction: their rows are
    /// COPYed straight in (no staging, no merge), which makes initial copies write once.
    static EMPTIED: std::cell::RefCell<(u64, Vec<pg_sys::Oid>)> =
        const { std::cell::RefCell::new((0, Vec::new())) };
}

fn emptied(reloid: pg_sys::Oid) -> bool {
    let x = current_xact();
    EMPTIED.with(|e| {
        let e = e.borrow();
        e.0 == x && e.1.contains(&reloid)
    })
}

fn mark_emptied(reloid: pg_sys::Oid) {
    let x = current_xact();
    EMPTIED.with(|e| {
        let mut e = e.borrow_mut();
        if e.0 != x {
            *e = (x, Vec::new());
        }
        e.1.push(reloid);
    });
}

/// Check a section against this slave's registration and columns, by name.
/// Type names as format_type() prints them, without a schema qualification that depends on
/// each side's search_path.
fn unqualified(type_name: &str) -> &str {
    match type_name.rfind('.') {
        Some(i) if !type_name[..i].contains('(') => &type_name[i + 1..],
        _ => type_name,
    }
}

/// Rows the master sends as `master_type` text must load into this slave's column: the same
/// type, or one the master's type converts to implicitly or on assignment.
fn check_type(table: &str, column: &str, master_type: &str, slave: &crate::common::Column) {
    if unqualified(master_type) == unqualified(&slave.type_name) {
        return;
    }
    let ok = first::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_cast WHERE castsource = pg_catalog.to_regtype($1) \
           AND casttarget = $2 AND castcontext IN ('a', 'i'))",
        &[master_type.into(), slave.type_oid.into()],
        "checking column types",
    )
    .unwrap_or(false);
    if !ok {
        fail(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "rserv: column \"{column}\" of table {table} is {master_type} on the master but {} on this slave",
                slave.type_name
            ),
            format!(
                "make the types match, e.g. on the slave: ALTER TABLE {table} ALTER COLUMN {} TYPE {master_type}",
                quote_ident(column)
            ),
        );
    }
}

fn resolve_target(
    schema: &str,
    name: &str,
    columns: &[String],
    key: &[String],
    types: Option<&[String]>,
) -> Target {
    let x = current_xact();
    let cached = RESOLVED.with(|r| {
        let r = r.borrow();
        if r.0 != x {
            return None;
        }
        r.1.iter()
            .find(|e| {
                e.schema == schema
                    && e.name == name
                    && e.columns == columns
                    && e.key == key
                    && (e.typed || types.is_none())
            })
            .map(|e| e.target.clone())
    });
    if let Some(t) = cached {
        return t;
    }
    let t = resolve_uncached(schema, name, columns, key, types);
    RESOLVED.with(|r| {
        let mut r = r.borrow_mut();
        if r.0 != x {
            *r = (x, Vec::new());
        }
        r.1.push(Resolved {
            schema: schema.to_string(),
            name: name.to_string(),
            columns: columns.to_vec(),
            key: key.to_vec(),
            typed: types.is_some(),
            target: t.clone(),
            key_stage: None,
            may_insert: None,
        });
    });
    t
}

fn resolve_uncached(
    schema: &str,
    name: &str,
    columns: &[String],
    key: &[String],
    types: Option<&[String]>,
) -> Target {
    let table = qualified(schema, name);
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
            }
        }
    }
    Target {
        reloid,
        table,
        key: key.to_vec(),
        columns: columns.to_vec(),
    }
}

fn ident_list(cols: &[String]) -> String {
    cols.iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn temp_table_exists(name: &str) -> bool {
    first::<bool>(
        "SELECT pg_catalog.to_regclass('pg_temp.' || pg_catalog.quote_ident($1)) IS NOT NULL",
        &[name.into()],
        "looking up a temp table",
    )
    .unwrap_or(false)
}

/// COPY straight into a slave table runs as the calling role: only when it may insert there
/// (and no row-level security policy stands in the way: COPY FROM refuses those tables).
fn caller_may_insert(t: &Target) -> bool {
    if let Some(Some(known)) = with_resolved(t, |e| e.may_insert) {
        return known;
    }
    let may = first::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, c.oid, 'INSERT') AND NOT c.relrowsecurity \
         FROM pg_catalog.pg_class c WHERE c.oid = $2",
        &[crate::common::outer_user().into(), t.reloid.into()],
        "checking the caller's privileges",
    )
    .unwrap_or(false);
    with_resolved(t, |e| e.may_insert = Some(may));
    may
}

/// The staging table for DELETE sections' keys: one per key shape (the key columns' types,
/// type modifiers and collations) and calling role, shared by every table of that shape. It
/// lives as long as the session and is emptied at every commit (ON COMMIT DELETE ROWS):
/// creating and dropping a table in every cycle would cost more catalog writes than a small
/// change set has rows, and one table per replicated table would make every commit empty them
/// all. Its columns k1..kn have the key's own types (so ANALYZE gives the planner real
/// statistics for the join) and collations (so the comparison is the table's own).
fn key_stage(t: &Target) -> String {
    if let Some(Some(known)) = with_resolved(t, |e| e.key_stage.clone()) {
        return known;
    }
    let signature = first::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format_type(a.atttypid, a.atttypmod) \
                || ' ' || a.attcollation::text, ',' \
                ORDER BY pg_catalog.array_position($2::text[], a.attname::text)) \
         FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = $1 AND a.attname::text = ANY ($2) AND NOT a.attisdropped",
        &[t.reloid.into(), t.key.clone().into()],
        "reading the key columns",
    )
    .unwrap_or_default();
    // FNV-1a: the same name in every backend and build
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{signature}/{}", crate::common::outer_user().to_u32()).bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let name = format!("_rserv_keys_{hash:016x}");
    if !temp_table_exists(&name) {
        let cols: Vec<String> = t
            .key
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} AS k{}", quote_ident(k), i + 1))
            .collect();
        Spi::run(&format!(
            "CREATE TEMP TABLE {} ON COMMIT DELETE ROWS AS SELECT {} FROM ONLY {} AS t WITH NO DATA",
            quote_ident(&name),
            cols.join(", "),
            t.table
        ))
        .or_fail("creating the key staging table");
        grant_to_caller("INSERT", &format!("pg_temp.{}", quote_ident(&name)));
    }
    let stage = format!("pg_temp.{}", quote_ident(&name));
    with_resolved(t, |e| e.key_stage = Some(stage.clone()));
    stage
}

fn key_stage_columns(t: &Target) -> String {
    (1..=t.key.len())
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-transaction staging table for whole rows (UPDATE sections, and INSERT sections
/// the caller may not COPY straight into the table).
fn row_stage(t: &Target) -> String {
    drop_temp_table("_rserv_stage_");
    Spi::run(&format!(
        "CREATE TEMP TABLE _rserv_stage_ ON COMMIT DROP AS SELECT {} FROM ONLY {} WITH NO DATA",
        ident_list(&t.columns),
        t.table
    ))
    .or_fail("creating the staging table");
    grant_to_caller("INSERT", "pg_temp._rserv_stage_");
    format!(
        "COPY pg_temp._rserv_stage_ ({}) FROM STDIN",
        ident_list(&t.columns)
    )
}

fn direct_copy(t: &Target) -> String {
    drop_temp_table("_rserv_stage_");
    format!("COPY {} ({}) FROM STDIN", t.table, ident_list(&t.columns))
}

/// Prepare one section of the change set. TRUNCATE is carried out at once and returns NULL;
/// the others return the COPY command that loads the section's rows: into a staging table
/// (DELETE: the keys; UPDATE: whole rows), or for INSERT straight into the table when the
/// caller may write there.
#[pg_extern(volatile, security_definer)]
fn rserv_apply_stage(
    section: &str,
    schema_name: &str,
    table_name: &str,
    columns: Vec<String>,
    key_columns: Vec<String>,
    column_types: default!(Option<Vec<String>>, "NULL"),
) -> Option<String> {
    let _definer = definer();
    require_apply_begun();
    let t = resolve_target(
        schema_name,
        table_name,
        &columns,
        &key_columns,
        column_types.as_deref(),
    );
    match section {
        "TRUNCATE" => {
            // DELETE, not TRUNCATE: in replica mode it leaves referencing slave tables alone,
            // and the change set's own sections bring those to the master's state.
            Spi::run(&format!("DELETE FROM ONLY {}", t.table)).or_fail("emptying the table");
            mark_emptied(t.reloid);
            None
        }
        "DELETE" => {
            if t.columns != t.key {
                fail(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!(
                        "rserv: the DELETE section of table {} must carry exactly its key columns ({})",
                        t.table,
                        t.key.join(", ")
                    ),
                    "the change set is damaged: prepare it again on the master",
                );
            }
            let stage = key_stage(&t);
            // whatever an earlier DELETE section of this transaction left there is not ours
            Spi::run(&format!("DELETE FROM {stage}")).or_fail("emptying the key staging table");
            Some(format!(
                "COPY {stage} ({}) FROM STDIN",
                key_stage_columns(&t)
            ))
        }
        "INSERT" if caller_may_insert(&t) => Some(direct_copy(&t)),
        "UPDATE" if emptied(t.reloid) && caller_may_insert(&t) => Some(direct_copy(&t)),
        "INSERT" | "UPDATE" => Some(row_stage(&t)),
        other => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("rserv: unknown change set section \"{other}\""),
            "sections are TRUNCATE, DELETE, INSERT and UPDATE",
        ),
    }
}

/// A large staging table deserves statistics before it is joined with the real one.
/// Returns whether it was large.
fn analyze_if_big(stage: &str, bytes: i64) -> bool {
    let big = first::<bool>(
        "SELECT pg_catalog.pg_relation_size($1::regclass) > $2",
        &[stage.into(), bytes.into()],
        "sizing the staging table",
    )
    .unwrap_or(false);
    if big {
        Spi::run(&format!("ANALYZE {stage}")).or_fail("analyzing the staging table");
    }
    big
}

/// Delete the rows whose identity is staged in `stage` (aliased `s`); `matches` pairs each key
/// column with its staged value.
fn delete_staged(t: &Target, stage: &str, matches: Vec<String>) -> i64 {
    Spi::get_one::<i64>(&format!(
        "WITH d AS (DELETE FROM ONLY {} AS t USING {stage} AS s WHERE {} RETURNING 1) \
         SELECT count(*) FROM d",
        t.table,
        matches.join(" AND ")
    ))
    .or_fail("deleting changed rows")
    .unwrap_or(0)
}

/// Key staging table: column k<i> holds key column i.
fn delete_keys(t: &Target, stage: &str) -> i64 {
    let matches = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("t.{} = s.k{}", quote_ident(k), i + 1))
        .collect();
    delete_staged(t, stage, matches)
}

/// Whole-row staging table: same column names as the table.
fn delete_rows(t: &Target, stage: &str) -> i64 {
    let matches = t
        .key
        .iter()
        .map(|k| format!("t.{0} = s.{0}", quote_ident(k)))
        .collect();
    delete_staged(t, stage, matches)
}

fn insert_staged(t: &Target) -> i64 {
    Spi::get_one::<i64>(&format!(
        "WITH i AS (INSERT INTO {0} ({1}) OVERRIDING SYSTEM VALUE \
         SELECT {1} FROM pg_temp._rserv_stage_ RETURNING 1) SELECT count(*) FROM i",
        t.table,
        ident_list(&t.columns)
    ))
    .or_fail("inserting changed rows")
    .unwrap_or(0)
}

/// Merge the staged section into its table. DELETE: rows whose identity is staged are
/// deleted (the master sends every changed identity there first, so INSERT sections never
/// meet a transient duplicate, whatever order the master changed rows in). INSERT: staged
/// rows are inserted. UPDATE: both, from one staging table. Returns the number of rows
/// written (INSERT, UPDATE) or removed (DELETE); -1 when the rows were COPYed straight into
/// the table (the caller counted them).
#[pg_extern(volatile, security_definer)]
fn rserv_apply_merge(
    section: &str,
    schema_name: &str,
    table_name: &str,
    columns: Vec<String>,
    key_columns: Vec<String>,
) -> i64 {
    let _definer = definer();
    require_apply_begun();
    if section == "TRUNCATE" {
        return 0;
    }
    if section != "DELETE" && !temp_table_exists("_rserv_stage_") {
        return -1;
    }
    let t = resolve_target(schema_name, table_name, &columns, &key_columns, None);
    if section == "DELETE" {
        let stage = key_stage(&t);
        let big = analyze_if_big(&stage, 1024 * 1024);
        let deleted = delete_keys(&t, &stage);
        if big {
            // give the space back now rather than keep a large table for the session
            Spi::run(&format!("TRUNCATE {stage}")).or_fail("emptying the key staging table");
        }
        return deleted;
    }
    analyze_if_big("pg_temp._rserv_stage_", 8 * 1024 * 1024);
    if section == "UPDATE" {
        delete_rows(&t, "pg_temp._rserv_stage_");
    }
    let inserted = insert_staged(&t);
    Spi::run("DROP TABLE pg_temp._rserv_stage_").or_fail("dropping the staging table");
    inserted
}
