//! `replicate switchover`: the slave takes over as master, the old master becomes its slave, at
//! one sync point and with no copy (see the extension's `takeover.rs` for each step's
//! invariant); the old master's other slaves given (`--other`) follow the new master, without
//! a copy either (`others.rs`). Every step is idempotent: running the command again after an
//! interruption finishes the switchover from where it stopped.

mod others;

pub use others::Repointed;

use crate::cycle::{self, CycleOptions, Endpoints, Outcome};
use crate::error::{DbContext, Error};
use crate::failover::Node;
use crate::rserv::Rserv;
use crate::steps::reached;
use crate::{master, node, slave};
use postgres::Client;
use std::time::{Duration, Instant};

/// What a switchover did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Tables that changed roles.
    pub tables: i64,
    /// Writing transactions on the old master cancelled after the grace period.
    pub cancelled: i64,
    /// Change sets applied after the fence (the last of the old master's changes).
    pub final_change_sets: usize,
    /// The old master's server id on the new master, and the sync id it starts from.
    pub server: i32,
    pub syncid: i64,
    /// From the fence taking the tables (writes wait, then are refused) to the new master's
    /// first accepted write.
    pub unavailable: Duration,
    /// The old master's other slaves, re-pointed to the new master.
    pub others: Vec<Repointed>,
}

/// The old master's registration on the new one, when the new one was promoted already.
fn promoted(ep: &mut Endpoints, old: &str) -> Result<Option<(i32, i64)>, Error> {
    let rows = ep
        .slave
        .query(
            &format!(
                "SELECT server, confirmed_syncid FROM {} WHERE slave_node::text = $1",
                ep.slave_rs.func("rserv_status")
            ),
            &[&old],
        )
        .ctx("slave: reading its slaves")?;
    Ok(rows
        .first()
        .map(|r| (r.get(0), r.get::<_, Option<i64>>(1).unwrap_or(0))))
}

/// Fence a master (`kind` 'switchover' or 'deposed', see the extension's `fence.rs`), giving
/// the writers in flight `grace` to finish, then cancelling those still there. Returns the
/// tables fenced, the writers cancelled, and when writes started to be refused (or to wait for
/// the fence).
///
/// The fence needs every replicated table's lock at once. During the grace period it takes
/// them all or none (`LOCK TABLE ... NOWAIT`, again every few milliseconds), so it never holds
/// one table while waiting for another: a writer holding that other table and waiting for the
/// first (writers change several tables) would deadlock with it. Writes go on meanwhile, and
/// reach the slave with the last change sets. After the grace period the writers holding the
/// tables are cancelled and the fence waits for the locks.
pub fn fence(
    m: &mut Client,
    rs: &Rserv,
    successor: &str,
    grace: Duration,
    kind: &str,
) -> Result<(i64, i64, Instant), Error> {
    let call = format!("SELECT {}($1, $2)", rs.func("rserv_fence"));
    let tables: Option<String> = m
        .query_one(
            &format!(
                "SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', schema_name, table_name), ', ') \
                 FROM {}()",
                rs.func("rserv_table_list")
            ),
            &[],
        )
        .ctx("master: listing the replicated tables")?
        .get(0);
    let deadline = Instant::now() + grace;
    while let (Some(list), true) = (&tables, Instant::now() < deadline) {
        let mut tx = m.transaction().ctx("master: starting the fence")?;
        match tx.batch_execute(&format!(
            "LOCK TABLE {list} IN SHARE ROW EXCLUSIVE MODE NOWAIT"
        )) {
            Ok(()) => {
                let since = Instant::now();
                let n: i64 = tx
                    .query_one(&call, &[&successor, &kind])
                    .ctx("master: fencing the replicated tables")?
                    .get(0);
                tx.commit().ctx("master: committing the fence")?;
                return Ok((n, 0, since));
            }
            Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                drop(tx);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).ctx("master: locking the replicated tables"),
        }
    }
    let mut cancelled = 0;
    for attempt in 0..3 {
        // writers in flight past the grace period: cancelled (they roll back, and their
        // clients see the cancellation and retry, then meet the fence)
        let row = m
            .query_one(
                &format!(
                    "SELECT count(pg_catalog.pg_cancel_backend(l.pid)) FROM pg_catalog.pg_locks l \
                     WHERE l.granted AND l.pid <> pg_catalog.pg_backend_pid() \
                       AND l.relation IN (SELECT pg_catalog.to_regclass(pg_catalog.quote_ident(t.schema_name) \
                                          || '.' || pg_catalog.quote_ident(t.table_name)) \
                                          FROM {} t)",
                    rs.func("rserv_table_list") + "()"
                ),
                &[],
            )
            .ctx("master: cancelling the writers in flight")?;
        cancelled += row.get::<_, i64>(0);
        m.batch_execute(&format!(
            "SET lock_timeout = '{}ms'",
            grace.as_millis().max(1)
        ))
        .ctx("master: setting lock_timeout")?;
        let since = Instant::now();
        let r = m.query_one(&call, &[&successor, &kind]);
        m.batch_execute("RESET lock_timeout")
            .ctx("master: resetting lock_timeout")?;
        match r {
            Ok(row) => return Ok((row.get(0), cancelled, since)),
            Err(e)
                if attempt < 2
                    && [
                        Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE),
                        Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
                    ]
                    .contains(&e.code()) => {}
            Err(e) => return Err(e).ctx("master: fencing the replicated tables"),
        }
    }
    Err(Error::Failed(
        "master: the replicated tables stayed locked; the fence could not be taken".into(),
    ))
}

