//! Sync bookkeeping on the master: change sets bounded by MVCC snapshots.
//!
//! A change set for slave `server` holds every row identity logged by a transaction that was
//! not visible to the slave's last confirmed snapshot but is visible to the current one. The
//! prepare transaction runs at REPEATABLE READ, so its snapshot both filters the log and reads
//! the rows' current contents: the slave moves from one transaction-consistent master state to
//! the next, and a transaction left open across a sync is picked up by a later one (its xid is
//! in the confirmed snapshot's in-progress list).

use crate::common::{
    call_hint, definer, ext_schema, ext_version, fail, first, grant_to_caller, qualified,
    quote_ident, require_replicator, set_canonical_settings_local, set_local, table_columns,
    table_info, SpiOrFail,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// This database's rserv node id; a slave records the id of the master it follows.
#[pg_extern(stable, security_definer)]
fn rserv_node_id() -> String {
    let _definer = definer();
    let s = ext_schema();
    Spi::get_one::<String>(&format!("SELECT node_id::text FROM {s}._rserv_node_"))
        .or_fail("reading _rserv_node_")
        .unwrap_or_default()
}

/// Version of the rserv extension installed in this database.
#[pg_extern(stable)]
fn rserv_version() -> String {
    ext_version()
}

/// Record the current snapshot as change set `syncid` for `server`, status 0 (prepared).
fn record_snapshot(s: &str, server: i32, syncid: i64) {
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_sync_ (server, syncid, status, minid, maxid, active) \
             SELECT $1, $2, 0, pg_catalog.pg_snapshot_xmin(c)::text::int8, \
                    pg_catalog.pg_snapshot_xmax(c)::text::int8, \
                    ARRAY(SELECT x::text::int8 FROM pg_catalog.pg_snapshot_xip(c) AS x ORDER BY 1) \
             FROM pg_catalog.pg_current_snapshot() AS c"
        ),
        &[server.into(), syncid.into()],
    )
    .or_fail("recording the sync snapshot");
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

struct Section {
    section: &'static str,
    schema: String,
    table: String,
    columns: Vec<String>,
    /// type of each of `columns`, for the slave's compatibility check
    types: Vec<String>,
    key: Vec<String>,
    query: Option<String>,
    /// for an initial copy: the table's estimated row count, for progress reports
    estimate: Option<i64>,
}

/// Build the change set for slave `server` (PrepareSnapshot). Must run inside a REPEATABLE
/// READ transaction; the caller then runs `COPY (query) TO STDOUT` for each returned row, in
/// that same transaction, and commits. No row: nothing to send (no sync id is used; roll back).
///
/// `slave_node` (the slave's rserv_node_id()) binds the server id to one slave database.
/// `schemas`/`tables` name the tables the slave receives (NULL: every registered table); a
/// table the slave does not receive is left out, and a table it receives for the first time
/// goes out whole (TRUNCATE + every row, at this snapshot): the initial copy is an ordinary,
/// atomic change set. Sections per table come in the order TRUNCATE (or, without one, DELETE:
/// the key columns of every changed identity), INSERT (the current rows of those identities
/// that still exist); `estimated_rows` is set for copies.
#[pg_extern(volatile, security_definer)]
#[allow(clippy::type_complexity)]
fn rserv_prepare(
    server: i32,
    slave_node: default!(Option<String>, "NULL"),
    schemas: default!(Option<Vec<String>>, "NULL"),
    tables: default!(Option<Vec<String>>, "NULL"),
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
    ),
