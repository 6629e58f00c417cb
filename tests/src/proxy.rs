//! A small TCP proxy for fault tests: listens on 127.0.0.1, forwards every connection to a
//! target port, and can cut every live connection on demand or once a given number of bytes
//! has gone through in one direction (so a cut lands "in the middle of a change set" by
//! volume, not by timing). It can also *stall*: stop forwarding, in both directions and on
//! every connection (new ones are accepted but get nothing through), without closing
//! anything, as a dead network or a frozen peer would look to a client; it then forwards again
//! after [`Proxy::resume`]. An *absorbing* proxy ([`Proxy::start_absorbing`]) reads what the
//! server sends as fast as the server sends it, whatever the client's pace (an unbounded
//! queue in between): the server is never held up writing to its client. Its deliveries to the
//! client can be held ([`Proxy::hold`]) while it keeps reading the server; once the server has
//! closed, what is left goes to the client in one piece with the close (a client that fell
//! behind finds the server's last message and the end of the stream together).
//!
//! [`Proxy::watch`] counts a byte pattern in what the proxy delivered (e.g. a SQLSTATE in an
//! ErrorResponse): whether the server's last words reached the client, or never existed.
//!
//! Plain `std::net` with two threads per connection. A cut shuts both sockets of every live
//! connection down (FIN to the client and to the server): the client sees the connection
//! closed, the server backend sees its client gone and rolls back. A cut can also be armed to
//! fire just before given bytes (e.g. a COMMIT's acknowledgement) would be forwarded.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Which way bytes flow through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// client → server (e.g. COPY data sent to a slave)
    Up,
    /// server → client (e.g. COPY data read from a master)
    Down,
}

/// A cut waiting for its moment.
enum Arm {
    /// after this many more bytes in this direction
    Bytes(Dir, u64),
    /// just before these bytes would go through in this direction
    Pattern(Dir, Vec<u8>),
}

struct Conn {
    id: u64,
    client: TcpStream,
    server: TcpStream,
}

struct Shared {
    target: SocketAddr,
    conns: Mutex<Vec<Conn>>,
    next_id: AtomicU64,
    stop: AtomicBool,
    /// Armed cut, checked by the forwarding threads.
    armed: Mutex<Option<Arm>>,
    /// Bytes forwarded so far, per direction.
    up: AtomicU64,
    down: AtomicU64,
    /// Connections cut so far (by `cut` or an armed cut).
    cut_conns: AtomicU64,
    /// Armed cuts that fired.
    fired: AtomicU64,
    accepted: AtomicU64,
    /// Nothing is forwarded while set.
    stalled: AtomicBool,
    /// Server → client through an unbounded queue (see [`Proxy::start_absorbing`]).
    absorbing: bool,
    /// Deliveries from that queue to the client wait while set.
    held: AtomicBool,
    /// The pattern [`Proxy::watch`] counts, and in which direction.
    watch: Mutex<Option<(Dir, Vec<u8>)>>,
    /// How often it was delivered.
    seen: AtomicU64,
}

impl Shared {
    fn cut_all(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for c in &conns {
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.server.shutdown(Shutdown::Both);
        }
        self.cut_conns
            .fetch_add(conns.len() as u64, Ordering::Relaxed);
        conns.len()
    }

    fn forget(&self, id: u64) {
        self.conns.lock().unwrap().retain(|c| c.id != id);
    }

    /// How much of `data`, about to go `dir`, may pass; `Some(k)` means: pass the first k
    /// bytes, then cut everything.
    fn budget(&self, dir: Dir, data: &[u8]) -> Option<usize> {
        let mut armed = self.armed.lock().unwrap();
        let n = data.len() as u64;
        let k = match &mut *armed {
            Some(Arm::Bytes(d, left)) if *d == dir => {
                if n < *left {
                    *left -= n;
                    return None;
                }
                *left as usize
            }
            Some(Arm::Pattern(d, pat)) if *d == dir => {
                data.windows(pat.len()).position(|w| w == pat.as_slice())?
            }
            _ => return None,
        };
        *armed = None;
        Some(k)
    }
}

