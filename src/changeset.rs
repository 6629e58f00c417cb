//! Change sets: what a slave receives, bounded by MVCC snapshots of the master.
//!
//! A change set for slave `server` holds every row identity logged by a transaction that was
//! not visible to the slave's last confirmed snapshot but is visible to the current one. The
//! prepare transaction runs at REPEATABLE READ, so its snapshot both filters the log and reads
//! the rows' current contents: the slave moves from one transaction-consistent master state to
//! the next, and a transaction left open across a sync is picked up by a later one (its xid is
//! in the confirmed snapshot's in-progress list).
//!
//! `rserv_prepare` works in phases: [`claim_server`] (ordering against other prepares for the
//! same slave), [`subscribed_tables`] (what the slave receives, what needs an initial copy),
//! [`collect_pending`] (the changed identities into a staging table), then per changed table
//! [`guard_table`] (lock it, refuse row-level security, detect a TRUNCATE that raced the
//! snapshot) and [`table_sections`] (the queries the caller runs with COPY), both in
//! `sections.rs`.

use crate::canonical::set_canonical_settings_local;
use crate::catalog::{ext_schema, table_info};
use crate::error::{fail, SpiOrFail};
use crate::sections::{guard_table, table_sections, Section};
use crate::security::{definer, require_replicator};
use crate::sql::{
    call_hint, first, kept_first, qualified, quote_literal, rows, rows_mut, run, set_local,
};
use crate::staging;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Record the current snapshot as change set `syncid` for `server`, status 0 (prepared);
/// returns its fingerprint.
fn record_snapshot(s: &str, server: i32, syncid: i64) -> Option<String> {
    kept_first::<String>(
        &format!(
            "INSERT INTO {s}._rserv_sync_ (server, syncid, status, minid, maxid, active) \
             SELECT $1, $2, 0, pg_catalog.pg_snapshot_xmin(c)::text::int8, \
                    pg_catalog.pg_snapshot_xmax(c)::text::int8, \
                    ARRAY(SELECT x::text::int8 FROM pg_catalog.pg_snapshot_xip(c) AS x ORDER BY 1) \
             FROM pg_catalog.pg_current_snapshot() AS c RETURNING fingerprint::pg_catalog.text"
        ),
        &[server.into(), syncid.into()],
        "recording the sync snapshot",
    )
}

/// The seed's `_rserv_sync_(server)`: record the current snapshot as a prepared change set
/// numbered `currval('_rserv_sync_seq_')`. Returns 0, as the original did.
#[pg_extern(volatile, security_definer)]
fn _rserv_sync_(server: i32) -> i32 {
    let _definer = definer();
    require_replicator("_rserv_sync_");
    let s = ext_schema();
    let syncid = Spi::get_one::<i64>(&format!(
        "SELECT pg_catalog.currval('{s}._rserv_sync_seq_'::regclass)"
    ))
    .or_fail("reading _rserv_sync_seq_ (call nextval first)")
    .unwrap_or(0);
    record_snapshot(&s, server, syncid);
    0
}

