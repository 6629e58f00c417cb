//! VACUUM of the master's log, on a thread and a session of its own.
//!
//! Clean-up deletes the log rows every slave has; they stay as dead tuples until a VACUUM.
//! A VACUUM under load takes hundreds of milliseconds (and waits behind anyone holding a
//! conflicting lock on the log): run inside a worker's loop it stalled that worker's cycles,
//! a lag spike every few seconds. So the workers only say which master they cleaned, and this
//! thread vacuums each such log at most every [`EVERY`].

use super::{nap, Cancels};
use crate::conn::Endpoint;
use crate::error::{DbContext, Error};
use crate::rserv::Rserv;
use postgres::Client;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tracing::{debug, warn};

/// How often a cleaned log is vacuumed (at most).
const EVERY: Duration = Duration::from_secs(5);

/// The masters whose log was cleaned since their last VACUUM, by [`Endpoint::describe`].
#[derive(Default)]
pub(super) struct Requests(Mutex<HashMap<String, Endpoint>>);

impl Requests {
    /// Log rows were deleted on `master`: vacuum its log soon.
    pub(super) fn ask(&self, master: &Endpoint) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(master.describe())
            .or_insert_with(|| master.clone());
    }

    fn take(&self) -> HashMap<String, Endpoint> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A session to one master, and its log when this role may vacuum it (VACUUM needs the log's
/// owner or a superuser; without that, autovacuum does the job).
struct Session {
    client: Client,
    log_table: Option<String>,
}

/// Vacuum what the workers ask for until the daemon stops. Failures are logged and retried
/// when the log is next cleaned: they never stop replication.
pub(super) fn run(requests: &Requests, stop: &AtomicBool, cancels: &Cancels, slot: usize) {
    let mut sessions: HashMap<String, Session> = HashMap::new();
    loop {
        nap(EVERY, stop);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for (key, ep) in requests.take() {
            let session = match sessions.remove(&key) {
                Some(s) if !s.client.is_closed() => Ok(s),
                _ => open(&ep),
            };
            let done = session.and_then(|mut s| {
                vacuum(&mut s, &ep, cancels, slot)?;
                Ok(s)
            });
            cancels.clear(slot, "vacuum");
            match done {
                Ok(s) => {
                    sessions.insert(key, s);
                }
                Err(e) => {
                    warn!(master = %key, error = %e, "could not vacuum the log (retried after the next clean-up)")
                }
            }
        }
    }
}

fn open(ep: &Endpoint) -> Result<Session, Error> {
    let mut client = ep.connect().map_err(|source| Error::Connect {
        side: "master",
        source,
    })?;
    let rs = Rserv::locate(&mut client, "master", ep.dbname())?;
    let log_table = rs.func("_rserv_log_");
    let may: bool = client
        .query_one(
            "SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
             FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
            &[&log_table],
        )
        .ctx("master: checking who may vacuum the log")?
        .get(0);
    if !may {
        debug!(master = %ep.describe(), "not the log's owner: autovacuum vacuums the log");
    }
    Ok(Session {
        client,
        log_table: may.then_some(log_table),
    })
}

fn vacuum(s: &mut Session, ep: &Endpoint, cancels: &Cancels, slot: usize) -> Result<(), Error> {
    let Some(log_table) = &s.log_table else {
        return Ok(());
    };
    // a VACUUM waiting for a lock at shutdown is cancelled like a worker's statement
    cancels.set(slot, "vacuum", s.client.cancel_token(), ep);
    // (the name comes from the server's quote_ident: see Rserv::locate)
    s.client
        .batch_execute(&format!("VACUUM {log_table}"))
        .ctx("master: vacuuming the log")?;
    debug!(master = %ep.describe(), "log vacuumed");
    Ok(())
}
