//! Upgrades of rserv in place from the previous release, 1.0.0, as supabase/wrappers and
//! pgvectorscale test theirs: master and slave start on rserv 1.0.0 built from its git tag
//! (`scripts/build-release.sh`: a PostgreSQL 15 tree of its own, and its `replicate`); each
//! node is upgraded by restarting it on a PostgreSQL 15 whose rserv is this tree's (what
//! installing the new package and restarting does) and running `ALTER EXTENSION rserv UPDATE`.
//!
//! - [`update_keeps_registrations_log_and_sync_state`]: the catalog's data, not only its shape
//!   (`upgrade.rs`), survives the update, and the changes logged under 1.0.0 then replicate
//!   without a copy.
//! - [`slaves_first_while_the_daemon_runs`] and [`master_first_while_the_daemon_runs`]: the
//!   upgrade while `replicate run` follows the master and writers change it all along, in the
//!   documented order and the other; in each mixed state the slave follows (or, what 1.0 cannot
//!   apply, is refused with the fix and kept on the master), every change set leaves it in a
//!   state the master had, and at the end every acknowledged row is on the slave.
//!
//! Ignored by a plain `cargo test` (they need the 1.0.0 build); `scripts/test-versions.sh`
//! builds it and runs them. Environment: `RSERV_OLD_PG_BINDIR` and `RSERV_OLD_REPLICATE` (what
//! `build-release.sh` prints), default `$RSERV_PG_ROOT/releases/1.0.0/{pg15/bin,replicate}`;
//! `RSERV_PG_BINDIR`, a PostgreSQL 15 with this tree's rserv (and `sql/archive`'s scripts).

use postgres::{Client, NoTls};
use rserv_tests::daemon::{eventually, Daemon};
use rserv_tests::pair::{assert_fails, assert_ok, number, transfer_sql, Pair, DB};
use rserv_tests::rng::Rng;
use rserv_tests::{pg_bindir, run_replicate_of, Cluster};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const OLD: &str = "1.0.0";
const NEW: &str = env!("CARGO_PKG_VERSION");
const ACCOUNTS: usize = 40;
const START: i64 = 1000;
const TABLES: [&str; 4] = ["account", "ledger", "watched", "event"];

/// The previous release, built by `scripts/build-release.sh`.
struct Release {
    bindir: PathBuf,
    replicate: PathBuf,
}

fn release_1_0_0() -> Release {
    let root = PathBuf::from(std::env::var_os("RSERV_PG_ROOT").unwrap_or("/opt/rserv-pg".into()))
        .join("releases")
        .join(OLD);
    let path = |var: &str, default: PathBuf| {
        let p = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
        assert!(
            p.exists(),
            "rserv {OLD} is not built ({} is missing): run scripts/build-release.sh {OLD} \
             (with the same RSERV_PG_ROOT), or set {var}",
            p.display()
        );
        p
    };
    Release {
        bindir: path("RSERV_OLD_PG_BINDIR", root.join("pg15/bin")),
        replicate: path("RSERV_OLD_REPLICATE", root.join("replicate")),
    }
}

fn extversion(c: &Cluster) -> String {
    c.query_strings(
        DB,
        "SELECT extversion FROM pg_extension WHERE extname = 'rserv'",
    )[0][0]
        .clone()
        .unwrap_or_default()
}

/// Install the new rserv's files (restart on this tree's PostgreSQL), run `between` (the
/// database still has 1.0.0's catalog on the new library), then update the extension.
fn upgrade(c: &mut Cluster, between: impl FnOnce()) {
    c.restart_with_bindir(pg_bindir());
    between();
    c.execute(DB, "ALTER EXTENSION rserv UPDATE");
    assert_eq!(
        extversion(c),
        NEW,
        "{}: ALTER EXTENSION rserv UPDATE",
        c.name()
    );
}