/// Build the change set for slave `server` (PrepareSnapshot). Must run inside a REPEATABLE
/// READ transaction; the caller then runs `COPY (query) TO STDOUT` for each returned row, in
/// that same transaction, and commits. No row: nothing to send (no sync id is used; roll back).
///
/// The slave must be registered first, in a transaction of its own
/// (`rserv_register_slave`). `slave_node` (the slave's rserv_node_id()) binds the server id
/// to one slave database. `schemas`/`tables` name the tables the slave receives (NULL: every
/// registered table), `fresh` those of them it asks to receive whole; a table the slave
/// receives for the first time goes out whole too (TRUNCATE + every row, at this snapshot):
/// the initial copy is an ordinary, atomic change set. Sections per table come in the order
/// TRUNCATE (or, without one, DELETE: the key columns of every changed identity), INSERT (the
/// current rows of those identities that still exist); `estimated_rows` is set for copies.
// The SQL name is unchanged; the symbol carries the signature's version, so a 1.0 declaration
// (four arguments) left over before ALTER EXTENSION UPDATE fails to load instead of misreading.
#[pg_extern(volatile, security_definer, name = "rserv_prepare")]
#[allow(clippy::type_complexity)]
fn rserv_prepare_v11(
    server: i32,
    slave_node: default!(Option<String>, "NULL"),
    schemas: default!(Option<Vec<String>>, "NULL"),
    tables: default!(Option<Vec<String>>, "NULL"),
    fresh: default!(Option<Vec<bool>>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(syncid, i64),
        name!(section, String),
        name!(schema_name, String),
        name!(table_name, String),
        name!(columns, Vec<String>),
        name!(key_columns, Vec<String>),
        name!(query, Option<String>),
        name!(column_types, Vec<String>),
        name!(estimated_rows, Option<i64>),
        name!(base_syncid, Option<i64>),
        name!(slave_node, Option<String>),
        name!(fingerprint, Option<String>),
    ),
> {
    let _definer = definer();
    require_replicator("rserv_prepare");
    let how =
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM rserv_prepare(...); COPY ...; COMMIT";
    // SAFETY: reading a backend global
    if unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32 {
        fail(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "rserv_prepare() must run in a REPEATABLE READ transaction",
            how,
        );
    }
    // SAFETY: reading backend transaction state
    if !unsafe { pg_sys::IsTransactionBlock() } {
        fail(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "rserv_prepare() must run inside a transaction block",
            how,
        );
    }
    set_canonical_settings_local();
    // The caller's COPY queries must see every row: a policy would silently filter them. With
    // this off, PostgreSQL raises an error instead (checked up front in guard_table).
    set_local("row_security", "off");
    // Sync ids must never be handed out twice, even after a crash of the master: the prepare
    // (which draws one from _rserv_sync_seq_) commits durably whatever synchronous_commit says.
    set_local("synchronous_commit", "on");
    let s = ext_schema();

    let bound_node = claim_server(&s, server, slave_node.as_deref());
    let (base, prev_xmax, prev_active) = last_confirmed(&s, server);
    let (names, wanted_fresh) =
        subscribed_tables(&s, schemas, tables, fresh, prev_xmax, &prev_active);
    let subscribed: Vec<pg_sys::Oid> = names.iter().map(|(oid, ..)| *oid).collect();
    let to_copy = tables_to_copy(&s, server, &subscribed, &wanted_fresh);

    // Large change sets hash and sort millions of identities: keep that in memory.
    set_local("work_mem", "64MB");
    let window = "($1::int8 IS NULL OR l.logid >= $1 OR l.logid = ANY ($2::int8[]))";
    // An idle poll (the daemon's) should cost one index-free scan of a small log, nothing more.
    let anything = first::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {s}._rserv_log_ AS l \
             WHERE l.reloid = ANY ($3::oid[]) AND l.reloid <> ALL ($4::oid[]) AND {window})"
        ),
        &[
            prev_xmax.into(),
            prev_active.clone().into(),
            subscribed.clone().into(),
            to_copy.clone().into(),
        ],
        "looking for pending changes",
    )
    .unwrap_or(false);
    let mut ddl = copy_targets(&s, &names, &to_copy);
    ddl.extend(ddl_in_window(&s, prev_xmax, &prev_active, &subscribed));
    if !anything && to_copy.is_empty() && ddl.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let pending = staging::table(
        "pending",
        "reloid pg_catalog.oid NOT NULL, key pg_catalog.text[], deleted pg_catalog.bool",
        staging::Access {
            caller: "SELECT",
            public_select: false,
        },
    );
    let in_place = crate::guc::SLAVE_READS_UPSERT.get();
    let collected = collect_pending(
        &s,
        &pending,
        prev_xmax,
        prev_active,
        &subscribed,
        &to_copy,
        in_place,
    );
    if collected == 0 && to_copy.is_empty() && ddl.is_empty() {
        return TableIterator::new(Vec::new());
    }
    let syncid = kept_first::<i64>(
        &format!("SELECT pg_catalog.nextval('{s}._rserv_sync_seq_'::regclass)"),
        &[],
        "allocating a sync id",
    )
    .unwrap_or(0);
    let fingerprint = record_snapshot(&s, server, syncid);
    if !to_copy.is_empty() {
        run(
            &format!(
                "INSERT INTO {s}._rserv_server_tables_ AS x (server, reloid, state, syncid) \
                 SELECT $1, r, 'copying', $2 FROM unnest($3::oid[]) AS r \
                 ON CONFLICT (server, reloid) DO UPDATE SET state = 'copying', syncid = excluded.syncid"
            ),
            &[server.into(), syncid.into(), to_copy.clone().into()],
            "recording the initial copies",
        );
    }

    let mut sections = Vec::new();
    for changed in changed_tables(&s, &pending, &to_copy) {
        let info = table_info(changed.reloid);
        guard_table(&info);
        sections.extend(table_sections(&info, &pending, &changed, in_place));
    }
    sections.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
    // schema changes first (the definitions of tables copied whole, then what changed, oldest
    // first): the rows that follow have the new shape
    let mut ddl_sections: Vec<Section> = ddl
        .into_iter()
        .map(|(schema, table, payload)| Section {
            section: "DDL",
            schema,
            table,
            columns: vec!["definition".to_string()],
            types: vec!["text".to_string()],
            key: Vec::new(),
            query: Some(format!(
                "SELECT {}::pg_catalog.text",
                quote_literal(&payload)
            )),
            estimate: None,
        })
        .collect();
    ddl_sections.append(&mut sections);
    let mut sections = ddl_sections;
    // read after the snapshot: never behind a value any row of this change set holds
    if let Some(query) = crate::sequences::section_query(&s) {
        sections.push(Section {
            section: "SEQUENCE",
            schema: String::new(),
            table: String::new(),
            columns: crate::sequences::COLUMNS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            types: vec![
                "text".into(),
                "text".into(),
                "bigint".into(),
                "boolean".into(),
            ],
            key: Vec::new(),
            query: Some(query),
            estimate: None,
        });
    }
    TableIterator::new(sections.into_iter().map(move |x| {
        (
            syncid,
            x.section.to_string(),
            x.schema,
            x.table,
            x.columns,
            x.key,
            x.query,
            x.types,
            x.estimate,
            base,
            bound_node.clone(),
            fingerprint.clone(),
        )
    }))
}

