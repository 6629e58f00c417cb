//! The money-transfer workload of the switchover and failover tests: accounts whose total never
//! changes, and an insert-only list of transfers, each one transaction.

use crate::pair::DB;
use crate::Cluster;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

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

/// Rows of a table by key: id -> the row as record text.
pub type Rows = std::collections::BTreeMap<String, String>;

/// Every row of `table` (with an `id` column) on `c`, by id.
pub fn rows(c: &Cluster, table: &str) -> Rows {
    c.query_strings(DB, &format!("SELECT id::text, t::text FROM {table} t"))
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Both tables' rows on `c`.
pub fn both_tables(c: &Cluster) -> [Rows; 2] {
    [rows(c, "account"), rows(c, "transfer")]
}

/// The state clients writing transfers share while nodes switch roles under them.
#[derive(Default)]
pub struct Workload {
    /// which node of the caller's list the clients write to
    pub current: AtomicUsize,
    pub stop: AtomicBool,
    /// the ids of the transfers committed
    pub committed: Mutex<Vec<i64>>,
    /// writes refused by a fence or a slave's protection, or cancelled by a fence: retried
    pub refusals: AtomicUsize,
    /// any other error
    pub unexpected: Mutex<Vec<String>>,
}

impl Workload {
    /// Client `w`'s loop until `stop`: transfers on `nodes[current]`, reconnecting when it
    /// changes; a refused write is retried after a pause.
    pub fn client(&self, nodes: &[&Cluster], w: u64) {
        let mut on = usize::MAX;
        let mut client: Option<postgres::Client> = None;
        let mut n = w * 1_000_000;
        while !self.stop.load(Ordering::SeqCst) {
            let now = self.current.load(Ordering::SeqCst);
            if on != now || client.is_none() {
                client = Some(nodes[now].connect(DB));
                on = now;
            }
            n += 1;
            let Some(c) = client.as_mut() else { continue };
            match transfer(c, n) {
                Ok(id) => self.committed.lock().expect("lock").push(id),
                Err(e) => {
                    let msg = crate::describe_pg_error(&e);
                    if msg.contains("switchover in progress")
                        || msg.contains("replication slave table")
                        || msg.contains("canceling statement")
                    {
                        self.refusals.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(20));
                    } else {
                        self.unexpected.lock().expect("lock").push(msg);
                        client = None;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
    }
}

/// Stops the workload's clients however the scope that holds it is left (a failed assertion
/// too).
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
