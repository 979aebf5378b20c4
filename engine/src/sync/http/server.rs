//! `tessera serve`: the repository over HTTP (protocol in [`super`], HTTP/1.1 in
//! [`super::http1`]).
//!
//! Connections: each accepted connection gets a thread of its own (at most
//! [`MAX_CONNECTIONS`], [`MAX_PER_ADDRESS`] from one IP address; more are closed at once),
//! which does the TLS handshake if serving TLS, then reads requests one after another.
//! Every wait on the client has a deadline for the whole wait, not just for the silence
//! between two bytes (see [`super::http1::Timed`]): from accept to the end of the first
//! request head, [`IO_TIMEOUT`]; a later head, [`IO_TIMEOUT`] from its first byte; the wait
//! for a further request, [`IDLE_TIMEOUT`]; a body or an answer, [`IO_TIMEOUT`] plus its
//! length at [`MIN_RATE`]. TCP keepalive ([`crate::net`]) finds clients that vanished, also
//! while no deadline runs (the server does not read from a client while the serving loop
//! works on its request). So a client that stalls anywhere holds its own thread for a
//! bounded time. (This replaced `tiny_http`, whose connection pool could leave a connection
//! that arrived in a burst queued, unanswered, behind others that stayed open, and which
//! gave no way to time out a stalled body.)
//!
//! Requests: without the right bearer token the answer is 401 before the body is read or
//! the repository touched. An authorized request takes one of [`MAX_REQUESTS`] slots
//! (503 when none is free) until its answer is written; it reads its body (bounded by the
//! endpoint's limit; 413 over it) and hands it to the one serving loop, which does the
//! repository work of requests one at a time, in the order their bodies became complete.
//! After a refusal the connection is closed (once the refused body, up to
//! [`REFUSED_BODY_DRAINED`], has been read and dropped, so that the client sees the answer).
//!
//! The serving loop opens the repository for what each request does: reads open it as a
//! reader (seeing every snapshot published so far); `put` and `publish` open it as **the
//! writer for the duration of that request** (lock, recovery, append, seal, release), so
//! local backups can run between requests and a push never holds the lock while the client
//! is busy elsewhere. A `put` is checked completely (record headers, decoding, digests)
//! before the writer is opened: a refused `put` writes nothing. Objects of an accepted `put`
//! are sealed and indexed at count 0 before the answer; `publish` checks every object the
//! snapshot references (see [`crate::sync::sink::publish_checked`]).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, SyncSender};
use std::time::Duration;

use openssl::ssl::SslAcceptor;
use sha2::{Digest, Sha256};
use tessera_format::{ObjectKind, SnapshotId};

use crate::error::{Error, ErrorKind, Result};
use crate::net::{listen_tcp, Keepalive};
use crate::repo::{read_config, Repository};
use crate::storage::ObjectKey;
use crate::sync::checked::check_batch;
use crate::sync::sink::{publish_checked, LocalSink, ObjectSink, Publisher};
use crate::sync::source::{Catalog, ObjectSource};

use super::http1::{Conn, Head, HeadError, Stream, Timed};
use super::wire::{
    decode_digests, decode_records, encode_record, parse_kind, MAX_ANSWER_BYTES, MAX_GET_DIGESTS,
    MAX_HAVE_DIGESTS, MAX_PUT_BYTES,
};

/// Longest a connection may take from its accept to the end of its first request head
/// (TLS handshake included), and longest any later request head may take from its first
/// byte.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a kept-alive connection may wait for its next request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// The slowest a body may arrive or an answer leave: each may take [`IO_TIMEOUT`] plus its
/// length at this rate (64 kbit/s; 80 MiB: 2 h 51 min). Only clients with the token get
/// this far, so the rate is set for slow links, not against attackers.
pub const MIN_RATE: u64 = 8 << 10;
/// Longest the server reads and drops a refused body before closing.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Most connections served at once from one IPv4 address or IPv6 /64.
pub const MAX_PER_ADDRESS: usize = 32;
/// Requests read or answered at once. A slot holds a body, then an answer, each at most
/// 80 MiB, so they stay under 640 MiB in memory even when every slot is taken.
pub const MAX_REQUESTS: usize = 8;
/// Most bytes of a refused request's body read (and dropped) before its connection closes.
pub const REFUSED_BODY_DRAINED: u64 = 4 << 20;

