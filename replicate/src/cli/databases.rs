//! How a command finds its databases (an argument, or the `dbname` of the side's connection
//! string) and which slave id it uses; connecting and locating the extension.

use super::{Cli, ConnFlags, SEED_SERVER};
use crate::conn::{conninfo_dbname, looks_like_conninfo, ConnArgs, Endpoint};
use crate::cycle::{CycleOptions, Endpoints};
use crate::error::Error;
use crate::master;
use crate::rserv::Rserv;
use tracing::{info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Master,
    Slave,
}

impl Side {
    pub(super) fn name(self) -> &'static str {
        match self {
            Side::Master => "master",
            Side::Slave => "slave",
        }
    }
}

/// A connected, located database: the client, where rserv lives in it, its name.
pub(super) struct Db {
    pub client: postgres::Client,
    pub rs: Rserv,
    pub name: String,
}

impl ConnFlags {
    /// The side's own connection string (`--master` / `--slave`).
    pub(super) fn conninfo(&self, side: Side) -> Option<&str> {
        match side {
            Side::Master => self.master.as_deref(),
            Side::Slave => self.slave.as_deref(),
        }
    }

    /// The database the side's connection string names, if any.
    pub(super) fn named_database(&self, side: Side) -> Result<Option<String>, Error> {
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
    pub(super) fn two_databases(
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
    pub(super) fn table_arguments(
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

    pub(super) fn endpoint(
        &self,
        side: Side,
        db: Option<&str>,
        debug: bool,
    ) -> Result<Endpoint, Error> {
        self.endpoint_as(side, db, debug, true)
    }

    /// A slave other than the one the slave options address (`switchover --other`): `db`
    /// completed by the slave's user and password options, not by its host, port or
    /// connection string (those name the slave taking over).
    pub(super) fn other_slave_endpoint(&self, db: &str, debug: bool) -> Result<Endpoint, Error> {
        self.endpoint_as(Side::Slave, Some(db), debug, false)
    }

    fn endpoint_as(
        &self,
        side: Side,
        db: Option<&str>,
        debug: bool,
        address: bool,
    ) -> Result<Endpoint, Error> {
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
            conninfo: self.conninfo(side).filter(|_| address).map(str::to_string),
            host: host.clone().filter(|_| address),
            port: port.filter(|_| address),
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
        let ep = self.timeouts(side, ep)?;
        if debug {
            info!("{}: {}", side.name(), ep.describe());
        }
        Ok(ep)
    }

    /// `--read-timeout` for both sides, `--lock-timeout` for the slave (its apply).
    pub(super) fn timeouts(&self, side: Side, ep: Endpoint) -> Result<Endpoint, Error> {
        let ep = ep
            .with_read_timeout(self.read_timeout)
            .map_err(Error::Usage)?;
        match side {
            Side::Slave => ep
                .with_lock_timeout(self.lock_timeout)
                .map_err(Error::Usage),
            Side::Master => Ok(ep),
        }
    }

    /// Connect; returns the client and the database's name.
    pub(super) fn connect(
        &self,
        side: Side,
        db: Option<&str>,
        debug: bool,
    ) -> Result<(postgres::Client, String), Error> {
        let ep = self.endpoint(side, db, debug)?;
        Ok((open(side, &ep)?, ep.dbname().to_string()))
    }

    /// Connect and find the extension.
    pub(super) fn located(&self, side: Side, db: Option<&str>, debug: bool) -> Result<Db, Error> {
        located(side, &self.endpoint(side, db, debug)?)
    }
}

/// The slave id of a command that sees only the master: `--server`; else the master's only
/// slave; else the seed's 0 when the master has no slave yet or 0 is one of its slaves; else
/// (several slaves, none of them 0) a usage error naming them.
pub(super) fn master_only_server(
    given: Option<i32>,
    registered: &[i32],
    master: &str,
) -> Result<i32, Error> {
    match (given, registered) {
        (Some(server), _) => Ok(server),
        (None, [only]) => Ok(*only),
        (None, ids) if ids.is_empty() || ids.contains(&SEED_SERVER) => Ok(SEED_SERVER),
        (None, ids) => {
            let ids: Vec<String> = ids.iter().map(i32::to_string).collect();
            Err(Error::Usage(format!(
                "master database {master} has several slaves (servers {}): say which with \
                 --server N",
                ids.join(", ")
            )))
        }
    }
}

/// The two connected sides of a two-database command, as a cycle takes them.
pub(super) fn endpoints<'a>(m: &'a mut Db, s: &'a mut Db) -> Endpoints<'a> {
    Endpoints {
        master: &mut m.client,
        master_rs: &m.rs,
        slave: &mut s.client,
        slave_rs: &s.rs,
    }
}

pub(super) fn open(side: Side, ep: &Endpoint) -> Result<postgres::Client, Error> {
    ep.connect().map_err(|source| Error::Connect {
        side: side.name(),
        source,
    })
}

pub(super) fn located(side: Side, ep: &Endpoint) -> Result<Db, Error> {
    let mut client = open(side, ep)?;
    let name = ep.dbname().to_string();
    let rs = Rserv::locate(&mut client, side.name(), &name)?;
    Ok(Db { client, rs, name })
}

impl Cli {
    pub(super) fn cycle_options(&self) -> CycleOptions {
        CycleOptions {
            server: self.server,
            snapshot: self.snapshot.clone(),
            keep_snapshot: self.debug,
            clean_log: !self.no_clean_log,
            create_tables: self.create_tables,
            finish_tables: false,
            verbose: self.verbose,
            replace_rows: false,
        }
    }

    /// The cycle options of a command that runs cycles of its own (`check`, `switchover`,
    /// `failover`, `rejoin`): no snapshot file, no table creation.
    pub(super) fn plain_cycle_options(&self) -> CycleOptions {
        CycleOptions {
            server: self.server,
            clean_log: !self.no_clean_log,
            verbose: self.verbose,
            ..CycleOptions::default()
        }
    }

    /// The slave id of a command that sees only the master (`prepare`, `master-sync`,
    /// `drop-slave`): see [`master_only_server`].
    pub(super) fn master_only_server(&self, d: &mut Db) -> Result<i32, Error> {
        let registered = match self.server {
            Some(_) => Vec::new(),
            None => master::servers(&mut d.client, &d.rs)?,
        };
        master_only_server(self.server, &registered, &d.name)
    }

    pub(super) fn located(&self, side: Side, db: Option<&str>) -> Result<Db, Error> {
        self.conn.located(side, db, self.debug)
    }

    /// Both sides of a two-database command, resolved (so that a missing database is
    /// reported before anything connects), then connected.
    pub(super) fn pair(
        &self,
        masterdb: Option<&str>,
        slavedb: Option<&str>,
    ) -> Result<(Db, Db), Error> {
        let (m, s) = self.conn.two_databases(masterdb, slavedb)?;
        let master = self.conn.endpoint(Side::Master, m.as_deref(), self.debug)?;
        let slave = self.conn.endpoint(Side::Slave, s.as_deref(), self.debug)?;
        Ok((
            located(Side::Master, &master)?,
            located(Side::Slave, &slave)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

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
        let cli = Cli::try_parse_from(["replicate", "--server", "3", "a", "b"]).unwrap();
        assert_eq!(cli.cycle_options().server, Some(3));
        // the commands that see only the master
        assert_eq!(master_only_server(Some(3), &[1, 2], "m").unwrap(), 3);
        assert_eq!(master_only_server(None, &[], "m").unwrap(), SEED_SERVER);
        assert_eq!(master_only_server(None, &[4], "m").unwrap(), 4);
        assert_eq!(master_only_server(None, &[0, 1, 2], "m").unwrap(), 0);
        match master_only_server(None, &[1, 2], "m") {
            Err(Error::Usage(msg)) => {
                assert!(
                    msg.contains("servers 1, 2") && msg.contains("--server N"),
                    "{msg}"
                )
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
    }
}
