//! Many slaves, cascading, initial copy and online table changes.

use replicate::cycle::{self, CycleOptions, Endpoints, Outcome, Session};
use replicate::rserv::Rserv;
use rserv_tests::pair::{assert_fails, assert_ok, start_clusters};
use rserv_tests::rng::Rng;
use rserv_tests::{run_replicate, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const DB: &str = "app";

/// One cycle from `m` to slave `s` known to `m` as `server`, in process.
fn cycle(m: &Cluster, s: &Cluster, server: i32, create_tables: bool) -> Outcome {
    let mut mc = m.connect(DB);
    let mut sc = s.connect(DB);
    let mrs = Rserv::locate(&mut mc, "master", DB).expect("rserv on master");
    let srs = Rserv::locate(&mut sc, "slave", DB).expect("rserv on slave");
    let mut ep = Endpoints {
        master: &mut mc,
        master_rs: &mrs,
        slave: &mut sc,
        slave_rs: &srs,
    };
    let opts = CycleOptions {
        server: Some(server),
        clean_log: true,
        create_tables,
        ..CycleOptions::default()
    };
    cycle::run(&mut ep, &opts, &mut Session::default(), None)
        .unwrap_or_else(|e| panic!("cycle to server {server}: {e}"))
}

fn rows(c: &Cluster, table: &str) -> Vec<String> {
    c.query_strings(DB, &format!("SELECT t::text FROM {table} t ORDER BY 1"))
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

fn one(c: &Cluster, sql: &str) -> String {
    c.query_strings(DB, sql)[0][0].clone().unwrap_or_default()
}

fn conn_args(m: &Cluster, s: &Cluster) -> Vec<String> {
    rserv_tests::pair::conn_args(m, s)
}

fn replicate_to(m: &Cluster, s: &Cluster, extra: &[&str]) -> std::process::Output {
    let mut args = conn_args(m, s);
    args.extend(extra.iter().map(|x| x.to_string()));
    run_replicate(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

const ACCOUNTS: i64 = 100;

fn money_writers(m: &Cluster, stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..3)
        .map(|w| {
            let mut c = m.connect(DB);
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = Rng::new(88172645463325252 ^ (w + 1));
                while !stop.load(Ordering::Relaxed) {
                    let a = rng.below(ACCOUNTS as usize) + 1;
                    let b = rng.below(ACCOUNTS as usize) + 1;
                    let amt = rng.below(20) + 1;
                    if a == b {
                        continue;
                    }
                    let sql = format!(
                        "BEGIN; UPDATE account SET balance = balance - {amt} WHERE id = {a};
                         UPDATE account SET balance = balance + {amt} WHERE id = {b}; COMMIT;"
                    );
                    if c.batch_execute(&sql).is_err() {
                        let _ = c.batch_execute("ROLLBACK");
                    }
                }
            })
        })
        .collect()
}

/// Two slaves of one master in random interleavings, with writers running: every slave state
/// keeps the invariant, both end equal to the master. The slaves start as empty databases:
/// --create-tables builds the table, the first change set copies it.
#[test]
fn two_slaves_in_random_interleavings() {
    let c = start_clusters(&["ms-m", "ms-s1", "ms-s2"]);
    let (m, s1, s2) = (&c[0], &c[1], &c[2]);
    m.execute(
        DB,
        &format!(
            "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL);
             INSERT INTO account SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g;
             SELECT rserv_add_table('account');"
        ),
    );
    for (s, server) in [(s1, "1"), (s2, "2")] {
        let out = replicate_to(m, s, &["--create-tables", "--server", server, DB, DB]);
        assert_ok(&out, "replicate --create-tables");
        assert!(String::from_utf8_lossy(&out.stderr)
            .contains("created and registered table public.account"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers = money_writers(m, &stop);
    let total = (ACCOUNTS * 1000).to_string();
    let mut rng = Rng::new(12345);
    for i in 0..40 {
        let (s, server) = if rng.below(3) == 0 { (s2, 2) } else { (s1, 1) };
        cycle(m, s, server, false);
        assert_eq!(
            one(s, "SELECT sum(balance)::text FROM account"),
            total,
            "slave {server} after cycle {i}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    cycle(m, s1, 1, false);
    cycle(m, s2, 2, false);
    assert_eq!(rows(m, "account"), rows(s1, "account"));
    assert_eq!(rows(m, "account"), rows(s2, "account"));
}

/// A → B → C: B applies A's change sets and captures them for C.
#[test]
fn cascade() {
    let c = start_clusters(&["cas-a", "cas-b", "cas-c"]);
    let (a, b, cc) = (&c[0], &c[1], &c[2]);
    a.execute(
        DB,
        "CREATE TABLE item (id int PRIMARY KEY, v text);
         INSERT INTO item SELECT g, 'v' || g FROM generate_series(1, 500) g;
         SELECT rserv_add_table('item');",
    );
    cycle(a, b, 1, true);
    b.execute(DB, "SELECT rserv_add_table('item')");
    cycle(b, cc, 1, true);
    for round in 0..3 {
        a.execute(
            DB,
            &format!(
                "UPDATE item SET v = v || '{round}' WHERE id % 7 = {round};
                 DELETE FROM item WHERE id % 50 = {round};
                 INSERT INTO item VALUES (1000 + {round}, 'new');
                 UPDATE item SET id = id + 10000 WHERE id = 100 + {round};"
            ),
        );
        cycle(a, b, 1, false);
        cycle(b, cc, 1, false);
        assert_eq!(
            rows(a, "item"),
            rows(cc, "item"),
            "C equals A after round {round}"
        );
    }
    // B stays a protected slave even though it is also a master
    let err = b.connect(DB).batch_execute("DELETE FROM item").unwrap_err();
    assert!(rserv_tests::describe_pg_error(&err).contains("replication slave table"));
}

/// The initial copy of a large table while the master keeps taking writes: no gap, no
/// duplicate, no lost concurrent update.
#[test]
fn initial_copy_under_concurrent_updates() {
    let c = start_clusters(&["copy-m", "copy-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(
        DB,
        "CREATE TABLE big (id int PRIMARY KEY, n int NOT NULL, pad text);
         INSERT INTO big SELECT g, 0, repeat('x', 20) FROM generate_series(1, 1000000) g;
         SELECT rserv_add_table('big');",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut wc = m.connect(DB);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = wc.batch_execute(&format!(
                    "UPDATE big SET n = n + 1 WHERE id % 997 = {0}; INSERT INTO big VALUES ({1}, 1, 'new');
                     DELETE FROM big WHERE id = {0} * 13 + 5;",
                    i % 997,
                    2_000_000 + i
                ));
            }
        })
    };
    let out = replicate_to(m, s, &["--create-tables", "--verbose", DB, DB]);
    assert_ok(&out, "initial copy");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("copying public.big"),
        "progress reported"
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // the run above had no --server: the slave is known by its node id, as server 1
    cycle(m, s, 1, false);
    let digest =
        "SELECT count(*) || ':' || md5(string_agg(id || ',' || n, ';' ORDER BY id)) FROM big";
    assert_eq!(one(m, digest), one(s, digest));
}

/// A copy killed midway leaves the slave as it was; the next run copies again and ends equal.
#[test]
fn killed_copy_then_rerun() {
    let c = start_clusters(&["kill-m", "kill-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(
        DB,
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('y', 100) FROM generate_series(1, 400000) g;
         SELECT rserv_add_table('big');",
    );
    s.execute(
        DB,
        "CREATE TABLE big (id int PRIMARY KEY, pad text); SELECT rserv_slave_add_table('big');",
    );
    for delay_ms in [300u64, 900] {
        let mut child = rserv_tests::replicate_command()
            .args(conn_args(m, s))
            .args([DB, DB])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start replicate");
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let n = one(s, "SELECT count(*) FROM big");
        assert!(
            n == "0" || n == "400000",
            "never a half-copied table (saw {n} rows)"
        );
    }
    assert_ok(&replicate_to(m, s, &[DB, DB]), "rerun");
    assert_eq!(one(s, "SELECT count(*) FROM big"), "400000");
    assert_eq!(rows(m, "big"), rows(s, "big"));
}

/// Adding a table while another replicates: the new one is copied, the other keeps flowing.
#[test]
fn table_added_while_another_replicates() {
    let c = start_clusters(&["add-m", "add-s"]);
    let (m, s) = (&c[0], &c[1]);
    m.execute(
        DB,
        "CREATE TABLE t1 (id int PRIMARY KEY, v int); SELECT rserv_add_table('t1');",
    );
    m.execute(DB, "CREATE TABLE t2 (id int PRIMARY KEY, v int); INSERT INTO t2 SELECT g, g FROM generate_series(1, 1000) g;");
    cycle(m, s, 0, true);
    m.execute(DB, "INSERT INTO t1 VALUES (1, 1)");
    cycle(m, s, 0, false);
    // t2 joins: registered on the master, created on the slave by the next run
    m.execute(DB, "SELECT rserv_add_table('t2'); INSERT INTO t1 VALUES (2, 2); UPDATE t2 SET v = -v WHERE id < 10;");
    cycle(m, s, 0, true);
    assert_eq!(rows(m, "t1"), rows(s, "t1"));
    assert_eq!(rows(m, "t2"), rows(s, "t2"));
    // and leaves again without disturbing t1
    m.execute(
        DB,
        "SELECT rserv_remove_table('t2'); INSERT INTO t1 VALUES (3, 3); UPDATE t2 SET v = 0;",
    );
    s.execute(DB, "SELECT rserv_slave_remove_table('t2')");
    cycle(m, s, 0, false);
    assert_eq!(rows(m, "t1"), rows(s, "t1"));
    assert_eq!(one(s, "SELECT count(*) FROM t2 WHERE v = 0"), "0");
}

/// Log clean-up never removes what a lagging slave still needs; dropping it releases the log.
#[test]
fn clean_log_waits_for_the_lagging_slave() {
    let c = start_clusters(&["lag-m", "lag-s1", "lag-s2"]);
    let (m, s1, s2) = (&c[0], &c[1], &c[2]);
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v int); SELECT rserv_add_table('t');",
    );
    cycle(m, s1, 1, true);
    cycle(m, s2, 2, true);
    for round in 0..5 {
        m.execute(DB, &format!("INSERT INTO t SELECT g, {round} FROM generate_series(1, 200) g ON CONFLICT (id) DO UPDATE SET v = excluded.v"));
        cycle(m, s1, 1, false);
    }
    assert_ne!(
        one(m, "SELECT count(*) FROM _rserv_log_"),
        "0",
        "slave 2 still needs these"
    );
    cycle(m, s2, 2, false);
    assert_eq!(rows(m, "t"), rows(s2, "t"));
    assert_eq!(rows(m, "t"), rows(s1, "t"));
    // a slave that is gone for good: drop it and the log no longer waits
    m.execute(DB, "UPDATE t SET v = -1");
    cycle(m, s1, 1, false);
    assert_ne!(one(m, "SELECT count(*) FROM _rserv_log_"), "0");
    let mut args = vec![
        format!("--masterhost={}", m.socket_dir().display()),
        format!("--masterport={}", m.port()),
    ];
    args.extend(["--user=postgres", "--server=2", "drop-slave", DB].map(String::from));
    assert_ok(
        &run_replicate(&args.iter().map(String::as_str).collect::<Vec<_>>()),
        "drop-slave",
    );
    m.execute(DB, "SELECT rserv_clean_log()");
    assert_eq!(one(m, "SELECT count(*) FROM _rserv_log_"), "0");
}

/// Two slave databases can not share a server id (the original's silent-loss bug). Without
/// --server each slave database is known by its node id and gets an id of its own from the
/// master once; a slave bound to the seed's id 0 keeps it.
#[test]
fn a_server_id_belongs_to_one_slave() {
    let c = start_clusters(&["id-m", "id-s1", "id-s2", "id-s3"]);
    let (m, s1, s2, s3) = (&c[0], &c[1], &c[2], &c[3]);
    m.execute(DB, "CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t'); INSERT INTO t VALUES (1);");
    let server_of = |s: &Cluster| {
        let node = one(s, "SELECT rserv_node_id()");
        one(
            m,
            &format!("SELECT string_agg(server::text, ',') FROM rserv_status WHERE slave_node = '{node}'"),
        )
    };
    assert_ok(
        &replicate_to(m, s1, &["--create-tables", DB, DB]),
        "first slave, no --server",
    );
    assert_eq!(server_of(s1), "1", "the lowest free id from 1 up");
    // an explicit id wins, and one bound to another slave database is refused
    assert_fails(
        &replicate_to(m, s2, &["--create-tables", "--server=1", DB, DB]),
        1,
        &[
            "server id 1 belongs to another slave database",
            "--server N",
        ],
    );
    assert_ok(
        &replicate_to(m, s2, &["--create-tables", DB, DB]),
        "second slave, no --server",
    );
    assert_eq!(server_of(s2), "2");
    assert_eq!(rows(m, "t"), rows(s2, "t"));
    // a command that sees only the master cannot tell which of two slaves is meant
    let master_only = [
        format!("--masterhost={}", m.socket_dir().display()),
        format!("--masterport={}", m.port()),
        "--user=postgres".into(),
        "prepare".into(),
        DB.into(),
    ];
    assert_fails(
        &run_replicate(&master_only.iter().map(String::as_str).collect::<Vec<_>>()),
        2,
        &["several slaves (servers 1, 2)", "--server N"],
    );
    // the seed's command line: id 0, kept when --server is left out afterwards
    assert_ok(
        &replicate_to(m, s3, &["--create-tables", "--server=0", DB, DB]),
        "third slave, --server 0",
    );
    m.execute(DB, "INSERT INTO t VALUES (2)");
    for s in [s3, s1, s2] {
        assert_ok(&replicate_to(m, s, &[DB, DB]), "again, no --server");
    }
    assert_eq!(
        (server_of(s1), server_of(s2), server_of(s3)),
        ("1".into(), "2".into(), "0".into()),
        "no slave registered twice"
    );
    for s in [s1, s2, s3] {
        assert_eq!(rows(m, "t"), rows(s, "t"));
    }
}