/// The deadline for moving `len` bytes of a body or an answer.
fn transfer_time(len: u64) -> Duration {
    IO_TIMEOUT + Duration::from_secs(len / MIN_RATE)
}

/// A bound listening socket.
pub struct Listener {
    socket: TcpListener,
    tls: Option<SslAcceptor>,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
}

impl Listener {
    /// The URL clients use: `http://ADDR`, or `https://ADDR` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Binds `listen` (e.g. `127.0.0.1:0`) with TCP `keepalive` (see [`crate::net`]); with
/// `tls` (see [`super::tls::server_config`]) it serves HTTPS only.
pub fn bind(listen: &str, tls: Option<SslAcceptor>, keepalive: Keepalive) -> Result<Listener> {
    let cannot = |e: &dyn std::fmt::Display| Error::Listen {
        address: listen.to_string(),
        reason: e.to_string(),
    };
    let socket = listen_tcp(listen, keepalive).map_err(|e| cannot(&e))?;
    let addr = socket.local_addr().map_err(|e| cannot(&e))?;
    Ok(Listener { socket, tls, addr })
}

/// Whether two tokens are equal, in time independent of where they differ (the
/// comparison runs over fixed-length SHA-256 digests of both).
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// One request whose body has been read, for the serving loop.
struct Job {
    method: String,
    url: String,
    body: Vec<u8>,
    answer: SyncSender<(u16, Vec<u8>)>,
}

/// What every connection's thread shares.
struct Shared<'a> {
    token: &'a str,
    jobs: Sender<Job>,
    in_flight: AtomicUsize,
}

/// Serves `repo` until the process ends.
pub fn serve(listener: &Listener, repo: &Path, token: &str) -> Result<()> {
    // Fail early on a path that is not a repository.
    read_config(repo)?;
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let shared = Shared {
        token,
        jobs,
        in_flight: AtomicUsize::new(0),
    };
    let connections = Connections::default();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for job in queue {
                let reply = match handle(&job.method, &job.url, &job.body, repo) {
                    Ok(body) => (200, body),
                    Err((status, msg)) => (status, msg.into_bytes()),
                };
                // The request's thread may be gone (its client hung up): nothing to do.
                let _ = job.answer.send(reply);
            }
        });
        for stream in listener.socket.incoming() {
            let Ok(stream) = stream else {
                // Out of descriptors or memory: let connections finish rather than spin.
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let Some(admitted) = stream
                .peer_addr()
                .ok()
                .and_then(|a| connections.admit(a.ip()))
            else {
                continue;
            };
            let (shared, tls) = (&shared, listener.tls.as_ref());
            // If no thread can be had, the stream and the admission are dropped here.
            let _ = std::thread::Builder::new().spawn_scoped(scope, move || {
                let _ = connection(stream, tls, shared);
                drop(admitted);
            });
        }
    });
    Ok(())
}

/// Connections being served, in all and per peer address.
#[derive(Default)]
struct Connections {
    /// Total, and per peer address (IPv6 by /64: one host usually holds a whole /64).
    counts: std::sync::Mutex<(usize, std::collections::HashMap<IpAddr, usize>)>,
}

/// The key a peer is counted under: its IPv4 address, or its IPv6 /64 prefix.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

