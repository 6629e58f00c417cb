//! `replicate rejoin`: an old master comes back after a failover and becomes a slave of the
//! node that took over from it, without a copy. What it committed after the last change set
//! the new master received from it is found exactly (its log after that change set's snapshot,
//! see the extension's `rejoin.rs`), reported, saved to a file in COPY format, and replaced by
//! the new master's version of exactly those rows; refused, changing nothing but the fence,
//! when that would discard data and `--discard-divergent` was not given.
//!
//! The steps, each found done or done, so that running the command again finishes it:
//! 1. fence the old master ('deposed': its replicated tables refuse writes from here on, so
//!    what it holds stops changing);
//! 2. find what it committed since the takeover point, report it, save its version of every
//!    row that differs (refused here without the flag);
//! 3. mark those rows changed on the new master (`rserv_touch`, check's repair);
//! 4. demote the old master (`rserv_demote`): a slave of the new master at the takeover's sync
//!    point, where the failover registered it;
//! 5. replicate: the new master's changes since the takeover and the marked rows arrive in one
//!    change set; then `check` compares the two (and repairs, should anything still differ),
//!    and the new master records the takeover complete.

use crate::check;
use crate::cycle::{self, CycleOptions, Endpoints, Outcome};
use crate::divergence::{self, Divergence};
use crate::error::{DbContext, Error};
use crate::master;
use crate::node::{self, same};
use crate::steps::reached;
use crate::switchover::{complete, fence};
use std::path::PathBuf;
use std::time::Duration;

pub struct Options {
    /// Rejoin even when the old master holds rows the new master does not.
    pub discard: bool,
    /// Where the old master's version of those rows is saved.
    pub file: PathBuf,
    /// How long the fence waits for the old master's writers in flight.
    pub grace: Duration,
}

#[derive(Default)]
pub struct Report {
    pub old_node: String,
    pub new_node: String,
    /// the old master followed the new one already (a re-run finished the last steps)
    pub already: bool,
    pub divergence: Divergence,
    /// rows saved to the file
    pub saved: Option<usize>,
    /// refused: it would discard rows (the file has them)
    pub refused: bool,
    /// rows the new master re-sent
    pub resent: usize,
    /// the old master's server id on the new master and the sync point it started from
    pub server: i32,
    pub syncid: i64,
    /// tables that became slave tables
    pub tables: i64,
    /// rows repaired by the final comparison (0 unless something went wrong before)
    pub repaired: usize,
}

