//! Failover and rejoin on real clusters, as the README's "The master died" walkthrough does it:
//! the master killed (`pg_ctl -m immediate`) under a money-transfer load, the most advanced
//! slave promoted, a second slave re-pointed without a copy, the old master back with
//! transactions the new master never received, rejoined: reported, saved, replaced.

use rserv_tests::bank::{self, both_tables, total, transfer, try_write, Rows, ACCOUNTS};
use rserv_tests::pair::{
    assert_ok, between, between_env, conn_args, database_arg, failover, start_clusters, DB,
};
use rserv_tests::roles::output_text;
use rserv_tests::{run_replicate, Cluster, Stepped};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How `replicate` names a database given as [`database_arg`].
fn name(c: &Cluster) -> String {
    format!("{DB}@{}:{}", c.socket_dir().display(), c.port())
}

fn value(c: &Cluster, sql: &str) -> String {
    c.query_strings(DB, sql)[0][0].clone().unwrap_or_default()
}

fn node(c: &Cluster) -> String {
    value(c, "SELECT rserv_node_id()")
}

/// `rejoin --discard-divergent --divergent-file FILE DB DB`.
fn rejoin_discarding(file: &str) -> [&str; 6] {
    [
        "rejoin",
        "--discard-divergent",
        "--divergent-file",
        file,
        DB,
        DB,
    ]
}

/// A file for a rejoin's discarded rows.
fn scratch_file(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rserv-test-{what}-{}.sql", std::process::id()))
}

/// Keys whose rows differ between two versions of a table.
fn changed_keys(a: &Rows, b: &Rows) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// The keys a rejoin reported per table, with the rows it said each side holds
/// (`public.t key (k) [transactions ...]: old master R | new master R`).
fn reported(stdout: &str) -> BTreeMap<String, BTreeMap<String, (String, String)>> {
    let mut out: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
    for line in stdout.lines() {
        let Some((table, rest)) = line.split_once(" key (") else {
            continue;
        };
        let Some((key, rest)) = rest.split_once(')') else {
            continue;
        };
        let Some((_, sides)) = rest.split_once(": old master ") else {
            continue;
        };
        let Some((old, new)) = sides.split_once(" | new master ") else {
            continue;
        };
        let new = new.trim_end_matches("  (same)");
        out.entry(table.trim_start_matches("public.").to_string())
            .or_default()
            .insert(key.to_string(), (old.to_string(), new.to_string()));
    }
    out
}

/// The COPY blocks of a rejoin's file: table -> data lines.
fn copy_blocks(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("COPY ") {
            let table = rest.split_whitespace().next().unwrap_or_default();
            current = Some(table.trim_start_matches("public.").to_string());
            out.entry(current.clone().unwrap_or_default()).or_default();
        } else if line == "\\." {
            current = None;
        } else if let Some(t) = &current {
            out.entry(t.clone()).or_default().push(line.to_string());
        }
    }
    out
}

