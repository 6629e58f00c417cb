//! Where the extension lives in a database, and which rserv it is: its functions are called
//! schema-qualified, with the schema name quoted by the server, so `replicate` works whatever
//! the search_path; what `replicate` calls depends on the extension's version ([`Api`]), so
//! master and slave may run different rserv releases during a rolling upgrade.

use crate::error::{DbContext, Error};
use postgres::{GenericClient, Statement};
use std::collections::HashMap;
use std::sync::Mutex;

/// The SQL API a database's rserv extension offers, by its version (`pg_extension.extversion`,
/// not the installed library's: between installing a new library and `ALTER EXTENSION rserv
/// UPDATE`, a database still has the earlier version's functions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Api {
    /// rserv 1.0: `rserv_prepare(int, text, text[], text[])` (it registers the slave itself),
    /// `rserv_apply_begin(int8, text, text)` accepting only change sets named with its own
    /// version, no `rserv_apply_end`; change sets without DDL or SEQUENCE sections. No server
    /// ids by node id, fresh-copy requests, table definitions or switchover.
    V1_0,
    /// rserv 1.1, this replicate's own: everything, change sets of any feature it knows.
    V1_1,
}

/// This replicate's own rserv version.
pub const OWN_VERSION: &str = env!("CARGO_PKG_VERSION");

/// "1.10.2" as (1, 10, 2); None if it is not such a version.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

impl Api {
    /// The API of rserv `version`, or why this replicate cannot drive it.
    pub fn of(version: &str) -> Result<Api, String> {
        let own = parse_version(OWN_VERSION).map(|(a, b, _)| (a, b));
        match parse_version(version).map(|(a, b, _)| (a, b)) {
            Some((1, 0)) => Ok(Api::V1_0),
            Some((1, 1)) => Ok(Api::V1_1),
            Some(v) if own.is_some_and(|own| v > own) => Err(format!(
                "it runs rserv {version}, newer than this replicate (rserv {OWN_VERSION}):                  install the replicate of rserv {version} first (a replicate drives the releases                  up to its own; see the README, Upgrading rserv)"
            )),
            _ => Err(format!(
                "it runs rserv {version}, which this replicate (rserv {OWN_VERSION}) cannot drive:                  update it (ALTER EXTENSION rserv UPDATE) or use the replicate of its release"
            )),
        }
    }
}

pub struct Rserv {
    /// quote_ident() of the extension's schema
    schema: String,
    /// the extension's version in this database (`pg_extension.extversion`)
    pub version: String,
    /// what that version offers
    pub api: Api,
    /// the server's `server_version_num` (e.g. 150020)
    pub server_version: i32,
    /// which side (master, slave) and database, for messages
    side: String,
    db: String,
    /// Statements a cycle runs every time, prepared once on this connection (each unprepared
    /// statement costs a second round trip).
    statements: Mutex<HashMap<String, Statement>>,
    /// The session settings last pinned on this connection (see [`Rserv::pin`]).
    pinned: Mutex<Option<String>>,
}

/// At most this many statements are kept per connection (a cycle uses a handful).
const KEPT_STATEMENTS: usize = 64;

impl Rserv {
    /// Find the extension; `side` and `db` name the database in the error. An extension this
    /// replicate cannot drive (a newer release's) is refused, saying what to install.
    pub fn locate(client: &mut impl GenericClient, side: &str, db: &str) -> Result<Rserv, Error> {
        let row = client
            .query_opt(
                "SELECT pg_catalog.quote_ident(n.nspname::text), e.extversion::text, \
                        pg_catalog.current_setting('server_version_num')::int4 \
                 FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'rserv'",
                &[],
            )
            .ctx(format!("{side}: looking for the rserv extension"))?;
        let Some(r) = row else {
            return Err(Error::Failed(format!(
                "{side}: the rserv extension is not installed in database \"{db}\"; \
                 run CREATE EXTENSION rserv there (or replicate {side}-init {db})"
            )));
        };
        let version: String = r.get(1);
        let api = Api::of(&version)
            .map_err(|why| Error::Failed(format!("{side}: database \"{db}\": {why}")))?;
        Ok(Rserv {
            schema: r.get(0),
            version,
            api,
            server_version: r.get(2),
            side: side.to_string(),
            db: db.to_string(),
            statements: Mutex::default(),
            pinned: Mutex::default(),
        })
    }

    /// `sql` prepared on this connection, once: `client` must be this `Rserv`'s connection
    /// (or a transaction of it).
    pub fn prepared(
        &self,
        client: &mut impl GenericClient,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(s) = self
            .statements
            .lock()
            .ok()
            .and_then(|m| m.get(sql).cloned())
        {
            return Ok(s);
        }
        let statement = client.prepare(sql)?;
        if let Ok(mut m) = self.statements.lock() {
            if m.len() < KEPT_STATEMENTS {
                m.insert(sql.to_string(), statement.clone());
            }
        }
        Ok(statement)
    }

