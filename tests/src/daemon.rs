//! A `replicate run` process for tests, waiting for a condition, and reading its metrics.

use crate::binary::{replicate_bin, replicate_command_of};
use crate::Cluster;
use std::io::{Read, Write};
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

    /// `replicate run --create-tables` from `master` to `slave` (database `db` on both) that
    /// polls only every ten minutes: anything it applies sooner came by a wake-up.
    pub fn polling_rarely(master: &Cluster, slave: &Cluster, db: &str) -> Daemon {
        Daemon::start(&[
            "run".into(),
            "--create-tables".into(),
            "--interval=600".into(),
            "--master".into(),
            master.conninfo(db),
            "--slave".into(),
            slave.conninfo(db),
            db.into(),
            db.into(),
        ])
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

/// A free TCP port on 127.0.0.1 (for `--metrics-addr`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET /metrics` from a daemon's metrics address: the whole response.
pub fn http_get(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `name{...}` whose labels include every `labels` pair, in a scraped
/// exposition text (NaN as f64::NAN).
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse::<f64>().ok())?
    })
}

/// The value of a one-column query over the unix socket, or None while the server is
/// unreachable (or the query fails).
pub fn try_one(c: &Cluster, db: &str, sql: &str) -> Option<String> {
    let mut client = postgres::Config::new()
        .host_path(c.socket_dir())
        .port(c.port())
        .user("postgres")
        .dbname(db)
        .application_name("rserv-tests")
        .connect_timeout(Duration::from_secs(5))
        .connect(postgres::NoTls)
        .ok()?;
    let row = client.query_one(sql, &[]).ok()?;
    row.get::<_, Option<String>>(0)
}

/// Row count and a hash of every row of `table`, or None while the server is unreachable.
pub fn digest(c: &Cluster, db: &str, table: &str) -> Option<String> {
    try_one(
        c,
        db,
        &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ';' ORDER BY t::text)), '') FROM {table} t"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_are_found_by_name_and_labels() {
        let body = "# TYPE x gauge\nx{slave=\"a\",side=\"master\"} 1\nx{slave=\"a\",side=\"slave\"} 0\nxy{slave=\"a\"} 5\nlag{slave=\"a\"} NaN\n";
        assert_eq!(super::metric(body, "x", &[("side", "slave")]), Some(0.0));
        assert_eq!(super::metric(body, "x", &[("slave", "a")]), Some(1.0));
        assert_eq!(super::metric(body, "xy", &[]), Some(5.0));
        assert!(super::metric(body, "lag", &[]).unwrap().is_nan());
        assert_eq!(super::metric(body, "x", &[("side", "none")]), None);
    }
}
