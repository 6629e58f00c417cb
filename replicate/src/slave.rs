//! Slave side: registration, apply (ApplySnapshot), sync id (GetSyncID).

use crate::error::{DbContext, Error, IoContext};
use crate::locks;
use crate::majors::{self, Screen};
use crate::rserv::{Api, Rserv};
use crate::snapshot::{
    feature_list, Header, SectionKind, SectionMeta, SnapshotReader, Stats, FEATURE_SEQUENCE,
};
use crate::table::ReplicatedTable;
use postgres::Client;
use std::collections::VecDeque;
use std::io::{BufRead, Write};

/// Bytes of COPY data per message sent to the slave.
const COPY_MESSAGE: usize = 256 * 1024;

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

/// (schema, table, needs a fresh copy) of every table the slave receives (rserv 1.0 asks for
/// no fresh copies).
pub fn tables(client: &mut Client, rs: &Rserv) -> Result<Vec<(String, String, bool)>, Error> {
    let needs_copy = match rs.api {
        Api::V1_0 => "false",
        Api::V1_1 => "needs_copy",
    };
    let rows = client
        .query(
            &format!(
                "SELECT schema_name, table_name, {needs_copy} FROM {}()",
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
    rs.require_1_1("creating tables (--create-tables)")?;
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
    let context = "slave: finishing the tables it created";
    let rows = match client.query(
        &format!("SELECT {}()", rs.func("rserv_slave_finish_tables")),
        &[],
    ) {
        Ok(rows) => rows,
        Err(e) if locks::is_lock_wait(&e) => {
            return Err(locks::timed_out(client, "slave", context.into(), None))
        }
        Err(e) => return Err(e).ctx(context),
    };
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
/// damaged snapshot) nothing. Returns [`Outcome::Applied`] or [`Outcome::Skipped`]. A lock
/// wait that outlasts the session's `lock_timeout` rolls the change set back and is reported as
/// [`Error::LockTimeout`], naming the table and who holds the lock.
///
/// How depends on the slave's rserv ([`Api`]). rserv 1.1 is told the change set's format and
/// features and refuses what it cannot apply. rserv 1.0 accepts only change sets named with its
/// own version and knows 1.0.0's sections only: it is sent what it reads, under its version —
/// without the SEQUENCE section (1.0 never replicated sequences; the first change set after its
/// update carries every sequence's state), and a change set with schema changes is refused
/// here, before anything is applied.
pub fn apply(client: &mut Client, rs: &Rserv, input: impl BufRead) -> Result<Outcome, Error> {
    let mut at: Option<(String, String)> = None;
    match apply_in_transaction(client, rs, input, &mut at) {
        // the transaction has rolled back (dropped): the connection is free to ask who held it
        Err(e) if locks::is_lock_timeout(&e) => {
            let context = match e {
                Error::Db { context, .. } | Error::Io { context, .. } => context,
                other => other.to_string(),
            };
            Err(lock_timeout(client, context, &at))
        }
        other => other,
    }
}

fn lock_timeout(client: &mut Client, context: String, at: &Option<(String, String)>) -> Error {
    let table = at.as_ref().map(|(s, t)| (s.as_str(), t.as_str()));
    locks::timed_out(client, "slave", context, table)
}

/// [`apply`]'s transaction; `at` is the table whose section is being applied.
fn apply_in_transaction(
    client: &mut Client,
    rs: &Rserv,
    input: impl BufRead,
    at: &mut Option<(String, String)>,
) -> Result<Outcome, Error> {
    let mut reader = SnapshotReader::open(input)?;
    let syncid = reader.syncid;
    if rs.api == Api::V1_0 {
        refuse_unreadable(rs, &mut reader)?;
    }
    // rserv 1.1 keeps a session that may use replica mode in it between change sets, so the
    // next apply finds its plans still valid (each switch resets the session's plan cache)
    rs.pin(
        client,
        match rs.api {
            Api::V1_0 => "SET search_path = pg_catalog, pg_temp",
            Api::V1_1 => "SET search_path = pg_catalog, pg_temp; SET rserv.replica_session = on",
        },
    )
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
    // database, not applied yet): rserv_apply_types checks its header as rserv_apply_begin
    // does (NULL: this slave has it already)
    if !ddl.is_empty() && !add_labels(client, rs, syncid, &reader.header, ddl)? {
        return Ok(Outcome::Skipped { syncid });
    }
    let mut tx = client
        .transaction()
        .ctx("slave: starting the apply transaction")?;
    if !begin(&mut tx, rs, syncid, &reader.header)? {
        tx.rollback().ctx("slave: ending the apply transaction")?;
        return Ok(Outcome::Skipped { syncid });
    }
    // Prepared once per connection: every section then costs one round trip per call, not two.
    let stage = rs
        .prepared(
            &mut tx,
            &format!(
                "SELECT {}($1, $2, $3, $4, $5, $6)",
                rs.func("rserv_apply_stage")
            ),
        )
        .ctx("slave: preparing the apply")?;
    let merge = rs
        .prepared(
            &mut tx,
            &format!(
                "SELECT {}($1, $2, $3, $4, $5)",
                rs.func("rserv_apply_merge")
            ),
        )
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
        if kind == SectionKind::Sequence && rs.api == Api::V1_0 {
            reader.data(&mut std::io::sink())?;
            continue;
        }
        let table = format!("{}.{}", meta.schema, meta.table);
        *at = Some((meta.schema.clone(), meta.table.clone()));
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
            // Values the slave's PostgreSQL major cannot store are refused before they load.
            let screen = Screen::new(&meta, reader.header.postgres, rs.server_version);
            let loading = format!(
                "slave: loading {table}{}",
                majors::hint(reader.header.postgres, rs.server_version)
            );
            // The client sends a CopyData message whenever its buffer passes 4 kB, each one a
            // round through its runtime: a large buffer in front sends 256 kB messages instead.
            let mut w =
                std::io::BufWriter::with_capacity(COPY_MESSAGE, tx.copy_in(&copy).ctx(&loading)?);
            match &buffered {
                // a DDL section read ahead: rserv's own definitions, no values to screen
                Some(rows) => w.write_all(rows).io_ctx(&loading)?,
                None => {
                    let copied = reader.data_checked(&mut w, &mut |line| match &screen {
                        Some(s) => s.check(line),
                        None => Ok(()),
                    });
                    // A damaged snapshot must not be hidden behind the COPY error it causes.
                    copied?;
                }
            }
            let mut w = w
                .into_inner()
                .map_err(|e| e.into_error())
                .io_ctx(&loading)?;
            w.flush().io_ctx(&loading)?;
            loaded = w.finish().ctx(&loading)? as i64;
        }
        let n: i64 = tx
            .query_one(&merge, &args)
            .ctx(format!("slave: applying changes to {table}"))?
            .get(0);
        // -1: the rows went straight into the table; COPY counted them
        changed += if n < 0 { loaded } else { n };
    }
    *at = None;
    // what the change set's schema changes left for after the rows (constraints, indexes)
    if rs.api >= Api::V1_1 {
        let end = rs
            .prepared(&mut tx, &format!("SELECT {}()", rs.func("rserv_apply_end")))
            .ctx(format!("slave: finishing change set {syncid}"))?;
        tx.query_one(&end, &[])
            .ctx(format!("slave: finishing change set {syncid}"))?;
    }
    tx.commit()
        .ctx(format!("slave: committing change set {syncid}"))?;
    Ok(Outcome::Applied {
        syncid,
        stats: reader.stats(),
        changed,
    })
}

/// The extension's version in the database, read in the statement that begins the apply: a
/// connection that found another version must not apply with its calls.
const EXTVERSION: &str =
    "(SELECT e.extversion::text FROM pg_catalog.pg_extension e WHERE e.extname = 'rserv')";

/// A change set rserv 1.0 cannot apply (schema changes) is refused before anything is applied,
/// naming the table; the master keeps the changes until the slave confirms them.
fn refuse_unreadable<R: BufRead>(rs: &Rserv, reader: &mut SnapshotReader<R>) -> Result<(), Error> {
    let unreadable: Vec<&str> = reader
        .header
        .features
        .iter()
        .map(String::as_str)
        .filter(|f| *f != FEATURE_SEQUENCE)
        .collect();
    if unreadable.is_empty() {
        return Ok(());
    }
    let what = feature_list(&unreadable);
    let (syncid, master) = (reader.syncid, reader.header.rserv.clone());
    // DDL sections come first: name the table whose schema changed
    let first = match reader.next_section()? {
        Some((SectionKind::Ddl, meta)) => {
            format!(
                " (schema changes, the first of table {}.{})",
                meta.schema, meta.table
            )
        }
        _ => String::new(),
    };
    Err(Error::Failed(format!(
        "{}: cannot apply change set {syncid} of a master running rserv {master}: it uses {what}{first}, \
         which rserv 1.0 cannot apply. Nothing was applied, and the master keeps these changes \
         until this slave confirms them: update rserv on this slave (install rserv {own} on its \
         server, then ALTER EXTENSION rserv UPDATE there) and replication resumes",
        rs.node(),
        own = crate::rserv::OWN_VERSION
    )))
}

type Param<'a> = &'a (dyn postgres::types::ToSql + Sync);

/// The facts of header `h` that rserv 1.1's `rserv_apply_begin` and `rserv_apply_types` take
/// after the sync id, in their order (`format`: the change set's).
fn header_params<'a>(h: &'a Header, format: &'a i32) -> [Param<'a>; 8] {
    [
        &h.master,
        &h.rserv,
        &h.server,
        &h.base,
        &h.slave,
        &h.fingerprint,
        format,
        &h.features,
    ]
}

