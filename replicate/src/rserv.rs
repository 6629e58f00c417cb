//! Where the extension lives in a database: its functions are called schema-qualified, with
//! the schema name quoted by the server, so `replicate` works whatever the search_path.

use crate::error::{DbContext, Error};
use postgres::GenericClient;

pub struct Rserv {
    /// quote_ident() of the extension's schema
    schema: String,
}

impl Rserv {
    /// Find the extension; `side` and `db` name the database in the error.
    pub fn locate(client: &mut impl GenericClient, side: &str, db: &str) -> Result<Rserv, Error> {
        let row = client
            .query_opt(
                "SELECT pg_catalog.quote_ident(n.nspname::text) FROM pg_catalog.pg_extension e \
                 JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'rserv'",
                &[],
            )
            .ctx(format!("{side}: looking for the rserv extension"))?;
        match row {
            Some(r) => Ok(Rserv { schema: r.get(0) }),
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

    /// `schema.function` for use in a statement.
    pub fn func(&self, name: &str) -> String {
        format!("{}.{name}", self.schema)
    }
}

/// `CREATE EXTENSION IF NOT EXISTS rserv` (MasterInit / SlaveInit: one extension serves both).
pub fn init(client: &mut impl GenericClient, side: &str) -> Result<String, Error> {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS rserv")
        .ctx(format!("{side}: CREATE EXTENSION rserv"))?;
    let row = client
        .query_one(
            "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
            &[],
        )
        .ctx(format!("{side}: reading the rserv version"))?;
    Ok(row.get(0))
}
