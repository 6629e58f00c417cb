//! Fault suite (issue 7): `replicate` killed with SIGKILL at random points, the master and the
//! slave crashed (`pg_ctl -m immediate`) mid-run, connections cut mid-transfer (one-shot and
//! daemon), all under concurrent money transfers on the master.
//!
//! Invariants checked on every slave state observed (one statement, so one snapshot):
//! * `sum(balance)` of `account` is the constant total (transfers move money, never create it);
//! * every row of `bulk` carries the same `v` (the test thread updates the whole table in one
//!   transaction between faults), and there are always `bulk_rows` of them.
//!
//! After each fault a normal run must succeed (and never "skip" a change set), after which the
//! slave's `bulk` is at the master's version; each scenario ends with the writers stopped, a
//! final run and a row-for-row comparison of both tables.
//!
//! Random choices come from a seeded PRNG (`RSERV_FAULT_SEED` overrides the seed; it is
//! printed). Waits are generous timeouts that end as soon as the condition holds; nothing
//! asserts speed.

use rserv_tests::daemon::{eventually, Daemon};
use rserv_tests::pair::{assert_ok, transfer_sql, Pair, DB};
use rserv_tests::proxy::{Dir, Proxy};
use rserv_tests::rng::Rng;
use rserv_tests::{replicate_command, run_replicate, Cluster};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const ACCOUNTS: i64 = 200;
const START: i64 = 1000;
const TOTAL: i64 = ACCOUNTS * START;

// ---------------------------------------------------------------------------------------------
// fixtures
// ---------------------------------------------------------------------------------------------

/// A pair with `account` (the money) and `bulk` (`bulk_rows` rows, the large change sets),
/// both replicated, populated on the master and copied to the slave by a first run.
fn setup(name: &str, bulk_rows: i64) -> Pair {
    let p = Pair::start(name);
    p.table(
        "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL, touched int NOT NULL DEFAULT 0)",
        "account",
        None,
    );
    p.table(
        "CREATE TABLE bulk (id int PRIMARY KEY, v int NOT NULL, pad text NOT NULL)",
        "bulk",
        None,
    );
    p.master.execute(
        DB,
        &format!(
            "INSERT INTO account SELECT g, {START} FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO bulk SELECT g, 0, md5(g::text) FROM generate_series(1, {bulk_rows}) g;"
        ),
    );
    p.sync();
    let st = observe(&p.slave, bulk_rows, "after the first run");
    assert_eq!(st.bulk_v, Some(0));
    p
}

/// Update every row of `bulk` in one transaction; returns its new version.
fn bulk_update(m: &Cluster) -> i64 {
    let rows = m.query_strings(
        DB,
        "WITH u AS (UPDATE bulk SET v = v + 1 RETURNING v) SELECT max(v)::text FROM u",
    );
    rows[0][0].as_deref().unwrap().parse().unwrap()
}

/// What one look at the slave saw.
#[derive(Debug, Clone, Copy)]
struct SlaveState {
    syncid: i64,
    bulk_v: Option<i64>,
}

const OBSERVE_SQL: &str = "SELECT (SELECT sum(balance) FROM account)::text, \
     (SELECT min(v) FROM bulk)::text, (SELECT max(v) FROM bulk)::text, \
     (SELECT count(*) FROM bulk)::text, \
     coalesce((SELECT syncid FROM _rserv_slave_sync_), 0)::text";

/// Checks the invariants on one slave state (one statement: one snapshot); `Err` says which
/// one is violated.
fn check_row(row: &[Option<String>], bulk_rows: i64) -> Result<SlaveState, String> {
    let num = |i: usize| row[i].as_deref().map(|s| s.parse::<i64>().unwrap());
    let (sum, min, max, count, syncid) = (num(0), num(1), num(2), num(3), num(4));
    if sum != Some(TOTAL) {
        return Err(format!(
            "money invariant violated: sum(balance) = {sum:?}, expected {TOTAL} (sync id {syncid:?})"
        ));
    }
    if min != max || count != Some(bulk_rows) {
        return Err(format!(
            "bulk is not one transaction-consistent version: v in [{min:?}, {max:?}], {count:?} rows of {bulk_rows} (sync id {syncid:?})"
        ));
    }
    Ok(SlaveState {
        syncid: syncid.unwrap_or(0),
        bulk_v: min,
    })
}

