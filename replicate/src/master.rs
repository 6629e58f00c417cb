//! Master side: registration, prepare (PrepareSnapshot), confirm (MasterSync), clean-up.

use crate::error::{DbContext, Error, IoContext};
use crate::rserv::Rserv;
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
    rs.call_on_table(client, "rserv_add_table", table, Some(column))
        .ctx(format!("master: registering table {table}"))
}

pub fn remove_table(client: &mut Client, rs: &Rserv, table: &str) -> Result<(), Error> {
    rs.call_on_table(client, "rserv_remove_table", table, None)
        .ctx(format!("master: removing table {table}"))
}

struct Section {
    kind: SectionKind,
    meta: SectionMeta,
    query: Option<String>,
}

/// Write the change set for slave `server` to `out`. Returns None when nothing changed since
/// the slave's last confirmed sync (then nothing is written). The end line is written only
/// after the master transaction committed, so a reader that sees it may commit too.
pub fn prepare(
    client: &mut Client,
    rs: &Rserv,
    server: i32,
    out: impl Write,
) -> Result<Option<(i64, Stats)>, Error> {
    let header_row = client
        .query_one(
            &format!(
                "SELECT {}(), {}()",
                rs.func("rserv_node_id"),
                rs.func("rserv_version")
            ),
            &[],
        )
        .ctx("master: reading node id")?;
    let header = Header {
        master: header_row.get(0),
        server,
        rserv: header_row.get(1),
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .ctx("master: starting the prepare transaction")?;
        let rows = match tx.query(
            &format!(
                "SELECT syncid, section, schema_name, table_name, columns, key_columns, query, \
                        column_types FROM {}($1)",
                rs.func("rserv_prepare")
            ),
            &[&server],
        ) {
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
            tx.rollback()
                .ctx("master: ending the prepare transaction")?;
            return Ok(None);
        };
        let syncid: i64 = first.get(0);
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
                },
                query: r.get(6),
            });
        }
        let mut w = SnapshotWriter::start(out, syncid, &header).io_ctx("writing the snapshot")?;
        let streamed = (|| -> Result<(), Error> {
            for s in &sections {
                w.section(s.kind, &s.meta).io_ctx("writing the snapshot")?;
                if let Some(q) = &s.query {
                    let reader = tx.copy_out(&format!("COPY ({q}) TO STDOUT")).ctx(format!(
                        "master: reading {}.{}",
                        s.meta.schema, s.meta.table
                    ))?;
                    w.data(reader).map_err(|e| Error::Io {
                        context: format!("streaming {}.{}", s.meta.schema, s.meta.table),
                        source: e,
                    })?;
                }
            }
            Ok(())
        })();
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
    let row = client
        .query_one(
            &format!("SELECT {}($1, $2)", rs.func("rserv_confirm")),
            &[&server, &syncid],
        )
        .ctx(format!("master: confirming change set {syncid}"))?;
    Ok(row.get(0))
}

/// Remove log rows no registered slave needs any more; returns how many.
pub fn clean_log(client: &mut Client, rs: &Rserv) -> Result<i64, Error> {
    let row = client
        .query_one(&format!("SELECT {}()", rs.func("rserv_clean_log")), &[])
        .ctx("master: cleaning the log")?;
    Ok(row.get(0))
}