/// Master and slave on rserv 1.0.0, the tables created on both and registered with 1.0.0's
/// functions; the master holds the accounts.
fn old_pair(name: &str, old: &Release) -> Pair {
    let (master, slave) = std::thread::scope(|sc| {
        let m = sc.spawn(|| Cluster::start_with_bindir(&format!("{name}-m"), &old.bindir, &[]));
        let s = sc.spawn(|| Cluster::start_with_bindir(&format!("{name}-s"), &old.bindir, &[]));
        (m.join().expect("master"), s.join().expect("slave"))
    });
    for c in [&master, &slave] {
        c.create_db(DB);
        c.execute(DB, "CREATE EXTENSION rserv");
        assert_eq!(
            extversion(c),
            OLD,
            "{} does not start on rserv {OLD}",
            c.name()
        );
        c.execute(
            DB,
            "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL, touched int NOT NULL DEFAULT 0);
             CREATE TABLE ledger (writer int, n int, note text, PRIMARY KEY (writer, n));
             CREATE TABLE watched (id int PRIMARY KEY, a text, b text);
             CREATE TABLE event (id bigserial PRIMARY KEY, writer int, n int);",
        );
    }
    master.execute(
        DB,
        &format!(
            "INSERT INTO account SELECT g, {START} FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO watched SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 20) g;
             SELECT rserv_add_table('account'); SELECT rserv_add_table('ledger');
             SELECT rserv_add_table('watched', 'a'); SELECT rserv_add_table('event');"
        ),
    );
    slave.execute(
        DB,
        "SELECT rserv_slave_add_table('account'); SELECT rserv_slave_add_table('ledger');
         SELECT rserv_slave_add_table('watched', 'a'); SELECT rserv_slave_add_table('event');",
    );
    let p = Pair { master, slave };
    // the initial copy, by 1.0.0's replicate: from here on the slave holds the accounts
    assert_ok(
        &replicate_with(&p, &old.replicate, &[DB, DB]),
        "1.0.0's first cycle",
    );
    p
}

/// `replicate` (the binary `bin`) with the pair's connection flags and `args`.
fn replicate_with(p: &Pair, bin: &Path, args: &[&str]) -> Output {
    let mut all = p.conn_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_replicate_of(bin, &refs, &[])
}

/// `replicate run` arguments for the pair (conninfo strings: both releases take them).
fn run_args(p: &Pair) -> Vec<String> {
    [
        "run",
        "--interval=0.2",
        "--master",
        &p.master.conninfo(DB),
        "--slave",
        &p.slave.conninfo(DB),
        DB,
        DB,
    ]
    .map(String::from)
    .to_vec()
}

