//! `replicate failover`: the master is unreachable. One of its slaves takes over (the most
//! advanced of those given, or the one chosen), recording the sync point at which it did; the
//! other slaves given follow it from there without a copy. See the extension's `failover.rs`
//! and `takeover.rs` for each step's invariant.
//!
//! Every step is found done or done, so running the command again (after a kill, or with a
//! slave that was unreachable the first time) finishes it:
//! 1. read where every slave stands: the old master's last change set it applied, and the old
//!    master's snapshot of it (the change-set header carries it), or that it was promoted or
//!    re-pointed already;
//! 2. promote the chosen one (`rserv_promote`, kind 'failover'): its tables become master
//!    tables, the old master is registered as its slave at the takeover point (so that every
//!    change made here from then on is kept for `replicate rejoin`);
//! 3. each other slave at or behind the new master's position is registered there at the
//!    takeover point (`rserv_adopt_slave`), follows it (`rserv_repoint`), and, if it was
//!    behind (it lacks some of the old master's last transactions), is compared with it and
//!    repaired row by row (`check --repair`); one ahead is refused, saying what to run. A slave
//!    re-pointed while behind refuses change sets until that comparison finds it equal (a
//!    `replicate run` started instead of this command again is told to run it).

use crate::check;
use crate::cycle::{CycleOptions, Endpoints};
use crate::error::{DbContext, Error};
use crate::node::{self, same, Position, Takeover};
use crate::position::compare;
use crate::rserv::Rserv;
use crate::slave;
use crate::steps::reached;
use postgres::Client;
use std::cmp::Ordering;

/// A slave database given to `failover`.
pub struct Node {
    /// how the report names it (database@host:port)
    pub name: String,
    pub client: Client,
    pub rs: Rserv,
}

/// What happened to one of the slaves given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It is the new master.
    Promoted,
    /// It follows the new master as slave `server`; `behind`: it lacked some of the old
    /// master's transactions, `repaired` rows were re-sent to it.
    Repointed {
        server: i32,
        behind: bool,
        repaired: usize,
    },
    /// Left as it was, for the reason given (with what to run).
    Refused(String),
}

#[derive(Debug, Clone)]
pub struct SlaveReport {
    pub name: String,
    pub node: String,
    /// the old master's last change set it had applied (None: none, or promoted in an
    /// earlier run)
    pub syncid: Option<i64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub old_master: String,
    pub new_master: String,
    pub new_node: String,
    /// how the new master took over: 'failover', or 'switchover' (the old master is its slave
    /// already; the slaves given were dropped from it)
    pub kind: String,
    /// the old master's change set the new master took over at
    pub old_syncid: Option<i64>,
    /// the old master's server id on the new master, and the sync point it (and every slave
    /// re-pointed) starts from
    pub server: i32,
    pub syncid: i64,
    pub slaves: Vec<SlaveReport>,
}

impl Report {
    /// Some slave was left out (ahead, or following another master).
    pub fn refused(&self) -> bool {
        self.slaves
            .iter()
            .any(|s| matches!(s.outcome, Outcome::Refused(_)))
    }
}

/// Where one node stands before anything is done.
struct Found {
    node: String,
    position: Option<Position>,
    takeover: Option<Takeover>,
}

fn read(n: &mut Node) -> Result<Found, Error> {
    let side = format!("slave {}", n.name);
    Ok(Found {
        node: slave::node_id(&mut n.client, &n.rs)?,
        position: node::position(&mut n.client, &n.rs, &side)?,
        takeover: node::takeover(&mut n.client, &n.rs, &side)?
            // (a switchover's too: its old master's slaves dropped there follow it this way)
            .filter(|t| t.kind == "switchover" || t.completed.is_none()),
    })
}

