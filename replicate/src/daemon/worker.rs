//! One slave's worker: its connections to the master and to the slave, each (re)connected on
//! its own, the cycles, log clean-up (its VACUUM is [`super::vacuum`]'s), and what a failure
//! does.
//!
//! After a failure the side that failed is marked down in the metrics (`rserv_connected`);
//! its session is dropped when it is broken (closed, or not answering a ping) and kept when the
//! server only refused something (an apply rolled back by a lock timeout, a full disk): either
//! way the next attempt comes after a backoff (0.5 s doubling to 30 s), and meanwhile the
//! master's figures keep being refreshed every second when the master is up.
//!
//! When the pair's roles flip (a switchover, or a failover once the old master has rejoined),
//! the worker follows the new direction: the configured slave is the master now, the
//! configured master its slave.

use super::lag::{self, LongTransactionWarnings};
use super::{nap, Cancels};
use crate::conn::Endpoint;
use crate::cycle::{self, CycleOptions, Endpoints, Outcome};
use crate::error::{DbContext, Error};
use crate::locks::LockHolder;
use crate::master;
use crate::metrics::SlaveMetrics;
use crate::rserv::{Api, Rserv};
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Everything a worker needs, resolved up front so a typo fails at start, not in a loop.
pub(super) struct Worker {
    pub(super) name: String,
    /// None: found by the slave's node id (see [`super::SlaveSpec::server`]).
    pub(super) server: Option<i32>,
    pub(super) create_tables: bool,
    pub(super) master: Endpoint,
    pub(super) slave: Endpoint,
}

/// What the workers share with the daemon.
pub(super) struct Shared<'a> {
    pub(super) stop: &'a AtomicBool,
    pub(super) interval: Duration,
    pub(super) clean_log: bool,
    pub(super) cancels: &'a Cancels,
    pub(super) vacuums: &'a super::vacuum::Requests,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often the master's figures (lag, pending changes, long transactions) are read.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How long a session may take to answer the ping after a failure before it is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

struct MasterLink {
    client: Client,
    rs: Rserv,
}

struct SlaveLink {
    client: Client,
    rs: Rserv,
}

/// Keep one slave's worker going until the daemon stops.
pub(super) fn supervise(w: &Worker, m: &SlaveMetrics, shared: &Shared, slot: usize) {
    let server = w
        .server
        .map_or_else(|| "by node id".to_string(), |s| s.to_string());
    info!(slave = %w.name, %server, master = %w.master.describe(), to = %w.slave.describe(), "starting");
    let mut run = Run::new(w, m, shared, slot);
    run.go();
    for side in ["master", "slave"] {
        run.drop_link(side);
    }
    info!(slave = %w.name, "worker stopped");
}

struct Run<'a> {
    w: &'a Worker,
    m: &'a SlaveMetrics,
    shared: &'a Shared<'a>,
    slot: usize,
    master: Option<MasterLink>,
    slave: Option<SlaveLink>,
    session: cycle::Session,
    opts: CycleOptions,
    /// The slave's id on the master, once known (kept across reconnections: the master's
    /// figures need it while the slave is down).
    server: Option<i32>,
    backoff: Duration,
    /// Failing: the next attempt is not before this.
    retry_at: Option<Instant>,
    last_status: Option<Instant>,
    warned: LongTransactionWarnings,
    last_create: Instant,
    last_clean: Instant,
    unclean: bool,
    /// The roles of the configured pair have flipped: replicate from `w.slave` to `w.master`.
    flipped: bool,
}

