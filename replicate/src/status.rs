//! `replicate status`: how far behind each slave is, from the master's `rserv_status` view.

use crate::error::{DbContext, Error};
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
    pub slaves: Vec<SlaveStatus>,
    pub long_transactions: Vec<LongTransaction>,
}

pub fn read(client: &mut Client, rs: &Rserv) -> Result<Status, Error> {
    let rows = client
        .query(
            &format!(
                "SELECT server, slave_node::text, confirmed_syncid, data_as_of::text, confirmed_at::text, \
                        lag_seconds, pending_changes, copies_in_progress FROM {} ORDER BY server",
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
        slaves,
        long_transactions,
    })
}

/// A plain table for people.
pub fn render(s: &Status) -> String {
    let mut out = format!(
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
        out.push_str("(no slave has synced from this master yet)\n");
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
