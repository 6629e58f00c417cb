//! Where the extension lives in a database: its functions are called schema-qualified, with
//! the schema name quoted by the server, so `replicate` works whatever the search_path.

use crate::error::{DbContext, Error};
use postgres::GenericClient;

pub struct Rserv {
    /// quote_ident() of the extension's schema
    schema: String,
    /// the extension's version in this database (pg_extension.extversion)
    pub version: String,
    /// the server's `server_version_num` (e.g. 150020)
    pub server_version: i32,
}

/// The oldest rserv extension this replicate can drive: its calls use the SQL API of 1.1.0.
/// An older one (during a rolling upgrade) is driven by its own release's replicate until
/// `ALTER EXTENSION rserv UPDATE` has run on that node.
pub const MIN_EXTENSION: &str = "1.1.0";

/// "1.10.2" as (1, 10, 2); None if it is not such a version.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

impl Rserv {
    /// Find the extension; `side` and `db` name the database in the error. An extension older
    /// than [`MIN_EXTENSION`] is refused, saying how to update it.
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
        let rs = Rserv {
            schema: r.get(0),
            version: r.get(1),
            server_version: r.get(2),
        };
        let too_old = match (parse_version(&rs.version), parse_version(MIN_EXTENSION)) {
            (Some(have), Some(min)) => have < min,
            _ => false,
        };
        if too_old {
            return Err(Error::Failed(format!(
                "{side}: database \"{db}\" has rserv {} but this replicate needs rserv {MIN_EXTENSION} or later: \
                 install it on that server and run ALTER EXTENSION rserv UPDATE in \"{db}\" \
                 (until then, keep replicating with the replicate of rserv {})",
                rs.version, rs.version
            )));
        }
        Ok(rs)
    }

    /// The server's major version (15 for 15.x).
    pub fn server_major(&self) -> i32 {
        self.server_version / 10000
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
