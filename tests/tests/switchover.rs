//! Switchover: master and slave swap roles at one sync point, with no copy, under a steady
//! money-transfer workload whose clients retry on the fence and then write to the new master.

use rserv_tests::bank::{self, total, transfer, StopOnDrop, Workload, ACCOUNTS};
use rserv_tests::daemon::{eventually, Daemon};
use rserv_tests::pair::{assert_ok, between, Pair, DB};
use rserv_tests::Cluster;
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `replicate` with `m` as master and `s` as slave.
fn replicate(m: &Cluster, s: &Cluster, args: &[&str]) -> Output {
    between(m, s, args)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn rows(c: &Cluster, table: &str) -> Vec<String> {
    Pair::rows(c, table)
}

fn setup(name: &str) -> Pair {
    setup_with(name, &[])
}

fn setup_with(name: &str, settings: &[(&str, &str)]) -> Pair {
    let p = Pair::start_with(name, settings);
    for (table, ddl) in bank::TABLES {
        p.table(ddl, table, None);
    }
    p.master.execute(DB, &bank::accounts_sql());
    assert_ok(&p.replicate(&[DB, DB]), "first copy");
    p
}

/// Switch over back and forth under load: every transfer a client saw committed exists on the
/// final master, the total holds, both sides end equal, the old master refuses writes after
/// each switchover, and replication goes on in the new direction.
#[test]
fn switchover_back_and_forth_under_transfers() {
    let p = setup("swo");
    let nodes = [&p.master, &p.slave];
    let load = Workload::default();
    std::thread::scope(|sc| {
        let _stop = StopOnDrop(&load.stop);
        for w in 0..2u64 {
            let load = &load;
            sc.spawn(move || load.client(&nodes, w));
        }
        for round in 0..4 {
            let (m, s) = (nodes[round % 2], nodes[(round + 1) % 2]);
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(150));
                let out = replicate(m, s, &[DB, DB]);
                assert_ok(&out, &format!("round {round}: replicate"));
            }
            let out = replicate(m, s, &["switchover", "--grace", "1", DB, DB]);
            assert_ok(&out, &format!("round {round}: switchover"));
            eprintln!("round {round}: {}", text(&out).trim());
            assert!(
                text(&out).contains("switchover done"),
                "round {round}: {}",
                text(&out)
            );
            load.current.store((round + 1) % 2, Ordering::SeqCst);
            // the old master is a slave now: writes there are refused
            let mut old = m.connect(DB);
            let refused = old
                .batch_execute("UPDATE account SET balance = balance WHERE id = 1")
                .expect_err("the old master refuses writes");
            let msg = rserv_tests::describe_pg_error(&refused);
            assert!(
                msg.contains("replication slave table"),
                "round {round}: {msg}"
            );
            // and follows the new one
            std::thread::sleep(Duration::from_millis(150));
            assert_ok(
                &replicate(s, m, &[DB, DB]),
                &format!("round {round}: the other way"),
            );
        }
    });
    let last = nodes[4 % 2];
    let other = nodes[5 % 2];
    assert_ok(&replicate(last, other, &[DB, DB]), "final cycle");
    let unexpected = load.unexpected.into_inner().expect("lock");
    assert!(
        unexpected.is_empty(),
        "writers met unexpected errors: {unexpected:?}"
    );
    assert_eq!(total(last), (ACCOUNTS * 1000).to_string());
    assert_eq!(rows(last, "account"), rows(other, "account"));
    assert_eq!(rows(last, "transfer"), rows(other, "transfer"));
    let ids: std::collections::BTreeSet<i64> = last
        .query_strings(DB, "SELECT id::text FROM transfer")
        .into_iter()
        .filter_map(|r| r[0].as_ref().and_then(|v| v.parse().ok()))
        .collect();
    let committed = load.committed.into_inner().expect("lock");
    assert!(
        committed.len() > 10,
        "the workload ran: {}",
        committed.len()
    );
    let lost: Vec<i64> = committed
        .iter()
        .copied()
        .filter(|id| !ids.contains(id))
        .collect();
    assert!(lost.is_empty(), "committed transfers lost: {lost:?}");
    eprintln!(
        "{} transfers committed, {} refused and retried",
        committed.len(),
        load.refusals.load(Ordering::SeqCst)
    );
}

/// A switchover interrupted after the fence, or after the promotion, is finished by running
/// the command again; one whose slave has not taken over can be aborted instead.
#[test]
fn interrupted_switchover_is_finished_or_aborted() {
    let p = setup("swo-int");
    // interrupted right after the fence: the master refuses writes, nothing else happened
    p.master.execute(DB, "SELECT rserv_fence(NULL)");
    let mut c = p.master.connect(DB);
    let refused = c
        .batch_execute("UPDATE account SET balance = balance + 1 WHERE id = 1")
        .expect_err("fenced");
    assert!(
        rserv_tests::describe_pg_error(&refused).contains("switchover in progress"),
        "{refused:?}"
    );
    // --abort lifts it
    let out = p.replicate(&["switchover", "--abort", DB, DB]);
    assert_ok(&out, "abort");
    p.master
        .execute(DB, "UPDATE account SET balance = balance + 5 WHERE id = 1; UPDATE account SET balance = balance - 5 WHERE id = 2");
    // fenced again, then the slave promoted by hand, and the command run again finishes it
    p.master.execute(DB, "SELECT rserv_fence(NULL)");
    assert_ok(&p.replicate(&[DB, DB]), "the last change set");
    let master_node = p.master.query_strings(DB, "SELECT rserv_node_id()")[0][0]
        .clone()
        .unwrap_or_default();
    p.slave.execute(
        DB,
        &format!("SELECT * FROM rserv_promote('{master_node}', 0)"),
    );
    let out = p.replicate(&["switchover", DB, DB]);
    assert_ok(&out, "finishing the switchover");
    // the abort is refused once the slave has taken over
    let out = p.replicate(&["switchover", "--abort", DB, DB]);
    assert!(!out.status.success(), "{}", text(&out));
    // replication goes the other way, from the same sync point, with no copy
    p.slave.execute(
        DB,
        "INSERT INTO transfer (src, dst, amount) VALUES (1, 2, 0)",
    );
    let xmin = "SELECT xmin::text FROM account WHERE id = 7";
    let before = p.master.query_strings(DB, xmin);
    let out = replicate(&p.slave, &p.master, &[DB, DB]);
    assert_ok(&out, "the other way");
    assert_eq!(rows(&p.slave, "account"), rows(&p.master, "account"));
    assert_eq!(rows(&p.slave, "transfer"), rows(&p.master, "transfer"));
    // a copy would have replaced every row
    assert_eq!(
        p.master.query_strings(DB, xmin),
        before,
        "account was copied again"
    );
}