/// For every table this change set carries whole: its definition at the change set's snapshot,
/// addressed by the name the slave knows it by. A slave that built the table from an earlier
/// definition of the master's (`--create-tables`) follows from that one to this, and ignores the
/// table's recorded history (made before or after it read the definition: it cannot tell).
fn copy_targets(
    s: &str,
    names: &[(pg_sys::Oid, String, String)],
    to_copy: &[pg_sys::Oid],
) -> Vec<(String, String, String)> {
    let mut targets = names
        .iter()
        .filter(|(oid, ..)| to_copy.contains(oid))
        .filter_map(|(oid, schema, table)| {
            let payload = kept_first::<String>(
                &format!(
                    "SELECT pg_catalog.jsonb_build_object('old', t.definition, 'new', t.definition, \
                            'recopy', true, 'target', true)::pg_catalog.text \
                     FROM {s}._rserv_tables_ t WHERE t.reloid = $1 AND t.definition IS NOT NULL"
                ),
                &[(*oid).into()],
                "reading a table's definition",
            )?;
            Some((schema.clone(), table.clone(), payload))
        })
        .collect::<Vec<_>>();
    targets.sort();
    targets
}

/// Schema changes recorded in the window for the tables this slave receives, oldest first:
/// (schema and name of the table before the change, payload for the slave: the definitions
/// before and after, and whether the table goes whole with them).
fn ddl_in_window(
    s: &str,
    prev_xmax: Option<i64>,
    prev_active: &[i64],
    subscribed: &[pg_sys::Oid],
) -> Vec<(String, String, String)> {
    rows(
        &format!(
            "SELECT l.old->>'schema', l.old->>'table', \
                    pg_catalog.jsonb_build_object('old', l.old, 'new', l.new, 'recopy', l.recopy)::text \
             FROM {s}._rserv_ddl_ AS l \
             WHERE l.reloid = ANY ($3::oid[]) \
               AND ($1::int8 IS NULL OR l.logid >= $1 OR l.logid = ANY ($2::int8[])) \
             ORDER BY l.ddlid"
        ),
        &[
            prev_xmax.into(),
            prev_active.to_vec().into(),
            subscribed.to_vec().into(),
        ],
        "reading recorded DDL",
        |r| {
            Ok((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
            ))
        },
    )
}