/// One look at the slave; panics (saying `what`) if an invariant does not hold.
fn observe(slave: &Cluster, bulk_rows: i64, what: &str) -> SlaveState {
    let rows = slave.query_strings(DB, OBSERVE_SQL);
    check_row(&rows[0], bulk_rows).unwrap_or_else(|e| panic!("slave {what}: {e}"))
}

/// Connection over the unix socket that fails instead of panicking (servers may be down).
fn try_connect(sock: &std::path::Path, port: u16) -> Option<postgres::Client> {
    postgres::Config::new()
        .host_path(sock)
        .port(port)
        .user("postgres")
        .dbname(DB)
        .application_name("rserv-tests")
        .connect_timeout(Duration::from_secs(5))
        .connect(postgres::NoTls)
        .ok()
}

/// Money-transfer writers on the master (as tests/tests/concurrency.rs): each transaction
/// keeps the total. They reconnect after a master crash.
struct Writers {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
    transfers: Arc<AtomicU64>,
}

impl Writers {
    fn start(m: &Cluster, n: usize, seed: u64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let transfers = Arc::new(AtomicU64::new(0));
        let handles = (0..n)
            .map(|w| {
                let (stop, transfers) = (stop.clone(), transfers.clone());
                let (sock, port) = (m.socket_dir().to_path_buf(), m.port());
                let mut rng =
                    Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(mut c) = try_connect(&sock, port) else {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        };
                        while !stop.load(Ordering::Relaxed) {
                            let a = rng.below_u64(ACCOUNTS as u64) as i64 + 1;
                            let b = rng.below_u64(ACCOUNTS as u64) as i64 + 1;
                            let amt = rng.below_u64(50) + 1;
                            if a == b {
                                continue;
                            }
                            let sql = transfer_sql(rng.below_u64(10), a, b, amt, w);
                            match c.batch_execute(&sql) {
                                Ok(()) => {
                                    transfers.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(_) if c.is_closed() => break,
                                // deadlocks between writers: rolled back, the total is kept
                                Err(_) => {
                                    if c.batch_execute("ROLLBACK").is_err() && c.is_closed() {
                                        break;
                                    }
                                }
                            }
                            // leave CPU to the servers and replicate on small machines
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            handles,
            transfers,
        }
    }

    /// Stop and join; returns how many transfers committed.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.join().expect("writer thread");
        }
        self.transfers.load(Ordering::Relaxed)
    }
}

/// `replicate` one-shot arguments for this pair (unix sockets), `--verbose`.
fn one_shot_args(p: &Pair) -> Vec<String> {
    let mut a = p.conn_args();
    a.extend(["--verbose".to_string(), DB.to_string(), DB.to_string()]);
    a
}

fn run(args: &[String]) -> Output {
    run_replicate(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A normal run after a fault: exits 0, skips nothing (a skip would mean a reused sync id),
/// and leaves the slave consistent with `bulk` at the master's version `v`.
fn normal_run(p: &Pair, args: &[String], bulk_rows: i64, v: i64, what: &str) -> SlaveState {
    let out = run(args);
    assert_ok(&out, &format!("normal run {what}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("skipped"),
        "normal run {what} skipped a change set:\n{}",
        text(&out)
    );
    let st = observe(&p.slave, bulk_rows, &format!("after the normal run {what}"));
    assert_eq!(
        st.bulk_v,
        Some(v),
        "after the normal run {what} the slave's bulk is not at the master's version\n{}",
        text(&out)
    );
    st
}

/// End of a scenario: two normal runs under load, then the writers stop, a final run, and
/// both tables compared row for row (the money total also on the master).
fn settle(p: &Pair, writers: Writers, args: &[String], bulk_rows: i64, v: i64) -> u64 {
    for i in 0..2 {
        normal_run(p, args, bulk_rows, v, &format!("under load #{i}"));
    }
    let transfers = writers.stop();
    normal_run(p, args, bulk_rows, v, "after the writers stopped");
    p.assert_equal("account");
    p.assert_equal("bulk");
    let m_sum = p
        .master
        .query_strings(DB, "SELECT sum(balance)::text FROM account");
    assert_eq!(m_sum[0][0].as_deref(), Some(TOTAL.to_string().as_str()));
    transfers
}

/// Wait until no backend of a `replicate` (application_name) is left on `c`: a killed
/// client's backend ends when it notices, after its current statement.
fn wait_backends_gone(c: &Cluster) {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let n = c.query_strings(
            "postgres",
            "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'replicate'",
        );
        if n[0][0].as_deref() == Some("0") {
            return;
        }
        assert!(
            Instant::now() < until,
            "backends of a killed replicate still alive on {} after 120 s",
            c.name()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (highest sync id prepared for the pair's one slave, highest confirmed) on the master.
fn master_syncs(m: &Cluster) -> (i64, i64) {
    let r = m.query_strings(
        DB,
        "SELECT coalesce(max(syncid), 0)::text, coalesce(max(syncid) FILTER (WHERE status = 1), 0)::text \
         FROM _rserv_sync_",
    );
    (
        r[0][0].as_deref().unwrap().parse().unwrap(),
        r[0][1].as_deref().unwrap().parse().unwrap(),
    )
}

// ---------------------------------------------------------------------------------------------
// a replicate process watched line by line
// ---------------------------------------------------------------------------------------------

/// A `replicate` child whose stderr lines arrive on a channel as they are written (Rust's
/// stderr is unbuffered). Killed on drop.
struct Watched {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Watched {
    fn start(args: &[String]) -> Watched {
        let mut child = replicate_command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start replicate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(String::new()));
        let l2 = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push_str(&line);
                l2.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        Watched {
            child: Some(child),
            lines: rx,
            log,
            reader: Some(reader),
        }
    }

    /// Wait for a stderr line containing `needle`; returns it, or None if the process closed
    /// stderr (exited) first. Panics after `secs`.
    fn wait_line(&mut self, needle: &str, secs: u64) -> Option<String> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "replicate printed no {needle:?} within {secs} s:\n{}",
                self.log()
            );
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// SIGKILL (if still running) and reap; returns the exit status.
    fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let st = child.wait().expect("wait for replicate");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        st
    }

    /// Wait for the process to exit by itself; panics after `secs`.
    fn wait(&mut self, secs: u64) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                self.child = None;
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return st;
            }
            assert!(
                Instant::now() < until,
                "replicate did not exit within {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Markers `replicate --verbose` prints on stderr, in order.
const M_PREPARE: &str = ">>>>>>>>>>>>> Prepare Snapshot";
const M_APPLIED: &str = "Snapshot applied: change set ";

/// The change set id in a "Snapshot applied: change set N, ..." line.
fn applied_id(line: &str) -> i64 {
    line.split(M_APPLIED)
        .nth(1)
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Samples what a running `replicate`'s backends are doing (pg_stat_activity), over
/// connections opened beforehand. Taken right after a SIGKILL it still shows the statements
/// the killed run had in progress (a busy backend notices its client is gone only when the
/// statement ends); nothing active means the kill landed between statements (or before the
/// connections were made).
struct Activity {
    master: postgres::Client,
    slave: postgres::Client,
}

impl Activity {
    fn new(p: &Pair) -> Activity {
        Activity {
            master: p.master.connect("postgres"),
            slave: p.slave.connect("postgres"),
        }
    }

    /// The phase of the cycle the servers are in, from the statements they are running.
    fn sample(&mut self) -> &'static str {
        const Q: &str = "SELECT coalesce(string_agg(state || ':' || left(query, 300), ' | '), '') \
                         FROM pg_stat_activity WHERE application_name = 'replicate'";
        let m: String = self
            .master
            .query_one(Q, &[])
            .map(|r| r.get(0))
            .unwrap_or_default();
        let s: String = self
            .slave
            .query_one(Q, &[])
            .map(|r| r.get(0))
            .unwrap_or_default();
        let active = |text: &str, what: &str| {
            text.split(" | ")
                .any(|x| x.starts_with("active:") && x.contains(what))
        };
        if active(&m, "rserv_prepare") {
            "prepare"
        } else if active(&m, "COPY (") {
            "transfer"
        } else if active(&s, "rserv_apply_merge") || active(&s, "COPY ") {
            "apply"
        } else if active(&s, "COMMIT") {
            "apply commit"
        } else if active(&m, "COMMIT") {
            "prepare commit"
        } else if active(&m, "rserv_confirm") {
            "confirm"
        } else if active(&m, "rserv_clean_log") {
            "clean-up"
        } else {
            "between statements"
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) SIGKILL at random points
// ---------------------------------------------------------------------------------------------

const KILL_BULK: i64 = 50_000;
const MIN_KILLS: usize = 20;
const MAX_KILL_ROUNDS: usize = 40;

/// `replicate MASTERDB SLAVEDB` killed with SIGKILL at least 20 times, at random delays and
/// just after the markers it prints (before prepare, during prepare/transfer/apply, between
/// apply and confirm, during clean-up), each time with a large change set pending (all of
/// `bulk` plus the transfers). After each kill the slave is consistent, a normal run brings
/// it to the master's version; at the end master and slave are equal.
#[test]
fn sigkill_at_random_points() {
    let mut rng = Rng::for_test("RSERV_FAULT_SEED", 0x5eed_0007, "sigkill_at_random_points");
    let p = setup("kill", KILL_BULK);
    let writers = Writers::start(&p.master, 2, rng.next_u64());
    let args = one_shot_args(&p);

    // one normal run of a full change set: how long a cycle takes here
    let mut v = bulk_update(&p.master);
    let t0 = Instant::now();
    normal_run(&p, &args, KILL_BULK, v, "(calibration)");
    // kept as a running average of the normal runs below, so kill delays follow the machine
    let mut cycle_ms = (t0.elapsed().as_millis() as u64).max(50);
    eprintln!("one cycle with {KILL_BULK} bulk rows: {cycle_ms} ms");

    let mut activity = Activity::new(&p);
    let mut phases: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut doing_hist: BTreeMap<&'static str, usize> = BTreeMap::new();
    let (mut kills, mut rounds) = (0usize, 0usize);
    let covered = |ph: &BTreeMap<&str, usize>| {
        ph.contains_key("prepare/transfer") || ph.contains_key("apply (master committed)")
    };
    let covered_late = |ph: &BTreeMap<&str, usize>| {
        ph.contains_key("confirm (slave applied)") || ph.contains_key("clean-up (confirmed)")
    };
    while kills < MIN_KILLS || !covered(&phases) || !covered_late(&phases) {
        assert!(
            rounds < MAX_KILL_ROUNDS,
            "{rounds} rounds gave only {kills} kills landing in {phases:?}"
        );
        rounds += 1;
        v = bulk_update(&p.master);
        let before = observe(&p.slave, KILL_BULK, "before a kill");
        let (m_prepared_before, _) = master_syncs(&p.master);
        let mut r = Watched::start(&args);
        let how = match rng.below_u64(6) {
            0 | 1 => {
                let d = rng.millis(0, cycle_ms * 11 / 10);
                std::thread::sleep(d);
                format!("after {} ms", d.as_millis())
            }
            2 | 3 => {
                let d = rng.millis(0, cycle_ms * 8 / 10);
                r.wait_line(M_PREPARE, 120);
                std::thread::sleep(d);
                format!("{} ms after prepare started", d.as_millis())
            }
            4 => {
                r.wait_line(M_APPLIED, 120);
                "right after the apply".to_string()
            }
            _ => {
                let d = rng.millis(0, (cycle_ms / 5).max(20));
                r.wait_line(M_APPLIED, 120);
                std::thread::sleep(d);
                format!("{} ms after the apply", d.as_millis())
            }
        };
        let status = r.kill();
        // right after the kill: a backend busy with a statement keeps running it until it
        // notices its client is gone, so this shows where the kill landed
        let doing = activity.sample();
        let log = r.log();
        // observe once at once, once when the killed run's backends are gone
        observe(&p.slave, KILL_BULK, &format!("right after a kill {how}"));
        wait_backends_gone(&p.master);
        wait_backends_gone(&p.slave);
        let after = observe(&p.slave, KILL_BULK, &format!("after a kill {how}"));
        let (m_prepared, m_confirmed) = master_syncs(&p.master);
        let phase = if status.signal() != Some(9) {
            assert!(
                status.success(),
                "replicate failed before it was killed ({how}): {status}\n{log}"
            );
            "finished before the kill"
        } else if !log.contains(M_PREPARE) {
            "before prepare"
        } else if after.syncid == before.syncid && m_prepared == m_prepared_before {
            "prepare/transfer"
        } else if after.syncid == before.syncid {
            "apply (master committed)"
        } else if m_confirmed < after.syncid {
            "confirm (slave applied)"
        } else {
            "clean-up (confirmed)"
        };
        if status.signal() == Some(9) {
            kills += 1;
            *doing_hist.entry(doing).or_default() += 1;
        }
        *phases.entry(phase).or_default() += 1;
        // the slave holds all of a change set or none of it
        if after.syncid == before.syncid {
            assert_eq!(
                after.bulk_v, before.bulk_v,
                "killed {how} ({phase}): the slave changed without a new sync id\n{log}"
            );
        } else {
            assert_eq!(after.bulk_v, Some(v), "killed {how} ({phase}): new sync id {} but bulk not at the master's version\n{log}", after.syncid);
        }
        let t0 = Instant::now();
        normal_run(
            &p,
            &args,
            KILL_BULK,
            v,
            &format!("after a kill {how} ({phase})"),
        );
        if after.syncid == before.syncid {
            // that run carried the whole bulk change set: a full cycle
            cycle_ms = (cycle_ms + (t0.elapsed().as_millis() as u64).max(50)) / 2;
        }
    }
    let transfers = settle(&p, writers, &args, KILL_BULK, v);
    eprintln!(
        "sigkill: {kills} kills in {rounds} rounds (cycle ~{cycle_ms} ms); by outcome {phases:?}; \
         by what the servers were doing at the kill {doing_hist:?}; {transfers} transfers"
    );
}

// ---------------------------------------------------------------------------------------------
// (b) master or slave crashed (pg_ctl -m immediate) mid-run
// ---------------------------------------------------------------------------------------------

const CRASH_BULK: i64 = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Master,
    Slave,
}

/// Where in a run the server goes down.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// this long after "Prepare Snapshot": during prepare, transfer or apply
    AfterPrepare(Duration),
    /// right after "Snapshot applied": the slave committed, the master is not told yet
    AfterApply,
    /// this long after the start
    Timer(Duration),
}

/// `replicate` runs while one server is stopped with `pg_ctl -m immediate` (at several
/// points of the run) and started again. The harness runs the clusters with
/// synchronous_commit=off: what rserv itself commits (prepare on the master, apply on the
/// slave) must survive anyway. After each crash the slave holds a whole change set or none,
/// a crash right after "Snapshot applied: change set N" keeps N (slave) or its prepared
/// record (master), and a normal run catches up without skipping anything.
fn crash_mid_run(side: Side) {
    let name = match side {
        Side::Master => "crash_master_mid_run",
        Side::Slave => "crash_slave_mid_run",
    };
    let mut rng = Rng::for_test("RSERV_FAULT_SEED", 0x5eed_0007, name);
    let p = setup(if side == Side::Master { "crm" } else { "crs" }, CRASH_BULK);
    let writers = Writers::start(&p.master, 2, rng.next_u64());
    let args = one_shot_args(&p);
    let mut v = bulk_update(&p.master);
    let t0 = Instant::now();
    normal_run(&p, &args, CRASH_BULK, v, "(calibration)");
    let cycle_ms = (t0.elapsed().as_millis() as u64).max(50);
    let points = [
        CrashPoint::AfterPrepare(rng.millis(0, cycle_ms / 3)),
        CrashPoint::AfterApply,
        CrashPoint::AfterPrepare(rng.millis(cycle_ms / 3, cycle_ms * 3 / 4)),
        CrashPoint::Timer(rng.millis(0, cycle_ms)),
    ];
    let victim = match side {
        Side::Master => &p.master,
        Side::Slave => &p.slave,
    };
    let mut report = Vec::new();
    for point in points {
        v = bulk_update(&p.master);
        let before = observe(&p.slave, CRASH_BULK, "before a crash");
        let mut r = Watched::start(&args);
        let mut applied = None;
        match point {
            CrashPoint::AfterPrepare(d) => {
                r.wait_line(M_PREPARE, 120);
                std::thread::sleep(d);
            }
            CrashPoint::AfterApply => {
                let line = r
                    .wait_line(M_APPLIED, 120)
                    .unwrap_or_else(|| panic!("replicate ended before applying:\n{}", r.log()));
                applied = Some(applied_id(&line));
            }
            CrashPoint::Timer(d) => std::thread::sleep(d),
        }
        victim.stop_immediate();
        // replicate must notice and end by itself
        let status = r.wait(120);
        let log = r.log();
        victim.start_again();
        let after = observe(
            &p.slave,
            CRASH_BULK,
            &format!("after a {side:?} crash at {point:?}"),
        );
        if let Some(n) = applied {
            match side {
                Side::Slave => assert!(
                    after.syncid >= n,
                    "BUG: the slave committed change set {n} (and may have told the master), \
                     but after a crash it is at {}: the apply was not durable\n{log}",
                    after.syncid
                ),
                Side::Master => {
                    let (prepared, _) = master_syncs(&p.master);
                    assert!(
                        prepared >= n,
                        "BUG: change set {n} was prepared and applied, but after a master crash \
                         the master's highest sync id is {prepared}: the prepare was not durable\n{log}"
                    );
                }
            }
        }
        if after.syncid == before.syncid {
            assert_eq!(
                after.bulk_v, before.bulk_v,
                "{side:?} crash at {point:?}: the slave changed without a new sync id\n{log}"
            );
        } else {
            assert_eq!(after.bulk_v, Some(v), "{side:?} crash at {point:?}: new sync id {} but bulk not at the master's version\n{log}", after.syncid);
        }
        let st = normal_run(
            &p,
            &args,
            CRASH_BULK,
            v,
            &format!("after a {side:?} crash at {point:?}"),
        );
        assert!(st.syncid > after.syncid || after.bulk_v == Some(v));
        report.push(format!(
            "{point:?}: replicate {}, slave {}",
            status
                .code()
                .map_or_else(|| status.to_string(), |c| format!("exit {c}")),
            if after.syncid == before.syncid {
                "unchanged"
            } else {
                "at the new change set"
            }
        ));
    }
    let transfers = settle(&p, writers, &args, CRASH_BULK, v);
    eprintln!("{name}: {report:?}; {transfers} transfers");
}

#[test]
fn crash_master_mid_run() {
    crash_mid_run(Side::Master);
}

#[test]
fn crash_slave_mid_run() {
    crash_mid_run(Side::Slave);
}

// ---------------------------------------------------------------------------------------------
// (c) connections cut mid-transfer
// ---------------------------------------------------------------------------------------------

const CUT_BULK: i64 = 50_000;
const CUT_ROUNDS: usize = 6;

/// `replicate` arguments that go through the proxies over TCP.
fn proxied_args(mp: &Proxy, sp: &Proxy, verbose: bool) -> Vec<String> {
    let mut a = vec![
        "--masterhost=127.0.0.1".to_string(),
        format!("--masterport={}", mp.port()),
        "--slavehost=127.0.0.1".to_string(),
        format!("--slaveport={}", sp.port()),
        "--user=postgres".to_string(),
    ];
    if verbose {
        a.push("--verbose".into());
    }
    a.extend([DB.to_string(), DB.to_string()]);
    a
}

/// The server's CommandComplete message for COMMIT (tag "COMMIT", length 11).
const COMMIT_DONE: &[u8] = b"C\x00\x00\x00\x0bCOMMIT\x00";

/// Where a cut lands in `connection_cut_mid_transfer`.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// the master connection, after this % of a change set was read from it
    MasterBytes(u64),
    /// the slave connection, after this % of a change set was written to it
    SlaveBytes(u64),
    /// the master committed the prepare; its acknowledgement is lost
    MasterCommitAck,
    /// the slave committed the apply; its acknowledgement is lost
    SlaveCommitAck,
}

/// `replicate` through TCP proxies in front of the master and the slave. The proxy cuts every
/// connection once a random share (5-95 %) of a full change set's bytes has gone through (on
/// the master side while the change set is read, on the slave side while it is written), or
/// just before the acknowledgement of the master's prepare COMMIT or the slave's apply
/// COMMIT. The run must fail, the slave hold all of the change set or none (none when cut
/// mid-transfer or before the master's ack, all when only the slave's ack was lost), and the
/// next run be clean.
#[test]
fn connection_cut_mid_transfer() {
    let mut rng = Rng::for_test(
        "RSERV_FAULT_SEED",
        0x5eed_0007,
        "connection_cut_mid_transfer",
    );
    let p = setup("cut", CUT_BULK);
    let mp = Proxy::start(p.master.port());
    let sp = Proxy::start(p.slave.port());
    let args = proxied_args(&mp, &sp, false);
    let writers = Writers::start(&p.master, 2, rng.next_u64());
    // a full change set through the proxies: its size in each direction
    let mut v = bulk_update(&p.master);
    let (m0, s0) = (mp.bytes(Dir::Down), sp.bytes(Dir::Up));
    normal_run(&p, &args, CUT_BULK, v, "(calibration)");
    let (m_bytes, s_bytes) = (mp.bytes(Dir::Down) - m0, sp.bytes(Dir::Up) - s0);
    eprintln!(
        "a change set of {CUT_BULK} rows: {m_bytes} bytes from the master, {s_bytes} to the slave"
    );
    let mut cuts = Vec::new();
    for _ in 0..CUT_ROUNDS / 2 {
        cuts.push(Cut::MasterBytes(5 + rng.below_u64(91)));
        cuts.push(Cut::SlaveBytes(5 + rng.below_u64(91)));
    }
    cuts.insert(2, Cut::SlaveCommitAck);
    cuts.insert(5, Cut::MasterCommitAck);
    let mut report = Vec::new();
    for cut in cuts {
        v = bulk_update(&p.master);
        let before = observe(&p.slave, CUT_BULK, "before a cut");
        let proxy = match cut {
            Cut::MasterBytes(_) | Cut::MasterCommitAck => &mp,
            Cut::SlaveBytes(_) | Cut::SlaveCommitAck => &sp,
        };
        match cut {
            Cut::MasterBytes(share) => mp.cut_after(Dir::Down, m_bytes * share / 100),
            Cut::SlaveBytes(share) => sp.cut_after(Dir::Up, s_bytes * share / 100),
            Cut::MasterCommitAck | Cut::SlaveCommitAck => proxy.cut_on(Dir::Down, COMMIT_DONE),
        }
        let fired = proxy.fired();
        let out = run(&args);
        proxy.disarm();
        let what = format!("cut {cut:?}");
        assert_eq!(
            proxy.fired(),
            fired + 1,
            "{what}: the cut did not happen\n{}",
            text(&out)
        );
        assert!(
            !out.status.success(),
            "{what}: replicate reported success\n{}",
            text(&out)
        );
        // a lost connection is a failed operation (1) or a connection error (3), never a
        // damaged snapshot (4)
        assert!(
            matches!(out.status.code(), Some(1) | Some(3)),
            "{what}: wrong exit status\n{}",
            text(&out)
        );
        let after = observe(&p.slave, CUT_BULK, &format!("after {what}"));
        if after.syncid == before.syncid {
            assert_eq!(
                after.bulk_v,
                before.bulk_v,
                "{what}: the slave changed without a new sync id\n{}",
                text(&out)
            );
        } else {
            assert_eq!(
                after.bulk_v,
                Some(v),
                "{what}: new sync id {} but bulk not at the master's version\n{}",
                after.syncid,
                text(&out)
            );
        }
        // the slave commits only after the master did, and a lost ack changes nothing there
        let applied = after.syncid != before.syncid;
        assert_eq!(
            applied,
            matches!(cut, Cut::SlaveCommitAck),
            "{what}: the slave is {} the new change set\n{}",
            if applied { "at" } else { "not at" },
            text(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        report.push(format!(
            "{cut:?}: exit {:?}, slave {}, {:?}",
            out.status.code(),
            if applied {
                "at the new change set"
            } else {
                "unchanged"
            },
            err.lines().last().unwrap_or_default()
        ));
        normal_run(&p, &args, CUT_BULK, v, &format!("after {what}"));
    }
    let transfers = settle(&p, writers, &args, CUT_BULK, v);
    eprintln!("connection_cut_mid_transfer: {report:#?}\n{transfers} transfers");
}

// ---------------------------------------------------------------------------------------------
// the daemon through a proxy that keeps cutting
// ---------------------------------------------------------------------------------------------

const DAEMON_BULK: i64 = 30_000;
const DAEMON_CUTS: usize = 8;

struct Observer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    seen: Arc<Mutex<ObserverStats>>,
}

#[derive(Default, Debug, Clone)]
struct ObserverStats {
    observations: u64,
    syncid: i64,
    syncids: u64,
    violations: Vec<String>,
}

impl Observer {
    fn start(slave: &Cluster, bulk_rows: i64) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(ObserverStats::default()));
        let (st, sn) = (stop.clone(), seen.clone());
        let (sock, port) = (slave.socket_dir().to_path_buf(), slave.port());
        let handle = std::thread::spawn(move || {
            let mut c = try_connect(&sock, port).expect("observer: connect to the slave");
            while !st.load(Ordering::Relaxed) {
                let msgs = c.simple_query(OBSERVE_SQL);
                let mut s = sn.lock().unwrap();
                match msgs {
                    Err(e) => s.violations.push(format!("observer query failed: {e}")),
                    Ok(msgs) => {
                        for m in msgs {
                            if let postgres::SimpleQueryMessage::Row(row) = m {
                                let vals: Vec<Option<String>> = (0..row.len())
                                    .map(|i| row.get(i).map(str::to_owned))
                                    .collect();
                                s.observations += 1;
                                match check_row(&vals, bulk_rows) {
                                    Ok(state) => {
                                        if state.syncid != s.syncid {
                                            s.syncids += 1;
                                            s.syncid = state.syncid;
                                        }
                                    }
                                    Err(e) => s.violations.push(e),
                                }
                            }
                        }
                    }
                }
                drop(s);
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        Observer {
            stop,
            handle: Some(handle),
            seen,
        }
    }

    fn stats(&self) -> ObserverStats {
        self.seen.lock().unwrap().clone()
    }

    fn finish(mut self) -> ObserverStats {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().expect("observer thread");
        }
        self.stats()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn digest(c: &Cluster, table: &str) -> String {
    c.query_strings(
        DB,
        &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ';' ORDER BY t::text)), '') FROM {table} t"),
    )[0][0]
        .clone()
        .unwrap_or_default()
}

/// `replicate run` through proxies in front of the master and the slave, under money
/// transfers and whole-table updates of `bulk`; the proxies cut its connections again and
/// again (at random moments, and mid-transfer of a large change set by volume). The daemon
/// reconnects each time, every slave state observed meanwhile is consistent, and once the
/// writes stop the slave ends equal to the master.
#[test]
fn daemon_reconnects_through_cuts() {
    let mut rng = Rng::for_test(
        "RSERV_FAULT_SEED",
        0x5eed_0007,
        "daemon_reconnects_through_cuts",
    );
    let p = setup("dcut", DAEMON_BULK);
    let mp = Proxy::start(p.master.port());
    let sp = Proxy::start(p.slave.port());
    let d = Daemon::start(&[
        "run".into(),
        "--interval=0.2".into(),
        "--master".into(),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={DB}",
            mp.port()
        ),
        "--slave".into(),
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={DB}",
            sp.port()
        ),
        DB.into(),
        DB.into(),
    ]);
    let observer = Observer::start(&p.slave, DAEMON_BULK);
    let writers = Writers::start(&p.master, 2, rng.next_u64());
    let mut kinds = Vec::new();
    for i in 0..DAEMON_CUTS {
        // connected again, and a cycle completed since the last cut
        let last = observer.stats().syncid;
        eventually(
            120,
            &format!("the daemon to reconnect and apply before cut {i}"),
            || mp.live() >= 1 && sp.live() >= 1 && observer.stats().syncid > last,
        );
        let kind = rng.below_u64(4);
        match kind {
            0 | 1 => {
                let (proxy, dir) = if kind == 0 {
                    (&mp, Dir::Down)
                } else {
                    (&sp, Dir::Up)
                };
                let fired = proxy.fired();
                bulk_update(&p.master);
                proxy.cut_after(dir, 100_000 + rng.below_u64(1_000_000));
                // the daemon moves the whole bulk change set; if it got through before the
                // budget ran out the cut lands in a later change set, or not at all
                let until = Instant::now() + Duration::from_secs(20);
                while proxy.fired() == fired && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                proxy.disarm();
                kinds.push(if proxy.fired() > fired {
                    format!(
                        "{} mid-transfer",
                        if kind == 0 { "master" } else { "slave" }
                    )
                } else {
                    "armed, not fired".to_string()
                });
            }
            _ => {
                std::thread::sleep(rng.millis(0, 500));
                let both = rng.below_u64(3) == 0;
                let n = if kind == 2 || both { mp.cut() } else { 0 }
                    + if kind == 3 || both { sp.cut() } else { 0 };
                kinds.push(format!(
                    "{} at random ({n} connections)",
                    if both {
                        "both"
                    } else if kind == 2 {
                        "master"
                    } else {
                        "slave"
                    }
                ));
            }
        }
    }
    let transfers = writers.stop();
    eventually(120, "the slave equal to the master after the cuts", || {
        digest(&p.master, "account") == digest(&p.slave, "account")
            && digest(&p.master, "bulk") == digest(&p.slave, "bulk")
    });
    let seen = observer.finish();
    assert!(
        seen.violations.is_empty(),
        "inconsistent slave states observed: {:?}",
        seen.violations
    );
    assert!(seen.observations > 0);
    p.assert_equal("account");
    p.assert_equal("bulk");
    observe(&p.slave, DAEMON_BULK, "at the end");
    let log = d.log();
    let interrupted = log.matches("replication interrupted").count();
    assert!(interrupted >= 1, "the daemon noticed no cut:\n{log}");
    let status = d.stop();
    assert!(
        status.success(),
        "replicate run after SIGTERM: {status}\n{log}"
    );
    eprintln!(
        "daemon: cuts {kinds:?}; {} connections cut; {interrupted} interruptions logged; {} slave states observed ({} sync ids); {transfers} transfers",
        mp.cut_count() + sp.cut_count(),
        seen.observations,
        seen.syncids
    );
}
