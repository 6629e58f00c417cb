//! The switchover's write-unavailability window under a steady pgbench load
//! (`bench/switchover.sh` runs it; see bench/README.md).
//!
//! ```text
//! rserv-switchover-bench [--rounds N] [--rate TPS] [--clients N] [--scale N]
//! ```
//! Two throwaway clusters (the test harness's: `RSERV_PG_BINDIR`, `replicate` from
//! `RSERV_REPLICATE_BIN`), a pgbench TPC-B database replicated from one to the other by one
//! `replicate run` daemon for the whole run, then N switchovers back and forth. In each round
//! pgbench runs at a steady rate on the master, a probe client writes to a replicated table
//! every few milliseconds and, once refused, tries the other node, as an application retrying
//! on the fence error would; then `replicate switchover`. Per round it reports the window
//! `replicate` measured (fence to promotion commit), the window the probe saw (its last write
//! accepted on the old master to its first on the new one), and how long the daemon took to
//! bring a row written on the new master to the old one (it follows the flip by itself).

use postgres::{Client, NoTls};
use rserv_tests::pair::{between, start_clusters, DB};
use rserv_tests::{pg_bindir, Cluster};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

fn die(msg: &str) -> ! {
    eprintln!("rserv-switchover-bench: {msg}");
    std::process::exit(2)
}

fn main() {
    let code = run();
    std::process::exit(code);
}

struct Options {
    rounds: usize,
    rate: u32,
    clients: u32,
    scale: u32,
}

fn options() -> Options {
    let mut o = Options {
        rounds: 6,
        rate: 200,
        clients: 4,
        scale: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |what: &str| -> u32 {
            it.next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .unwrap_or_else(|| die(&format!("{what} needs a positive number")))
        };
        match a.as_str() {
            "--rounds" => o.rounds = value("--rounds") as usize,
            "--rate" => o.rate = value("--rate"),
            "--clients" => o.clients = value("--clients"),
            "--scale" => o.scale = value("--scale"),
            other => die(&format!("unknown argument {other}")),
        }
    }
    o
}

/// pgbench on `c` at `rate` transactions per second until killed.
fn pgbench(c: &Cluster, args: &[String]) -> Child {
    Command::new(pg_bindir().join("pgbench"))
        .args(args)
        .args([
            "-h",
            &c.socket_dir().display().to_string(),
            "-p",
            &c.port().to_string(),
            "-U",
            "postgres",
            DB,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("cannot start pgbench: {e}")))
}

