//! Switchover of a master with other slaves (`--other`): they follow the new master without a
//! copy, under a money-transfer workload, also when `replicate` is stopped at each step and run
//! again; a slave not given is refused by name before anything changes, and can be dropped and
//! re-pointed with `replicate failover NEWMASTER SLAVE` after the switchover instead.

use rserv_tests::bank::{
    self, both_tables, rows, total, transfer, try_write, Rows, StopOnDrop, Workload, ACCOUNTS,
};
use rserv_tests::pair::{assert_ok, between, database_arg, start_clusters, DB};
use rserv_tests::roles::output_text;
use rserv_tests::{run_replicate, run_replicate_env, Cluster};
use std::process::Output;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The row versions (xmin) of every transfer on `c`: transfers are never updated, so only a
/// copy (TRUNCATE and every row again) would change them.
fn transfer_versions(c: &Cluster) -> Rows {
    c.query_strings(DB, "SELECT id::text, xmin::text FROM transfer")
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Every transfer `before` lists is on `c` in the same row version.
fn assert_not_copied(c: &Cluster, before: &Rows, what: &str) {
    assert!(!before.is_empty(), "{what}: transfers to compare");
    let now = transfer_versions(c);
    let rewritten: Vec<&String> = before
        .iter()
        .filter(|(id, xmin)| now.get(*id) != Some(*xmin))
        .map(|(id, _)| id)
        .collect();
    assert!(
        rewritten.is_empty(),
        "{what}: transfers written again (a copy?): {rewritten:?}"
    );
}

fn value(c: &Cluster, sql: &str) -> String {
    c.query_strings(DB, sql)[0][0].clone().unwrap_or_default()
}

fn node(c: &Cluster) -> String {
    value(c, "SELECT rserv_node_id()")
}

/// `replicate switchover` from `m` to `s`, with `others` given as --other.
fn switchover(m: &Cluster, s: &Cluster, others: &[&Cluster], env: &[(&str, &str)]) -> Output {
    let mut args = rserv_tests::pair::conn_args(m, s);
    args.extend(["switchover", "--grace", "1"].map(String::from));
    for o in others {
        args.extend(["--other".to_string(), database_arg(o)]);
    }
    args.extend([DB, DB].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_replicate_env(&refs, env)
}

/// Three clusters: a master with the bank's tables, copied to two slaves.
fn three(names: [&str; 3]) -> Vec<Cluster> {
    let cs = start_clusters(&names);
    bank::master(&cs[0]);
    for s in &cs[1..] {
        assert_ok(
            &between(&cs[0], s, &["--create-tables", DB, DB]),
            "first copy",
        );
    }
    cs
}

/// A master with two slaves switches over to one under load; the other is re-pointed without a
/// copy (verified exact, not compared); all three end equal, every committed transfer is
/// there, and replication goes on from the new master to both for several cycles.
#[test]
fn the_other_slave_follows_the_new_master_without_a_copy() {
    let cs = three(["swo2-m", "swo2-s1", "swo2-s2"]);
    let nodes = [&cs[0], &cs[1]];
    let other = &cs[2];
    let load = Workload::default();
    let versions = std::thread::scope(|sc| {
        let _stop = StopOnDrop(&load.stop);
        for w in 0..2u64 {
            let load = &load;
            sc.spawn(move || load.client(&nodes, w));
        }
        let (m, s1) = (nodes[0], nodes[1]);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(150));
            assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
            assert_ok(&between(m, other, &[DB, DB]), "master -> slave 2");
        }
        let versions = transfer_versions(other);
        std::thread::sleep(Duration::from_millis(150)); // slave 2 behind at the fence
        let out = switchover(m, s1, &[other], &[]);
        assert_ok(&out, "switchover with --other");
        load.current.store(1, Ordering::SeqCst);
        let text = output_text(&out);
        eprintln!("{text}");
        assert!(
            text.contains("switchover done")
                && text.contains("re-pointed ")
                && text.contains("held exactly what the new master held"),
            "{text}"
        );
        assert_not_copied(other, &versions, "right after the switchover");
        // the old master and the other slave refuse writes; only the new master takes them
        for c in [m, other] {
            let refused = try_write(c).expect_err("a slave");
            assert!(refused.contains("replication slave table"), "{refused}");
        }
        for round in 0..3 {
            std::thread::sleep(Duration::from_millis(150));
            for s in [m, other] {
                assert_ok(
                    &between(s1, s, &[DB, DB]),
                    &format!("round {round}: new master -> a slave"),
                );
            }
        }
        versions
    });
    let (m, s1) = (nodes[0], nodes[1]);
    for s in [m, other] {
        assert_ok(&between(s1, s, &[DB, DB]), "final cycle");
        assert_eq!(both_tables(s), both_tables(s1));
    }
    assert_not_copied(other, &versions, "after the new master's change sets");
    assert_eq!(total(s1), (ACCOUNTS * 1000).to_string());
    let unexpected = load.unexpected.into_inner().expect("lock");
    assert!(unexpected.is_empty(), "writers met: {unexpected:?}");
    let committed = load.committed.into_inner().expect("lock");
    assert!(
        committed.len() > 10,
        "the workload ran: {}",
        committed.len()
    );
    let have = rows(s1, "transfer");
    let lost: Vec<&i64> = committed
        .iter()
        .filter(|id| !have.contains_key(&id.to_string()))
        .collect();
    assert!(lost.is_empty(), "committed transfers lost: {lost:?}");
    // the other slave follows the new master, having followed the old one
    assert_eq!(
        other.query_strings(
            DB,
            "SELECT master_node::text, previous_master::text FROM rserv_status WHERE server IS NULL"
        )[0],
        vec![Some(node(s1)), Some(node(m))]
    );
}

