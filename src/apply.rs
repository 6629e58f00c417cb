//! Apply on the slave: one transaction per change set.
//!
//! `replicate` calls, in one slave transaction: `rserv_apply_begin()` (locks, checks the sync
//! id and the master, records the new sync id), then per section `rserv_apply_stage()` (checks
//! the table and returns the COPY command that loads the section's rows), the COPY itself, and
//! `rserv_apply_merge()`, then COMMIT. Any error anywhere rolls the whole change set back.
//! A section's table is resolved and its columns checked in `apply_target.rs`.
//!
//! Every statement on a slave table runs as that table's owner, in replica mode (the slave's
//! own triggers and foreign keys stay quiet, as in built-in logical replication), under
//! SECURITY_RESTRICTED_OPERATION ([`run_as_owner`]); replica mode never outlives the statement,
//! except for a caller that may set it itself, for whom it stays on across the row sections
//! (`replica_window.rs`: each switch resets the session's plan cache).
//! The table owner consented by registering the table (`rserv_slave_add_table`); the calling
//! replication role decides which rows arrive, never what code runs.
//! - TRUNCATE: `DELETE FROM ONLY t` (without ONLY for a partitioned table), at once.
//! - DELETE: the caller COPYs the keys (text) into a staging table; merge deletes those rows.
//! - INSERT: the caller's `COPY t FROM STDIN` itself is run as the owner, straight into the
//!   table (see `apply_copy.rs`): the command stage returns is the only one allowed.
//! - UPDATE (written by 1.0 development builds): rows staged as text, then replaced.

use crate::apply_target::{key_columns, resolve_uncached, Target};
use crate::canonical::{set_canonical_settings_local, CANONICAL_SETTINGS};
use crate::catalog::{ext_schema, key_match};
use crate::error::{fail, SpiOrFail};
use crate::security::{apply_definer, definer, require_replicator, run_as_owner};
use crate::slave_registry::mark_copied;
use crate::sql::{first, ident_list, quote_ident, set_local};
use crate::staging;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

/// Settings of every statement on a slave table (besides search_path and row_security, which
/// run_as_owner always sets).
pub fn apply_settings() -> Vec<(&'static str, &'static str)> {
    let mut s = vec![("session_replication_role", "replica")];
    s.extend_from_slice(CANONICAL_SETTINGS);
    s
}

fn current_xact() -> u64 {
    // SAFETY: plain read of the backend's transaction state
    unsafe { pg_sys::GetTopFullTransactionIdIfAny().value }
}

/// The COPY of an INSERT section that stage() allowed: the only `COPY ... FROM STDIN` the
/// utility hook runs as the table's owner.
pub struct AllowedCopy {
    pub command: String,
    pub reloid: pg_sys::Oid,
    pub owner: pg_sys::Oid,
    pub done: bool,
}

/// A resolved section target with what it was resolved from: (schema, table, columns, key,
/// whether the master's column types were checked).
struct ResolvedTarget {
    schema: String,
    name: String,
    columns: Vec<String>,
    key: Vec<String>,
    typed: bool,
    target: Target,
}

#[derive(Default)]
struct ApplyState {
    /// top-level transaction that called rserv_apply_begin()
    xact: u64,
    /// targets resolved in this transaction (each is checked once)
    resolved: Vec<ResolvedTarget>,
    copy: Option<AllowedCopy>,
    /// the change set leaves identities it logged as inserted out of its DELETE section
    /// (feature `upsert`)
    in_place: bool,
    /// this slave is exactly at the change set's window start (the last change set it applied
    /// is the change set's `base`): an identity the window logged as inserted is not here yet.
    /// Not so when the master prepared this one before it learned of the last one applied (two
    /// `replicate` runs at once, or a confirm lost): then the windows overlap, and inserted
    /// rows are loaded as replacements (delete, then insert).
    exact_start: bool,
    /// tables a TRUNCATE section emptied in this change set
    emptied: Vec<pg_sys::Oid>,
    /// the INSERT section being applied was staged to replace rows, not COPYed in
    insert_staged: bool,
}

thread_local! {
    static STATE: RefCell<ApplyState> = RefCell::new(ApplyState::default());
}

fn require_apply_begun() {
    let x = current_xact();
    if x == 0 || STATE.with(|s| s.borrow().xact) != x {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
            "rserv: call rserv_apply_begin() first, in the same transaction",
            "",
        );
    }
}

