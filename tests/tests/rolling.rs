//! A rolling upgrade from the previous release, 1.0.0, while replication runs: master and slave
//! start on rserv 1.0.0 (built from its git tag by `scripts/build-release.sh`) with 1.0.0's
//! `replicate run` following the master and writers changing it all along; then the slave, then
//! the master, is restarted on a PostgreSQL whose rserv is this tree's, and `ALTER EXTENSION
//! rserv UPDATE` runs there; last, the daemon is swapped for this tree's. Replication must go on
//! in every mixed state (a slave takes change sets of any rserv release whose format it reads),
//! every change set must leave the slave in a state the master had, and at the end nothing
//! acknowledged to a writer may be missing.
//!
//! Needs `RSERV_OLD_PG_BINDIR` and `RSERV_OLD_REPLICATE` (what `scripts/build-release.sh 1.0.0`
//! prints) and `RSERV_PG_BINDIR` pointing at a PostgreSQL 15 with this tree's rserv; ignored by
//! a plain `cargo test`, run by `scripts/test-versions.sh`.

use postgres::{Client, NoTls};
use rserv_tests::daemon::{eventually, Daemon};
use rserv_tests::pair::{assert_fails, assert_ok, transfer_sql, Pair, DB};
use rserv_tests::roles::Rng;
use rserv_tests::{pg_bindir, run_replicate, Cluster};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const ACCOUNTS: usize = 50;
const START: i64 = 1000;
const WRITERS: u64 = 2;

fn env_path(var: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run scripts/build-release.sh 1.0.0 and export what it prints")
    });
    assert!(p.exists(), "{var}={} does not exist", p.display());
    p
}

fn extversion(c: &Cluster) -> String {
    c.query_strings(
        DB,
        "SELECT extversion FROM pg_extension WHERE extname = 'rserv'",
    )[0][0]
        .clone()
        .unwrap_or_default()
}

const TABLES: &str = "
CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL, touched int NOT NULL DEFAULT 0);
CREATE TABLE ledger (writer int, n int, note text, PRIMARY KEY (writer, n));
CREATE TABLE watched (id int PRIMARY KEY, a text, b text);";

/// A connection that survives the server's restarts: reconnects (for up to two minutes).
struct Writer {
    conninfo: String,
    client: Option<Client>,
}