/// Every prepare for a server updates its row: if another prepare committed after our snapshot
/// was taken, this fails with a serialization error, so sync ids always follow snapshot order
/// and a slave can never be moved back in time. The row must have been committed before this
/// transaction's snapshot: log clean-up only sees committed slaves, and would otherwise remove
/// rows this change set's successors still need.
/// Returns the slave database the id is bound to (its node), if known: the slave refuses a
/// change set meant for another database.
fn claim_server(s: &str, server: i32, slave_node: Option<&str>) -> Option<String> {
    if let Some(node) = slave_node {
        crate::slaves::require_one_id(s, server, node);
    }
    let bound = rows_mut(
        &format!(
            "UPDATE {s}._rserv_servers_ AS v SET last_prepare = coalesce(v.last_prepare, 0) + 1, \
                    node = coalesce(v.node, $2::uuid) \
             WHERE v.server = $1 RETURNING v.node::text"
        ),
        &[server.into(), slave_node.into()],
        "registering the prepare",
        |r| r.get::<String>(1),
    )
    .pop();
    let Some(bound) = bound else {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: slave {server} is not registered on this master"),
            format!(
                "register it first, in a transaction of its own: SELECT rserv_register_slave({server}, <the slave's rserv_node_id()>) (replicate does this by itself)"
            ),
        );
    };
    if let (Some(bound), Some(node)) = (&bound, slave_node) {
        crate::slaves::require_same_node(server, bound, node);
    }
    bound
}

/// Registered tables the slave receives, with the name the slave knows each by: all of them,
/// or those named by the slave, with the subset it asks to receive whole. A table the slave
/// has followed up to its last confirmed change set is known there by its name then: the first
/// schema change in the window that started from that name tells which table it is (after
/// `RENAME t TO t_old; RENAME t_new TO t` the slave's `t` is the master's `t_old`); otherwise its
/// current name does, and last the latest recorded change from that name. A table the slave
/// asks to receive whole was (re)made there lately: its name is a current one. A table the
/// slave expects but this master does not replicate is skipped with a WARNING (it would never
/// arrive; the others must keep flowing).
fn subscribed_tables(
    s: &str,
    schemas: Option<Vec<String>>,
    tables: Option<Vec<String>>,
    fresh: Option<Vec<bool>>,
    prev_xmax: Option<i64>,
    prev_active: &[i64],
) -> (Vec<(pg_sys::Oid, String, String)>, Vec<pg_sys::Oid>) {
    let (Some(sch), Some(tab)) = (schemas, tables) else {
        let all = rows(
            &format!(
                "SELECT t.reloid, n.nspname::pg_catalog.text, c.relname::pg_catalog.text \
                 FROM {s}._rserv_tables_ t JOIN pg_catalog.pg_class c ON c.oid = t.reloid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            ),
            &[],
            "listing replicated tables",
            |r| {
                Ok((
                    r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                ))
            },
        );
        return (all, Vec::new());
    };
    let fresh = fresh.unwrap_or_else(|| vec![false; sch.len()]);
    let found = rows(
        &format!(
            "SELECT coalesce( \
                      (SELECT d.reloid FROM {s}._rserv_ddl_ d \
                        WHERE NOT coalesce(w.fresh, false) AND $4::int8 IS NOT NULL \
                          AND (d.logid >= $4 OR d.logid = ANY ($5::int8[])) \
                          AND d.old->>'schema' = w.nsp AND d.old->>'table' = w.rel \
                          AND d.reloid IN (SELECT x.reloid FROM {s}._rserv_tables_ x) \
                        ORDER BY d.ddlid LIMIT 1), \
                      t.reloid, \
                      (SELECT d.reloid FROM {s}._rserv_ddl_ d \
                        WHERE d.old->>'schema' = w.nsp AND d.old->>'table' = w.rel \
                          AND d.reloid IN (SELECT x.reloid FROM {s}._rserv_tables_ x) \
                        ORDER BY d.ddlid DESC LIMIT 1)), \
                    w.nsp, w.rel, coalesce(w.fresh, false) \
             FROM unnest($1::text[], $2::text[], $3::bool[]) AS w(nsp, rel, fresh) \
             LEFT JOIN (pg_catalog.pg_class c \
                        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                        JOIN {s}._rserv_tables_ t ON t.reloid = c.oid) \
               ON w.nsp = n.nspname AND w.rel = c.relname"
        ),
        &[
            sch.into(),
            tab.into(),
            fresh.into(),
            prev_xmax.into(),
            prev_active.to_vec().into(),
        ],
        "matching the slave's tables",
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?,
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<bool>(4)?.unwrap_or(false),
            ))
        },
    );
    let missing: Vec<String> = found
        .iter()
        .filter(|(oid, ..)| oid.is_none())
        .map(|(_, nsp, rel, _)| qualified(nsp, rel))
        .collect();
    if !missing.is_empty() {
        warning!(
            "rserv: the slave receives {} but this master does not replicate it; it is left as it is (on the master: {}; or on the slave: SELECT rserv_slave_remove_table(...))",
            missing.join(", "),
            call_hint("rserv_add_table", &missing[0], "")
        );
    }
    let fresh = found
        .iter()
        .filter(|(.., f)| *f)
        .filter_map(|(oid, ..)| *oid)
        .collect();
    let names = found
        .into_iter()
        .filter_map(|(oid, nsp, rel, _)| oid.map(|o| (o, nsp, rel)))
        .collect();
    (names, fresh)
}