/// The master dies under load; its most advanced slave takes over, the other follows it; the
/// old master comes back holding transactions nobody received, and writes taken after its
/// restart; rejoin refuses to discard them without the flag (changing nothing but the fence),
/// then, with it, reports and saves them and leaves the old master equal to the new one,
/// replicating from it.
#[test]
fn master_killed_under_load_fails_over_then_rejoins_with_divergent_transactions() {
    let cs = start_clusters(&["fo-m", "fo-s1", "fo-s2"]);
    let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
    bank::master(m);
    for s in [s1, s2] {
        assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
    }
    let (m_node, s1_node, s2_node) = (node(m), node(s1), node(s2));
    let stop = AtomicBool::new(false);
    let committed: Mutex<Vec<i64>> = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for w in 0..2u64 {
            let (stop, committed) = (&stop, &committed);
            let mut c = m.connect(DB);
            sc.spawn(move || {
                let mut n = w * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    match transfer(&mut c, n) {
                        Ok(id) => committed.lock().expect("lock").push(id),
                        Err(_) => break, // the master is gone
                    }
                }
            });
        }
        // the first slave follows closely, the second is left behind
        for round in 0..8 {
            std::thread::sleep(Duration::from_millis(100));
            assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
            if round == 3 {
                assert_ok(&between(m, s2, &[DB, DB]), "master -> slave 2");
            }
        }
        m.stop_immediate(); // mid-load
        stop.store(true, Ordering::SeqCst);
    });
    assert!(committed.lock().expect("lock").len() > 10, "the load ran");
    let positions = [s1, s2].map(|c| value(c, "SELECT rserv_slave_sync_id()"));

    // failover: the most advanced (slave 1) is promoted, slave 2 follows it, repaired
    let out = failover(&[s2, s1], &[]);
    assert_ok(&out, "failover");
    let text = output_text(&out);
    for (c, at, n) in [(s1, &positions[0], &s1_node), (s2, &positions[1], &s2_node)] {
        assert!(
            text.contains(&format!(
                "slave {} (node {n}): at change set {at} of the failed master",
                name(c)
            )),
            "each slave's position is reported: {text}"
        );
    }
    assert!(
        text.contains(&format!("promoted {}", name(s1))),
        "the most advanced slave is promoted: {text}"
    );
    assert!(text.contains(&format!("re-pointed {}", name(s2))), "{text}");
    let at_takeover = both_tables(s1);
    assert_eq!(
        both_tables(s2),
        at_takeover,
        "the re-pointed slave equals the new master"
    );
    assert_eq!(total(s1), (ACCOUNTS * 1000).to_string());
    // roles, in the view and in replicate status
    assert_eq!(
        s1.query_strings(
            DB,
            "SELECT role, in_progress, takeover_kind, takeover_from::text FROM rserv_status WHERE server IS NULL"
        )[0],
        vec![
            Some("master".into()),
            Some("failover".into()),
            Some("failover".into()),
            Some(m_node.clone())
        ]
    );
    assert_eq!(
        s2.query_strings(
            DB,
            "SELECT role, master_node::text, previous_master::text FROM rserv_status WHERE server IS NULL"
        )[0],
        vec![
            Some("slave".into()),
            Some(s1_node.clone()),
            Some(m_node.clone())
        ]
    );
    let status = run_replicate(&["--user=postgres", "status", &database_arg(s1)]);
    assert_ok(&status, "status");
    let status = output_text(&status);
    assert!(
        status.contains(&format!("took over from {m_node} by failover"))
            && status.contains("FAILOVER IN PROGRESS"),
        "{status}"
    );

    // the new master takes writes and feeds the other slave
    let mut c = s1.connect(DB);
    for n in 0..20 {
        transfer(&mut c, 5_000_000 + n).expect("a write on the new master");
    }
    drop(c);
    s1.execute(
        DB,
        "UPDATE account SET balance = balance + 3 WHERE id = 1; UPDATE account SET balance = balance - 3 WHERE id = 3",
    );
    assert_ok(&between(s1, s2, &[DB, DB]), "new master -> slave 2");
    assert_eq!(both_tables(s2), both_tables(s1));
    assert!(try_write(s2).is_err(), "slave 2 refuses writes");

    // the old master comes back and, before anyone fences it, takes writes (the window the
    // README's walkthrough tells operators to close)
    m.start_again();
    m.execute(
        DB,
        "UPDATE account SET balance = balance + 7 WHERE id = 1; UPDATE account SET balance = balance - 7 WHERE id = 2;
         INSERT INTO transfer VALUES (900000001, 1, 2, 7);
         DELETE FROM transfer WHERE id = (SELECT min(id) FROM transfer)",
    );
    let m_before = both_tables(m);
    let n_before = both_tables(s1);
    // what the old master changed since the takeover point (its crash-lost transfers included)
    let changed = [0, 1].map(|i| changed_keys(&m_before[i], &at_takeover[i]));
    assert!(changed[1].contains("900000001"));

    // without the flag: refused, reported, saved, and nothing changed but the fence
    let refused_file = scratch_file("rejoin-refused");
    let f = refused_file.display().to_string();
    let out = between(s1, m, &["rejoin", "--divergent-file", &f, DB, DB]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rejoin refused") && stderr.contains("--discard-divergent"),
        "{stderr}"
    );
    assert_eq!(
        both_tables(m),
        m_before,
        "the refused rejoin changed the old master"
    );
    assert_eq!(
        both_tables(s1),
        n_before,
        "the refused rejoin changed the new master"
    );
    let fenced = try_write(m).expect_err("the old master is fenced");
    assert!(fenced.contains("no longer the master"), "{fenced}");
    assert!(
        std::fs::read_to_string(&refused_file)
            .unwrap_or_default()
            .contains("COPY "),
        "the refusal saved the rows too"
    );
    let _ = std::fs::remove_file(&refused_file);

    // with the flag
    let file = scratch_file("rejoin");
    let f = file.display().to_string();
    let out = between(s1, m, &rejoin_discarding(&f));
    assert_ok(&out, "rejoin --discard-divergent");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    let report = reported(&stdout);
    let keys = |t: &str| -> BTreeSet<String> {
        report
            .get(t)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    // exactly the transfers the old master changed (insert-only: nothing can change back)
    assert_eq!(
        keys("transfer"),
        changed[1],
        "reported transfers:\n{stdout}"
    );
    // every account it changed (one changed and changed back is reported as the same)
    assert!(
        keys("account").is_superset(&changed[0]),
        "reported accounts:\n{stdout}"
    );
    // what each side held
    let show = |r: Option<&String>| r.cloned().unwrap_or_else(|| "(no row)".into());
    for (i, t) in ["account", "transfer"].iter().enumerate() {
        for (k, (old, new)) in report.get(*t).into_iter().flatten() {
            assert_eq!(old, &show(m_before[i].get(k)), "{t} {k} on the old master");
            assert_eq!(new, &show(n_before[i].get(k)), "{t} {k} on the new master");
        }
    }
    // the file holds the old master's version of every row that differs, as COPY
    let saved = copy_blocks(&std::fs::read_to_string(&file).expect("the rejoin's file"));
    for (i, t) in ["account", "transfer"].iter().enumerate() {
        let expected: BTreeSet<String> = report
            .get(*t)
            .into_iter()
            .flatten()
            .filter(|(_, (old, new))| old != new && old != "(no row)")
            .map(|(_, (old, _))| old.clone())
            .collect();
        let got: BTreeSet<String> = saved
            .get(*t)
            .into_iter()
            .flatten()
            .map(|line| format!("({})", line.replace('\t', ",")))
            .collect();
        assert_eq!(got, expected, "{t}: rows saved");
        for row in &got {
            assert!(
                m_before[i].values().any(|v| v == row),
                "{t}: {row} was on the old master"
            );
        }
    }
    // and loads into a copy of the tables
    s1.create_db("scratch");
    let mut scratch = s1.connect("scratch");
    for (_, ddl) in bank::TABLES {
        scratch.batch_execute(ddl).expect("scratch table");
    }
    let text = std::fs::read_to_string(&file).expect("the rejoin's file");
    for (table, lines) in copy_blocks(&text) {
        let command = text
            .lines()
            .find(|l| l.starts_with(&format!("COPY public.{table} ")))
            .expect("COPY line")
            .trim_end_matches(';')
            .to_string();
        let mut w = scratch.copy_in(&command).expect("COPY");
        use std::io::Write;
        for l in &lines {
            w.write_all(format!("{l}\n").as_bytes()).expect("row");
        }
        assert_eq!(w.finish().expect("COPY loads") as usize, lines.len());
    }
    let _ = std::fs::remove_file(&file);

    // the old master equals the new one, follows it, and refuses writes
    assert_eq!(both_tables(m), both_tables(s1));
    let refused = try_write(m).expect_err("the old master is a slave");
    assert!(refused.contains("replication slave table"), "{refused}");
    let mut c = s1.connect(DB);
    for n in 0..20 {
        transfer(&mut c, 6_000_000 + n).expect("a write on the new master");
    }
    for s in [m, s2] {
        assert_ok(&between(s1, s, &[DB, DB]), "new master -> its slaves");
        assert_eq!(both_tables(s), both_tables(s1));
    }
    assert_eq!(total(m), (ACCOUNTS * 1000).to_string());
    assert_eq!(
        value(
            s1,
            "SELECT coalesce(in_progress, '-') FROM rserv_status WHERE server IS NULL"
        ),
        "-",
        "the failover is complete"
    );
}

