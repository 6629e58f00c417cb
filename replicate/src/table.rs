//! A replicated table as its master describes it (`rserv_table_list()`): the slave builds it
//! from this (`--create-tables`) and `check` compares what it names. Below both master and
//! slave, so that neither side depends on the other.

use crate::error::{DbContext, Error};
use crate::rserv::Rserv;
use postgres::Client;

/// A table the master replicates: its name, key (and whether that is the primary key), watched
/// columns (None: all) and its definition as data (the slave builds its own DDL from it).
pub struct ReplicatedTable {
    pub schema: String,
    pub table: String,
    pub key: Vec<String>,
    pub primary_key: bool,
    pub watched: Option<Vec<String>>,
    pub definition: serde_json::Value,
}

/// Every table the master (`client`) replicates (rserv 1.1 or later: 1.0 describes tables as
/// DDL text, which the slave never runs).
pub fn list(client: &mut Client, rs: &Rserv) -> Result<Vec<ReplicatedTable>, Error> {
    rs.require_1_1("describing its replicated tables (--create-tables, check)")?;
    let rows = client
        .query(
            &format!(
                "SELECT schema_name, table_name, key_columns, is_primary_key, watched_columns, \
                        definition FROM {}()",
                rs.func("rserv_table_list")
            ),
            &[],
        )
        .ctx("master: listing replicated tables")?;
    Ok(rows
        .iter()
        .map(|r| ReplicatedTable {
            schema: r.get(0),
            table: r.get(1),
            key: r.get(2),
            primary_key: r.get(3),
            watched: r.get(4),
            definition: r.get(5),
        })
        .collect())
}
