//! `replicate status`: this node's role (master, slave, fenced; whom it follows, its sync point,
//! a switchover or failover in progress) and how far behind each of its slaves is, from the
//! `rserv_status` view.

use crate::error::{DbContext, Error};
use crate::node::{state, NodeState};
use crate::rserv::Rserv;
use postgres::Client;
use serde::Serialize;

/// Transactions older than five minutes that hold an xid or a snapshot: they keep log rows
/// from being cleaned up (and the slave from seeing their changes until they end).
pub const LONG_TRANSACTIONS: &str = "SELECT pid, extract(epoch FROM now() - xact_start)::float8, usename::text, \
     state, left(query, 80) FROM pg_catalog.pg_stat_activity \
     WHERE (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) AND pid <> pg_catalog.pg_backend_pid() \
       AND xact_start < now() - interval '5 minutes' ORDER BY xact_start";

#[derive(Serialize, Debug)]
pub struct SlaveStatus {
    pub server: i32,
    pub slave_node: Option<String>,
    pub confirmed_syncid: Option<i64>,
    pub data_as_of: Option<String>,
    pub confirmed_at: Option<String>,
    pub lag_seconds: f64,
    pub pending_changes: i64,
    pub copies_in_progress: i64,
}

#[derive(Serialize, Debug)]
pub struct LongTransaction {
    pub pid: i32,
    pub age_seconds: f64,
    pub user: Option<String>,
    pub state: Option<String>,
    pub query: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct Status {
    /// this node
    pub node: NodeState,
    pub slaves: Vec<SlaveStatus>,
    pub long_transactions: Vec<LongTransaction>,
}

pub fn read(client: &mut Client, rs: &Rserv) -> Result<Status, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT server, slave_node::text, confirmed_syncid, data_as_of::text, confirmed_at::text, \
                        lag_seconds, pending_changes, copies_in_progress FROM {} \
                 WHERE server IS NOT NULL ORDER BY server",
                rs.func("rserv_status")
            ),
            &[],
        )
        .ctx("master: reading rserv_status")?;
    let slaves = rows
        .iter()
        .map(|r| SlaveStatus {
            server: r.get(0),
            slave_node: r.get(1),
            confirmed_syncid: r.get(2),
            data_as_of: r.get(3),
            confirmed_at: r.get(4),
            lag_seconds: r.get(5),
            pending_changes: r.get(6),
            copies_in_progress: r.get(7),
        })
        .collect();
    let long_transactions = client
        .query(LONG_TRANSACTIONS, &[])
        .ctx("master: reading pg_stat_activity")?
        .iter()
        .map(|r| LongTransaction {
            pid: r.get(0),
            age_seconds: r.get(1),
            user: r.get(2),
            state: r.get(3),
            query: r.get(4),
        })
        .collect();
    Ok(Status {
        node: state(client, rs, "node")?,
        slaves,
        long_transactions,
    })
}

/// This node's role in one line, e.g. `node 1f…: slave of 2e… at change set 42`.
pub fn role_line(n: &NodeState) -> String {
    let mut line = format!("node {}: {}", n.node, n.role);
    if let Some(m) = &n.master_node {
        line.push_str(&format!(" of {m}"));
    }
    match (n.role.as_str(), n.syncid) {
        ("slave", Some(id)) => line.push_str(&format!(" at change set {id}")),
        (_, Some(id)) => line.push_str(&format!(", last sync id {id}")),
        _ => {}
    }
    if let (Some(kind), Some(from), Some(at)) =
        (&n.takeover_kind, &n.takeover_from, n.takeover_syncid)
    {
        line.push_str(&format!(
            "; took over from {from} by {kind} at sync point {at} ({})",
            n.takeover_at.clone().unwrap_or_default()
        ));
    }
    if let Some(prev) = &n.previous_master {
        line.push_str(&format!("; re-pointed here from {prev} by a failover"));
    }
    match n.in_progress.as_deref() {
        Some("switchover") => {
            line.push_str("; SWITCHOVER IN PROGRESS (run replicate switchover again to finish it)")
        }
        Some("failover") => line
            .push_str("; FAILOVER IN PROGRESS: the old master has not rejoined (replicate rejoin)"),
        Some("check") => line.push_str(
            "; NOT YET COMPARED with the master a failover re-pointed it to: change sets refused \
             (run replicate failover again, or replicate check --repair)",
        ),
        Some("rejoin") => line
            .push_str("; DEPOSED: another node took over, writes refused until replicate rejoin"),
        Some(other) => line.push_str(&format!("; {other} in progress")),
        None => {}
    }
    line
}

/// A plain table for people.
pub fn render(s: &Status) -> String {
    let mut out = role_line(&s.node) + "\n";
    out += &format!(
        "{:>6}  {:>10}  {:>9}  {:>8}  {:<29}  {}\n",
        "server", "lag (s)", "pending", "sync id", "data as of", "slave node"
    );
    for x in &s.slaves {
        out.push_str(&format!(
            "{:>6}  {:>10.3}  {:>9}  {:>8}  {:<29}  {}{}\n",
            x.server,
            x.lag_seconds,
            x.pending_changes,
            x.confirmed_syncid
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            x.data_as_of
                .clone()
                .unwrap_or_else(|| "never synced".into()),
            x.slave_node.clone().unwrap_or_else(|| "-".into()),
            if x.copies_in_progress > 0 {
                format!("  ({} initial copies in progress)", x.copies_in_progress)
            } else {
                String::new()
            }
        ));
    }
    if s.slaves.is_empty() {
        out.push_str("(no slave registered on this node)\n");
    }
    for t in &s.long_transactions {
        out.push_str(&format!(
            "warning: transaction of pid {} ({}) open for {:.0} s holds back log clean-up: {}\n",
            t.pid,
            t.user.clone().unwrap_or_default(),
            t.age_seconds,
            t.query.clone().unwrap_or_default()
        ));
    }
    out
}
