//! The old master's other slaves at a switchover (`--other SLAVEDB`): they follow the new
//! master afterwards, without a copy.
//!
//! Before the fence, [`screen`] makes sure every slave registered on the old master is either
//! the one taking over or one given, and that each given one follows the old master (or, on a
//! re-run, was re-pointed from it already): otherwise nothing is done. After the promotion the
//! old master is still fenced, so what it holds no longer changes; [`repoint`] then takes each
//! other slave in turn:
//! 1. cycles from the old master until it is in sync: it holds the old master's final state,
//!    which is what the new master held when it took over;
//! 2. that is verified on the old master by sync id and fingerprint: nothing was committed
//!    there after the change set this slave applied last, nor after the one the new master
//!    applied last (`rserv_changed_since`, empty for both);
//! 3. it is registered on the new master at the takeover's sync point (`rserv_adopt_slave`)
//!    and follows it from there (`rserv_repoint`), as a failover re-points a slave; only when
//!    step 2 could not verify it (a re-run that finds it re-pointed already and the old master
//!    no longer knowing its change set, or a change committed after one of the two points) is
//!    it compared with the new master and repaired row by row (`check --repair`).
//!
//! The old master is demoted afterwards with these slaves listed as moved. Each step is a no-op
//! when done already, so the command run again after an interruption finishes the job.

use crate::cycle::{self, CycleOptions, Endpoints, Outcome};
use crate::error::{DbContext, Error};
use crate::failover::{follow, Adoption, Node};
use crate::node::{self, same};
use crate::rserv::Rserv;
use crate::slave;
use crate::steps::reached;
use postgres::Client;

/// What happened to one of the other slaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repointed {
    pub name: String,
    pub node: String,
    /// its server id on the new master
    pub server: i32,
    /// change sets it received from the old master after the fence
    pub change_sets: usize,
    /// verified to hold exactly what the new master held at the takeover (no comparison)
    pub exact: bool,
    /// rows re-sent by the comparison (when not `exact`)
    pub repaired: usize,
}

/// One slave registered on the old master: server id, node id (None: bound to no database,
/// a 1.0-style registration), last change set confirmed.
struct Registered {
    server: i32,
    node: Option<String>,
    confirmed: Option<i64>,
}

fn registered(c: &mut Client, rs: &Rserv) -> Result<Vec<Registered>, Error> {
    let rows = c
        .query(
            &format!(
                "SELECT server, slave_node::text, confirmed_syncid FROM {} \
                 WHERE server IS NOT NULL ORDER BY server",
                rs.func("rserv_status")
            ),
            &[],
        )
        .ctx("master: listing its slaves")?;
    Ok(rows
        .iter()
        .map(|r| Registered {
            server: r.get(0),
            node: r.get(1),
            confirmed: r.get(2),
        })
        .collect())
}