/// The COPY stage() allowed in this apply transaction, if `command` is exactly it.
pub fn allowed_copy(command: &str) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    let x = current_xact();
    STATE.with(|s| {
        let s = s.borrow();
        if x == 0 || s.xact != x {
            return None;
        }
        s.copy
            .as_ref()
            .filter(|c| !c.done && c.command == command)
            .map(|c| (c.reloid, c.owner))
    })
}

pub fn copy_done() {
    STATE.with(|s| {
        if let Some(c) = s.borrow_mut().copy.as_mut() {
            c.done = true;
        }
    });
}

/// Last change set applied on this slave (the seed's GetSyncID); NULL if none yet.
#[pg_extern(stable, security_definer)]
fn rserv_slave_sync_id() -> Option<i64> {
    let _definer = definer();
    require_replicator("rserv_slave_sync_id");
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
    require_replicator("rserv_slave_master_id");
    let s = ext_schema();
    first::<String>(
        &format!("SELECT master::text FROM {s}._rserv_slave_sync_"),
        &[],
        "reading _rserv_slave_sync_",
    )
}

/// Start applying change set `syncid` from master `master` (its rserv_node_id()) running rserv
/// `version`, prepared for slave `server` (bound on the master to the database `slave_node`),
/// holding the changes since change set `base` (the last one the master knows this slave
/// applied; NULL for its first). Returns false when this slave already has that change set or
/// a newer one: the caller rolls back, nothing else is done (an old or repeated change set is a
/// no-op). Refused: a change set for another slave database or another server id, and one
/// that builds on a change set this slave has not applied (it was restored from a backup):
/// applying it would silently miss the changes in between; and one with the sync id this
/// slave applied last but another `fingerprint` (its master was restored from a backup and
/// issues that id again).
/// Master and slave may run different rserv versions: the change set is accepted by its
/// `format` and the `features` it uses (NULL: a caller older than rserv 1.1, which sends
/// format 1 without later features), and refused when this slave cannot apply them
/// (`negotiate.rs`).
/// `snapshot`: the master's snapshot of the change set (pg_snapshot's text form), recorded
/// for a failover to compare slaves by.
/// Concurrent appliers on one slave queue here: the second sees the first's sync id.
// The symbol carries the signature's version (1.0.0 had three arguments).
// (its SQL signature: each argument is a fact of the change set's header)
#[pg_extern(volatile, security_definer, name = "rserv_apply_begin")]
#[allow(clippy::too_many_arguments)] // the SQL signature: one argument per change-set header fact
fn rserv_apply_begin_v11(
    syncid: i64,
    master: String,
    version: String,
    server: default!(Option<i32>, "NULL"),
    base: default!(Option<i64>, "NULL"),
    slave_node: default!(Option<String>, "NULL"),
    fingerprint: default!(Option<String>, "NULL"),
    format: default!(Option<i32>, "NULL"),
    features: default!(Option<Vec<String>>, "NULL"),
    snapshot: default!(Option<String>, "NULL"),
) -> bool {
    let _definer = apply_definer();
    require_replicator("rserv_apply_begin");
    // SAFETY: reading backend transaction state
    if !unsafe { pg_sys::IsTransactionBlock() } {
        fail(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "rserv_apply_begin() must run inside a transaction block",
            "BEGIN; SELECT rserv_apply_begin(...); ...; COMMIT",
        );
    }
    let cs = ChangeSet {
        syncid,
        master,
        version,
        server,
        base,
        slave_node,
        fingerprint,
        format,
        features,
    };
    let Some(applied) = change_set_applies(&cs) else {
        return false;
    };
    let s = ext_schema();
    let in_place = cs.features.iter().flatten().any(|f| f == "upsert");
    let exact_start = applied.is_some() && applied == cs.base;
    let ChangeSet {
        syncid,
        master,
        server,
        fingerprint,
        ..
    } = cs;
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_slave_sync_ AS x (syncid, synctime, master, server, fingerprint, snapshot) \
             VALUES ($1, now(), $2::uuid, $3, $4::uuid, $5) \
             ON CONFLICT (singleton) DO UPDATE SET syncid = excluded.syncid, synctime = excluded.synctime, \
                 server = coalesce(excluded.server, x.server), fingerprint = excluded.fingerprint, \
                 snapshot = excluded.snapshot"
        ),
        &[
            syncid.into(),
            master.into(),
            server.into(),
            fingerprint.into(),
            snapshot.into(),
        ],
    )
    .or_fail("recording the sync id");
    // The master is told this change set is applied right after COMMIT returns: it must be
    // durable by then, whatever the slave's own synchronous_commit.
    set_local("synchronous_commit", "on");
    set_local("work_mem", "64MB");
    set_canonical_settings_local();
    let x = current_xact();
    STATE.with(|st| {
        *st.borrow_mut() = ApplyState {
            xact: x,
            in_place,
            exact_start,
            ..ApplyState::default()
        }
    });
    crate::replica_window::open();
    true
}

