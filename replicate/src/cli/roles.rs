//! The commands that change roles: `switchover`, `failover`, `rejoin`.

use super::databases::{endpoints, located, Side};
use super::Cli;
use crate::error::{exit, Error};
use crate::failover::{self, Node, Outcome};
use crate::rejoin::{self, Options};
use crate::{divergence, steps};
use std::path::PathBuf;
use std::time::Duration;

fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 3600.0))
}

/// `switchover`: the slave takes over, the master becomes its slave (see `switchover.rs`).
pub(super) fn switch_over(
    cli: &Cli,
    (masterdb, slavedb): (Option<&str>, Option<&str>),
    others: &[String],
    grace: f64,
    abort: bool,
) -> Result<i32, Error> {
    let (mut m, mut s) = cli.pair(masterdb, slavedb)?;
    let mut others = slave_nodes(cli, others, true)?;
    let mut ep = endpoints(&mut m, &mut s);
    if abort {
        let lifted = crate::switchover::abort(&mut ep)?;
        println!(
            "{}",
            if lifted {
                "switchover aborted: the master accepts writes again"
            } else {
                "no switchover in progress on the master"
            }
        );
        return Ok(exit::OK);
    }
    let r = crate::switchover::switchover(
        &mut ep,
        &mut others,
        &cli.plain_cycle_options(),
        seconds(grace),
    )?;
    for o in &r.others {
        println!(
            "re-pointed {}: slave {} of the new master from its sync point {}, no copy ({} change \
             sets from the old master after the fence; {})",
            o.name,
            o.server,
            r.syncid,
            o.change_sets,
            if o.exact {
                "it held exactly what the new master held, verified on the old master".to_string()
            } else {
                format!("compared with the new master: {} rows re-sent", o.repaired)
            }
        );
    }
    println!(
        "switchover done: {} tables; the old master is slave {} of the new master at change set {} \
         ({} final change sets, {} writers cancelled, writes refused for {:.3} s)",
        r.tables,
        r.server,
        r.syncid,
        r.final_change_sets,
        r.cancelled,
        r.unavailable.as_secs_f64()
    );
    println!(
        "from now on replicate the other way: the slave's connection options and database ({}) are the master's, and the old master's ({}) the slave's",
        s.name, m.name
    );
    Ok(exit::OK)
}

/// Slave databases given by name or connection string, connected (`other`: besides the
/// slave the slave options address, so not completed by its host, port or connection string).
fn slave_nodes(cli: &Cli, dbs: &[String], other: bool) -> Result<Vec<Node>, Error> {
    let mut nodes = Vec::new();
    for db in dbs {
        let ep = if other {
            cli.conn.other_slave_endpoint(db, cli.debug)?
        } else {
            cli.conn.endpoint(Side::Slave, Some(db), cli.debug)?
        };
        let d = located(Side::Slave, &ep)?;
        nodes.push(Node {
            name: format!("{}@{}:{}", ep.dbname(), ep.host(), ep.port()),
            client: d.client,
            rs: d.rs,
        });
    }
    Ok(nodes)
}

/// `failover`: promote one of the failed master's slaves, re-point the others.
pub(super) fn fail_over(cli: &Cli, slaves: &[String], promote: Option<&str>) -> Result<i32, Error> {
    let chosen =
        match promote {
            Some(p) => Some(slaves.iter().position(|s| s == p).ok_or_else(|| {
                Error::Usage(format!("--promote {p}: not one of the SLAVEDB given"))
            })?),
            None => None,
        };
    let mut nodes = slave_nodes(cli, slaves, false)?;
    let r = failover::failover(&mut nodes, chosen, &cli.plain_cycle_options())?;
    for s in &r.slaves {
        println!(
            "slave {} (node {}): {}",
            s.name,
            s.node,
            s.syncid
                .map(|id| format!("at change set {id} of the failed master"))
                .unwrap_or_else(|| "no change set of the failed master".into())
        );
    }
    for s in &r.slaves {
        match &s.outcome {
            Outcome::Promoted => println!(
                "promoted {}: the master now, took over from {} at its change set {}; its sync point {} \
                 (the old master is its slave {} from there)",
                s.name,
                r.old_master,
                r.old_syncid.map(|v| v.to_string()).unwrap_or_else(|| "?".into()),
                r.syncid,
                r.server
            ),
            Outcome::Repointed {
                server,
                behind,
                repaired,
            } => println!(
                "re-pointed {}: slave {server} of the new master from its sync point {}{}",
                s.name,
                r.syncid,
                if *behind {
                    format!(" (compared with it: {repaired} rows re-sent)")
                } else {
                    " (it held exactly what the new master held)".into()
                }
            ),
            Outcome::Refused(why) => println!("left out {}: {why}", s.name),
        }
    }
    if r.kind == "switchover" {
        println!(
            "done: the slaves given follow {}, which took over from {} by switchover",
            r.new_master, r.old_master
        );
    } else {
        println!(
            "failover done: {} is the master. Point the applications at it. When the old master \
             comes back, keep applications away from it and run: replicate rejoin NEWMASTERDB \
             OLDMASTERDB",
            r.new_master
        );
    }
    if r.refused() {
        return Err(Error::Failed(
            "some slaves were left out (see above)".into(),
        ));
    }
    Ok(exit::OK)
}

/// `rejoin`: the old master becomes a slave of the new one.
pub(super) fn rejoin(
    cli: &Cli,
    (newdb, olddb): (Option<&str>, Option<&str>),
    discard: bool,
    file: Option<PathBuf>,
    grace: f64,
) -> Result<i32, Error> {
    let (mut m, mut s) = cli.pair(newdb, olddb)?;
    let mut ep = endpoints(&mut m, &mut s);
    let file = match file {
        Some(f) => f,
        None => {
            let node = crate::master::node_id(ep.slave, ep.slave_rs)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!(
                "rserv-rejoin-{}-{now}.sql",
                node.split('-').next().unwrap_or("node")
            ))
        }
    };
    let o = Options {
        discard,
        file: file.clone(),
        grace: seconds(grace),
    };
    let r = rejoin::rejoin(&mut ep, &cli.plain_cycle_options(), &o)?;
    steps::reached("rejoin:reported");
    let d = &r.divergence;
    let txs = d.transactions();
    if r.already {
        println!("the old master follows the new master already: finished its last steps");
    } else if txs.is_empty() {
        println!("the old master committed nothing after the takeover point");
    } else {
        println!(
            "the old master committed {} transactions after the takeover point ({}), changing these rows:",
            txs.len(),
            txs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        );
        print!("{}", divergence::render(d));
    }
    if let Some(n) = r.saved {
        println!(
            "{} rows differ; the old master's version ({n} rows) is saved in {}",
            d.differing(),
            file.display()
        );
    }
    if r.refused {
        return Err(Error::Failed(format!(
            "rejoin refused: it would discard {} rows of the old master that the new master does not \
             hold (saved in {}). Apply on the new master what must be kept, then run rejoin again; or \
             run it with --discard-divergent. The old master stays fenced (its replicated tables \
             refuse writes) meanwhile",
            d.differing(),
            file.display()
        )));
    }
    println!(
        "rejoin done: the old master is slave {} of the new master (from its sync point {}), {} tables, \
         no copy; {} rows re-sent; replicate from the new master to it from now on",
        r.server, r.syncid, r.tables, r.resent
    );
    Ok(exit::OK)
}