    /// Run the `SET` commands `settings` on this connection unless they were the last ones it
    /// ran: replicate's sessions set nothing else, so they are still in force.
    pub fn pin(
        &self,
        client: &mut impl GenericClient,
        settings: &str,
    ) -> Result<(), postgres::Error> {
        let mut pinned = self.pinned.lock().map_err(|_| ()).ok();
        if pinned
            .as_deref()
            .is_some_and(|p| p.as_deref() == Some(settings))
        {
            return Ok(());
        }
        client.batch_execute(settings)?;
        if let Some(p) = pinned.as_mut() {
            **p = Some(settings.to_string());
        }
        Ok(())
    }

    /// "slave database \"app\" (rserv 1.0.0)": the node, for messages.
    pub fn node(&self) -> String {
        format!(
            "{} database \"{}\" (rserv {})",
            self.side, self.db, self.version
        )
    }

    /// Refuse `what` unless this database's rserv offers it (rserv 1.1 or later).
    pub fn require_1_1(&self, what: &str) -> Result<(), Error> {
        if self.api >= Api::V1_1 {
            return Ok(());
        }
        Err(Error::Failed(format!(
            "{}: {what} needs rserv 1.1 or later there: install rserv {OWN_VERSION} on its \
             server and run ALTER EXTENSION rserv UPDATE in \"{}\" (see the README, Upgrading rserv)",
            self.node(),
            self.db
        )))
    }

    /// Refuse to go on when the extension's version in the database is no longer the one this
    /// connection found (`ALTER EXTENSION rserv UPDATE` ran meanwhile): its calls would be the
    /// earlier version's. `replicate run` connects again after the error.
    pub fn still(&self, version_now: &str) -> Result<(), Error> {
        if version_now == self.version {
            return Ok(());
        }
        Err(Error::Reconnect {
            side: if self.side == "slave" {
                "slave"
            } else {
                "master"
            },
            message: format!(
                "{}: rserv was updated to {version_now} in \"{}\" while replicate was connected: \
                 connect again (replicate run does by itself)",
                self.node(),
                self.db
            ),
        })
    }

    /// `SELECT schema.func(table[, column])`, the table name parsed by the server as a regclass.
    /// `column` None: the function takes only the table.
    pub fn call_on_table(
        &self,
        client: &mut impl GenericClient,
        func: &str,
        table: &str,
        column: Option<Option<&str>>,
    ) -> Result<(), postgres::Error> {
        match column {
            Some(column) => client.execute(
                &format!("SELECT {}($1::text::regclass, $2)", self.func(func)),
                &[&table, &column],
            ),
            None => client.execute(
                &format!("SELECT {}($1::text::regclass)", self.func(func)),
                &[&table],
            ),
        }
        .map(|_| ())
    }

    /// [`Rserv::call_on_table`] for a table name as a user typed it: an unqualified name is
    /// looked up along the database's own search_path, as in psql (replicate's connections
    /// otherwise pin theirs to `pg_catalog, pg_temp`). Nothing else runs under it: the
    /// function is schema-qualified and the name only goes through `regclass` input.
    pub fn call_on_user_table(
        &self,
        client: &mut postgres::Client,
        func: &str,
        table: &str,
        column: Option<Option<&str>>,
    ) -> Result<(), postgres::Error> {
        let mut tx = client.transaction()?;
        tx.batch_execute("SET LOCAL search_path TO DEFAULT")?;
        self.call_on_table(&mut tx, func, table, column)?;
        tx.commit()
    }

    /// `schema.function` for use in a statement.
    pub fn func(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }
}

/// `CREATE EXTENSION IF NOT EXISTS rserv` (MasterInit / SlaveInit: one extension serves both).
pub fn init(client: &mut impl GenericClient, side: &str) -> Result<String, Error> {
    // The extension goes into the first schema of the database's own search_path (usually
    // public), as a plain CREATE EXTENSION would; the connection's pinned one comes back after.
    client
        .batch_execute(
            "RESET search_path; CREATE EXTENSION IF NOT EXISTS rserv; \
             SET search_path = pg_catalog, pg_temp",
        )
        .ctx(format!("{side}: CREATE EXTENSION rserv"))?;
    let row = client
        .query_one(
            "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
            &[],
        )
        .ctx(format!("{side}: reading the rserv version"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_map_to_their_api() {
        assert_eq!(Api::of("1.0.0"), Ok(Api::V1_0));
        assert_eq!(Api::of("1.0.7"), Ok(Api::V1_0));
        assert_eq!(Api::of("1.1.0"), Ok(Api::V1_1));
        assert_eq!(Api::of("1.1.3"), Ok(Api::V1_1));
        let newer = Api::of("1.2.0").unwrap_err();
        assert!(
            newer.contains("newer than this replicate") && newer.contains("1.2.0"),
            "{newer}"
        );
        for v in ["0.9.0", "2", "1.1", "x.y.z", ""] {
            assert!(Api::of(v).is_err(), "{v}");
        }
        assert_eq!(Api::of(OWN_VERSION), Ok(Api::V1_1));
    }
}
