//! One request of `tessera serve`, from its head to its answer: admission (rate limit,
//! method, token, framing, endpoint, size, role, request slot — in that order, all before
//! the body is read), the body under its deadline, the repository work on the serving
//! thread, and the answer, which holds the request slot until hyper has taken its last byte.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Result;

use super::audit::{AuditLog, Record};
use super::conn::{Busy, ConnState};
use super::limiter::Failures;
use super::routes::{Endpoint, Job, Queued, Refusal};
use super::server::{transfer_time, DRAIN_TIME, IO_TIMEOUT, MAX_REQUESTS, REFUSED_BODY_DRAINED};
use super::tokens::{file_stamp, hash_token, FileStamp, TokenEntry, Tokens};

/// Where the tokens come from: fixed (`--token-file`), or a tokens file, read again when it
/// changes (so `tessera token remove` takes effect without a restart; a changed file that
/// does not load keeps the tokens loaded before, and says so on stderr once).
pub enum TokenSource {
    /// These tokens, for the server's lifetime.
    Fixed(Arc<Tokens>),
    /// The tokens file at this path.
    File {
        /// The file.
        path: PathBuf,
        /// Its stamp when last read, and its tokens.
        cache: Mutex<(Option<FileStamp>, Arc<Tokens>)>,
    },
}

impl TokenSource {
    /// The tokens file `path`, read now.
    pub fn file(path: PathBuf) -> Result<Self> {
        let stamp = file_stamp(&path);
        let tokens = Tokens::load(&path)?;
        Ok(Self::File {
            path,
            cache: Mutex::new((stamp, Arc::new(tokens))),
        })
    }

    fn current(&self) -> Arc<Tokens> {
        match self {
            Self::Fixed(t) => Arc::clone(t),
            Self::File { path, cache } => {
                let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
                let stamp = file_stamp(path);
                if stamp != cache.0 {
                    cache.0 = stamp;
                    // Fail closed: an edit that revokes a token must never leave it working
                    // because the file did not load (a typo, a deleted file, a loosened mode).
                    match Tokens::load(path) {
                        Ok(t) => cache.1 = Arc::new(t),
                        Err(e) => {
                            eprintln!("tessera serve: refusing every request until the tokens file loads again: {e}");
                            cache.1 = Arc::new(Tokens::default());
                        }
                    }
                }
                Arc::clone(&cache.1)
            }
        }
    }
}

/// What every request shares.
pub struct Shared {
    /// Who may do what.
    pub tokens: TokenSource,
    /// Failed authentications per address.
    pub failures: Failures,
    /// Request slots.
    pub slots: Arc<Semaphore>,
    /// The serving thread's queue.
    pub jobs: std::sync::mpsc::Sender<Queued>,
    /// The audit log.
    pub audit: AuditLog,
    /// The dashboard's sessions.
    pub sessions: crate::dashboard::session::Sessions,
    /// Whether the server speaks TLS (the session cookie is then `Secure`).
    pub tls: bool,
}

impl Shared {
    /// Shared state serving `tokens`, queueing work on `jobs`, logging to `audit`.
    pub fn new(
        tokens: TokenSource,
        jobs: std::sync::mpsc::Sender<Queued>,
        audit: AuditLog,
        tls: bool,
    ) -> Self {
        Self {
            tokens,
            failures: Failures::default(),
            slots: Arc::new(Semaphore::new(MAX_REQUESTS)),
            jobs,
            audit,
            sessions: crate::dashboard::session::Sessions::default(),
            tls,
        }
    }

    /// The current tokens (a tokens file is read again when it changed).
    pub fn tokens(&self) -> Arc<Tokens> {
        self.tokens.current()
    }
}

/// A taken request slot, and its mark on the connection.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _busy: Busy,
}

