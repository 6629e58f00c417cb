//! Connections that stop answering without closing (a dead network, a peer that froze, a
//! firewall that drops a flow): the `postgres` crate would wait on them forever. Two guards,
//! both acting on the connection's socket ([`super::socket`]):
//!
//! * **Connect timeout over the whole start.** rust-postgres bounds only the TCP connect by
//!   `connect_timeout`; libpq bounds the whole connection start. [`bounded`] does the latter:
//!   when the connect, the TLS handshake, authentication and replicate's session set-up have
//!   not finished in time, the new socket is shut down and the connect fails with
//!   [`ConnError::Timeout`].
//! * **Read timeout** ([`watch`], TCP only): a connection that has received nothing for the
//!   read timeout is checked over a *new* connection to the same server (itself bounded by the
//!   connect timeout), which asks `pg_stat_activity` about the session. The connection is shut
//!   down, and whatever replicate was waiting for fails, when the server does not answer the new
//!   connection (unreachable: refused, reset, or no answer in time), when the session is gone,
//!   or when the session has sat idle for a while although replicate sent it something it has
//!   not answered (the request or the answer was lost). A server that is busy with a long
//!   statement, or waiting for a lock, is left alone: silence alone never cuts a connection.
//!
//! Kernel keepalives ([`super::keepalive`]) cover a dead peer too, but not one whose kernel still
//! answers (a frozen process, a proxy that stopped forwarding); these guards cover both.
//!
//! Finding "the new socket whose peer is the server" is unambiguous because connects to one
//! server (host and port) from this process take turns ([`peer_lock`]).

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::Client;

use super::socket::{self, SocketId};
use super::{ConnError, Endpoint};

/// `application_name` of the connections that check on a silent one.
pub const PROBE_APPLICATION_NAME: &str = "replicate liveness check";

/// How long a check may take when the endpoint has no connect timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A lock per server (host, port).
type PeerLocks = Mutex<HashMap<(String, u16), Arc<Mutex<()>>>>;

/// One lock per server (host, port): the connects to it from this process take turns.
fn peer_lock(ep: &Endpoint) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<PeerLocks> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    locks
        .entry((ep.host().to_string(), ep.port()))
        .or_default()
        .clone()
}

/// The server's addresses (TCP), for recognising its sockets; empty over unix sockets.
fn server_addrs(ep: &Endpoint) -> Vec<SocketAddr> {
    if ep.is_unix_socket() {
        return Vec::new();
    }
    (ep.host(), ep.port())
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default()
}

/// The sockets to `ep`'s server that are not in `before`.
fn new_sockets(ep: &Endpoint, addrs: &[SocketAddr], before: &HashSet<SocketId>) -> Vec<SocketId> {
    socket::sockets()
        .difference(before)
        .copied()
        .filter(|id| {
            socket::peer(*id).is_some_and(|p| socket::is_server(&p, ep.host(), ep.port(), addrs))
        })
        .collect()
}

/// A timer that runs `expire` unless disarmed first.
struct Deadline {
    disarm: mpsc::Sender<()>,
    thread: JoinHandle<bool>,
}

