//! `replicate run`: follow a master continuously, for one or more slaves.
//!
//! One worker thread per slave ([`worker`]), each with its own connections, so a slow or dead
//! slave never holds up another. A worker runs cycles back to back while they find work, then
//! waits for the master's `NOTIFY rserv` (sent by the capture trigger at commit) or the polling
//! interval, whichever comes first; the log they clean is vacuumed on a thread of its own
//! ([`vacuum`]), so that a slow VACUUM never holds up a cycle. A failure drops the connection it broke and retries with
//! backoff; a cycle resumes from the slave's confirmed sync id, so nothing is lost or applied
//! twice. Master and slave are connected independently: while the slave is unreachable (or its
//! apply fails) the worker keeps the master's lag figures fresh ([`lag`]), and the metrics say
//! which side fails.
//!
//! SIGINT and SIGTERM stop the workers between cycles; a change set still in flight after
//! [`STOP_GRACE`] (a long copy, an apply waiting for a lock) is cancelled: its transactions roll
//! back, and the next start resumes from the slave's confirmed sync id.

mod config;
mod lag;
mod vacuum;
mod worker;

pub use config::{Config, NodeConfig, RunConfig, SlaveConfig};

use crate::conn::{ConnArgs, Endpoint};
use crate::error::Error;
use crate::metrics::{serve as serve_metrics, SlaveMetrics};
use postgres::CancelToken;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{info, warn};
use worker::{supervise, Shared, Worker};

/// How long a change set in flight may go on after SIGTERM before it is cancelled.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Daemon {
    workers: Vec<Worker>,
    interval: Duration,
    clean_log: bool,
    metrics_addr: Option<String>,
}

/// One slave to follow: its name in logs and metrics, id on the master, connection.
pub struct SlaveSpec {
    pub name: String,
    /// The slave's id on the master; None: the id the master binds the slave's node id to.
    pub server: Option<i32>,
    pub create_tables: bool,
    pub endpoint: Endpoint,
}

impl Daemon {
    /// From a configuration file; `password_file` applies unless the file names one.
    pub fn from_config(config: &Config, password_file: Option<&Path>) -> Result<Daemon, Error> {
        let pwfile = config
            .run
            .password_file
            .as_deref()
            .map(Path::new)
            .or(password_file);
        let none = ConnArgs::default();
        let read = |ep: Endpoint| {
            ep.with_read_timeout(config.run.read_timeout)
                .map_err(Error::Usage)
        };
        let master = Endpoint::resolve(&config.master.args(), &none, pwfile).map_err(|source| {
            Error::Connect {
                side: "master",
                source,
            }
        })?;
        let master = read(master)?;
        let mut slaves = Vec::new();
        for s in &config.slaves {
            let endpoint = Endpoint::resolve(&s.node.args(), &none, pwfile).map_err(|source| {
                Error::Connect {
                    side: "slave",
                    source,
                }
            })?;
            let endpoint = read(endpoint)?
                .with_lock_timeout(config.run.lock_timeout)
                .map_err(Error::Usage)?;
            slaves.push(SlaveSpec {
                name: s
                    .name
                    .clone()
                    .unwrap_or_else(|| endpoint.dbname().to_string()),
                server: s.server,
                create_tables: s.create_tables,
                endpoint,
            });
        }
        Daemon::new(
            master,
            slaves,
            config.run.interval.unwrap_or(1.0),
            config.run.clean_log.unwrap_or(true),
            config.run.metrics_addr.clone(),
        )
    }

    pub fn new(
        master: Endpoint,
        slaves: Vec<SlaveSpec>,
        interval_secs: f64,
        clean_log: bool,
        metrics_addr: Option<String>,
    ) -> Result<Daemon, Error> {
        if !(0.01..=3600.0).contains(&interval_secs) {
            return Err(Error::Usage(format!(
                "interval {interval_secs} s is out of range (0.01 to 3600)"
            )));
        }
        let workers = slaves
            .into_iter()
            .map(|s| Worker {
                name: s.name,
                server: s.server,
                create_tables: s.create_tables,
                master: master.clone(),
                slave: s.endpoint,
            })
            .collect();
        Ok(Daemon {
            workers,
            interval: Duration::from_secs_f64(interval_secs),
            clean_log,
            metrics_addr,
        })
    }

