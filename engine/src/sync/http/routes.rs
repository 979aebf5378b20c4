//! The endpoints of `tessera serve` (table in [`super`]) and the repository work behind
//! them, done one request at a time on the serving thread ([`serving_loop`]).
//!
//! What each role may call is decided from the request line alone ([`Endpoint::allowed`]),
//! before the body is read; what depends on the repository (the series of a snapshot file,
//! the series a published snapshot names, a quota) is decided here.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{ObjectKind, Snapshot, SnapshotId};

use crate::crypto::NoSecret;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::{RepoStorage, Repository};
use crate::storage::ObjectKey;
use crate::sync::checked::check_batch;
use crate::sync::sink::{publish_checked, LocalSink, ObjectSink, Publisher};
use crate::sync::source::{Catalog, ObjectSource};

use super::audit::AuditLog;
use super::quota::Usage;
use super::tokens::{Role, TokenEntry};
use super::visible::VisiblePages;
use super::wire::{
    decode_digests, decode_records, encode_record, parse_kind, MAX_ANSWER_BYTES, MAX_GET_DIGESTS,
    MAX_HAVE_DIGESTS, MAX_PUT_BYTES, MAX_PUT_RAW_BYTES,
};

/// A refusal: what the client is answered instead of what it asked for.
///
/// Its body is JSON `{"kind": KIND, "message": TEXT}`: KIND is the name of the
/// [`ErrorKind`] the client should report (SPEC.md §11: `damage` for a damaged repository
/// on the server, `refused`, `locked`, ...), or `null` when the status says it all (401,
/// 403, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The kind of failure the client reports, if the status alone does not tell it.
    pub kind: Option<ErrorKind>,
    /// What went wrong, for the operator.
    pub message: String,
    /// For 429: how long to wait before trying again.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    /// A refusal with `status` and `message`, no kind.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The refusal for an engine error: status by [`status_of`], kind by [`kind_for_client`].
    pub fn of(e: &Error) -> Self {
        Self {
            kind: Some(kind_for_client(e)),
            ..Self::new(status_of(e), e.to_string())
        }
    }

    /// This refusal with `kind`.
    #[must_use]
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// The answer body: `{"kind": KIND|null, "message": TEXT}`.
    pub fn body(&self) -> Vec<u8> {
        json(&serde_json::json!({
            "kind": self.kind.map(ErrorKind::as_str),
            "message": self.message,
        }))
    }
}

