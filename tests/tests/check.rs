//! `replicate check` finds exactly the rows that differ, without false alarms while the master
//! keeps writing, and `--repair` fixes only those.

use rserv_tests::pair::{assert_ok, Pair, DB};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|k| k[0].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn finds_and_repairs_exactly_the_differing_rows() {
    let p = Pair::start("check");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);
         INSERT INTO t SELECT g, 'v' || g, g / 3.0 FROM generate_series(1, 20000) g;
         CREATE TABLE u (a text, b date, w int, PRIMARY KEY (a, b));
         INSERT INTO u SELECT 'k' || g, '2024-01-01'::date + g, g FROM generate_series(1, 100) g;
         SELECT rserv_add_table('t'); SELECT rserv_add_table('u');",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
    let out = p.replicate(&["check", DB, DB]);
    assert_ok(&out, "check of equal tables");
    assert!(String::from_utf8_lossy(&out.stdout).contains("equal"));

    // damage the slave behind rserv's back
    p.slave.execute(
        DB,
        "SET rserv.allow_slave_writes = on;
         UPDATE t SET v = 'tampered' WHERE id = 77;
         DELETE FROM t WHERE id = 15000;
         INSERT INTO t VALUES (99999, 'extra', 0);
         UPDATE u SET w = -1 WHERE a = 'k5';",
    );
    let out = p.replicate(&["check", DB, DB, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = json(&out);
    let t = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["table"] == "public.t")
        .unwrap()
        .clone();
    assert_eq!(keys(&t["different"]), vec!["77"]);
    assert_eq!(keys(&t["missing_on_slave"]), vec!["15000"]);
    assert_eq!(keys(&t["extra_on_slave"]), vec!["99999"]);
    let u = r["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["table"] == "public.u")
        .unwrap()
        .clone();
    assert_eq!(u["different"], serde_json::json!([["k5", "2024-01-06"]]));

    let out = p.replicate(&["check", DB, DB, "--repair", "--json"]);
    assert_ok(&out, "check --repair");
    let r = json(&out);
    assert_eq!(r["repaired"], 4);
    p.assert_equal("t");
    p.assert_equal("u");
}

#[test]
fn no_false_alarm_while_the_master_writes() {
    let p = Pair::start("checkw");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 5000) g;
         SELECT rserv_add_table('t');",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut c = p.master.connect(DB);
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let _ = c.batch_execute(&format!(
                    "UPDATE t SET n = n + 1 WHERE id % 50 = {}; INSERT INTO t VALUES ({}, 1)",
                    i % 50,
                    10_000 + i
                ));
            }
        })
    };
    for _ in 0..5 {
        let out = p.replicate(&["check", DB, DB]);
        assert_ok(&out, "check under writes");
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
}

/// A partitioned table is compared by its partitions' rows (reading `ONLY` the partitioned
/// table itself, which holds none, would find any two equal), and repaired.
#[test]
fn a_partitioned_table_is_compared_by_its_rows() {
    let p = Pair::partitioned("checkp", 1000);
    assert_ok(&p.replicate(&["check", DB, DB]), "check of equal tables");
    p.slave.execute(
        DB,
        "SET rserv.allow_slave_writes = on; UPDATE m SET v = 'tampered' WHERE id = 1500",
    );
    let out = p.replicate(&["check", DB, DB, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = json(&out);
    assert_eq!(keys(&r["tables"][0]["different"]), vec!["1500"]);
    assert_eq!(r["tables"][0]["master_rows"], 1999);
    assert_ok(&p.replicate(&["check", DB, DB, "--repair"]), "repair");
    p.assert_equal("m");
}
