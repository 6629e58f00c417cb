//! Slave side: registration, apply (ApplySnapshot), sync id (GetSyncID).

use crate::error::{DbContext, Error, IoContext};
use crate::rserv::Rserv;
use crate::snapshot::{Header, SectionKind, SectionMeta, SnapshotReader, Stats};
use crate::table::ReplicatedTable;
use postgres::Client;
use std::collections::VecDeque;
use std::io::{BufRead, Write};

pub fn add_table(
    client: &mut Client,
    rs: &Rserv,
    table: &str,
    column: Option<&str>,
) -> Result<(), Error> {
    rs.call_on_user_table(client, "rserv_slave_add_table", table, Some(column))
        .ctx(format!("slave: registering table {table}"))
}

pub fn remove_table(client: &mut Client, rs: &Rserv, table: &str) -> Result<(), Error> {
    rs.call_on_user_table(client, "rserv_slave_remove_table", table, None)
        .ctx(format!("slave: removing table {table}"))
}

/// The slave's own node id, which binds it to its server id on the master.
pub fn node_id(client: &mut Client, rs: &Rserv) -> Result<String, Error> {
    let row = client
        .query_one(&format!("SELECT {}()", rs.func("rserv_node_id")), &[])
        .ctx("slave: reading its node id")?;
    Ok(row.get(0))
}

/// (schema, table, needs a fresh copy) of every table the slave receives.
pub fn tables(client: &mut Client, rs: &Rserv) -> Result<Vec<(String, String, bool)>, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT schema_name, table_name, needs_copy FROM {}()",
                rs.func("rserv_slave_table_list")
            ),
            &[],
        )
        .ctx("slave: listing its tables")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Create the master's replicated tables that the slave lacks, and register them, in one
/// transaction (`replicate --create-tables`). Tables that exist but are not registered are
/// left alone: their contents would be replaced. Returns the tables created.
pub fn create_missing(
    client: &mut Client,
    rs: &Rserv,
    master_tables: &[ReplicatedTable],
) -> Result<Vec<String>, Error> {
    let mut tx = client
        .transaction()
        .ctx("slave: starting to create tables")?;
    let mut created = Vec::new();
    for t in master_tables {
        let exists: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2)",
                &[&t.schema, &t.table],
            )
            .ctx("slave: looking for a table")?
            .get(0);
        let name: String = tx
            .query_one(
                "SELECT pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2)",
                &[&t.schema, &t.table],
            )
            .ctx("slave: quoting a name")?
            .get(0);
        if exists {
            continue;
        }
        // The slave builds the DDL itself from the definition: no SQL text from the master runs.
        tx.execute(
            &format!("SELECT {}($1)", rs.func("rserv_slave_create_table")),
            &[&t.definition],
        )
        .map_err(|source| Error::Db {
            context: format!(
                "slave: creating table {name} from the master's definition (create what it needs, \
                 e.g. its schema or types, then run again)"
            ),
            source,
        })?;
        // Same identity as on the master: its key, named unless it is the primary key.
        let key = (!t.primary_key).then(|| t.key.join(","));
        rs.call_on_table(
            &mut tx,
            "rserv_slave_add_table",
            &name,
            Some(key.as_deref()),
        )
        .ctx(format!("slave: registering table {name}"))?;
        created.push(name);
    }
    tx.commit().ctx("slave: committing the new tables")?;
    Ok(created)
}

/// Give tables created by `--create-tables` their indexes, foreign keys, triggers and policies
/// once their initial copy is in (post-data after the load). Returns the tables finished.
pub fn finish_tables(client: &mut Client, rs: &Rserv) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            &format!("SELECT {}()", rs.func("rserv_slave_finish_tables")),
            &[],
        )
        .ctx("slave: finishing the tables it created")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Last change set applied on the slave; None before the first.
pub fn sync_id(client: &mut Client, rs: &Rserv) -> Result<Option<i64>, Error> {
    let row = client
        .query_one(&format!("SELECT {}()", rs.func("rserv_slave_sync_id")), &[])
        .ctx("slave: reading its sync id")?;
    Ok(row.get(0))
}

