//! Master side: registration, prepare (PrepareSnapshot), confirm (MasterSync), clean-up.

use crate::error::{DbContext, Error, IoContext};
use crate::progress::Progress;
use crate::rserv::{Api, Rserv};
use crate::snapshot::{Header, SectionKind, SectionMeta, SnapshotWriter, Stats};
use postgres::{Client, IsolationLevel};
use std::io::Write;

/// How often a prepare that collided with a concurrent one for the same slave is retried.
const PREPARE_ATTEMPTS: usize = 10;

pub fn add_table(
    client: &mut Client,
    rs: &Rserv,
    table: &str,
    column: Option<&str>,
) -> Result<(), Error> {
    rs.call_on_user_table(client, "rserv_add_table", table, Some(column))
        .ctx(format!("master: registering table {table}"))
}

pub fn remove_table(client: &mut Client, rs: &Rserv, table: &str) -> Result<(), Error> {
    rs.call_on_user_table(client, "rserv_remove_table", table, None)
        .ctx(format!("master: removing table {table}"))
}

struct Section {
    kind: SectionKind,
    meta: SectionMeta,
    query: Option<String>,
}

/// Which slave a change set is for.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `_rserv_servers_.server` on the master
    pub server: i32,
    /// the slave's rserv_node_id(): binds the server id to that database
    pub slave_node: Option<String>,
    /// (schema, table, needs a fresh copy) the slave receives; None: every registered table
    pub tables: Option<Vec<(String, String, bool)>>,
    /// report progress of initial copies even when short
    pub verbose: bool,
    /// the slave applies UPSERT sections (rows updated in place): its rserv does
    pub in_place: bool,
}

impl Target {
    pub fn server(server: i32) -> Target {
        Target {
            server,
            ..Target::default()
        }
    }
}

/// Register the slave on the master, in a transaction of its own, before its change sets are
/// prepared (log clean-up only counts committed registrations). rserv 1.0 has no such call: its
/// prepare registers the slave.
pub fn register(client: &mut Client, rs: &Rserv, target: &Target) -> Result<(), Error> {
    if rs.api == Api::V1_0 {
        return Ok(());
    }
    client
        .execute(
            &format!("SELECT {}($1, $2)", rs.func("rserv_register_slave")),
            &[&target.server, &target.slave_node],
        )
        .ctx(format!("master: registering slave {}", target.server))?;
    Ok(())
}

/// The server id the slave database whose node id is `slave_node` is bound to, if any. Read
/// from `rserv_status`, which takes no lock that waits for a prepare in progress.
pub fn bound_server(
    client: &mut Client,
    rs: &Rserv,
    slave_node: &str,
) -> Result<Option<i32>, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT server FROM {} WHERE slave_node = $1::text::uuid ORDER BY server LIMIT 1",
                rs.func("rserv_status")
            ),
            &[&slave_node],
        )
        .ctx("master: looking up the slave's server id")?;
    Ok(row.map(|r| r.get(0)))
}

/// A registration bound to no slave database (the seed's `prepare` registers slaves so) whose
/// last confirmed change set is `syncid`. Sync ids are unique on a master: the slave that
/// applied `syncid` is that registration's slave.
pub fn unbound_server_confirmed_at(
    client: &mut Client,
    rs: &Rserv,
    syncid: i64,
) -> Result<Option<i32>, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT server FROM {} WHERE server IS NOT NULL AND slave_node IS NULL AND confirmed_syncid = $1 \
                 ORDER BY server LIMIT 1",
                rs.func("rserv_status")
            ),
            &[&syncid],
        )
        .ctx("master: looking for the slave's registration")?;
    Ok(row.map(|r| r.get(0)))
}

/// The server id of the slave database whose node id is `slave_node`: the one it is bound to,
/// or (registered now, in a transaction of its own) the lowest free id from 1 up
/// (`rserv_server_for_node`, which locks the slave registry while it looks).
pub fn server_for_node(client: &mut Client, rs: &Rserv, slave_node: &str) -> Result<i32, Error> {
    rs.require_1_1("giving a new slave a server id (or pass --server N)")?;
    let row = client
        .query_one(
            &format!("SELECT {}($1)", rs.func("rserv_server_for_node")),
            &[&slave_node],
        )
        .ctx("master: finding the slave's server id by its node id")?;
    Ok(row.get(0))
}