/// A write is tried on both nodes while each operation is held at each of its steps, and
/// after it: never do both accept one. The old master, back after a failover, is fenced by the
/// first `replicate run` that reaches it.
#[test]
fn writes_on_both_nodes_during_and_after_each_operation() {
    let cs = start_clusters(&["both-a", "both-b"]);
    let (a, b) = (&cs[0], &cs[1]);
    bank::master(a);
    assert_ok(&between(a, b, &["--create-tables", DB, DB]), "first copy");
    let probe = |what: &str, expect: (bool, bool)| {
        let (wa, wb) = (try_write(a), try_write(b));
        assert!(
            !(wa.is_ok() && wb.is_ok()),
            "{what}: both nodes accepted a write"
        );
        assert_eq!(
            (wa.is_ok(), wb.is_ok()),
            expect,
            "{what}: a {wa:?}, b {wb:?}"
        );
    };
    let held = |args: Vec<String>, steps: &[(&str, (bool, bool))]| {
        let names: Vec<&str> = steps.iter().map(|(s, _)| *s).collect();
        let mut run = Stepped::start(&args, &names);
        for (step, expect) in steps {
            run.wait_for(step);
            probe(step, *expect);
            run.resume();
        }
        let (code, out, err) = run.finish();
        assert_eq!(code, Some(0), "{out}\n{err}");
    };
    probe("before", (true, false));

    // switchover a -> b
    let mut args = conn_args(a, b);
    args.extend(["switchover", DB, DB].map(String::from));
    held(
        args,
        &[
            ("switchover:fenced", (false, false)),
            ("switchover:synced", (false, false)),
            ("switchover:promoted", (false, true)),
            ("switchover:demoted", (false, true)),
        ],
    );
    probe("after the switchover", (false, true));

    // b dies; a takes over by failover
    b.stop_immediate();
    held(
        vec!["--user=postgres".into(), "failover".into(), database_arg(a)],
        &[
            ("failover:chosen", (false, false)),
            ("failover:promoted", (true, false)),
        ],
    );
    probe("after the failover", (true, false));

    // a daemon still configured b -> a reaches b when it is back, and fences it
    let mut args = conn_args(b, a);
    args.extend(["run", "--interval", "0.2", DB, DB].map(String::from));
    let daemon = rserv_tests::daemon::Daemon::start(&args);
    b.start_again();
    rserv_tests::daemon::eventually(120, "the daemon fences the old master", || {
        try_write(b).is_err_and(|e| e.contains("no longer the master"))
    });
    rserv_tests::daemon::eventually(60, "the daemon says why", || {
        daemon.log().contains("took over from this master")
    });
    daemon.stop();
    probe("the old master back, fenced", (true, false));

    // rejoin b as a's slave
    let file = scratch_file("both-rejoin");
    let mut args = conn_args(a, b);
    args.extend(rejoin_discarding(&file.display().to_string()).map(String::from));
    held(
        args,
        &[
            ("rejoin:fenced", (true, false)),
            ("rejoin:touched", (true, false)),
            ("rejoin:demoted", (true, false)),
        ],
    );
    let _ = std::fs::remove_file(&file);
    probe("after the rejoin", (true, false));
    assert_ok(&between(a, b, &[DB, DB]), "a -> b");
    assert_eq!(both_tables(a), both_tables(b));
}

