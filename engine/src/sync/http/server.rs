//! `tessera serve`: the repository over HTTP/1.1 (protocol in [`super`]).
//!
//! **Stack.** tokio accepts connections; each gets a task that does the TLS handshake if
//! serving TLS (tokio-openssl) and hands the stream to hyper's HTTP/1.1 server connection,
//! which parses request heads (at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers, else
//! 431; malformed, 400), frames bodies, keeps connections alive, answers
//! `Expect: 100-continue`, and closes a connection whose next request head has not arrived
//! within [`IO_TIMEOUT`] (its header-read timeout). The repository work stays synchronous:
//! one serving thread ([`super::routes::serving_loop`]) does it for one request at a time,
//! in the order their bodies became complete, as before the move to hyper.
//!
//! **Bounds.** Connections are counted and evicted as [`super::conn`] describes, and each
//! has one deadline at a time for a whole wait (handshake and first head, a body, an
//! answer), so a client that stalls or trickles anywhere holds its connection for a bounded
//! time; a body or answer may take [`IO_TIMEOUT`] plus its length at [`MIN_RATE`]. An
//! authorized request takes one of [`MAX_REQUESTS`] slots (503 when none is free) from
//! before its body is read until its answer has been handed to hyper, so bodies and answers
//! in memory stay under `MAX_REQUESTS` × 80 MiB. TCP keepalive ([`crate::net`]) finds
//! clients that vanished, also while the server works on their request.
//!
//! **Who.** Every request needs a token of the tokens file ([`super::tokens`]); admission
//! ([`super::service`]) refuses before the body is read or the repository touched: 429 while
//! the peer's failed authentications are rate-limited ([`super::limiter`]), 401 without a
//! known token, 403 for an endpoint its role may not call. Every request ends in one line
//! of the audit log ([`super::audit`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use openssl::ssl::{Ssl, SslAcceptor};

use crate::error::{Error, Result};
use crate::net::{listen_tcp, Keepalive};
use crate::repo::RepoStorage;

use super::audit::AuditLog;
use super::conn::{ConnState, Connections};
use super::quota::Usage;
use super::routes::{check_repository, serving_loop, ServingState};
use super::service::{respond, Shared, TokenSource};

pub use super::conn::{MAX_CONNECTIONS, MAX_PER_ADDRESS};

/// Longest a connection may take from its accept to the end of its first request head
/// (TLS handshake included); longest the wait for a later request and its head may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest a body may arrive or an answer leave: each may take [`IO_TIMEOUT`] plus its
/// length at this rate (64 kbit/s; 80 MiB: 2 h 51 min). Only clients with a token get
/// this far, so the rate is set for slow links, not against attackers.
pub const MIN_RATE: u64 = 8 << 10;
/// Longest the server reads and drops a refused body before closing.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);
/// Requests read or answered at once. A slot holds a body, then an answer, each at most
/// 80 MiB, so they stay under 640 MiB in memory even when every slot is taken.
pub const MAX_REQUESTS: usize = 8;
/// Most bytes of a refused request's body read (and dropped) before its connection closes.
pub const REFUSED_BODY_DRAINED: u64 = 4 << 20;
/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 << 10;
/// Most headers in a request head.
pub const MAX_HEADERS: usize = 32;

/// The deadline for moving `len` bytes of a body or an answer.
pub fn transfer_time(len: u64) -> Duration {
    IO_TIMEOUT + Duration::from_secs(len / MIN_RATE)
}