/// The facts of a change set's header that decide whether this slave applies it (see
/// `rserv_apply_begin`).
pub struct ChangeSet {
    pub syncid: i64,
    pub master: String,
    pub version: String,
    pub server: Option<i32>,
    pub base: Option<i64>,
    pub slave_node: Option<String>,
    pub fingerprint: Option<String>,
    pub format: Option<i32>,
    pub features: Option<Vec<String>>,
}

/// `rserv_apply_begin`'s checks of change set `cs`, recording nothing: false when this slave
/// has it already; an error when it must not apply it. Locks `_rserv_slave_sync_` until the
/// transaction ends (concurrent appliers queue here).
pub fn check_change_set(cs: &ChangeSet) -> bool {
    change_set_applies(cs).is_some()
}

/// [`check_change_set`]: None when this slave has the change set already, else the sync id of
/// the last change set it applied (None: none yet).
fn change_set_applies(cs: &ChangeSet) -> Option<Option<i64>> {
    let s = ext_schema();
    let (syncid, server, base) = (cs.syncid, cs.server, cs.base);
    let (master, fingerprint) = (&cs.master, &cs.fingerprint);
    crate::negotiate::require_readable(syncid, &cs.version, cs.format, cs.features.as_deref());
    Spi::run(&format!(
        "LOCK TABLE {s}._rserv_slave_sync_ IN EXCLUSIVE MODE"
    ))
    .or_fail("locking _rserv_slave_sync_");
    crate::failover::refuse_while_unchecked(&s);
    // Compared as uuid, so any spelling of the same id matches and a malformed one is an error.
    if let Some(node) = &cs.slave_node {
        require_this_node(node, server);
    }
    let current = Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT syncid, master::text, master = $1::uuid, server, \
                        fingerprint IS DISTINCT FROM $2::uuid AND fingerprint IS NOT NULL AND $2 IS NOT NULL \
                 FROM {s}._rserv_slave_sync_"
            ),
            None,
            &[master.clone().into(), fingerprint.clone().into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((
                r.get::<i64>(1)?.unwrap_or(0),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
                r.get::<i32>(4)?,
                r.get::<bool>(5)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_slave_sync_");
    if let (Some((_, _, true, Some(mine), _)), Some(server)) = (&current, server) {
        if *mine != server {
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("rserv: this slave database is slave {mine} of its master, but the change set was prepared for slave {server}"),
                format!("replicate it as --server {mine} (or without --server); under two ids its change sets could take it back in time"),
            );
        }
    }
    if let Some((applied, from, same, _, other_fingerprint)) = &current {
        if !same {
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("rserv: this slave follows master {from}, but the change set comes from master {master}"),
                "replicate each slave from one master only; to switch masters, reset the slave: DELETE FROM _rserv_slave_sync_ (after making its tables equal to the new master)",
            );
        }
        if *applied == syncid && *other_fingerprint {
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("rserv: this slave applied another change set {syncid} of this master: the master lost change sets it had prepared (was it restored from a backup, or failed over to a standby that missed transactions?), and this slave may hold changes the master no longer has"),
                "copy the slave afresh from this master: SELECT rserv_slave_resync(); on the slave, then replicate again",
            );
        }
        if *applied >= syncid {
            notice!(
                "rserv: slave is already at change set {}; change set {} skipped",
                applied,
                syncid
            );
            return None;
        }
    }
    let applied = current.as_ref().map(|c| c.0);
    if let Some(base) = base.filter(|b| applied.is_none_or(|a| a < *b)) {
        require_all_copied(&s, syncid, base, applied);
    }
    Some(applied)
}

