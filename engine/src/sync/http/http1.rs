//! The HTTP/1.1 that `tessera serve` speaks on one connection: request heads parsed by
//! `httparse`, bodies by `Content-Length` only (chunked bodies are refused: the sync client
//! never sends them), answers with `Content-Length`, keep-alive unless the client asks to
//! close. Everything read is bounded: a head by [`MAX_HEAD`], a body by the limit its
//! caller names before reading it.
//!
//! Time: every read and write goes through [`Timed`], which fails it once the deadline its
//! owner set has passed (each single socket operation is bounded by the time left), so a
//! peer that trickles bytes cannot stretch a bounded wait: a deadline covers a whole wait,
//! not the silence between two bytes.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use openssl::ssl::SslStream;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 << 10;
/// Most headers in a request head.
const MAX_HEADERS: usize = 32;

/// A TCP socket whose reads and writes fail with `TimedOut` once a deadline has passed.
///
/// Each read or write runs with a socket timeout of the time left. Setting the timeout is a
/// system call, so it is set again only when the deadline changed or [`REARM`] has passed
/// since it was last set: an operation can then end at most [`REARM`] after the deadline.
#[derive(Debug)]
pub struct Timed {
    tcp: TcpStream,
    deadline: Instant,
    /// When the read timeout was last set for the current deadline.
    read_armed: Option<Instant>,
    /// The same for the write timeout.
    write_armed: Option<Instant>,
}

/// How long a socket timeout, once set, is used for the current deadline.
pub const REARM: Duration = Duration::from_millis(500);

impl Timed {
    /// `tcp`, with a deadline `within` from now.
    pub fn new(tcp: TcpStream, within: Duration) -> Self {
        Self {
            tcp,
            deadline: Instant::now() + within,
            read_armed: None,
            write_armed: None,
        }
    }

    /// Reads and writes from now on fail once `within` has passed.
    pub fn set_deadline(&mut self, within: Duration) {
        self.deadline = Instant::now() + within;
        self.read_armed = None;
        self.write_armed = None;
    }

    /// The time left when a socket timeout last set at `armed` is due to be set again,
    /// `None` while it still serves; `TimedOut` when the deadline has passed.
    fn rearm(&self, armed: Option<Instant>) -> io::Result<Option<Duration>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        Ok(armed.is_none_or(|at| at.elapsed() >= REARM).then_some(left))
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
}

/// A socket timeout (reported by Linux as `EAGAIN`) is the deadline passing.
fn deadline_passed(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::WouldBlock {
        timed_out()
    } else {
        e
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.rearm(self.read_armed)? {
            self.tcp.set_read_timeout(Some(left))?;
            self.read_armed = Some(Instant::now());
        }
        self.tcp.read(buf).map_err(deadline_passed)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.rearm(self.write_armed)? {
            self.tcp.set_write_timeout(Some(left))?;
            self.write_armed = Some(Instant::now());
        }
        self.tcp.write(buf).map_err(deadline_passed)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// A connection's byte stream: plain TCP or TLS over TCP, always through [`Timed`].
pub trait Stream: Read + Write {
    /// The deadline-bounded socket beneath.
    fn timed(&mut self) -> &mut Timed;
}

impl Stream for Timed {
    fn timed(&mut self) -> &mut Timed {
        self
    }
}

impl Stream for SslStream<Timed> {
    fn timed(&mut self) -> &mut Timed {
        self.get_mut()
    }
}

/// What the server needs of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target (`/v1/info`).
    pub target: String,
    /// The value of `Authorization`, if any.
    pub authorization: Option<String>,
    /// `Content-Length` (0 without one).
    pub content_length: u64,
    /// The body is chunked (`Transfer-Encoding`): not supported.
    pub chunked: bool,
    /// `Expect: 100-continue`.
    pub expects_continue: bool,
    /// The client closes after this request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
}

/// Why a request head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The socket failed or timed out, or the peer closed in the middle of a head.
    Io(io::Error),
    /// Not an HTTP/1.x request head we accept (answer 400 and close).
    Malformed(String),
    /// Longer than [`MAX_HEAD`] or more than 32 headers (answer 431 and close).
    TooLarge,
}

/// One connection: its stream and the bytes read past the last request head.
pub struct Conn<S: Stream> {
    stream: S,
    pending: Vec<u8>,
}

