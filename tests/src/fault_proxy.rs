//! A small fault-injecting HTTP/1.1 proxy in front of a real S3 server, for the S3 fault
//! tests. It is never the only server of a test: everything it does not break reaches the
//! real SeaweedFS behind it unchanged (the SigV4 signature covers the `Host` header, which
//! passes through as the client sent it).
//!
//! Each client connection carries one request: the proxy adds `Connection: close` to both
//! the request it forwards and the answer it returns, so it needs to parse only request
//! heads (requests have a `Content-Length`) and never a response body. A [`Rule`] decides,
//! per request, whether to forward it or to break it:
//! - [`Fault::Status`]: answer with an S3 error (500 `InternalError`, 503 `SlowDown`) without
//!   forwarding;
//! - [`Fault::ResetMidBody`]: read half the request body, then reset the connection (RST);
//! - [`Fault::ResetAfterForward`]: forward the request, let the server handle it, then reset
//!   the connection instead of answering (the answer is lost; the change happened);
//! - [`Fault::Delay`]: forward the request, then hold the server's answer back for a while
//!   (a slow server or network; a client whose timeout is shorter gives up on it);
//! - [`Fault::DropHeader`]: forward the request, relay the answer without one header.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How to break one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and S3 error code.
    Status(u16, &'static str),
    /// Reset the connection halfway through the request body.
    ResetMidBody,
    /// Forward, then reset instead of answering.
    ResetAfterForward,
    /// Forward, then wait this long before relaying the answer.
    Delay(Duration),
    /// Forward, and relay the answer without this header (e.g. `date`).
    DropHeader(&'static str),
}

/// One request as the rule sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `PUT`, …
    pub method: String,
    /// Path and query.
    pub target: String,
    /// Body length.
    pub body_len: usize,
    /// Length of the byte range a ranged `GET` asks for (`Range: bytes=A-B`).
    pub range_len: Option<u64>,
    /// How many requests the proxy saw before this one.
    pub seq: usize,
}

/// Decides the fate of each request.
pub type Rule = Box<dyn Fn(&Request) -> Option<Fault> + Send + Sync>;

/// A running proxy; stopped when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    upstream: String,
    rule: Mutex<Rule>,
    seen: AtomicUsize,
    injected: Mutex<Vec<(Request, Fault)>>,
}

/// Largest request head accepted.
const MAX_HEAD: usize = 64 << 10;

impl FaultProxy {
    /// Starts a proxy to `upstream` (`127.0.0.1:PORT`) that forwards everything.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            upstream: upstream.trim_start_matches("http://").to_string(),
            rule: Mutex::new(Box::new(|_| None)),
            seen: AtomicUsize::new(0),
            injected: Mutex::new(Vec::new()),
        });
        let (stop2, shared2) = (stop.clone(), shared.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let shared = shared2.clone();
                        std::thread::spawn(move || {
                            let _ = serve(&shared, conn);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return,
                }
            }
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            stop,
            shared,
            thread: Some(thread),
        }
    }

    /// Replaces the rule.
    pub fn set_rule(&self, rule: Rule) {
        *self.shared.rule.lock().expect("rule lock") = rule;
    }

    /// The faults injected so far.
    pub fn injected(&self) -> Vec<(Request, Fault)> {
        self.shared.injected.lock().expect("log lock").clone()
    }

    /// Requests seen so far.
    pub fn seen(&self) -> usize {
        self.shared.seen.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(shared: &Shared, mut client: TcpStream) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_mins(1)))?;
    let (head, mut body_start) = read_head(&mut client)?;
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let method = start.next().unwrap_or_default().to_string();
    let target = start.next().unwrap_or_default().to_string();
    let mut body_len = 0;
    let mut range_len = None;
    let mut kept = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name == "content-length" {
            body_len = line[15..].trim().parse().unwrap_or(0);
        }
        if name == "range" {
            range_len = line[6..]
                .trim()
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?));
        }
        if name != "connection" {
            kept.push(line);
        }
    }
    let request = Request {
        method,
        target,
        body_len,
        range_len,
        seq: shared.seen.fetch_add(1, Ordering::Relaxed),
    };
    let fault = (shared.rule.lock().expect("rule lock"))(&request);
    if let Some(f) = fault {
        shared
            .injected
            .lock()
            .expect("log lock")
            .push((request.clone(), f));
    }
    match fault {
        Some(Fault::Status(status, code)) => {
            read_body(&mut client, &mut body_start, body_len)?;
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
            );
            let answer = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes())?;
            client.shutdown(Shutdown::Both)
        }
        Some(Fault::ResetMidBody) => {
            read_body(&mut client, &mut body_start, body_len / 2)?;
            reset(&client)
        }
        _ => {
            let mut upstream = TcpStream::connect(&shared.upstream)?;
            let mut forwarded = String::new();
            forwarded.push_str(text.split("\r\n").next().unwrap_or_default());
            forwarded.push_str("\r\n");
            for line in kept {
                forwarded.push_str(line);
                forwarded.push_str("\r\n");
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            upstream.write_all(forwarded.as_bytes())?;
            let body = read_body(&mut client, &mut body_start, body_len)?;
            upstream.write_all(&body)?;
            if fault == Some(Fault::ResetAfterForward) {
                // Wait for the server's answer (the change is done), then lose it.
                let mut sink = [0u8; 1];
                let _ = upstream.read(&mut sink);
                return reset(&client);
            }
            if let Some(Fault::Delay(wait)) = fault {
                std::thread::sleep(wait);
            }
            let dropped = match fault {
                Some(Fault::DropHeader(name)) => Some(name),
                _ => None,
            };
            relay_answer(&mut upstream, &mut client, dropped)
        }
    }
}

/// Reads up to the end of the request head; returns it and the body bytes read past it.
fn read_head(conn: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(at + 4);
            buf.truncate(at);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::other("request head too large"));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_body(conn: &mut TcpStream, have: &mut Vec<u8>, len: usize) -> io::Result<Vec<u8>> {
    let mut body = std::mem::take(have);
    let mut chunk = vec![0u8; 64 << 10];
    while body.len() < len {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Ok(body)
}

/// Copies the server's answer to the client, with `Connection: close` in its head and
/// without the header `dropped` (lower case), if given.
fn relay_answer(
    upstream: &mut TcpStream,
    client: &mut TcpStream,
    dropped: Option<&str>,
) -> io::Result<()> {
    let (head, rest) = read_head(upstream)?;
    let text = String::from_utf8_lossy(&head);
    let mut out = String::new();
    for line in text.split("\r\n") {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name != "connection" && Some(name.as_str()) != dropped {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes())?;
    client.write_all(&rest)?;
    io::copy(upstream, client)?;
    client.shutdown(Shutdown::Both)
}

/// Closes with a TCP reset (`SO_LINGER` 0).
fn reset(conn: &TcpStream) -> io::Result<()> {
    let fd = std::os::fd::AsFd::as_fd(conn);
    nix::sys::socket::setsockopt(
        &fd,
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .map_err(io::Error::from)?;
    Ok(())
}