/// Every registered slave's server id, in order.
pub fn servers(client: &mut Client, rs: &Rserv) -> Result<Vec<i32>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT server FROM {} WHERE server IS NOT NULL ORDER BY server",
                rs.func("rserv_status")
            ),
            &[],
        )
        .ctx("master: listing its slaves")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// This master's node id (change sets name their master by it).
pub fn node_id(client: &mut Client, rs: &Rserv) -> Result<String, Error> {
    let row = client
        .query_one(&format!("SELECT {}()", rs.func("rserv_node_id")), &[])
        .ctx("master: reading its node id")?;
    Ok(row.get(0))
}

/// Code to run on the master inside the prepare transaction, at the change set's snapshot,
/// just before it commits (or rolls back when there is nothing to send).
pub type SnapshotHook<'h> =
    &'h mut (dyn FnMut(&mut postgres::Transaction<'_>) -> Result<(), Error> + Send);

/// The prepare transaction's snapshot (REPEATABLE READ: the one its first statement, the
/// prepare, took and the change set is read at), read in the prepare's own round trip.
const SNAPSHOT: &str = "pg_catalog.pg_current_snapshot()::pg_catalog.text";

/// Write the change set for the slave `target` names to `out`. Returns None when nothing
/// changed since the slave's last confirmed sync (then nothing is written). The end line is
/// written only after the master transaction committed, so a reader that sees it may commit
/// too. `at_snapshot` runs in the prepare transaction, at the change set's snapshot, just
/// before it ends.
pub fn prepare(
    client: &mut Client,
    rs: &Rserv,
    target: &Target,
    out: impl Write,
    mut at_snapshot: Option<SnapshotHook<'_>>,
) -> Result<Option<(i64, Stats)>, Error> {
    let server = target.server;
    type Columns = (Option<Vec<String>>, Option<Vec<String>>, Option<Vec<bool>>);
    let (schemas, tables, fresh): Columns = match &target.tables {
        Some(t) => (
            Some(t.iter().map(|(s, ..)| s.clone()).collect()),
            Some(t.iter().map(|(_, n, _)| n.clone()).collect()),
            Some(t.iter().map(|(.., f)| *f).collect()),
        ),
        None => (None, None, None),
    };
    let header_query = rs
        .prepared(
            client,
            &format!(
                "SELECT {}(), {}()",
                rs.func("rserv_node_id"),
                rs.func("rserv_version")
            ),
        )
        .ctx("master: reading node id")?;
    let header_row = client
        .query_one(&header_query, &[])
        .ctx("master: reading node id")?;
    let mut header = Header {
        master: header_row.get(0),
        server,
        rserv: header_row.get(1),
        postgres: Some(rs.server_version),
        ..Header::default()
    };
    rs.still(&header.rserv)?;
    // rserv 1.0 takes no fresh-copy requests and names no base, slave or fingerprint
    let query = match rs.api {
        Api::V1_0 => format!(
            "SELECT syncid, section, schema_name, table_name, columns, key_columns, query, \
                    column_types, estimated_rows, {SNAPSHOT} \
             FROM {}($1, $2, $3, $4)",
            rs.func("rserv_prepare")
        ),
        Api::V1_1 => format!(
            "SELECT syncid, section, schema_name, table_name, columns, key_columns, query, \
                    column_types, estimated_rows, {SNAPSHOT}, base_syncid, slave_node, fingerprint \
             FROM {}($1, $2, $3, $4, $5)",
            rs.func("rserv_prepare")
        ),
    };
    // Nothing in the session's schemas can shadow a built-in while we read the change set, and
    // no row-level security policy may filter it (the master then refuses, naming the table).
    let mut settings = "SET search_path = pg_catalog, pg_temp; SET row_security = off".to_string();
    if rs.api >= Api::V1_1 {
        // which sections the slave reads (a file's reader is unknown: then every release's)
        settings.push_str(if target.in_place {
            "; SET rserv.slave_reads_upsert = on"
        } else {
            "; SET rserv.slave_reads_upsert = off"
        });
    }
    rs.pin(client, &settings)
        .ctx("master: pinning search_path")?;
    let query = rs
        .prepared(client, &query)
        .ctx("master: preparing the change set")?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .ctx("master: starting the prepare transaction")?;
        let mut args: Vec<&(dyn postgres::types::ToSql + Sync)> =
            vec![&server, &target.slave_node, &schemas, &tables];
        if rs.api >= Api::V1_1 {
            args.push(&fresh);
        }
        let rows = match tx.query(&query, &args) {
            Ok(rows) => rows,
            Err(e) if attempt < PREPARE_ATTEMPTS && is_serialization_failure(&e) => {
                // Another prepare for this slave committed after our snapshot: take a new one.
                drop(tx);
                std::thread::sleep(std::time::Duration::from_millis(20 * attempt as u64));
                continue;
            }
            Err(e) => return Err(e).ctx("master: preparing the change set"),
        };
        let Some(first) = rows.first() else {
            if let Some(hook) = at_snapshot.as_mut() {
                hook(&mut tx)?;
            }
            tx.rollback()
                .ctx("master: ending the prepare transaction")?;
            return Ok(None);
        };
        let syncid: i64 = first.get(0);
        header.snapshot = first.get(9);
        if rs.api >= Api::V1_1 {
            header.base = first.get(10);
            header.slave = first.get(11);
            header.fingerprint = first.get(12);
        }
        let mut sections = Vec::with_capacity(rows.len());
        for r in &rows {
            let word: String = r.get(1);
            let kind = SectionKind::parse(&word)
                .ok_or_else(|| Error::Failed(format!("master: unknown section {word}")))?;
            sections.push(Section {
                kind,
                meta: SectionMeta {
                    schema: r.get(2),
                    table: r.get(3),
                    columns: r.get(4),
                    key: r.get(5),
                    types: r.get(7),
                    estimated_rows: r.get(8),
                },
                query: r.get(6),
            });
        }
        header.declare(sections.iter().map(|s| s.kind));
        let mut w = SnapshotWriter::start(out, syncid, &header).io_ctx("writing the snapshot")?;
        let streamed = (|| -> Result<(), Error> {
            for s in &sections {
                w.section(s.kind, &s.meta).io_ctx("writing the snapshot")?;
                if let Some(q) = &s.query {
                    let reader = tx.copy_out(&format!("COPY ({q}) TO STDOUT")).ctx(format!(
                        "master: reading {}.{}",
                        s.meta.schema, s.meta.table
                    ))?;
                    let name = format!("{}.{}", s.meta.schema, s.meta.table);
                    // Initial copies can be long: show how far they are.
                    let mut progress = s
                        .meta
                        .estimated_rows
                        .map(|n| Progress::new(format!("copying {name}"), Some(n.max(0) as u64)));
                    let mut report = |rows: u64, bytes: u64| {
                        if let Some(p) = progress.as_mut() {
                            p.add(rows, bytes);
                        }
                    };
                    w.data_with_progress(reader, &mut report).map_err(|e| {
                        crate::error::stream_error(format!("master: streaming {name}"), e)
                    })?;
                    if let Some(p) = &progress {
                        p.finish(target.verbose);
                    }
                }
            }
            Ok(())
        })();
        let streamed = streamed.and_then(|()| match at_snapshot.as_mut() {
            Some(hook) => hook(&mut tx),
            None => Ok(()),
        });
        if let Err(e) = streamed {
            let _ = w.fail(&e.to_string());
            return Err(e);
        }
        if let Err(e) = tx.commit() {
            let _ = w.fail("the master transaction did not commit");
            return Err(e).ctx("master: committing the prepare transaction");
        }
        let (_, stats) = w.finish().io_ctx("finishing the snapshot")?;
        return Ok(Some((syncid, stats)));
    }
}

