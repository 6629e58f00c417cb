//! `replicate run`: follow a master continuously, for one or more slaves.
//!
//! One worker thread per slave, each with its own connections, so a slow or dead slave never
//! holds up another. A worker runs cycles back to back while they find work, then waits for
//! the master's `NOTIFY rserv` (sent by the capture trigger at commit) or the polling interval,
//! whichever comes first. Any error drops the connections and retries with backoff; a cycle
//! resumes from the slave's confirmed sync id, so nothing is lost or applied twice. SIGINT and
//! SIGTERM stop the workers between cycles: the apply in flight commits or rolls back first.

use crate::conn::{ConnArgs, Endpoint};
use crate::cycle::{self, CycleOptions, Endpoints, Outcome};
use crate::error::{DbContext, Error};
use crate::master;
use crate::metrics::{serve as serve_metrics, SlaveMetrics};
use crate::rserv::Rserv;
use postgres::fallible_iterator::FallibleIterator;
use serde::Deserialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// A connection as written in the configuration file.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// libpq key=value string or postgresql:// URL
    pub conninfo: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
}

impl NodeConfig {
    fn args(&self) -> ConnArgs {
        ConnArgs {
            conninfo: self.conninfo.clone(),
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: None,
            dbname: self.dbname.clone(),
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SlaveConfig {
    /// shown in logs and metrics; defaults to the database name
    pub name: Option<String>,
    /// this slave's id on the master; without it, the id the master binds this slave
    /// database's node id to (the one it has, else the lowest free one from 1 up)
    pub server: Option<i32>,
    #[serde(default)]
    pub create_tables: bool,
    #[serde(flatten)]
    pub node: NodeConfig,
}

#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// longest wait between cycles when no NOTIFY arrives, seconds (default 1)
    pub interval: Option<f64>,
    /// serve Prometheus metrics here, e.g. "127.0.0.1:9187"
    pub metrics_addr: Option<String>,
    /// remove log rows no slave needs after each cycle (default true)
    pub clean_log: Option<bool>,
    /// password file in ~/.pgpass format for every connection
    pub password_file: Option<String>,
}

/// `replicate.toml`: one `[master]`, one or more `[[slave]]`, an optional `[run]`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub master: NodeConfig,
    #[serde(rename = "slave")]
    pub slaves: Vec<SlaveConfig>,
    #[serde(default)]
    pub run: RunConfig,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!("cannot read configuration {}: {e}", path.display()))
        })?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| Error::Usage(format!("invalid configuration {}: {e}", path.display())))?;
        if config.slaves.is_empty() {
            return Err(Error::Usage(format!(
                "{}: no [[slave]] section: name at least one slave",
                path.display()
            )));
        }
        let mut ids: Vec<i32> = config.slaves.iter().filter_map(|s| s.server).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::Usage(format!(
                "{}: two [[slave]] sections share a server id: give each slave its own `server = N`",
                path.display()
            )));
        }
        Ok(config)
    }
}