/// Make the old master (`ep.slave`) a slave of the new master (`ep.master`) that took over
/// from it by failover.
pub fn rejoin(ep: &mut Endpoints, opts: &CycleOptions, o: &Options) -> Result<Report, Error> {
    let new = master::node_id(ep.master, ep.master_rs)?;
    let old = master::node_id(ep.slave, ep.slave_rs)?;
    let mut report = Report {
        old_node: old.clone(),
        new_node: new.clone(),
        ..Report::default()
    };
    let Some(t) = node::takeover(ep.master, ep.master_rs, "new master")?
        .filter(|t| same(&t.old_master, &old))
    else {
        return Err(Error::Usage(format!(
            "{new} did not take over from {old}: give the new master first (MASTERDB, or --master) \
             and the old master second (SLAVEDB, or --slave)"
        )));
    };
    report.server = t.server;
    report.syncid = t.syncid;
    match node::position(ep.slave, ep.slave_rs, "old master")? {
        Some(p) if same(&p.master, &new) => {
            report.already = true;
            finish(ep, opts, &old, &mut report)?;
            return Ok(report);
        }
        Some(p) => {
            return Err(Error::Failed(format!(
                "the old master is a slave of {} now, not of the new master {new}",
                p.master
            )))
        }
        None => {}
    }
    fence(ep.slave, ep.slave_rs, &new, o.grace, "deposed")?;
    reached("rejoin:fenced");
    let d = divergence::find(ep.slave, ep.slave_rs, ep.master, ep.master_rs, &t)?;
    if !d.ddl.is_empty() {
        report.divergence = d;
        return Err(Error::Failed(format!(
            "the old master changed the definition of replicated tables after the takeover point, \
             which rejoin cannot undo:\n{}make each the same as on the new master by hand (it stays \
             fenced meanwhile), or rebuild it as a new slave (see the README), then run rejoin again",
            divergence::render(&report.divergence)
        )));
    }
    if d.differing() > 0 {
        let header = format!(
            "rserv rejoin: rows of old master {old} that new master {new} does not hold (transactions \
             after the takeover at the old master's change set {}), in COPY format",
            t.old_syncid.unwrap_or(0)
        );
        report.saved = Some(divergence::save(ep.slave, &d, &o.file, &header)?);
        if !o.discard {
            report.divergence = d;
            report.refused = true;
            return Ok(report);
        }
    }
    let marks: Vec<(&check::Table, Vec<Vec<String>>)> = d
        .tables
        .iter()
        .map(|td| {
            (
                &td.table,
                td.entries
                    .iter()
                    .filter(|e| e.differs())
                    .map(|e| e.key.clone())
                    .collect(),
            )
        })
        .collect();
    report.resent = check::touch(ep.master, ep.master_rs, &marks)?;
    report.divergence = d;
    reached("rejoin:touched");
    report.tables = demote(ep, &new, &t)?;
    reached("rejoin:demoted");
    finish(ep, opts, &old, &mut report)?;
    Ok(report)
}

/// The old master's slaves that follow the new master already (a failover re-pointed them).
fn moved(ep: &mut Endpoints) -> Result<Vec<String>, Error> {
    let slaves = |c: &mut postgres::Client, rs: &crate::rserv::Rserv, side: &str| {
        c.query(
            &format!(
                "SELECT slave_node::text FROM {} WHERE server IS NOT NULL AND slave_node IS NOT NULL",
                rs.func("rserv_status")
            ),
            &[],
        )
        .ctx(format!("{side}: listing its slaves"))
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
    };
    let of_new = slaves(ep.master, ep.master_rs, "new master")?;
    Ok(slaves(ep.slave, ep.slave_rs, "old master")?
        .into_iter()
        .filter(|n| of_new.iter().any(|m| same(m, n)))
        .collect())
}

fn demote(ep: &mut Endpoints, new: &str, t: &node::Takeover) -> Result<i64, Error> {
    let moved = moved(ep)?;
    let row = ep
        .slave
        .query_one(
            &format!(
                "SELECT {}($1, $2, $3, $4)",
                ep.slave_rs.func("rserv_demote")
            ),
            &[&new, &t.server, &t.syncid, &moved],
        )
        .ctx("old master: becoming a slave of the new master")?;
    Ok(row.get(0))
}

/// Replicate until the old master has everything, compare the two, record the takeover done.
fn finish(
    ep: &mut Endpoints,
    opts: &CycleOptions,
    old: &str,
    report: &mut Report,
) -> Result<(), Error> {
    // the old master holds rows of its own the new master may have inserted too (equal ones
    // were not marked): every changed identity is deleted before it is loaded
    let replacing = CycleOptions {
        replace_rows: true,
        ..opts.clone()
    };
    let mut session = cycle::Session::default();
    while cycle::run(ep, &replacing, &mut session, None)? != Outcome::InSync {}
    let compared = check::check(ep, opts, false)?;
    if !compared.equal() {
        report.repaired = check::check(ep, opts, true)?.repaired;
        if !check::check(ep, opts, false)?.equal() {
            return Err(Error::Failed(format!(
                "the old master still differs from the new master after {} rows were re-sent: \
                 run replicate check --repair",
                report.repaired
            )));
        }
    }
    complete(ep.master, ep.master_rs, old)
}