fn is_serialization_failure(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
}

/// Record on the master that slave `server` applied change set `syncid`.
pub fn confirm(client: &mut Client, rs: &Rserv, server: i32, syncid: i64) -> Result<bool, Error> {
    let context = || format!("master: confirming change set {syncid}");
    let confirm = rs
        .prepared(
            client,
            &format!("SELECT {}($1, $2)", rs.func("rserv_confirm")),
        )
        .ctx(context())?;
    let row = client
        .query_one(&confirm, &[&server, &syncid])
        .ctx(context())?;
    Ok(row.get(0))
}

/// Forget slave `server` on the master (its change sets and copies); false if unknown.
pub fn drop_server(client: &mut Client, rs: &Rserv, server: i32) -> Result<bool, Error> {
    let row = client
        .query_one(
            &format!("SELECT {}($1)", rs.func("rserv_drop_server")),
            &[&server],
        )
        .ctx(format!("master: dropping server {server}"))?;
    Ok(row.get(0))
}

/// Remove log rows no registered slave needs any more; returns how many.
pub fn clean_log(client: &mut Client, rs: &Rserv) -> Result<i64, Error> {
    let row = client
        .query_one(&format!("SELECT {}()", rs.func("rserv_clean_log")), &[])
        .ctx("master: cleaning the log")?;
    Ok(row.get(0))
}
