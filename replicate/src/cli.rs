//! Command line: the seed's `Replicate masterdb slavedb` and its companion tools as
//! subcommands, with libpq-style connection options. [`run`] dispatches to one function per
//! command; the flags shared by every command, and how a command finds its databases, are in
//! [`ConnFlags`].

use crate::conn::{conninfo_dbname, looks_like_conninfo, ConnArgs, Endpoint};
use crate::cycle::{self, CycleOptions, Endpoints, Outcome, Session};
use crate::daemon::{Config, Daemon, RunConfig, SlaveSpec};
use crate::error::{exit, Error, IoContext};
use crate::log::LogFormat;
use crate::rserv::{self, Rserv};
use crate::snapshot::rows;
use crate::{check, master, slave, status};
use clap::{Args, Parser, Subcommand};
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// `replicate --version`: this build, and the extension versions it talks to (the workspace
/// builds both at one version; a replicate speaks to the extensions of its own minor release).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ntalks to the rserv extension ",
    env!("CARGO_PKG_VERSION_MAJOR"),
    ".",
    env!("CARGO_PKG_VERSION_MINOR"),
    ".x (change-set format 1)"
);

/// The server id of the commands that see only the master (`prepare`, `master-sync`,
/// `drop-slave`) when `--server` is not given: the seed's.
pub const SEED_SERVER: i32 = 0;

const EXIT_CODES: &str = "\
Databases: MASTERDB and SLAVEDB are names, key=value connection strings or postgresql:// URLs;
either may be left out when --master or --slave names the database (dbname=...).