impl<S: Stream> Conn<S> {
    /// A connection on `stream`.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            pending: Vec::new(),
        }
    }

    /// Reads and writes from now on fail once `within` has passed (see [`Timed`]).
    pub fn set_deadline(&mut self, within: Duration) {
        self.stream.timed().set_deadline(within);
    }

    /// Waits for the first byte of a request: `Ok(false)` when the client closed the
    /// connection (cleanly, between requests) instead.
    ///
    /// # Errors
    ///
    /// The socket's (the deadline included).
    pub fn await_request(&mut self) -> io::Result<bool> {
        if !self.pending.is_empty() {
            return Ok(true);
        }
        self.fill()
    }

    /// Reads more bytes into `pending`; `Ok(false)` at the end of the stream.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other?,
            }
        };
        self.pending
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    /// Reads the next request head.
    ///
    /// # Errors
    ///
    /// See [`HeadError`].
    pub fn read_head(&mut self) -> Result<Head, HeadError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            match request.parse(&self.pending) {
                Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                    return Err(HeadError::TooLarge)
                }
                Ok(httparse::Status::Complete(len)) => {
                    let head = head_of(&request)?;
                    self.pending.drain(..len);
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
                Err(e) => return Err(HeadError::Malformed(e.to_string())),
            }
            if self.pending.len() >= MAX_HEAD {
                return Err(HeadError::TooLarge);
            }
            if !self.fill().map_err(HeadError::Io)? {
                return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Reads a body of exactly `len` bytes (the caller has checked `len` against its limit).
    ///
    /// # Errors
    ///
    /// The socket's; `UnexpectedEof` when the client closes first.
    pub fn read_body(&mut self, len: u64) -> io::Result<Vec<u8>> {
        let len = usize::try_from(len).map_err(io::Error::other)?;
        let mut body = Vec::with_capacity(len);
        let from_pending = self.pending.len().min(len);
        body.extend(self.pending.drain(..from_pending));
        body.resize(len, 0);
        if let Some(rest) = body.get_mut(from_pending..) {
            self.stream.read_exact(rest)?;
        }
        Ok(body)
    }

    /// Reads and drops up to `limit` bytes, until the client closes, the deadline passes
    /// or a read fails: after a refusal, so that a client still sending the body of a
    /// refused request reads the answer rather than a connection reset.
    pub fn discard(&mut self, limit: u64) {
        let mut left = limit.saturating_sub(self.pending.len() as u64);
        self.pending.clear();
        let mut sink = [0u8; 16384];
        while left > 0 {
            let want = usize::try_from(left.min(sink.len() as u64)).unwrap_or(sink.len());
            match self.stream.read(&mut sink[..want]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n as u64),
            }
        }
    }

    /// Writes `100 Continue` (for `Expect: 100-continue`).
    ///
    /// # Errors
    ///
    /// The socket's.
    pub fn write_continue(&mut self) -> io::Result<()> {
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        self.stream.flush()
    }

    /// Writes an answer; with `close`, it says the connection closes after it.
    ///
    /// # Errors
    ///
    /// The socket's.
    pub fn respond(&mut self, status: u16, body: &[u8], close: bool) -> io::Result<()> {
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nContent-Type: {}\r\n{}{}\r\n",
            reason(status),
            body.len(),
            if status == 200 {
                "application/octet-stream"
            } else {
                "text/plain; charset=utf-8"
            },
            if status == 405 {
                "Allow: GET, POST\r\n"
            } else {
                ""
            },
            if close { "Connection: close\r\n" } else { "" },
        );
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        self.stream.flush()
    }

    /// The stream, to close it (TLS: with a `close_notify`).
    pub fn into_stream(self) -> S {
        self.stream
    }
}

fn head_of(request: &httparse::Request<'_, '_>) -> Result<Head, HeadError> {
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line".into()));
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_length = match header("Content-Length") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| HeadError::Malformed(format!("Content-Length {v:?} is not a number")))?,
    };
    let connection = header("Connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let close =
        connection.contains("close") || (version == 0 && !connection.contains("keep-alive"));
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        authorization: header("Authorization"),
        content_length,
        chunked: header("Transfer-Encoding").is_some(),
        expects_continue: header("Expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")),
        close,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A connection whose client side has sent `bytes` and then closed its sending side.
    fn conn_with(bytes: &[u8]) -> Conn<Timed> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(bytes).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let (server, _) = listener.accept().unwrap();
        std::mem::forget(client);
        Conn::new(Timed::new(server, Duration::from_secs(10)))
    }

    #[test]
    fn heads_and_bodies_of_kept_alive_requests() {
        let mut c = conn_with(
            b"POST /v1/put/chunk HTTP/1.1\r\nauthorization: Bearer x\r\nContent-Length: 5\r\n\r\nhelloGET /v1/info HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert!(c.await_request().unwrap());
        let head = c.read_head().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1/put/chunk");
        assert_eq!(head.authorization.as_deref(), Some("Bearer x"));
        assert!(!head.close && !head.chunked);
        assert_eq!(c.read_body(head.content_length).unwrap(), b"hello");
        assert!(c.await_request().unwrap());
        let head = c.read_head().unwrap();
        assert_eq!(
            (head.method.as_str(), head.content_length, head.close),
            ("GET", 0, true)
        );
        assert!(
            !c.await_request().unwrap(),
            "end of stream between requests"
        );
    }

    #[test]
    fn bad_heads_are_refused_without_panics() {
        for bad in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            let mut c = conn_with(bad);
            assert!(
                matches!(c.read_head(), Err(HeadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let many = "X-Many: y\r\n".repeat(40);
        let mut c = conn_with(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert!(matches!(c.read_head(), Err(HeadError::TooLarge)));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        let mut c = conn_with(long.as_bytes());
        assert!(matches!(c.read_head(), Err(HeadError::TooLarge)));
        let mut c = conn_with(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(c.read_head(), Err(HeadError::Io(_))), "cut short");
        let mut c = conn_with(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        let head = c.read_head().unwrap();
        assert!(c.read_body(head.content_length).is_err(), "body cut short");
    }

    /// A client that sends a byte every 50 ms never lets a read time out, but the deadline
    /// still ends the wait.
    #[test]
    fn a_trickling_client_meets_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut client = TcpStream::connect(addr).unwrap();
            for b in b"GET /".iter().chain([b'a'; 400].iter()) {
                if client.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let (server, _) = listener.accept().unwrap();
        let mut c = Conn::new(Timed::new(server, Duration::from_secs(30)));
        c.set_deadline(Duration::from_millis(600));
        let started = Instant::now();
        assert!(c.await_request().unwrap());
        match c.read_head() {
            Err(HeadError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