impl Connections {
    /// Counts a new connection from `peer`, or `None` when the server or that peer is at
    /// its limit ([`MAX_CONNECTIONS`], [`MAX_PER_ADDRESS`]); a refused peer leaves no entry.
    fn admit(&self, peer: IpAddr) -> Option<Admitted<'_>> {
        let key = peer_key(peer);
        let mut guard = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per_peer) = &mut *guard;
        if *total >= MAX_CONNECTIONS || per_peer.get(&key).copied().unwrap_or(0) >= MAX_PER_ADDRESS
        {
            return None;
        }
        *total += 1;
        *per_peer.entry(key).or_insert(0) += 1;
        Some(Admitted { all: self, key })
    }
}

/// One counted connection, uncounted on drop (also when its thread panics).
struct Admitted<'a> {
    all: &'a Connections,
    key: IpAddr,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut guard = self
            .all
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (total, per_peer) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = per_peer.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(&self.key);
            }
        }
    }
}

/// Serves one connection until it closes, fails or times out.
fn connection(
    tcp: TcpStream,
    tls: Option<&SslAcceptor>,
    shared: &Shared<'_>,
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    // One deadline for the handshake and the whole first request head.
    let timed = Timed::new(tcp, IO_TIMEOUT);
    match tls {
        None => requests(Conn::new(timed), shared).map(drop),
        Some(acceptor) => {
            let tls = acceptor.accept(timed).map_err(std::io::Error::other)?;
            let mut tls = requests(Conn::new(tls), shared)?;
            tls.get_mut().set_deadline(DRAIN_TIME);
            let _ = tls.shutdown();
            Ok(())
        }
    }
}

/// Answers the requests of `conn` one after another; returns its stream when the
/// connection is to be closed.
fn requests<S: Stream>(mut conn: Conn<S>, shared: &Shared<'_>) -> std::io::Result<S> {
    let mut first = true;
    loop {
        if !first {
            conn.set_deadline(IDLE_TIMEOUT);
        }
        if !conn.await_request()? {
            return Ok(conn.into_stream());
        }
        if !first {
            conn.set_deadline(IO_TIMEOUT);
        }
        first = false;
        let head = match conn.read_head() {
            Ok(head) => head,
            Err(HeadError::Io(e)) => return Err(e),
            Err(HeadError::Malformed(why)) => {
                return refuse(conn, 400, &format!("not an HTTP/1.1 request: {why}"), 0)
            }
            Err(HeadError::TooLarge) => {
                return refuse(conn, 431, "request head too large", 0);
            }
        };
        let slot = match admit(&head, shared) {
            Ok(slot) => slot,
            Err((status, why)) => return refuse(conn, status, &why, head.content_length),
        };
        conn.set_deadline(transfer_time(head.content_length));
        if head.expects_continue {
            conn.write_continue()?;
        }
        let body = conn.read_body(head.content_length)?;
        let (status, answer) = run(shared, head.method.clone(), head.target.clone(), body);
        conn.set_deadline(transfer_time(answer.len() as u64));
        conn.respond(status, &answer, head.close)?;
        // The slot is held until the answer is out: answers in memory stay bounded too.
        drop(slot);
        if head.close {
            return Ok(conn.into_stream());
        }
    }
}

/// Answers `status` with `why`, reads and drops what the client still sends of a body of
/// `body_len` bytes (at most [`REFUSED_BODY_DRAINED`], for at most [`DRAIN_TIME`]), and
/// ends the connection.
fn refuse<S: Stream>(
    mut conn: Conn<S>,
    status: u16,
    why: &str,
    body_len: u64,
) -> std::io::Result<S> {
    conn.set_deadline(IO_TIMEOUT);
    conn.respond(status, why.as_bytes(), true)?;
    conn.set_deadline(DRAIN_TIME);
    conn.discard(body_len.min(REFUSED_BODY_DRAINED));
    Ok(conn.into_stream())
}