> {
    let _definer = definer();
    require_replicator("rserv_prepare");
    // SAFETY: reading a backend global
    if unsafe { pg_sys::XactIsoLevel } < pg_sys::XACT_REPEATABLE_READ as i32 {
        fail(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "rserv_prepare() must run in a REPEATABLE READ transaction",
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM rserv_prepare(...); COPY ...; COMMIT",
        );
    }
    // SAFETY: reading backend transaction state
    if !unsafe { pg_sys::IsTransactionBlock() } {
        fail(
            PgSqlErrorCode::ERRCODE_NO_ACTIVE_SQL_TRANSACTION,
            "rserv_prepare() must run inside a transaction block",
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM rserv_prepare(...); COPY ...; COMMIT",
        );
    }
    set_canonical_settings_local();
    // Sync ids must never be handed out twice, even after a crash of the master: the prepare
    // (which draws one from _rserv_sync_seq_) commits durably whatever synchronous_commit says.
    set_local("synchronous_commit", "on");
    let s = ext_schema();

    // Every prepare for a server updates its row: if another prepare committed after our
    // snapshot was taken, this fails with a serialization error, so sync ids always follow
    // snapshot order and a slave can never be moved back in time.
    let bound = first::<String>(
        &format!(
            "INSERT INTO {s}._rserv_servers_ AS v (server, last_prepare, node) VALUES ($1, 0, $2::uuid) \
             ON CONFLICT (server) DO UPDATE SET last_prepare = coalesce(v.last_prepare, 0) + 1, \
                 node = coalesce(v.node, excluded.node) \
             RETURNING node::text"
        ),
        &[server.into(), slave_node.clone().into()],
        "registering the prepare",
    );
    if let (Some(bound), Some(node)) = (&bound, &slave_node) {
        let same = first::<bool>(
            "SELECT $1::uuid = $2::uuid",
            &[bound.clone().into(), node.clone().into()],
            "comparing nodes",
        )
        .unwrap_or(false);
        if !same {
            fail(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("rserv: server id {server} belongs to another slave database (node {bound})"),
                "give each slave its own id (replicate --server N); sharing one makes both miss changes",
            );
        }
    }

    let subscribed = subscribed_tables(&s, schemas, tables);
    // A table this slave stopped receiving needs a fresh copy if it comes back.
    Spi::run_with_args(
        &format!(
            "DELETE FROM {s}._rserv_server_tables_ WHERE server = $1 AND reloid <> ALL ($2::oid[])"
        ),
        &[server.into(), subscribed.clone().into()],
    )
    .or_fail("updating the slave's tables");
    let to_copy = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT t.reloid FROM {s}._rserv_tables_ t WHERE t.reloid = ANY ($2::oid[]) \
                     AND NOT EXISTS (SELECT 1 FROM {s}._rserv_server_tables_ x \
                                     WHERE x.server = $1 AND x.reloid = t.reloid AND x.state = 'ready')"
                ),
                None,
                &[server.into(), subscribed.clone().into()],
            )?
            .map(|r| r.get::<pg_sys::Oid>(1).map(|o| o.unwrap_or(pg_sys::InvalidOid)))
            .collect::<Result<Vec<_>, _>>()
    })
    .or_fail("finding tables to copy");

    let prev = Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT maxid, active FROM {s}._rserv_sync_ WHERE server = $1 AND status > 0 \
                 ORDER BY syncid DESC LIMIT 1"
            ),
            None,
            &[server.into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((r.get::<i64>(1)?, r.get::<Vec<i64>>(2)?.unwrap_or_default()));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading the last confirmed sync");
    let (prev_xmax, prev_active) = match prev {
        Some((xmax, active)) => (xmax, active),
        None => (None, Vec::new()),
    };

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
    if !anything && to_copy.is_empty() {
        return TableIterator::new(Vec::new());
    }
    pending_table();
    // Tables being copied need no log: the copy carries their state at this snapshot.
    // No DISTINCT here: sorting a million text[] keys costs seconds, while the DELETE
    // section's DISTINCT and the INSERT section's IN (...) hash the typed keys cheaply.
    let pending = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH ins AS (INSERT INTO pg_temp._rserv_pending_ \
               SELECT l.reloid, l.key FROM {s}._rserv_log_ AS l \
               WHERE l.reloid = ANY ($3::oid[]) AND l.reloid <> ALL ($4::oid[]) AND {window} \
               RETURNING 1) SELECT count(*) FROM ins"
        ),
        &[
            prev_xmax.into(),
            prev_active.into(),
            subscribed.clone().into(),
            to_copy.clone().into(),
        ],
    )
    .or_fail("collecting pending changes")
    .unwrap_or(0);
    if pending == 0 && to_copy.is_empty() {
        return TableIterator::new(Vec::new());
    }
    if pending > 10_000 {
        Spi::run("ANALYZE pg_temp._rserv_pending_").or_fail("analyzing _rserv_pending_");
    }
    let syncid = Spi::get_one::<i64>(&format!(
        "SELECT pg_catalog.nextval('{s}._rserv_sync_seq_'::regclass)"
    ))
    .or_fail("allocating a sync id")
    .unwrap_or(0);
    record_snapshot(&s, server, syncid);
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_server_tables_ AS x (server, reloid, state, syncid) \
             SELECT $1, r, 'copying', $2 FROM unnest($3::oid[]) AS r \
             ON CONFLICT (server, reloid) DO UPDATE SET state = 'copying', syncid = excluded.syncid"
        ),
        &[server.into(), syncid.into(), to_copy.clone().into()],
    )
    .or_fail("recording the initial copies");

    let tables = Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT t.reloid, t.key::text[], \
                        coalesce(bool_or(p.key IS NULL), false), t.reloid = ANY ($1::oid[]) \
                 FROM {s}._rserv_tables_ t LEFT JOIN pg_temp._rserv_pending_ p ON p.reloid = t.reloid \
                 WHERE t.reloid = ANY ($1::oid[]) OR p.reloid IS NOT NULL \
                 GROUP BY t.reloid, t.key ORDER BY t.reloid"
            ),
            None,
            &[to_copy.clone().into()],
        )?;
        let mut out = Vec::new();
        for r in tab {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
                r.get::<bool>(3)?.unwrap_or(false),
                r.get::<bool>(4)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("listing changed tables");

    let mut sections = Vec::new();
    for (reloid, key, truncated, copy) in tables {
        sections.extend(table_sections(reloid, key, truncated, copy));
    }
    sections.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
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
        )
    }))
}

