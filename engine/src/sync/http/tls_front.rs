//! The TLS side of `tessera serve --tls-cert/--tls-key` (SPEC.md §22.3): a small
//! TLS-terminating relay in front of the plain `tiny_http` server.
//!
//! Why not `tiny_http`'s own `ssl-openssl`: it runs every TLS handshake on its single
//! accepting thread with no timeout, so one peer that connects and never finishes its
//! handshake stops the server from accepting anyone else for as long as it likes. Here each
//! connection gets its own thread; the handshake and every read or write are bounded by
//! [`IO_TIMEOUT`], a connection idle between requests is closed after [`IDLE_TIMEOUT`]
//! (one waiting for its answer after [`ANSWER_TIMEOUT`]), and at most
//! [`MAX_CONNECTIONS`] are relayed at once (more are closed at once).
//!
//! After the handshake the relay copies bytes both ways between the TLS stream and a
//! connection to the plain server, which listens on a Linux abstract Unix socket with a
//! random name (nothing in the file system to clean up). That socket is reachable only from
//! this machine, and every request on it is token-checked like any other.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslAcceptor, SslStream};
use rustix::event::{poll, PollFd, PollFlags, Timespec};

/// Longest a handshake, a read of a started TLS record, or a write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no traffic either way for this long after the server's last bytes
/// (idle between requests, or a peer that vanished) is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The same while the client's last bytes are not answered yet: the server may be busy
/// (the repository work of requests runs one at a time; `publish` checks every object).
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_hours needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most connections relayed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A fresh abstract socket name for the plain server, bound.
pub fn inner_listener() -> io::Result<(UnixListener, UnixAddr)> {
    let name = format!(
        "tessera-serve-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
    Ok((UnixListener::bind_addr(&addr)?, addr))
}

/// Accepts TLS connections on `public` and relays each to `inner`, on a thread of its own,
/// until the process ends.
pub fn spawn(public: TcpListener, acceptor: SslAcceptor, inner: UnixAddr) {
    let acceptor = Arc::new(acceptor);
    let inner = Arc::new(inner);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for stream in public.incoming() {
            let Ok(stream) = stream else { continue };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            let (acceptor, inner, active) = (acceptor.clone(), inner.clone(), active.clone());
            std::thread::spawn(move || {
                let _ = relay(stream, &acceptor, &inner);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

fn relay(tcp: TcpStream, acceptor: &SslAcceptor, inner: &UnixAddr) -> io::Result<()> {
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    tcp.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut tls = acceptor.accept(tcp).map_err(io::Error::other)?;
    let mut plain = UnixStream::connect_addr(inner)?;
    let result = pump(&mut tls, &mut plain);
    let _ = tls.shutdown();
    result
}

/// Copies both ways until either side closes, an error, or silence ([`IDLE_TIMEOUT`], or
/// [`ANSWER_TIMEOUT`] while the client waits for an answer).
fn pump(tls: &mut SslStream<TcpStream>, plain: &mut UnixStream) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let idle = Timespec::try_from(IDLE_TIMEOUT).map_err(io::Error::other)?;
    let answer = Timespec::try_from(ANSWER_TIMEOUT).map_err(io::Error::other)?;
    let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
    let mut awaiting_answer = false;
    loop {
        // Bytes OpenSSL already decrypted do not show up as readable on the socket.
        let (from_client, from_server) = if tls.ssl().pending() > 0 {
            (true, false)
        } else {
            let mut fds = [
                PollFd::new(tls.get_ref(), PollFlags::IN),
                PollFd::new(plain, PollFlags::IN),
            ];
            let timeout = if awaiting_answer { &answer } else { &idle };
            if poll(&mut fds, Some(timeout))? == 0 {
                return Ok(());
            }
            (
                fds[0].revents().intersects(ready),
                fds[1].revents().intersects(ready),
            )
        };
        if from_client {
            let n = tls.read(&mut buf)?;
            let Some(bytes) = buf.get(..n).filter(|b| !b.is_empty()) else {
                return Ok(());
            };
            plain.write_all(bytes)?;
            awaiting_answer = true;
        }
        if from_server {
            let n = plain.read(&mut buf)?;
            let Some(bytes) = buf.get(..n).filter(|b| !b.is_empty()) else {
                return Ok(());
            };
            tls.write_all(bytes)?;
            awaiting_answer = false;
        }
    }
}