    /// Run until SIGINT or SIGTERM.
    pub fn run(self) -> Result<(), Error> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())
                .map_err(|e| Error::Failed(format!("cannot install the signal handler: {e}")))?;
        }
        let metrics: Vec<Arc<SlaveMetrics>> = self
            .workers
            .iter()
            .map(|w| Arc::new(SlaveMetrics::new(&w.name, w.server)))
            .collect();
        if let Some(addr) = &self.metrics_addr {
            serve_metrics(addr, metrics.clone(), stop.clone())?;
            info!(%addr, "serving Prometheus metrics");
        }
        let cancels = Cancels::default();
        let vacuums = vacuum::Requests::default();
        // the workers and the log's vacuum
        let running = AtomicUsize::new(self.workers.len() + 1);
        let shared = Shared {
            stop: &stop,
            interval: self.interval,
            clean_log: self.clean_log,
            cancels: &cancels,
            vacuums: &vacuums,
        };
        std::thread::scope(|s| {
            for (slot, (w, m)) in self.workers.iter().zip(&metrics).enumerate() {
                let (shared, running) = (&shared, &running);
                s.spawn(move || {
                    supervise(w, m, shared, slot);
                    running.fetch_sub(1, Ordering::Relaxed);
                });
            }
            let (vacuums, stop, cancels, running) = (&vacuums, &stop, &cancels, &running);
            let slot = self.workers.len();
            s.spawn(move || {
                vacuum::run(vacuums, stop, cancels, slot);
                running.fetch_sub(1, Ordering::Relaxed);
            });
            s.spawn(move || stopper(stop, running, cancels));
        });
        info!("stopped");
        Ok(())
    }
}

/// After SIGTERM: give the workers [`STOP_GRACE`] to finish what they are doing, then cancel
/// the statements they still run, once a second until they are all gone.
fn stopper(stop: &AtomicBool, running: &AtomicUsize, cancels: &Cancels) {
    while !stop.load(Ordering::Relaxed) {
        if running.load(Ordering::Relaxed) == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let asked = Instant::now();
    let mut announced = false;
    while running.load(Ordering::Relaxed) > 0 {
        if asked.elapsed() < STOP_GRACE {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if !announced {
            info!(
                grace_s = STOP_GRACE.as_secs(),
                "stopping: cancelling what is still running (its transactions roll back)"
            );
            announced = true;
        }
        cancels.cancel_all();
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A worker's session with one side: (worker, side) → its cancel key and server.
type Sessions = HashMap<(usize, &'static str), (CancelToken, Endpoint)>;

/// The cancel keys of the sessions the workers hold, for stopping.
#[derive(Default)]
pub(crate) struct Cancels(Mutex<Sessions>);

impl Cancels {
    fn slots(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set(&self, worker: usize, side: &'static str, token: CancelToken, ep: &Endpoint) {
        self.slots().insert((worker, side), (token, ep.clone()));
    }

    pub(crate) fn clear(&self, worker: usize, side: &'static str) {
        self.slots().remove(&(worker, side));
    }

    /// Ask every server to cancel what the workers' sessions run (each request on a thread of
    /// its own: a server that does not answer holds up no other).
    fn cancel_all(&self) {
        for ((_, side), (token, ep)) in self.slots().iter() {
            let (side, token, ep) = (*side, token.clone(), ep.clone());
            let sent = std::thread::Builder::new().spawn(move || {
                if let Err(e) = ep.cancel(&token) {
                    warn!(side, error = %e, "could not cancel a statement");
                }
            });
            if let Err(e) = sent {
                warn!(side, error = %e, "could not cancel a statement");
            }
        }
    }
}

/// Sleep up to `d`, waking early when asked to stop.
fn nap(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}