/// The slave's last applied change set and the node id of the master it came from (both None
/// before its first change set).
pub fn sync_state(client: &mut Client, rs: &Rserv) -> Result<(Option<i64>, Option<String>), Error> {
    let row = client
        .query_one(
            &format!(
                "SELECT {}(), {}()",
                rs.func("rserv_slave_sync_id"),
                rs.func("rserv_slave_master_id")
            ),
            &[],
        )
        .ctx("slave: reading its sync id")?;
    Ok((row.get(0), row.get(1)))
}

/// What applying a change set (or a whole cycle) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed on the master since the slave's last sync: there was nothing to apply
    /// (a cycle's outcome; [`apply`] always has a change set).
    InSync,
    /// The change set is now on the slave; `changed` = rows written or removed.
    Applied {
        syncid: i64,
        stats: Stats,
        changed: i64,
    },
    /// The slave already had this change set or a newer one (another run applied it first);
    /// nothing was done.
    Skipped { syncid: i64 },
}

/// Apply one snapshot in one slave transaction: all of it, or (on any error, including a
/// damaged snapshot) nothing. Returns [`Outcome::Applied`] or [`Outcome::Skipped`].
pub fn apply(client: &mut Client, rs: &Rserv, input: impl BufRead) -> Result<Outcome, Error> {
    let mut reader = SnapshotReader::open(input)?;
    let syncid = reader.syncid;
    client
        .batch_execute("SET search_path = pg_catalog, pg_temp")
        .ctx("slave: pinning search_path")?;
    // The DDL sections come first (each checked by its CHECK line as it is read): the enum
    // labels they add are committed before the change set's transaction, which could not use
    // them otherwise.
    let mut ahead: VecDeque<(SectionKind, SectionMeta, Option<Vec<u8>>)> = VecDeque::new();
    let mut ended = true; // the end line was read ahead
    while let Some((kind, meta)) = reader.next_section()? {
        if kind != SectionKind::Ddl {
            ahead.push_back((kind, meta, None));
            ended = false;
            break;
        }
        let mut rows = Vec::new();
        reader.data(&mut rows)?;
        ahead.push_back((kind, meta, Some(rows)));
    }
    let ddl: Vec<(String, String, String)> = ahead
        .iter()
        .filter_map(|(_, m, rows)| Some((m.schema.clone(), m.table.clone(), rows.as_ref()?)))
        .flat_map(|(schema, table, rows)| {
            rows.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| (schema.clone(), table.clone(), copy_text_field(l)))
                .collect::<Vec<_>>()
        })
        .collect();
    // ... but only for a change set this slave is going to apply (from its master, for this
    // database, not applied yet): rserv_apply_begin says so, in a transaction rolled back
    if !ddl.is_empty() {
        let mut check = client.transaction().ctx("slave: checking the change set")?;
        let applies = begin(&mut check, rs, syncid, &reader.header)?;
        check.rollback().ctx("slave: checking the change set")?;
        if !applies {
            return Ok(Outcome::Skipped { syncid });
        }
        let (schemas, tables, payloads): (Vec<_>, Vec<_>, Vec<_>) = ddl.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut a, mut b, mut c), (x, y, z)| {
                a.push(x);
                b.push(y);
                c.push(z);
                (a, b, c)
            },
        );
        client
            .query_one(
                &format!("SELECT {}($1, $2, $3)", rs.func("rserv_apply_types")),
                &[&schemas, &tables, &payloads],
            )
            .ctx(format!(
                "slave: adding the enum labels of change set {syncid}"
            ))?;
    }
    let mut tx = client
        .transaction()
        .ctx("slave: starting the apply transaction")?;
    if !begin(&mut tx, rs, syncid, &reader.header)? {
        tx.rollback().ctx("slave: ending the apply transaction")?;
        return Ok(Outcome::Skipped { syncid });
    }
    // Prepared once: every section then costs one round trip per call, not two.
    let stage = tx
        .prepare(&format!(
            "SELECT {}($1, $2, $3, $4, $5, $6)",
            rs.func("rserv_apply_stage")
        ))
        .ctx("slave: preparing the apply")?;
    let merge = tx
        .prepare(&format!(
            "SELECT {}($1, $2, $3, $4, $5)",
            rs.func("rserv_apply_merge")
        ))
        .ctx("slave: preparing the apply")?;
    let mut changed = 0i64;
    loop {
        let (kind, meta, buffered) = match ahead.pop_front() {
            Some(section) => section,
            None if ended => break,
            None => match reader.next_section()? {
                Some((kind, meta)) => (kind, meta, None),
                None => break,
            },
        };
        let table = format!("{}.{}", meta.schema, meta.table);
        let args: [&(dyn postgres::types::ToSql + Sync); 5] = [
            &kind.as_str(),
            &meta.schema,
            &meta.table,
            &meta.columns,
            &meta.key,
        ];
        let mut loaded = 0i64;
        // Older snapshots carry no types: skip the check rather than refuse them.
        let types: Option<&Vec<String>> = (!meta.types.is_empty()).then_some(&meta.types);
        let stage_args: [&(dyn postgres::types::ToSql + Sync); 6] =
            [args[0], args[1], args[2], args[3], args[4], &types];
        let copy: Option<String> = tx
            .query_one(&stage, &stage_args)
            .ctx(format!("slave: {} section of {table}", kind.as_str()))?
            .get(0);
        if kind.has_data() {
            let Some(copy) = copy else {
                return Err(Error::Failed(format!(
                    "slave: no staging table for {table}"
                )));
            };
            let mut w = tx.copy_in(&copy).ctx(format!("slave: loading {table}"))?;
            match &buffered {
                Some(rows) => w
                    .write_all(rows)
                    .io_ctx(format!("slave: loading {table}"))?,
                None => {
                    let copied = reader.data(&mut w);
                    // A damaged snapshot must not be hidden behind the COPY error it causes.
                    copied?;
                }
            }
            w.flush().io_ctx(format!("slave: loading {table}"))?;
            loaded = w.finish().ctx(format!("slave: loading {table}"))? as i64;
        }
        let n: i64 = tx
            .query_one(&merge, &args)
            .ctx(format!("slave: applying changes to {table}"))?
            .get(0);
        // -1: the rows went straight into the table; COPY counted them
        changed += if n < 0 { loaded } else { n };
    }
    // what the change set's schema changes left for after the rows (constraints, indexes)
    tx.query_one(&format!("SELECT {}()", rs.func("rserv_apply_end")), &[])
        .ctx(format!("slave: finishing change set {syncid}"))?;
    tx.commit()
        .ctx(format!("slave: committing change set {syncid}"))?;
    Ok(Outcome::Applied {
        syncid,
        stats: reader.stats(),
        changed,
    })
}

