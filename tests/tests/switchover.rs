//! Switchover: master and slave swap roles at one sync point, with no copy, under a steady
//! money-transfer workload whose clients retry on the fence and then write to the new master.

use rserv_tests::pair::{assert_ok, Pair, DB};
use rserv_tests::Cluster;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const ACCOUNTS: i64 = 20;

/// `replicate` with `m` as master and `s` as slave.
fn replicate(m: &Cluster, s: &Cluster, args: &[&str]) -> Output {
    rserv_tests::pair::replicate_between(m, s, args)
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

fn total(c: &Cluster) -> String {
    c.query_strings(DB, "SELECT sum(balance)::text FROM account")[0][0]
        .clone()
        .unwrap_or_default()
}

fn setup(name: &str) -> Pair {
    let p = Pair::start(name);
    p.table(
        "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL)",
        "account",
        None,
    );
    p.table(
        "CREATE TABLE transfer (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL, amount int NOT NULL)",
        "transfer",
        None,
    );
    p.master.execute(
        DB,
        &format!("INSERT INTO account SELECT g, 1000 FROM generate_series(1, {ACCOUNTS}) g"),
    );
    assert_ok(&p.replicate(&[DB, DB]), "first copy");
    p
}

/// One transfer on `c`; Ok(transfer id) when it committed.
fn transfer(c: &mut postgres::Client, n: u64) -> Result<i64, postgres::Error> {
    // the lower id first, so that two transfers never wait for each other's accounts
    let (x, y) = (
        (n % ACCOUNTS as u64) as i32 + 1,
        ((n * 7 + 3) % ACCOUNTS as u64) as i32 + 1,
    );
    let (a, b) = if n.is_multiple_of(2) { (x, y) } else { (y, x) };
    let (first, second) = (a.min(b), a.max(b));
    let delta = |id: i32| if id == a { -1i64 } else { 1 };
    let amount = (n % 13) as i32 + 1;
    let mut tx = c.transaction()?;
    for id in [first, second] {
        if a != b {
            tx.execute(
                "UPDATE account SET balance = balance + $2 WHERE id = $1",
                &[&id, &(delta(id) * amount as i64)],
            )?;
        }
    }
    let id: i64 = tx
        .query_one(
            "INSERT INTO transfer (src, dst, amount) VALUES ($1, $2, $3) RETURNING id",
            &[&a, &b, &amount],
        )?
        .get(0);
    tx.commit()?;
    Ok(id)
}

/// Switch over back and forth under load: every transfer a client saw committed exists on the
/// final master, the total holds, both sides end equal, the old master refuses writes after
/// each switchover, and replication goes on in the new direction.
#[test]
fn switchover_back_and_forth_under_transfers() {
    let p = setup("swo");
    let nodes = [&p.master, &p.slave];
    let current = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let committed: Mutex<Vec<i64>> = Mutex::new(Vec::new());
    let refusals = AtomicUsize::new(0);
    let unexpected: Mutex<Vec<String>> = Mutex::new(Vec::new());
    /// Stops the writers however the main thread leaves the scope (a failed assertion too).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|sc| {
        let _stop = StopOnDrop(&stop);
        for w in 0..2u64 {
            let (current, stop, committed, refusals, unexpected) =
                (&current, &stop, &committed, &refusals, &unexpected);
            sc.spawn(move || {
                let mut on = usize::MAX;
                let mut client: Option<postgres::Client> = None;
                let mut n = w * 1_000_000;
                while !stop.load(Ordering::SeqCst) {
                    let now = current.load(Ordering::SeqCst);
                    if on != now || client.is_none() {
                        client = Some(nodes[now].connect(DB));
                        on = now;
                    }
                    n += 1;
                    let Some(c) = client.as_mut() else { continue };
                    match transfer(c, n) {
                        Ok(id) => committed.lock().expect("lock").push(id),
                        Err(e) => {
                            let msg = rserv_tests::describe_pg_error(&e);
                            if msg.contains("switchover in progress")
                                || msg.contains("replication slave table")
                                || msg.contains("canceling statement")
                            {
                                refusals.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(20));
                            } else {
                                unexpected.lock().expect("lock").push(msg);
                                client = None;
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                }
            });
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
            current.store((round + 1) % 2, Ordering::SeqCst);
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
    let unexpected = unexpected.into_inner().expect("lock");
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
    let committed = committed.into_inner().expect("lock");
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
        refusals.load(Ordering::SeqCst)
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
