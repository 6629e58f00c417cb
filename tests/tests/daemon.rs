//! `replicate run`: follows the master, survives restarts, stops cleanly, reports its lag.
//! Waits are generous timeouts that end as soon as the condition holds; nothing asserts speed.

use rserv_tests::daemon::{eventually, free_port, http_get, Daemon};
use rserv_tests::pair::{assert_ok, start_clusters};
use rserv_tests::{run_replicate, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DB: &str = "app";

fn conninfo(c: &Cluster) -> String {
    c.conninfo(DB)
}

fn digest(c: &Cluster, table: &str) -> Option<String> {
    rserv_tests::daemon::digest(c, DB, table)
}

fn try_one(c: &Cluster, sql: &str) -> Option<String> {
    rserv_tests::daemon::try_one(c, DB, sql)
}

#[test]
fn follows_the_master_and_reports_lag() {
    let c = start_clusters(&["d-m", "d-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(DB, "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t'); INSERT INTO t VALUES (1, 'a');");
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(&[
        "run".into(),
        "--create-tables".into(),
        "--interval=30".into(),
        format!("--metrics-addr={metrics}"),
        "--master".into(),
        conninfo(m),
        "--slave".into(),
        conninfo(s),
        DB.into(),
        DB.into(),
    ]);
    eventually(60, "initial copy on the slave", || {
        digest(s, "t") == digest(m, "t")
    });
    // with a 30 s interval, only the NOTIFY can make this quick; the test only waits for it
    m.execute(
        DB,
        "INSERT INTO t VALUES (2, 'b'); UPDATE t SET v = 'A' WHERE id = 1;",
    );
    eventually(60, "the change on the slave", || {
        digest(s, "t") == digest(m, "t")
    });
    let body = http_get(&metrics);
    assert!(body.contains("# TYPE rserv_lag_seconds gauge"), "{body}");
    let syncs = body
        .lines()
        .find(|l| l.starts_with("rserv_syncs_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(syncs >= 2, "{body}");
    // status as JSON, from the master
    let out = run_replicate(&["--master", &conninfo(m), "status", DB, "--json"]);
    assert_ok(&out, "status --json");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let slave = &st["slaves"][0];
    // no --server: the slave is known by its node id, under the lowest free id from 1 up
    assert_eq!(slave["server"], 1);
    assert!(
        slave["lag_seconds"].as_f64().is_some_and(|l| l >= 0.0),
        "{st}"
    );
    assert!(
        slave["pending_changes"].as_i64().is_some_and(|p| p >= 0),
        "{st}"
    );
    let text = run_replicate(&["--master", &conninfo(m), "status", DB]);
    assert_ok(&text, "status");
    assert!(String::from_utf8_lossy(&text.stdout).contains("lag (s)"));
    let log = d.log();
    assert!(log.contains("change set applied"), "{log}");
    assert!(d.stop().success());
}

/// Master and slave restarted (immediate shutdown) while the daemon runs under a write load.
#[test]
fn survives_master_and_slave_restarts() {
    let c = start_clusters(&["r-m", "r-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL); SELECT rserv_add_table('t');
                   INSERT INTO t SELECT g, 0 FROM generate_series(1, 500) g;",
    );
    let d = Daemon::start(&[
        "run".into(),
        "--create-tables".into(),
        "--interval=0.5".into(),
        "--master".into(),
        conninfo(m),
        "--slave".into(),
        conninfo(s),
        DB.into(),
        DB.into(),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let (sock, port) = (m.socket_dir().to_path_buf(), m.port());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let conn = postgres::Config::new()
                    .host_path(&sock)
                    .port(port)
                    .user("postgres")
                    .dbname(DB)
                    .connect(postgres::NoTls);
                let Ok(mut conn) = conn else {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sql = format!("UPDATE t SET n = n + 1 WHERE id = {}", 1 + i % 500);
                    if conn.batch_execute(&sql).is_err() {
                        break;
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    m.stop_immediate();
    std::thread::sleep(Duration::from_secs(1));
    m.start_again();
    std::thread::sleep(Duration::from_secs(2));
    s.stop_immediate();
    std::thread::sleep(Duration::from_secs(1));
    s.start_again();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eventually(120, "slave equal to master after the restarts", || {
        let (a, b) = (digest(m, "t"), digest(s, "t"));
        a.is_some() && a == b
    });
    let log = d.log();
    assert!(
        log.contains("replication interrupted"),
        "the restarts were noticed:\n{log}"
    );
    assert!(d.stop().success());
}

/// SIGTERM during a large apply: the process stops, the slave is at a confirmed state (all of
/// the change set or none of it), and the next run completes it.
#[test]
fn sigterm_during_a_large_apply() {
    let c = start_clusters(&["t-m", "t-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, pad text); SELECT rserv_add_table('t');",
    );
    let args = vec![
        "run".to_string(),
        "--create-tables".into(),
        "--master".into(),
        conninfo(m),
        "--slave".into(),
        conninfo(s),
        DB.into(),
        DB.into(),
    ];
    let d = Daemon::start(&args);
    eventually(60, "the table on the slave", || {
        try_one(s, "SELECT count(*)::text FROM t").is_some()
    });
    m.execute(
        DB,
        "INSERT INTO t SELECT g, repeat('z', 200) FROM generate_series(1, 300000) g",
    );
    std::thread::sleep(Duration::from_millis(700));
    assert!(d.stop().success(), "clean exit on SIGTERM");
    let n = try_one(s, "SELECT count(*)::text FROM t").unwrap_or_default();
    assert!(
        n == "0" || n == "300000",
        "the slave holds all or nothing of the change set ({n})"
    );
    let d = Daemon::start(&args);
    eventually(120, "the rest after a restart", || {
        digest(s, "t") == digest(m, "t")
    });
    assert!(d.stop().success());
}

/// A dead slave does not block a live one; the daemon keeps retrying it.
#[test]
fn a_dead_slave_does_not_block_a_live_one() {
    let c = start_clusters(&["x-m", "x-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t');",
    );
    let dir = std::env::temp_dir().join(format!("rserv-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("replicate.toml");
    let metrics = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        &cfg,
        format!(
            "[master]\nconninfo = \"{}\"\n\n[[slave]]\nname = \"live\"\nserver = 1\ncreate_tables = true\nconninfo = \"{}\"\n\n\
             [[slave]]\nname = \"dead\"\nserver = 2\nconninfo = \"host=127.0.0.1 port=1 user=postgres dbname=app connect_timeout=2\"\n\n\
             [run]\ninterval = 0.5\nmetrics_addr = \"{metrics}\"\n",
            conninfo(m),
            conninfo(s)
        ),
    )
    .unwrap();
    let d = Daemon::start(&["run".into(), "--config".into(), cfg.display().to_string()]);
    m.execute(DB, "INSERT INTO t SELECT generate_series(1, 100)");
    eventually(60, "the live slave's copy", || {
        digest(s, "t") == digest(m, "t")
    });
    m.execute(DB, "DELETE FROM t WHERE id > 50");
    eventually(60, "the live slave's next change", || {
        digest(s, "t") == digest(m, "t")
    });
    let body = http_get(&metrics);
    let errors_of_dead = body
        .lines()
        .find(|l| l.starts_with("rserv_errors_total{slave=\"dead\""))
        .unwrap_or_default()
        .to_string();
    assert!(!errors_of_dead.ends_with(" 0"), "{body}");
    for side in ["master", "slave"] {
        assert!(
            body.contains(&format!(
                "rserv_connected{{slave=\"live\",server=\"1\",side=\"{side}\"}} 1"
            )),
            "{body}"
        );
    }
    // the dead slave's own session is down, its master session up
    assert!(
        body.contains("rserv_connected{slave=\"dead\",server=\"2\",side=\"slave\"} 0"),
        "{body}"
    );
    assert!(
        body.contains("rserv_connected{slave=\"dead\",server=\"2\",side=\"master\"} 1"),
        "{body}"
    );
    assert!(d.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Table `t (id, n)` of `rows` counters on the master, followed by `replicate run` (every
/// 0.2 s) into `s`.
fn counters_followed(m: &Cluster, s: &Cluster, rows: u32) -> Daemon {
    m.execute(
        DB,
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL); SELECT rserv_add_table('t');
             INSERT INTO t SELECT g, 0 FROM generate_series(1, {rows}) g;"
        ),
    );
    Daemon::start(&[
        "run".into(),
        "--create-tables".into(),
        "--interval=0.2".into(),
        "--master".into(),
        conninfo(m),
        "--slave".into(),
        conninfo(s),
        DB.into(),
        DB.into(),
    ])
}

/// Under a sustained write load the log stays small: clean-up and vacuum keep pace.
#[test]
fn the_log_stays_bounded() {
    let c = start_clusters(&["b-m", "b-s"]);
    let (m, s) = (&c[0], &c[1]);
    let d = counters_followed(m, s, 2000);
    let mut w = m.connect(DB);
    let started = Instant::now();
    let mut logged = 0u64;
    // peak size of the log in each 10 s window of a steady 20k changes/s
    let mut peaks = [0i64; 3];
    while started.elapsed() < Duration::from_secs(30) {
        let tick = Instant::now();
        w.batch_execute("UPDATE t SET n = n + 1").unwrap();
        logged += 2000;
        let size: i64 = w
            .query_one("SELECT pg_total_relation_size('_rserv_log_')", &[])
            .unwrap()
            .get(0);
        let window = (started.elapsed().as_secs() / 10).min(2) as usize;
        peaks[window] = peaks[window].max(size);
        std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
    }
    eventually(60, "the slave catching up", || {
        digest(s, "t") == digest(m, "t")
    });
    let unbounded = logged as i64 * 70;
    eprintln!("logged {logged} changes; log peaks per 10 s window {peaks:?} bytes (without clean-up: ~{unbounded})");
    assert!(logged > 200_000, "the load was sustained");
    // bounded: the last window is no larger than the earlier ones (each peak depends on when
    // a vacuum ran, so only growth beyond them counts), and far below the total
    assert!(
        peaks[2] <= peaks[0].max(peaks[1]) * 3 / 2 + (1 << 20),
        "the log keeps growing: {peaks:?}"
    );
    assert!(
        peaks[2] < unbounded / 3,
        "peak {} vs ~{unbounded} without clean-up",
        peaks[2]
    );
    assert!(d.stop().success());
}

/// The log's VACUUM runs on a session of its own: one waiting for a lock on the log (or just
/// slow under load) holds up no cycle.
#[test]
fn a_waiting_vacuum_of_the_log_does_not_hold_up_replication() {
    let c = start_clusters(&["v-m", "v-s"]);
    let (m, s) = (&c[0], &c[1]);
    let d = counters_followed(m, s, 100);
    eventually(60, "initial copy on the slave", || {
        digest(s, "t") == digest(m, "t")
    });
    // VACUUM waits for this lock; writers (ROW EXCLUSIVE) and clean-up's DELETE do not
    let mut holder = m.connect(DB);
    holder
        .batch_execute("BEGIN; LOCK TABLE _rserv_log_ IN SHARE UPDATE EXCLUSIVE MODE")
        .unwrap();
    m.execute(DB, "UPDATE t SET n = n + 1");
    eventually(60, "the update on the slave", || {
        digest(s, "t") == digest(m, "t")
    });
    // the clean-up deleted the update's log rows: a VACUUM of the log comes, and waits
    eventually(
        60,
        "the daemon's VACUUM of the log waiting for the lock",
        || {
            try_one(
                m,
                "SELECT count(*)::text FROM pg_stat_activity \
             WHERE query LIKE 'VACUUM %_rserv_log_' AND wait_event_type = 'Lock'",
            )
            .as_deref()
                == Some("1")
        },
    );
    for round in 0..3 {
        m.execute(
            DB,
            &format!("UPDATE t SET n = n + 1 WHERE id <= {}", 10 * (round + 1)),
        );
        eventually(60, "replication going on while the VACUUM waits", || {
            digest(s, "t") == digest(m, "t")
        });
    }
    assert_eq!(
        try_one(
            m,
            "SELECT count(*)::text FROM pg_stat_activity \
             WHERE query LIKE 'VACUUM %_rserv_log_' AND wait_event_type = 'Lock'",
        )
        .as_deref(),
        Some("1"),
        "the VACUUM was still waiting all along"
    );
    holder.batch_execute("COMMIT").unwrap();
    eventually(60, "the VACUUM done", || {
        try_one(
            m,
            "SELECT count(*)::text FROM pg_stat_activity WHERE query LIKE 'VACUUM %_rserv_log_' \
             AND state = 'active'",
        )
        .as_deref()
            == Some("0")
    });
    assert!(d.stop().success());
}