/// A running proxy; stops accepting and cuts every connection when dropped.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on an ephemeral port of 127.0.0.1 and forward to 127.0.0.1:`target_port`.
    pub fn start(target_port: u16) -> Proxy {
        Proxy::start_with(target_port, false)
    }

    /// As [`Proxy::start`], but what the server sends is read at once and queued for the
    /// client (without bound), so the server never waits for a slow client: a server process
    /// killed mid-stream is never blocked writing, and its last words reach the client.
    pub fn start_absorbing(target_port: u16) -> Proxy {
        Proxy::start_with(target_port, true)
    }

    fn start_with(target_port: u16, absorbing: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("proxy: local addr").port();
        let shared = Arc::new(Shared {
            target: SocketAddr::from(([127, 0, 0, 1], target_port)),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            armed: Mutex::new(None),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            cut_conns: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            absorbing,
            held: AtomicBool::new(false),
            watch: Mutex::new(None),
            seen: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let acceptor = std::thread::spawn(move || accept_loop(listener, sh));
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The port to connect to (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cut every live connection now; returns how many were cut.
    pub fn cut(&self) -> usize {
        self.shared.cut_all()
    }

    /// Cut every live connection as soon as `bytes` more bytes have been forwarded in `dir`
    /// (counted from now, over all connections). Replaces a previous arming.
    pub fn cut_after(&self, dir: Dir, bytes: u64) {
        *self.shared.armed.lock().unwrap() = Some(Arm::Bytes(dir, bytes.max(1)));
    }

    /// Cut every live connection just before `pattern` would be forwarded in `dir` (what
    /// precedes it in the same read goes through). E.g. the server's CommandComplete for
    /// COMMIT: the transaction is committed but the client never learns it. A pattern split
    /// across two reads is not seen. Replaces a previous arming.
    pub fn cut_on(&self, dir: Dir, pattern: &[u8]) {
        assert!(!pattern.is_empty());
        *self.shared.armed.lock().unwrap() = Some(Arm::Pattern(dir, pattern.to_vec()));
    }

    /// Stop forwarding (both directions, every connection, new ones too) without closing
    /// anything: bytes read meanwhile are held until [`Proxy::resume`].
    pub fn stall(&self) {
        self.shared.stalled.store(true, Ordering::Relaxed);
    }

    /// Forward again after [`Proxy::stall`].
    pub fn resume(&self) {
        self.shared.stalled.store(false, Ordering::Relaxed);
    }

    /// Absorbing proxies only: stop delivering to the client (the server is still read, what
    /// it sends queued) until [`Proxy::release`]. A server that closes meanwhile has its last
    /// bytes delivered together with the close.
    pub fn hold(&self) {
        assert!(self.shared.absorbing, "proxy: hold needs start_absorbing");
        self.shared.held.store(true, Ordering::Relaxed);
    }

    /// Deliver again after [`Proxy::hold`].
    pub fn release(&self) {
        self.shared.held.store(false, Ordering::Relaxed);
    }

    /// Count from now on how often `pattern` is delivered in `dir` (written to the receiving
    /// side's socket; a pattern split across two deliveries is seen). Replaces a previous one.
    pub fn watch(&self, dir: Dir, pattern: &[u8]) {
        assert!(!pattern.is_empty());
        *self.shared.watch.lock().unwrap() = Some((dir, pattern.to_vec()));
        self.shared.seen.store(0, Ordering::Relaxed);
    }

    /// How often the watched pattern was delivered since [`Proxy::watch`].
    pub fn seen(&self) -> u64 {
        self.shared.seen.load(Ordering::Relaxed)
    }

    /// Forget an armed cut that has not fired.
    pub fn disarm(&self) {
        *self.shared.armed.lock().unwrap() = None;
    }

    /// Whether a cut is armed and has not fired yet.
    pub fn armed(&self) -> bool {
        self.shared.armed.lock().unwrap().is_some()
    }

    /// How many armed cuts have fired so far.
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::Relaxed)
    }

    /// Connections currently open through the proxy.
    pub fn live(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections cut so far.
    pub fn cut_count(&self) -> u64 {
        self.shared.cut_conns.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far in `dir`.
    pub fn bytes(&self, dir: Dir) -> u64 {
        match dir {
            Dir::Up => self.shared.up.load(Ordering::Relaxed),
            Dir::Down => self.shared.down.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.stalled.store(false, Ordering::Relaxed);
        self.shared.held.store(false, Ordering::Relaxed);
        // wake the acceptor
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        self.shared.cut_all();
    }
}

fn accept_loop(listener: TcpListener, sh: Arc<Shared>) {
    for incoming in listener.incoming() {
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(client) = incoming else { continue };
        let Ok(server) = TcpStream::connect(sh.target) else {
            // target down (e.g. a stopped cluster): the client sees the connection closed
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = sh.next_id.fetch_add(1, Ordering::Relaxed);
        let clones = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        );
        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = clones else {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            continue;
        };
        sh.conns.lock().unwrap().push(Conn {
            id,
            client: c3,
            server: s3,
        });
        sh.accepted.fetch_add(1, Ordering::Relaxed);
        let up = sh.clone();
        let sink = Sink::Socket(Delivery::new(s2, Dir::Up, sh.clone()));
        std::thread::spawn(move || forward(client, sink, Dir::Up, id, up));
        let down = sh.clone();
        let to_client = Delivery::new(c2, Dir::Down, sh.clone());
        let sink = if sh.absorbing {
            Sink::queue(to_client)
        } else {
            Sink::Socket(to_client)
        };
        std::thread::spawn(move || forward(server, sink, Dir::Down, id, down));
    }
}

/// A socket bytes are delivered into, counting the watched pattern in what it delivers.
struct Delivery {
    out: TcpStream,
    dir: Dir,
    sh: Arc<Shared>,
    /// The last bytes delivered (a pattern may span two deliveries).
    tail: Vec<u8>,
}

impl Delivery {
    fn new(out: TcpStream, dir: Dir, sh: Arc<Shared>) -> Delivery {
        Delivery {
            out,
            dir,
            sh,
            tail: Vec::new(),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.out.write_all(data)?;
        let watch = self.sh.watch.lock().unwrap().clone();
        if let Some((_, pattern)) = watch.filter(|(dir, _)| *dir == self.dir) {
            self.tail.extend_from_slice(data);
            let found = self
                .tail
                .windows(pattern.len())
                .filter(|w| *w == pattern.as_slice())
                .count();
            self.sh.seen.fetch_add(found as u64, Ordering::Relaxed);
            // keep what could start a pattern that the next delivery completes
            let keep = self.tail.len().min(pattern.len() - 1);
            self.tail.drain(..self.tail.len() - keep);
        }
        Ok(())
    }

    /// Send what is written from now on with the close, in one segment (`TCP_CORK`: the
    /// close's FIN is added to the last segment still held).
    fn cork(&self) {
        use std::os::fd::AsRawFd;
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the right size
        unsafe {
            libc::setsockopt(
                self.out.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CORK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }

    fn close(self) {
        let _ = self.out.shutdown(Shutdown::Both);
    }
}

/// Where forwarded bytes go: straight into the other socket, or into an unbounded queue that a
/// thread of its own writes into it (then closes it once the queue is drained).
enum Sink {
    Socket(Delivery),
    Queue(std::sync::mpsc::Sender<Vec<u8>>),
}

impl Sink {
    fn queue(mut to: Delivery) -> Sink {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let sh = to.sh.clone();
            while let Ok(mut chunk) = rx.recv() {
                while sh.held.load(Ordering::Relaxed) && !sh.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                // everything queued so far in one write; when the server has closed, that is
                // the last of it, and it goes with the close
                let ended = loop {
                    match rx.try_recv() {
                        Ok(more) => chunk.extend_from_slice(&more),
                        Err(std::sync::mpsc::TryRecvError::Empty) => break false,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => break true,
                    }
                };
                if ended {
                    to.cork();
                }
                if to.write_all(&chunk).is_err() || ended {
                    break;
                }
            }
            to.close();
        });
        Sink::Queue(tx)
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Socket(s) => s.write_all(data),
            Sink::Queue(q) => q
                .send(data.to_vec())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
        }
    }

    /// The end of the stream: the socket is shut down once everything before it is written.
    fn close(self) {
        match self {
            Sink::Socket(s) => s.close(),
            // the queue's thread shuts the socket down after the last chunk
            Sink::Queue(q) => drop(q),
        }
    }
}

fn forward(mut from: TcpStream, mut to: Sink, dir: Dir, id: u64, sh: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    let counter = match dir {
        Dir::Up => &sh.up,
        Dir::Down => &sh.down,
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // stalled: hold what was read (and read nothing more) until resumed
        while sh.stalled.load(Ordering::Relaxed) && !sh.stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        match sh.budget(dir, &buf[..n]) {
            None => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            Some(k) => {
                let _ = to.write_all(&buf[..k]);
                counter.fetch_add(k as u64, Ordering::Relaxed);
                sh.fired.fetch_add(1, Ordering::Relaxed);
                sh.cut_all();
                break;
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    to.close();
    sh.forget(id);
}