/// Everything a worker needs, resolved up front so a typo fails at start, not in a loop.
struct Worker {
    name: String,
    /// None: found by the slave's node id (see [`SlaveSpec::server`]).
    server: Option<i32>,
    create_tables: bool,
    master: Endpoint,
    slave: Endpoint,
}

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
        let master = Endpoint::resolve(&config.master.args(), &none, pwfile).map_err(|source| {
            Error::Connect {
                side: "master",
                source,
            }
        })?;
        let mut slaves = Vec::new();
        for s in &config.slaves {
            let endpoint = Endpoint::resolve(&s.node.args(), &none, pwfile).map_err(|source| {
                Error::Connect {
                    side: "slave",
                    source,
                }
            })?;
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
        let (interval, clean_log) = (self.interval, self.clean_log);
        std::thread::scope(|s| {
            for (w, m) in self.workers.iter().zip(&metrics) {
                let stop = stop.clone();
                s.spawn(move || supervise(w, m, &stop, interval, clean_log));
            }
        });
        info!("stopped");
        Ok(())
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

/// Keep one slave's worker alive: reconnect with exponential backoff after any failure. When
/// the pair's roles flip (a switchover, or a failover once the old master has rejoined), follow
/// the new direction: the configured slave is the master now, the configured master its slave.
fn supervise(w: &Worker, m: &SlaveMetrics, stop: &AtomicBool, interval: Duration, clean_log: bool) {
    let mut backoff = Duration::from_millis(500);
    let server = w
        .server
        .map_or_else(|| "by node id".to_string(), |s| s.to_string());
    info!(slave = %w.name, %server, master = %w.master.describe(), to = %w.slave.describe(), "starting");
    let mut flipped = false;
    while !stop.load(Ordering::Relaxed) {
        let pair = if flipped {
            (&w.slave, &w.master)
        } else {
            (&w.master, &w.slave)
        };
        match follow(w, pair, m, stop, interval, clean_log, &mut backoff) {
            Ok(()) => break,
            Err(Error::Flipped(why)) => {
                flipped = !flipped;
                warn!(slave = %w.name, why = %why, master = %pair.1.describe(), to = %pair.0.describe(),
                      "roles flipped: following the new direction");
            }
            Err(e) => {
                m.error(&e.to_string());
                error!(slave = %w.name, error = %e, retry_in_ms = backoff.as_millis() as u64, "replication interrupted");
                nap(backoff, stop);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    m.set_connected(false);
    info!(slave = %w.name, "worker stopped");
}

fn connect(ep: &Endpoint, side: &'static str) -> Result<postgres::Client, Error> {
    ep.connect()
        .map_err(|source| Error::Connect { side, source })
}

/// One connected session: cycles until asked to stop (Ok) or something fails (Err).
fn follow(
    w: &Worker,
    (master_ep, slave_ep): (&Endpoint, &Endpoint),
    m: &SlaveMetrics,
    stop: &AtomicBool,
    interval: Duration,
    clean_log: bool,
    backoff: &mut Duration,
) -> Result<(), Error> {
    let mut master = connect(master_ep, "master")?;
    let mut slave = connect(slave_ep, "slave")?;
    let master_rs = Rserv::locate(&mut master, "master", master_ep.dbname())?;
    let slave_rs = Rserv::locate(&mut slave, "slave", slave_ep.dbname())?;
    // One applier per slave: a second `replicate run` waits here instead of racing.
    let locked: bool = slave
        .query_one("SELECT pg_catalog.pg_try_advisory_lock(1920102006, 1)", &[])
        .ctx("slave: taking the applier lock")?
        .get(0);
    if !locked {
        return Err(Error::Failed(format!(
            "another replicate is already applying to slave {}",
            slave_ep.describe()
        )));
    }
    master
        .batch_execute("LISTEN rserv")
        .ctx("master: LISTEN rserv")?;
    m.set_connected(true);
    info!(slave = %w.name, "connected");
    // Log clean-up is this loop's job, not each cycle's: at most once a second while busy,
    // and whenever the slave has caught up.
    let mut opts = CycleOptions {
        server: w.server,
        clean_log: false,
        create_tables: w.create_tables,
        ..CycleOptions::default()
    };
    let mut session = cycle::Session::default();
    let mut known_server = None;
    let mut last_clean = Instant::now();
    let mut unclean = false;
    let mut last_create = Instant::now();
    // VACUUM needs the log's owner (or a superuser); without that, autovacuum does the job.
    let log_table = master_rs.func("_rserv_log_");
    let can_vacuum: bool = master
        .query_one(
            "SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
             FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
            &[&log_table],
        )
        .ctx("master: checking who may vacuum the log")?
        .get(0);
    let mut last_status = Instant::now() - Duration::from_secs(10);
    let mut warned = LongTransactionWarnings::default();
    let mut last_vacuum = Instant::now();
    let mut cleaned_since_vacuum = false;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let outcome = {
            let mut ep = Endpoints {
                master: &mut master,
                master_rs: &master_rs,
                slave: &mut slave,
                slave_rs: &slave_rs,
            };
            cycle::run(&mut ep, &opts, &mut session, None)?
        };
        if let (Some(server), None) = (session.server(), known_server) {
            known_server = Some(server);
            m.set_server(server);
            info!(slave = %w.name, server, "slave identified");
        }
        // New tables on the master are looked for at connect time and then twice a minute.
        opts.create_tables = w.create_tables && last_create.elapsed() >= Duration::from_secs(30);
        if opts.create_tables {
            last_create = Instant::now();
        }
        *backoff = Duration::from_millis(500);
        let busy = match outcome {
            Outcome::Applied {
                syncid,
                stats,
                changed,
            } => {
                m.applied(stats.rows, stats.bytes);
                unclean |= clean_log;
                info!(slave = %w.name, syncid, rows = stats.rows, bytes = stats.bytes, changed,
                      ms = started.elapsed().as_millis() as u64, "change set applied");
                true
            }
            Outcome::Skipped { syncid } => {
                warn!(slave = %w.name, syncid, "change set skipped: the slave already had it");
                false
            }
            Outcome::InSync => false,
        };
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            if let Some(server) = session.server() {
                refresh_status(&mut master, &master_rs, server, m, &mut warned)?;
            }
        }
        if unclean && (!busy || last_clean.elapsed() >= Duration::from_secs(1)) {
            let n = master::clean_log(&mut master, &master_rs)?;
            debug!(slave = %w.name, rows = n, "log cleaned");
            last_clean = Instant::now();
            unclean = false;
            cleaned_since_vacuum |= n > 0;
        }
        // Deleted log rows are dead tuples: vacuum the log now and then so it stays small.
        if can_vacuum && cleaned_since_vacuum && last_vacuum.elapsed() >= Duration::from_secs(5) {
            master
                .batch_execute(&format!("VACUUM {log_table}"))
                .ctx("master: vacuuming the log")?;
            last_vacuum = Instant::now();
            cleaned_since_vacuum = false;
        }
        if !busy {
            wait_for_changes(&mut master, interval, stop)?;
        }
    }
    Ok(())
}

/// How often a transaction that stays open is warned about again.
const LONG_TRANSACTION_REWARN: Duration = Duration::from_secs(300);

/// When each long-running master transaction (by pid) was last warned about: once when it is
/// found, then every [`LONG_TRANSACTION_REWARN`], not at every status refresh.
#[derive(Default)]
struct LongTransactionWarnings(std::collections::HashMap<i32, Instant>);

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
fn refresh_status(
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

/// Block until the master says something committed, or `interval` passes.
fn wait_for_changes(
    master: &mut postgres::Client,
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

    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let cfg: Config = toml::from_str(include_str!("../../deploy/replicate.toml")).unwrap();
        assert_eq!(cfg.slaves.len(), 2);
        assert_eq!(cfg.slaves[0].server, Some(1));
        assert!(cfg.slaves[0].create_tables);
        assert_eq!(cfg.run.metrics_addr.as_deref(), Some("127.0.0.1:9187"));
    }

    #[test]
    fn misspelt_keys_and_shared_ids_are_refused() {
        assert!(toml::from_str::<Config>("[master]\nhots = \"x\"\n[[slave]]\n").is_err());
        let dir = std::env::temp_dir().join(format!("rserv-cfg-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "[master]\n[[slave]]\nserver = 1\n[[slave]]\nserver = 1\n",
        )
        .unwrap();
        assert!(
            matches!(Config::load(&f), Err(Error::Usage(m)) if m.contains("share a server id"))
        );
        std::fs::write(&f, "[master]\nslave = []\n").unwrap();
        assert!(Config::load(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
