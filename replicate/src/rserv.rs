//! Where the extension lives in a database: its functions are called schema-qualified, with
//! the schema name quoted by the server, so `replicate` works whatever the search_path.

use crate::error::{DbContext, Error};
use postgres::GenericClient;

pub struct Rserv {
    /// quote_ident() of the extension's schema
    schema: String,
    /// the server's `server_version_num` (e.g. 150020)
    pub server_version: i32,
}

impl Rserv {
    /// Find the extension; `side` and `db` name the database in the error.
    pub fn locate(client: &mut impl GenericClient, side: &str, db: &str) -> Result<Rserv, Error> {
        let row = client
            .query_opt(
                "SELECT pg_catalog.quote_ident(n.nspname::text), \
                        pg_catalog.current_setting('server_version_num')::int4 \
                 FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'rserv'",
                &[],
            )
            .ctx(format!("{side}: looking for the rserv extension"))?;
        match row {
            Some(r) => Ok(Rserv {
                schema: r.get(0),
                server_version: r.get(1),
            }),
            None => Err(Error::Failed(format!(
                "{side}: the rserv extension is not installed in database \"{db}\"; \
                 run CREATE EXTENSION rserv there (or replicate {side}-init {db})"
            ))),
        }
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