/// Empty `pg_temp._rserv_pending_`, readable by the caller, whose COPY queries read it. It
/// lives as long as the session and is emptied at every commit: creating a table in every
/// cycle would cost more catalog writes than a small change set has rows.
fn pending_table() {
    let readable = first::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, c.oid, 'SELECT') FROM pg_catalog.pg_class c \
         WHERE c.oid = pg_catalog.to_regclass('pg_temp._rserv_pending_')",
        &[crate::common::outer_user().into()],
        "looking up _rserv_pending_",
    );
    match readable {
        None => Spi::run(
            "CREATE TEMP TABLE _rserv_pending_ (reloid oid NOT NULL, key text[]) \
             ON COMMIT DELETE ROWS",
        )
        .or_fail("creating _rserv_pending_"),
        // left over by an earlier prepare in this same transaction
        Some(_) => {
            Spi::run("DELETE FROM pg_temp._rserv_pending_").or_fail("emptying _rserv_pending_")
        }
    }
    if readable != Some(true) {
        grant_to_caller("SELECT", "pg_temp._rserv_pending_");
    }
}

/// Registered tables the slave receives: all of them, or those named by the slave. A table
/// the slave expects but this master does not replicate is an error: it would never arrive.
fn subscribed_tables(
    s: &str,
    schemas: Option<Vec<String>>,
    tables: Option<Vec<String>>,
) -> Vec<pg_sys::Oid> {
    let (Some(sch), Some(tab)) = (schemas, tables) else {
        return Spi::connect(|client| {
            client
                .select(&format!("SELECT reloid FROM {s}._rserv_tables_"), None, &[])?
                .map(|r| {
                    r.get::<pg_sys::Oid>(1)
                        .map(|o| o.unwrap_or(pg_sys::InvalidOid))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .or_fail("listing replicated tables");
    };
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT t.reloid, pg_catalog.quote_ident(w.nsp) || '.' || pg_catalog.quote_ident(w.rel) \
                     FROM unnest($1::text[], $2::text[]) AS w(nsp, rel) \
                     LEFT JOIN (pg_catalog.pg_class c \
                                JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                                JOIN {s}._rserv_tables_ t ON t.reloid = c.oid) \
                       ON w.nsp = n.nspname AND w.rel = c.relname"
                ),
                None,
                &[sch.into(), tab.into()],
            )?
            .map(|r| Ok((r.get::<pg_sys::Oid>(1)?, r.get::<String>(2)?.unwrap_or_default())))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("matching the slave's tables");
    let missing: Vec<&str> = rows
        .iter()
        .filter(|(oid, _)| oid.is_none())
        .map(|(_, name)| name.as_str())
        .collect();
    if !missing.is_empty() {
        fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "rserv: the slave receives {} but this master does not replicate it",
                missing.join(", ")
            ),
            format!(
                "on the master: SELECT rserv_add_table('{}'); or on the slave: SELECT rserv_slave_remove_table(...)",
                missing[0].replace('\'', "''")
            ),
        );
    }
    rows.into_iter().filter_map(|(oid, _)| oid).collect()
}

