//! `tessera serve`: the repository over HTTP (protocol in [`super`]).
//!
//! Each authorized request gets a thread of its own that reads its body (bounded by the
//! endpoint's limit) and later writes its answer; only the repository work runs on the one
//! serving loop, one request at a time, in the order their bodies became complete. So a
//! client that stalls in the middle of a body, or stops reading an answer, holds its own
//! thread and nothing else (at most [`MAX_REQUESTS`] are in flight; more are answered 503
//! at once). Unauthorized requests are answered 401 without reading their bodies (on a
//! thread of their own too).
//!
//! The serving loop handles requests one at a time. Each opens the repository for
//! what it does: reads open it as a reader (seeing every snapshot published so far); `put`
//! and `publish` open it as **the writer for the duration of that request** (lock, recovery,
//! append, seal, release), so local backups can run between requests and a push never
//! holds the lock while the client is busy elsewhere. A `put` is checked completely
//! (record headers, decoding, digests) before the writer is opened: a refused `put`
//! writes nothing. Objects of an accepted `put` are sealed and indexed at count 0 before
//! the answer; `publish` checks every object the snapshot references (see
//! [`crate::sync::sink::publish_checked`]).
//!
//! With TLS, the listening socket belongs to the relay of [`super::tls_front`], and this
//! server listens on a private Unix socket behind it.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;

use openssl::ssl::SslAcceptor;
use sha2::{Digest, Sha256};
use tessera_format::{ObjectKind, SnapshotId};
use tiny_http::{Method, Request, Response, Server};

use crate::backend::Namespace;
use crate::error::{Error, Result};
use crate::net::{listen_tcp, Keepalive};
use crate::repo::{read_config, Repository};
use crate::sync::checked::check_batch;
use crate::sync::sink::{publish_checked, LocalSink, ObjectSink};
use crate::sync::source::{Catalog, ObjectSource};

use super::tls_front;
use super::wire::{
    decode_digests, decode_records, encode_record, parse_kind, MAX_ANSWER_BYTES, MAX_GET_DIGESTS,
    MAX_HAVE_DIGESTS, MAX_PUT_BYTES,
};

/// A bound listening socket.
pub struct Listener {
    server: Server,
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    tls: bool,
}

impl Listener {
    /// The URL clients use: `http://ADDR`, or `https://ADDR` when serving TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// Binds `listen` (e.g. `127.0.0.1:0`) with TCP `keepalive` (see [`crate::net`]); with
/// `tls` (see [`super::tls::server_config`]) it serves HTTPS only, through the relay of
/// [`super::tls_front`] (started here).
pub fn bind(listen: &str, tls: Option<SslAcceptor>, keepalive: Keepalive) -> Result<Listener> {
    let cannot = |e: &dyn std::fmt::Display| {
        Error::InvalidArgument(format!("cannot listen on {listen}: {e}"))
    };
    let public = listen_tcp(listen, keepalive).map_err(|e| cannot(&e))?;
    let addr = public.local_addr().map_err(|e| cannot(&e))?;
    let Some(acceptor) = tls else {
        let server = Server::from_listener(public, None).map_err(|e| cannot(&e))?;
        return Ok(Listener {
            server,
            addr,
            tls: false,
        });
    };
    let (inner, inner_addr) =
        tls_front::inner_listener().map_err(|e| Error::io("binding the relay's Unix socket", e))?;
    let server = Server::from_listener(inner, None).map_err(|e| cannot(&e))?;
    tls_front::spawn(public, acceptor, inner_addr);
    Ok(Listener {
        server,
        addr,
        tls: true,
    })
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

/// Requests read or answered at once (each on its own thread). Bodies are at most 80 MiB,
/// so bodies in memory stay under 640 MiB even when every slot holds one.
pub const MAX_REQUESTS: usize = 8;

/// One request whose body has been read, for the serving loop.
struct Job {
    method: Method,
    url: String,
    body: Vec<u8>,
    answer: std::sync::mpsc::SyncSender<(u16, Vec<u8>)>,
}

/// Serves `repo` until the process ends.
pub fn serve(listener: &Listener, repo: &Path, token: &str) -> Result<()> {
    // Fail early on a path that is not a repository.
    read_config(repo)?;
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
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
        for request in listener.server.incoming_requests() {
            if !authorized(&request, token) {
                let msg = b"missing or wrong bearer token; nothing was done".to_vec();
                refuse(request, 401, msg);
                continue;
            }
            if in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_REQUESTS {
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let msg = format!("more than {MAX_REQUESTS} requests in flight; try again later");
                refuse(request, 503, msg.into_bytes());
                continue;
            }
            let (jobs, in_flight) = (jobs.clone(), in_flight.clone());
            scope.spawn(move || {
                serve_request(request, &jobs);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            });
        }
        // `incoming_requests` ends only when the server is dropped; the loop then ends when
        // the last request's thread has dropped its sender.
        drop(jobs);
    });
    Ok(())
}

/// Answers `request` with `status` on a thread of its own: dropping a request drains the
/// rest of its body (`tiny_http`), which a stalled client would make wait forever. Such
/// threads do not count towards [`MAX_REQUESTS`], so clients without the token cannot use
/// up the slots of those with it.
fn refuse(request: Request, status: u16, body: Vec<u8>) {
    std::thread::spawn(move || {
        let _ = request.respond(Response::from_data(body).with_status_code(status));
    });
}

