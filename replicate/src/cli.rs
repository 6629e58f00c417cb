//! Command line: the seed's `Replicate masterdb slavedb` and its companion tools as
//! subcommands, with libpq-style connection options.

use crate::conn::{ConnArgs, Endpoint};
use crate::cycle::{self, CycleOptions, Endpoints, Outcome};
use crate::daemon::{Config, Daemon, SlaveSpec};
use crate::error::{Error, IoContext};
use crate::rserv::{self, Rserv};
use crate::snapshot::rows;
use crate::{check, master, slave, status};
use clap::{Args, Parser, Subcommand};
use std::io::{BufReader, Write};
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit status:
  0  success (change set applied, or nothing to do)
  1  a database refused an operation (the message says which and why)
  2  invalid command line
  3  could not connect to the master or the slave
  4  the snapshot input is truncated, corrupted or not an rserv snapshot
  5  replicate check: master and slave differ

Passwords: PGPASSWORD, ~/.pgpass (or PGPASSFILE, --password-file), never the command line if
you can help it: --password and friends are visible to other users in ps output.";

/// Replicate tables from an rserv master database to a slave database.
///
/// Without a subcommand, runs one replication cycle from MASTERDB to SLAVEDB, like the
/// original `Replicate`: confirm what the slave already has, prepare the next change set on
/// the master, apply it on the slave in one transaction, confirm it.
#[derive(Parser, Debug)]
#[command(
    name = "replicate",
    version,
    after_help = EXIT_CODES,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnFlags,

    /// Slave id on the master: each slave of a master has its own
    #[arg(long, default_value_t = 0, global = true)]
    pub server: i32,

    /// Print progress
    #[arg(long, short, global = true)]
    pub verbose: bool,

    /// Keep the snapshot file (with --snapshot) and print connection settings
    #[arg(long, global = true)]
    pub debug: bool,

    /// Write the change set to FILE, then apply it from there (default: stream in memory)
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,

    /// Do not remove log rows that no slave needs after a successful cycle
    #[arg(long, global = true)]
    pub no_clean_log: bool,

    /// Create the master's replicated tables that the slave lacks (from the master's
    /// definition) and register them there; their rows arrive with the next change set
    #[arg(long, global = true)]
    pub create_tables: bool,

    /// Master database (name, key=value connection string, or postgresql:// URL)
    #[arg(required = true)]
    pub masterdb: Option<String>,

    /// Slave database (name, key=value connection string, or postgresql:// URL)
    #[arg(required = true)]
    pub slavedb: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Default)]
