//! A client connection's byte stream: the socket with deadlines ([`Timed`]), TLS once the
//! client asked for it (`NBD_OPT_STARTTLS`), and buffering in both directions ([`Conn`]).
//!
//! Time: every read and write goes through [`Timed`], which fails it with `TimedOut` once
//! the deadline its owner set has passed. Each socket operation runs with a socket timeout
//! of the time left, so a peer trickling one byte at a time cannot stretch a bounded wait:
//! a deadline covers a whole wait (the handshake, a request, a reply), not the silence
//! between two bytes. TLS records go through the same [`Timed`] socket, so the TLS
//! handshake is bounded by the NBD handshake's deadline.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use openssl::ssl::{HandshakeError, SslAcceptor, SslStream};

/// A connected socket: TCP or Unix.
pub trait Socket: Read + Write + Send + Sized + 'static {
    /// Sets the timeout of each later read (`None`: wait forever).
    fn read_timeout(&self, limit: Option<Duration>) -> io::Result<()>;
    /// Sets the timeout of each later write.
    fn write_timeout(&self, limit: Option<Duration>) -> io::Result<()>;
    /// Another handle on the same socket.
    fn duplicate(&self) -> io::Result<Self>;
    /// Shuts both directions down: blocked reads and writes on any handle return at once.
    fn shut(&self);
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn read_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(limit)
            }
            fn write_timeout(&self, limit: Option<Duration>) -> io::Result<()> {
                self.set_write_timeout(limit)
            }
            fn duplicate(&self) -> io::Result<Self> {
                self.try_clone()
            }
            fn shut(&self) {
                let _ = self.shutdown(Shutdown::Both);
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// A socket whose reads and writes fail with `TimedOut` once their deadline has passed.
pub struct Timed<S> {
    sock: S,
    read_by: Instant,
    write_by: Instant,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
}

/// The time left until `by`, at least 1 ms (a zero socket timeout is refused by the OS
/// interface); `TimedOut` once it has passed.
fn left(by: Instant) -> io::Result<Duration> {
    let left = by.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    Ok(left.max(Duration::from_millis(1)))
}

/// A socket timeout (reported by Linux as `EAGAIN`) is the deadline passing.
fn deadline_passed(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        e
    }
}

impl<S: Socket> Timed<S> {
    /// `sock`, whose reads and writes must all be done by `by`.
    pub fn new(sock: S, by: Instant) -> Self {
        Self {
            sock,
            read_by: by,
            write_by: by,
        }
    }
}

impl<S: Socket> Read for Timed<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.read_timeout(Some(left(self.read_by)?))?;
        self.sock.read(buf).map_err(deadline_passed)
    }
}

impl<S: Socket> Write for Timed<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.write_timeout(Some(left(self.write_by)?))?;
        self.sock.write(buf).map_err(deadline_passed)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

/// The stream over the socket: plain, or TLS after STARTTLS.
enum Link<S> {
    Plain(Timed<S>),
    Tls(Box<SslStream<Timed<S>>>),
}

impl<S: Socket> Link<S> {
    fn timed(&mut self) -> &mut Timed<S> {
        match self {
            Self::Plain(t) => t,
            Self::Tls(s) => s.get_mut(),
        }
    }
}

impl<S: Socket> Read for Link<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(t) => t.read(buf),
            Self::Tls(s) => s.read(buf),
        }
    }
}

impl<S: Socket> Write for Link<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(t) => t.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(t) => t.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 64 * 1024;
/// Bytes gathered before they are written; larger writes go straight to the socket.
const WRITE_BUFFER: usize = 256 * 1024;

/// A buffered client connection. Writes are gathered until [`Write::flush`] (or until the
/// buffer is full), so an answer leaves in few system calls.
pub struct Conn<S> {
    r: BufReader<Link<S>>,
    out: Vec<u8>,
}

impl<S: Socket> Conn<S> {
    /// A plain connection over `sock`, whose reads and writes must be done by `by`.
    pub fn new(sock: S, by: Instant) -> Self {
        Self {
            r: BufReader::with_capacity(READ_BUFFER, Link::Plain(Timed::new(sock, by))),
            out: Vec::with_capacity(WRITE_BUFFER),
        }
    }