/// Two nodes of the list, both mutably.
fn two(nodes: &mut [Node], a: usize, b: usize) -> (&mut Node, &mut Node) {
    if a < b {
        let (x, y) = nodes.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = nodes.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

/// The old master every node given was (or is) a slave of.
fn old_master(found: &[Found], names: &[String]) -> Result<String, Error> {
    let promoted: Vec<&str> = found
        .iter()
        .filter_map(|f| f.takeover.as_ref().map(|t| t.old_master.as_str()))
        .collect();
    let new_nodes: Vec<&str> = found
        .iter()
        .filter(|f| f.takeover.is_some())
        .map(|f| f.node.as_str())
        .collect();
    let mut old: Option<String> = promoted.first().map(|s| s.to_string());
    for (f, name) in found.iter().zip(names) {
        let of = match (&f.takeover, &f.position) {
            (Some(t), _) => t.old_master.clone(),
            // re-pointed already: it followed the old master before
            (None, Some(p)) if new_nodes.iter().any(|n| same(n, &p.master)) => {
                p.previous_master.clone().unwrap_or_default()
            }
            (None, Some(p)) => p.master.clone(),
            (None, None) => {
                return Err(Error::Failed(format!(
                    "slave {name} has applied no change set: it is nobody's slave yet, leave it out"
                )))
            }
        };
        match &old {
            None => old = Some(of),
            Some(o) if same(o, &of) => {}
            Some(o) => {
                return Err(Error::Usage(format!(
                    "the slaves given do not follow one master: {name} follows {of}, another {o}; \
                     fail over the slaves of one master at a time"
                )))
            }
        }
    }
    old.ok_or_else(|| Error::Usage("give at least one slave".into()))
}

/// How slave `a` stands to the position `b` (sync id, snapshot) of the old master's history.
fn stands(a: &Position, b: (i64, Option<&str>)) -> Option<Ordering> {
    compare((a.syncid, a.snapshot.as_deref()), b).0
}

/// The slave to promote: the one promoted already, else `chosen`, else the most advanced
/// (the first of equals). Refused, with nothing done, when another slave is ahead of it.
fn choose(
    found: &[Found],
    names: &[String],
    old: &str,
    chosen: Option<usize>,
) -> Result<usize, Error> {
    let promoted: Vec<usize> = (0..found.len())
        .filter(|i| found[*i].takeover.is_some())
        .collect();
    match (promoted.as_slice(), chosen) {
        ([one], Some(c)) if *one != c => {
            return Err(Error::Usage(format!(
                "{} took over already; it stays the new master (leave out --promote {})",
                names[*one], names[c]
            )))
        }
        ([one], _) => return Ok(*one),
        ([], _) => {}
        _ => {
            return Err(Error::Failed(format!(
                "several of the slaves given took over from {old}: {}; keep one as master, \
                 rebuild the others as its slaves",
                promoted
                    .iter()
                    .map(|i| names[*i].as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    }
    let followers: Vec<(usize, &Position)> = found
        .iter()
        .enumerate()
        .filter_map(|(i, f)| f.position.as_ref().map(|p| (i, p)))
        .filter(|(_, p)| same(&p.master, old))
        .collect();
    let Some(&(first, first_pos)) = followers.first() else {
        return Err(Error::Usage(format!(
            "none of the slaves given follows the failed master {old}, and none took over from it"
        )));
    };
    let (pick, p) = match chosen {
        Some(c) => match followers.iter().find(|(i, _)| *i == c) {
            Some(&(i, p)) => (i, p),
            None => {
                return Err(Error::Usage(format!(
                    "{} does not follow the failed master {old}: it cannot take over",
                    names[c]
                )))
            }
        },
        None => followers
            .iter()
            .skip(1)
            .fold((first, first_pos), |(bi, bp), &(i, ip)| {
                if stands(ip, (bp.syncid, bp.snapshot.as_deref())) == Some(Ordering::Greater) {
                    (i, ip)
                } else {
                    (bi, bp)
                }
            }),
    };
    for &(i, ip) in &followers {
        let order = stands(ip, (p.syncid, p.snapshot.as_deref()));
        if i != pick && !matches!(order, Some(Ordering::Less | Ordering::Equal)) {
            return Err(Error::Failed(format!(
                "slave {} is ahead of {} (it holds transactions of the failed master that {} lacks): \
                 promote it instead (--promote {}), or leave it out of the list (it then needs a \
                 fresh copy from the new master: SELECT rserv_slave_resync(); DELETE FROM \
                 _rserv_slave_sync_; on it, then replicate); nothing was changed",
                names[i], names[pick], names[pick], names[i]
            )));
        }
    }
    Ok(pick)
}

/// Promote one slave of the unreachable master and re-point the other slaves given to it.
/// `chosen`: the index of the one to promote (default: the most advanced).
pub fn failover(
    nodes: &mut [Node],
    chosen: Option<usize>,
    opts: &CycleOptions,
) -> Result<Report, Error> {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let found = nodes.iter_mut().map(read).collect::<Result<Vec<_>, _>>()?;
    let old = old_master(&found, &names)?;
    let pick = choose(&found, &names, &old, chosen)?;
    let mut report = Report {
        old_master: old.clone(),
        new_master: names[pick].clone(),
        new_node: found[pick].node.clone(),
        ..Report::default()
    };
    reached("failover:chosen");
    let takeover = match &found[pick].takeover {
        Some(t) => t.clone(),
        None => promote(&mut nodes[pick], &old, &found[pick])?,
    };
    reached("failover:promoted");
    report.kind = takeover.kind.clone();
    report.old_syncid = takeover.old_syncid;
    report.server = takeover.server;
    report.syncid = takeover.syncid;
    let point = (
        takeover.old_syncid.unwrap_or(0),
        takeover.old_snapshot.as_deref(),
    );
    for (i, f) in found.iter().enumerate() {
        let syncid = f
            .position
            .as_ref()
            .filter(|p| same(&p.master, &old))
            .map(|p| p.syncid)
            .or(if i == pick { takeover.old_syncid } else { None });
        let outcome = if i == pick {
            Outcome::Promoted
        } else {
            let (new, other) = two(nodes, pick, i);
            repoint(new, other, f, &old, &report.new_node, point, opts)?
        };
        report.slaves.push(SlaveReport {
            name: names[i].clone(),
            node: f.node.clone(),
            syncid,
            outcome,
        });
    }
    Ok(report)
}

fn promote(n: &mut Node, old: &str, f: &Found) -> Result<Takeover, Error> {
    let server = f.position.as_ref().and_then(|p| p.server);
    let mut tx = n
        .client
        .transaction()
        .ctx(format!("{}: starting the promotion", n.name))?;
    tx.query_one(
        &format!(
            "SELECT server, syncid FROM {}($1, $2, 'failover')",
            n.rs.func("rserv_promote")
        ),
        &[&old, &server],
    )
    .ctx(format!("{}: taking over as master", n.name))?;
    tx.commit()
        .ctx(format!("{}: committing the promotion", n.name))?;
    node::takeover(&mut n.client, &n.rs, &n.name)?
        .ok_or_else(|| Error::Failed(format!("{}: the takeover was not recorded", n.name)))
}

/// Re-point `other` (a slave of the failed master `old`) to the new master `new`.
fn repoint(
    new: &mut Node,
    other: &mut Node,
    f: &Found,
    old: &str,
    new_node: &str,
    point: (i64, Option<&str>),
    opts: &CycleOptions,
) -> Result<Outcome, Error> {
    let Some(p) = &f.position else {
        return Ok(Outcome::Refused("it follows no master".into()));
    };
    let behind = if same(&p.master, new_node) {
        // re-pointed by an earlier run, perhaps not yet repaired: compare it again
        true
    } else if same(&p.master, old) {
        match compare((p.syncid, p.snapshot.as_deref()), point) {
            (Some(Ordering::Less), _) => true,
            (Some(Ordering::Equal), true) => false,
            (Some(Ordering::Equal), false) => true,
            _ => {
                return Ok(Outcome::Refused(format!(
                    "it is ahead of the new master (change set {} of the failed master, the new master \
                     took over at {}): it holds transactions the new master lacks. Keep them by hand, \
                     then have it copied afresh: SELECT rserv_slave_resync(); DELETE FROM \
                     _rserv_slave_sync_; on it, and replicate from the new master",
                    p.syncid, point.0
                )))
            }
        }
    } else {
        return Ok(Outcome::Refused(format!(
            "it follows {}, not the failed master",
            p.master
        )));
    };
    let mut ep = Endpoints {
        master: &mut new.client,
        master_rs: &new.rs,
        slave: &mut other.client,
        slave_rs: &other.rs,
    };
    let (server, repaired) = follow(
        &mut ep,
        &Adoption {
            name: &other.name,
            node: &f.node,
            server: p.server,
            old,
            new_node,
            compare: behind,
            step: "failover",
        },
        opts,
    )?;
    Ok(Outcome::Repointed {
        server,
        behind,
        repaired,
    })
}

/// One slave of the old master taken over by the new master (see [`follow`]).
pub struct Adoption<'a> {
    /// how reports name it
    pub name: &'a str,
    /// its node id, and its server id on the old master (kept when free on the new one)
    pub node: &'a str,
    pub server: Option<i32>,
    /// the old master's and the new master's node ids
    pub old: &'a str,
    pub new_node: &'a str,
    /// compare it with the new master afterwards and repair it (it may lack or hold rows
    /// the new master does not): false only when it is known to hold exactly what the new
    /// master held when it took over
    pub compare: bool,
    /// the command whose pause points these are (`failover`, `switchover`)
    pub step: &'a str,
}

/// `ep.slave`, a slave of the old master, follows the new master `ep.master` from the
/// takeover's sync point, without a copy: registered there at that point
/// (`rserv_adopt_slave`), re-pointed (`rserv_repoint`), then, with `a.compare`, compared with
/// it and repaired row by row. Each step is a no-op when done already. Returns its server id
/// on the new master and the rows re-sent.
pub fn follow(
    ep: &mut Endpoints,
    a: &Adoption,
    opts: &CycleOptions,
) -> Result<(i32, usize), Error> {
    let row = ep
        .master
        .query_one(
            &format!(
                "SELECT server, syncid FROM {}($1, $2)",
                ep.master_rs.func("rserv_adopt_slave")
            ),
            &[&a.node, &a.server],
        )
        .ctx(format!("new master: taking {} as slave", a.name))?;
    let (server, syncid): (i32, i64) = (row.get(0), row.get(1));
    reached(&format!("{}:adopted", a.step));
    ep.slave
        .query_one(
            &format!(
                "SELECT {}($1, $2, $3, $4, $5)",
                ep.slave_rs.func("rserv_repoint")
            ),
            // (compared: the slave refuses change sets until the comparison below finds it equal)
            &[&a.new_node, &server, &syncid, &a.old, &a.compare],
        )
        .ctx(format!("{}: following the new master", a.name))?;
    reached(&format!("{}:repointed", a.step));
    if !a.compare {
        return Ok((server, 0));
    }
    let opts = CycleOptions {
        server: Some(server),
        ..opts.clone()
    };
    let repaired = check::check(ep, &opts, true)?.repaired;
    if repaired > 0 && !check::check(ep, &opts, false)?.equal() {
        return Err(Error::Failed(format!(
            "{}: still differs from the new master after {repaired} rows were re-sent; run \
             replicate check --repair on it",
            a.name
        )));
    }
    Ok((server, repaired))
}