/// Answers one request of the connection `conn` from `peer`. An `Err` closes the
/// connection (its body failed or was cut short).
pub async fn respond(
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::io::Result<Response<Answer>> {
    let mut record = Record::start(&shared.audit, peer, req.method().as_str(), req.uri().path());
    if crate::dashboard::route::is_dashboard_path(req.uri().path()) {
        return crate::dashboard::respond::respond(&shared, &conn, peer, req, record).await;
    }
    let len = content_length(&req);
    // Covers the body (and, for a refusal, the answer), from the end of the head.
    conn.set_deadline(Some(transfer_time(len)));
    let (endpoint, token, slot) = match admit(&shared, &conn, peer, &req, len, &mut record) {
        Ok(admitted) => admitted,
        Err(refusal) => return Ok(refuse(&conn, req, &refusal, record)),
    };
    let metrics = matches!(endpoint, Endpoint::Metrics);
    let body = read_body(req.into_body(), len, &mut record).await?;
    conn.set_deadline(None);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job {
        endpoint,
        token,
        body,
        reply,
    };
    let reply = match shared.jobs.send(Queued::Api(job)) {
        Ok(()) => answer.await.ok(),
        Err(_) => None,
    };
    let refusal = match reply {
        Some(Ok(b)) => Ok(b),
        Some(Err(refusal)) => Err(refusal),
        None => Err(Refusal::new(500, "the serving thread stopped")),
    };
    let (status, bytes, retry_after) = match refusal {
        Ok(b) => (200, b, None),
        Err(r) => (r.status, r.body(), r.retry_after),
    };
    conn.set_deadline(Some(transfer_time(bytes.len() as u64)));
    record.status = Some(status);
    let body = Answer::new(bytes, Some(slot), record, &conn, IO_TIMEOUT);
    let mut answer = response(status, body, false, retry_after);
    if metrics && status == 200 {
        answer.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static(crate::jobs::metrics::CONTENT_TYPE),
        );
    }
    Ok(answer)
}

/// The request's Content-Length (0 without one; hyper refuses a malformed one).
pub(crate) fn content_length(req: &Request<Incoming>) -> u64 {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0)
}

/// The checks before a body is read; the endpoint, the token and a request slot, or the
/// refusal (with a `Retry-After` for 429). Names the token in `record` as soon as it is
/// known, so that every later refusal's audit line says who was refused.
fn admit(
    shared: &Shared,
    conn: &Arc<ConnState>,
    peer: SocketAddr,
    req: &Request<Incoming>,
    len: u64,
    record: &mut Record,
) -> std::result::Result<(Endpoint, TokenEntry, Slot), Refusal> {
    if let Some(wait) = shared.failures.locked_out(peer.ip()) {
        return Err(Refusal {
            retry_after: Some(wait),
            ..Refusal::new(
                429,
                format!(
                    "too many requests with a wrong token from {}; try again in {} s",
                    peer.ip(),
                    wait.as_secs() + 1
                ),
            )
        });
    }
    let method = req.method().as_str();
    if method != "GET" && method != "POST" {
        return Err(Refusal::new(
            405,
            format!("{method} is not served here: GET or POST"),
        ));
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    let Some(token) = shared.tokens.current().find(&hash_token(given)).cloned() else {
        shared.failures.failed(peer.ip());
        return Err(Refusal::new(
            401,
            "missing or wrong bearer token; nothing was done",
        ));
    };
    record.token = Some(token.name.clone());
    if req.headers().contains_key(hyper::header::TRANSFER_ENCODING) {
        return Err(Refusal::new(
            411,
            "send the request body with a Content-Length",
        ));
    }
    let endpoint = Endpoint::parse(method, req.uri().path())?;
    let limit = endpoint.body_limit();
    if len > limit {
        return Err(Refusal::new(
            413,
            format!("request body larger than {limit} bytes"),
        ));
    }
    if !endpoint.allowed(token.role) {
        return Err(Refusal::new(
            403,
            format!(
                "token {:?} has the role {} and may not {method} {}; nothing was done",
                token.name,
                token.role.name(),
                req.uri().path()
            ),
        ));
    }
    Ok((endpoint, token, take_slot(shared, conn)?))
}

/// Takes one of the [`MAX_REQUESTS`] request slots, or the refusal (503).
pub(crate) fn take_slot(
    shared: &Shared,
    conn: &Arc<ConnState>,
) -> std::result::Result<Slot, Refusal> {
    let permit = Arc::clone(&shared.slots).try_acquire_owned().map_err(|_| {
        Refusal::new(
            503,
            format!("more than {MAX_REQUESTS} requests in flight; try again later"),
        )
    })?;
    Ok(Slot {
        _permit: permit,
        _busy: conn.busy(),
    })
}

/// Reads a body of exactly `len` bytes (checked against its endpoint's limit).
pub(crate) async fn read_body(
    mut body: Incoming,
    len: u64,
    record: &mut Record,
) -> std::io::Result<Bytes> {
    let cut = || std::io::Error::other("the request body does not match its Content-Length");
    let mut buf = Vec::with_capacity(usize::try_from(len).map_err(std::io::Error::other)?);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > len {
                return Err(cut());
            }
            buf.extend_from_slice(&data);
            record.bytes_in = buf.len() as u64;
        }
    }
    if buf.len() as u64 != len {
        return Err(cut());
    }
    Ok(Bytes::from(buf))
}