/// One write to a replicated table; true when it committed.
fn probe_write(client: &mut Option<Client>, c: &Cluster) -> bool {
    if client.is_none() {
        *client = Client::connect(&c.conninfo(DB), NoTls).ok();
    }
    let Some(cl) = client.as_mut() else {
        return false;
    };
    match cl.batch_execute("UPDATE pgbench_branches SET filler = 'probe' WHERE bid = 1") {
        Ok(()) => true,
        Err(e) => {
            if e.is_closed() {
                *client = None;
            }
            false
        }
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run() -> i32 {
    let o = options();
    let cs = start_clusters(&["bench-a", "bench-b"]);
    let nodes = [&cs[0], &cs[1]];
    let bin = pg_bindir().join("pgbench");
    let init = Command::new(&bin)
        .args(["-i", "-q", "-s", &o.scale.to_string(), "-h"])
        .arg(nodes[0].socket_dir())
        .args(["-p", &nodes[0].port().to_string(), "-U", "postgres", DB])
        .output()
        .unwrap_or_else(|e| die(&format!("pgbench -i: {e}")));
    if !init.status.success() {
        die(&format!(
            "pgbench -i: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }
    nodes[0].execute(
        DB,
        "ALTER TABLE pgbench_history ADD COLUMN hid bigserial PRIMARY KEY;
         SELECT rserv_add_table(t) FROM unnest(ARRAY['pgbench_accounts', 'pgbench_branches',
                'pgbench_tellers', 'pgbench_history']::regclass[]) t",
    );
    let out = between(nodes[0], nodes[1], &["--create-tables", DB, DB]);
    if !out.status.success() {
        die(&format!(
            "initial copy: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut args = rserv_tests::pair::conn_args(nodes[0], nodes[1]);
    args.extend(["run", "--interval", "0.1", DB, DB].map(String::from));
    let daemon = rserv_tests::daemon::Daemon::start(&args);
    let load = [
        "-n".to_string(),
        "-c".into(),
        o.clients.to_string(),
        "-j".into(),
        "2".into(),
        "-R".into(),
        o.rate.to_string(),
        "-T".into(),
        "3600".into(),
    ];
    println!(
        "switchover under pgbench TPC-B at {} tps ({} clients, scale {}), {} rounds",
        o.rate, o.clients, o.scale, o.rounds
    );
    println!("round  direction  replicate (s)  probe (s)  daemon follows (s)");
    let mut reported = Vec::new();
    let mut probed = Vec::new();
    let mut followed = Vec::new();
    for round in 0..o.rounds {
        let (m, s) = (nodes[round % 2], nodes[(round + 1) % 2]);
        let mut bench = pgbench(m, &load);
        std::thread::sleep(Duration::from_secs(3)); // steady load, the daemon keeping up
        let stop = AtomicBool::new(false);
        let events: Mutex<Vec<(Instant, usize, bool)>> = Mutex::new(Vec::new());
        let out = std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut clients: [Option<Client>; 2] = [None, None];
                let mut on = 0usize; // 0: the master, 1: the slave
                let pair = [m, s];
                while !stop.load(Ordering::SeqCst) {
                    let ok = probe_write(&mut clients[on], pair[on]);
                    if let Ok(mut e) = events.lock() {
                        e.push((Instant::now(), on, ok));
                    }
                    if !ok {
                        on = 1 - on;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
            std::thread::sleep(Duration::from_millis(500));
            let out = between(m, s, &["switchover", "--grace", "1", DB, DB]);
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::SeqCst);
            out
        });
        let _ = bench.kill();
        let _ = bench.wait();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
            return 1;
        }
        let window = text
            .split("writes refused for ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        let events = events.into_inner().unwrap_or_default();
        let first_new = events.iter().find(|(_, n, ok)| *n == 1 && *ok).map(|e| e.0);
        let last_old = events
            .iter()
            .filter(|(at, n, ok)| *n == 0 && *ok && first_new.is_none_or(|f| *at < f))
            .map(|e| e.0)
            .next_back();
        let seen = match (last_old, first_new) {
            (Some(a), Some(b)) => seconds(b - a),
            _ => f64::NAN,
        };
        // the daemon follows the flip: a row written on the new master reaches the old one
        let marker = format!("bench-{round}");
        let started = Instant::now();
        s.execute(
            DB,
            &format!("UPDATE pgbench_branches SET filler = '{marker}' WHERE bid = 1"),
        );
        let query = "SELECT filler FROM pgbench_branches WHERE bid = 1";
        let follows = loop {
            let v = m.query_strings(DB, query)[0][0].clone().unwrap_or_default();
            if v.trim_end() == marker {
                break seconds(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(120) {
                eprintln!("the daemon did not follow the flip:\n{}", daemon.log());
                return 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        println!(
            "{round:>5}  {:<9}  {window:>13.3}  {seen:>9.3}  {follows:>18.3}",
            if round % 2 == 0 { "a -> b" } else { "b -> a" }
        );
        reported.push(window);
        probed.push(seen);
        followed.push(follows);
    }
    let _ = daemon.stop();
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    for (what, v) in [
        ("replicate's window", &mut reported),
        ("probe's window", &mut probed),
        ("daemon follows", &mut followed),
    ] {
        let (min, median, max) = stats(v);
        println!("{what}: min {min:.3} s, median {median:.3} s, max {max:.3} s");
    }
    0
}
