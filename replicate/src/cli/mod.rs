//! Command line: the seed's `Replicate masterdb slavedb` and its companion tools as
//! subcommands, with libpq-style connection options. This file declares the command line and
//! dispatches ([`run`]); [`databases`] says how a command finds its databases and slave id;
//! [`commands`] has one function per command.

mod commands;
mod databases;
mod roles;

use crate::error::Error;
use crate::log::LogFormat;
use clap::{Args, Parser, Subcommand};
use commands::*;
use databases::Side;
use roles::*;
use std::path::PathBuf;

/// `replicate --version`: this build, and the extension versions it talks to (the workspace
/// builds both at one version; a replicate speaks to the extensions of its own minor release
/// and the earlier ones, see `rserv::Api`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ntalks to the rserv extension 1.0.x and ",
    env!("CARGO_PKG_VERSION_MAJOR"),
    ".",
    env!("CARGO_PKG_VERSION_MINOR"),
    ".x (change-set format 1; features ddl, sequence)"
);

/// The seed's server id: the one of the commands that see only the master (`prepare`,
/// `master-sync`, `drop-slave`) when `--server` is not given and the master has no slave yet,
/// or several with this one among them.
pub const SEED_SERVER: i32 = 0;

const EXIT_CODES: &str = "\
Databases: MASTERDB and SLAVEDB are names, key=value connection strings or postgresql:// URLs;
either may be left out when --master or --slave names the database (dbname=...).

Slave ids: without --server, a slave is known on the master by its database's node id (the id
it was given before, else the lowest free one from 1 up). prepare, master-sync and drop-slave
see only the master: without --server they use the master's only slave, else the seed's 0.

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

    /// The slave's id on the master (default: found by the slave database's node id; for
    /// prepare, master-sync and drop-slave: the master's only slave, else 0)
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
    /// Seconds the slave's apply waits for a lock held by another session before it rolls back
    /// and names the holder (0: wait forever; default 10)
    #[arg(long, global = true, value_name = "SECS")]
    pub lock_timeout: Option<f64>,
    /// Seconds without data after which a connection is checked over a new one, and closed when
    /// its server does not answer or its session is gone (0: never; default 10)
    #[arg(long, global = true, value_name = "SECS")]
    pub read_timeout: Option<f64>,
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
    /// Planned switchover: the slave takes over as master and the old master becomes its slave,
    /// at one sync point, with no copy; the master's other slaves (--other) follow the new
    /// master, with no copy either. Writes to the replicated tables on the master are refused
    /// from the start ("switchover in progress"); writers still in flight after --grace seconds
    /// are cancelled. Run it again to finish one that was interrupted; --abort lifts the fence
    /// of one whose slave has not taken over
    Switchover {
        /// Master database (may be left out when --master names it)
        masterdb: Option<String>,
        /// Slave database (may be left out when --slave names it)
        slavedb: Option<String>,
        /// Another slave of the master, re-pointed to the new master (repeat for each): a
        /// database name, key=value connection string or postgresql:// URL, completed by the
        /// slave connection options. Every slave of the master must be given
        #[arg(long = "other", value_name = "SLAVEDB")]
        others: Vec<String>,
        /// Seconds to wait for the master's writers in flight before cancelling them
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
        /// Give up a switchover that has not reached the slave: the master accepts writes again
        #[arg(long)]
        abort: bool,
    },
    /// Unplanned failover (the master is unreachable): promote one of its slaves (of those
    /// given, the most advanced, or --promote), record the sync point it took over at, and
    /// re-point the other slaves given to it without a copy. Prints each slave's position.
    /// Run it again to finish one that was interrupted (with the new master in the list); when
    /// the old master comes back, run replicate rejoin before it takes any write
    Failover {
        /// The failed master's slaves: database names, key=value connection strings or
        /// postgresql:// URLs, each completed by the slave connection options
        #[arg(value_name = "SLAVEDB", required = true)]
        slaves: Vec<String>,
        /// Promote this one (one of the SLAVEDB given, as written) rather than the most advanced
        #[arg(long, value_name = "SLAVEDB")]
        promote: Option<String>,
    },
    /// The old master is back after a failover: fence it, report what it committed after the
    /// new master took over (table, key, both sides' rows), save its version of those rows in
    /// COPY format, have the new master re-send exactly them, and make it a slave of the new
    /// master without a copy. Refused, changing nothing but the fence, when rows would be
    /// discarded, unless --discard-divergent. Run it again to finish one that was interrupted
    Rejoin {
        /// The new master (may be left out when --master names it)
        newmasterdb: Option<String>,
        /// The old master, which becomes its slave (may be left out when --slave names it)
        oldmasterdb: Option<String>,
        /// Rejoin even though the old master holds rows the new master does not: they are
        /// replaced by the new master's (and saved to the file)
        #[arg(long)]
        discard_divergent: bool,
        /// Where to save the old master's differing rows (default:
        /// rserv-rejoin-<old node>-<unix time>.sql in the current directory)
        #[arg(long, value_name = "FILE")]
        divergent_file: Option<PathBuf>,
        /// Seconds to wait for the old master's writers in flight before cancelling them
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
    },
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
        Some(Command::Switchover {
            masterdb,
            slavedb,
            others,
            grace,
            abort,
        }) => switch_over(
            &cli,
            (masterdb.as_deref(), slavedb.as_deref()),
            others,
            *grace,
            *abort,
        ),
        Some(Command::Failover { slaves, promote }) => fail_over(&cli, slaves, promote.as_deref()),
        Some(Command::Rejoin {
            newmasterdb,
            oldmasterdb,
            discard_divergent,
            divergent_file,
            grace,
        }) => rejoin(
            &cli,
            (newmasterdb.as_deref(), oldmasterdb.as_deref()),
            *discard_divergent,
            divergent_file.clone(),
            *grace,
        ),
    }
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
        assert!(
            VERSION.contains("rserv extension 1.0.x and 1.1.x"),
            "{VERSION}"
        );
    }
}
