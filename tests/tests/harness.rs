//! Self-test of the cluster harness in `rserv_tests`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::thread;

use rserv_tests::Cluster;

fn keep_clusters() -> bool {
    std::env::var_os("RSERV_KEEP_CLUSTERS").is_some()
}

/// Leftover directories of this process whose name starts with `prefix`.
fn leftover_dirs(prefix: &str) -> Vec<String> {
    let pid = std::process::id();
    std::fs::read_dir("/tmp")
        .expect("read /tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.contains(&format!("-{pid}-")))
        .collect()
}

fn start_and_fill(name: &'static str, rows: i32) -> Cluster {
    let c = Cluster::start(name);
    c.create_db("harness");
    c.execute(
        "harness",
        &format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             SET synchronous_commit = on;
             INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, {rows}) g;
             INSERT INTO t VALUES (0, NULL);"
        ),
    );
    c
}

fn count_and_null(c: &Cluster) -> Vec<Vec<Option<String>>> {
    c.query_strings(
        "harness",
        "SELECT count(*), count(v), max(id) FROM t; SELECT v FROM t WHERE id = 0",
    )
}

#[test]
fn two_clusters_in_parallel_survive_restart() {
    let a = thread::spawn(|| start_and_fill("harness_a", 10));
    let b = thread::spawn(|| start_and_fill("harness_b", 20));
    let a = a.join().expect("cluster a");
    let b = b.join().expect("cluster b");

    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    assert!(a
        .socket_dir()
        .join(format!(".s.PGSQL.{}", a.port()))
        .exists());
    assert_eq!(
        a.conninfo("x"),
        format!(
            "host={} port={} user=postgres dbname=x",
            a.socket_dir().display(),
            a.port()
        )
    );

    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        count_and_null(&a),
        vec![vec![s("11"), s("10"), s("10")], vec![None]]
    );
    assert_eq!(
        count_and_null(&b),
        vec![vec![s("21"), s("20"), s("20")], vec![None]]
    );

    // TCP works too.
    let mut tcp = postgres::Client::connect(&a.conninfo_tcp("harness"), postgres::NoTls)
        .expect("tcp connect");
    let n: i64 = tcp.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 11);
    drop(tcp);

    // Clean stop + start, and a crash + recovery, in parallel.
    thread::scope(|scope| {
        scope.spawn(|| {
            a.stop();
            a.start_again();
        });
        scope.spawn(|| {
            b.stop_immediate();
            b.start_again();
        });
    });
    assert_eq!(
        count_and_null(&a),
        vec![vec![s("11"), s("10"), s("10")], vec![None]]
    );
    assert_eq!(
        count_and_null(&b),
        vec![vec![s("21"), s("20"), s("20")], vec![None]]
    );
    assert!(!a.log_tail(5).contains("cannot read"));
}

#[test]
fn drop_stops_server_and_removes_directory() {
    let c = Cluster::start("harness_drop");
    let dir = c.socket_dir().to_path_buf();
    let conninfo = c.conninfo("postgres");
    assert!(c.data_dir().join("postmaster.pid").exists());
    c.execute("postgres", "SELECT 1");
    drop(c);
    assert!(
        postgres::Client::connect(&conninfo, postgres::NoTls).is_err(),
        "server still accepts connections after drop"
    );
    if !keep_clusters() {
        assert!(!Path::new(&dir).exists(), "{} not removed", dir.display());
    }
}

#[test]
fn sql_errors_and_bad_settings_panic_with_details() {
    let c = Cluster::start_with("harness_err", &[("work_mem", "8MB")]);
    assert_eq!(
        c.query_strings("postgres", "SHOW work_mem"),
        vec![vec![Some("8MB".to_owned())]]
    );
    let err = catch_unwind(AssertUnwindSafe(|| {
        c.execute("postgres", "SELECT * FROM no_such_table")
    }))
    .expect_err("bad SQL must panic");
    let msg = err
        .downcast_ref::<String>()
        .expect("panic message is a String");
    assert!(msg.contains("42P01"), "{msg}");
    assert!(msg.contains("SELECT * FROM no_such_table"), "{msg}");
    drop(c);

    let err = catch_unwind(|| Cluster::start_with("harness_bad", &[("shared_buffers", "banana")]))
        .expect_err("bad setting must panic");
    let msg = err
        .downcast_ref::<String>()
        .expect("panic message is a String");
    assert!(msg.contains("pg_ctl start failed"), "{msg}");
    assert!(msg.contains("banana"), "log tail missing from: {msg}");
    if !keep_clusters() {
        assert_eq!(
            leftover_dirs("rserv-test-harness_bad-"),
            Vec::<String>::new()
        );
    }
}