/// The switchover stopped at each step in turn (as a kill would: exit at once, open
/// transactions rolled back) and run again: it finishes, never with two nodes taking writes,
/// the other slave follows the new master without a copy, and all three end equal. The
/// clusters switch back and forth, one step per round.
#[test]
fn switchover_with_another_slave_stopped_at_each_step_finishes_when_run_again() {
    let cs = three(["swo2k-a", "swo2k-b", "swo2k-c"]);
    let (a, b, other) = (&cs[0], &cs[1], &cs[2]);
    let steps = [
        "switchover:fenced",
        "switchover:synced",
        "switchover:promoted",
        "switchover:caught-up",
        "switchover:adopted",
        "switchover:repointed",
        "switchover:demoted",
    ];
    let mut n = 0;
    for (round, step) in steps.iter().enumerate() {
        let (m, s) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let mut c = m.connect(DB);
        for _ in 0..15 {
            n += 1;
            transfer(&mut c, n).expect("a transfer on the master");
        }
        drop(c);
        assert_ok(&between(m, s, &[DB, DB]), "master -> slave");
        assert_ok(&between(m, other, &[DB, DB]), "master -> other slave");
        let versions = transfer_versions(other);
        let mut c = m.connect(DB);
        for _ in 0..5 {
            n += 1;
            transfer(&mut c, n).expect("a transfer the slaves have not seen");
        }
        drop(c);
        let stop = format!("stop:{step}");
        let out = switchover(m, s, &[other], &[("RSERV_TEST_STEP", &stop)]);
        assert_eq!(out.status.code(), Some(86), "{step}: {}", output_text(&out));
        let writable = [a, b, other].map(|c| try_write(c).is_ok());
        assert!(
            writable.iter().filter(|w| **w).count() <= 1,
            "{step}: two nodes take writes: {writable:?}"
        );
        assert!(!writable[2], "{step}: the other slave takes writes");
        let out = switchover(m, s, &[other], &[]);
        let text = output_text(&out);
        if *step == "switchover:demoted" {
            // everything was done but recording the takeover complete
            assert!(text.contains("complete already"), "{step}: {text}");
        } else {
            assert_ok(&out, &format!("switchover run again after {step}"));
            assert!(
                text.contains("held exactly what the new master held"),
                "{step}: {text}"
            );
        }
        assert!(
            try_write(s).is_ok() && try_write(m).is_err() && try_write(other).is_err(),
            "{step}: only the new master takes writes"
        );
        assert_not_copied(other, &versions, step);
        let mut c = s.connect(DB);
        for _ in 0..5 {
            n += 1;
            transfer(&mut c, n).expect("a transfer on the new master");
        }
        drop(c);
        for x in [m, other] {
            assert_ok(&between(s, x, &[DB, DB]), "new master -> its slaves");
            assert_eq!(both_tables(x), both_tables(s), "{step}");
        }
        assert_not_copied(other, &versions, step);
        assert_eq!(total(s), (ACCOUNTS * 1000).to_string(), "{step}");
        assert_eq!(
            value(
                s,
                "SELECT coalesce(in_progress, '-') FROM rserv_status WHERE server IS NULL"
            ),
            "-",
            "{step}: the switchover is complete"
        );
    }
}