/// A taken request slot, given back on drop.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Checks `head` before its body is read: the token, the body's framing and size, a free
/// request slot.
fn admit<'a>(head: &Head, shared: &'a Shared<'_>) -> std::result::Result<Slot<'a>, (u16, String)> {
    if head.method != "GET" && head.method != "POST" {
        return Err((
            405,
            format!("{} is not served here: GET or POST", head.method),
        ));
    }
    if !authorized(head, shared.token) {
        return Err((
            401,
            "missing or wrong bearer token; nothing was done".into(),
        ));
    }
    if head.chunked {
        return Err((411, "send the request body with a Content-Length".into()));
    }
    let limit = body_limit(&head.method, &head.target);
    if head.content_length > limit {
        return Err((413, format!("request body larger than {limit} bytes")));
    }
    if shared.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        return Err((
            503,
            format!("more than {MAX_REQUESTS} requests in flight; try again later"),
        ));
    }
    Ok(Slot(&shared.in_flight))
}

/// Has the serving loop handle a request and waits for its answer.
fn run(shared: &Shared<'_>, method: String, url: String, body: Vec<u8>) -> (u16, Vec<u8>) {
    let (answer, reply) = std::sync::mpsc::sync_channel(1);
    let job = Job {
        method,
        url,
        body,
        answer,
    };
    match shared.jobs.send(job).ok().and_then(|()| reply.recv().ok()) {
        Some(reply) => reply,
        None => (500, b"the serving loop stopped".to_vec()),
    }
}

/// The largest body an endpoint accepts (64 KiB for the others: a stray body is read and
/// ignored, and an unknown endpoint still gets its 404).
fn body_limit(method: &str, url: &str) -> u64 {
    let parts: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "have", _]) => (MAX_HAVE_DIGESTS * 32) as u64,
        ("POST", ["v1", "get", _]) => (MAX_GET_DIGESTS * 32) as u64,
        ("POST", ["v1", "put", _]) => MAX_PUT_BYTES,
        ("POST", ["v1", "publish"]) => MAX_ANSWER_BYTES,
        _ => 64 << 10,
    }
}

fn authorized(head: &Head, token: &str) -> bool {
    let given = head
        .authorization
        .as_deref()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(given.as_bytes(), token.as_bytes())
}

type Reply = std::result::Result<Vec<u8>, (u16, String)>;

/// Who sent a request body, in messages.
const CLIENT: &str = "the client";

/// The status answering a failed request: the client can retry after 409, fix its request
/// or data after 404 and 422; 500 is the server's own failure (its message says which).
fn status_of(e: &Error) -> u16 {
    match (e, e.kind()) {
        (_, ErrorKind::Locked) => 409,
        (Error::SnapshotNotFound { .. } | Error::ObjectMissing { .. }, _) => 404,
        (Error::UntrustedData { .. }, _) | (_, ErrorKind::Usage | ErrorKind::Refused) => 422,
        _ => 500,
    }
}

#[expect(clippy::needless_pass_by_value, reason = "used as `map_err(fail)`")]
fn fail(e: Error) -> (u16, String) {
    (status_of(&e), e.to_string())
}