fn table_sections(
    reloid: pg_sys::Oid,
    key: Vec<String>,
    truncated: bool,
    copy: bool,
) -> Vec<Section> {
    let info = table_info(reloid);
    let table = qualified(&info.schema, &info.name);
    let cols = table_columns(reloid);
    // The logged key is canonical text; casting it (not the table column) keeps the table's
    // own index usable for the lookup.
    let mut key_exprs = Vec::new();
    let mut key_types = Vec::new();
    for (i, k) in key.iter().enumerate() {
        let Some(col) = cols.iter().find(|c| &c.name == k) else {
            fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("rserv: key column \"{k}\" of replicated table {table} no longer exists"),
                format!(
                    "re-register the table with its key: {}; {}",
                    call_hint("rserv_remove_table", &table, ""),
                    call_hint("rserv_add_table", &table, "")
                ),
            );
        };
        key_exprs.push(format!("(k.key[{}])::{}", i + 1, col.type_name));
        key_types.push(col.type_name.clone());
    }
    let list = |items: Vec<String>| items.join(", ");
    let aliased = list(
        key.iter()
            .zip(&key_exprs)
            .map(|(k, e)| format!("{e} AS {}", quote_ident(k)))
            .collect(),
    );
    let key_cols = list(
        key.iter()
            .map(|k| format!("t.{}", quote_ident(k)))
            .collect(),
    );
    let sent: Vec<&crate::common::Column> = cols.iter().filter(|c| !c.generated).collect();
    let pending = format!(
        "pg_temp._rserv_pending_ AS k WHERE k.reloid = {} AND k.key IS NOT NULL",
        reloid.to_u32()
    );
    let mk = |section, columns: Vec<String>, types: Vec<String>, query: Option<String>| Section {
        section,
        schema: info.schema.clone(),
        table: info.name.clone(),
        columns,
        types,
        key: key.clone(),
        query,
        estimate: None,
    };
    let select_list = list(
        sent.iter()
            .map(|c| format!("t.{}", quote_ident(&c.name)))
            .collect(),
    );
    let mut out = Vec::new();
    if copy {
        // The initial copy: the whole table as of this snapshot.
        out.push(mk("TRUNCATE", Vec::new(), Vec::new(), None));
        let mut all = mk(
            "INSERT",
            sent.iter().map(|c| c.name.clone()).collect(),
            sent.iter().map(|c| c.type_name.clone()).collect(),
            Some(format!("SELECT {select_list} FROM ONLY {table} AS t")),
        );
        all.estimate = first::<i64>(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class WHERE oid = $1",
            &[reloid.into()],
            "estimating the table size",
        );
        out.push(all);
        return out;
    }
    if truncated {
        out.push(mk("TRUNCATE", Vec::new(), Vec::new(), None));
    } else {
        // Every changed identity goes: the INSERT section then brings back those that still
        // exist. The slave can load rows straight into the table, with no merge step.
        out.push(mk(
            "DELETE",
            key.clone(),
            key_types,
            Some(format!("SELECT DISTINCT {aliased} FROM {pending}")),
        ));
    }
    out.push(mk(
        "INSERT",
        sent.iter().map(|c| c.name.clone()).collect(),
        sent.iter().map(|c| c.type_name.clone()).collect(),
        Some(format!(
            "SELECT {select_list} FROM ONLY {table} AS t WHERE ({key_cols}) IN (SELECT {} FROM {pending})",
            list(key_exprs.clone())
        )),
    ));
    out
}