impl Writer {
    fn run(&mut self, sql: &str) -> bool {
        for _ in 0..1200 {
            if self.client.is_none() {
                self.client = Client::connect(&self.conninfo, NoTls).ok();
            }
            if let Some(c) = &mut self.client {
                match c.batch_execute(sql) {
                    Ok(()) => return true,
                    Err(e) if e.is_closed() || e.as_db_error().is_none() => self.client = None,
                    Err(e) if e.code().is_some_and(|c| c.code().starts_with("57")) => {
                        // shut down by the restart
                        self.client = None
                    }
                    Err(_) => {
                        // a deadlock between writers, say: this one rolled back
                        let _ = c.batch_execute("ROLLBACK");
                        return false;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the master accepted no connection for two minutes");
    }
}

#[test]
#[ignore = "needs rserv 1.0.0 built from its tag: scripts/build-release.sh (scripts/test-versions.sh runs it)"]
fn rolling_upgrade_from_1_0_0_loses_nothing() {
    let (old_bin, old_replicate) = (
        env_path("RSERV_OLD_PG_BINDIR"),
        env_path("RSERV_OLD_REPLICATE"),
    );
    let new_bin = pg_bindir().to_path_buf();
    let (mut master, mut slave) = std::thread::scope(|sc| {
        let m = sc.spawn(|| Cluster::start_with_bindir("roll-m", &old_bin, &[]));
        let s = sc.spawn(|| Cluster::start_with_bindir("roll-s", &old_bin, &[]));
        (m.join().expect("master"), s.join().expect("slave"))
    });
    for c in [&master, &slave] {
        c.create_db(DB);
        c.execute(DB, "CREATE EXTENSION rserv");
        assert_eq!(
            extversion(c),
            "1.0.0",
            "{} does not start on rserv 1.0.0",
            c.name()
        );
        c.execute(DB, TABLES);
    }
    master.execute(
        DB,
        &format!(
            "INSERT INTO account SELECT g, {START} FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO watched SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 20) g;
             SELECT rserv_add_table('account'); SELECT rserv_add_table('ledger');
             SELECT rserv_add_table('watched', 'a');"
        ),
    );
    slave.execute(
        DB,
        "SELECT rserv_slave_add_table('account'); SELECT rserv_slave_add_table('ledger');
         SELECT rserv_slave_add_table('watched', 'a');",
    );
    let conn_args = |m: &Cluster, s: &Cluster| -> Vec<String> {
        vec![
            "--master".into(),
            m.conninfo(DB),
            "--slave".into(),
            s.conninfo(DB),
        ]
    };

    // This tree's replicate refuses to drive 1.0.0 nodes, and says what to do.
    let mut args = conn_args(&master, &slave);
    args.extend([DB.to_string(), DB.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_fails(
        &run_replicate(&refs),
        1,
        &["rserv 1.0.0", "ALTER EXTENSION rserv UPDATE"],
    );

    let mut run_args = vec!["run".to_string(), "--interval=0.2".into()];
    run_args.extend(conn_args(&master, &slave));
    run_args.extend([DB.to_string(), DB.to_string()]);
    let old_daemon = Daemon::start_bin(&old_replicate, &run_args);

    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let acknowledged: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let total = (ACCOUNTS as i64 * START).to_string();
    let mut rng = Rng::from_env("RSERV_ROLLING_SEED", 1_000_017, "rolling upgrade");
    let seeds: Vec<u64> = (0..WRITERS).map(|_| rng.next_u64()).collect();
    let daemon = std::thread::scope(|sc| {
        for (w, seed) in seeds.iter().enumerate() {
            let w = w as u64;
            let (stop, committed, acknowledged) = (&stop, &committed, &acknowledged);
            let mut writer = Writer {
                conninfo: master.conninfo(DB),
                client: None,
            };
            let mut rng = Rng(*seed);
            sc.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let (a, b) = (1 + rng.below(ACCOUNTS), 1 + rng.below(ACCOUNTS));
                    if a != b {
                        writer.run(&transfer_sql(rng.next_u64() % 10, a, b, 1 + rng.below(30), w));
                    }
                    n += 1;
                    let k = 1 + rng.below(20);
                    if writer.run(&format!(
                        "BEGIN; INSERT INTO ledger VALUES ({w}, {n}, 'row {n}');
                         UPDATE watched SET a = 'w{w} n{n}', b = 'unwatched {n}' WHERE id = {k}; COMMIT;"
                    )) {
                        acknowledged.lock().expect("lock").push((w, n));
                        committed.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }

        // Replication keeps up in each state: the slave gets rows committed after the state
        // began, and every change set it applied leaves the accounts adding up.
        let progress = |what: &str, slave: &Cluster| {
            let target = committed.load(Ordering::SeqCst) + 20;
            eventually(60, &format!("writers commit during {what}"), || {
                committed.load(Ordering::SeqCst) >= target
            });
            eventually(180, &format!("the slave follows during {what}"), || {
                let r = slave.query_strings(
                    DB,
                    "SELECT (SELECT count(*) FROM ledger), (SELECT sum(balance) FROM account)",
                );
                assert_eq!(
                    r[0][1].as_deref(),
                    Some(total.as_str()),
                    "during {what}: the slave's accounts do not add up, not a state the master had"
                );
                r[0][0]
                    .as_deref()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0)
                    >= target
            });
        };
        progress("1.0.0 on both", &slave);

        slave.restart_with_bindir(&new_bin);
        slave.execute(DB, "ALTER EXTENSION rserv UPDATE");
        let updated = extversion(&slave);
        assert_ne!(
            updated, "1.0.0",
            "ALTER EXTENSION rserv UPDATE did nothing on the slave"
        );
        progress(&format!("master on 1.0.0, slave on {updated}"), &slave);

        master.restart_with_bindir(&new_bin);
        master.execute(DB, "ALTER EXTENSION rserv UPDATE");
        assert_eq!(
            extversion(&master),
            updated,
            "the master did not update to the slave's version"
        );
        progress(&format!("{updated} on both, 1.0.0's replicate"), &slave);

        let status = old_daemon.stop();
        assert!(
            status.success(),
            "1.0.0's replicate run did not stop cleanly: {status}"
        );
        let daemon = Daemon::start(&run_args);
        progress(&format!("{updated} on both, its replicate"), &slave);
        stop.store(true, Ordering::SeqCst);
        daemon
    });

    let p = Pair { master, slave };
    eventually(180, "the slave catches up with the master", || {
        ["account", "ledger", "watched"]
            .iter()
            .all(|t| Pair::rows(&p.master, t) == Pair::rows(&p.slave, t))
    });
    let status = daemon.stop();
    assert!(
        status.success(),
        "replicate run did not stop cleanly: {status}"
    );
    // nothing acknowledged to a writer is missing
    let on_slave: std::collections::HashSet<(u64, u64)> = p
        .slave
        .query_strings(DB, "SELECT writer, n FROM ledger")
        .into_iter()
        .map(|r| {
            let n = |i: usize| r[i].as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
            (n(0), n(1))
        })
        .collect();
    let acknowledged = acknowledged.into_inner().expect("lock");
    let missing: Vec<_> = acknowledged
        .iter()
        .filter(|k| !on_slave.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged ledger rows are missing on the slave, e.g. {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
    for t in ["account", "ledger", "watched"] {
        p.assert_equal(t);
    }
    assert_ok(
        &p.replicate(&["check", DB, DB]),
        "replicate check after the upgrade",
    );
    eprintln!(
        "rolling upgrade: {} ledger rows acknowledged, all on the slave",
        acknowledged.len()
    );
}
