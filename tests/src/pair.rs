//! A master and a slave cluster with rserv installed in one database on each, and the
//! assertions replication tests share.

use crate::{run_replicate, Cluster};
use postgres::Client;
use replicate::cycle::{self, CycleOptions, Endpoints, Outcome, Session as CycleSession};
use replicate::error::Error;
use replicate::rserv::Rserv;
use std::process::Output;

pub const DB: &str = "app";

/// Start clusters in parallel, each with database `app` and the extension.
pub fn start_clusters(names: &[&str]) -> Vec<Cluster> {
    let clusters = std::thread::scope(|sc| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| sc.spawn(move || Cluster::start(n)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("cluster start"))
            .collect::<Vec<_>>()
    });
    for c in &clusters {
        c.create_db(DB);
        c.execute(DB, "CREATE EXTENSION rserv");
    }
    clusters
}

pub struct Pair {
    pub master: Cluster,
    pub slave: Cluster,
}

impl Pair {
    /// Start both clusters (in parallel), create database `app` and the extension on each.
    pub fn start(name: &str) -> Pair {
        Pair::start_with(name, &[])
    }

    /// [`Pair::start`] with server settings for both clusters (see [`Cluster::start_with`]).
    pub fn start_with(name: &str, settings: &[(&str, &str)]) -> Pair {
        let (m, s) = std::thread::scope(|sc| {
            let m = sc.spawn(|| Cluster::start_with(&format!("{name}-m"), settings));
            let s = sc.spawn(|| Cluster::start_with(&format!("{name}-s"), settings));
            (
                m.join().expect("master cluster"),
                s.join().expect("slave cluster"),
            )
        });
        for c in [&m, &s] {
            c.create_db(DB);
            c.execute(DB, "CREATE EXTENSION rserv");
        }
        Pair {
            master: m,
            slave: s,
        }
    }

    /// A pair replicating table `m (id int PRIMARY KEY, v text)`, partitioned by range into
    /// `m1` (ids below `split`) and `m2` (`split` to `2 * split`), with rows 1 to `2 * split - 1`,
    /// copied to the slave.
    pub fn partitioned(name: &str, split: i32) -> Pair {
        let p = Pair::start(name);
        p.master.execute(
            DB,
            &format!(
                "CREATE TABLE m (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
                 CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO ({split});
                 CREATE TABLE m2 PARTITION OF m FOR VALUES FROM ({split}) TO ({});
                 INSERT INTO m SELECT g, 'v' || g FROM generate_series(1, {}) g;
                 SELECT rserv_add_table('m');",
                2 * split,
                2 * split - 1
            ),
        );
        assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
        p
    }

    /// Run the same statements on both sides (on the slave as a fixture: local writes to
    /// replicated tables allowed for this session).
    pub fn both(&self, sql: &str) {
        self.master.execute(DB, sql);
        self.slave
            .execute(DB, &format!("SET rserv.allow_slave_writes = on; {sql}"));
    }

    /// Create `table` on both sides with `ddl`, register it on both.
    pub fn table(&self, ddl: &str, table: &str, column: Option<&str>) {
        self.both(ddl);
        let col = match column {
            Some(c) => format!(", '{c}'"),
            None => String::new(),
        };
        self.master
            .execute(DB, &format!("SELECT rserv_add_table('{table}'{col})"));
        self.slave
            .execute(DB, &format!("SELECT rserv_slave_add_table('{table}'{col})"));
    }

    /// Command-line arguments that point `replicate` at this pair's sockets and ports.
    pub fn conn_args(&self) -> Vec<String> {
        conn_args(&self.master, &self.slave)
    }

    /// Run the `replicate` binary with this pair's connection flags followed by `args`.
    pub fn replicate(&self, args: &[&str]) -> Output {
        between(&self.master, &self.slave, args)
    }

