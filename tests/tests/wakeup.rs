//! Waking the daemon (`src/wakeup.rs`): writers send `NOTIFY rserv` only while a daemon waits
//! (holds rserv's wake lock), a daemon going idle waits for the commits in flight of writers
//! that found it busy, and so an idle daemon never misses a commit however the commits fall
//! against its cycles. Nothing here asserts speed: a lost wake-up shows as a daemon with a
//! ten-minute poll interval that never catches up.

use postgres::Client;
use rserv_tests::daemon::{digest, eventually, try_one, Daemon};
use rserv_tests::pair::{start_clusters, DB};
use rserv_tests::rng::Rng;
use rserv_tests::roles::{self, connect_as, try_value, REPL};
use rserv_tests::Cluster;
use std::time::Duration;

/// `pg_locks.objsubid` of rserv's wake lock (an advisory lock class SQL cannot name).
const WAKE_CLASS: i32 = 0x7273;

/// How many `NOTIFY rserv` reached `listener`: waits up to `wait` for the first, then takes
/// those that follow within 200 ms of each other.
fn heard(listener: &mut Client, wait: Duration) -> usize {
    use postgres::fallible_iterator::FallibleIterator;
    let mut notes = listener.notifications();
    let mut n = 0;
    let mut window = wait;
    while let Ok(Some(note)) = notes.timeout_iter(window).next() {
        assert_eq!(note.channel(), "rserv");
        n += 1;
        window = Duration::from_millis(200);
    }
    n
}

fn listener(m: &Cluster) -> Client {
    let mut c = m.connect(DB);
    c.batch_execute("LISTEN rserv").expect("LISTEN rserv");
    c
}

fn wake_locks(m: &Cluster, mode: &str) -> i64 {
    try_one(
        m,
        DB,
        &format!(
            "SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND objsubid = {WAKE_CLASS} \
             AND mode = '{mode}' AND granted"
        ),
    )
    .and_then(|v| v.parse().ok())
    .unwrap_or(-1)
}

fn backend_waits(m: &Cluster, pid: i32, event: &str) -> bool {
    try_one(
        m,
        DB,
        &format!("SELECT wait_event FROM pg_stat_activity WHERE pid = {pid}"),
    )
    .is_some_and(|e| e == event)
}

fn set_up(m: &Cluster) {
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, w int); SELECT rserv_add_table('t');
         CREATE TABLE other (id int)",
    );
}

#[test]
fn writers_notify_only_while_a_daemon_waits() {
    let c = start_clusters(&["wk-n"]);
    let m = &c[0];
    set_up(m);
    let mut d = listener(m);
    let mut w = m.connect(DB);
    let quiet = Duration::from_millis(500);
    let wait = Duration::from_secs(10);

    w.batch_execute("INSERT INTO t VALUES (1)").unwrap();
    assert_eq!(
        heard(&mut d, quiet),
        0,
        "a commit notified while no daemon waited"
    );

    let on: bool = d
        .query_one("SELECT rserv_wake_on_commit(true)", &[])
        .unwrap()
        .get(0);
    assert!(on);
    assert_eq!(
        wake_locks(m, "ShareLock"),
        1,
        "the waiting daemon holds the wake lock"
    );
    w.batch_execute("INSERT INTO t VALUES (2)").unwrap();
    assert!(
        heard(&mut d, wait) >= 1,
        "a commit did not wake the waiting daemon"
    );
    // nothing for the slaves: no wake-up
    w.batch_execute("INSERT INTO other VALUES (1)").unwrap();
    w.batch_execute("BEGIN; INSERT INTO t VALUES (3); ROLLBACK")
        .unwrap();
    assert_eq!(heard(&mut d, quiet), 0, "woken for nothing");
    // a second daemon waits alongside (the lock's SHARE mode), and both are woken
    let mut d2 = listener(m);
    d2.batch_execute("SET statement_timeout = '10s'").unwrap();
    d2.query_one("SELECT rserv_wake_on_commit(true)", &[])
        .expect("a second idle daemon waits alongside the first");
    assert_eq!(wake_locks(m, "ShareLock"), 2);
    w.batch_execute("UPDATE t SET w = 1 WHERE id = 1").unwrap();
    assert!(heard(&mut d, wait) >= 1 && heard(&mut d2, wait) >= 1);
    // taking it twice holds it once: one release lets writers go quiet again
    d.query_one("SELECT rserv_wake_on_commit(true)", &[])
        .unwrap();
    for daemon in [&mut d, &mut d2] {
        let on: bool = daemon
            .query_one("SELECT rserv_wake_on_commit(false)", &[])
            .unwrap()
            .get(0);
        assert!(!on);
    }
    assert_eq!(wake_locks(m, "ShareLock"), 0);
    w.batch_execute("DELETE FROM t WHERE id = 2").unwrap();
    assert_eq!(
        heard(&mut d, quiet),
        0,
        "notified after every daemon went busy"
    );
    // writers that found every daemon busy held nothing past their commit
    assert_eq!(wake_locks(m, "RowExclusiveLock"), 0);
}