/// Failover and rejoin stopped at each step in turn (as a kill would) and run again: each
/// finishes, and the nodes end consistent.
#[test]
fn failover_and_rejoin_stopped_at_each_step_finish_when_run_again() {
    let cases = [
        ("failover:chosen", "rejoin:fenced"),
        ("failover:promoted", "rejoin:touched"),
        ("failover:adopted", "rejoin:demoted"),
        ("failover:repointed", "rejoin:reported"),
    ];
    for (i, (fail_step, rejoin_step)) in cases.into_iter().enumerate() {
        let cs = start_clusters(&[
            &format!("kill{i}-m"),
            &format!("kill{i}-s1"),
            &format!("kill{i}-s2"),
        ]);
        let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
        bank::master(m);
        for s in [s1, s2] {
            assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
        }
        // slave 2 behind slave 1
        let mut c = m.connect(DB);
        for n in 0..30 {
            transfer(&mut c, n).expect("a transfer");
        }
        assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
        drop(c);
        m.stop_immediate();

        let stop = format!("stop:{fail_step}");
        let out = failover(&[s1, s2], &[("RSERV_TEST_STEP", &stop)]);
        assert_eq!(
            out.status.code(),
            Some(86),
            "{fail_step}: {}",
            output_text(&out)
        );
        let out = failover(&[s1, s2], &[]);
        assert_ok(&out, &format!("failover again after {fail_step}"));
        assert_eq!(both_tables(s2), both_tables(s1), "{fail_step}");
        assert!(
            try_write(s1).is_ok() && try_write(s2).is_err(),
            "{fail_step}"
        );

        let mut c = s1.connect(DB);
        for n in 0..10 {
            transfer(&mut c, 100 + n).expect("a write on the new master");
        }
        drop(c);
        m.start_again();
        m.execute(
            DB,
            "UPDATE account SET balance = balance + 1 WHERE id = 5; UPDATE account SET balance = balance - 1 WHERE id = 6",
        );
        let file = scratch_file(&format!("kill{i}"));
        let f = file.display().to_string();
        let args = rejoin_discarding(&f);
        let stop = format!("stop:{rejoin_step}");
        let out = between_env(s1, m, &args, &[("RSERV_TEST_STEP", &stop)]);
        assert_eq!(
            out.status.code(),
            Some(86),
            "{rejoin_step}: {}",
            output_text(&out)
        );
        let out = between_env(s1, m, &args, &[]);
        assert_ok(&out, &format!("rejoin again after {rejoin_step}"));
        let _ = std::fs::remove_file(&file);
        assert_eq!(both_tables(m), both_tables(s1), "{rejoin_step}");
        assert!(
            try_write(m).is_err(),
            "{rejoin_step}: the old master is a slave"
        );
        let mut c = s1.connect(DB);
        transfer(&mut c, 1000).expect("a write on the new master");
        for s in [m, s2] {
            assert_ok(&between(s1, s, &[DB, DB]), "new master -> its slaves");
            assert_eq!(both_tables(s), both_tables(s1), "{rejoin_step}");
        }
        assert_eq!(total(m), (ACCOUNTS * 1000).to_string());
    }
}