    /// One cycle through the binary; panics unless it exits 0.
    pub fn sync(&self) -> String {
        let out = self.replicate(&[DB, DB]);
        assert_ok(&out, "replicate MASTERDB SLAVEDB");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// In-process endpoints for many fast cycles (the library the binary is built on).
    pub fn session(&self) -> Session {
        let mut master = self.master.connect(DB);
        let mut slave = self.slave.connect(DB);
        let master_rs = Rserv::locate(&mut master, "master", DB).expect("rserv on master");
        let slave_rs = Rserv::locate(&mut slave, "slave", DB).expect("rserv on slave");
        Session {
            master,
            slave,
            master_rs,
            slave_rs,
        }
    }

    /// Every row of `table` on one side, as text, in a stable order.
    pub fn rows(c: &Cluster, table: &str) -> Vec<String> {
        c.query_strings(DB, &format!("SELECT t::text FROM {table} t ORDER BY 1"))
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    }

    /// Table `table` made on the slave from the master's definition and registered, waiting
    /// for its initial copy (as --create-tables leaves it before the first change set).
    pub fn create_on_slave(&self, table: &str) {
        let definition = self.master.query_strings(
            DB,
            &format!(
                "SELECT definition::text FROM rserv_table_list() WHERE table_name = '{table}'"
            ),
        )[0][0]
            .clone()
            .expect("the master describes the table");
        self.slave
            .connect(DB)
            .execute(
                "SELECT rserv_slave_create_table($1::text::jsonb)",
                &[&definition],
            )
            .expect("create the table on the slave");
        self.slave
            .execute(DB, &format!("SELECT rserv_slave_add_table('{table}')"));
    }

    /// Table `p (id int PRIMARY KEY, v text, u int UNIQUE)` on both sides, empty, waiting on
    /// the slave for its initial copy.
    pub fn pending_table_p(&self) {
        self.master.execute(
            DB,
            "CREATE TABLE p (id int PRIMARY KEY, v text, u int UNIQUE);
             SELECT rserv_add_table('p');",
        );
        self.create_on_slave("p");
    }

    /// `table`'s constraints and indexes as one side's server describes them, by name (what
    /// an initial copy that rebuilds keys must give back exactly).
    pub fn shape(c: &Cluster, table: &str) -> Vec<Vec<Option<String>>> {
        c.query_strings(
            DB,
            &format!(
                "SELECT conname, contype::text, pg_get_constraintdef(oid), condeferrable::text, \
                        condeferred::text \
                   FROM pg_constraint WHERE conrelid = '{table}'::regclass \
                 UNION ALL \
                 SELECT c.relname, 'index', pg_get_indexdef(i.indexrelid), i.indisunique::text, \
                        i.indisprimary::text || i.indimmediate::text \
                   FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                  WHERE i.indrelid = '{table}'::regclass \
                 ORDER BY 1, 2"
            ),
        )
    }

    /// Master and slave hold exactly the same rows in `table`.
    pub fn assert_equal(&self, table: &str) {
        let m = Pair::rows(&self.master, table);
        let s = Pair::rows(&self.slave, table);
        assert_eq!(m, s, "table {table} differs between master and slave");
    }
}

/// Command-line arguments that point `replicate` at `m` as master and `s` as slave.
pub fn conn_args(m: &Cluster, s: &Cluster) -> Vec<String> {
    vec![
        format!("--masterhost={}", m.socket_dir().display()),
        format!("--masterport={}", m.port()),
        format!("--slavehost={}", s.socket_dir().display()),
        format!("--slaveport={}", s.port()),
        "--user=postgres".to_string(),
    ]
}

/// Run `replicate` with `m` as master and `s` as slave, then `args`.
pub fn between(m: &Cluster, s: &Cluster, args: &[&str]) -> Output {
    let mut all = conn_args(m, s);
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_replicate(&refs)
}

/// `replicate` with `m` as master and `s` as slave, then `args`, with `env`.
pub fn between_env(m: &Cluster, s: &Cluster, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = conn_args(m, s);
    all.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    crate::run_replicate_env(&refs, env)
}

/// `replicate failover` of these slaves, with `env`.
pub fn failover(slaves: &[&Cluster], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["--user=postgres".to_string(), "failover".to_string()];
    args.extend(slaves.iter().map(|c| database_arg(c)));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::run_replicate_env(&refs, env)
}

/// `c`'s database `app` as a `replicate` database argument (a connection string).
pub fn database_arg(c: &Cluster) -> String {
    format!(
        "host={} port={} dbname={DB}",
        c.socket_dir().display(),
        c.port()
    )
}

pub struct Session {
    pub master: Client,
    pub slave: Client,
    pub master_rs: Rserv,
    pub slave_rs: Rserv,
}

impl Session {
    pub fn cycle(&mut self) -> Result<Outcome, Error> {
        let mut ep = Endpoints {
            master: &mut self.master,
            master_rs: &self.master_rs,
            slave: &mut self.slave,
            slave_rs: &self.slave_rs,
        };
        cycle::run(
            &mut ep,
            &CycleOptions {
                clean_log: true,
                ..CycleOptions::default()
            },
            &mut CycleSession::default(),
            None,
        )
    }
}

/// Panics with both output streams unless `out` exited 0.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics unless `out` exited with `code` and its stderr contains every one of `needles`.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
}