Slave ids: without --server, a slave is known on the master by its database's node id (the id
it was given before, else the lowest free one from 1 up); prepare, master-sync and drop-slave
see only the master and use --server (default 0, the seed's).

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
    version = VERSION,
    after_help = EXIT_CODES,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnFlags,

    /// The slave's id on the master (default: found by the slave database's node id; 0 for
    /// prepare, master-sync and drop-slave)
    #[arg(long, global = true, value_name = "N")]
    pub server: Option<i32>,

    /// Print each step of the cycle (the seed's progress lines)
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

    /// Log lines as text (plain; with time and level for run) or as JSON objects
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Master database (name, key=value connection string, or postgresql:// URL)
    pub masterdb: Option<String>,

    /// Slave database (name, key=value connection string, or postgresql:// URL)
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
    /// Master host or socket directory (beats --host)
    #[arg(long, global = true)]
    pub masterhost: Option<String>,
    /// Master port (beats --port)
    #[arg(long, global = true)]
    pub masterport: Option<u16>,
    /// Master user name (beats --user)
    #[arg(long, global = true)]
    pub masteruser: Option<String>,
    /// Master password (visible in ps output)
    #[arg(long, global = true)]
    pub masterpassword: Option<String>,
    /// Slave connection string (key=value or postgresql:// URL)
    #[arg(long, global = true, value_name = "CONNINFO")]
    pub slave: Option<String>,
    /// Slave host or socket directory (beats --host)
    #[arg(long, global = true)]
    pub slavehost: Option<String>,
    /// Slave port (beats --port)
    #[arg(long, global = true)]
    pub slaveport: Option<u16>,
    /// Slave user name (beats --user)
    #[arg(long, global = true)]
    pub slaveuser: Option<String>,
    /// Slave password (visible in ps output)
    #[arg(long, global = true)]
    pub slavepassword: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Install rserv in the master database (MasterInit)
    MasterInit {
        /// Master database (may be left out when --master names it)
        db: Option<String>,
    },
    /// Replicate TABLE from the master (MasterAddTable); COLUMN: its key, or a column to watch
    #[command(override_usage = "replicate master-add-table [OPTIONS] [DB] TABLE [COLUMN]")]
    MasterAddTable {
        /// [DB] TABLE [COLUMN]: DB may be left out when --master names the database; with
        /// two arguments they are TABLE COLUMN if --master names a database other than the
        /// first, else DB TABLE
        #[arg(value_name = "ARGS", num_args = 1..=3, required = true)]
        args: Vec<String>,
    },
    /// Stop replicating TABLE from the master
    #[command(override_usage = "replicate master-remove-table [OPTIONS] [DB] TABLE")]
    MasterRemoveTable {
        /// [DB] TABLE: DB may be left out when --master names the database
        #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Install rserv in the slave database (SlaveInit)
    SlaveInit {
        /// Slave database (may be left out when --slave names it)
        db: Option<String>,
    },
    /// Receive TABLE on the slave (SlaveAddTable)
    #[command(override_usage = "replicate slave-add-table [OPTIONS] [DB] TABLE [COLUMN]")]
    SlaveAddTable {
        /// [DB] TABLE [COLUMN]: DB may be left out when --slave names the database; with two
        /// arguments they are TABLE COLUMN if --slave names a database other than the first,
        /// else DB TABLE
        #[arg(value_name = "ARGS", num_args = 1..=3, required = true)]
        args: Vec<String>,
    },
    /// Stop receiving TABLE on the slave
    #[command(override_usage = "replicate slave-remove-table [OPTIONS] [DB] TABLE")]
    SlaveRemoveTable {
        /// [DB] TABLE: DB may be left out when --slave names the database
        #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Write the next change set for --server to stdout or a file (PrepareSnapshot)
    Prepare {
        /// Master database (may be left out when --master names it)
        db: Option<String>,
        /// Write the change set to FILE instead of stdout
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Apply a change set from stdin or a file to the slave (ApplySnapshot)
    Apply {
        /// Slave database (may be left out when --slave names it)
        db: Option<String>,
        /// Read the change set from FILE instead of stdin
        #[arg(long, short, value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Print the last change set applied on the slave (GetSyncID)
    SyncId {
        /// Slave database (may be left out when --slave names it)
        db: Option<String>,
    },
    /// Confirm on the master that --server applied SYNCID (MasterSync)
    #[command(override_usage = "replicate master-sync [OPTIONS] [DB] SYNCID")]
    MasterSync {
        /// [DB] SYNCID: DB may be left out when --master names the database
        #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
        args: Vec<String>,
    },
    /// Remove log rows no registered slave still needs (CleanLog)
    CleanLog {
        /// Master database (may be left out when --master names it)
        db: Option<String>,
    },
    /// Forget slave --server on the master: log clean-up stops waiting for it
    DropSlave {
        /// Master database (may be left out when --master names it)
        db: Option<String>,
    },
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
        /// Master database (may be left out when --master names it)
        masterdb: Option<String>,
        /// Slave database (may be left out when --slave names it)
        slavedb: Option<String>,
    },
    /// Compare every replicated table on master and slave at one consistent point; with
    /// --repair, re-send only the rows that differ. Exit status: 0 equal (or repaired), 5 different
    Check {
        /// Master database (may be left out when --master names it)
        masterdb: Option<String>,
        /// Slave database (may be left out when --slave names it)
        slavedb: Option<String>,
        /// Fix the differing rows (one slave transaction, through the normal change-set path)
        #[arg(long)]
        repair: bool,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show every slave's lag and pending changes, from the master
    Status {
        /// Master database (may be left out when --master names it)
        db: Option<String>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A connected, located database: the client, where rserv lives in it, its name.
struct Db {
    client: postgres::Client,
    rs: Rserv,
    name: String,
}

impl ConnFlags {
    /// The side's own connection string (`--master` / `--slave`).
    fn conninfo(&self, side: Side) -> Option<&str> {
        match side {
            Side::Master => self.master.as_deref(),
            Side::Slave => self.slave.as_deref(),
        }
    }

    /// The database the side's connection string names, if any.
    fn named_database(&self, side: Side) -> Result<Option<String>, Error> {
        match self.conninfo(side) {
            Some(ci) => conninfo_dbname(ci).map_err(|source| Error::Connect {
                side: side.name(),
                source,
            }),
            None => Ok(None),
        }
    }

    /// The databases of a command that takes MASTERDB and SLAVEDB, both optional: with one
    /// argument, it is the database of the side whose connection string names none.
    fn two_databases(
        &self,
        first: Option<&str>,
        second: Option<&str>,
    ) -> Result<(Option<String>, Option<String>), Error> {
        match (first, second) {
            (Some(m), Some(s)) => Ok((Some(m.into()), Some(s.into()))),
            (None, _) => Ok((None, None)),
            (Some(one), None) => {
                let named = (
                    self.named_database(Side::Master)?.is_some(),
                    self.named_database(Side::Slave)?.is_some(),
                );
                match named {
                    (true, false) => Ok((None, Some(one.into()))),
                    (false, true) => Ok((Some(one.into()), None)),
                    _ => Err(Error::Usage(format!(
                        "one database argument ({one}): give both MASTERDB and SLAVEDB, or \
                         name the databases in --master and --slave (dbname=...)"
                    ))),
                }
            }
        }
    }

    /// `[DB] TABLE [COLUMN]` (see the subcommands' help).
    fn table_arguments(
        &self,
        side: Side,
        args: &[String],
    ) -> Result<(Option<String>, String, Option<String>), Error> {
        match args {
            [table] => Ok((None, table.clone(), None)),
            [first, second] => {
                let named = self.named_database(side)?;
                if named.is_some_and(|db| db != *first) && !looks_like_conninfo(first) {
                    Ok((None, first.clone(), Some(second.clone())))
                } else {
                    Ok((Some(first.clone()), second.clone(), None))
                }
            }
            [db, table, column] => Ok((Some(db.clone()), table.clone(), Some(column.clone()))),
            _ => Err(Error::Usage("give [DB] TABLE [COLUMN]".into())),
        }
    }

    fn endpoint(&self, side: Side, db: Option<&str>, debug: bool) -> Result<Endpoint, Error> {
        let (host, port, user, password, flag) = match side {
            Side::Master => (
                &self.masterhost,
                self.masterport,
                &self.masteruser,
                &self.masterpassword,
                "--masterpassword",
            ),
            Side::Slave => (
                &self.slavehost,
                self.slaveport,
                &self.slaveuser,
                &self.slavepassword,
                "--slavepassword",
            ),
        };
        if db.is_none() && self.named_database(side)?.is_none() {
            let (name, upper) = (side.name(), side.name().to_uppercase());
            return Err(Error::Usage(format!(
                "no {name} database: give {upper}DB, or name it in the connection string \
                 (--{name} \"dbname=... host=...\")"
            )));
        }
        for (given, name) in [(password, flag), (&self.password, "--password")] {
            if given.is_some() {
                warn!(
                    "{name} is visible to other users in ps output; \
                     use PGPASSWORD, ~/.pgpass or --password-file instead"
                );
            }
        }
        let specific = ConnArgs {
            conninfo: self.conninfo(side).map(str::to_string),
            host: host.clone(),
            port,
            user: user.clone(),
            password: password.clone(),
            dbname: db.map(str::to_string),
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
            info!("{}: {}", side.name(), ep.describe());
        }
        Ok(ep)
    }

    /// Connect; returns the client and the database's name.
    fn connect(
        &self,
        side: Side,
        db: Option<&str>,
        debug: bool,
    ) -> Result<(postgres::Client, String), Error> {
        let ep = self.endpoint(side, db, debug)?;
        Ok((open(side, &ep)?, ep.dbname().to_string()))
    }

    /// Connect and find the extension.
    fn located(&self, side: Side, db: Option<&str>, debug: bool) -> Result<Db, Error> {
        located(side, &self.endpoint(side, db, debug)?)
    }
}

fn open(side: Side, ep: &Endpoint) -> Result<postgres::Client, Error> {
    ep.connect().map_err(|source| Error::Connect {
        side: side.name(),
        source,
    })
}

fn located(side: Side, ep: &Endpoint) -> Result<Db, Error> {
    let mut client = open(side, ep)?;
    let name = ep.dbname().to_string();
    let rs = Rserv::locate(&mut client, side.name(), &name)?;
    Ok(Db { client, rs, name })
}

impl Cli {
    fn cycle_options(&self) -> CycleOptions {
        CycleOptions {
            server: self.server,
            snapshot: self.snapshot.clone(),
            keep_snapshot: self.debug,
            clean_log: !self.no_clean_log,
            create_tables: self.create_tables,
            verbose: self.verbose,
        }
    }

    /// The server id of a command that sees only the master.
    fn master_only_server(&self) -> i32 {
        self.server.unwrap_or(SEED_SERVER)
    }

    fn located(&self, side: Side, db: Option<&str>) -> Result<Db, Error> {
        self.conn.located(side, db, self.debug)
    }

    /// Both sides of a two-database command, resolved (so that a missing database is
    /// reported before anything connects), then connected.
    fn pair(&self, masterdb: Option<&str>, slavedb: Option<&str>) -> Result<(Db, Db), Error> {
        let (m, s) = self.conn.two_databases(masterdb, slavedb)?;
        let master = self.conn.endpoint(Side::Master, m.as_deref(), self.debug)?;
        let slave = self.conn.endpoint(Side::Slave, s.as_deref(), self.debug)?;
        Ok((
            located(Side::Master, &master)?,
            located(Side::Slave, &slave)?,
        ))
    }
}

/// Which log style a command line wants: structured lines for the daemon, the seed's plain
/// lines for everything else.
pub fn log_style(cli: &Cli) -> crate::log::Style {
    match cli.command {
        Some(Command::Run { .. }) => crate::log::Style::Full,
        _ => crate::log::Style::Plain,
    }
}

/// Run the command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32, Error> {
    match &cli.command {
        None => one_cycle(&cli),
        Some(Command::MasterInit { db }) => init(&cli, Side::Master, db.as_deref()),
        Some(Command::SlaveInit { db }) => init(&cli, Side::Slave, db.as_deref()),
        Some(Command::MasterAddTable { args }) => add_table(&cli, Side::Master, args),
        Some(Command::SlaveAddTable { args }) => add_table(&cli, Side::Slave, args),
        Some(Command::MasterRemoveTable { args }) => remove_table(&cli, Side::Master, args),
        Some(Command::SlaveRemoveTable { args }) => remove_table(&cli, Side::Slave, args),
        Some(Command::Prepare { db, output }) => prepare(&cli, db.as_deref(), output.as_deref()),
        Some(Command::Apply { db, input }) => apply(&cli, db.as_deref(), input.as_deref()),
        Some(Command::SyncId { db }) => sync_id(&cli, db.as_deref()),
        Some(Command::MasterSync { args }) => master_sync(&cli, args),
        Some(Command::CleanLog { db }) => clean_log(&cli, db.as_deref()),
        Some(Command::DropSlave { db }) => drop_slave(&cli, db.as_deref()),
        Some(Command::Run {
            config,
            interval,
            metrics_addr,
            masterdb,
            slavedb,
        }) => follow(
            &cli,
            config.as_deref(),
            *interval,
            metrics_addr.as_deref(),
            (masterdb.as_deref(), slavedb.as_deref()),
        ),
        Some(Command::Check {
            masterdb,
            slavedb,
            repair,
            json,
        }) => compare(
            &cli,
            masterdb.as_deref(),
            slavedb.as_deref(),
            *repair,
            *json,
        ),
        Some(Command::Status { db, json }) => show_status(&cli, db.as_deref(), *json),
    }
}

/// `replicate MASTERDB SLAVEDB`: one cycle (the seed's `Replicate`).
fn one_cycle(cli: &Cli) -> Result<i32, Error> {
    let (mut m, mut s) = cli.pair(cli.masterdb.as_deref(), cli.slavedb.as_deref())?;
    let mut ep = Endpoints {
        master: &mut m.client,
        master_rs: &m.rs,
        slave: &mut s.client,
        slave_rs: &s.rs,
    };
    match cycle::run(&mut ep, &cli.cycle_options(), &mut Session::default(), None)? {
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
    Ok(exit::OK)
}

/// `master-init` / `slave-init`: CREATE EXTENSION rserv.
fn init(cli: &Cli, side: Side, db: Option<&str>) -> Result<i32, Error> {
    let (mut client, name) = cli.conn.connect(side, db, cli.debug)?;
    let version = rserv::init(&mut client, side.name())?;
    println!("rserv {version} ready in {} database {name}", side.name());
    Ok(exit::OK)
}

/// `master-add-table` / `slave-add-table` (MasterAddTable, SlaveAddTable).
fn add_table(cli: &Cli, side: Side, args: &[String]) -> Result<i32, Error> {
    let (db, table, column) = cli.conn.table_arguments(side, args)?;
    let mut d = cli.located(side, db.as_deref())?;
    match side {
        Side::Master => master::add_table(&mut d.client, &d.rs, &table, column.as_deref())?,
        Side::Slave => slave::add_table(&mut d.client, &d.rs, &table, column.as_deref())?,
    }
    Ok(exit::OK)
}

/// `master-remove-table` / `slave-remove-table`.
fn remove_table(cli: &Cli, side: Side, args: &[String]) -> Result<i32, Error> {
    let (db, table) = match args {
        [table] => (None, table),
        [db, table] => (Some(db.as_str()), table),
        _ => return Err(Error::Usage("give [DB] TABLE".into())),
    };
    let mut d = cli.located(side, db)?;
    match side {
        Side::Master => master::remove_table(&mut d.client, &d.rs, table)?,
        Side::Slave => slave::remove_table(&mut d.client, &d.rs, table)?,
    }
    Ok(exit::OK)
}

/// `prepare` (PrepareSnapshot): the next change set for `--server`, to stdout or a file.
fn prepare(cli: &Cli, db: Option<&str>, output: Option<&Path>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Master, db)?;
    let target = master::Target::server(cli.master_only_server());
    master::register(&mut d.client, &d.rs, &target)?;
    let prepared = match output {
        Some(path) => {
            let file =
                std::fs::File::create(path).io_ctx(format!("creating {}", path.display()))?;
            let mut w = std::io::BufWriter::new(file);
            let p = master::prepare(&mut d.client, &d.rs, &target, &mut w, None)?;
            w.flush().io_ctx(format!("writing {}", path.display()))?;
            p
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let p = master::prepare(&mut d.client, &d.rs, &target, &mut w, None)?;
            w.flush().io_ctx("writing to stdout")?;
            p
        }
    };
    match prepared {
        Some((id, stats)) => info!(
            "change set {id} prepared: {} sections, {}",
            stats.sections,
            rows(stats.rows)
        ),
        None => info!("nothing to replicate: master and slave are in sync"),
    }
    Ok(exit::OK)
}

/// `apply` (ApplySnapshot): a change set from stdin or a file.
fn apply(cli: &Cli, db: Option<&str>, input: Option<&Path>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Slave, db)?;
    let applied = match input {
        Some(path) => {
            let file = std::fs::File::open(path).io_ctx(format!("opening {}", path.display()))?;
            slave::apply(&mut d.client, &d.rs, BufReader::new(file))?
        }
        None => slave::apply(&mut d.client, &d.rs, std::io::stdin().lock())?,
    };
    match applied {
        Outcome::Applied {
            syncid,
            stats,
            changed,
        } => info!(
            "change set {syncid} applied: {} received, {} written or removed",
            rows(stats.rows),
            rows(changed.max(0) as u64)
        ),
        Outcome::Skipped { syncid } => {
            info!("change set {syncid} skipped: the slave already has it or a newer one")
        }
        Outcome::InSync => {}
    }
    Ok(exit::OK)
}

/// `sync-id` (GetSyncID): the slave's last change set.
fn sync_id(cli: &Cli, db: Option<&str>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Slave, db)?;
    match slave::sync_id(&mut d.client, &d.rs)? {
        Some(id) => println!("{id}"),
        None => {
            return Err(Error::Failed(format!(
                "no change set has been applied to slave database {} yet",
                d.name
            )))
        }
    }
    Ok(exit::OK)
}

/// `master-sync` (MasterSync): `--server` applied SYNCID.
fn master_sync(cli: &Cli, args: &[String]) -> Result<i32, Error> {
    let (db, syncid) = match args {
        [syncid] => (None, syncid),
        [db, syncid] => (Some(db.as_str()), syncid),
        _ => return Err(Error::Usage("give [DB] SYNCID".into())),
    };
    let syncid: i64 = syncid
        .parse()
        .map_err(|_| Error::Usage(format!("SYNCID must be a number, not {syncid:?}")))?;
    let server = cli.master_only_server();
    let mut d = cli.located(Side::Master, db)?;
    if !master::confirm(&mut d.client, &d.rs, server, syncid)? {
        return Err(Error::Failed(format!(
            "change set {syncid} is not a prepared, unconfirmed change set of server {server} \
             (already confirmed or superseded)"
        )));
    }
    info!("change set {syncid} confirmed for server {server}");
    Ok(exit::OK)
}

/// `drop-slave`: forget `--server`.
fn drop_slave(cli: &Cli, db: Option<&str>) -> Result<i32, Error> {
    let server = cli.master_only_server();
    let mut d = cli.located(Side::Master, db)?;
    if !master::drop_server(&mut d.client, &d.rs, server)? {
        return Err(Error::Failed(format!(
            "server {server} is not a slave of master database {}",
            d.name
        )));
    }
    info!("server {server} dropped: the log no longer waits for it");
    Ok(exit::OK)
}

/// `clean-log` (CleanLog).
fn clean_log(cli: &Cli, db: Option<&str>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Master, db)?;
    let n = master::clean_log(&mut d.client, &d.rs)?;
    info!("clean-log: {} removed from the log", rows(n.max(0) as u64));
    Ok(exit::OK)
}

/// `run`: the daemon, for the slaves of a configuration file or the one of the command line.
fn follow(
    cli: &Cli,
    config: Option<&Path>,
    interval: Option<f64>,
    metrics_addr: Option<&str>,
    databases: (Option<&str>, Option<&str>),
) -> Result<i32, Error> {
    let f = &cli.conn;
    let daemon = match (config, databases) {
        (Some(path), (None, None)) => {
            let cfg = Config::load(path)?;
            // command-line values win over the file's [run] section
            let cfg = Config {
                run: RunConfig {
                    interval: interval.or(cfg.run.interval),
                    metrics_addr: metrics_addr
                        .map(str::to_string)
                        .or(cfg.run.metrics_addr.clone()),
                    ..cfg.run.clone()
                },
                ..cfg
            };
            Daemon::from_config(&cfg, f.password_file.as_deref())?
        }
        (Some(_), _) => {
            return Err(Error::Usage(
                "give either --config FILE or MASTERDB SLAVEDB to replicate run, not both".into(),
            ))
        }
        (None, (masterdb, slavedb)) => {
            let (mdb, sdb) = f.two_databases(masterdb, slavedb)?;
            let master = f.endpoint(Side::Master, mdb.as_deref(), cli.debug)?;
            let slave = f.endpoint(Side::Slave, sdb.as_deref(), cli.debug)?;
            Daemon::new(
                master,
                vec![SlaveSpec {
                    name: slave.dbname().to_string(),
                    server: cli.server,
                    create_tables: cli.create_tables,
                    endpoint: slave,
                }],
                interval.unwrap_or(1.0),
                !cli.no_clean_log,
                metrics_addr.map(str::to_string),
            )?
        }
    };
    daemon.run()?;
    Ok(exit::OK)
}

/// `check`: compare (and with `repair`, fix) master and slave at one snapshot.
fn compare(
    cli: &Cli,
    masterdb: Option<&str>,
    slavedb: Option<&str>,
    repair: bool,
    json: bool,
) -> Result<i32, Error> {
    let (mut m, mut s) = cli.pair(masterdb, slavedb)?;
    let mut ep = Endpoints {
        master: &mut m.client,
        master_rs: &m.rs,
        slave: &mut s.client,
        slave_rs: &s.rs,
    };
    let opts = CycleOptions {
        server: cli.server,
        clean_log: !cli.no_clean_log,
        verbose: cli.verbose,
        ..CycleOptions::default()
    };
    let render = |report: &check::Report| -> Result<String, Error> {
        if json {
            Ok(to_json(report)? + "\n")
        } else {
            Ok(check::render(report))
        }
    };
    let mut report = check::check(&mut ep, &opts, repair)?;
    let mut out = render(&report)?;
    if repair && report.repaired > 0 {
        // show that the repair worked: compare again
        let repaired = report.repaired;
        report = check::check(&mut ep, &opts, false)?;
        report.repaired = repaired;
        out = if json {
            render(&report)?
        } else {
            format!("{out}after repair:\n{}", render(&report)?)
        };
    }
    print!("{out}");
    Ok(if report.equal() {
        exit::OK
    } else {
        exit::DIFFERENT
    })
}

/// `status`: every slave's lag, from the master.
fn show_status(cli: &Cli, db: Option<&str>, json: bool) -> Result<i32, Error> {
    let mut d = cli.located(Side::Master, db)?;
    let st = status::read(&mut d.client, &d.rs)?;
    if json {
        println!("{}", to_json(&st)?);
    } else {
        print!("{}", status::render(&st));
    }
    Ok(exit::OK)
}

fn to_json(value: &impl serde::Serialize) -> Result<String, Error> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Failed(format!("encoding JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_option_of_every_command_has_a_description() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help()
                        .is_some_and(|h| !h.to_string().trim().is_empty()),
                    "{path}: {id} has no description"
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(
                    sub.get_about().is_some(),
                    "{path} {} has no description",
                    sub.get_name()
                );
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        check(&cmd, "replicate");
    }

    #[test]
    fn the_version_names_the_extension_versions() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION.contains("rserv extension 1.1.x"), "{VERSION}");
    }

    fn flags(args: &[&str]) -> ConnFlags {
        let mut all = vec!["replicate"];
        all.extend(args);
        all.push("sync-id");
        Cli::try_parse_from(all).expect("parses").conn
    }

    #[test]
    fn database_arguments_may_be_left_out_when_the_conninfo_names_one() {
        let both = flags(&["--master", "host=m dbname=a", "--slave", "postgresql://s/b"]);
        assert_eq!(both.two_databases(None, None).unwrap(), (None, None));
        // one argument: the side whose connection string names no database
        let master_named = flags(&["--master", "dbname=a"]);
        assert_eq!(
            master_named.two_databases(Some("x"), None).unwrap(),
            (None, Some("x".into()))
        );
        let slave_named = flags(&["--slave", "dbname=b"]);
        assert_eq!(
            slave_named.two_databases(Some("x"), None).unwrap(),
            (Some("x".into()), None)
        );
        assert!(matches!(
            both.two_databases(Some("x"), None),
            Err(Error::Usage(_))
        ));
        let none = flags(&[]);
        assert!(matches!(
            none.two_databases(Some("x"), None),
            Err(Error::Usage(_))
        ));
        // neither a database argument nor a dbname: a clear error, before connecting
        match none.endpoint(Side::Slave, None, false) {
            Err(Error::Usage(m)) => assert!(
                m.contains("no slave database") && m.contains("SLAVEDB") && m.contains("--slave"),
                "{m}"
            ),
            other => panic!("expected a usage error, got {other:?}"),
        }
        assert!(matches!(
            flags(&["--master", "host=m"]).endpoint(Side::Master, None, false),
            Err(Error::Usage(_))
        ));
    }

    #[test]
    fn table_arguments_follow_the_documented_rule() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let named = flags(&["--master", "dbname=app"]);
        let unnamed = flags(&[]);
        let m = Side::Master;
        let t = |db: Option<&str>, table: &str, col: Option<&str>| {
            (
                db.map(String::from),
                table.to_string(),
                col.map(String::from),
            )
        };
        assert_eq!(
            named.table_arguments(m, &s(&["t"])).unwrap(),
            t(None, "t", None)
        );
        assert_eq!(
            named.table_arguments(m, &s(&["t", "c"])).unwrap(),
            t(None, "t", Some("c"))
        );
        // the database the connection string names, given again: the seed's DB TABLE
        assert_eq!(
            named.table_arguments(m, &s(&["app", "t"])).unwrap(),
            t(Some("app"), "t", None)
        );
        assert_eq!(
            unnamed.table_arguments(m, &s(&["db", "t"])).unwrap(),
            t(Some("db"), "t", None)
        );
        assert_eq!(
            named.table_arguments(m, &s(&["db", "t", "c"])).unwrap(),
            t(Some("db"), "t", Some("c"))
        );
        // the slave's connection string decides for the slave's commands
        assert_eq!(
            named
                .table_arguments(Side::Slave, &s(&["db", "t"]))
                .unwrap(),
            t(Some("db"), "t", None)
        );
    }

    #[test]
    fn server_defaults() {
        let cli = Cli::try_parse_from(["replicate", "a", "b"]).unwrap();
        assert_eq!(cli.cycle_options().server, None, "found by node id");
        assert_eq!(cli.master_only_server(), SEED_SERVER);
        let cli = Cli::try_parse_from(["replicate", "--server", "3", "a", "b"]).unwrap();
        assert_eq!(cli.cycle_options().server, Some(3));
        assert_eq!(cli.master_only_server(), 3);
    }
}