pub struct ConnFlags {
    /// Host or socket directory, for both master and slave
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Port, for both master and slave
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// User name, for both master and slave
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Password for both (visible in ps output: prefer PGPASSWORD or ~/.pgpass)
    #[arg(long, global = true, hide_env_values = true)]
    pub password: Option<String>,
    /// Password file in ~/.pgpass format
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Master connection string (key=value or postgresql:// URL)
    #[arg(long, global = true, value_name = "CONNINFO")]
    pub master: Option<String>,
    #[arg(long, global = true)]
    pub masterhost: Option<String>,
    #[arg(long, global = true)]
    pub masterport: Option<u16>,
    #[arg(long, global = true)]
    pub masteruser: Option<String>,
    /// Master password (visible in ps output)
    #[arg(long, global = true)]
    pub masterpassword: Option<String>,
    /// Slave connection string (key=value or postgresql:// URL)
    #[arg(long, global = true, value_name = "CONNINFO")]
    pub slave: Option<String>,
    #[arg(long, global = true)]
    pub slavehost: Option<String>,
    #[arg(long, global = true)]
    pub slaveport: Option<u16>,
    #[arg(long, global = true)]
    pub slaveuser: Option<String>,
    /// Slave password (visible in ps output)
    #[arg(long, global = true)]
    pub slavepassword: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Install rserv in the master database (MasterInit)
    MasterInit { db: String },
    /// Replicate TABLE from the master (MasterAddTable); COLUMN: its key, or a column to watch
    MasterAddTable {
        db: String,
        table: String,
        column: Option<String>,
    },
    /// Stop replicating TABLE from the master
    MasterRemoveTable { db: String, table: String },
    /// Install rserv in the slave database (SlaveInit)
    SlaveInit { db: String },
    /// Receive TABLE on the slave (SlaveAddTable)
    SlaveAddTable {
        db: String,
        table: String,
        column: Option<String>,
    },
    /// Stop receiving TABLE on the slave
    SlaveRemoveTable { db: String, table: String },
    /// Write the next change set for --server to stdout or a file (PrepareSnapshot)
    Prepare {
        db: String,
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Apply a change set from stdin or a file to the slave (ApplySnapshot)
    Apply {
        db: String,
        #[arg(long, short, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Print the last change set applied on the slave (GetSyncID)
    SyncId { db: String },
    /// Confirm on the master that --server applied SYNCID (MasterSync)
    MasterSync { db: String, syncid: i64 },
    /// Remove log rows no registered slave still needs (CleanLog)
    CleanLog { db: String },
    /// Forget slave --server on the master: log clean-up stops waiting for it
    DropSlave { db: String },
    /// Replicate continuously until SIGINT/SIGTERM: wakes on the master's NOTIFY, reconnects
    /// after failures; one slave from the command line, or several from --config
    Run {
        /// TOML file with [master], one or more [[slave]] and [run] (see the README)
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Longest wait between cycles when no NOTIFY arrives, in seconds
        #[arg(long, value_name = "SECS")]
        interval: Option<f64>,
        /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9187
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<String>,
        masterdb: Option<String>,
        slavedb: Option<String>,
    },
    /// Compare every replicated table on master and slave at one consistent point; with
    /// --repair, re-send only the rows that differ. Exit status: 0 equal (or repaired), 5 different
    Check {
        masterdb: String,
        slavedb: String,
        /// Fix the differing rows (one slave transaction, through the normal change-set path)
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: the slave takes over as master and the old master becomes its slave,
    /// at one sync point, with no copy. Writes to the replicated tables on the master are
    /// refused from the start ("switchover in progress"); writers still in flight after --grace
    /// seconds are cancelled. Run it again to finish one that was interrupted; --abort lifts the
    /// fence of one whose slave has not taken over
    Switchover {
        masterdb: String,
        slavedb: String,
        /// Seconds to wait for the master's writers in flight before cancelling them
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
        /// Give up a switchover that has not reached the slave: the master accepts writes again
        #[arg(long)]
        abort: bool,
    },
    /// Show every slave's lag and pending changes, from the master
    Status {
        db: String,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy)]
enum Side {
    Master,
    Slave,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Master => "master",
            Side::Slave => "slave",
        }
    }
}

impl ConnFlags {
    fn endpoint(&self, side: Side, db: &str, debug: bool) -> Result<Endpoint, Error> {
        let (conninfo, host, port, user, password, flag) = match side {
            Side::Master => (
                &self.master,
                &self.masterhost,
                self.masterport,
                &self.masteruser,
                &self.masterpassword,
                "--masterpassword",
            ),
            Side::Slave => (
                &self.slave,
                &self.slavehost,
                self.slaveport,
                &self.slaveuser,
                &self.slavepassword,
                "--slavepassword",
            ),
        };
        for (given, name) in [(password, flag), (&self.password, "--password")] {
            if given.is_some() {
                eprintln!(
                    "replicate: warning: {name} is visible to other users in ps output; \
                     use PGPASSWORD, ~/.pgpass or --password-file instead"
                );
            }
        }
        let specific = ConnArgs {
            conninfo: conninfo.clone(),
            host: host.clone(),
            port,
            user: user.clone(),
            password: password.clone(),
            dbname: Some(db.to_string()),
        };
        let defaults = ConnArgs {
            conninfo: None,
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dbname: None,
        };
        let ep = Endpoint::resolve(&specific, &defaults, self.password_file.as_deref()).map_err(
            |source| Error::Connect {
                side: side.name(),
                source,
            },
        )?;
        if debug {
            eprintln!("{}: {}", side.name(), ep.describe());
        }
        Ok(ep)
    }

    fn connect(&self, side: Side, db: &str, debug: bool) -> Result<postgres::Client, Error> {
        self.endpoint(side, db, debug)?
            .connect()
            .map_err(|source| Error::Connect {
                side: side.name(),
                source,
            })
    }
}

fn located(
    flags: &ConnFlags,
    side: Side,
    db: &str,
    debug: bool,
) -> Result<(postgres::Client, Rserv), Error> {
    let mut client = flags.connect(side, db, debug)?;
    let rs = Rserv::locate(&mut client, side.name(), db)?;
    Ok((client, rs))
}

/// Structured log lines on stderr for the daemon; RSERV_LOG=debug (or any tracing filter)
/// changes the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RSERV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32, Error> {
    let f = &cli.conn;
    let d = cli.debug;
    match &cli.command {
        None => {
            let (Some(mdb), Some(sdb)) = (&cli.masterdb, &cli.slavedb) else {
                return Err(Error::Usage("give MASTERDB and SLAVEDB".into()));
            };
            let (mut m, mrs) = located(f, Side::Master, mdb, d)?;
            let (mut s, srs) = located(f, Side::Slave, sdb, d)?;
            let opts = CycleOptions {
                server: cli.server,
                snapshot: cli.snapshot.clone(),
                keep_snapshot: cli.debug,
                clean_log: !cli.no_clean_log,
                create_tables: cli.create_tables,
                verbose: cli.verbose,
            };
            let mut ep = Endpoints {
                master: &mut m,
                master_rs: &mrs,
                slave: &mut s,
                slave_rs: &srs,
            };
            match cycle::run(&mut ep, &opts)? {
                Outcome::Applied {
                    syncid,
                    stats,
                    changed,
                } => println!(
                    "change set {syncid} applied: {} sent, {} written or removed",
                    rows(stats.rows),
                    rows(changed.max(0) as u64)
                ),
                Outcome::InSync => println!("master and slave are in sync"),
                Outcome::Skipped { syncid } => {
                    println!("change set {syncid} skipped: the slave already has it or a newer one")
                }
            }
        }
        Some(Command::MasterInit { db }) => {
            let mut c = f.connect(Side::Master, db, d)?;
            println!(
                "rserv {} ready in master database {db}",
                rserv::init(&mut c, "master")?
            );
        }
        Some(Command::SlaveInit { db }) => {
            let mut c = f.connect(Side::Slave, db, d)?;
            println!(
                "rserv {} ready in slave database {db}",
                rserv::init(&mut c, "slave")?
            );
        }
        Some(Command::MasterAddTable { db, table, column }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            master::add_table(&mut c, &rs, table, column.as_deref())?;
        }
        Some(Command::MasterRemoveTable { db, table }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            master::remove_table(&mut c, &rs, table)?;
        }
        Some(Command::SlaveAddTable { db, table, column }) => {
            let (mut c, rs) = located(f, Side::Slave, db, d)?;
            slave::add_table(&mut c, &rs, table, column.as_deref())?;
        }
        Some(Command::SlaveRemoveTable { db, table }) => {
            let (mut c, rs) = located(f, Side::Slave, db, d)?;
            slave::remove_table(&mut c, &rs, table)?;
        }
        Some(Command::Prepare { db, output }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            master::register(&mut c, &rs, &master::Target::server(cli.server))?;
            let prepared = match output {
                Some(path) => {
                    let file = std::fs::File::create(path)
                        .io_ctx(format!("creating {}", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let p =
                        master::prepare(&mut c, &rs, &master::Target::server(cli.server), &mut w)?;
                    w.flush().io_ctx(format!("writing {}", path.display()))?;
                    p
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    let p =
                        master::prepare(&mut c, &rs, &master::Target::server(cli.server), &mut w)?;
                    w.flush().io_ctx("writing to stdout")?;
                    p
                }
            };
            match prepared {
                Some((id, stats)) => eprintln!(
                    "change set {id} prepared: {} sections, {}",
                    stats.sections,
                    rows(stats.rows)
                ),
                None => eprintln!("nothing to replicate: master and slave are in sync"),
            }
        }
        Some(Command::Apply { db, input }) => {
            let (mut c, rs) = located(f, Side::Slave, db, d)?;
            let applied = match input {
                Some(path) => {
                    let file =
                        std::fs::File::open(path).io_ctx(format!("opening {}", path.display()))?;
                    slave::apply(&mut c, &rs, BufReader::new(file))?
                }
                None => slave::apply(&mut c, &rs, std::io::stdin().lock())?,
            };
            match applied {
                slave::Applied::Applied {
                    syncid,
                    stats,
                    changed,
                } => eprintln!(
                    "change set {syncid} applied: {} received, {} written or removed",
                    rows(stats.rows),
                    rows(changed.max(0) as u64)
                ),
                slave::Applied::Skipped { syncid } => eprintln!(
                    "change set {syncid} skipped: the slave already has it or a newer one"
                ),
            }
        }
        Some(Command::SyncId { db }) => {
            let (mut c, rs) = located(f, Side::Slave, db, d)?;
            match slave::sync_id(&mut c, &rs)? {
                Some(id) => println!("{id}"),
                None => {
                    return Err(Error::Failed(format!(
                        "no change set has been applied to slave database {db} yet"
                    )))
                }
            }
        }
        Some(Command::MasterSync { db, syncid }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            if !master::confirm(&mut c, &rs, cli.server, *syncid)? {
                return Err(Error::Failed(format!(
                    "change set {syncid} is not a prepared, unconfirmed change set of server {} \
                     (already confirmed or superseded)",
                    cli.server
                )));
            }
            eprintln!("change set {syncid} confirmed for server {}", cli.server);
        }
        Some(Command::DropSlave { db }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            if !master::drop_server(&mut c, &rs, cli.server)? {
                return Err(Error::Failed(format!(
                    "server {} is not a slave of master database {db}",
                    cli.server
                )));
            }
            eprintln!(
                "server {} dropped: the log no longer waits for it",
                cli.server
            );
        }
        Some(Command::Run {
            config,
            interval,
            metrics_addr,
            masterdb,
            slavedb,
        }) => {
            init_logging();
            let daemon = match (config, masterdb, slavedb) {
                (Some(path), None, None) => {
                    let cfg = Config::load(path)?;
                    // command-line values win over the file's [run] section
                    let cfg = Config {
                        run: crate::daemon::RunConfig {
                            interval: interval.or(cfg.run.interval),
                            metrics_addr: metrics_addr.clone().or(cfg.run.metrics_addr.clone()),
                            ..cfg.run.clone()
                        },
                        ..cfg
                    };
                    Daemon::from_config(&cfg, f.password_file.as_deref())?
                }
                (None, Some(mdb), Some(sdb)) => {
                    let master = f.endpoint(Side::Master, mdb, d)?;
                    let slave = f.endpoint(Side::Slave, sdb, d)?;
                    Daemon::new(
                        master,
                        vec![SlaveSpec {
                            name: sdb.clone(),
                            server: cli.server,
                            create_tables: cli.create_tables,
                            endpoint: slave,
                        }],
                        interval.unwrap_or(1.0),
                        !cli.no_clean_log,
                        metrics_addr.clone(),
                    )?
                }
                _ => {
                    return Err(Error::Usage(
                        "give either --config FILE or MASTERDB SLAVEDB to replicate run".into(),
                    ))
                }
            };
            daemon.run()?;
        }
        Some(Command::Check {
            masterdb,
            slavedb,
            repair,
            json,
        }) => {
            let (mut m, mrs) = located(f, Side::Master, masterdb, d)?;
            let (mut s, srs) = located(f, Side::Slave, slavedb, d)?;
            let mut ep = Endpoints {
                master: &mut m,
                master_rs: &mrs,
                slave: &mut s,
                slave_rs: &srs,
            };
            let opts = CycleOptions {
                server: cli.server,
                clean_log: !cli.no_clean_log,
                verbose: cli.verbose,
                ..CycleOptions::default()
            };
            let mut report = check::check(&mut ep, &opts, *repair)?;
            let mut out = if *json {
                serde_json::to_string_pretty(&report)
                    .map_err(|e| Error::Failed(format!("encoding JSON: {e}")))?
                    + "\n"
            } else {
                check::render(&report)
            };
            if *repair && report.repaired > 0 {
                // show that the repair worked: compare again
                let repaired = report.repaired;
                report = check::check(&mut ep, &opts, false)?;
                report.repaired = repaired;
                out = if *json {
                    serde_json::to_string_pretty(&report)
                        .map_err(|e| Error::Failed(format!("encoding JSON: {e}")))?
                        + "\n"
                } else {
                    format!("{out}after repair:\n{}", check::render(&report))
                };
            }
            print!("{out}");
            if !report.equal() {
                return Ok(crate::error::exit::DIFFERENT);
            }
        }
        Some(Command::Switchover {
            masterdb,
            slavedb,
            grace,
            abort,
        }) => {
            let (mut m, mrs) = located(f, Side::Master, masterdb, d)?;
            let (mut s, srs) = located(f, Side::Slave, slavedb, d)?;
            let mut ep = Endpoints {
                master: &mut m,
                master_rs: &mrs,
                slave: &mut s,
                slave_rs: &srs,
            };
            if *abort {
                let lifted = crate::switchover::abort(&mut ep)?;
                println!(
                    "{}",
                    if lifted {
                        "switchover aborted: the master accepts writes again"
                    } else {
                        "no switchover in progress on the master"
                    }
                );
                return Ok(0);
            }
            let opts = CycleOptions {
                server: cli.server,
                clean_log: !cli.no_clean_log,
                verbose: cli.verbose,
                ..CycleOptions::default()
            };
            let grace = std::time::Duration::from_secs_f64(grace.clamp(0.0, 3600.0));
            let r = crate::switchover::switchover(&mut ep, &opts, grace)?;
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
                "from now on replicate the other way: the slave's connection options and database ({slavedb}) are the master's, and the old master's ({masterdb}) the slave's"
            );
        }
        Some(Command::Status { db, json }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            let st = status::read(&mut c, &rs)?;
            if *json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st)
                        .map_err(|e| Error::Failed(format!("encoding JSON: {e}")))?
                );
            } else {
                print!("{}", status::render(&st));
            }
        }
        Some(Command::CleanLog { db }) => {
            let (mut c, rs) = located(f, Side::Master, db, d)?;
            let n = master::clean_log(&mut c, &rs)?;
            eprintln!("clean-log: {} removed from the log", rows(n.max(0) as u64));
        }
    }
    Ok(crate::error::exit::OK)
}
