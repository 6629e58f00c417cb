//! One function per command. Each returns the process's exit code.

use super::databases::{endpoints, Side};
use super::Cli;
use crate::cycle::{self, Outcome, Session};
use crate::daemon::{Config, Daemon, RunConfig, SlaveSpec};
use crate::error::{exit, Error, IoContext};
use crate::rserv;
use crate::snapshot::rows;
use crate::{check, master, slave, status};
use std::io::{BufReader, Write};
use std::path::Path;
use tracing::info;

/// `replicate MASTERDB SLAVEDB`: one cycle (the seed's `Replicate`).
pub(super) fn one_cycle(cli: &Cli) -> Result<i32, Error> {
    let (mut m, mut s) = cli.pair(cli.masterdb.as_deref(), cli.slavedb.as_deref())?;
    let mut ep = endpoints(&mut m, &mut s);
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
pub(super) fn init(cli: &Cli, side: Side, db: Option<&str>) -> Result<i32, Error> {
    let (mut client, name) = cli.conn.connect(side, db, cli.debug)?;
    let version = rserv::init(&mut client, side.name())?;
    println!("rserv {version} ready in {} database {name}", side.name());
    Ok(exit::OK)
}

/// `master-add-table` / `slave-add-table` (MasterAddTable, SlaveAddTable).
pub(super) fn add_table(cli: &Cli, side: Side, args: &[String]) -> Result<i32, Error> {
    let (db, table, column) = cli.conn.table_arguments(side, args)?;
    let mut d = cli.located(side, db.as_deref())?;
    match side {
        Side::Master => master::add_table(&mut d.client, &d.rs, &table, column.as_deref())?,
        Side::Slave => slave::add_table(&mut d.client, &d.rs, &table, column.as_deref())?,
    }
    Ok(exit::OK)
}

/// `master-remove-table` / `slave-remove-table`.
pub(super) fn remove_table(cli: &Cli, side: Side, args: &[String]) -> Result<i32, Error> {
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
pub(super) fn prepare(cli: &Cli, db: Option<&str>, output: Option<&Path>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Master, db)?;
    let target = master::Target::server(cli.master_only_server(&mut d)?);
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
pub(super) fn apply(cli: &Cli, db: Option<&str>, input: Option<&Path>) -> Result<i32, Error> {
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
pub(super) fn sync_id(cli: &Cli, db: Option<&str>) -> Result<i32, Error> {
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
pub(super) fn master_sync(cli: &Cli, args: &[String]) -> Result<i32, Error> {
    let (db, syncid) = match args {
        [syncid] => (None, syncid),
        [db, syncid] => (Some(db.as_str()), syncid),
        _ => return Err(Error::Usage("give [DB] SYNCID".into())),
    };
    let syncid: i64 = syncid
        .parse()
        .map_err(|_| Error::Usage(format!("SYNCID must be a number, not {syncid:?}")))?;
    let mut d = cli.located(Side::Master, db)?;
    let server = cli.master_only_server(&mut d)?;
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
pub(super) fn drop_slave(cli: &Cli, db: Option<&str>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Master, db)?;
    let server = cli.master_only_server(&mut d)?;
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
pub(super) fn clean_log(cli: &Cli, db: Option<&str>) -> Result<i32, Error> {
    let mut d = cli.located(Side::Master, db)?;
    let n = master::clean_log(&mut d.client, &d.rs)?;
    info!("clean-log: {} removed from the log", rows(n.max(0) as u64));
    Ok(exit::OK)
}

/// `run`: the daemon, for the slaves of a configuration file or the one of the command line.
pub(super) fn follow(
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
                    lock_timeout: f.lock_timeout.or(cfg.run.lock_timeout),
                    read_timeout: f.read_timeout.or(cfg.run.read_timeout),
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
pub(super) fn compare(
    cli: &Cli,
    masterdb: Option<&str>,
    slavedb: Option<&str>,
    repair: bool,
    json: bool,
) -> Result<i32, Error> {
    let (mut m, mut s) = cli.pair(masterdb, slavedb)?;
    let mut ep = endpoints(&mut m, &mut s);
    let opts = cli.plain_cycle_options();
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
pub(super) fn show_status(cli: &Cli, db: Option<&str>, json: bool) -> Result<i32, Error> {
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