/// Switch the roles of master and slave (`opts.server`: the slave's id on the master); the
/// master's other slaves `others` follow the new master. Every slave of the master must be
/// the one taking over or one of `others`: otherwise nothing is done.
pub fn switchover(
    ep: &mut Endpoints,
    others: &mut [Node],
    opts: &CycleOptions,
    grace: Duration,
) -> Result<Report, Error> {
    ep.master_rs.require_1_1("a switchover")?;
    ep.slave_rs.require_1_1("a switchover")?;
    for n in others.iter() {
        n.rs.require_1_1("a switchover")?;
    }
    let mut report = Report::default();
    let old = master::node_id(ep.master, ep.master_rs)?;
    let new = slave::node_id(ep.slave, ep.slave_rs)?;
    if let Some((server, syncid)) = promoted(ep, &old)? {
        // interrupted after the promotion: only the old master's part is left (or done)
        let follows = slave::sync_state(ep.master, ep.master_rs)?.1;
        if follows.is_some_and(|m| m.eq_ignore_ascii_case(&new)) {
            complete(ep.slave, ep.slave_rs, &old)?;
            return Err(Error::Failed(
                "the switchover is complete already: the slave is the master now".into(),
            ));
        }
        let nodes = others::screen(ep.master, ep.master_rs, others, (&old, &new))?;
        report.server = server;
        report.syncid = syncid;
        report.others = others::repoint(ep, others, &nodes, (&old, &new), opts)?;
        report.tables = demote(ep, &old, &new, (server, syncid), &nodes)?;
        return Ok(report);
    }
    let follows = slave::sync_state(ep.slave, ep.slave_rs)?.1;
    if !follows.is_some_and(|m| m.eq_ignore_ascii_case(&old)) {
        return Err(Error::Usage(
            "the slave database does not follow this master: replicate it from this master first"
                .into(),
        ));
    }
    refuse_before_fence(ep)?;
    // (after that: an old master that has not rejoined is registered here as a slave, and must
    // be named as such, not as one to give with --other)
    let nodes = others::screen(ep.master, ep.master_rs, others, (&old, &new))?;
    // indexes and constraints of tables --create-tables made, before writes stop (not while)
    for name in slave::finish_tables(ep.slave, ep.slave_rs)? {
        tracing::info!(
            "created the indexes, foreign keys, triggers and policies of table {name} on the slave"
        );
    }
    let (_, cancelled, started) = fence(ep.master, ep.master_rs, &new, grace, "switchover")?;
    report.cancelled = cancelled;
    reached("switchover:fenced");
    // what the master committed before the fence reaches the slave
    let mut session = cycle::Session::default();
    loop {
        let outcome = cycle::run(ep, opts, &mut session, None)?;
        if let Outcome::Applied { .. } = outcome {
            report.final_change_sets += 1;
        }
        if matches!(outcome, Outcome::InSync) {
            break;
        }
    }
    reached("switchover:synced");
    let mut promote = ep
        .slave
        .transaction()
        .ctx("slave: starting the promotion")?;
    let row = promote
        .query_one(
            &format!(
                "SELECT server, syncid FROM {}($1, $2)",
                ep.slave_rs.func("rserv_promote")
            ),
            &[&old, &session.server().or(opts.server)],
        )
        .ctx("slave: taking over as master")?;
    promote.commit().ctx("slave: committing the promotion")?;
    report.unavailable = started.elapsed();
    report.server = row.get(0);
    report.syncid = row.get(1);
    reached("switchover:promoted");
    // (after the promotion: the other slaves do not lengthen the time writes are refused)
    report.others = others::repoint(ep, others, &nodes, (&old, &new), opts)?;
    report.tables = demote(ep, &old, &new, (report.server, report.syncid), &nodes)?;
    Ok(report)
}

