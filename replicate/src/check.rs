//! `replicate check`: prove the slave equals the master, table by table, without shipping the
//! tables; `--repair` fixes only the rows that differ.
//!
//! Both sides are compared at one logical point: the hashes of the master are computed inside
//! the prepare transaction of a replication cycle, at its snapshot, and those of the slave
//! right after that cycle applied exactly that snapshot. Each table is split into buckets by a
//! hash of its key; a bucket is a row count and a sum of row hashes (order-independent, so
//! collations and physical order do not matter). Only buckets that differ are compared row by
//! row, in a second cycle. Repair marks the differing keys as changed on the master
//! (`rserv_touch`) and runs one more cycle: the slave gets their current state in one
//! transaction, through the ordinary change-set path.

use crate::cycle::{self, CycleOptions, Endpoints, Outcome, Session};
use crate::error::{DbContext, Error};
use crate::rserv::{Api, Rserv};
use crate::{slave, table};
use postgres::{Client, GenericClient};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

/// A replicated table as check sees it: quoted names, the key, the compared columns.
#[derive(Clone, Debug)]
pub struct Table {
    /// schema.table, for people
    pub name: String,
    /// quoted, for SQL
    pub quoted: String,
    /// `[ONLY] quoted AS t`: the table's own rows (a partitioned table's are its partitions')
    qualified: String,
    key_exprs: Vec<String>,
    /// the columns compared, as `t.name`
    pub col_exprs: Vec<String>,
    buckets: i64,
    watched_only: bool,
}

impl Table {
    fn bucket_expr(&self) -> String {
        format!(
            "(pg_catalog.abs(pg_catalog.hashtext(ROW({})::text)::int8) % {})::int4",
            self.key_exprs.join(", "),
            self.buckets
        )
    }

    fn row_hash(&self) -> String {
        format!("pg_catalog.md5(ROW({})::text)", self.col_exprs.join(", "))
    }

    /// The key as a text array of each column's output-function text, as the capture trigger
    /// logs it and `rserv_touch` takes it. Not `k::text`: a cast to text can differ from the
    /// output function (`true::text` is 'true', the log holds 't'; `char(n)`, `inet`), and a
    /// table owner who owns the key's type can make one (`CREATE CAST ... WITH FUNCTION`) that
    /// would run as this session's role. `format('%s', k)` calls the output function only.
    pub fn key_array(&self) -> String {
        let parts: Vec<String> = self
            .key_exprs
            .iter()
            .map(|k| format!("pg_catalog.format('%s', {k})"))
            .collect();
        format!("ARRAY[{}]", parts.join(", "))
    }

    /// `FROM` clause reading the table's rows as `t`.
    pub fn from(&self) -> &str {
        &self.qualified
    }

    fn bucket_query(&self) -> String {
        format!(
            "SELECT {b}, count(*), sum(('x' || pg_catalog.substr({h}, 1, 15))::bit(60)::int8)::text \
             FROM {t} GROUP BY 1",
            b = self.bucket_expr(),
            h = self.row_hash(),
            t = self.qualified
        )
    }

    fn rows_query(&self) -> String {
        format!(
            "SELECT {k}, {h} FROM {t} WHERE {b} = ANY ($1::int4[])",
            k = self.key_array(),
            h = self.row_hash(),
            t = self.qualified,
            b = self.bucket_expr()
        )
    }
}

type Buckets = BTreeMap<i32, (i64, String)>;
type Rows = HashMap<Vec<String>, String>;

/// Settings under which both sides write values as the same text (`SET LOCAL`).
pub const CANONICAL: &str =
    "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL extra_float_digits = 3; SET LOCAL TimeZone = 'UTC'; SET LOCAL bytea_output = 'hex'; \
     SET LOCAL lc_monetary = 'C'";

fn buckets_of(c: &mut impl GenericClient, t: &Table, side: &str) -> Result<Buckets, Error> {
    Ok(c.query(&t.bucket_query(), &[])
        .ctx(format!("{side}: hashing {}", t.name))?
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0),
                (
                    r.get::<_, i64>(1),
                    r.get::<_, Option<String>>(2).unwrap_or_default(),
                ),
            )
        })
        .collect())
}