/// Confirm that slave `server` applied change set `syncid` (the seed's MasterSync). The next
/// prepare for that server starts from this snapshot. Returns false if there is no such
/// prepared change set (already confirmed, superseded, or never prepared).
#[pg_extern(volatile, security_definer)]
fn rserv_confirm(server: i32, syncid: i64) -> bool {
    let _definer = definer();
    require_replicator("rserv_confirm");
    let s = ext_schema();
    let status = first::<i32>(
        &format!(
            "SELECT status FROM {s}._rserv_sync_ WHERE server = $1 AND syncid = $2 FOR UPDATE"
        ),
        &[server.into(), syncid.into()],
        "reading _rserv_sync_",
    );
    match status {
        // Nothing to do: never prepared for this server, already confirmed, or superseded.
        None => false,
        Some(st) if st > 0 => false,
        Some(_) => {
            Spi::run_with_args(
                &format!(
                    "UPDATE {s}._rserv_sync_ SET status = 1, confirmed = now() WHERE server = $1 AND syncid = $2"
                ),
                &[server.into(), syncid.into()],
            )
            .or_fail("confirming the sync");
            Spi::run_with_args(
                &format!("DELETE FROM {s}._rserv_sync_ WHERE server = $1 AND syncid < $2"),
                &[server.into(), syncid.into()],
            )
            .or_fail("removing superseded syncs");
            // Initial copies carried by this change set (or an earlier one) are done.
            Spi::run_with_args(
                &format!(
                    "UPDATE {s}._rserv_server_tables_ SET state = 'ready' \
                     WHERE server = $1 AND state = 'copying' AND syncid <= $2"
                ),
                &[server.into(), syncid.into()],
            )
            .or_fail("marking initial copies done");
            true
        }
    }
}

/// Mark one row identity of a replicated table as changed, so the next change set carries its
/// current state (or its deletion) to every slave: what `replicate check --repair` uses to fix
/// only the rows that differ. `key` is the identity as text, one element per key column.
/// Logged as "possibly deleted": the row may exist only on the slave.
#[pg_extern(volatile, security_definer)]
fn rserv_touch(tbl: crate::common::RegClass, key: Vec<String>) {
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
}

/// Allow `role` to run replication (replicate's prepare/apply/confirm/status) in this database
/// without being a superuser. Only a superuser or the extension's owner may grant it.
#[pg_extern(volatile, security_definer)]
fn rserv_grant_replication(role: &str) {
    let _definer = definer();
    grant_or_revoke(role, true);
}

/// Take back rserv_grant_replication().
#[pg_extern(volatile, security_definer)]
fn rserv_revoke_replication(role: &str) {
    let _definer = definer();
    grant_or_revoke(role, false);
}

fn grant_or_revoke(role: &str, grant: bool) {
    let s = ext_schema();
    let ext_owner = first::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
        &[],
        "reading the extension's owner",
    );
    let me = crate::common::outer_user();
    // SAFETY: catalog look-ups of existing roles
    let allowed = unsafe {
        pg_sys::superuser_arg(me) || ext_owner.is_some_and(|o| pg_sys::has_privs_of_role(me, o))
    };
    if !allowed {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "rserv: only a superuser or the owner of extension rserv may grant or revoke replication",
            "",
        );
    }
    let oid = first::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1",
        &[role.into()],
        "looking up the role",
    );
    let Some(oid) = oid else {
        fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("rserv: role \"{role}\" does not exist"),
            "create it first: CREATE ROLE ... LOGIN",
        );
    };
    let verb = if grant { "GRANT" } else { "REVOKE" };
    let prep = if grant { "TO" } else { "FROM" };
    if grant {
        Spi::run_with_args(
            &format!(
                "INSERT INTO {s}._rserv_replicators_ (role) VALUES ($1) ON CONFLICT DO NOTHING"
            ),
            &[oid.into()],
        )
    } else {
        Spi::run_with_args(
            &format!("DELETE FROM {s}._rserv_replicators_ WHERE role = $1"),
            &[oid.into()],
        )
    }
    .or_fail("updating _rserv_replicators_");
    Spi::run(&format!(
        "{verb} SELECT ON {s}.rserv_status {prep} {}",
        quote_ident(role)
    ))
    .or_fail("granting rserv_status");
}