/// `rserv_apply_begin` for change set `syncid` with `header`: false when the slave has it
/// already (refused with an error when it must not apply it).
fn begin(
    tx: &mut postgres::Transaction<'_>,
    rs: &Rserv,
    syncid: i64,
    header: &Header,
) -> Result<bool, Error> {
    Ok(tx
        .query_one(
            &format!(
                "SELECT {}($1, $2, $3, $4, $5, $6, $7)",
                rs.func("rserv_apply_begin")
            ),
            &[
                &syncid,
                &header.master,
                &header.rserv,
                &header.server,
                &header.base,
                &header.slave,
                &header.fingerprint,
            ],
        )
        .ctx(format!("slave: starting change set {syncid}"))?
        .get(0))
}

/// One field of a COPY text row, unescaped (`\\`, `\n`, `\t`, … and octal escapes).
fn copy_text_field(line: &[u8]) -> String {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        i += 1;
        if b != b'\\' || i >= line.len() {
            out.push(b);
            continue;
        }
        let c = line[i];
        i += 1;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    match line.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_text_fields_are_unescaped() {
        assert_eq!(
            super::copy_text_field(br#"{"a": "x\\"y", "b": "\\n"}\t\101"#),
            "{\"a\": \"x\\\"y\", \"b\": \"\\n\"}\tA"
        );
    }
}
