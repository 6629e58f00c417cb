//! Prometheus text-format metrics of `replicate run`, served on an opt-in address. What each
//! one means during an outage is in the README (Operations): `rserv_connected` per side
//! follows that side's real state, and the lag figures come from the master whenever it is
//! reachable, whatever the slave does.

use crate::error::Error;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Counters and gauges of one slave's worker.
pub struct SlaveMetrics {
    name: String,
    /// The slave's id on the master; unknown (an empty label) until the worker has found it
    /// by the slave's node id.
    server: Mutex<Option<i32>>,
    syncs: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    lock_timeouts: AtomicU64,
    /// master, slave: a working session with that side
    connected: [AtomicBool; 2],
    state: Mutex<State>,
}

/// What changes together.
#[derive(Clone, Default)]
struct State {
    /// (lag seconds, pending changes) from the master's `rserv_status`; None until read once
    lag: Option<(f64, i64)>,
    /// the side of the last error, when known, and its message
    last_error: Option<(Option<&'static str>, String)>,
}

/// The sides, in label order.
const SIDES: [&str; 2] = ["master", "slave"];

fn side_index(side: &str) -> usize {
    usize::from(side != "master")
}

impl SlaveMetrics {
    pub fn new(name: &str, server: Option<i32>) -> SlaveMetrics {
        SlaveMetrics {
            name: name.to_string(),
            server: Mutex::new(server),
            syncs: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lock_timeouts: AtomicU64::new(0),
            connected: [AtomicBool::new(false), AtomicBool::new(false)],
            state: Mutex::new(State::default()),
        }
    }

    pub fn applied(&self, rows: u64, bytes: u64) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A failed cycle; `side` is the side that failed, when known.
    pub fn error(&self, side: Option<&'static str>, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            s.last_error = Some((side, message.to_string()));
        }
    }

    /// An apply that gave up waiting for a lock (also counted as an error).
    pub fn lock_timeout(&self) {
        self.lock_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// The slave's id on the master, once known.
    pub fn set_server(&self, server: i32) {
        if let Ok(mut s) = self.server.lock() {
            *s = Some(server);
        }
    }

    fn server_label(&self) -> String {
        self.server
            .lock()
            .ok()
            .and_then(|s| *s)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Whether the worker has a working session with `side` ("master" or "slave").
    pub fn set_connected(&self, side: &str, up: bool) {
        self.connected[side_index(side)].store(up, Ordering::Relaxed);
    }

    pub fn connected(&self, side: &str) -> bool {
        self.connected[side_index(side)].load(Ordering::Relaxed)
    }

    pub fn set_lag(&self, seconds: f64, pending: i64) {
        if let Ok(mut s) = self.state.lock() {
            s.lag = Some((seconds, pending));
        }
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text for all slaves.
pub fn render(all: &[Arc<SlaveMetrics>]) -> String {
    let mut out = String::new();
    let labels = |m: &SlaveMetrics| {
        format!(
            "slave=\"{}\",server=\"{}\"",
            label(&m.name),
            m.server_label()
        )
    };
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&SlaveMetrics) -> String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for m in all {
                out.push_str(&format!("{name}{{{}}} {}\n", labels(m), value(m)));
            }
        };
    let state = |m: &SlaveMetrics| m.state.lock().map(|s| s.clone()).unwrap_or_default();
    // NaN until the worker has read them from the master once
    let lag = |m: &SlaveMetrics| state(m).lag;
    family(
        "rserv_lag_seconds",
        "gauge",
        "Age of the slave's data while changes wait for it, from the master (refreshed while the master is reachable).",
        &|m| lag(m).map_or("NaN".into(), |(s, _)| s.to_string()),
    );
    family(
        "rserv_pending_changes",
        "gauge",
        "Logged changes the slave has not applied yet, from the master.",
        &|m| lag(m).map_or("NaN".into(), |(_, p)| p.to_string()),
    );
    family(
        "rserv_syncs_total",
        "counter",
        "Change sets applied.",
        &|m| m.syncs.load(Ordering::Relaxed).to_string(),
    );
    family(
        "rserv_rows_applied_total",
        "counter",
        "Rows sent to the slave.",
        &|m| m.rows.load(Ordering::Relaxed).to_string(),
    );
    family(
        "rserv_bytes_applied_total",
        "counter",
        "Bytes of change sets applied.",
        &|m| m.bytes.load(Ordering::Relaxed).to_string(),
    );
    family(
        "rserv_errors_total",
        "counter",
        "Failed cycles (each retried after a backoff).",
        &|m| m.errors.load(Ordering::Relaxed).to_string(),
    );
    family(
        "rserv_lock_timeouts_total",
        "counter",
        "Applies rolled back because a lock on the slave was held longer than lock_timeout.",
        &|m| m.lock_timeouts.load(Ordering::Relaxed).to_string(),
    );
    out.push_str("# HELP rserv_connected 1 while the worker has a working session with that side (connected, and its last operation there succeeded).\n# TYPE rserv_connected gauge\n");
    for m in all {
        for side in SIDES {
            out.push_str(&format!(
                "rserv_connected{{{},side=\"{side}\"}} {}\n",
                labels(m),
                u8::from(m.connected(side))
            ));
        }
    }
    out.push_str("# HELP rserv_last_error Last error of the worker (value 1, side and message in labels).\n# TYPE rserv_last_error gauge\n");
    for m in all {
        if let Some((side, msg)) = state(m).last_error {
            out.push_str(&format!(
                "rserv_last_error{{{},side=\"{}\",message=\"{}\"}} 1\n",
                labels(m),
                side.unwrap_or(""),
                label(&msg.chars().take(300).collect::<String>())
            ));
        }
    }
    out
}

/// Serve `GET /metrics` (any path, in fact) on `addr` from a background thread.
pub fn serve(addr: &str, all: Vec<Arc<SlaveMetrics>>, stop: Arc<AtomicBool>) -> Result<(), Error> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| Error::Usage(format!("cannot listen on --metrics-addr {addr}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Failed(format!("metrics listener: {e}")))?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut sock, _)) => {
                    let _ = sock.set_nonblocking(false);
                    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 2048];
                    let _ = sock.read(&mut buf);
                    let body = render(&all);
                    let _ = write!(
                        sock,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_side_has_its_connected_gauge_and_unknown_lag_is_nan() {
        let m = Arc::new(SlaveMetrics::new("s\"1", None));
        let text = render(std::slice::from_ref(&m));
        assert!(
            text.contains("rserv_lag_seconds{slave=\"s\\\"1\",server=\"\"} NaN"),
            "{text}"
        );
        assert!(
            text.contains("rserv_connected{slave=\"s\\\"1\",server=\"\",side=\"master\"} 0"),
            "{text}"
        );
        m.set_server(3);
        m.set_connected("master", true);
        m.set_lag(12.5, 40);
        m.error(Some("slave"), "slave: could not connect");
        m.lock_timeout();
        let text = render(&[m]);
        for line in [
            "rserv_connected{slave=\"s\\\"1\",server=\"3\",side=\"master\"} 1",
            "rserv_connected{slave=\"s\\\"1\",server=\"3\",side=\"slave\"} 0",
            "rserv_lag_seconds{slave=\"s\\\"1\",server=\"3\"} 12.5",
            "rserv_pending_changes{slave=\"s\\\"1\",server=\"3\"} 40",
            "rserv_lock_timeouts_total{slave=\"s\\\"1\",server=\"3\"} 1",
            "rserv_last_error{slave=\"s\\\"1\",server=\"3\",side=\"slave\",message=\"slave: could not connect\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