/// A change set the master prepared for another slave database is refused.
fn require_this_node(node: &str, server: Option<i32>) {
    let s = ext_schema();
    let mine = crate::sql::kept_first::<bool>(
        &format!("SELECT node_id = $1::uuid FROM {s}._rserv_node_"),
        &[node.into()],
        "reading this database's node id",
    )
    .unwrap_or(false);
    if !mine {
        let id = server.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: the change set was prepared for slave {id}, which is another database (node {node})"),
            "give each slave database its own server id (replicate --server N, or no --server: replicate then finds this database's own)",
        );
    }
}

/// The change set holds what changed after change set `base`, which this slave never applied
/// (it has `applied`): the changes in between would be missing, unless every table it receives
/// gets a fresh copy in this change set anyway.
fn require_all_copied(s: &str, syncid: i64, base: i64, applied: Option<i64>) {
    let stale = first::<String>(
        &format!(
            "SELECT pg_catalog.string_agg(t.reloid::pg_catalog.regclass::text, ', ' ORDER BY 1) \
             FROM {s}._rserv_slave_tables_ t WHERE NOT t.needs_copy"
        ),
        &[],
        "reading _rserv_slave_tables_",
    );
    if let Some(tables) = stale {
        let has = applied
            .map(|a| format!("has change sets up to {a}"))
            .unwrap_or_else(|| "has applied no change set".into());
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "rserv: this slave {has}, but change set {syncid} follows change set {base}: the changes in between are missing here (was it restored from a backup?)"
            ),
            format!(
                "have its tables ({tables}) copied afresh: SELECT rserv_slave_resync(); on this slave, then replicate again"
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
    let cached = STATE.with(|s| {
        s.borrow()
            .resolved
            .iter()
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
    STATE.with(|s| {
        s.borrow_mut().resolved.push(ResolvedTarget {
            schema: schema.to_string(),
            name: name.to_string(),
            columns: columns.to_vec(),
            key: key.to_vec(),
            typed: types.is_some(),
            target: t.clone(),
        })
    });
    t
}

fn keys_stage(n: usize) -> String {
    staging::table(
        &format!("keys{n}"),
        &staging::text_columns(n),
        staging::Access {
            caller: "INSERT",
            public_select: true,
        },
    )
}

fn rows_stage(n: usize) -> String {
    staging::table(
        &format!("rows{n}"),
        &staging::text_columns(n),
        staging::Access {
            caller: "INSERT",
            public_select: true,
        },
    )
}

fn sequences_stage() -> String {
    staging::table(
        "sequences",
        &staging::text_columns(crate::sequences::COLUMNS.len()),
        staging::Access {
            caller: "INSERT",
            public_select: true,
        },
    )
}

/// End the apply of a change set, just before COMMIT: what its DDL sections left for after the
/// rows (NOT NULL, constraints, indexes) is done now. Returns the number of tables finished. A
/// change set with DDL does not commit without it.
#[pg_extern(volatile, security_definer)]
fn rserv_apply_end() -> i64 {
    let _definer = apply_definer();
    require_apply_begun();
    crate::apply_keys::restore(None);
    if crate::ddl::pending() {
        crate::replica_window::close(); // schema steps run in the session's own mode
    }
    crate::ddl::finish_deferred()
}

/// Where a DDL section's payload (one JSON text) is loaded.
fn ddl_stage() -> String {
    staging::table(
        "ddl",
        &staging::text_columns(1),
        staging::Access {
            caller: "INSERT",
            public_select: false,
        },
    )
}

/// Targets resolved in this transaction are resolved again (a DDL section changed a table).
pub fn forget_resolved() {
    STATE.with(|s| s.borrow_mut().resolved.clear());
}

/// Prepare one section of the change set. TRUNCATE is carried out at once and returns NULL;
/// the others return the COPY command that loads the section's rows.
#[pg_extern(volatile, security_definer)]
fn rserv_apply_stage(
    section: &str,
    schema_name: &str,
    table_name: &str,
    columns: Vec<String>,
    key_columns: Vec<String>,
    column_types: default!(Option<Vec<String>>, "NULL"),
) -> Option<String> {
    let _definer = apply_definer();
    require_apply_begun();
    if section == "SEQUENCE" || section == "DDL" {
        crate::apply_keys::restore(None);
    }
    if section == "SEQUENCE" {
        let stage = sequences_stage();
        staging::empty(&stage, false);
        return Some(format!(
            "COPY {stage} ({}) FROM STDIN",
            staging::column_names(crate::sequences::COLUMNS.len())
        ));
    }
    if section == "DDL" {
        // schema changes run in the session's own mode (see replica_window.rs)
        crate::replica_window::close();
        let stage = ddl_stage();
        staging::empty(&stage, false);
        return Some(format!(
            "COPY {stage} ({}) FROM STDIN",
            staging::column_names(1)
        ));
    }
    let t = resolve_target(
        schema_name,
        table_name,
        &columns,
        &key_columns,
        column_types.as_deref(),
    );
    // only the COPY of an initial copy loads a table without its keys (apply_keys.rs)
    let loading = (section == "INSERT" && !replaces_rows(t.reloid)).then_some(t.reloid);
    crate::apply_keys::restore(loading);
    crate::replica_window::open();
    match section {
        "TRUNCATE" => {
            // DELETE, not TRUNCATE: in replica mode it leaves referencing slave tables alone,
            // and the change set's own sections bring those to the master's state.
            let sql = format!("DELETE FROM {}{}", t.only, t.table);
            // a table that holds rows keeps its keys, and stays readable as it was until this
            // commits (apply_keys.rs)
            let empty = format!("SELECT NOT EXISTS (SELECT 1 FROM {}{})", t.only, t.table);
            let load_without_keys = crate::slave_registry::needs_copy(t.reloid)
                && run_as_owner(t.owner, &apply_settings(), || {
                    crate::sql::first::<bool>(&empty, &[], "looking into the table")
                        .unwrap_or(false)
                });
            run_as_owner(t.owner, &apply_settings(), || {
                Spi::run(&sql).or_fail("emptying the table")
            });
            if load_without_keys {
                crate::apply_keys::drop_for_load(t.reloid, t.owner, &t.table);
            }
            // The table now holds exactly the master's rows once this change set is applied.
            mark_copied(t.reloid);
            STATE.with(|s| s.borrow_mut().emptied.push(t.reloid));
            None
        }
        "DELETE" | "INSERT" | "UPDATE" | "UPSERT" if crate::slave_registry::needs_copy(t.reloid) => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "rserv: table {} waits for its initial copy, but this change set only carries changes to it",
                t.table
            ),
            "prepare change sets with both connections (replicate MASTERDB SLAVEDB): the master then learns which tables this slave needs copied",
        ),
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
            let stage = keys_stage(t.key.len());
            staging::empty(&stage, false);
            Some(format!(
                "COPY {stage} ({}) FROM STDIN",
                staging::column_names(t.key.len())
            ))
        }
        "INSERT" if replaces_rows(t.reloid) => {
            STATE.with(|s| s.borrow_mut().insert_staged = true);
            let stage = rows_stage(t.columns.len());
            staging::empty(&stage, false);
            Some(format!(
                "COPY {stage} ({}) FROM STDIN",
                staging::column_names(t.columns.len())
            ))
        }
        "INSERT" => {
            let command = format!("COPY {} ({}) FROM STDIN", t.table, ident_list(&t.columns));
            STATE.with(|s| {
                s.borrow_mut().copy = Some(AllowedCopy {
                    command: command.clone(),
                    reloid: t.reloid,
                    owner: t.owner,
                    done: false,
                })
            });
            Some(command)
        }
        "UPDATE" | "UPSERT" => {
            let stage = rows_stage(t.columns.len());
            staging::empty(&stage, false);
            Some(format!(
                "COPY {stage} ({}) FROM STDIN",
                staging::column_names(t.columns.len())
            ))
        }
        other => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("rserv: unknown change set section \"{other}\""),
            "sections are TRUNCATE, DELETE, INSERT, UPDATE, UPSERT, SEQUENCE and DDL",
        ),
    }
}

