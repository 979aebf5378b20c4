//! The byte stream to an NBD server (TCP or Unix socket) and the two kinds of failure.
//!
//! Every socket has read and write timeouts ([`timeout`]: 120 s, or
//! `TESSERA_NBD_TIMEOUT_SECS`), so a server that stops answering gives an error instead of
//! a hang. Errors name the URL: OS-level failures (refused, reset, timed out, cut off) are
//! [`Error::Source`]; a server that breaks the protocol is [`Error::BadImage`] with format
//! `NBD`.
//!
//! After NBD_OPT_STARTTLS the same socket carries TLS ([`Wire::start_tls`]); its timeouts
//! keep bounding every read and write, the TLS handshake's included.

use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use openssl::ssl::SslStream;

use super::tls::ClientTls;
use super::url::{Endpoint, NbdUrl};
use crate::error::{Error, Result};

/// Default socket timeout.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// Environment variable overriding [`DEFAULT_TIMEOUT_SECS`] (whole seconds, at least 1).
pub const TIMEOUT_ENV: &str = "TESSERA_NBD_TIMEOUT_SECS";

/// The socket timeout in force.
pub fn timeout() -> Duration {
    let secs = std::env::var(TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s >= 1)
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    Duration::from_secs(secs)
}

/// A connected socket.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

impl Stream {
    fn set_read_timeout(&self, limit: Duration) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(Some(limit)),
            Self::Unix(s) => s.set_read_timeout(Some(limit)),
        }
    }
}

/// The socket, plain or with TLS running over it.
enum Link {
    Plain(Stream),
    Tls(Box<SslStream<Stream>>),
    /// Only while [`Wire::start_tls`] runs, and after it failed: every use fails.
    Gone,
}

fn gone() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the connection was closed after a failed TLS handshake",
    )
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Tls(s) => s.read(buf),
            Self::Gone => Err(gone()),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
            Self::Gone => Err(gone()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Tls(s) => s.flush(),
            Self::Gone => Err(gone()),
        }
    }
}

/// A buffered connection to one server, with the URL for messages.
pub struct Wire {
    io: BufReader<Link>,
    /// The URL without parameters ([`NbdUrl::display`]).
    pub url: String,
    timeout: Duration,
}

impl Wire {
    /// Connects to the server `url` names, with timeouts set.
    pub fn connect(url: &NbdUrl) -> Result<Self> {
        let display = url.display();
        let timeout = timeout();
        let fail = |what: String, e: std::io::Error| os_error(&display, &what, &e, timeout);
        let stream = match &url.endpoint {
            Endpoint::Tcp { host, port } => {
                let addrs = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| fail(format!("resolving {host}"), e))?;
                let mut last = std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} resolves to no address"),
                );
                let mut connected = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            connected = Some(s);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                let s = connected.ok_or_else(|| fail("connecting".into(), last))?;
                s.set_read_timeout(Some(timeout))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .and_then(|()| s.set_nodelay(true))
                    .map_err(|e| fail("setting socket options".into(), e))?;
                Stream::Tcp(s)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)
                    .map_err(|e| fail(format!("connecting to socket {}", path.display()), e))?;
                s.set_read_timeout(Some(timeout))
                    .and_then(|()| s.set_write_timeout(Some(timeout)))
                    .map_err(|e| fail("setting socket options".into(), e))?;
                Stream::Unix(s)
            }
        };
        Ok(Self {
            io: BufReader::with_capacity(256 * 1024, Link::Plain(stream)),
            url: display,
            timeout,
        })
    }

    /// A wire over a `stream` connected elsewhere (one end of a socket pair in the fuzz
    /// targets), named `url` in messages, with the same timeouts as [`Wire::connect`].
    pub fn over(stream: Stream, url: String) -> Result<Self> {
        let timeout = timeout();
        let set = match &stream {
            Stream::Tcp(s) => s
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout))),
            Stream::Unix(s) => s
                .set_read_timeout(Some(timeout))
                .and_then(|()| s.set_write_timeout(Some(timeout))),
        };
        set.map_err(|e| os_error(&url, "setting socket options", &e, timeout))?;
        Ok(Self {
            io: BufReader::with_capacity(256 * 1024, Link::Plain(stream)),
            url,
            timeout,
        })
    }

    /// Changes the read timeout (the limit for the server's answers).
    pub fn set_read_timeout(&mut self, limit: Duration) -> Result<()> {
        let r = match self.io.get_ref() {
            Link::Plain(s) => s.set_read_timeout(limit),
            Link::Tls(s) => s.get_ref().set_read_timeout(limit),
            Link::Gone => Err(gone()),
        };
        r.map_err(|e| self.os("setting the socket timeout", &e))?;
        self.timeout = limit;
        Ok(())
    }

    /// Runs TLS over the socket from now on (the server acknowledged NBD_OPT_STARTTLS).
    /// Bytes the server sent after its acknowledgement, before the TLS handshake, are a
    /// protocol violation (they would be plaintext taken for part of the session).
    pub fn start_tls(&mut self, tls: &ClientTls) -> Result<()> {
        if !self.io.buffer().is_empty() {
            return Err(self.bad(
                "the server sent data between its STARTTLS acknowledgement and the TLS handshake",
            ));
        }
        match std::mem::replace(self.io.get_mut(), Link::Gone) {
            Link::Plain(stream) => {
                let session = tls.connect(stream, &self.url)?;
                *self.io.get_mut() = Link::Tls(Box::new(session));
                Ok(())
            }
            other => {
                *self.io.get_mut() = other;
                Err(self.bad("STARTTLS on a connection that is not plain"))
            }
        }
    }

    /// A protocol violation: `BadImage` with format `NBD`.
    pub fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadImage {
            path: self.url.clone(),
            format: "NBD",
            reason: reason.into(),
        }
    }

    /// An OS-level failure while doing `what`.
    pub fn os(&self, what: &str, e: &std::io::Error) -> Error {
        os_error(&self.url, what, e, self.timeout)
    }

    /// Fills `buf` from the socket.
    pub fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.io.read_exact(buf).map_err(|e| self.os(what, &e))
    }

    /// Reads a big-endian u16.
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b, what)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, what)?;
        Ok(u64::from_be_bytes(b))
    }

    /// Reads `len` bytes into a new vector (the caller bounds `len`).
    pub fn bytes(&mut self, len: usize, what: &str) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read_exact(&mut v, what)?;
        Ok(v)
    }

    /// Sends `buf` whole.
    pub fn send(&mut self, buf: &[u8], what: &str) -> Result<()> {
        let s = self.io.get_mut();
        s.write_all(buf)
            .and_then(|()| s.flush())
            .map_err(|e| os_error(&self.url, what, &e, self.timeout))
    }
}

fn os_error(url: &str, what: &str, e: &std::io::Error, timeout: Duration) -> Error {
    use std::io::ErrorKind;
    let detail = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "{what}: no answer from the NBD server within {} s ({TIMEOUT_ENV} sets the limit)",
            timeout.as_secs()
        ),
        ErrorKind::UnexpectedEof => {
            format!("{what}: the NBD server closed the connection")
        }
        _ => format!("{what}: {e}"),
    };
    Error::Source {
        path: PathBuf::from(url),
        source: std::io::Error::new(e.kind(), detail),
    }
}