fn rows_of(
    c: &mut impl GenericClient,
    t: &Table,
    buckets: &[i32],
    side: &str,
) -> Result<Rows, Error> {
    Ok(c.query(&t.rows_query(), &[&buckets])
        .ctx(format!("{side}: reading {}", t.name))?
        .iter()
        .map(|r| (r.get::<_, Vec<String>>(0), r.get::<_, String>(1)))
        .collect())
}

/// Rows (key, hash) of every table in its suspect buckets; nothing for a table without any.
fn suspect_rows(
    c: &mut impl GenericClient,
    tables: &[Table],
    suspects: &[Vec<i32>],
    side: &str,
) -> Result<Vec<Rows>, Error> {
    tables
        .iter()
        .zip(suspects)
        .map(|(t, b)| {
            if b.is_empty() {
                Ok(Rows::new())
            } else {
                rows_of(c, t, b, side)
            }
        })
        .collect()
}

#[derive(Serialize, Debug, Default, Clone)]
pub struct TableReport {
    pub table: String,
    pub master_rows: i64,
    pub slave_rows: i64,
    /// key values (as text) of rows only the master has
    pub missing_on_slave: Vec<Vec<String>>,
    /// rows only the slave has
    pub extra_on_slave: Vec<Vec<String>>,
    /// rows both have, with different contents
    pub different: Vec<Vec<String>>,
    /// the table replicates UPDATEs of watched columns only: other columns may differ
    pub watched_columns_only: bool,
}

impl TableReport {
    pub fn equal(&self) -> bool {
        self.missing_on_slave.is_empty()
            && self.extra_on_slave.is_empty()
            && self.different.is_empty()
            && self.master_rows == self.slave_rows
    }

    fn keys(&self) -> impl Iterator<Item = &Vec<String>> {
        self.missing_on_slave
            .iter()
            .chain(&self.extra_on_slave)
            .chain(&self.different)
    }
}

#[derive(Serialize, Debug, Default)]
pub struct Report {
    /// sync id of the slave the comparison was made at
    pub syncid: Option<i64>,
    pub tables: Vec<TableReport>,
    /// rows marked for repair and re-sent (with --repair)
    pub repaired: usize,
}

impl Report {
    pub fn equal(&self) -> bool {
        self.tables.iter().all(TableReport::equal)
    }
}

fn tables(ep: &mut Endpoints) -> Result<Vec<Table>, Error> {
    let received: BTreeSet<(String, String)> = slave::tables(ep.slave, ep.slave_rs)?
        .into_iter()
        .map(|(schema, table, _)| (schema, table))
        .collect();
    let mut out = Vec::new();
    for t in table::list(ep.master, ep.master_rs)? {
        if !received.contains(&(t.schema.clone(), t.table.clone())) {
            continue;
        }
        if let Some(described) = describe(ep.master, &t, "master")? {
            out.push(described);
        }
    }
    Ok(out)
}

/// How check reads replicated table `t` on one side (None: no such table there).
pub fn describe(
    c: &mut impl GenericClient,
    t: &table::ReplicatedTable,
    side: &str,
) -> Result<Option<Table>, Error> {
    let rows = c
        .query(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname), \
                    greatest(c.reltuples, 0)::int8, \
                    ARRAY(SELECT 't.' || pg_catalog.quote_ident(a.attname) FROM pg_catalog.pg_attribute a \
                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                            AND a.attgenerated = '' ORDER BY a.attnum), \
                    ARRAY(SELECT 't.' || pg_catalog.quote_ident(k) FROM unnest($3::text[]) AS k), \
                    c.relkind = 'p' \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&t.schema, &t.table, &t.key],
        )
        .ctx(format!("{side}: describing a table"))?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let quoted: String = r.get(0);
    let reltuples: i64 = r.get(1);
    let partitioned: bool = r.get(4);
    Ok(Some(Table {
        name: format!("{}.{}", t.schema, t.table),
        qualified: format!("{}{quoted} AS t", if partitioned { "" } else { "ONLY " }),
        quoted,
        col_exprs: r.get(2),
        key_exprs: r.get(3),
        buckets: (reltuples / 1000).clamp(1, 4096),
        watched_only: t.watched.is_some(),
    }))
}

