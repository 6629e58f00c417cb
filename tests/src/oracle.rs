//! Oracles for divergence tests: what the slave must hold after a cycle.
//!
//! The invariant rserv promises is that after every applied change set the slave holds
//! exactly the master's state as of that change set's snapshot. [`cycle`] checks it directly:
//! it runs one cycle with `replicate::cycle::run` and dumps the master *inside* the
//! prepare transaction (the at_snapshot hook, so at the change set's own snapshot), then the
//! slave right after the cycle, and compares the two row by row.

use crate::pair::Session;
use crate::Cluster;
use postgres::{GenericClient, Transaction};
use replicate::cycle::{self, CycleOptions, Endpoints, Outcome, Session as CycleSession};
use replicate::error::Error;
use replicate::rserv::Rserv;
use std::collections::BTreeMap;

/// `(schema, table)` of a replicated table.
pub type Table = (String, String);

/// Every row of some tables as text, sorted, by `schema.table`.
pub type Dump = BTreeMap<String, Vec<String>>;

/// Settings under which every value prints the same way on both sides.
const CANONICAL: &str = "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD';
    SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3;
    SET LOCAL bytea_output = 'hex'";

/// Every row of `tables` as text (`t::text`), sorted, under fixed output settings. Works on a
/// connection (in a transaction of its own) and inside a transaction (in a savepoint, which
/// keeps that transaction's snapshot); either way nothing is changed.
pub fn dump(c: &mut impl GenericClient, tables: &[Table]) -> Result<Dump, postgres::Error> {
    let mut tx = c.transaction()?;
    tx.batch_execute(CANONICAL)?;
    let mut out = Dump::new();
    for (schema, name) in tables {
        let q: String = tx
            .query_one(
                "SELECT pg_catalog.quote_ident($1) || '.' || pg_catalog.quote_ident($2)",
                &[schema, name],
            )?
            .get(0);
        let mut rows: Vec<String> = tx
            .query(&format!("SELECT t::text FROM {q} AS t"), &[])?
            .iter()
            .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
            .collect();
        rows.sort();
        out.insert(format!("{schema}.{name}"), rows);
    }
    tx.rollback()?;
    Ok(out)
}

/// [`dump`] of `tables` on `db` of cluster `c`, on a fresh connection as the superuser.
pub fn dump_cluster(c: &Cluster, db: &str, tables: &[Table]) -> Dump {
    let mut client = c.connect(db);
    dump(&mut client, tables).unwrap_or_else(|e| panic!("dumping {tables:?} on {}: {e}", c.name()))
}

/// `public.<name>` for each name.
pub fn public(names: &[&str]) -> Vec<Table> {
    names
        .iter()
        .map(|n| ("public".to_string(), n.to_string()))
        .collect()
}

/// What differs between `expected` (the master) and `actual` (the slave), row by row and per
/// table; None when they are equal. At most `LIMIT` rows are named per table and side.
pub fn diff(expected: &Dump, actual: &Dump) -> Option<String> {
    const LIMIT: usize = 10;
    let mut out = String::new();
    let names: std::collections::BTreeSet<&String> = expected.keys().chain(actual.keys()).collect();
    let empty = Vec::new();
    for name in names {
        let e = expected.get(name).unwrap_or(&empty);
        let a = actual.get(name).unwrap_or(&empty);
        let mut count: BTreeMap<&str, i64> = BTreeMap::new();
        for r in e {
            *count.entry(r).or_default() += 1;
        }
        for r in a {
            *count.entry(r).or_default() -= 1;
        }
        let missing: Vec<&str> = count
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, _)| *r)
            .collect();
        let extra: Vec<&str> = count
            .iter()
            .filter(|(_, n)| **n < 0)
            .map(|(r, _)| *r)
            .collect();
        let show = |rows: &[&str]| {
            let mut s = rows
                .iter()
                .take(LIMIT)
                .copied()
                .collect::<Vec<_>>()
                .join(" ");
            if rows.len() > LIMIT {
                s.push_str(&format!(" … ({} rows)", rows.len()));
            }
            s
        };
        if !missing.is_empty() {
            out.push_str(&format!(
                "{name}: missing on the slave: {}\n",
                show(&missing)
            ));
        }
        if !extra.is_empty() {
            out.push_str(&format!("{name}: only on the slave: {}\n", show(&extra)));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Panics with `what` and the differences unless `expected` equals `actual`.
pub fn assert_same(expected: &Dump, actual: &Dump, what: &str) {
    if let Some(d) = diff(expected, actual) {
        panic!("{what}: the slave differs from the master\n{d}");
    }
}

/// In-process endpoints between `master` and `slave` (database `db` on both), as
/// [`crate::pair::Pair::session`] makes them for a pair.
pub fn session(master: &Cluster, slave: &Cluster, db: &str) -> Session {
    let mut m = master.connect(db);
    let mut s = slave.connect(db);
    let master_rs = Rserv::locate(&mut m, "master", db).expect("rserv on the master");
    let slave_rs = Rserv::locate(&mut s, "slave", db).expect("rserv on the slave");
    Session {
        master: m,
        slave: s,
        master_rs,
        slave_rs,
    }
}

pub fn endpoints(s: &mut Session) -> Endpoints<'_> {
    Endpoints {
        master: &mut s.master,
        master_rs: &s.master_rs,
        slave: &mut s.slave,
        slave_rs: &s.slave_rs,
    }
}