/// One transfer of `amt` from account `a` to account `b` by writer `w`, the money-invariant
/// workload: `kind` 0 rolls it back, 1 passes the money through a temporary account that is
/// inserted and deleted (two transactions), anything else is a plain transfer. Every kind keeps
/// the total of `account.balance`.
pub fn transfer_sql(
    kind: u64,
    a: impl std::fmt::Display,
    b: impl std::fmt::Display,
    amt: impl std::fmt::Display,
    w: impl std::fmt::Display,
) -> String {
    match kind {
        0 => format!(
            "BEGIN; UPDATE account SET balance = balance - {amt} WHERE id = {a};
             UPDATE account SET balance = balance + {amt} WHERE id = {b}; ROLLBACK;"
        ),
        1 => format!(
            "BEGIN; UPDATE account SET balance = balance - {amt} WHERE id = {a};
             INSERT INTO account VALUES (100000 + {a} * 10 + {w}, {amt});
             COMMIT;
             BEGIN; UPDATE account SET balance = balance + {amt} WHERE id = {b};
             DELETE FROM account WHERE id = 100000 + {a} * 10 + {w}; COMMIT;"
        ),
        _ => format!(
            "BEGIN; UPDATE account SET balance = balance - {amt}, touched = touched + 1 WHERE id = {a};
             UPDATE account SET balance = balance + {amt}, touched = touched + 1 WHERE id = {b}; COMMIT;"
        ),
    }
}

/// Wait until some backend of `c` waits for a lock on `table` (a name, as `regclass` reads it);
/// panics after a minute.
pub fn wait_for_lock_waiter(c: &Cluster, table: &str) {
    let mut client = c.connect(DB);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE relation = $1::text::regclass AND NOT granted",
                &[&table],
            )
            .expect("pg_locks")
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backend ever waited for a lock on {table}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The number `sql` returns on `app` (0 for NULL); panics naming the query otherwise.
pub fn number(c: &Cluster, sql: &str) -> i64 {
    c.query_strings(DB, sql)[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A replicate run either refused (naming `needle` on stderr) or left `table` equal on both
/// sides: what the adversary tests accept as fixed.
pub fn refused_or_equal(p: &Pair, out: &Output, table: &str, needle: &str, what: &str) {
    if out.status.success() {
        assert_eq!(
            Pair::rows(&p.slave, table),
            Pair::rows(&p.master, table),
            "{what}: replicate succeeded and the slave silently differs\n{}",
            crate::roles::output_text(out)
        );
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(needle),
            "{what}: refused, but without naming {needle}: {}",
            crate::roles::output_text(out)
        );
    }
}
