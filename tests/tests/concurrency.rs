//! Correctness under concurrency: money moves between accounts while replicate runs again and
//! again; after every sync the slave holds a transaction-consistent state of the master.

use rserv_tests::pair::{transfer_sql, Pair, DB};
use rserv_tests::rng::Rng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const ACCOUNTS: i64 = 200;
const START: i64 = 1000;

#[test]
fn money_transfers_keep_the_invariant() {
    let p = Pair::start("money");
    p.table(
        "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL, touched int NOT NULL DEFAULT 0)",
        "account",
        None,
    );
    p.both(&format!(
        "INSERT INTO account SELECT g, {START} FROM generate_series(1, {ACCOUNTS}) g"
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let transfers = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let mut c = p.master.connect(DB);
            let (stop, transfers) = (stop.clone(), transfers.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
                let mut rnd = move |n: i64| rng.below_u64(n as u64) as i64;
                while !stop.load(Ordering::Relaxed) {
                    let (a, b, amt) = (rnd(ACCOUNTS) + 1, rnd(ACCOUNTS) + 1, rnd(50) + 1);
                    if a == b {
                        continue;
                    }
                    let sql = transfer_sql(rnd(10) as u64, a, b, amt, w);
                    match c.batch_execute(&sql) {
                        Ok(()) => {
                            transfers.fetch_add(1, Ordering::Relaxed);
                        }
                        // deadlocks between writers are expected; the transaction is rolled back
                        Err(_) => {
                            let _ = c.batch_execute("ROLLBACK");
                        }
                    }
                }
            })
        })
        .collect();

    let mut session = p.session();
    let total = (ACCOUNTS * START).to_string();
    let mut syncs = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline || syncs < 10 {
        session.cycle().expect("replication cycle");
        syncs += 1;
        let sum = p
            .slave
            .query_strings(DB, "SELECT sum(balance)::text FROM account")[0][0]
            .clone();
        assert_eq!(
            sum.as_deref(),
            Some(total.as_str()),
            "slave total after sync {syncs}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    session.cycle().expect("final cycle");
    p.assert_equal("account");
    assert!(
        transfers.load(Ordering::Relaxed) > 100,
        "the writers made progress"
    );
    eprintln!(
        "{} transfers, {syncs} syncs",
        transfers.load(Ordering::Relaxed)
    );
}

/// Two replicate processes on the same slave at once: one waits for the other; no change set
/// is applied twice or out of order, and the end state is the master's.
#[test]
fn concurrent_replicate_runs() {
    let p = Pair::start("twice");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v int)", "t", None);
    for round in 0..8 {
        p.master.execute(
            DB,
            &format!("INSERT INTO t SELECT g, {round} FROM generate_series({0}, {0} + 99) g ON CONFLICT (id) DO UPDATE SET v = excluded.v", round * 50),
        );
        let outs = std::thread::scope(|s| {
            let a = s.spawn(|| p.replicate(&[DB, DB]));
            let b = s.spawn(|| p.replicate(&[DB, DB]));
            [a.join().unwrap(), b.join().unwrap()]
        });
        for o in &outs {
            rserv_tests::pair::assert_ok(o, "concurrent replicate");
        }
        p.assert_equal("t");
    }
}
