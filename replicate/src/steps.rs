//! Test-only pause points between the steps of `switchover`, `failover` and `rejoin`, so that
//! tests can stop a command at a given step (as a kill would) or hold it there while they try
//! writes on every node. Driven by the environment variable `RSERV_TEST_STEP`, a
//! comma-separated list of `stop:<step>` (end the process at once at that step: exit 86,
//! nothing after it runs, open transactions roll back as after a SIGKILL) and `pause:<step>`
//! (write `replicate: paused at <step>` to stderr and wait for a line on stdin). Unset
//! (always, outside tests) each step costs one environment look-up.

use std::io::BufRead;

/// Exit status of a command stopped by `RSERV_TEST_STEP=stop:...`.
pub const STOPPED: i32 = 86;

/// The command has reached `step` (e.g. `failover:promoted`).
pub fn reached(step: &str) {
    let Ok(setting) = std::env::var("RSERV_TEST_STEP") else {
        return;
    };
    let Some(action) = setting
        .split(',')
        .filter_map(|entry| entry.trim().split_once(':'))
        .find(|(_, at)| *at == step)
        .map(|(action, _)| action)
    else {
        return;
    };
    match action {
        "stop" => {
            eprintln!("replicate: stopped at {step} (RSERV_TEST_STEP)");
            std::process::exit(STOPPED);
        }
        "pause" => {
            eprintln!("replicate: paused at {step}");
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        }
        _ => {}
    }
}
