//! A `replicate run` process for tests, and waiting for a condition.

use crate::binary::{replicate_bin, replicate_command_of};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `replicate run` whose stderr goes to a log file; killed (and its log printed, if
/// the test is failing) when dropped without [`Daemon::stop`].
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    pub fn start(args: &[String]) -> Daemon {
        Daemon::start_bin(&replicate_bin(), args)
    }

    /// [`Daemon::start`] with the `replicate` binary at `bin` (another release's, say).
    pub fn start_bin(bin: &Path, args: &[String]) -> Daemon {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let log =
            std::env::temp_dir().join(format!("rserv-daemon-{}-{nanos}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("daemon log");
        let child = replicate_command_of(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start replicate run");
        Daemon {
            child: Some(child),
            log,
        }
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (up to a minute) for it to exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false));
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < until,
                "replicate run did not stop after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- replicate run log ---\n{}\n--- end ---", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Poll `cond` every 100 ms until it holds; panic with `what` after `secs` seconds. Tests wait
/// with this instead of asserting on durations.
pub fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