    /// Reads from now on must be done within `within`.
    pub fn read_within(&mut self, within: Duration) {
        self.r.get_mut().timed().read_by = Instant::now() + within;
    }

    /// Writes from now on (the flush of what is buffered included) must be done within
    /// `within`.
    pub fn write_within(&mut self, within: Duration) {
        self.r.get_mut().timed().write_by = Instant::now() + within;
    }

    /// Whether the client sent bytes that have been read from the socket but not yet
    /// consumed.
    pub fn has_buffered_input(&self) -> bool {
        !self.r.buffer().is_empty()
    }

    /// Upgrades a plain connection to TLS, the server side of the TLS handshake bounded
    /// by the current deadlines. Anything buffered (written but not flushed) is sent
    /// first. `InvalidData` if the client sent bytes after its STARTTLS before the
    /// handshake (they would be plaintext injected into the TLS session), or if the
    /// connection is TLS already.
    pub fn start_tls(mut self, acceptor: &SslAcceptor) -> io::Result<Self> {
        self.flush()?;
        if self.has_buffered_input() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the client sent data between STARTTLS and the TLS handshake",
            ));
        }
        let Link::Plain(timed) = self.r.into_inner() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS is already running",
            ));
        };
        let tls = acceptor.accept(timed).map_err(|e| match e {
            HandshakeError::SetupFailure(e) => io::Error::other(e),
            HandshakeError::Failure(m) | HandshakeError::WouldBlock(m) => {
                io::Error::other(m.into_error())
            }
        })?;
        Ok(Self {
            r: BufReader::with_capacity(READ_BUFFER, Link::Tls(Box::new(tls))),
            out: self.out,
        })
    }

    /// Sends what is buffered and ends the TLS session if there is one (best effort,
    /// within `within`), before the socket is closed.
    pub fn close(mut self, within: Duration) {
        self.write_within(within);
        self.read_within(within);
        let _ = self.flush();
        if let Link::Tls(s) = self.r.get_mut() {
            let _ = s.shutdown();
        }
    }

    fn send_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.r.get_mut().write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

impl<S: Socket> Read for Conn<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.r.read(buf)
    }
}

impl<S: Socket> Write for Conn<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.len() + buf.len() > WRITE_BUFFER {
            self.send_out()?;
        }
        if buf.len() >= WRITE_BUFFER {
            return self.r.get_mut().write(buf);
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_out()?;
        self.r.get_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A deadline bounds a whole wait: a peer sending a byte every 100 ms does not keep a
    /// 300 ms read deadline from passing.
    #[test]
    fn a_trickling_peer_cannot_stretch_a_deadline() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let feeder = std::thread::spawn(move || {
            for _ in 0..20 {
                if theirs.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let start = Instant::now();
        let mut c = Conn::new(ours, start + Duration::from_millis(300));
        let mut buf = [0u8; 16];
        let err = c.read_exact(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(900), "took {took:?}");
        drop(c);
        feeder.join().unwrap();
    }

    /// A peer that never reads cannot hold a writer past its deadline: a reply larger
    /// than the socket buffers fails with `TimedOut` once the write deadline passes.
    #[test]
    fn a_peer_that_never_reads_cannot_stretch_a_write_deadline() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let start = Instant::now();
        let mut c = Conn::new(ours, start + Duration::from_secs(30));
        c.write_within(Duration::from_millis(300));
        let reply = vec![0x5a_u8; 16 << 20];
        let err = c.write_all(&reply).and_then(|()| c.flush()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took < Duration::from_secs(3), "took {took:?}");
        drop(theirs);
    }

    /// Small writes are gathered until flush; large ones pass through in order.
    #[test]
    fn writes_are_gathered_and_keep_their_order() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).unwrap();
            all
        });
        let mut c = Conn::new(ours, Instant::now() + Duration::from_secs(10));
        let big = vec![7u8; WRITE_BUFFER + 5];
        c.write_all(b"head").unwrap();
        c.write_all(&big).unwrap();
        c.write_all(b"tail").unwrap();
        c.flush().unwrap();
        drop(c);
        let all = reader.join().unwrap();
        assert_eq!(&all[..4], b"head");
        assert_eq!(&all[4..4 + big.len()], &big[..]);
        assert_eq!(&all[4 + big.len()..], b"tail");
    }
}
