//! The master's figures for a slave's metrics (`rserv_status`: lag and pending changes), read
//! whenever the master is reachable, whatever the slave does; and the warning about master
//! transactions that hold log clean-up back.

use crate::error::{DbContext, Error};
use crate::metrics::SlaveMetrics;
use crate::rserv::Rserv;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tracing::warn;

/// How often a transaction that stays open is warned about again.
const LONG_TRANSACTION_REWARN: Duration = Duration::from_secs(300);

/// When each long-running master transaction (by pid) was last warned about: once when it is
/// found, then every [`LONG_TRANSACTION_REWARN`], not at every status refresh.
#[derive(Default)]
pub(super) struct LongTransactionWarnings(HashMap<i32, Instant>);

impl LongTransactionWarnings {
    /// Should transaction `pid` be warned about now? `open` are the pids still open.
    fn due(&mut self, pid: i32, open: &[i32]) -> bool {
        self.0.retain(|p, _| open.contains(p));
        match self.0.get(&pid) {
            Some(at) if at.elapsed() < LONG_TRANSACTION_REWARN => false,
            _ => {
                self.0.insert(pid, Instant::now());
                true
            }
        }
    }
}

/// Lag figures for the metrics, and a warning about transactions that hold the log back.
pub(super) fn refresh(
    master: &mut postgres::Client,
    rs: &Rserv,
    server: i32,
    m: &SlaveMetrics,
    warned: &mut LongTransactionWarnings,
) -> Result<(), Error> {
    if let Some(row) = master
        .query_opt(
            &format!(
                "SELECT lag_seconds, pending_changes FROM {} WHERE server = $1",
                rs.func("rserv_status")
            ),
            &[&server],
        )
        .ctx("master: reading rserv_status")?
    {
        m.set_lag(row.get::<_, f64>(0), row.get::<_, i64>(1));
    }
    let long = master
        .query(crate::status::LONG_TRANSACTIONS, &[])
        .ctx("master: looking for long transactions")?;
    let open: Vec<i32> = long.iter().map(|r| r.get(0)).collect();
    if long.is_empty() {
        warned.0.clear();
    }
    for row in long {
        let (pid, age, user): (i32, f64, Option<String>) = (row.get(0), row.get(1), row.get(2));
        if !warned.due(pid, &open) {
            continue;
        }
        warn!(
            pid,
            age_seconds = age as u64,
            user = user.unwrap_or_default(),
            "a long-running transaction on the master holds back log clean-up"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_long_transaction_is_warned_about_once_then_rarely() {
        let mut w = super::LongTransactionWarnings::default();
        assert!(w.due(7, &[7]));
        assert!(!w.due(7, &[7]), "not again at the next refresh");
        assert!(w.due(8, &[7, 8]), "another transaction is new");
        // pid 7 ended; a new transaction under the same pid is warned about again
        assert!(!w.due(8, &[8]));
        assert!(w.due(7, &[7, 8]));
    }
}
