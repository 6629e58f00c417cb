//! Generative differential testing of rserv.
//!
//! A seed ([`rng`]) gives a random schema from a wide type catalogue ([`schema`]) and a
//! schedule ([`workload`], [`schedule`]): statements of several master connections interleaved
//! statement by statement, transactions left open across cycles, savepoints, 2PC, TRUNCATE,
//! key changes and swaps, and replication operations in between (cycles to one or two slaves,
//! clean-up, a second slave joining mid-stream, hooks run inside a prepare transaction at its
//! snapshot, remove/re-add on either side, DDL, restarts, `replicate check`). The executor
//! ([`exec`]) runs a schedule with one driver thread on fresh databases, so a seed replays
//! exactly, and checks the oracle after every change set: the slave equals the master as of
//! that change set's snapshot. On failure the shrinker ([`shrink`]) removes what the failure
//! does not need; the minimal schedule prints for people ([`Schedule::render`]) and as JSON
//! that [`replay`] runs again (the regression tests in `tests/tests/generative.rs` do).

pub mod exec;
pub mod rng;
pub mod schedule;
pub mod schema;
pub mod shrink;
pub mod workload;

pub use exec::{execute, Env, Failure, Kind, Stats};
pub use schedule::{Schedule, Step};
pub use workload::{generate, GenConfig};

use std::time::Duration;

/// A schedule that failed, and how.
pub struct Failed {
    pub schedule: Schedule,
    pub failure: Failure,
}

/// Generate the schedule of `seed` and run it.
pub fn run_seed(env: &Env, seed: u64, cfg: &GenConfig) -> Result<Stats, Box<Failed>> {
    let schedule = generate(seed, cfg);
    execute(env, &schedule).map_err(|failure| Box::new(Failed { schedule, failure }))
}

/// Run a schedule given as JSON (a regression test).
pub fn replay(env: &Env, json: &str) -> Result<Stats, Box<Failed>> {
    let schedule = Schedule::from_json(json).unwrap_or_else(|e| panic!("{e}"));
    execute(env, &schedule).map_err(|failure| Box::new(Failed { schedule, failure }))
}

/// What to print about a failing schedule: the failure, the schedule for people, and the JSON
/// a regression test replays.
pub fn report(sch: &Schedule, f: &Failure, title: &str) -> String {
    format!(
        "=== {title}: seed {seed} ({seed:#x}) ===\n{f}\n--- schedule ({} steps) ---\n{}--- replay JSON ---\n{}=== end of seed {seed} ===\n",
        sch.steps.len(),
        sch.render(),
        sch.to_json(),
        seed = sch.seed,
    )
}

/// Shrink a failure within `budget` and return the report of the minimal schedule.
pub fn shrink_report(
    env: &Env,
    sch: &Schedule,
    f: &Failure,
    budget: Duration,
    verbose: bool,
) -> String {
    let s = shrink::shrink(env, sch, f, budget, verbose);
    let note = format!(
        "minimal schedule after {} replays{}",
        s.attempts,
        if s.out_of_time {
            " (shrinking budget ran out)"
        } else {
            ""
        }
    );
    report(&s.schedule, &s.failure, &note)
}
