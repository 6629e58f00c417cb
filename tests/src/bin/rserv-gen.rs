//! Soak driver of the generative test (scripts/soak.sh runs it).
//!
//! ```text
//! rserv-gen [--seconds N] [--seed S] [--count N] [--keep-going] [--no-shrink]
//!           [--shrink-seconds N] [--print] [--replay FILE] [--compact FILE] [--verbose]
//! ```
//! Runs seeds S, S+1, ... (S random when not given) for N seconds (default 60) or N seeds;
//! on a failure prints the seed and its minimal (shrunk) schedule, then stops (exit 1) unless
//! --keep-going (then one shrunk report per distinct failure signature). --print shows the
//! schedule of --seed without running it; --replay runs a schedule saved as JSON; --compact
//! prints one without its unused tables, values and types.
//! RSERV_GEN_AVOID=feature,... switches generator features off (see GenConfig).

use rserv_tests::gen::{self, Env, GenConfig, Schedule};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() {
    // exit only after the clusters (dropped at the end of run) are stopped and removed
    let code = run();
    std::process::exit(code);
}

fn run() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seconds = 60u64;
    let mut seed: Option<u64> = None;
    let mut count: Option<u64> = None;
    let mut keep_going = false;
    let mut shrink = true;
    let mut shrink_seconds = 600u64;
    let mut print = false;
    let mut verbose = false;
    let mut replay: Option<String> = None;
    let mut compact: Option<String> = None;
    let mut it = args.iter();
    let num = |v: Option<&String>, what: &str| -> u64 {
        let v = v.unwrap_or_else(|| die(&format!("{what} needs a value")));
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        };
        parsed.unwrap_or_else(|| die(&format!("{what}: not a number: {v}")))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => seconds = num(it.next(), "--seconds"),
            "--seed" => seed = Some(num(it.next(), "--seed")),
            "--count" => count = Some(num(it.next(), "--count")),
            "--shrink-seconds" => shrink_seconds = num(it.next(), "--shrink-seconds"),
            "--keep-going" => keep_going = true,
            "--no-shrink" => shrink = false,
            "--print" => print = true,
            "--verbose" => verbose = true,
            "--replay" => replay = it.next().cloned(),
            "--compact" => compact = it.next().cloned(),
            "-h" | "--help" => {
                println!("usage: rserv-gen [--seconds N] [--seed S] [--count N] [--keep-going] [--no-shrink] [--shrink-seconds N] [--print] [--replay FILE] [--compact FILE] [--verbose]");
                return 0;
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    let cfg = GenConfig::from_env();
    if let Some(file) = compact {
        let json = std::fs::read_to_string(&file).unwrap_or_else(|e| die(&format!("{file}: {e}")));
        let sch = Schedule::from_json(&json).unwrap_or_else(|e| die(&e));
        let sch = gen::shrink::compact(&sch);
        print!("{}", sch.render());
        println!("--- replay JSON ---\n{}", sch.to_json());
        return 0;
    }
    if print {
        let s = gen::generate(seed.unwrap_or(0), &cfg);
        print!("{}", s.render());
        println!("--- replay JSON ---\n{}", s.to_json());
        return 0;
    }
    let replayed = replay.map(|file| {
        let json = std::fs::read_to_string(&file).unwrap_or_else(|e| die(&format!("{file}: {e}")));
        let sch = Schedule::from_json(&json).unwrap_or_else(|e| die(&e));
        (file, sch)
    });
    let env = Env::start("soak");
    if let Some((file, sch)) = replayed {
        match gen::execute(&env, &sch) {
            Ok(st) => println!("replay of {file}: passed ({st:?})"),
            Err(f) => {
                println!("{}", gen::report(&sch, &f, "replay failed"));
                if shrink {
                    println!(
                        "{}",
                        gen::shrink_report(
                            &env,
                            &sch,
                            &f,
                            Duration::from_secs(shrink_seconds),
                            verbose
                        )
                    );
                }
                return 1;
            }
        }
        return 0;
    }
    let start_seed = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 & 0xffff_ffff)
            .unwrap_or(1)
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut failures: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut ran = 0u64;
    let mut s = start_seed;
    eprintln!("rserv-gen: seeds from {start_seed} for {seconds} s");
    loop {
        if count.is_some_and(|c| ran >= c) || (count.is_none() && Instant::now() >= deadline) {
            break;
        }
        let t0 = Instant::now();
        let result = gen::run_seed(&env, s, &cfg);
        ran += 1;
        match result {
            Ok(st) => eprintln!(
                "seed {s}: ok ({} steps, {} cycles, {} change sets applied, {} rows compared) in {:.1}s",
                st.steps,
                st.cycles,
                st.applied,
                st.compared_rows,
                t0.elapsed().as_secs_f64()
            ),
            Err(failed) => {
                let (sch, f) = (&failed.schedule, &failed.failure);
                let sig = f.signature();
                eprintln!("seed {s}: FAILED: {sig}");
                let first = !failures.contains_key(&sig);
                failures.entry(sig).or_default().push(s);
                if first {
                    println!("{}", gen::report(sch, f, "failing seed"));
                    if shrink {
                        println!(
                            "{}",
                            gen::shrink_report(&env, sch, f, Duration::from_secs(shrink_seconds), verbose)
                        );
                    }
                }
                if !keep_going {
                    break;
                }
            }
        }
        s = s.wrapping_add(1);
    }
    eprintln!(
        "rserv-gen: {ran} seeds in {:.0} s, {} distinct failures",
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    for (sig, seeds) in &failures {
        eprintln!("  {sig}: seeds {seeds:?}");
    }
    i32::from(!failures.is_empty())
}

fn die(msg: &str) -> ! {
    eprintln!("rserv-gen: {msg}");
    std::process::exit(2);
}