/// Merge rows staged as text into their table: updated in place where possible (`in_place`,
/// an UPSERT section), else replacing those with their identity. Returns the rows written.
fn merge_rows(
    in_place: bool,
    schema_name: &str,
    table_name: &str,
    columns: &[String],
    key_columns: &[String],
) -> i64 {
    let t = resolve_target(schema_name, table_name, columns, key_columns, None);
    let stage = rows_stage(t.columns.len());
    staging::analyze_if_big(&stage, 8 * 1024 * 1024);
    let written = if in_place {
        crate::apply_rows::merge_upsert(&t, &stage)
    } else {
        crate::apply_rows::replace_staged(&t, &stage)
    };
    staging::empty(&stage, false);
    written
}

/// Whether an INSERT section for `reloid` must replace rows rather than load them: its
/// identities are left out of the DELETE section (feature `upsert`), but this slave may hold
/// some of them already (see `ApplyState::exact_start`), and no TRUNCATE section emptied the
/// table in this change set.
fn replaces_rows(reloid: pg_sys::Oid) -> bool {
    STATE.with(|s| {
        let s = s.borrow();
        s.in_place && !s.exact_start && !s.emptied.contains(&reloid)
    })
}

/// `t.k1 = s.c<i> AND ...`: rows of `t` whose identity is staged in `s`, column `c<i>` of the
/// stage holding key column `i` (or, for whole rows, the column at that position).
pub(crate) fn staged_identity(t: &Target, position_of: impl Fn(usize, &str) -> usize) -> String {
    key_columns(t)
        .iter()
        .enumerate()
        .map(|(i, c)| {
            key_match(c).condition(
                &format!("t.{}", quote_ident(&c.name)),
                &format!("s.c{}", position_of(i, &c.name) + 1),
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Delete the rows of `t` whose identity is staged in `stage`, as the table's owner.
pub(crate) fn delete_staged(
    t: &Target,
    stage: &str,
    matches: &str,
    settings: &[(&str, &str)],
) -> i64 {
    let sql = format!(
        "DELETE FROM {}{} AS t USING {stage} AS s WHERE {matches}",
        t.only, t.table
    );
    run_as_owner(t.owner, settings, || {
        crate::apply_rows::merge_count(&sql, settings, "deleting changed rows")
    })
}

/// Merge the staged section into its table. DELETE: rows whose identity is staged are
/// deleted (the master sends every changed identity there first, so INSERT sections never
/// meet a transient duplicate, whatever order the master changed rows in). INSERT: nothing
/// left to do (-1: the rows went straight into the table, the caller's COPY counted them).
/// UPDATE: staged rows replace those with their identity. Returns the number of rows removed
/// (DELETE) or written (UPDATE).
#[pg_extern(volatile, security_definer)]
fn rserv_apply_merge(
    section: &str,
    schema_name: &str,
    table_name: &str,
    columns: Vec<String>,
    key_columns: Vec<String>,
) -> i64 {
    let _definer = apply_definer();
    require_apply_begun();
    if section == "DDL" {
        crate::replica_window::close();
    }
    match section {
        "TRUNCATE" => 0,
        "SEQUENCE" => {
            let stage = sequences_stage();
            let set = crate::sequences::apply(&stage);
            staging::empty(&stage, false);
            set
        }
        "DDL" => {
            let stage = ddl_stage();
            let payloads = crate::sql::column::<String>(
                &format!("SELECT c1 FROM {stage}"),
                &[],
                "reading a DDL section",
            );
            staging::empty(&stage, false);
            for p in &payloads {
                crate::ddl::apply_section(p, schema_name, table_name);
            }
            payloads.len() as i64
        }
        // staged to replace rows (see replaces_rows): merged as an UPDATE section is
        "INSERT" if STATE.with(|s| std::mem::take(&mut s.borrow_mut().insert_staged)) => {
            merge_rows(false, schema_name, table_name, &columns, &key_columns)
        }
        "INSERT" => {
            STATE.with(|s| s.borrow_mut().copy = None);
            crate::apply_keys::restore(None);
            -1
        }
        "DELETE" => {
            let t = resolve_target(schema_name, table_name, &columns, &key_columns, None);
            let stage = keys_stage(t.key.len());
            let big = staging::analyze_if_big(&stage, 1024 * 1024);
            let matches = staged_identity(&t, |i, _| i);
            let staged = crate::apply_rows::staged_rows(&stage);
            let settings = crate::apply_rows::settings(staged);
            let deleted = delete_staged(&t, &stage, &matches, &settings);
            // Nothing staged outlives its section: the stage is shared by the tables with as
            // many key columns, and readable by the code of every table owner whose statements
            // rserv runs later in this session. A large one gives its space back now.
            staging::empty(&stage, big);
            deleted
        }
        "UPDATE" | "UPSERT" => merge_rows(
            section == "UPSERT",
            schema_name,
            table_name,
            &columns,
            &key_columns,
        ),
        other => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("rserv: unknown change set section \"{other}\""),
            "sections are TRUNCATE, DELETE, INSERT, UPDATE, UPSERT, SEQUENCE and DDL",
        ),
    }
}
