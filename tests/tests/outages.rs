//! Operations (issue 14): what `replicate run` says during outages, and connections that stall.
//!
//! * A stopped slave under the daemon: the metrics scraped during the outage show the slave's
//!   session down, the master's up, and the lag and pending changes growing (read from the
//!   master); then recovery. The same for a stopped master (the slave's session stays up).
//! * A proxy that stops forwarding without closing (a dead network, a frozen peer) in front of
//!   the slave, then of the master: the daemon logs the stalled connection, says the side is
//!   down, and catches up once the proxy forwards again.
//! * A master restarted while a change set streams from it (stopped at a pause point inside
//!   the COPY): `replicate` prints the server's reason, never "db error" nor "connection
//!   closed", whether the reason comes before the close or with it; a network cut at the same
//!   point (no reason exists) is reported as the connection lost.
//!
//! Waits are generous timeouts that end as soon as the condition holds; nothing asserts speed
//! (the times measured are printed).

use rserv_tests::daemon::{digest, eventually, free_port, http_get, metric, try_one, Daemon};
use rserv_tests::pair::start_clusters;
use rserv_tests::proxy::{Dir, Proxy};
use rserv_tests::{replicate_command, Cluster};
use std::process::Stdio;
use std::time::Instant;

const DB: &str = "app";

/// A master and a slave cluster; `t` (100 rows) replicated on the master, the slave empty
/// (the daemon creates and copies it).
fn clusters_with_t(name: &str) -> Vec<Cluster> {
    let c = start_clusters(&[&format!("{name}-m"), &format!("{name}-s")]);
    c[0].execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t');
         INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g;",
    );
    c
}

fn in_sync(m: &Cluster, s: &Cluster) -> bool {
    let a = digest(m, DB, "t");
    a.is_some() && a == digest(s, DB, "t")
}

/// A sample of the one slave's metrics.
struct Scrape(String);

impl Scrape {
    fn take(addr: &str) -> Scrape {
        Scrape(http_get(addr))
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.0, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{}", self.0))
    }

    fn connected(&self, side: &str) -> bool {
        self.get("rserv_connected", &[("side", side)]) == 1.0
    }

    fn lag(&self) -> f64 {
        self.get("rserv_lag_seconds", &[])
    }

    fn pending(&self) -> f64 {
        self.get("rserv_pending_changes", &[])
    }
}

fn run_args(master: String, slave: String, metrics: &str) -> Vec<String> {
    vec![
        "run".into(),
        "--create-tables".into(),
        "--interval=0.2".into(),
        format!("--metrics-addr={metrics}"),
        "--master".into(),
        master,
        "--slave".into(),
        slave,
        DB.into(),
        DB.into(),
    ]
}