impl Deadline {
    /// None when no thread can be started (then nothing is bounded).
    fn arm(after: Duration, expire: impl FnOnce() + Send + 'static) -> Option<Deadline> {
        let (disarm, rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("replicate-deadline".into())
            .spawn(move || match rx.recv_timeout(after) {
                Err(RecvTimeoutError::Timeout) => {
                    expire();
                    true
                }
                _ => false,
            });
        match thread {
            Ok(thread) => Some(Deadline { disarm, thread }),
            Err(e) => {
                tracing::warn!("cannot bound the connection start: {e}");
                None
            }
        }
    }

    /// Stop the timer; true if it had expired.
    fn disarm(self) -> bool {
        let _ = self.disarm.send(());
        self.thread.join().unwrap_or(false)
    }
}

/// Run `start` (a connect and whatever follows it on the new connection) within `timeout`
/// (None: no limit): past it, the new connection's socket is shut down, which makes `start`
/// fail, and the result is [`ConnError::Timeout`]. Returns what `start` returned and the new
/// connection's socket when it is still open and recognised.
pub(super) fn bounded<T>(
    ep: &Endpoint,
    timeout: Option<Duration>,
    start: impl FnOnce() -> Result<T, ConnError>,
) -> Result<(T, Option<SocketId>), ConnError> {
    let lock = peer_lock(ep);
    let _turn = lock.lock().unwrap_or_else(PoisonError::into_inner);
    let addrs = server_addrs(ep);
    let before = socket::sockets();
    let deadline = timeout.and_then(|after| {
        let (ep, addrs, before) = (ep.clone(), addrs.clone(), before.clone());
        Deadline::arm(after, move || {
            for id in new_sockets(&ep, &addrs, &before) {
                socket::shut_down(id);
            }
        })
    });
    let result = start();
    let expired = deadline.is_some_and(Deadline::disarm);
    match (result, timeout) {
        (_, Some(after)) if expired => Err(ConnError::Timeout {
            endpoint: ep.describe(),
            after,
        }),
        (Err(e), _) => Err(e),
        (Ok(value), _) => {
            let found = new_sockets(ep, &addrs, &before);
            Ok((value, (found.len() == 1).then(|| found[0])))
        }
    }
}

/// Keep an eye on an open connection (see the module documentation) until its socket closes.
/// `pid` is its server session; `after` the read timeout.
pub(super) fn watch(ep: Endpoint, id: SocketId, pid: i32, after: Duration) {
    let spawned = std::thread::Builder::new()
        .name("replicate-watch".into())
        .spawn(move || Watch { ep, id, pid, after }.run());
    if let Err(e) = spawned {
        tracing::warn!("cannot watch the connection for stalls: {e}");
    }
}

struct Watch {
    ep: Endpoint,
    id: SocketId,
    pid: i32,
    after: Duration,
}

/// What a check over a new connection found out about a silent session.
enum Verdict {
    /// The server did not answer the new connection (refused, reset, timed out).
    Unreachable(String),
    /// The session no longer exists.
    Gone,
    /// The session is idle (`state`), for this long.
    Idle(String, Duration),
    /// The session is working (`state`): the silence is the server's.
    Busy(String),
    /// The server answered, but the check could not tell (e.g. too many connections).
    Unknown(String),
}

impl Watch {
    fn run(self) {
        let tick = (self.after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut last_check: Option<Instant> = None;
        loop {
            std::thread::sleep(tick);
            // None: the connection was closed (its client dropped): nothing left to watch
            let Some((silent, _)) = socket::tcp_silence(self.id) else {
                return;
            };
            if silent < self.after || last_check.is_some_and(|t| t.elapsed() < self.after) {
                continue;
            }
            let started = Instant::now();
            last_check = Some(started);
            let verdict = self.check();
            let Some((silent, since_sent)) = socket::tcp_silence(self.id) else {
                return;
            };
            if silent < started.elapsed() {
                continue; // something arrived meanwhile
            }
            // a request replicate sent and has not had an answer to
            let waiting = since_sent < silent && since_sent >= self.after / 2;
            let why = match verdict {
                Verdict::Unreachable(why) => {
                    format!("and a new connection to the server failed ({why})")
                }
                Verdict::Gone => format!("and its server session (pid {}) has ended", self.pid),
                Verdict::Idle(state, idle) if waiting && idle >= Duration::from_secs(1) => {
                    format!(
                        "while its server session (pid {}) has been {state} for {} s: the request \
                         or its answer was lost",
                        self.pid,
                        idle.as_secs()
                    )
                }
                Verdict::Idle(state, _) | Verdict::Busy(state) | Verdict::Unknown(state) => {
                    tracing::debug!(endpoint = %self.ep.describe(), pid = self.pid,
                        silent_s = silent.as_secs(), %state, "silent connection checked: alive");
                    continue;
                }
            };
            tracing::warn!(
                endpoint = %self.ep.describe(),
                pid = self.pid,
                silent_s = silent.as_secs(),
                "connection stalled: nothing received for {} s {why}; closing it",
                silent.as_secs()
            );
            socket::shut_down(self.id);
            return;
        }
    }

    /// Ask the server about the session over a new connection, within the connect timeout.
    fn check(&self) -> Verdict {
        let mut probe = self.ep.clone();
        probe.application_name = PROBE_APPLICATION_NAME.to_string();
        probe.read_timeout = None;
        probe.lock_timeout = None;
        let timeout = probe.connect_timeout().unwrap_or(PROBE_TIMEOUT);
        let pid = self.pid;
        let asked = bounded(&probe, Some(timeout), || {
            let mut client: Client = probe.connect_unpinned()?;
            probe.pin_search_path(&mut client)?;
            let row = client
                .query_opt(
                    "SELECT state, extract(epoch FROM now() - state_change)::float8 \
                     FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .map_err(|e| probe.session_error(e))?;
            Ok(row.map(|r| {
                let state: Option<String> = r.get(0);
                let secs: Option<f64> = r.get(1);
                (state.unwrap_or_default(), secs.unwrap_or(0.0))
            }))
        });
        match asked {
            Ok((None, _)) => Verdict::Gone,
            Ok((Some((state, secs)), _)) if state.starts_with("idle") => {
                Verdict::Idle(state, Duration::from_secs_f64(secs.max(0.0)))
            }
            Ok((Some((state, _)), _)) => Verdict::Busy(state),
            Err(ConnError::Timeout { after, .. }) => {
                Verdict::Unreachable(format!("no answer within {} s", after.as_secs()))
            }
            Err(ConnError::Connect { error, detail, .. }) if error.as_db_error().is_none() => {
                Verdict::Unreachable(detail)
            }
            Err(e) => Verdict::Unknown(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    /// A "server" that accepts connections and never says a word: rust-postgres alone would
    /// wait for its answer to the start-up message forever.
    #[test]
    fn connect_timeout_bounds_a_server_that_accepts_and_never_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(120));
            drop(socket);
        });
        let ep = resolve(
            &conninfo(&format!(
                "host=127.0.0.1 port={port} user=u dbname=d sslmode=disable connect_timeout=2"
            )),
            &ConnArgs::default(),
            &[],
        );
        let started = Instant::now();
        let err = ep
            .connect()
            .err()
            .expect("no server answered, yet connected");
        // the timeout, not the silent server letting go after two minutes
        assert!(
            matches!(err, ConnError::Timeout { after, .. } if after == Duration::from_secs(2)),
            "{err}"
        );
        assert!(
            err.to_string().contains("timeout expired after 2 s"),
            "{err}"
        );
        eprintln!("gave up after {:?}", started.elapsed());
        drop(held);
    }
}