/// Answers a refusal and closes the connection, once up to [`REFUSED_BODY_DRAINED`] of the
/// refused body has been read and dropped for at most [`DRAIN_TIME`] (so that a client
/// still sending it reads the answer rather than a reset). A client that waits for
/// `100 Continue` has sent no body and gets none drained.
pub(crate) fn refuse(
    conn: &Arc<ConnState>,
    req: Request<Incoming>,
    refusal: &Refusal,
    record: Record,
) -> Response<Answer> {
    refuse_with(
        conn,
        req,
        refusal.status,
        refusal.body(),
        refusal.retry_after,
        record,
    )
}

/// [`refuse`] with the answer body `body` (the caller sets its content type).
pub(crate) fn refuse_with(
    conn: &Arc<ConnState>,
    req: Request<Incoming>,
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
    mut record: Record,
) -> Response<Answer> {
    let expects_continue = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !expects_continue {
        tokio::spawn(drain(req.into_body()));
    }
    conn.set_deadline(Some(IO_TIMEOUT));
    record.status = Some(status);
    let body = Answer::new(body, None, record, conn, DRAIN_TIME);
    response(status, body, true, retry_after)
}

async fn drain(mut body: Incoming) {
    let read = async {
        let mut n = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
            if n >= REFUSED_BODY_DRAINED {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

fn response(
    status: u16,
    body: Answer,
    close: bool,
    retry_after: Option<Duration>,
) -> Response<Answer> {
    let mut r = Response::new(body);
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = r.headers_mut();
    let kind = if status == 200 {
        "application/octet-stream"
    } else {
        "application/json"
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    if status == 405 {
        headers.insert(ALLOW, HeaderValue::from_static("GET, POST"));
    }
    if let Some(wait) = retry_after {
        headers.insert(
            hyper::header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs() + 1),
        );
    }
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Bytes handed to hyper per frame. Each is a copy, so that once the answer has been
/// handed over (and its request slot given back) at most hyper's write buffer of it is
/// still in memory, not the whole answer.
const FRAME: usize = 64 << 10;

/// An answer body. It holds its request's slot (if any) and audit record until hyper has
/// taken its last byte (or the connection ended); then the connection's deadline becomes
/// `after` (the wait for the next request, or the drain of a refusal).
pub struct Answer {
    data: Vec<u8>,
    sent: usize,
    len: usize,
    _slot: Option<Slot>,
    record: Record,
    conn: Arc<ConnState>,
    after: Duration,
}

impl Answer {
    pub(crate) fn new(
        data: Vec<u8>,
        slot: Option<Slot>,
        record: Record,
        conn: &Arc<ConnState>,
        after: Duration,
    ) -> Self {
        Self {
            len: data.len(),
            data,
            sent: 0,
            _slot: slot,
            record,
            conn: Arc::clone(conn),
            after,
        }
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let end = (this.sent + FRAME).min(this.len);
        let Some(chunk) = this.data.get(this.sent..end).filter(|c| !c.is_empty()) else {
            return Poll::Ready(None);
        };
        let chunk = Bytes::copy_from_slice(chunk);
        this.sent = end;
        this.record.bytes_out = end as u64;
        if end == this.len {
            this.data = Vec::new();
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.len - self.sent) as u64)
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.conn.set_deadline(Some(self.after));
    }
}
