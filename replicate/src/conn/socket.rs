//! The socket under a connection. The `postgres` crate gives no handle on it, so replicate
//! finds it by what the kernel says (Linux): the process's sockets are listed from
//! `/proc/self/fd`, and the one a connect opened is the new one whose peer is the server
//! ([`super::watch`] makes that unambiguous: one connect to a server at a time). A socket is
//! named by its descriptor and its inode; every use duplicates the descriptor and checks the
//! inode first, so a descriptor closed and reused meanwhile is never touched.
//!
//! What is done with it: read the kernel's TCP timers (how long since data last came in and
//! went out), and shut it down, which makes whatever the connection's owner is blocked on fail
//! at once (the descriptor itself stays its owner's to close).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One socket of this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    fd: RawFd,
    inode: u64,
}

/// The other end of a connected socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Every socket this process has open.
pub fn sockets() -> HashSet<SocketId> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
        let link = std::fs::read_link(e.path()).ok()?;
        let inode = link
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some(SocketId { fd, inode })
    })
    .collect()
}

/// Run `f` on a duplicate of the socket's descriptor, if it is still that socket.
fn with_socket<T>(id: SocketId, f: impl FnOnce(RawFd) -> Option<T>) -> Option<T> {
    // SAFETY: F_DUPFD_CLOEXEC on any descriptor number is harmless: it fails (-1) when the
    // number is not open, else returns a new descriptor that we own from here on.
    let dup = unsafe { libc::fcntl(id.fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return None;
    }
    // SAFETY: `dup` is a descriptor we just created and nobody else knows.
    let dup = unsafe { OwnedFd::from_raw_fd(dup) };
    // SAFETY: fstat writes into the zeroed struct we pass; a failure leaves it unread.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dup.as_raw_fd(), &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFSOCK
        || st.st_ino != id.inode
    {
        return None;
    }
    f(dup.as_raw_fd())
}

/// The peer of a connected socket (None: not connected, not a socket we know, or gone).
pub fn peer(id: SocketId) -> Option<Peer> {
    with_socket(id, |fd| {
        // SAFETY: getpeername fills at most `len` bytes of the zeroed storage we pass.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let rc =
            unsafe { libc::getpeername(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len) };
        if rc != 0 {
            return None;
        }
        match addr.ss_family as libc::c_int {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a = unsafe { &*(&addr as *const _ as *const libc::sockaddr_in) };
                let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                Some(Peer::Tcp(SocketAddr::new(
                    IpAddr::V4(ip),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a = unsafe { &*(&addr as *const _ as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
                Some(Peer::Tcp(SocketAddr::new(
                    IpAddr::V6(ip),
                    u16::from_be(a.sin6_port),
                )))
            }
            libc::AF_UNIX => {
                // SAFETY: the family says the storage holds a sockaddr_un.
                let a = unsafe { &*(&addr as *const _ as *const libc::sockaddr_un) };
                let path: Vec<u8> = a
                    .sun_path
                    .iter()
                    .take_while(|c| **c != 0)
                    .map(|c| *c as u8)
                    .collect();
                let path = String::from_utf8(path).ok()?;
                Some(Peer::Unix(PathBuf::from(path)))
            }
            _ => None,
        }
    })
}

/// How long since data last arrived on a TCP socket, and since data last left it (None: not
/// a TCP socket, or gone).
pub fn tcp_silence(id: SocketId) -> Option<(Duration, Duration)> {
    with_socket(id, |fd| {
        // SAFETY: getsockopt(TCP_INFO) fills at most `len` bytes of the zeroed struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                &mut info as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        (rc == 0).then(|| {
            (
                Duration::from_millis(info.tcpi_last_data_recv.into()),
                Duration::from_millis(info.tcpi_last_data_sent.into()),
            )
        })
    })
}

/// Shut the socket down both ways: its owner's pending and next reads and writes fail. False
/// when the socket is gone.
pub fn shut_down(id: SocketId) -> bool {
    with_socket(id, |fd| {
        // SAFETY: shutdown on a socket descriptor we hold a duplicate of.
        (unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0).then_some(())
    })
    .is_some()
}

/// Whether `peer` is the server at `host`:`port` (a unix-socket directory, or one of the
/// addresses `host` resolves to).
pub fn is_server(peer: &Peer, host: &str, port: u16, addrs: &[SocketAddr]) -> bool {
    match peer {
        Peer::Tcp(a) => addrs.contains(a),
        Peer::Unix(path) => {
            let socket = format!(".s.PGSQL.{port}");
            path.file_name().is_some_and(|f| *f == *socket)
                && same_dir(path.parent(), Path::new(host))
        }
    }
}

fn same_dir(a: Option<&Path>, b: &Path) -> bool {
    let Some(a) = a else { return false };
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_new_socket_is_found_by_its_peer_timed_and_shut_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_addr = listener.local_addr().unwrap();
        let before = sockets();
        let mut client = TcpStream::connect(server_addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let new: Vec<SocketId> = sockets()
            .difference(&before)
            .copied()
            .filter(|id| {
                peer(*id)
                    .is_some_and(|p| is_server(&p, "127.0.0.1", server_addr.port(), &[server_addr]))
            })
            .collect();
        assert_eq!(new.len(), 1, "{new:?}");
        let id = new[0];
        assert_eq!(id.fd, client.as_raw_fd());
        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).unwrap();
        let (recv, sent) = tcp_silence(id).unwrap();
        assert!(sent <= recv, "sent {sent:?} recv {recv:?}");
        assert!(shut_down(id));
        // the owner's next read sees the end of the stream
        assert_eq!(client.read(&mut b).unwrap(), 0);
        drop(client);
        // closed: never touched again, even if the number is reused
        let _reuse = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(tcp_silence(id).is_none());
        assert!(!shut_down(id));
    }

    #[test]
    fn unix_peers_match_the_socket_file_of_the_port() {
        let p = Peer::Unix(PathBuf::from("/tmp/.s.PGSQL.5433"));
        assert!(is_server(&p, "/tmp", 5433, &[]));
        assert!(is_server(&p, "/tmp/", 5433, &[]));
        assert!(!is_server(&p, "/tmp", 5432, &[]));
        assert!(!is_server(&p, "/var/run/postgresql", 5433, &[]));
    }
}
