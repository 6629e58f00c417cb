//! Progress of long copies: a bar on a terminal (drawn in place on stderr: the one thing
//! written there that is not a log line), a log line every 10 seconds otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    expected_rows: Option<u64>,
    rows: u64,
    bytes: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

const LOG_EVERY: Duration = Duration::from_secs(10);
const DRAW_EVERY: Duration = Duration::from_millis(200);

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

impl Progress {
    pub fn new(label: String, expected_rows: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            expected_rows: expected_rows.filter(|&n| n > 0),
            rows: 0,
            bytes: 0,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.rows as f64 / secs;
        let mut s = format!(
            "{}: {} rows, {}, {:.0} rows/s",
            self.label,
            self.rows,
            human_bytes(self.bytes),
            rate
        );
        if let Some(total) = self.expected_rows {
            let pct = (self.rows as f64 / total as f64 * 100.0).min(100.0);
            let left = total.saturating_sub(self.rows) as f64;
            let eta = if rate > 0.0 { left / rate } else { 0.0 };
            s.push_str(&format!(", {pct:.0}% of ~{total}, ETA {eta:.0} s"));
        }
        s
    }

    pub fn add(&mut self, rows: u64, bytes: u64) {
        self.rows += rows;
        self.bytes += bytes;
        let every = if self.tty { DRAW_EVERY } else { LOG_EVERY };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            if self.tty {
                eprint!("\r{}\x1b[K", self.bar());
            } else {
                tracing::info!("{}", self.line());
            }
        }
    }

    fn bar(&self) -> String {
        match self.expected_rows {
            Some(total) => {
                let filled = ((self.rows as f64 / total as f64).min(1.0) * 30.0) as usize;
                format!(
                    "[{}{}] {}",
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    self.line()
                )
            }
            None => self.line(),
        }
    }

    /// Final line; only for copies that took long enough to be worth a word, or when asked.
    pub fn finish(&self, always: bool) {
        if self.tty && self.started.elapsed() >= DRAW_EVERY {
            eprint!("\r\x1b[K");
        }
        if always || self.started.elapsed() >= Duration::from_secs(2) {
            tracing::info!(
                "{} (done in {:.1} s)",
                self.line(),
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