/// The slave stopped under the daemon: metrics scraped during the outage say the slave is
/// down and the master up, and show the lag and the pending changes growing; after the slave
/// is back they say so and the slave catches up. Then the master stopped: its session down,
/// the slave's up.
#[test]
fn metrics_follow_each_side_through_outages() {
    let c = clusters_with_t("o");
    let (m, s) = (&c[0], &c[1]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(&run_args(m.conninfo(DB), s.conninfo(DB), &metrics));
    eventually(60, "the initial copy", || in_sync(m, s));
    eventually(30, "both sides up in the metrics, lag read", || {
        let x = Scrape::take(&metrics);
        x.connected("master") && x.connected("slave") && x.pending() == 0.0
    });

    // the slave goes away; the master keeps taking writes
    s.stop();
    let down = Instant::now();
    m.execute(DB, "UPDATE t SET v = 'y' WHERE id <= 10");
    let mut first: Option<Scrape> = None;
    eventually(
        120,
        "the slave down, the master up, changes pending",
        || {
            let x = Scrape::take(&metrics);
            let seen = !x.connected("slave") && x.connected("master") && x.pending() >= 10.0;
            if seen {
                first = Some(x);
            }
            seen
        },
    );
    let first = first.expect("scraped");
    let noticed = down.elapsed();
    assert!(first.get("rserv_errors_total", &[]) >= 1.0, "{}", first.0);
    assert!(
        first.0.contains("rserv_last_error{") && first.0.contains("side=\"slave\""),
        "{}",
        first.0
    );
    // the lag keeps being refreshed from the master: it grows during the outage
    let lag0 = first.lag();
    eventually(60, "the lag growing during the slave's outage", || {
        let x = Scrape::take(&metrics);
        x.lag() >= lag0 + 2.0 && !x.connected("slave") && x.connected("master")
    });
    m.execute(DB, "INSERT INTO t VALUES (1000, 'late')");
    eventually(60, "a new change counted while the slave is down", || {
        Scrape::take(&metrics).pending() >= 11.0
    });

    s.start_again();
    eventually(120, "the slave caught up after its outage", || {
        in_sync(m, s)
    });
    eventually(30, "both sides up again, nothing pending", || {
        let x = Scrape::take(&metrics);
        x.connected("master") && x.connected("slave") && x.pending() == 0.0
    });
    let recovered = down.elapsed();

    // the master goes away: its session is down, the slave's stays up
    m.stop();
    eventually(120, "the master down, the slave up", || {
        let x = Scrape::take(&metrics);
        !x.connected("master") && x.connected("slave")
    });
    m.start_again();
    m.execute(DB, "UPDATE t SET v = 'z' WHERE id = 1");
    eventually(120, "the slave caught up after the master's outage", || {
        in_sync(m, s)
    });
    eventually(30, "both sides up again", || {
        let x = Scrape::take(&metrics);
        x.connected("master") && x.connected("slave")
    });
    let log = d.log();
    assert!(log.contains("replication interrupted"), "{log}");
    assert!(d.stop().success());
    eprintln!(
        "slave outage noticed in the metrics after {:.1} s, recovered {:.1} s after it began",
        noticed.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

/// `replicate run` through proxies that stop forwarding without closing: first the slave's,
/// then the master's. Each time the daemon logs the stalled connection and that replication was
/// interrupted, the metrics say which side is down (the master's lag still read while only
/// the slave is stalled), and once the proxy forwards again the slave catches up.
#[test]
fn stalled_connections_are_noticed_and_left() {
    let c = clusters_with_t("st");
    let (m, s) = (&c[0], &c[1]);
    let mp = Proxy::start(m.port());
    let sp = Proxy::start(s.port());
    let tcp = |port: u16| format!("host=127.0.0.1 port={port} user=postgres dbname={DB}");
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(&run_args(tcp(mp.port()), tcp(sp.port()), &metrics));
    eventually(60, "the initial copy", || in_sync(m, s));
    let mut figures = Vec::new();
    for (side, proxy, port) in [("slave", &sp, sp.port()), ("master", &mp, mp.port())] {
        let stalls_before = d.log().matches("connection stalled").count();
        let interrupted_before = d.log().matches("replication interrupted").count();
        proxy.stall();
        let at = Instant::now();
        m.execute(DB, &format!("UPDATE t SET v = '{side}' WHERE id <= 5"));
        eventually(
            120,
            &format!("the daemon to notice the stalled {side}"),
            || {
                let log = d.log();
                log.matches("connection stalled").count() > stalls_before
                    && log.matches("replication interrupted").count() > interrupted_before
            },
        );
        let noticed = at.elapsed();
        let log = d.log();
        let line = log
            .lines()
            .filter(|l| l.contains("connection stalled"))
            .nth(stalls_before)
            .unwrap_or_default()
            .to_string();
        assert!(
            line.contains(&format!("port={port}")),
            "{side}: {line}\n{log}"
        );
        eventually(60, &format!("the {side} down in the metrics"), || {
            let x = Scrape::take(&metrics);
            !x.connected(side) && (side == "master" || x.connected("master"))
        });
        if side == "slave" {
            // the master is still reachable: its figures keep coming
            eventually(60, "changes pending while the slave is stalled", || {
                Scrape::take(&metrics).pending() >= 5.0
            });
        }
        // nothing reached the slave meanwhile
        assert!(!in_sync(m, s), "{side} stalled, yet the slave is in sync");
        proxy.resume();
        let resumed = Instant::now();
        eventually(
            120,
            &format!("the slave to catch up after the {side} stall"),
            || in_sync(m, s),
        );
        eventually(30, "both sides up again", || {
            let x = Scrape::take(&metrics);
            x.connected("master") && x.connected("slave")
        });
        figures.push(format!(
            "{side}: stall noticed after {:.1} s, caught up {:.1} s after the proxy resumed",
            noticed.as_secs_f64(),
            resumed.elapsed().as_secs_f64()
        ));
    }
    let log = d.log();
    assert!(d.stop().success(), "{log}");
    let noticed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection stalled") || l.contains("replication interrupted"))
        .collect();
    eprintln!("{figures:#?}\n{}", noticed.join("\n"));
}

/// How the backend's last bytes reach `replicate` when the master stops.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// As the proxy reads them: the reason, then (soon after) the end of the stream.
    AsTheyCome,
    /// Held by the proxy until the backend has closed, then sent in one segment with the close:
    /// `replicate` finds the reason and the end of the stream together, as a client that fell
    /// behind a fast server does (this is how the reason was lost on a loaded machine).
    WithTheClose,
}

/// The master's `t`, streamed by an initial copy: 20 000 small rows, then one whose value is
/// stored out of line. A session that holds `REINDEX` of `t`'s TOAST index open makes the COPY
/// wait for a lock when it reaches that row, with the rows before it already sent: a pause point
/// inside the stream, where the backend is not blocked writing to its client (a backend blocked
/// writing dies without a word) and answers a shutdown with its reason.
fn master_with_a_pause_point(m: &Cluster) {
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         ALTER TABLE t ALTER COLUMN v SET STORAGE EXTERNAL;
         SELECT rserv_add_table('t');
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
         INSERT INTO t VALUES (20001, repeat('x', 100000));",
    );
}

/// Holds the pause point: a session with `REINDEX INDEX` of `t`'s TOAST index in an open
/// transaction (an ACCESS EXCLUSIVE lock on that index, which reading the row out of line
/// needs in ACCESS SHARE mode).
fn hold_pause_point(m: &Cluster) -> postgres::Client {
    let mut c = m.connect(DB);
    let index: String = c
        .query_one(
            "SELECT i.indexrelid::regclass::text FROM pg_index i JOIN pg_class c \
             ON c.reltoastrelid = i.indrelid WHERE c.oid = 't'::regclass",
            &[],
        )
        .expect("t's TOAST index")
        .get(0);
    c.batch_execute(&format!("BEGIN; REINDEX INDEX {index}"))
        .expect("hold the TOAST index");
    c
}

/// `replicate` (one-shot) through `proxy`, started once the pause point is held; returns when
/// the master's COPY waits at it.
fn replicate_to_pause_point(m: &Cluster, s: &Cluster, proxy: &Proxy) -> std::process::Child {
    let child = replicate_command()
        .args([
            "--master".to_string(),
            format!(
                "host=127.0.0.1 port={} user=postgres dbname={DB}",
                proxy.port()
            ),
            "--slave".to_string(),
            s.conninfo(DB),
            "--create-tables".to_string(),
            // the proxy holding its deliveries is not a silent server: no liveness check
            "--read-timeout=0".to_string(),
            DB.to_string(),
            DB.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start replicate");
    eventually(120, "the master's COPY waiting at the pause point", || {
        try_one(
            m,
            "postgres",
            "SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'replicate' \
             AND query LIKE 'COPY (%' AND wait_event_type = 'Lock'",
        )
        .as_deref()
            == Some("1")
    });
    child
}

/// What `replicate` said, after it ended.
fn finished(child: std::process::Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().expect("replicate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// ErrorResponse field `C` (SQLSTATE) 57P01, admin_shutdown: what a backend says when a fast
/// shutdown ends its session.
const ADMIN_SHUTDOWN: &[u8] = b"C57P01\0";
const REASON: &str = "terminating connection due to administrator command";

/// A master restarted (fast shutdown) while a change set streams from it: `replicate` fails
/// with the server's reason ("terminating connection due to administrator command"), exit 1,
/// "master: streaming public.t", never rust-postgres' bare "db error" nor "connection closed";
/// the slave unchanged. The stop lands at a pause point inside the COPY (see
/// [`master_with_a_pause_point`]); the reason is delivered both as it comes and together with
/// the end of the stream (the order a client that fell behind sees; the `postgres` crate dropped
/// the reason then, see `vendor/postgres/PATCHED.md`). The proxy counts the reason in what it
/// delivered, so "the server said why and replicate lost it" is told from "nobody said why":
/// a network cut at the same point (no reason exists) is reported as the connection lost.
#[test]
fn a_master_restarted_mid_stream_gives_its_reason() {
    let c = start_clusters(&["cr-m", "cr-s"]);
    let (m, s) = (&c[0], &c[1]);
    master_with_a_pause_point(m);
    let proxy = Proxy::start_absorbing(m.port());
    let slave_rows = || try_one(s, DB, "SELECT count(*)::text FROM t");
    for delivery in [Delivery::WithTheClose, Delivery::AsTheyCome] {
        let holder = hold_pause_point(m);
        let child = replicate_to_pause_point(m, s, &proxy);
        proxy.watch(Dir::Down, ADMIN_SHUTDOWN);
        if let Delivery::WithTheClose = delivery {
            proxy.hold();
        }
        m.stop();
        // the backend has closed: everything it sent is with the proxy
        eventually(60, "the backend's connection closed", || proxy.live() == 0);
        proxy.release();
        let (code, err) = finished(child);
        m.start_again();
        drop(holder);
        assert_eq!(
            proxy.seen(),
            1,
            "{delivery:?}: the server's reason did not reach replicate (the test's pause point \
             failed, not replicate):\n{err}"
        );
        assert!(
            err.contains(REASON) && !err.contains("db error") && !err.contains("connection closed"),
            "{delivery:?}: the server sent its reason and replicate lost it:\n{err}"
        );
        assert!(err.contains("master: streaming public.t"), "{err}");
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(slave_rows().as_deref(), Some("0"), "{delivery:?}: {err}");
        eprintln!("{delivery:?}: {}", err.trim_end());
    }
    // The same point, the network cut instead: the server said nothing, and replicate says the
    // connection was lost (closed, or cut inside a message), claiming no reason.
    let mut holder = hold_pause_point(m);
    let child = replicate_to_pause_point(m, s, &proxy);
    proxy.watch(Dir::Down, ADMIN_SHUTDOWN);
    assert_eq!(proxy.cut(), 1);
    let (code, err) = finished(child);
    holder
        .batch_execute("ROLLBACK")
        .expect("release the pause point");
    assert_eq!(proxy.seen(), 0, "{err}");
    assert!(
        err.contains("master: streaming public.t")
            && (err.contains("connection closed")
                || err.contains("error communicating with the server")),
        "{err}"
    );
    assert!(!err.contains(REASON) && !err.contains("db error"), "{err}");
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(slave_rows().as_deref(), Some("0"), "{err}");
    eprintln!("network cut: {}", err.trim_end());
}