/// One cycle with `master_side` run at its snapshot on the master; then `slave_side` on the
/// slave, which is at that very snapshot. Retries if another applier moved the slave on.
fn at_one_point<M, S>(
    ep: &mut Endpoints,
    opts: &CycleOptions,
    mut master_side: impl FnMut(&mut postgres::Transaction<'_>) -> Result<M, Error> + Send,
    mut slave_side: impl FnMut(&mut postgres::Transaction<'_>) -> Result<S, Error>,
) -> Result<(Option<i64>, M, S), Error>
where
    M: Send,
{
    // the slave may differ from its master (that is what is being found out): a row the master
    // logged as inserted may be there already, so every changed identity is deleted first
    let opts = &CycleOptions {
        replace_rows: true,
        ..opts.clone()
    };
    for _ in 0..5 {
        let result: Mutex<Option<M>> = Mutex::new(None);
        let mut hook = |tx: &mut postgres::Transaction<'_>| -> Result<(), Error> {
            let m = master_side(tx)?;
            if let Ok(mut slot) = result.lock() {
                *slot = Some(m);
            }
            Ok(())
        };
        let outcome = cycle::run(ep, opts, &mut Session::default(), Some(&mut hook))?;
        let expected = match outcome {
            Outcome::Applied { syncid, .. } => Some(syncid),
            _ => slave::sync_id(ep.slave, ep.slave_rs)?,
        };
        let mut tx = ep.slave.transaction().ctx("slave: starting the check")?;
        tx.batch_execute(&format!(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; {CANONICAL}"
        ))
        .ctx("slave: check settings")?;
        let now: Option<i64> = tx
            .query_one(
                &format!("SELECT {}()", ep.slave_rs.func("rserv_slave_sync_id")),
                &[],
            )
            .ctx("slave: reading its sync id")?
            .get(0);
        if now != expected {
            continue; // another replicate applied meanwhile: compare again
        }
        let s = slave_side(&mut tx)?;
        tx.rollback().ctx("slave: ending the check")?;
        let m = result
            .into_inner()
            .ok()
            .flatten()
            .ok_or_else(|| Error::Failed("check: the master side did not run".into()))?;
        return Ok((expected, m, s));
    }
    Err(Error::Failed(
        "check: the slave kept moving (another replicate is applying to it); stop it or try again"
            .into(),
    ))
}

/// Around a comparison, on the slave (rserv 1.1): a slave that a failover re-pointed while it
/// was behind refuses change sets until a comparison finds it equal to its new master; this
/// session may apply them meanwhile (its cycles), and a verdict of equal ends that wait. With
/// `equal` None, the comparison begins; else it ended with that verdict.
fn comparing(ep: &mut Endpoints, equal: Option<bool>) -> Result<(), Error> {
    if ep.slave_rs.api < Api::V1_1 {
        return Ok(());
    }
    let rs = ep.slave_rs;
    match equal {
        None => ep
            .slave
            .query_one(
                &format!("SELECT {}()", rs.func("rserv_slave_check_begin")),
                &[],
            )
            .ctx("slave: starting the comparison")?,
        Some(e) => ep
            .slave
            .query_one(
                &format!("SELECT {}($1)", rs.func("rserv_slave_check_end")),
                &[&e],
            )
            .ctx("slave: recording the comparison")?,
    };
    Ok(())
}

/// Compare every table the slave receives; with `repair`, fix the rows that differ.
pub fn check(ep: &mut Endpoints, opts: &CycleOptions, repair: bool) -> Result<Report, Error> {
    comparing(ep, None)?;
    let report = compare(ep, opts, repair)?;
    // (a repair's result is the next comparison's to judge)
    comparing(ep, Some(report.equal()))?;
    Ok(report)
}

fn compare(ep: &mut Endpoints, opts: &CycleOptions, repair: bool) -> Result<Report, Error> {
    let tables = tables(ep)?;
    // Pass 1: bucket hashes.
    let (syncid, mb, sb) = at_one_point(
        ep,
        opts,
        |tx| {
            tables
                .iter()
                .map(|t| buckets_of(tx, t, "master"))
                .collect::<Result<Vec<_>, _>>()
        },
        |tx| {
            tables
                .iter()
                .map(|t| buckets_of(tx, t, "slave"))
                .collect::<Result<Vec<_>, _>>()
        },
    )?;
    let mut report = Report {
        syncid,
        ..Report::default()
    };
    let mut suspects: Vec<Vec<i32>> = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let count = |b: &Buckets| b.values().map(|(n, _)| n).sum::<i64>();
        let all: BTreeSet<i32> = mb[i].keys().chain(sb[i].keys()).copied().collect();
        suspects.push(
            all.into_iter()
                .filter(|b| mb[i].get(b) != sb[i].get(b))
                .collect(),
        );
        report.tables.push(TableReport {
            table: t.name.clone(),
            master_rows: count(&mb[i]),
            slave_rows: count(&sb[i]),
            watched_columns_only: t.watched_only,
            ..TableReport::default()
        });
    }
    // Pass 2: row by row, only in the buckets that differ.
    if suspects.iter().any(|s| !s.is_empty()) {
        let (_, mr, sr) = at_one_point(
            ep,
            opts,
            |tx| suspect_rows(tx, &tables, &suspects, "master"),
            |tx| suspect_rows(tx, &tables, &suspects, "slave"),
        )?;
        for (i, r) in report.tables.iter_mut().enumerate() {
            for (k, h) in &mr[i] {
                match sr[i].get(k) {
                    None => r.missing_on_slave.push(k.clone()),
                    Some(sh) if sh != h => r.different.push(k.clone()),
                    Some(_) => {}
                }
            }
            r.extra_on_slave = sr[i]
                .keys()
                .filter(|k| !mr[i].contains_key(*k))
                .cloned()
                .collect();
            for v in [
                &mut r.missing_on_slave,
                &mut r.extra_on_slave,
                &mut r.different,
            ] {
                v.sort();
            }
        }
    }
    if repair && !report.equal() {
        let marks: Vec<(&Table, Vec<Vec<String>>)> = tables
            .iter()
            .zip(&report.tables)
            .map(|(t, r)| (t, r.keys().cloned().collect()))
            .collect();
        report.repaired = touch(ep.master, ep.master_rs, &marks)?;
        cycle::run(ep, opts, &mut Session::default(), None)?;
    }
    Ok(report)
}

