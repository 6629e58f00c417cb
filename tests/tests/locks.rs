//! Lock waits on the slave (issue 14): a local session holds `LOCK TABLE … IN ACCESS
//! EXCLUSIVE MODE` on a received table and leaves its transaction open.
//!
//! * one-shot `replicate` gives up after `--lock-timeout`, exits 1 naming the table and the
//!   holder's pid, and leaves the slave as it was; once the lock is gone a run catches up;
//! * `replicate run` logs the holder (pid, user, application, state, query), counts the timeout
//!   in its metrics, retries with backoff, and catches up once the lock is released;
//! * `replicate run` blocked on the lock (no lock timeout) stops on SIGTERM: the blocked change
//!   set is cancelled and rolled back, the slave unchanged.
//!
//! Waits are generous timeouts that end as soon as the condition holds. While the lock is held
//! the test reads only the slave's sync id (reading `t` would wait for the lock too).

use postgres::Client;
use rserv_tests::daemon::{digest, eventually, free_port, http_get, metric, try_one, Daemon};
use rserv_tests::pair::{assert_ok, Pair, DB};
use std::time::Instant;

/// A slave session holding ACCESS EXCLUSIVE on `t` in an open transaction; returns it and its
/// pid.
fn hold_lock(p: &Pair) -> (Client, i32) {
    let mut c = p.slave.connect(DB);
    let pid: i32 = c
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    // the lock is the session's last query: the holder's description shows it
    c.batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .expect("take the lock");
    (c, pid)
}

fn pair_with_t(name: &str) -> Pair {
    let p = Pair::start(name);
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50) g",
    );
    p.sync();
    p
}

fn slave_syncid(p: &Pair) -> String {
    try_one(
        &p.slave,
        DB,
        "SELECT coalesce(max(syncid), 0)::text FROM _rserv_slave_sync_",
    )
    .unwrap_or_default()
}

/// The slave's sync id and the digest of its `t`.
fn slave_state(p: &Pair) -> (String, Option<String>) {
    (slave_syncid(p), digest(&p.slave, DB, "t"))
}

/// End the lock holder's session; the slave must still be as it was `before` (nothing of the
/// change set that waited), and a run then brings it up to date.
fn release_then_catch_up(p: &Pair, holder: Client, before: (String, Option<String>)) {
    drop(holder);
    // the holder's session ends (its lock with it) once the server notices
    eventually(30, "the lock released", || {
        try_one(
            &p.slave,
            DB,
            "SELECT count(*)::text FROM pg_locks WHERE relation = 't'::regclass AND mode = 'AccessExclusiveLock'",
        )
        .as_deref()
            == Some("0")
    });
    assert_eq!(
        slave_state(p),
        before,
        "the change set that waited left something behind"
    );
    assert_ok(&p.replicate(&[DB, DB]), "replicate after the lock is gone");
    p.assert_equal("t");
}

fn in_sync(p: &Pair) -> bool {
    let m = digest(&p.master, DB, "t");
    m.is_some() && m == digest(&p.slave, DB, "t")
}

#[test]
fn one_shot_replicate_names_the_lock_holder() {
    let p = pair_with_t("lk1");
    let before = slave_state(&p);
    let (holder, pid) = hold_lock(&p);
    p.master.execute(DB, "UPDATE t SET v = 'y' WHERE id <= 5");
    let started = Instant::now();
    let out = p.replicate(&["--lock-timeout=2", DB, DB]);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for needle in [
        "gave up waiting 2s (lock_timeout) for a lock on public.t".to_string(),
        format!("held by pid {pid} (AccessExclusiveLock held by user postgres, application \"rserv-tests\", idle in transaction"),
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE".to_string(),
        "nothing of it was applied".to_string(),
        format!("pg_terminate_backend({pid})"),
    ] {
        assert!(err.contains(&needle), "{needle:?} not in:\n{err}");
    }
    release_then_catch_up(&p, holder, before);
    eprintln!("one-shot gave up after {:.1} s", took.as_secs_f64());
}

#[test]
fn the_daemon_logs_the_holder_retries_and_catches_up() {
    let p = pair_with_t("lk2");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = p.conn_args();
    args.extend([
        "run".into(),
        "--interval=0.2".into(),
        "--lock-timeout=1".into(),
        format!("--metrics-addr={metrics}"),
        DB.into(),
        DB.into(),
    ]);
    let d = Daemon::start(&args);
    let syncid = slave_syncid(&p);
    let (mut holder, pid) = hold_lock(&p);
    p.master.execute(DB, "UPDATE t SET v = 'y' WHERE id <= 5");
    eventually(120, "the lock wait logged, twice (a retry)", || {
        d.log().matches("lock wait timed out on the slave").count() >= 2
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("lock wait timed out on the slave"))
        .unwrap_or_default();
    for needle in [
        format!("holder_pid={pid}"),
        "holder_user=\"postgres\"".to_string(),
        "holder_application=\"rserv-tests\"".to_string(),
        "holder_state=\"idle in transaction\"".to_string(),
        "LOCK TABLE t IN ACCESS EXCLUSIVE MODE".to_string(),
        "table=\"public.t\"".to_string(),
    ] {
        assert!(line.contains(&needle), "{needle:?} not in:\n{line}");
    }
    let body = http_get(&metrics);
    assert!(
        metric(&body, "rserv_lock_timeouts_total", &[]).is_some_and(|n| n >= 2.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "rserv_connected", &[("side", "slave")]),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "rserv_connected", &[("side", "master")]),
        Some(1.0),
        "{body}"
    );
    assert!(
        metric(&body, "rserv_pending_changes", &[]).is_some_and(|n| n >= 5.0),
        "{body}"
    );
    assert_eq!(slave_syncid(&p), syncid, "applied through the lock");
    holder.batch_execute("ROLLBACK").expect("release the lock");
    eventually(120, "the slave caught up once the lock is released", || {
        in_sync(&p)
    });
    eventually(30, "the slave's session up again in the metrics", || {
        metric(&http_get(&metrics), "rserv_connected", &[("side", "slave")]) == Some(1.0)
    });
    assert!(d.stop().success());
}

#[test]
fn sigterm_cancels_a_blocked_change_set() {
    let p = pair_with_t("lk3");
    let mut args = p.conn_args();
    args.extend([
        "run".into(),
        "--interval=0.2".into(),
        // wait for the lock forever: only SIGTERM can end the wait
        "--lock-timeout=0".into(),
        DB.into(),
        DB.into(),
    ]);
    let d = Daemon::start(&args);
    let before = slave_state(&p);
    let (holder, _) = hold_lock(&p);
    p.master.execute(DB, "UPDATE t SET v = 'y' WHERE id <= 5");
    eventually(120, "the daemon's apply waiting for the lock", || {
        try_one(
            &p.slave,
            DB,
            "SELECT count(*)::text FROM pg_stat_activity \
             WHERE application_name = 'replicate' AND wait_event_type = 'Lock'",
        )
        .as_deref()
            == Some("1")
    });
    let asked = Instant::now();
    // Daemon::stop sends SIGTERM and fails the test unless the process exits within a minute
    let status = d.stop();
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status}");
    eventually(60, "the cancelled apply gone from the slave", || {
        try_one(
            &p.slave,
            DB,
            "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'replicate'",
        )
        .as_deref()
            == Some("0")
    });
    release_then_catch_up(&p, holder, before);
    eprintln!("stopped {:.1} s after SIGTERM", took.as_secs_f64());
}