/// Forget slave `server`: its registration and its change sets. Log clean-up stops waiting for
/// it. Returns false if it was not registered.
#[pg_extern(volatile, security_definer)]
fn rserv_drop_server(server: i32) -> bool {
    let _definer = definer();
    require_replicator("rserv_drop_server");
    let s = ext_schema();
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_sync_ WHERE server = $1"),
        &[server.into()],
    )
    .or_fail("deleting the server's syncs");
    Spi::get_one_with_args::<i64>(
        &format!(
            "WITH d AS (DELETE FROM {s}._rserv_servers_ WHERE server = $1 RETURNING 1) SELECT count(*) FROM d"
        ),
        &[server.into()],
    )
    .or_fail("deleting the server")
    .unwrap_or(0)
        > 0
}

/// Remove log rows no slave needs any more (the seed's CleanLog): those written by
/// transactions every registered slave's confirmed snapshot already sees. While any registered
/// slave has never confirmed a sync, nothing is removed. Returns the number of rows removed.
#[pg_extern(volatile, security_definer)]
fn rserv_clean_log() -> i64 {
    let _definer = definer();
    require_replicator("rserv_clean_log");
    let s = ext_schema();
    let horizon = Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT count(*) FILTER (WHERE c.minid IS NULL), min(c.minid) \
                 FROM {s}._rserv_servers_ v LEFT JOIN LATERAL \
                   (SELECT minid FROM {s}._rserv_sync_ y WHERE y.server = v.server AND y.status > 0 \
                    ORDER BY syncid DESC LIMIT 1) c ON true"
            ),
            None,
            &[],
        )?;
        let mut out = (0i64, None);
        for r in tab {
            out = (r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?);
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("computing the clean-up horizon");
    match horizon {
        (0, Some(h)) => match truncate_log(&s, h) {
            Some(n) => n,
            None => Spi::get_one_with_args::<i64>(
                &format!(
                    "WITH d AS (DELETE FROM {s}._rserv_log_ WHERE logid < $1 RETURNING 1) SELECT count(*) FROM d"
                ),
                &[h.into()],
            )
            .or_fail("deleting log rows")
            .unwrap_or(0),
        },
        (0, None) => {
            notice!("rserv: no slave is registered; the log is kept");
            0
        }
        (n, _) => {
            notice!("rserv: {} registered slave(s) never confirmed a sync; the log is kept", n);
            0
        }
    }
}

/// Clean-up of a log that holds nothing any slave needs (every row below `horizon`): TRUNCATE
/// it instead of deleting row by row, which leaves nothing for VACUUM. Returns None (the caller
/// deletes instead) unless the log can be had to ourselves at once: a writer still inserting
/// or a prepare reading it holds a lock, and clean-up never waits for one.
fn truncate_log(s: &str, horizon: i64) -> Option<i64> {
    // SAFETY: reading backend transaction state
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return None; // the check below needs a snapshot taken after the lock
    }
    let log = first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[format!("{s}._rserv_log_").into()],
        "finding the log",
    )?;
    // SAFETY: a conditional lock request on an existing relation; held until transaction end
    let locked = unsafe {
        pg_sys::ConditionalLockRelationOid(log, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE)
    };
    if !locked {
        return None;
    }
    // With the lock no transaction that wrote to the log is still running, so a snapshot
    // taken now sees every row there is; a read-write SPI query takes a fresh one.
    // SAFETY: assigns this transaction an xid (TRUNCATE would anyway)
    unsafe { pg_sys::GetCurrentTransactionId() };
    let counts = Spi::connect_mut(|client| {
        let tab = client.update(
            &format!(
                "SELECT count(*) FILTER (WHERE logid < $1), count(*) FILTER (WHERE logid >= $1) \
                 FROM {s}._rserv_log_"
            ),
            None,
            &[horizon.into()],
        )?;
        let mut out = (0i64, 1i64);
        for r in tab {
            out = (r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(1));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("counting log rows");
    if counts.1 != 0 {
        return None; // some rows are still needed: delete the others one by one
    }
    Spi::run(&format!("TRUNCATE {s}._rserv_log_")).or_fail("truncating the log");
    Some(counts.0)
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
    fn confirm_of_an_unknown_change_set_is_false() {
        assert_eq!(
            Spi::get_one::<bool>("SELECT rserv_confirm(0, 42)").unwrap(),
            Some(false)
        );
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