/// Mark rows (by key, as text arrays) of tables on the master as changed (`rserv_touch`), in
/// one transaction: the next change set carries their current state, or their deletion, to
/// every slave. Returns how many were marked.
pub fn touch(
    master: &mut Client,
    rs: &Rserv,
    marks: &[(&Table, Vec<Vec<String>>)],
) -> Result<usize, Error> {
    let mut tx = master.transaction().ctx("master: starting the repair")?;
    let touch = format!(
        "SELECT {}($1::text::regclass, $2::text[])",
        rs.func("rserv_touch")
    );
    let mut n = 0;
    for (t, keys) in marks {
        for key in keys {
            tx.execute(&touch, &[&t.quoted, key])
                .ctx(format!("master: marking a row of {} for repair", t.name))?;
            n += 1;
        }
    }
    tx.commit().ctx("master: committing the repair marks")?;
    Ok(n)
}

/// A report for people.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    for t in &r.tables {
        let verdict = if t.equal() { "equal" } else { "DIFFERENT" };
        out.push_str(&format!(
            "{:<40} {verdict:<9} master {} rows, slave {} rows\n",
            t.table, t.master_rows, t.slave_rows
        ));
        for (what, keys) in [
            ("missing on the slave", &t.missing_on_slave),
            ("only on the slave", &t.extra_on_slave),
            ("different", &t.different),
        ] {
            for k in keys.iter().take(20) {
                out.push_str(&format!("    {what}: key ({})\n", k.join(", ")));
            }
            if keys.len() > 20 {
                out.push_str(&format!("    ... and {} more {what}\n", keys.len() - 20));
            }
        }
        if !t.equal() && t.watched_columns_only {
            out.push_str("    note: this table replicates UPDATEs of its watched columns only\n");
        }
    }
    if r.repaired > 0 {
        out.push_str(&format!("{} rows re-sent to the slave\n", r.repaired));
    }
    out
}