/// Cycle options for slave `server`, cleaning the log after each cycle as `replicate` does.
pub fn options(server: i32) -> CycleOptions {
    CycleOptions {
        server: Some(server),
        clean_log: true,
        ..CycleOptions::default()
    }
}

/// One cycle, observed.
#[derive(Debug)]
pub struct Checked {
    pub outcome: Outcome,
    /// The master's tables as of the change set's snapshot (the last prepare attempt's, if the
    /// prepare ran more than once); None if the hook never ran.
    pub at_snapshot: Option<Dump>,
    /// The slave's tables right after the cycle.
    pub slave: Dump,
}

impl Checked {
    /// Differences between the slave and the master as of the snapshot; None when equal or
    /// when the change set was skipped (another run applied it).
    pub fn divergence(&self) -> Option<String> {
        self.divergence_in(None)
    }

    /// [`Checked::divergence`] restricted to one table (`schema.table`), or all with None.
    pub fn divergence_in(&self, table: Option<&str>) -> Option<String> {
        if matches!(self.outcome, Outcome::Skipped { .. }) {
            return None;
        }
        let only = |d: &Dump| -> Dump {
            d.iter()
                .filter(|(k, _)| table.is_none_or(|t| k.as_str() == t))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        match &self.at_snapshot {
            None => Some("the at_snapshot hook never ran".to_string()),
            Some(m) => diff(&only(m), &only(&self.slave)),
        }
    }
}

pub type Hook<'h> = &'h mut (dyn FnMut(&mut Transaction<'_>) -> Result<(), Error> + Send);

/// Run one cycle for the slave of `s` (every table it receives is compared). The master is
/// dumped at the change set's snapshot first thing in the at_snapshot hook, then `then` runs
/// there (e.g. to make other sessions act while the prepare transaction is open).
pub fn cycle_then(s: &mut Session, opts: &CycleOptions, then: Hook<'_>) -> Result<Checked, Error> {
    let tables: Vec<(String, String)> = replicate::slave::tables(&mut s.slave, &s.slave_rs)?
        .into_iter()
        .map(|(schema, table, _)| (schema, table))
        .collect();
    let mut at_snapshot = None;
    let outcome = {
        let mut hook = |tx: &mut Transaction<'_>| -> Result<(), Error> {
            at_snapshot = Some(dump(tx, &tables).map_err(|source| Error::Db {
                context: "oracle: dumping the master at the snapshot".into(),
                source,
            })?);
            then(tx)
        };
        cycle::run(
            &mut endpoints(s),
            opts,
            &mut CycleSession::default(),
            Some(&mut hook),
        )?
    };
    let slave = dump(&mut s.slave, &tables).map_err(|source| Error::Db {
        context: "oracle: dumping the slave".into(),
        source,
    })?;
    Ok(Checked {
        outcome,
        at_snapshot,
        slave,
    })
}

/// [`cycle_then`] with nothing else in the hook.
pub fn cycle(s: &mut Session, opts: &CycleOptions) -> Result<Checked, Error> {
    cycle_then(s, opts, &mut |_| Ok(()))
}

/// One cycle that must succeed and leave the slave equal to the master as of its snapshot;
/// panics naming `what` otherwise.
pub fn assert_cycle(s: &mut Session, opts: &CycleOptions, what: &str) -> Checked {
    let c = cycle(s, opts).unwrap_or_else(|e| panic!("{what}: the cycle failed: {e}"));
    if let Some(d) = c.divergence() {
        panic!(
            "{what}: after the cycle ({:?}) the slave differs from the master as of that \
             change set's snapshot\n{d}",
            c.outcome
        );
    }
    c
}