/// The enum labels the DDL sections `ddl` (schema, table, payload) of change set `syncid` add,
/// committed by `rserv_apply_types` (rserv 1.1, which checks the header `h` first): false when
/// this slave has the change set already.
fn add_labels(
    client: &mut Client,
    rs: &Rserv,
    syncid: i64,
    h: &Header,
    ddl: Vec<(String, String, String)>,
) -> Result<bool, Error> {
    let (mut schemas, mut tables, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    for (schema, table, payload) in ddl {
        schemas.push(schema);
        tables.push(table);
        payloads.push(payload);
    }
    let format = crate::snapshot::FORMAT;
    let mut params: Vec<Param> = vec![&schemas, &tables, &payloads, &syncid];
    params.extend(header_params(h, &format));
    let row = client
        .query_one(
            &format!(
                "SELECT {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12), {EXTVERSION}",
                rs.func("rserv_apply_types")
            ),
            &params,
        )
        .ctx(format!(
            "slave: adding the enum labels of change set {syncid}"
        ))?;
    let version_now: Option<&str> = row.get(1);
    rs.still(version_now.unwrap_or("(none)"))?;
    Ok(row.get::<_, Option<i64>>(0).is_some())
}

/// `rserv_apply_begin` for change set `syncid` with `h`, in the calls the slave's rserv version
/// offers: false when the slave has it already (refused with an error when it must not apply
/// it). The version is read in the same statement: a connection that found another version
/// must not apply with its calls.
fn begin(
    tx: &mut postgres::Transaction<'_>,
    rs: &Rserv,
    syncid: i64,
    h: &Header,
) -> Result<bool, Error> {
    let format = crate::snapshot::FORMAT;
    let context = || format!("slave: starting change set {syncid}");
    let begin = match rs.api {
        Api::V1_0 => tx.query_one(
            &format!(
                "SELECT {}($1, $2, $3), {EXTVERSION}",
                rs.func("rserv_apply_begin")
            ),
            &[&syncid, &h.master, &rs.version],
        ),
        Api::V1_1 => {
            let mut params: Vec<Param> = vec![&syncid];
            params.extend(header_params(h, &format));
            params.push(&h.snapshot);
            let statement = rs
                .prepared(
                    tx,
                    &format!(
                        "SELECT {}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10), {EXTVERSION}",
                        rs.func("rserv_apply_begin")
                    ),
                )
                .ctx(context())?;
            tx.query_one(&statement, &params)
        }
    }
    .ctx(context())?;
    // (an error drops the transaction: rolled back)
    let version_now: Option<&str> = begin.get(1);
    rs.still(version_now.unwrap_or("(none)"))?;
    Ok(begin.get(0))
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