/// A prepared (2PC) transaction holding a replicated table would block the fence forever: the
/// switchover is refused naming it (gid, owner, when it was prepared) and changes nothing;
/// once it is committed, the switchover goes through.
#[test]
fn a_prepared_transaction_blocking_the_fence_is_named() {
    let p = setup_with("swo-2pc", &[("max_prepared_transactions", "8")]);
    p.master.execute(
        DB,
        "BEGIN; UPDATE account SET balance = balance - 1 WHERE id = 3;
         UPDATE account SET balance = balance + 1 WHERE id = 4; PREPARE TRANSACTION 'pay-42'",
    );
    let out = replicate(&p.master, &p.slave, &["switchover", "--grace", "1", DB, DB]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "prepared transactions hold replicated tables",
        "'pay-42' (owner postgres, prepared at 20",
        "on public.account",
        "COMMIT PREPARED",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    // nothing changed: the master takes writes (to rows the prepared transaction does not
    // hold), the slave refuses them
    assert!(bank::try_write(&p.master).is_ok());
    assert!(bank::try_write(&p.slave).is_err());
    p.master.execute(DB, "COMMIT PREPARED 'pay-42'");
    let out = replicate(&p.master, &p.slave, &["switchover", "--grace", "1", DB, DB]);
    assert_ok(
        &out,
        "switchover once the prepared transaction is committed",
    );
    assert_eq!(rows(&p.master, "account"), rows(&p.slave, "account"));
    assert_eq!(total(&p.slave), (ACCOUNTS * 1000).to_string());
}

/// A `replicate run` daemon given the pair notices each switchover and replicates the other way
/// from then on, without a restart.
#[test]
fn the_daemon_follows_the_flip() {
    let p = setup("swo-daemon");
    let mut args = p.conn_args();
    args.extend(["run", "--interval", "0.2", DB, DB].map(String::from));
    let daemon = Daemon::start(&args);
    let (a, b) = (&p.master, &p.slave);
    for round in 0..3u64 {
        let (m, s) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let mut c = m.connect(DB);
        transfer(&mut c, round * 100 + 1).expect("a transfer on the master");
        eventually(120, "the daemon replicates", || {
            rows(m, "transfer") == rows(s, "transfer")
        });
        let out = replicate(m, s, &["switchover", "--grace", "1", DB, DB]);
        assert_ok(&out, &format!("round {round}: switchover"));
        let mut c = s.connect(DB);
        transfer(&mut c, round * 100 + 50).expect("a transfer on the new master");
        eventually(120, "the daemon follows the flip", || {
            rows(s, "transfer") == rows(m, "transfer")
        });
    }
    assert!(daemon.log().contains("roles flipped"), "{}", daemon.log());
    assert!(daemon.stop().success());
}

/// A partitioned table switches over with its partitions: each is fenced on the old master,
/// captured on the new one (a write or a TRUNCATE of one partition replicates back), and
/// protected on the old master once it is a slave.
#[test]
fn a_partitioned_table_switches_over_with_its_partitions() {
    let p = Pair::partitioned("swo-part", 100);
    p.master.execute(DB, "SELECT rserv_fence(NULL)");
    let mut c = p.master.connect(DB);
    let refused = c
        .batch_execute("UPDATE m2 SET v = 'x' WHERE id = 150")
        .expect_err("a fenced partition");
    assert!(
        rserv_tests::describe_pg_error(&refused).contains("switchover in progress"),
        "{refused:?}"
    );
    assert_ok(&p.replicate(&["switchover", DB, DB]), "switchover");
    // the new master captures every partition, a TRUNCATE of one too
    p.slave.execute(
        DB,
        "UPDATE m SET v = 'new' WHERE id IN (5, 150); INSERT INTO m VALUES (199, 'x')
         ON CONFLICT (id) DO UPDATE SET v = 'y'; TRUNCATE m1",
    );
    assert_ok(&replicate(&p.slave, &p.master, &[DB, DB]), "the other way");
    assert_eq!(rows(&p.slave, "m"), rows(&p.master, "m"));
    assert_eq!(
        p.master.query_strings(DB, "SELECT count(*)::text FROM m1")[0][0],
        Some("0".into())
    );
    // and the old master's partitions refuse local writes as a slave's
    for table in ["m", "m1", "m2"] {
        let err = c
            .batch_execute(&format!("DELETE FROM {table}"))
            .expect_err("a slave partition");
        assert!(
            rserv_tests::describe_pg_error(&err).contains("replication slave table"),
            "{table}: {err:?}"
        );
    }
}