/// Tables this change set carries whole: those the slave receives for the first time (or
/// again after it stopped receiving them), and those it asks to receive whole.
fn tables_to_copy(
    s: &str,
    server: i32,
    subscribed: &[pg_sys::Oid],
    fresh: &[pg_sys::Oid],
) -> Vec<pg_sys::Oid> {
    // A table this slave stopped receiving needs a fresh copy if it comes back.
    run(
        &format!(
            "DELETE FROM {s}._rserv_server_tables_ WHERE server = $1 \
             AND (reloid <> ALL ($2::oid[]) OR reloid = ANY ($3::oid[]))"
        ),
        &[
            server.into(),
            subscribed.to_vec().into(),
            fresh.to_vec().into(),
        ],
        "updating the slave's tables",
    );
    rows(
        &format!(
            "SELECT t.reloid FROM {s}._rserv_tables_ t WHERE t.reloid = ANY ($2::oid[]) \
             AND NOT EXISTS (SELECT 1 FROM {s}._rserv_server_tables_ x \
                             WHERE x.server = $1 AND x.reloid = t.reloid AND x.state = 'ready')"
        ),
        &[server.into(), subscribed.to_vec().into()],
        "finding tables to copy",
        |r| r.get::<pg_sys::Oid>(1),
    )
    .into_iter()
    .flatten()
    .collect()
}

/// (sync id, xmax, in-progress xids) of the slave's last confirmed change set; (None, None, [])
/// before the first. The next change set holds what committed since that snapshot: it builds
/// on that sync id, and a slave that has not got it (restored from a backup) would miss changes.
fn last_confirmed(s: &str, server: i32) -> (Option<i64>, Option<i64>, Vec<i64>) {
    rows(
        &format!(
            "SELECT syncid, maxid, active FROM {s}._rserv_sync_ WHERE server = $1 AND status > 0 \
             ORDER BY syncid DESC LIMIT 1"
        ),
        &[server.into()],
        "reading the last confirmed sync",
        |r| {
            Ok((
                r.get::<i64>(1)?,
                r.get::<i64>(2)?,
                r.get::<Vec<i64>>(3)?.unwrap_or_default(),
            ))
        },
    )
    .pop()
    .unwrap_or((None, None, Vec::new()))
}

/// Copy the identities changed in the window into the pending staging table (emptied first).
/// Tables being copied need no log: the copy carries their state at this snapshot. No DISTINCT
/// here: sorting a million text[] keys costs seconds, while the DELETE section's DISTINCT and
/// the INSERT section's semi-join hash the keys cheaply. With `in_place` (UPSERT sections), an
/// identity logged both as updated and otherwise (inserted or possibly gone) has its updated
/// rows marked as possibly gone (one hashed semi-join; an inserted one is then deleted on the
/// slave first, where it is not: exact, only not the cheapest): then `deleted IS FALSE` alone
/// picks the identities only updated, and each section reads the table with one semi-join.
fn collect_pending(
    s: &str,
    pending: &str,
    prev_xmax: Option<i64>,
    prev_active: Vec<i64>,
    subscribed: &[pg_sys::Oid],
    to_copy: &[pg_sys::Oid],
    in_place: bool,
) -> i64 {
    staging::empty(pending, false);
    let n = crate::sql::count_rows(
        &format!(
            "INSERT INTO {pending} (reloid, key, deleted) SELECT l.reloid, l.key, l.deleted FROM {s}._rserv_log_ AS l \
             WHERE l.reloid = ANY ($3::oid[]) AND l.reloid <> ALL ($4::oid[]) \
               AND ($1::int8 IS NULL OR l.logid >= $1 OR l.logid = ANY ($2::int8[]))"
        ),
        &[
            prev_xmax.into(),
            prev_active.into(),
            subscribed.to_vec().into(),
            to_copy.to_vec().into(),
        ],
        "collecting pending changes",
    );
    if n > 10_000 {
        Spi::run(&format!("ANALYZE {pending}")).or_fail("analyzing the pending changes");
    }
    if in_place && n > 0 {
        Spi::run(&format!(
            "UPDATE {pending} AS p SET deleted = true \
              WHERE p.deleted IS FALSE AND EXISTS (SELECT 1 FROM {pending} AS q \
                    WHERE q.reloid = p.reloid AND q.key = p.key AND q.deleted IS NOT FALSE)"
        ))
        .or_fail("classifying the pending changes");
    }
    n
}