/// What would stop a switchover after the fence, refused before it (nothing changed): the
/// master took over by failover from a node that has not rejoined (the demote would forget
/// that node, see the extension's `takeover.rs`), or the slave awaits a failover's comparison
/// (it takes no change set).
fn refuse_before_fence(ep: &mut Endpoints) -> Result<(), Error> {
    let unfinished = node::takeover(ep.master, ep.master_rs, "master")?
        .filter(|t| t.kind == "failover" && t.completed.is_none());
    if let Some(t) = unfinished {
        let old = t.old_master;
        return Err(Error::Failed(format!(
            "this master took over from {old} by failover, and {old} has not rejoined: the \
             switchover would forget it (where its later transactions start, that it must be \
             fenced when it comes back), and it would come back writable next to the new master. \
             Rejoin it first (replicate rejoin THISDB OLDMASTERDB, this node as the master); or, \
             if it is gone for good, give it up on this master: SELECT rserv_takeover_done('{old}'); \
             nothing was changed"
        )));
    }
    if node::state(ep.slave, ep.slave_rs, "slave")?
        .in_progress
        .as_deref()
        == Some("check")
    {
        return Err(Error::Failed(
            "the slave was re-pointed to this master by a failover while it was behind, and has \
             not been compared with it since: it takes no change set until it is. Run replicate \
             failover again (or replicate check --repair), then switch over; nothing was changed"
                .into(),
        ));
    }
    Ok(())
}

/// The old master becomes a slave of the new one (its other slaves, `moved`, follow the new
/// one already); the new master records the takeover complete.
fn demote(
    ep: &mut Endpoints,
    old: &str,
    new: &str,
    (server, syncid): (i32, i64),
    moved: &[String],
) -> Result<i64, Error> {
    let row = ep
        .master
        .query_one(
            &format!(
                "SELECT {}($1, $2, $3, $4)",
                ep.master_rs.func("rserv_demote")
            ),
            &[&new, &server, &syncid, &moved],
        )
        .ctx("master: becoming a slave of the new master")?;
    reached("switchover:demoted");
    complete(ep.slave, ep.slave_rs, old)?;
    Ok(row.get(0))
}

/// On the new master: the old master `old` follows it now.
pub fn complete(new: &mut Client, rs: &Rserv, old: &str) -> Result<(), Error> {
    new.query_one(
        &format!("SELECT {}($1)", rs.func("rserv_takeover_done")),
        &[&old],
    )
    .ctx("new master: recording the takeover complete")?;
    Ok(())
}

/// Lift the fence of a switchover that is not going ahead (the slave was not promoted).
pub fn abort(ep: &mut Endpoints) -> Result<bool, Error> {
    ep.master_rs.require_1_1("a switchover")?;
    let old = master::node_id(ep.master, ep.master_rs)?;
    if promoted(ep, &old)?.is_some() {
        return Err(Error::Failed(
            "the slave has taken over already: run replicate switchover again to finish".into(),
        ));
    }
    let row = ep
        .master
        .query_one(
            &format!("SELECT {}()", ep.master_rs.func("rserv_unfence")),
            &[],
        )
        .ctx("master: lifting the fence")?;
    Ok(row.get(0))
}