/// Reads `request`'s body, has the serving loop handle it, and writes the answer.
fn serve_request(mut request: Request, jobs: &std::sync::mpsc::Sender<Job>) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let (status, body) = match read_body(&mut request, body_limit(&method, &url)) {
        Ok(body) => {
            let (answer, reply) = std::sync::mpsc::sync_channel(1);
            let job = Job {
                method,
                url,
                body,
                answer,
            };
            match jobs.send(job).ok().and_then(|()| reply.recv().ok()) {
                Some(reply) => reply,
                None => (500, b"the serving loop stopped".to_vec()),
            }
        }
        Err((status, msg)) => (status, msg.into_bytes()),
    };
    let _ = request.respond(Response::from_data(body).with_status_code(status));
}

/// The largest body an endpoint accepts (64 KiB for the others: a stray body is read and
/// ignored, and an unknown endpoint still gets its 404).
fn body_limit(method: &Method, url: &str) -> u64 {
    let parts: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (Method::Post, ["v1", "have", _]) => (MAX_HAVE_DIGESTS * 32) as u64,
        (Method::Post, ["v1", "get", _]) => (MAX_GET_DIGESTS * 32) as u64,
        (Method::Post, ["v1", "put", _]) => MAX_PUT_BYTES,
        (Method::Post, ["v1", "publish"]) => MAX_ANSWER_BYTES,
        _ => 64 << 10,
    }
}

fn authorized(request: &Request, token: &str) -> bool {
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().strip_prefix("Bearer "))
        .unwrap_or("");
    token_matches(given.as_bytes(), token.as_bytes())
}

type Reply = std::result::Result<Vec<u8>, (u16, String)>;

fn status_of(e: &Error) -> u16 {
    match e {
        Error::Locked { .. } => 409,
        Error::SnapshotNotFound { .. } | Error::ObjectMissing { .. } => 404,
        Error::InvalidArgument(_) => 422,
        _ => 500,
    }
}

#[expect(clippy::needless_pass_by_value, reason = "used as `map_err(fail)`")]
fn fail(e: Error) -> (u16, String) {
    (status_of(&e), e.to_string())
}

fn read_body(request: &mut Request, limit: u64) -> Reply {
    if request.body_length().is_some_and(|n| n as u64 > limit) {
        return Err((413, format!("request body larger than {limit} bytes")));
    }
    let mut body = Vec::new();
    request
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| (400, format!("reading the request body: {e}")))?;
    if body.len() as u64 > limit {
        return Err((413, format!("request body larger than {limit} bytes")));
    }
    Ok(body)
}

fn handle(method: &Method, url: &str, body: &[u8], root: &Path) -> Reply {
    let parts: Vec<&str> = url.trim_start_matches('/').split('/').collect();
    let kind_of = |name: &str| -> std::result::Result<ObjectKind, (u16, String)> {
        parse_kind(name).ok_or((404, format!("unknown object kind {name:?}")))
    };
    match (method, parts.as_slice()) {
        (&Method::Get, ["v1", "info"]) => {
            let config = read_config(root).map_err(fail)?;
            Ok(serde_json::json!({ "id_scheme": config.id_scheme as u8 })
                .to_string()
                .into_bytes())
        }
        (&Method::Get, ["v1", "snapshots"]) => {
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
        (&Method::Get, ["v1", "snapshots", id]) => {
            let id: SnapshotId = id
                .parse()
                .map_err(|e| (400, format!("snapshot id {id:?}: {e}")))?;
            let repo = Repository::open(root).map_err(fail)?;
            if !repo.index().has_snapshot(id).map_err(fail)? {
                return Err((404, format!("no published snapshot {id}")));
            }
            repo.backend()
                .read_all(Namespace::Snapshots, &id.to_hex())
                .map_err(fail)
        }
        (&Method::Post, ["v1", "have", kind]) => {
            let kind = kind_of(kind)?;
            let digests = decode_digests(body, MAX_HAVE_DIGESTS).map_err(fail)?;
            let repo = Repository::open(root).map_err(fail)?;
            let have = repo.index().contains_many(kind, &digests).map_err(fail)?;
            Ok(have.into_iter().map(u8::from).collect())
        }
        (&Method::Post, ["v1", "get", kind]) => {
            let kind = kind_of(kind)?;
            let digests = decode_digests(body, MAX_GET_DIGESTS).map_err(fail)?;
            let repo = Repository::open(root).map_err(fail)?;
            let mut out = Vec::new();
            for o in repo.get_objects(kind, &digests).map_err(fail)? {
                encode_record(&mut out, &o);
            }
            debug_assert!(out.len() as u64 <= MAX_ANSWER_BYTES);
            Ok(out)
        }
        (&Method::Post, ["v1", "put", kind]) => {
            let kind = kind_of(kind)?;
            let records = decode_records(body, kind).map_err(fail)?;
            let digests: Vec<[u8; 32]> = records.iter().map(|(i, _)| i.digest.0).collect();
            let checked = check_batch("the client", kind, &digests, records).map_err(fail)?;
            let stored = checked.len();
            let repo = Repository::open_writer(root).map_err(fail)?;
            let mut sink = LocalSink::new(&repo);
            sink.put(kind, checked).map_err(fail)?;
            sink.seal().map_err(fail)?;
            Ok(serde_json::json!({ "stored": stored })
                .to_string()
                .into_bytes())
        }
        (&Method::Post, ["v1", "publish"]) => {
            let repo = Repository::open_writer(root).map_err(fail)?;
            let id = publish_checked(&repo, body).map_err(fail)?;
            Ok(serde_json::json!({ "id": id.to_hex() })
                .to_string()
                .into_bytes())
        }
        (m, _) => Err((404, format!("no such endpoint: {m} {url}"))),
    }
}
