//! Before a session's first cycle: are master and slave still the right way round? After a
//! takeover the old pair is reversed, and replicating it as before would at best fail. Worse,
//! an old master that another node took over from by failover accepts writes again when it
//! comes back: the first `replicate` (a `run` daemon reconnecting, a cron job) that finds it
//! that way fences it ("deposed": its replicated tables refuse writes until `replicate rejoin`
//! makes it a slave of the new master), so it never takes writes next to the new master for
//! longer than it takes a replicate to reach it.

use crate::cycle::Endpoints;
use crate::error::Error;
use crate::node::{same, state};
use crate::rserv::Api;
use crate::switchover::fence;
use std::time::Duration;

/// How long fencing a deposed master waits for the writers in flight before cancelling them.
const DEPOSED_GRACE: Duration = Duration::from_secs(1);

/// Ok when the slave follows the master (or nothing says otherwise); an error saying what to
/// run when the slave took over from this master, fencing the master if it still took writes.
pub fn check(ep: &mut Endpoints) -> Result<(), Error> {
    // (rserv_node_id() first: a role that may not replicate is told how to fix that)
    crate::slave::node_id(ep.slave, ep.slave_rs)?;
    let slave = state(ep.slave, ep.slave_rs, "slave")?;
    let Some(old) = slave.takeover_from.clone() else {
        return Ok(());
    };
    crate::master::node_id(ep.master, ep.master_rs)?;
    let master = state(ep.master, ep.master_rs, "master")?;
    if !same(&old, &master.node)
        || slave
            .master_node
            .as_deref()
            .is_some_and(|m| same(m, &master.node))
    {
        return Ok(());
    }
    let kind = slave.takeover_kind.clone().unwrap_or_default();
    let new = &slave.node;
    if master.master_node.as_deref().is_some_and(|m| same(m, new)) {
        return Err(Error::Flipped(format!(
            "the roles have flipped: {new} took over from {old} ({kind}) and {old} follows it now: \
             replicate from {new} to {old} (swap the master and slave options and databases)"
        )));
    }
    if slave.in_progress.is_none() {
        return Ok(()); // that takeover is complete: later history decides
    }
    let todo = match (kind.as_str(), master.in_progress.as_deref()) {
        ("switchover", Some("switchover")) => "run replicate switchover again to finish it",
        _ => "make it a slave of the new master: replicate rejoin NEWMASTERDB OLDMASTERDB",
    };
    if master.role == "master" && ep.master_rs.api == Api::V1_0 {
        // (rserv 1.0 has no fence)
        return Err(Error::Direction(format!(
            "{new} took over from this master ({old}) by {kind}, but this master still takes \
             writes and runs rserv 1.0, which cannot be fenced: keep applications away from it, \
             update rserv on it (ALTER EXTENSION rserv UPDATE), then {todo}"
        )));
    }
    if master.role == "master" {
        let fence_kind = if kind == "failover" {
            "deposed"
        } else {
            "switchover"
        };
        fence(ep.master, ep.master_rs, new, DEPOSED_GRACE, fence_kind)?;
        return Err(Error::Direction(format!(
            "{new} took over from this master ({old}) by {kind}, but this master still took writes: \
             it is fenced now (its replicated tables refuse writes); {todo}"
        )));
    }
    Err(Error::Direction(format!(
        "{new} took over from this master ({old}) by {kind}; this master is {}: {todo}",
        master.role
    )))
}