/// Before anything changes: the node ids of `others`, each following the master `old` (or
/// the slave `new`, re-pointed from `old` by an earlier run), and no slave registered on the
/// old master left out. Refused otherwise, saying exactly what to run.
pub fn screen(
    master: &mut Client,
    master_rs: &Rserv,
    others: &mut [Node],
    (old, new): (&str, &str),
) -> Result<Vec<String>, Error> {
    let mut nodes: Vec<String> = Vec::new();
    for n in others.iter_mut() {
        let id = slave::node_id(&mut n.client, &n.rs)?;
        if same(&id, old) || same(&id, new) || nodes.iter().any(|x| same(x, &id)) {
            return Err(Error::Usage(format!(
                "--other {}: that is the master, the slave taking over, or another --other",
                n.name
            )));
        }
        let side = format!("slave {}", n.name);
        let follows = node::position(&mut n.client, &n.rs, &side)?.map(|p| {
            same(&p.master, old)
                || (same(&p.master, new)
                    && p.previous_master.as_deref().is_some_and(|m| same(m, old)))
        });
        if follows != Some(true) {
            return Err(Error::Usage(format!(
                "--other {}: it is not a slave of this master; nothing was changed",
                n.name
            )));
        }
        nodes.push(id);
    }
    let left: Vec<Registered> = registered(master, master_rs)?
        .into_iter()
        .filter(|r| {
            !r.node
                .as_deref()
                .is_some_and(|n| same(n, new) || nodes.iter().any(|x| same(x, n)))
        })
        .collect();
    if left.is_empty() {
        return Ok(nodes);
    }
    let list = left
        .iter()
        .map(|r| match &r.node {
            Some(n) => format!("server {} (node {n})", r.server),
            None => format!("server {} (bound to no database)", r.server),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let first = left[0].server;
    Err(Error::Usage(format!(
        "the master has other slaves that would be left without a master: {list}. Give each of \
         them with --other SLAVEDB (it is re-pointed to the new master, no copy). Or drop each \
         from the master first (replicate --server {first} drop-slave MASTERDB), switch over, \
         and right after that re-point it without a copy: replicate failover NEWMASTERDB SLAVEDB \
         (it is compared with the new master and repaired); only a slave dropped and never \
         re-pointed needs a fresh copy. Nothing was changed"
    )))
}

/// Nothing was committed on the (fenced) old master after change set `syncid` of slave
/// `server` (with `fingerprint`, when known): `rserv_changed_since` lists nothing. False when
/// the old master cannot tell (it no longer knows that change set).
fn nothing_after(
    c: &mut Client,
    rs: &Rserv,
    server: Option<i32>,
    syncid: Option<i64>,
    fingerprint: Option<&str>,
) -> Result<bool, Error> {
    let (Some(server), Some(syncid)) = (server, syncid) else {
        return Ok(false);
    };
    let r = c.query_one(
        &format!(
            "SELECT count(*) FROM {}($1, $2, $3)",
            rs.func("rserv_changed_since")
        ),
        &[&server, &syncid, &fingerprint],
    );
    match r {
        Ok(row) => Ok(row.get::<_, i64>(0) == 0),
        Err(e)
            if e.code() == Some(&postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).ctx("old master: reading what it committed after a change set"),
    }
}

/// After the promotion, with the old master (`ep.master`) still fenced: every one of `others`
/// (node ids `nodes`, from [`screen`]) follows the new master (`ep.slave`) from the takeover's
/// sync point.
pub fn repoint(
    ep: &mut Endpoints,
    others: &mut [Node],
    nodes: &[String],
    (old, new): (&str, &str),
    opts: &CycleOptions,
) -> Result<Vec<Repointed>, Error> {
    let takeover = node::takeover(ep.slave, ep.slave_rs, "new master")?
        .filter(|t| same(&t.old_master, old))
        .ok_or_else(|| Error::Failed("new master: its takeover is not recorded".into()))?;
    // the new master holds the old master's final state
    let point_exact = nothing_after(
        ep.master,
        ep.master_rs,
        takeover.old_server,
        takeover.old_syncid,
        takeover.old_fingerprint.as_deref(),
    )?;
    let opts = CycleOptions {
        server: None,
        ..opts.clone()
    };
    let mut out = Vec::new();
    for (n, id) in others.iter_mut().zip(nodes) {
        let side = format!("slave {}", n.name);
        let mut change_sets = 0;
        let position = node::position(&mut n.client, &n.rs, &side)?;
        let exact = if position.as_ref().is_some_and(|p| same(&p.master, old)) {
            let mut ep_old = Endpoints {
                master: ep.master,
                master_rs: ep.master_rs,
                slave: &mut n.client,
                slave_rs: &n.rs,
            };
            let mut session = cycle::Session::default();
            loop {
                match cycle::run(&mut ep_old, &opts, &mut session, None)? {
                    Outcome::Applied { .. } => change_sets += 1,
                    Outcome::InSync => break,
                    _ => {}
                }
            }
            reached("switchover:caught-up");
            let p = node::position(&mut n.client, &n.rs, &side)?;
            let p = p.as_ref();
            nothing_after(
                ep.master,
                ep.master_rs,
                p.and_then(|p| p.server),
                p.map(|p| p.syncid),
                p.and_then(|p| p.fingerprint.as_deref()),
            )?
        } else {
            // re-pointed by an earlier run: the old master's record of its last change set
            let r = registered(ep.master, ep.master_rs)?
                .into_iter()
                .find(|r| r.node.as_deref().is_some_and(|x| same(x, id)));
            match r {
                Some(r) => {
                    nothing_after(ep.master, ep.master_rs, Some(r.server), r.confirmed, None)?
                }
                None => false,
            }
        };
        let exact = exact && point_exact;
        let server = position.as_ref().and_then(|p| p.server);
        let mut ep_new = Endpoints {
            master: ep.slave,
            master_rs: ep.slave_rs,
            slave: &mut n.client,
            slave_rs: &n.rs,
        };
        let (server, repaired) = follow(
            &mut ep_new,
            &Adoption {
                name: &n.name,
                node: id,
                server,
                old,
                new_node: new,
                compare: !exact,
                step: "switchover",
            },
            &opts,
        )?;
        out.push(Repointed {
            name: n.name.clone(),
            node: id.clone(),
            server,
            change_sets,
            exact,
            repaired,
        });
    }
    Ok(out)
}