/// Rows of `sql` on `c` as text, one line per row.
fn lines(c: &Cluster, sql: &str) -> Vec<String> {
    c.query_strings(DB, sql)
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".into()))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// The catalog rows 1.0.0 wrote, by 1.0.0's columns (`ALTER EXTENSION rserv UPDATE` must keep
/// every one of them; what 1.1 adds is checked separately).
const MASTER_STATE: &[&str] = &[
    "SELECT node_id FROM _rserv_node_",
    "SELECT reloid::regclass, tname, cname, key, watched FROM _rserv_tables_ ORDER BY 1",
    "SELECT server, node, last_prepare FROM _rserv_servers_ ORDER BY 1",
    "SELECT server, reloid::regclass, state, syncid FROM _rserv_server_tables_ ORDER BY 1, 2",
    "SELECT reloid::regclass, logid, deleted, key FROM _rserv_log_ ORDER BY 1, 2, 4, 3",
    "SELECT server, syncid, synctime, confirmed, status, minid, maxid, active FROM _rserv_sync_ ORDER BY 1, 2",
    "SELECT last_value FROM _rserv_sync_seq_",
];
const SLAVE_STATE: &[&str] = &[
    "SELECT node_id FROM _rserv_node_",
    "SELECT reloid::regclass, tname, cname, key FROM _rserv_slave_tables_ ORDER BY 1",
    "SELECT syncid, synctime, master FROM _rserv_slave_sync_",
];

fn state(c: &Cluster, queries: &[&str]) -> Vec<Vec<String>> {
    queries.iter().map(|q| lines(c, q)).collect()
}

#[test]
#[ignore = "needs rserv 1.0.0 built from its tag: scripts/build-release.sh (scripts/test-versions.sh runs it)"]
fn update_keeps_registrations_log_and_sync_state() {
    let old = release_1_0_0();
    let mut p = old_pair("keep", &old);
    // 1.0.0 replicates: the initial copy (old_pair), then a round of changes
    p.master.execute(
        DB,
        "UPDATE account SET balance = balance + 1 WHERE id <= 5;
         INSERT INTO ledger VALUES (0, 1, 'one'); INSERT INTO event (writer, n) VALUES (0, 1);",
    );
    assert_ok(
        &replicate_with(&p, &old.replicate, &[DB, DB]),
        "1.0.0's second cycle",
    );
    for t in TABLES {
        p.assert_equal(t);
    }
    // changes 1.0.0 logged and no slave has yet: they must survive the update and arrive
    p.master.execute(
        DB,
        "UPDATE account SET balance = balance - 1 WHERE id BETWEEN 11 AND 20;
         DELETE FROM ledger; INSERT INTO ledger VALUES (0, 2, 'two');
         UPDATE watched SET a = 'changed' WHERE id = 3;
         INSERT INTO event (writer, n) SELECT 0, g FROM generate_series(2, 6) g;",
    );
    let log_rows = number(&p.master, "SELECT count(*) FROM _rserv_log_");
    assert!(
        log_rows >= 18,
        "the pending changes are logged: {log_rows} log rows"
    );
    let (master_before, slave_before) =
        (state(&p.master, MASTER_STATE), state(&p.slave, SLAVE_STATE));
    let xmins = |c: &Cluster| lines(c, "SELECT id, xmin FROM account ORDER BY id");
    let slave_xmins = xmins(&p.slave);

    upgrade(&mut p.slave, || ());
    upgrade(&mut p.master, || ());
    let master_after = state(&p.master, MASTER_STATE);
    for (i, q) in MASTER_STATE.iter().enumerate() {
        assert_eq!(
            master_after[i], master_before[i],
            "master: {q} after the update"
        );
    }
    let slave_after = state(&p.slave, SLAVE_STATE);
    for (i, q) in SLAVE_STATE.iter().enumerate() {
        assert_eq!(
            slave_after[i], slave_before[i],
            "slave: {q} after the update"
        );
    }
    // what 1.1 adds: the tables' definitions and sequences registered, the capture triggers
    // numbering columns, the slave's tables already copied
    assert_eq!(
        number(
            &p.master,
            "SELECT count(*) FROM _rserv_tables_ WHERE definition IS NOT NULL"
        ),
        4
    );
    assert_eq!(
        lines(&p.master, "SELECT seqoid::regclass FROM _rserv_sequences_"),
        ["event_id_seq"]
    );
    assert_eq!(
        number(
            &p.master,
            "SELECT count(*) FROM pg_trigger WHERE tgname = '_rserv_trigger_t_' \
             AND encode(tgargs, 'escape') LIKE '@%'"
        ),
        4,
        "the capture triggers number their columns"
    );
    assert_eq!(
        number(
            &p.slave,
            "SELECT count(*) FROM _rserv_slave_tables_ WHERE needs_copy"
        ),
        0,
        "a table 1.0.0 received needs no copy"
    );

    // this release's replicate: the changes logged under 1.0.0 arrive, and only they (the
    // slave's untouched rows keep their row versions: nothing was copied again)
    let last_old: i64 = number(&p.slave, "SELECT syncid FROM _rserv_slave_sync_");
    p.sync();
    for t in TABLES {
        p.assert_equal(t);
    }
    let rewritten: Vec<String> = xmins(&p.slave)
        .into_iter()
        .filter(|r| !slave_xmins.contains(r))
        .collect();
    assert_eq!(
        rewritten.len(),
        10,
        "only the 10 changed accounts were written on the slave: {rewritten:?}"
    );
    assert!(
        number(&p.slave, "SELECT syncid FROM _rserv_slave_sync_") > last_old,
        "sync ids go on from 1.0.0's"
    );
    // and the sequence, which 1.0.0 never replicated, with it
    assert_eq!(
        lines(&p.slave, "SELECT last_value FROM event_id_seq"),
        lines(&p.master, "SELECT last_value FROM event_id_seq")
    );
    // the log is cleaned up to what the slave confirmed
    assert_eq!(number(&p.master, "SELECT count(*) FROM _rserv_log_"), 0);
}

/// A connection that survives the server's restarts: reconnects for up to two minutes.
struct Writer {
    conninfo: String,
    client: Option<Client>,
}

impl Writer {
    /// Run `sql` (whole transactions); true when its last COMMIT was acknowledged.
    fn run(&mut self, sql: &str) -> bool {
        for _ in 0..1200 {
            if self.client.is_none() {
                self.client = Client::connect(&self.conninfo, NoTls).ok();
            }
            if let Some(c) = &mut self.client {
                match c.batch_execute(sql) {
                    Ok(()) => return true,
                    // the server restarts: connect again and retry (nothing was acknowledged)
                    Err(e)
                        if e.is_closed()
                            || e.as_db_error().is_none()
                            || e.code().is_some_and(|c| c.code().starts_with("57")) =>
                    {
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

/// Stops the writers when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Writers changing the master until `stop`: transfers between accounts (their total never
/// changes) and, per round, a ledger row and an event (sequence) row with an update of a
/// watched row in one transaction, acknowledged in `acknowledged`.
struct Workload {
    stop: AtomicBool,
    committed: AtomicU64,
    acknowledged: Mutex<Vec<(u64, u64)>>,
    total: String,
}

impl Workload {
    fn new() -> Workload {
        Workload {
            stop: AtomicBool::new(false),
            committed: AtomicU64::new(0),
            acknowledged: Mutex::new(Vec::new()),
            total: (ACCOUNTS as i64 * START).to_string(),
        }
    }

    fn write(&self, w: u64, seed: u64, conninfo: String) {
        let mut writer = Writer {
            conninfo,
            client: None,
        };
        let mut rng = Rng::new(seed);
        let mut n = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            let (a, b) = (1 + rng.below(ACCOUNTS), 1 + rng.below(ACCOUNTS));
            if a != b {
                writer.run(&transfer_sql(
                    rng.next_u64() % 10,
                    a,
                    b,
                    1 + rng.below(30),
                    w,
                ));
            }
            n += 1;
            let k = 1 + rng.below(20);
            if writer.run(&format!(
                "BEGIN; INSERT INTO ledger VALUES ({w}, {n}, 'row {n}');
                 INSERT INTO event (writer, n) VALUES ({w}, {n});
                 UPDATE watched SET a = 'w{w} n{n}', b = 'unwatched {n}' WHERE id = {k}; COMMIT;"
            )) {
                self.acknowledged.lock().expect("lock").push((w, n));
                self.committed.fetch_add(1, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until the writers have `n` more acknowledged commits.
    fn more_commits(&self, n: u64) {
        let target = self.committed.load(Ordering::SeqCst) + n;
        eventually(120, "writers commit", || {
            self.committed.load(Ordering::SeqCst) >= target
        });
    }

    /// Writers go on, and the slave follows: it gets rows committed after this call, and every
    /// state of it on the way has the accounts adding up (a state the master had).
    fn progress(&self, what: &str, slave: &Cluster) {
        let target = self.committed.load(Ordering::SeqCst) + 20;
        self.more_commits(20);
        eventually(300, &format!("the slave follows during {what}"), || {
            let r = slave.query_strings(
                DB,
                "SELECT (SELECT count(*) FROM ledger), (SELECT sum(balance) FROM account)",
            );
            assert_eq!(
                r[0][1].as_deref(),
                Some(self.total.as_str()),
                "during {what}: the slave's accounts do not add up: not a state the master had"
            );
            r[0][0]
                .as_deref()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
                >= target
        });
        eprintln!("rolling: {what}: the slave follows ({target} rows acknowledged)");
    }

    /// Start two writers in `scope`, with seeds from `seed`. They stop when the returned guard
    /// is dropped (also when the test panics: the scope then ends instead of waiting for them).
    fn start<'s, 'e>(
        &'e self,
        scope: &'s std::thread::Scope<'s, 'e>,
        conninfo: String,
        seed: u64,
    ) -> StopOnDrop<'e> {
        let mut rng = Rng::from_env("RSERV_ROLLING_SEED", seed, "rolling upgrade");
        for w in 0..2 {
            let (seed, conninfo) = (rng.next_u64(), conninfo.clone());
            scope.spawn(move || self.write(w, seed, conninfo));
        }
        StopOnDrop(&self.stop)
    }

    /// After the writers stopped: the slave holds what the master holds, every acknowledged
    /// row among it; sequences and registrations followed.
    fn finish(self, p: &Pair) {
        eventually(300, "the slave catches up with the master", || {
            TABLES
                .iter()
                .all(|t| Pair::rows(&p.master, t) == Pair::rows(&p.slave, t))
        });
        let on_slave: HashSet<String> = lines(&p.slave, "SELECT writer, n FROM ledger")
            .into_iter()
            .collect();
        let acknowledged = self.acknowledged.into_inner().expect("lock");
        let missing: Vec<_> = acknowledged
            .iter()
            .filter(|(w, n)| !on_slave.contains(&format!("{w}|{n}")))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged rows are missing on the slave, e.g. {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        );
        eventually(60, "the slave's sequence follows the master's", || {
            lines(&p.slave, "SELECT last_value FROM event_id_seq")
                == lines(&p.master, "SELECT last_value FROM event_id_seq")
        });
        assert_eq!(
            lines(
                &p.master,
                "SELECT table_name FROM rserv_table_list() ORDER BY 1"
            ),
            ["account", "event", "ledger", "watched"],
            "the master's registrations"
        );
        assert_eq!(
            lines(
                &p.slave,
                "SELECT table_name, needs_copy FROM rserv_slave_table_list() ORDER BY 1"
            ),
            ["account|f", "event|f", "ledger|f", "watched|f"],
            "the slave's registrations"
        );
        eprintln!(
            "rolling: {} acknowledged rows, every one on the slave",
            acknowledged.len()
        );
    }
}

/// After both upgrades: the master's schema change (a column added to `watched`) is on the
/// slave, and `replicate check` finds both sides equal.
fn schema_change_arrived_and_equal(p: &Pair) {
    assert_eq!(
        lines(&p.slave, "SELECT count(*) FROM watched WHERE c = 'new'"),
        ["20"],
        "the schema change reached the slave"
    );
    assert_ok(
        &p.replicate(&["check", DB, DB]),
        "replicate check after the upgrade",
    );
}

/// The documented order: the slave first (1.0.0's replicate still running: it drives a 1.0
/// master and a 1.1 slave), then this release's replicate, then the master. Once both run 1.1,
/// a schema change follows the stream.
#[test]
#[ignore = "needs rserv 1.0.0 built from its tag: scripts/build-release.sh (scripts/test-versions.sh runs it)"]
fn slaves_first_while_the_daemon_runs() {
    let old = release_1_0_0();
    let mut p = old_pair("slavefirst", &old);
    let work = Workload::new();
    let args = run_args(&p);
    let old_daemon = Daemon::start_bin(&old.replicate, &args);
    let daemon = std::thread::scope(|sc| {
        let writers = work.start(sc, p.master.conninfo(DB), 1_000_017);
        work.progress("1.0.0 on both, 1.0.0's replicate", &p.slave);
        // between the new library and the update, the slave's earlier functions say so
        upgrade(&mut p.slave, || {
            eventually(120, "the slave answers 'update first'", || {
                old_daemon.log().contains("must be updated to")
            })
        });
        work.progress(
            &format!("master on 1.0.0, slave on {NEW}, 1.0.0's replicate"),
            &p.slave,
        );
        assert!(
            old_daemon.stop().success(),
            "1.0.0's replicate run stops cleanly"
        );
        let daemon = Daemon::start(&args);
        work.progress(
            &format!("master on 1.0.0, slave on {NEW}, this replicate"),
            &p.slave,
        );
        // between the new library and the update, the application's writes are captured
        upgrade(&mut p.master, || work.more_commits(50));
        work.progress(&format!("{NEW} on both"), &p.slave);
        p.master
            .execute(DB, "ALTER TABLE watched ADD COLUMN c text DEFAULT 'new'");
        work.progress(&format!("{NEW} on both, after a schema change"), &p.slave);
        drop(writers);
        daemon
    });
    work.finish(&p);
    assert!(daemon.stop().success(), "replicate run stops cleanly");
    schema_change_arrived_and_equal(&p);
}

/// The other order: the master first. A 1.0 slave gets what 1.0 reads (no sequences); a schema
/// change on the master is refused for it, naming the node, the versions and the fix, and stays
/// in the master's log until the slave is updated; 1.0.0's replicate cannot drive a 1.1 master
/// and a 1.0 slave (the slave refuses), nor a 1.1 master whose change sets carry sequences.
#[test]
#[ignore = "needs rserv 1.0.0 built from its tag: scripts/build-release.sh (scripts/test-versions.sh runs it)"]
fn master_first_while_the_daemon_runs() {
    let old = release_1_0_0();
    let mut p = old_pair("masterfirst", &old);
    let work = Workload::new();
    let args = run_args(&p);
    let daemon = Daemon::start(&args);
    std::thread::scope(|sc| {
        let writers = work.start(sc, p.master.conninfo(DB), 2_000_029);
        work.progress("1.0.0 on both, this replicate", &p.slave);
        upgrade(&mut p.master, || {
            work.more_commits(50);
            eventually(120, "the master answers 'update first'", || {
                daemon.log().contains("must be updated to")
            })
        });
        work.progress(&format!("master on {NEW}, slave on 1.0.0"), &p.slave);

        // a schema change: the 1.0 slave cannot apply it; refused, and kept on the master
        p.master
            .execute(DB, "ALTER TABLE watched ADD COLUMN c text DEFAULT 'new'");
        let out = p.replicate(&[DB, DB]);
        eprintln!(
            "rolling: refused: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert_fails(
            &out,
            1,
            &[
                "slave database \"app\" (rserv 1.0.0)",
                &format!("master running rserv {NEW}"),
                "table public.watched",
                "Nothing was applied",
                "ALTER EXTENSION rserv UPDATE",
            ],
        );
        let daemon_refused = || daemon.log().contains("which rserv 1.0 cannot apply");
        eventually(60, "the daemon reports the refusal", daemon_refused);
        assert!(
            number(&p.master, "SELECT pending_changes FROM rserv_status") > 0,
            "the master keeps the changes for the slave"
        );
        assert_eq!(
            number(&p.slave, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'watched' AND column_name = 'c'"),
            0
        );
        // 1.0.0's replicate cannot read the 1.1 master's change set either (it stops at the
        // first section it does not know; the 1.0 slave would refuse 1.1's change sets anyway)
        let out = replicate_with(&p, &old.replicate, &[DB, DB]);
        assert_fails(&out, 1, &["master: unknown section DDL"]);
        upgrade(&mut p.slave, || ());
        work.progress(&format!("{NEW} on both, after the schema change"), &p.slave);
        drop(writers);
    });
    work.finish(&p);
    assert!(daemon.stop().success(), "replicate run stops cleanly");
    // 1.0.0's replicate with 1.1 on both: every change set carries the SEQUENCE section now
    p.master
        .execute(DB, "INSERT INTO event (writer, n) VALUES (99, 1)");
    let out = replicate_with(&p, &old.replicate, &[DB, DB]);
    assert_fails(&out, 1, &["master: unknown section SEQUENCE"]);
    assert_eq!(
        number(&p.slave, "SELECT count(*) FROM event WHERE writer = 99"),
        0
    );
    p.sync();
    p.assert_equal("event");
    schema_change_arrived_and_equal(&p);
}