/// A table in the change set, and what its log rows in the window say.
pub(crate) struct Changed {
    pub reloid: pg_sys::Oid,
    /// its key columns
    pub key: Vec<String>,
    /// TRUNCATEd in the window
    pub truncated: bool,
    /// copied whole
    pub copy: bool,
    /// some identity was logged as possibly gone (`deleted` true)
    pub gone: bool,
    /// some identity was logged as inserted (`deleted` NULL)
    pub inserted: bool,
    /// some identity was logged as updated in place (`deleted` false)
    pub updated: bool,
}

/// Every table in the change set.
fn changed_tables(s: &str, pending: &str, to_copy: &[pg_sys::Oid]) -> Vec<Changed> {
    rows(
        &format!(
            "SELECT t.reloid, t.key::text[], \
                        coalesce(bool_or(p.key IS NULL), false), t.reloid = ANY ($1::oid[]), \
                        coalesce(bool_or(p.deleted), false), \
                        coalesce(bool_or(p.key IS NOT NULL AND p.deleted IS NULL), false), \
                        coalesce(bool_or(NOT p.deleted), false) \
                 FROM {s}._rserv_tables_ t LEFT JOIN {pending} p ON p.reloid = t.reloid \
                 WHERE t.reloid = ANY ($1::oid[]) OR p.reloid IS NOT NULL \
                 GROUP BY t.reloid, t.key ORDER BY t.reloid"
        ),
        &[to_copy.to_vec().into()],
        "listing changed tables",
        |r| {
            Ok(Changed {
                reloid: r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                key: r.get::<Vec<String>>(2)?.unwrap_or_default(),
                truncated: r.get::<bool>(3)?.unwrap_or(false),
                copy: r.get::<bool>(4)?.unwrap_or(false),
                gone: r.get::<bool>(5)?.unwrap_or(true),
                inserted: r.get::<bool>(6)?.unwrap_or(true),
                updated: r.get::<bool>(7)?.unwrap_or(true),
            })
        },
    )
}

/// Mark one row identity of a replicated table as changed, so the next change set carries its
/// current state (or its deletion) to every slave: what `replicate check --repair` uses to fix
/// only the rows that differ. `key` is the identity as text, one element per key column.
/// Logged as "possibly deleted": the row may exist only on the slave.
#[pg_extern(volatile, security_definer)]
fn rserv_touch(tbl: crate::catalog::RegClass, key: Vec<String>) {
    let _definer = definer();
    require_replicator("rserv_touch");
    let s = ext_schema();
    let reloid = tbl.0;
    let nkeys = first::<i32>(
        &format!("SELECT pg_catalog.cardinality(key) FROM {s}._rserv_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading the registration",
    );
    let table = table_info(reloid).qualified();
    match nkeys {
        None => fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("rserv: table {table} is not replicated by this master"),
            "",
        ),
        Some(n) if n as usize != key.len() => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "rserv: table {table} has {n} key columns, but {} values were given",
                key.len()
            ),
            "",
        ),
        Some(_) => {}
    }
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_log_ (reloid, logid, deleted, key) \
             VALUES ($1, pg_catalog.pg_current_xact_id()::text::int8, true, $2)"
        ),
        &[reloid.into(), key.into()],
    )
    .or_fail("marking the row");
    // an idle daemon is woken at commit, as for a change the capture logged
    crate::wakeup::something_logged();
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test(error = "rserv_prepare() must run in a REPEATABLE READ transaction")]
    fn prepare_needs_repeatable_read() {
        Spi::run("SELECT * FROM rserv_prepare(0)").unwrap();
    }

    #[pg_test]
    fn sync_records_the_current_snapshot() {
        Spi::run("SELECT nextval('_rserv_sync_seq_'); SELECT _rserv_sync_(3);").unwrap();
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT maxid = pg_snapshot_xmax(pg_current_snapshot())::text::int8 AND status = 0 \
                 FROM _rserv_sync_ WHERE server = 3"
            )
            .unwrap(),
            Some(true)
        );
    }
}