/// The race the wake lock closes: a writer that found every daemon busy is committing when
/// the daemon goes idle. Going idle must wait until that commit is visible (or the daemon's
/// last look would miss it and no notification would come), and writers that commit while the
/// daemon waits for the lock must notify. A synchronous standby that never answers holds the
/// writer inside its commit, after the wake lock and before visibility.
#[test]
fn going_idle_waits_for_commits_in_flight() {
    let c = start_clusters(&["wk-r"]);
    let m = &c[0];
    set_up(m);
    m.execute(
        "postgres",
        "ALTER SYSTEM SET synchronous_standby_names = 'rserv_nobody'",
    );
    m.execute("postgres", "SELECT pg_reload_conf()");
    m.execute(
        "postgres",
        &format!("ALTER DATABASE {DB} SET synchronous_commit = local"),
    );

    let mut w = m.connect(DB);
    let wpid: i32 = w.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let writer = std::thread::spawn(move || {
        w.batch_execute("SET synchronous_commit = on; INSERT INTO t VALUES (10)")
            .expect("the held commit completes (locally) once cancelled");
    });
    eventually(30, "the writer held in its commit", || {
        backend_waits(m, wpid, "SyncRep")
    });
    assert_eq!(
        try_one(m, DB, "SELECT count(*)::text FROM t").as_deref(),
        Some("0")
    );

    let mut d = listener(m);
    d.batch_execute("SET lock_timeout = '300ms'").unwrap();
    let err = d
        .query_one("SELECT rserv_wake_on_commit(true)", &[])
        .expect_err("going idle did not wait for a commit in flight");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("55P03"),
        "going idle failed otherwise: {err}"
    );
    d.batch_execute("SET lock_timeout = 0").unwrap();
    let dpid: i32 = d.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut l = listener(m);
    let daemon = std::thread::spawn(move || {
        let on: bool = d
            .query_one("SELECT rserv_wake_on_commit(true)", &[])
            .expect("going idle")
            .get(0);
        let seen = d
            .query_one("SELECT count(*) FROM t WHERE id = 10", &[])
            .expect("the daemon's next look")
            .get::<_, i64>(0);
        (on, seen)
    });
    eventually(30, "the daemon queued for the wake lock", || {
        backend_waits(m, dpid, "advisory")
    });
    // a writer committing meanwhile cannot count on the daemon looking again: it notifies
    // (bounded: a writer that notified while held in its commit would hold PostgreSQL's
    // notify lock, and this one would wait for it forever)
    let mut w2 = m.connect(DB);
    w2.batch_execute("SET lock_timeout = '20s'; INSERT INTO t VALUES (11)")
        .expect("a writer committing while the daemon goes idle");
    assert!(
        heard(&mut l, Duration::from_secs(10)) >= 1,
        "a commit while the daemon was going idle sent no wake-up"
    );
    assert!(
        !daemon.is_finished(),
        "going idle did not wait for the commit in flight"
    );

    m.execute(DB, &format!("SELECT pg_cancel_backend({wpid})"));
    writer.join().expect("writer");
    let (on, seen) = daemon.join().expect("daemon");
    assert!(on);
    assert_eq!(
        seen, 1,
        "the commit in flight was not visible once the daemon went idle"
    );
}

/// A daemon polling only every ten minutes follows random bursts of commits from 1-3 writers,
/// each after a random pause, so commits land before, during and after its idle transitions.
#[test]
fn an_idle_daemon_wakes_for_every_commit() {
    let c = start_clusters(&["wk-dm", "wk-ds"]);
    let (m, s) = (&c[0], &c[1]);
    set_up(m);
    let d = Daemon::polling_rarely(m, s, DB);
    eventually(60, "the table copied to the slave", || {
        try_one(s, DB, "SELECT (to_regclass('t') IS NOT NULL)::text").as_deref() == Some("true")
    });
    eventually(60, "the daemon waiting for commits", || {
        wake_locks(m, "ShareLock") == 1
    });
    let mut rng = Rng::for_test("RSERV_SEED", 1, "an_idle_daemon_wakes_for_every_commit");
    let mut next_id = 1;
    for round in 0..30 {
        let writers: Vec<_> = (0..1 + rng.below(3))
            .map(|_| {
                let (pause, id) = (rng.millis(0, 25), next_id);
                next_id += 1;
                let mut w = m.connect(DB);
                std::thread::spawn(move || {
                    std::thread::sleep(pause);
                    w.execute("INSERT INTO t VALUES ($1, $2)", &[&id, &round])
                        .expect("insert");
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        eventually(30, &format!("round {round}'s commits on the slave"), || {
            digest(s, DB, "t") == digest(m, DB, "t")
        });
    }
    assert!(!d.log().contains("replication interrupted"), "{}", d.log());
    assert!(d.stop().success());
}

/// Only roles that may replicate can make writers notify (each notifying commit serializes
/// on PostgreSQL's notify lock).
#[test]
fn only_replicators_may_wait() {
    let cs = roles::start(&["wk-sec"]);
    let c = &cs[0];
    roles::create_roles(c, &["clerk"]);
    let mut clerk = connect_as(c, "clerk");
    match try_value(&mut clerk, "SELECT rserv_wake_on_commit(true)") {
        Err(e) if e.contains("may not replicate") => {}
        other => panic!("rserv_wake_on_commit as clerk: {other:?}"),
    }
    assert_eq!(wake_locks(c, "ShareLock"), 0);
    let mut r = connect_as(c, REPL);
    assert_eq!(
        try_value(&mut r, "SELECT rserv_wake_on_commit(true)"),
        Ok(Some("t".to_string()))
    );
}