/// A bound listening socket.
pub struct Listener {
    socket: std::net::TcpListener,
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
/// `tls` (see [`super::tls::server_config`]) it serves HTTPS only. Plain HTTP on an address
/// that is not loopback is refused unless `insecure_http`: tokens and data would cross the
/// network in clear.
pub fn bind(
    listen: &str,
    tls: Option<SslAcceptor>,
    keepalive: Keepalive,
    insecure_http: bool,
) -> Result<Listener> {
    let cannot = |e: &dyn std::fmt::Display| Error::Listen {
        address: listen.to_string(),
        reason: e.to_string(),
    };
    let socket = listen_tcp(listen, keepalive).map_err(|e| cannot(&e))?;
    let addr = socket.local_addr().map_err(|e| cannot(&e))?;
    if tls.is_none() && !insecure_http && !addr.ip().is_loopback() {
        return Err(Error::Usage(format!(
            "refusing to serve plain HTTP on {addr}, which is not a loopback address: tokens and backups would cross the network in clear. Serve HTTPS with --tls-cert CERT.pem --tls-key KEY.pem, or give --insecure-http if the network is trusted (e.g. a TLS-terminating proxy on the same host)"
        )));
    }
    socket.set_nonblocking(true).map_err(|e| cannot(&e))?;
    Ok(Listener { socket, tls, addr })
}

/// Who may use the server and where its requests are logged.
pub struct ServeOptions {
    /// The tokens.
    pub tokens: TokenSource,
    /// The tokens file whose `.usage` file counts quotas (`None`: no quotas).
    pub usage_of: Option<std::path::PathBuf>,
    /// The audit log.
    pub audit: AuditLog,
    /// Least time between two snapshots a `backup` token publishes into one series (zero:
    /// no limit); see [`DEFAULT_MIN_PUBLISH_INTERVAL`].
    pub min_publish_interval: Duration,
    /// Where the dashboard finds jobs (`serve --jobs`, `--state-dir`, `--stale-after`).
    pub jobs: crate::dashboard::jobs::JobsConfig,
}

/// The default of `serve --min-publish-interval`: a `backup` token may publish one snapshot
/// per series per minute. A backup run publishes one snapshot per series (all disks of a VM
/// are one snapshot), so real clients do not notice; a compromised token needs N minutes to
/// push N real snapshots out of `prune --keep-last N`, instead of N requests.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
pub const DEFAULT_MIN_PUBLISH_INTERVAL: Duration = Duration::from_secs(60);

/// Serves `repo` (local, or in object storage through its index cache) until the process
/// ends.
pub fn serve(listener: Listener, repo: &RepoStorage, options: ServeOptions) -> Result<()> {
    // Fail early on a location that is not a repository, or unusable usage counts.
    let root = check_repository(repo)?;
    let usage = options.usage_of.as_deref().map(Usage::load).transpose()?;
    let mut state = ServingState::new(usage, options.min_publish_interval, options.audit.clone());
    state.dashboard.jobs = options.jobs;
    state.dashboard.repository = repo.backend.describe();
    let (jobs, queue) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("tessera-serving".into())
        .spawn(move || serving_loop(&root, &queue, state))
        .map_err(|e| Error::io("starting the serving thread", e))?;
    let tls = listener.tls.is_some();
    let shared = Arc::new(Shared::new(options.tokens, jobs, options.audit, tls));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tessera-serve")
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::io("starting the server's runtime", e))?;
    runtime.block_on(accept_loop(listener, shared))
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>) -> Result<()> {
    let socket = tokio::net::TcpListener::from_std(listener.socket)
        .map_err(|e| Error::io("listening", e))?;
    let tls = listener.tls.map(Arc::new);
    let connections = Arc::new(Connections::default());
    loop {
        let Ok((tcp, peer)) = socket.accept().await else {
            // Out of descriptors or memory: let connections finish rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(admitted) = connections.admit(peer.ip(), IO_TIMEOUT) else {
            continue;
        };
        let (shared, tls) = (Arc::clone(&shared), tls.clone());
        tokio::spawn(async move {
            let state = Arc::clone(&admitted.state);
            tokio::select! {
                () = connection(tcp, peer, tls, shared, Arc::clone(&state)) => {}
                () = state.expired() => {}
            }
            drop(admitted);
        });
    }
}

/// Serves one connection until it closes or fails (the caller ends it at its deadline).
async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<SslAcceptor>>,
    shared: Arc<Shared>,
    state: Arc<ConnState>,
) {
    let _ = tcp.set_nodelay(true);
    match tls {
        None => http(TokioIo::new(tcp), peer, shared, state).await,
        Some(acceptor) => {
            let Ok(mut stream) = Ssl::new(acceptor.context())
                .and_then(|ssl| tokio_openssl::SslStream::new(ssl, tcp))
            else {
                return;
            };
            if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                return;
            }
            http(TokioIo::new(stream), peer, shared, state).await;
        }
    }
}

async fn http<IO>(io: TokioIo<IO>, peer: SocketAddr, shared: Arc<Shared>, state: Arc<ConnState>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        respond(Arc::clone(&shared), Arc::clone(&state), peer, req)
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}