impl<'a> Run<'a> {
    fn new(w: &'a Worker, m: &'a SlaveMetrics, shared: &'a Shared<'a>, slot: usize) -> Run<'a> {
        Run {
            w,
            m,
            shared,
            slot,
            master: None,
            slave: None,
            session: cycle::Session::default(),
            // Log clean-up is this loop's job, not each cycle's: at most once a second while
            // busy, and whenever the slave has caught up.
            opts: CycleOptions {
                server: w.server,
                clean_log: false,
                create_tables: w.create_tables,
                finish_tables: w.create_tables,
                ..CycleOptions::default()
            },
            server: w.server,
            backoff: FIRST_BACKOFF,
            retry_at: None,
            last_status: None,
            warned: LongTransactionWarnings::default(),
            last_create: Instant::now(),
            last_clean: Instant::now(),
            unclean: false,
            flipped: false,
        }
    }

    /// The endpoint replicated from (the configured master, or its slave after a flip).
    fn master_ep(&self) -> &'a Endpoint {
        if self.flipped {
            &self.w.slave
        } else {
            &self.w.master
        }
    }

    fn slave_ep(&self) -> &'a Endpoint {
        if self.flipped {
            &self.w.master
        } else {
            &self.w.slave
        }
    }

    /// The roles flipped: drop both sessions and follow the new direction at once. The
    /// configured server id was the old direction's; the new slave is found by its node id.
    fn flip(&mut self, why: &str) {
        for side in ["master", "slave"] {
            self.drop_link(side);
        }
        self.flipped = !self.flipped;
        self.server = if self.flipped { None } else { self.w.server };
        self.opts.server = self.server;
        self.backoff = FIRST_BACKOFF;
        self.retry_at = None;
        warn!(slave = %self.w.name, why = %why, master = %self.master_ep().describe(),
              to = %self.slave_ep().describe(), "roles flipped: following the new direction");
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn go(&mut self) {
        while !self.stopping() {
            if let Some(at) = self.retry_at {
                if Instant::now() < at {
                    // failing: wait out the backoff, keeping the master's figures fresh
                    if let Err(e) = self.refresh_status() {
                        self.failed(e);
                    }
                    let left = at.saturating_duration_since(Instant::now());
                    nap(left.min(Duration::from_millis(200)), self.shared.stop);
                    continue;
                }
                self.retry_at = None;
            }
            if let Err(e) = self.step() {
                self.failed(e);
            }
        }
    }

    /// Connect what is missing, run a cycle, keep house, wait for changes.
    fn step(&mut self) -> Result<(), Error> {
        let master = self.connect_master();
        let slave = self.connect_slave();
        match (master, slave) {
            (Err(m), Err(s)) => {
                self.failed(s);
                return Err(m);
            }
            (Err(m), Ok(())) => return Err(m),
            (Ok(()), slave) => {
                self.refresh_status()?;
                slave?;
            }
        }
        let busy = self.cycle()?;
        self.refresh_status()?;
        self.clean_up(busy)?;
        if !busy {
            self.idle()?;
        }
        Ok(())
    }

    /// Nothing to do: ask the master's writers to notify at commit (rserv's wake lock, see the
    /// extension's `wakeup.rs`), look once more for what committed before they would have, and
    /// wait. Writers notify only while the lock is held, so it is released before any work.
    fn idle(&mut self) -> Result<(), Error> {
        let link = linked(&mut self.master)?;
        let waiting = match link.rs.api {
            Api::V1_0 => false,
            _ => match wake_on_commit(&mut link.client, &link.rs, true) {
                Ok(waiting) => waiting,
                // a writer's commit is stuck (a synchronous standby away?): poll by cycling
                Err(e) if e.sqlstate() == Some(SqlState::LOCK_NOT_AVAILABLE.code()) => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            },
        };
        let waited = self.wait_idle(waiting);
        if waiting {
            if let Some(link) = self.master.as_mut() {
                let released = wake_on_commit(&mut link.client, &link.rs, false);
                // an error that broke the session released the lock with it
                waited?;
                released?;
                return Ok(());
            }
        }
        waited
    }

    fn wait_idle(&mut self, waiting: bool) -> Result<(), Error> {
        if waiting && self.cycle()? {
            return Ok(());
        }
        let master = linked(&mut self.master)?;
        wait_for_changes(&mut master.client, self.shared.interval, self.shared.stop)
    }

    fn connect_master(&mut self) -> Result<(), Error> {
        if self.master.is_none() {
            let link = self.came_up("master", open_master(self.master_ep()), |l| &l.client)?;
            self.master = Some(link);
        }
        Ok(())
    }

    fn connect_slave(&mut self) -> Result<(), Error> {
        if self.slave.is_none() {
            let link = self.came_up("slave", open_slave(self.slave_ep()), |l| &l.client)?;
            self.slave = Some(link);
        }
        Ok(())
    }

    /// A session with `side` was opened (or not): metrics, cancel key, log.
    fn came_up<L>(
        &mut self,
        side: &'static str,
        opened: Result<L, Error>,
        client: impl Fn(&L) -> &Client,
    ) -> Result<L, Error> {
        let link = opened.inspect_err(|_| self.m.set_connected(side, false))?;
        let ep = match side {
            "master" => self.master_ep(),
            _ => self.slave_ep(),
        };
        let token = client(&link).cancel_token();
        self.shared.cancels.set(self.slot, side, token, ep);
        self.session = cycle::Session::default();
        self.m.set_connected(side, true);
        info!(slave = %self.w.name, side, "connected");
        Ok(link)
    }

    fn drop_link(&mut self, side: &'static str) {
        let dropped = match side {
            "master" => self.master.take().is_some(),
            _ => self.slave.take().is_some(),
        };
        if dropped {
            self.shared.cancels.clear(self.slot, side);
            self.session = cycle::Session::default();
        }
        self.m.set_connected(side, false);
    }

    /// The master's figures for the metrics, at most every [`STATUS_EVERY`], when the master
    /// is connected and the slave's id known.
    fn refresh_status(&mut self) -> Result<(), Error> {
        if self.last_status.is_some_and(|t| t.elapsed() < STATUS_EVERY) {
            return Ok(());
        }
        let (Some(link), Some(server)) = (self.master.as_mut(), self.server) else {
            return Ok(());
        };
        self.last_status = Some(Instant::now());
        lag::refresh(&mut link.client, &link.rs, server, self.m, &mut self.warned)
    }

    /// One cycle; true if it applied something (more may be waiting).
    fn cycle(&mut self) -> Result<bool, Error> {
        let (Some(ml), Some(sl)) = (self.master.as_mut(), self.slave.as_mut()) else {
            return Err(Error::Failed("not connected".into()));
        };
        let started = Instant::now();
        let outcome = {
            let mut ep = Endpoints {
                master: &mut ml.client,
                master_rs: &ml.rs,
                slave: &mut sl.client,
                slave_rs: &sl.rs,
            };
            cycle::run(&mut ep, &self.opts, &mut self.session, None)
        };
        // known once the cycle found it, even if the cycle then failed (the master's figures
        // need it while the slave cannot be applied to)
        if let (Some(server), None) = (self.session.server(), self.server) {
            self.server = Some(server);
            self.m.set_server(server);
            info!(slave = %self.w.name, server, "slave identified");
        }
        let outcome = outcome?;
        // New tables on the master are looked for at connect time and then twice a minute.
        self.opts.create_tables =
            self.w.create_tables && self.last_create.elapsed() >= Duration::from_secs(30);
        if self.opts.create_tables {
            self.last_create = Instant::now();
        }
        self.backoff = FIRST_BACKOFF;
        self.m.set_connected("master", true);
        self.m.set_connected("slave", true);
        let name = &self.w.name;
        Ok(match outcome {
            Outcome::Applied {
                syncid,
                stats,
                changed,
            } => {
                self.m.applied(stats.rows, stats.bytes);
                self.unclean |= self.shared.clean_log;
                info!(slave = %name, syncid, rows = stats.rows, bytes = stats.bytes, changed,
                      ms = started.elapsed().as_millis() as u64, "change set applied");
                true
            }
            Outcome::Skipped { syncid } => {
                warn!(slave = %name, syncid, "change set skipped: the slave already had it");
                false
            }
            Outcome::InSync => false,
        })
    }

    /// Log clean-up (at most once a second while busy, and whenever the slave has caught up);
    /// the deleted rows are dead tuples, which the daemon's vacuum thread is asked to remove.
    fn clean_up(&mut self, busy: bool) -> Result<(), Error> {
        if !(self.unclean && (!busy || self.last_clean.elapsed() >= Duration::from_secs(1))) {
            return Ok(());
        }
        let master_ep = self.master_ep();
        let link = linked(&mut self.master)?;
        let n = master::clean_log(&mut link.client, &link.rs)?;
        debug!(slave = %self.w.name, rows = n, "log cleaned");
        self.last_clean = Instant::now();
        self.unclean = false;
        if n > 0 {
            self.shared.vacuums.ask(master_ep);
        }
        Ok(())
    }

    /// A failure: say so (metrics, log), mark the side that failed down, drop the sessions
    /// that are broken, and retry after the backoff.
    fn failed(&mut self, e: Error) {
        if let Error::Flipped(why) = &e {
            self.flip(why);
            return;
        }
        let failed_side = e.side();
        let retry_in = self.backoff;
        if self.stopping() {
            info!(slave = %self.w.name, error = %e, "stopping: what was in flight was cancelled and rolled back");
        } else {
            self.m.error(failed_side, &e.to_string());
            if let Error::LockTimeout { table, holders, .. } = &e {
                self.m.lock_timeout();
                // one line: who holds the lock is in the fields (the whole message, with its
                // hint, is rserv_last_error's)
                let holder = holders.first();
                warn!(
                    slave = %self.w.name,
                    table = table.as_deref().unwrap_or(""),
                    holder_pid = holder.map(|h| h.pid),
                    holder_mode = holder.map(|h| h.mode.as_str()),
                    holder_user = holder.and_then(|h| h.user.as_deref()),
                    holder_application = holder.and_then(|h| h.application_name.as_deref()),
                    holder_state = holder.and_then(|h| h.state.as_deref()),
                    holder_query = holder.map(LockHolder::query_line),
                    other_holders = holders.len().saturating_sub(1),
                    retry_in_ms = retry_in.as_millis() as u64,
                    "lock wait timed out on the slave: the change set was rolled back, retrying"
                );
            } else {
                error!(slave = %self.w.name, side = failed_side.unwrap_or("both"), error = %e,
                       retry_in_ms = retry_in.as_millis() as u64, "replication interrupted");
            }
        }
        // a session that still answers is kept: the server only refused something
        let mut broken = [false; 2];
        for (i, side) in ["master", "slave"].into_iter().enumerate() {
            let client = match side {
                "master" => self.master.as_mut().map(|l| &mut l.client),
                _ => self.slave.as_mut().map(|l| &mut l.client),
            };
            // (a session whose extension was updated under it must be opened again too)
            let stale = matches!(&e, Error::Reconnect { side: s, .. } if *s == side);
            broken[i] =
                stale || client.is_some_and(|c| c.is_closed() || c.is_valid(PING_TIMEOUT).is_err());
        }
        for (i, side) in ["master", "slave"].into_iter().enumerate() {
            // an error that does not say its side is the broken side's, else both sides'
            let implicated = match failed_side {
                Some(f) => f == side,
                None => broken[i] || broken == [false; 2],
            };
            if implicated {
                self.m.set_connected(side, false);
            }
            if broken[i] {
                debug!(slave = %self.w.name, side, "session lost: reconnecting after the backoff");
                self.drop_link(side);
            }
        }
        self.retry_at = Some(Instant::now() + retry_in);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// The master's session, listening for `NOTIFY rserv`.
fn open_master(ep: &Endpoint) -> Result<MasterLink, Error> {
    let mut client = connect(ep, "master")?;
    let rs = Rserv::locate(&mut client, "master", ep.dbname())?;
    client
        .batch_execute("LISTEN rserv")
        .ctx("master: LISTEN rserv")?;
    Ok(MasterLink { client, rs })
}

/// The slave's session, holding the applier lock: one `replicate` applies to a slave at a
/// time (a second one waits, retrying, instead of racing).
fn open_slave(ep: &Endpoint) -> Result<SlaveLink, Error> {
    let mut client = connect(ep, "slave")?;
    let rs = Rserv::locate(&mut client, "slave", ep.dbname())?;
    let locked: bool = client
        .query_one("SELECT pg_catalog.pg_try_advisory_lock(1920102006, 1)", &[])
        .ctx("slave: taking the applier lock")?
        .get(0);
    if !locked {
        return Err(Error::Failed(format!(
            "slave: another replicate is already applying to {}",
            ep.describe()
        )));
    }
    Ok(SlaveLink { client, rs })
}

fn linked(master: &mut Option<MasterLink>) -> Result<&mut MasterLink, Error> {
    master
        .as_mut()
        .ok_or_else(|| Error::Failed("master: not connected".into()))
}

fn connect(ep: &Endpoint, side: &'static str) -> Result<Client, Error> {
    ep.connect()
        .map_err(|source| Error::Connect { side, source })
}

/// Take (`waiting`) or release rserv's wake lock on the master; see [`Run::idle`]. Taking it
/// waits up to a second for writers' commits in flight.
fn wake_on_commit(client: &mut Client, rs: &Rserv, waiting: bool) -> Result<bool, Error> {
    let what = if waiting {
        "master: asking writers to notify (rserv_wake_on_commit)"
    } else {
        "master: releasing the wake lock (rserv_wake_on_commit)"
    };
    let sql = format!("SELECT {}($1)", rs.func("rserv_wake_on_commit"));
    if !waiting {
        return client
            .query_one(&sql, &[&waiting])
            .ctx(what)
            .map(|r| r.get(0));
    }
    let mut tx = client.transaction().ctx(what)?;
    tx.batch_execute("SET LOCAL lock_timeout = '1s'")
        .ctx(what)?;
    let held: bool = tx.query_one(&sql, &[&waiting]).ctx(what)?.get(0);
    tx.commit().ctx(what)?;
    Ok(held)
}

/// Block until the master says something committed, or `interval` passes.
fn wait_for_changes(
    master: &mut Client,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<(), Error> {
    let until = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let mut notes = master.notifications();
        let got = notes
            .timeout_iter(left.min(Duration::from_millis(200)))
            .next()
            .ctx("master: waiting for NOTIFY")?;
        if got.is_some() {
            // one cycle serves every notification that arrived meanwhile
            while notes
                .iter()
                .next()
                .ctx("master: reading notifications")?
                .is_some()
            {}
            return Ok(());
        }
    }
    Ok(())
}
