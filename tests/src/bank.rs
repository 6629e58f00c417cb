//! The money-transfer workload of the switchover and failover tests: accounts whose total never
//! changes, and an insert-only list of transfers, each one transaction.

use crate::pair::DB;
use crate::Cluster;

/// Accounts, each starting with 1000.
pub const ACCOUNTS: i64 = 20;

/// The two tables and their DDL (run on the master; slaves get them from `--create-tables` or
/// the same DDL).
pub const TABLES: [(&str, &str); 2] = [
    (
        "account",
        "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL)",
    ),
    (
        "transfer",
        "CREATE TABLE transfer (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount int NOT NULL)",
    ),
];

/// The accounts' rows (run once, on the master).
pub fn accounts_sql() -> String {
    format!("INSERT INTO account SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g")
}

/// Create both tables with their accounts on `c` and replicate them from there.
pub fn master(c: &Cluster) {
    for (name, ddl) in TABLES {
        c.execute(DB, ddl);
        c.execute(DB, &format!("SELECT rserv_add_table('{name}')"));
    }
    c.execute(DB, &accounts_sql());
}

/// One transfer on `c`; Ok(transfer id) when it committed.
pub fn transfer(c: &mut postgres::Client, n: u64) -> Result<i64, postgres::Error> {
    // the lower id first, so that two transfers never wait for each other's accounts
    let (x, y) = (
        (n % ACCOUNTS as u64) as i32 + 1,
        ((n * 7 + 3) % ACCOUNTS as u64) as i32 + 1,
    );
    let (a, b) = if n.is_multiple_of(2) { (x, y) } else { (y, x) };
    let (first, second) = (a.min(b), a.max(b));
    let delta = |id: i32| if id == a { -1i64 } else { 1 };
    let amount = (n % 13) as i32 + 1;
    let mut tx = c.transaction()?;
    for id in [first, second] {
        if a != b {
            tx.execute(
                "UPDATE account SET balance = balance + $2 WHERE id = $1",
                &[&id, &(delta(id) * amount as i64)],
            )?;
        }
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO transfer (src, dst, amount) VALUES ($1, $2, $3) RETURNING id",
            &[&a, &b, &amount],
        )?
        .get(0);
    tx.commit()?;
    Ok(id)
}

/// The sum of every balance on `c` (the invariant: ACCOUNTS * 1000).
pub fn total(c: &Cluster) -> String {
    c.query_strings(DB, "SELECT sum(balance)::text FROM account")[0][0]
        .clone()
        .unwrap_or_default()
}

/// A write to a replicated table on `c`: Ok when it committed, else the error (a server that
/// is down refuses too).
pub fn try_write(c: &Cluster) -> Result<(), String> {
    let mut client = postgres::Client::connect(&c.conninfo(DB), postgres::NoTls)
        .map_err(|e| format!("cannot connect: {}", crate::describe_pg_error(&e)))?;
    client
        .batch_execute("UPDATE account SET balance = balance WHERE id = 1")
        .map_err(|e| crate::describe_pg_error(&e))
}