/// An answer body, or a refusal.
pub type Reply = std::result::Result<Vec<u8>, Refusal>;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v1/info`.
    Info,
    /// `GET /v1/snapshots`.
    Snapshots,
    /// `GET /v1/snapshots/ID`.
    Snapshot(SnapshotId),
    /// `POST /v1/have/KIND`.
    Have(ObjectKind),
    /// `POST /v1/get/KIND`.
    Get(ObjectKind),
    /// `POST /v1/put/KIND`.
    Put(ObjectKind),
    /// `POST /v1/publish`.
    Publish,
    /// `GET /metrics`: Prometheus text (SPEC.md §26.7), of the series the token covers.
    Metrics,
}

impl Endpoint {
    /// The endpoint of `method path`, or the refusal (404, 400).
    pub fn parse(method: &str, path: &str) -> std::result::Result<Self, Refusal> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let kind = |name: &str| {
            parse_kind(name).ok_or_else(|| {
                Refusal::new(
                    404,
                    format!("unknown object kind {name:?}; nothing was done"),
                )
            })
        };
        match (method, parts.as_slice()) {
            ("GET", ["v1", "info"]) => Ok(Self::Info),
            ("GET", ["v1", "snapshots"]) => Ok(Self::Snapshots),
            ("GET", ["v1", "snapshots", id]) => id
                .parse()
                .map(Self::Snapshot)
                .map_err(|e| Refusal::new(400, format!("snapshot id {id:?}: {e}"))),
            ("POST", ["v1", "have", k]) => kind(k).map(Self::Have),
            ("POST", ["v1", "get", k]) => kind(k).map(Self::Get),
            ("POST", ["v1", "put", k]) => kind(k).map(Self::Put),
            ("POST", ["v1", "publish"]) => Ok(Self::Publish),
            ("GET", ["metrics"]) => Ok(Self::Metrics),
            _ => Err(Refusal::new(
                404,
                format!("no such endpoint: {method} {path}"),
            )),
        }
    }

    /// The largest body it accepts.
    pub fn body_limit(self) -> u64 {
        match self {
            Self::Have(_) => (MAX_HAVE_DIGESTS * 32) as u64,
            Self::Get(_) => (MAX_GET_DIGESTS * 32) as u64,
            Self::Put(_) => MAX_PUT_BYTES,
            Self::Publish => MAX_ANSWER_BYTES,
            Self::Info | Self::Snapshots | Self::Snapshot(_) | Self::Metrics => 64 << 10,
        }
    }

    /// Whether `role` may call it at all (series are checked with the repository).
    pub fn allowed(self, role: Role) -> bool {
        match self {
            Self::Info | Self::Snapshots | Self::Snapshot(_) => true,
            Self::Have(_) | Self::Put(_) | Self::Publish => role != Role::Read,
            // A backup token writes; reading objects or the series' figures is not its.
            Self::Get(_) | Self::Metrics => role != Role::Backup,
        }
    }
}

/// One authorized request whose body has been read, for the serving thread.
pub struct Job {
    /// What it asks for.
    pub endpoint: Endpoint,
    /// Who asks.
    pub token: TokenEntry,
    /// Its body.
    pub body: Bytes,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

/// What the serving thread is asked to do: a request of the sync API or of the dashboard.
pub enum Queued {
    /// A request of the sync API.
    Api(Job),
    /// A request of the dashboard.
    Dashboard(crate::dashboard::work::UiJob),
}

/// What the serving thread keeps between requests.
pub struct ServingState {
    /// The dashboard's caches and configuration.
    pub dashboard: crate::dashboard::work::DashboardState,
    /// Quota counts (`None`: no quotas).
    pub usage: Option<Usage>,
    /// Least time between two snapshots a `backup` token publishes into one series
    /// (`serve --min-publish-interval`; zero: no limit).
    pub min_publish_interval: Duration,
    /// When a `backup` token last published into each series, on this server's clock
    /// (entries older than the interval are dropped).
    last_publish: HashMap<String, Instant>,
    /// The pages each series-scoped token may fetch ([`VisiblePages`]).
    visible_pages: VisiblePages,
    /// Where what a writer's recovery did is told, and the lasting findings told last.
    audit: AuditLog,
    last_recovery_note: Option<String>,
}

impl ServingState {
    /// State with these quota counts and publish interval.
    pub fn new(usage: Option<Usage>, min_publish_interval: Duration, audit: AuditLog) -> Self {
        Self {
            dashboard: crate::dashboard::work::DashboardState::default(),
            usage,
            min_publish_interval,
            last_publish: HashMap::new(),
            visible_pages: VisiblePages::default(),
            audit,
            last_recovery_note: None,
        }
    }

    /// Opens `root` for writing and tells the audit log what its recovery did. A lasting
    /// state recovery only found (an uncatalogued snapshot file naming a lost pack, an
    /// unreadable pack) is told when it changes, not on every request. What recovery costs is bounded
    /// by the repository's own state (staged files, unadopted packs, uncatalogued snapshot
    /// files), which only writers on the server's machine and earlier puts create, never by
    /// what one request asks.
    pub(crate) fn open_writer(&mut self, root: &RepoStorage) -> Result<Repository, Refusal> {
        let repo = Repository::open_writer_on(root.clone(), &NoSecret).map_err(fail)?;
        let lasting = repo.recovery.lasting().summary();
        if repo.recovery.acted() || lasting != self.last_recovery_note {
            if let Some(note) = repo.recovery.summary() {
                self.audit.event("recovery", &note);
            }
        }
        self.last_recovery_note = lasting;
        Ok(repo)
    }

    /// Tells the audit log that `count` unreferenced objects of `kind` had their grace
    /// renewed because `token` `how` (SPEC §13 "Dead objects"); nothing when none were.
    fn renewed(&self, token: &TokenEntry, kind: ObjectKind, count: usize, how: &str) {
        if count > 0 {
            self.audit.event(
                "renew",
                &format!(
                    "token {:?} {how}: {count} unreferenced {kind:?} objects the repository holds, which compaction now keeps for --grace",
                    token.name
                ),
            );
        }
    }

    /// How much longer a `backup` token must wait before publishing into `series`.
    fn publish_wait(&self, series: &str) -> Option<Duration> {
        let last = self.last_publish.get(series)?;
        self.min_publish_interval
            .checked_sub(last.elapsed())
            .filter(|w| !w.is_zero())
    }

    fn published(&mut self, series: &str) {
        let interval = self.min_publish_interval;
        self.last_publish.retain(|_, t| t.elapsed() < interval);
        if !interval.is_zero() {
            self.last_publish.insert(series.to_string(), Instant::now());
        }
    }
}

/// Does the repository work of `queue`'s jobs, one at a time, in the order they arrive.
pub fn serving_loop(root: &RepoStorage, queue: &Receiver<Queued>, mut state: ServingState) {
    // The request may be gone (its client hung up): then its answer is dropped.
    for queued in queue {
        // A request whose client is gone (it hung up, or its connection's deadline passed
        // while it waited) is not worked on: nobody would see the answer.
        let gone = match &queued {
            Queued::Api(job) => job.reply.is_closed(),
            Queued::Dashboard(job) => job.reply.is_closed(),
        };
        if gone {
            continue;
        }
        match queued {
            Queued::Api(job) => {
                let reply = handle(&job, root, &mut state);
                let _ = job.reply.send(reply);
            }
            Queued::Dashboard(job) => {
                let outcome = crate::dashboard::work::handle(&job, root, &mut state);
                let _ = job.reply.send(outcome);
            }
        }
    }
}

/// Who sent a request body, in messages.
const CLIENT: &str = "the client";

/// The kind of failure the client reports for an engine error on the server: the error's
/// own kind, except that data the client sent and the server found bad (`UntrustedData`)
/// is the client's request refused, not damage of the server's repository.
pub fn kind_for_client(e: &Error) -> ErrorKind {
    match e {
        Error::UntrustedData { .. } => ErrorKind::Refused,
        _ => e.kind(),
    }
}

/// The HTTP status for an engine error (the one place that maps error kinds to statuses).
/// The client can retry after 409, fix its request or data after 404 and 422; 507 is a
/// full disk; 500 is the server's own failure (its message says which, and the body's kind
/// tells the client whether it is damage).
pub fn status_of(e: &Error) -> u16 {
    match (e, e.kind()) {
        (Error::NoSpace { .. }, _) => 507,
        (_, ErrorKind::Locked) => 409,
        (Error::SnapshotNotFound { .. } | Error::ObjectMissing { .. }, _) => 404,
        (Error::UntrustedData { .. }, _) | (_, ErrorKind::Usage | ErrorKind::Refused) => 422,
        _ => 500,
    }
}

#[expect(clippy::needless_pass_by_value, reason = "used as `map_err(fail)`")]
fn fail(e: Error) -> Refusal {
    Refusal::of(&e)
}

fn json(v: &serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn handle(job: &Job, root: &RepoStorage, state: &mut ServingState) -> Reply {
    let token = &job.token;
    let body = &job.body[..];
    match job.endpoint {
        Endpoint::Info => {
            let config = root.read_config().map_err(fail)?;
            Ok(json(
                &serde_json::json!({ "id_scheme": config.id_scheme as u8 }),
            ))
        }
        Endpoint::Snapshots => {
            let repo = Repository::open_on(root.clone(), &NoSecret).map_err(fail)?;
            let list: Vec<serde_json::Value> = Catalog::snapshots(&repo)
                .map_err(fail)?
                .into_iter()
                .filter(|s| token.covers(&s.series))
                .map(|s| {
                    serde_json::json!({
                        "id": s.id.to_hex(), "series": s.series, "time_us": s.time_us,
                        "disks": s.disks,
                    })
                })
                .collect();
            Ok(json(&serde_json::Value::from(list)))
        }
        Endpoint::Metrics => {
            let repo = Repository::open_on(root.clone(), &NoSecret).map_err(fail)?;
            let listed = crate::ops::catalog::list(&repo, None).map_err(fail)?;
            let visible: Vec<_> = listed
                .snapshots
                .into_iter()
                .filter(|s| token.covers(&s.series))
                .collect();
            Ok(crate::jobs::metrics::render_repository(&visible).into_bytes())
        }
        Endpoint::Snapshot(id) => {
            let repo = Repository::open_on(root.clone(), &NoSecret).map_err(fail)?;
            let visible = repo
                .index()
                .snapshots()
                .map_err(fail)?
                .into_iter()
                .any(|(s, header)| s == id && token.covers(&header.series));
            if !visible {
                return Err(Refusal::new(
                    404,
                    format!("no published snapshot {id} for this token"),
                ));
            }
            repo.backend().get(&ObjectKey::snapshot(id)).map_err(fail)
        }
        Endpoint::Have(kind) => have(root, token, kind, body, state),
        Endpoint::Get(kind) => {
            let digests = decode_digests(body, MAX_GET_DIGESTS, CLIENT).map_err(fail)?;
            let repo = Repository::open_on(root.clone(), &NoSecret).map_err(fail)?;
            if kind == ObjectKind::Page {
                pages_visible(&repo, token, &digests, &mut state.visible_pages)?;
            }
            let mut out = Vec::new();
            for o in repo.get_objects(kind, &digests).map_err(fail)? {
                encode_record(&mut out, &o).map_err(fail)?;
            }
            debug_assert!(out.len() as u64 <= MAX_ANSWER_BYTES);
            Ok(out)
        }
        Endpoint::Put(kind) => put(root, token, kind, body, state),
        Endpoint::Publish => publish(root, token, body, state),
    }
}

/// Which of the digests in `body` the repository holds (SPEC §13 "Dead objects"). As the
/// writer, every object present is held, and the dead ones among them get their death
/// renewed before the answer leaves, so that a compaction within the grace keeps them
/// until the client publishes (and a rerun of an interrupted push sends nothing twice).
/// While another writer (a compaction, a forget) holds the lock, only referenced objects
/// are held: a dead one may be reclaimed under the client, which is told to send it, and
/// its put renews it.
fn have(
    root: &RepoStorage,
    token: &TokenEntry,
    kind: ObjectKind,
    body: &[u8],
    state: &mut ServingState,
) -> Reply {
    let digests = decode_digests(body, MAX_HAVE_DIGESTS, CLIENT).map_err(fail)?;
    let held = match state.open_writer(root) {
        Ok(repo) => {
            let (held, renewed) = repo.index().hold_many(kind, &digests).map_err(fail)?;
            state.renewed(token, kind, renewed, "was told they are held");
            held
        }
        Err(r) if r.kind == Some(ErrorKind::Locked) => {
            let repo = Repository::open_on(root.clone(), &NoSecret).map_err(fail)?;
            repo.index().referenced_many(kind, &digests).map_err(fail)?
        }
        Err(r) => return Err(r),
    };
    Ok(held.into_iter().map(u8::from).collect())
}

/// Refuses (404, as if absent) a `get` of pages unless each is named by a snapshot of a
/// series `token` covers: a token limited to some series must not read the manifest pages
/// (the block maps) of other series. Chunks are not limited this way: a chunk is fetched by
/// the SHA-256 of its content, which only a page naming it or the content itself tells.
fn pages_visible(
    repo: &Repository,
    token: &TokenEntry,
    digests: &[[u8; 32]],
    visible: &mut VisiblePages,
) -> Reply {
    if token.role == Role::Admin || token.series == "*" {
        return Ok(Vec::new());
    }
    match visible.first_hidden(repo, token, digests).map_err(fail)? {
        None => Ok(Vec::new()),
        Some(d) => Err(Refusal::new(
            404,
            format!(
                "page {} is not named by a snapshot of the series {:?} this token may read; nothing was sent",
                hex::encode(d),
                token.series
            ),
        )),
    }
}

/// Checks every record (nothing is stored if one fails), then, as the writer: charges the
/// new bytes to the token's quota, appends, seals and indexes them.
fn put(
    root: &RepoStorage,
    token: &TokenEntry,
    kind: ObjectKind,
    body: &[u8],
    state: &mut ServingState,
) -> Reply {
    let records = decode_records(body, kind, CLIENT).map_err(fail)?;
    // Decoding is bounded by what the records claim: refuse a request that claims more raw
    // bytes than any client sends in one, before anything is decompressed.
    let raw: u64 = records.iter().map(|(i, _)| u64::from(i.raw_len)).sum();
    if raw > MAX_PUT_RAW_BYTES {
        return Err(Refusal::new(
            413,
            format!("the records of this put decode to {raw} bytes, more than the {MAX_PUT_RAW_BYTES} a put may hold; nothing was stored"),
        ).with_kind(ErrorKind::Refused));
    }
    let digests: Vec<[u8; 32]> = records.iter().map(|(i, _)| i.digest.0).collect();
    let checked = check_batch(
        "the client",
        &crate::crypto::RepoCrypto::plain(),
        kind,
        &digests,
        records,
    )
    .map_err(fail)?;
    let stored = checked.len();
    let repo = state.open_writer(root)?;
    let held = repo.index().get_many(kind, &digests).map_err(fail)?;
    let renewing = held.iter().flatten().filter(|e| e.refcount == 0).count();
    let mut seen = std::collections::HashSet::new();
    let new_bytes: u64 = checked
        .iter()
        .zip(&held)
        .filter(|(o, held)| held.is_none() && seen.insert(o.info.digest.0))
        .map(|(o, _)| (RECORD_HEADER_LEN + o.stored.len()) as u64)
        .sum();
    let answer = charged(token, new_bytes, state.usage.as_mut(), || {
        let mut sink = LocalSink::new(&repo, Publisher::Client);
        sink.put(kind, checked).map_err(fail)?;
        sink.seal().map_err(fail)?;
        Ok(json(&serde_json::json!({ "stored": stored })))
    })?;
    state.renewed(token, kind, renewing, "sent them again");
    Ok(answer)
}

/// Publishes a snapshot file into a series the token covers, charging the file's bytes. A
/// `backup` token may publish into a series at most once per `min_publish_interval`
/// (429 with `Retry-After` sooner; see SPEC.md §22.3).
fn publish(root: &RepoStorage, token: &TokenEntry, body: &[u8], state: &mut ServingState) -> Reply {
    let header = Snapshot::decode_header(body).map_err(|e| {
        Refusal::new(
            422,
            format!("the snapshot file does not decode: {e}; nothing was published"),
        )
        .with_kind(ErrorKind::Refused)
    })?;
    if !token.covers(&header.series) {
        return Err(Refusal::new(
            403,
            format!(
                "token {:?} may publish only into series matching {:?}, not {:?}; nothing was published",
                token.name, token.series, header.series
            ),
        ));
    }
    let repo = state.open_writer(root)?;
    if repo
        .index()
        .has_snapshot(SnapshotId::of(body))
        .map_err(fail)?
    {
        return Ok(json(
            &serde_json::json!({ "id": SnapshotId::of(body).to_hex() }),
        ));
    }
    let limited = token.role == Role::Backup;
    if let Some(wait) = state.publish_wait(&header.series).filter(|_| limited) {
        return Err(Refusal {
            retry_after: Some(wait),
            ..Refusal::new(
                429,
                format!(
                    "series {:?} got a snapshot from a backup token less than {} s ago; this server takes one per series every {} s from backup tokens (serve --min-publish-interval), so that a flood of snapshots cannot push real ones out of retention; try again in {} s; nothing was published",
                    header.series,
                    state.min_publish_interval.as_secs(),
                    state.min_publish_interval.as_secs(),
                    wait.as_secs() + 1
                ),
            )
            .with_kind(ErrorKind::Refused)
        });
    }
    let id = charged(token, body.len() as u64, state.usage.as_mut(), || {
        let id = publish_checked(&repo, body, Publisher::Client).map_err(fail)?;
        Ok(json(&serde_json::json!({ "id": id.to_hex() })))
    })?;
    if limited {
        state.published(&header.series);
    }
    Ok(id)
}

/// Runs `store` after charging `bytes` to `token` (507 when over its quota); refunds the
/// charge when `store` fails.
fn charged(
    token: &TokenEntry,
    bytes: u64,
    usage: Option<&mut Usage>,
    store: impl FnOnce() -> Reply,
) -> Reply {
    let Some(usage) = usage else {
        return store();
    };
    if let Some(over) = usage.charge(token, bytes).map_err(fail)? {
        return Err(Refusal::new(507, over.to_string()));
    }
    let result = store();
    if result.is_err() {
        let _ = usage.refund(&token.name, bytes);
    }
    result
}

/// The repository at `root`, checked to exist before serving. An encrypted repository is
/// refused: the server holds no key, and keyless serving is not built yet (SPEC.md §23.8).
pub fn check_repository(root: &RepoStorage) -> Result<RepoStorage> {
    if root.read_config()?.encryption.is_encrypted() {
        return Err(crate::sync::transfer::encrypted_not_supported(
            &root.backend.describe(),
        ));
    }
    Ok(root.clone())
}