/// A slave of the master not given is refused by name (server id and node) before anything
/// changes, with the commands to run; dropped from the master instead, it is re-pointed after
/// the switchover with `replicate failover NEWMASTER SLAVE`, compared and repaired, no copy.
#[test]
fn a_slave_not_given_is_refused_by_name_or_repointed_by_failover_afterwards() {
    let cs = three(["swo2r-m", "swo2r-s1", "swo2r-s2"]);
    let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
    let mut c = m.connect(DB);
    for n in 0..20 {
        transfer(&mut c, n).expect("a transfer");
    }
    assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
    assert_ok(&between(m, s2, &[DB, DB]), "master -> slave 2");
    for n in 20..30 {
        transfer(&mut c, n).expect("a transfer slave 2 lacks");
    }
    drop(c);
    let versions = transfer_versions(s2);
    let s2_server = value(
        m,
        &format!(
            "SELECT server::text FROM rserv_status WHERE slave_node = '{}'",
            node(s2)
        ),
    );
    let out = switchover(m, s1, &[], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        format!("server {s2_server} (node {})", node(s2)),
        "--other SLAVEDB".into(),
        format!("replicate --server {s2_server} drop-slave MASTERDB"),
        "replicate failover NEWMASTERDB SLAVEDB".into(),
        "Nothing was changed".into(),
    ] {
        assert!(stderr.contains(&needle), "{needle:?} in {stderr}");
    }
    assert!(try_write(m).is_ok(), "the master was not fenced");
    assert!(try_write(s1).is_err(), "the slave was not promoted");

    // the other way: drop it, switch over, re-point it by failover
    let out = between(m, s1, &["--server", &s2_server, "drop-slave", DB]);
    assert_ok(&out, "drop-slave");
    assert_ok(&switchover(m, s1, &[], &[]), "switchover without it");
    let mut args = vec!["--user=postgres".to_string(), "failover".to_string()];
    args.extend([database_arg(s1), database_arg(s2)]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_replicate(&refs);
    assert_ok(&out, "failover NEWMASTER SLAVE after the switchover");
    let text = output_text(&out);
    assert!(
        text.contains("re-pointed ") && text.contains("rows re-sent"),
        "{text}"
    );
    assert_eq!(both_tables(s2), both_tables(s1));
    assert_not_copied(s2, &versions, "re-pointed by failover");
    let mut c = s1.connect(DB);
    for n in 100..110 {
        transfer(&mut c, n).expect("a transfer on the new master");
    }
    drop(c);
    for s in [m, s2] {
        assert_ok(&between(s1, s, &[DB, DB]), "new master -> its slaves");
        assert_eq!(both_tables(s), both_tables(s1));
    }
    assert_not_copied(s2, &versions, "after the new master's change sets");
    assert!(try_write(s2).is_err() && try_write(m).is_err() && try_write(s1).is_ok());
}

/// A run stopped once the other slave was re-pointed, whose old master then forgot that slave
/// (dropped there by hand): run again, it cannot verify the slave on the old master, so it
/// compares it with the new master instead (nothing to re-send), and finishes.
#[test]
fn a_repointed_slave_the_old_master_no_longer_knows_is_compared_instead() {
    let cs = three(["swo2f-m", "swo2f-s1", "swo2f-s2"]);
    let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
    let mut c = m.connect(DB);
    for n in 0..20 {
        transfer(&mut c, n).expect("a transfer");
    }
    drop(c);
    assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
    assert_ok(&between(m, s2, &[DB, DB]), "master -> slave 2");
    let versions = transfer_versions(s2);
    let out = switchover(
        m,
        s1,
        &[s2],
        &[("RSERV_TEST_STEP", "stop:switchover:repointed")],
    );
    assert_eq!(out.status.code(), Some(86), "{}", output_text(&out));
    let s2_server = value(
        m,
        &format!(
            "SELECT server::text FROM rserv_status WHERE slave_node = '{}'",
            node(s2)
        ),
    );
    assert_ok(
        &between(m, s1, &["--server", &s2_server, "drop-slave", DB]),
        "drop-slave on the fenced old master",
    );
    let out = switchover(m, s1, &[s2], &[]);
    assert_ok(&out, "switchover run again");
    let text = output_text(&out);
    assert!(
        text.contains("compared with the new master: 0 rows re-sent"),
        "{text}"
    );
    assert_not_copied(s2, &versions, "compared");
    let mut c = s1.connect(DB);
    transfer(&mut c, 100).expect("a transfer on the new master");
    drop(c);
    for s in [m, s2] {
        assert_ok(&between(s1, s, &[DB, DB]), "new master -> its slaves");
        assert_eq!(both_tables(s), both_tables(s1));
    }
}
