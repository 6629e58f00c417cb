//! What a node is now: its own row of `rserv_status` (role, whom it follows, a takeover in
//! progress), its position as a slave (`rserv_slave_position`), the takeover that made it a
//! master (`rserv_takeover`). Read by `status`, the direction guard, failover and rejoin.

use crate::error::{DbContext, Error};
use crate::rserv::{Api, Rserv};
use postgres::Client;
use serde::Serialize;

/// A node's own row of `rserv_status`.
#[derive(Serialize, Debug, Clone, Default)]
pub struct NodeState {
    pub node: String,
    /// master, slave, fenced or none
    pub role: String,
    /// the master it follows
    pub master_node: Option<String>,
    /// a slave's last change set applied, a master's last sync id issued
    pub syncid: Option<i64>,
    /// switchover, failover or rejoin
    pub in_progress: Option<String>,
    pub takeover_kind: Option<String>,
    pub takeover_from: Option<String>,
    pub takeover_syncid: Option<i64>,
    pub takeover_at: Option<String>,
    pub previous_master: Option<String>,
}

pub fn state(client: &mut Client, rs: &Rserv, side: &str) -> Result<NodeState, Error> {
    if rs.api == Api::V1_0 {
        return state_1_0(client, rs, side);
    }
    let r = client
        .query_one(
            &format!(
                "SELECT node::text, role, master_node::text, syncid, in_progress, takeover_kind, \
                        takeover_from::text, takeover_syncid, takeover_at::text, previous_master::text \
                 FROM {} WHERE server IS NULL",
                rs.func("rserv_status")
            ),
            &[],
        )
        .ctx(format!("{side}: reading its role"))?;
    Ok(NodeState {
        node: r.get(0),
        role: r.get(1),
        master_node: r.get(2),
        syncid: r.get(3),
        in_progress: r.get(4),
        takeover_kind: r.get(5),
        takeover_from: r.get(6),
        takeover_syncid: r.get(7),
        takeover_at: r.get(8),
        previous_master: r.get(9),
    })
}

/// A node on rserv 1.0, whose `rserv_status` has no row of its own: it knows no fence, no
/// takeover and no switchover (those came with 1.1), only whether it follows a master.
fn state_1_0(client: &mut Client, rs: &Rserv, side: &str) -> Result<NodeState, Error> {
    let r = client
        .query_one(
            &format!(
                "SELECT {}()::text, {}()::text, {}()",
                rs.func("rserv_node_id"),
                rs.func("rserv_slave_master_id"),
                rs.func("rserv_slave_sync_id")
            ),
            &[],
        )
        .ctx(format!("{side}: reading its role"))?;
    let master_node: Option<String> = r.get(1);
    Ok(NodeState {
        node: r.get(0),
        role: if master_node.is_some() {
            "slave"
        } else {
            "master"
        }
        .to_string(),
        master_node,
        syncid: r.get(2),
        ..NodeState::default()
    })
}

/// A slave's position: the master it follows and the last change set applied from it.
#[derive(Debug, Clone)]
pub struct Position {
    pub master: String,
    pub syncid: i64,
    pub server: Option<i32>,
    pub fingerprint: Option<String>,
    /// the master's snapshot of that change set
    pub snapshot: Option<String>,
    pub previous_master: Option<String>,
}

pub fn position(client: &mut Client, rs: &Rserv, side: &str) -> Result<Option<Position>, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT master, syncid, server, fingerprint, snapshot, previous_master FROM {}()",
                rs.func("rserv_slave_position")
            ),
            &[],
        )
        .ctx(format!("{side}: reading its position"))?;
    Ok(row.map(|r| Position {
        master: r.get(0),
        syncid: r.get(1),
        server: r.get(2),
        fingerprint: r.get(3),
        snapshot: r.get(4),
        previous_master: r.get(5),
    }))
}

/// The takeover that made a node a master.
#[derive(Debug, Clone)]
pub struct Takeover {
    pub kind: String,
    pub old_master: String,
    /// this node's server id on the old master, the old master's last change set it applied
    /// (with its fingerprint and the old master's snapshot of it)
    pub old_server: Option<i32>,
    pub old_syncid: Option<i64>,
    pub old_fingerprint: Option<String>,
    pub old_snapshot: Option<String>,
    /// the old master's server id here, and the sync point it starts from
    pub server: i32,
    pub syncid: i64,
    pub at: String,
    pub completed: Option<String>,
}

pub fn takeover(client: &mut Client, rs: &Rserv, side: &str) -> Result<Option<Takeover>, Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT kind, old_master, old_server, old_syncid, old_fingerprint, old_snapshot, \
                        server, syncid, at, completed FROM {}()",
                rs.func("rserv_takeover")
            ),
            &[],
        )
        .ctx(format!("{side}: reading its takeover"))?;
    Ok(row.map(|r| Takeover {
        kind: r.get(0),
        old_master: r.get(1),
        old_server: r.get(2),
        old_syncid: r.get(3),
        old_fingerprint: r.get(4),
        old_snapshot: r.get(5),
        server: r.get(6),
        syncid: r.get(7),
        at: r.get(8),
        completed: r.get(9),
    }))
}

/// Two node ids name the same node (uuids, any case).
pub fn same(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}