fn handle(method: &str, url: &str, body: &[u8], root: &Path) -> Reply {
    let parts: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    let kind_of = |name: &str| -> std::result::Result<ObjectKind, (u16, String)> {
        parse_kind(name).ok_or((404, format!("unknown object kind {name:?}")))
    };
    match (method, parts.as_slice()) {
        ("GET", ["v1", "info"]) => {
            let config = read_config(root).map_err(fail)?;
            Ok(serde_json::json!({ "id_scheme": config.id_scheme as u8 })
                .to_string()
                .into_bytes())
        }
        ("GET", ["v1", "snapshots"]) => {
            let repo = Repository::open(root).map_err(fail)?;
            let list: Vec<serde_json::Value> = Catalog::snapshots(&repo)
                .map_err(fail)?
                .into_iter()
                .map(|s| {
                    serde_json::json!({
                        "id": s.id.to_hex(), "series": s.series, "time_us": s.time_us,
                        "disks": s.disks,
                    })
                })
                .collect();
            Ok(serde_json::Value::from(list).to_string().into_bytes())
        }
        ("GET", ["v1", "snapshots", id]) => {
            let id: SnapshotId = id
                .parse()
                .map_err(|e| (400, format!("snapshot id {id:?}: {e}")))?;
            let repo = Repository::open(root).map_err(fail)?;
            if !repo.index().has_snapshot(id).map_err(fail)? {
                return Err((404, format!("no published snapshot {id}")));
            }
            repo.backend().get(&ObjectKey::snapshot(id)).map_err(fail)
        }
        ("POST", ["v1", "have", kind]) => {
            let kind = kind_of(kind)?;
            let digests = decode_digests(body, MAX_HAVE_DIGESTS, CLIENT).map_err(fail)?;
            let repo = Repository::open(root).map_err(fail)?;
            let have = repo.index().contains_many(kind, &digests).map_err(fail)?;
            Ok(have.into_iter().map(u8::from).collect())
        }
        ("POST", ["v1", "get", kind]) => {
            let kind = kind_of(kind)?;
            let digests = decode_digests(body, MAX_GET_DIGESTS, CLIENT).map_err(fail)?;
            let repo = Repository::open(root).map_err(fail)?;
            let mut out = Vec::new();
            for o in repo.get_objects(kind, &digests).map_err(fail)? {
                encode_record(&mut out, &o).map_err(fail)?;
            }
            debug_assert!(out.len() as u64 <= MAX_ANSWER_BYTES);
            Ok(out)
        }
        ("POST", ["v1", "put", kind]) => {
            let kind = kind_of(kind)?;
            let records = decode_records(body, kind, CLIENT).map_err(fail)?;
            let digests: Vec<[u8; 32]> = records.iter().map(|(i, _)| i.digest.0).collect();
            let checked = check_batch("the client", kind, &digests, records).map_err(fail)?;
            let stored = checked.len();
            let repo = Repository::open_writer(root).map_err(fail)?;
            let mut sink = LocalSink::new(&repo, Publisher::Client);
            sink.put(kind, checked).map_err(fail)?;
            sink.seal().map_err(fail)?;
            Ok(serde_json::json!({ "stored": stored })
                .to_string()
                .into_bytes())
        }
        ("POST", ["v1", "publish"]) => {
            let repo = Repository::open_writer(root).map_err(fail)?;
            let id = publish_checked(&repo, body, Publisher::Client).map_err(fail)?;
            Ok(serde_json::json!({ "id": id.to_hex() })
                .to_string()
                .into_bytes())
        }
        (m, _) => Err((404, format!("no such endpoint: {m} {url}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn v6(last: u16, net: u16) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, last))
    }

    #[test]
    fn connections_are_limited_per_peer_and_in_all() {
        let all = Connections::default();
        // One IPv6 /64 counts as one peer, whatever the host part.
        let held: Vec<_> = (0..MAX_PER_ADDRESS)
            .map(|i| all.admit(v6(i as u16 + 1, 1)).unwrap())
            .collect();
        assert!(all.admit(v6(999, 1)).is_none());
        assert!(all.admit(v6(1, 2)).is_some(), "another /64 is another peer");
        drop(held);
        assert!(all.admit(v6(999, 1)).is_some(), "given back on drop");

        // Full in all: refused peers leave nothing behind.
        let peers = MAX_CONNECTIONS / MAX_PER_ADDRESS;
        let held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|i| {
                let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i % peers) as u8));
                all.admit(peer).unwrap()
            })
            .collect();
        for i in 0..1000u32 {
            assert!(all
                .admit(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)))
                .is_none());
        }
        {
            let (total, per_peer) = &*all.counts.lock().unwrap();
            assert_eq!((*total, per_peer.len()), (MAX_CONNECTIONS, peers));
        }
        drop(held);
        assert_eq!(all.counts.lock().unwrap().0, 0);
    }
}
