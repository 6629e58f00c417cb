//! Prometheus text-format metrics of `replicate run`, served on an opt-in address.

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
    connected: AtomicBool,
    /// (lag seconds, pending changes, last error)
    state: Mutex<(f64, i64, String)>,
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
            connected: AtomicBool::new(false),
            state: Mutex::new((0.0, 0, String::new())),
        }
    }

    pub fn applied(&self, rows: u64, bytes: u64) {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn error(&self, message: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            s.2 = message.to_string();
        }
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

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    pub fn set_lag(&self, seconds: f64, pending: i64) {
        if let Ok(mut s) = self.state.lock() {
            s.0 = seconds;
            s.1 = pending;
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
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&SlaveMetrics) -> String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for m in all {
                out.push_str(&format!(
                    "{name}{{slave=\"{}\",server=\"{}\"}} {}\n",
                    label(&m.name),
                    m.server_label(),
                    value(m)
                ));
            }
        };
    let state = |m: &SlaveMetrics| m.state.lock().map(|s| s.clone()).unwrap_or_default();
    family(
        "rserv_lag_seconds",
        "gauge",
        "Age of the slave's data while changes wait for it.",
        &|m| format!("{}", state(m).0),
    );
    family(
        "rserv_pending_changes",
        "gauge",
        "Logged changes the slave has not applied yet.",
        &|m| format!("{}", state(m).1),
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
        "Failed cycles (each followed by a reconnect).",
        &|m| m.errors.load(Ordering::Relaxed).to_string(),
    );
    family(
        "rserv_connected",
        "gauge",
        "1 while the worker is connected to both sides.",
        &|m| (m.connected.load(Ordering::Relaxed) as u8).to_string(),
    );
    out.push_str("# HELP rserv_last_error Last error of the worker (value 1, message in a label).\n# TYPE rserv_last_error gauge\n");
    for m in all {
        let msg = state(m).2;
        if !msg.is_empty() {
            out.push_str(&format!(
                "rserv_last_error{{slave=\"{}\",server=\"{}\",message=\"{}\"}} 1\n",
                label(&m.name),
                m.server_label(),
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