/// A slave ahead of the one chosen (`--promote`) holds transactions the chosen one lacks: the
/// failover is refused before anything changes, naming it; without the choice the one ahead is
/// promoted and the other follows it.
#[test]
fn promoting_a_slave_behind_another_is_refused() {
    let cs = start_clusters(&["ahead-m", "ahead-s1", "ahead-s2"]);
    let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
    bank::master(m);
    for s in [s1, s2] {
        assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
    }
    let mut c = m.connect(DB);
    for n in 0..10 {
        transfer(&mut c, n).expect("a transfer");
    }
    assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
    for n in 10..20 {
        transfer(&mut c, n).expect("a transfer");
    }
    assert_ok(&between(m, s2, &[DB, DB]), "master -> slave 2");
    drop(c);
    m.stop_immediate();
    let before = [both_tables(s1), both_tables(s2)];

    let mut args = vec!["--user=postgres".to_string(), "failover".to_string()];
    args.extend(["--promote".to_string(), database_arg(s1)]);
    args.extend([database_arg(s1), database_arg(s2)]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_replicate(&refs);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("slave {} is ahead of {}", name(s2), name(s1)))
            && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!([both_tables(s1), both_tables(s2)], before);
    assert!(
        try_write(s1).is_err() && try_write(s2).is_err(),
        "both still slaves"
    );

    let out = failover(&[s1, s2], &[]);
    assert_ok(&out, "failover to the most advanced");
    assert!(
        output_text(&out).contains(&format!("promoted {}", name(s2))),
        "{}",
        output_text(&out)
    );
    assert_eq!(both_tables(s1), both_tables(s2));
    assert_eq!(both_tables(s2), before[1]);
}
