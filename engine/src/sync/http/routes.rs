//! The endpoints of `tessera serve` (table in [`super`]) and the repository work behind
//! them, done one request at a time on the serving thread ([`serving_loop`]).
//!
//! What each role may call is decided from the request line alone ([`Endpoint::allowed`]),
//! before the body is read; what depends on the repository (the series of a snapshot file,
//! the series a published snapshot names, a quota) is decided here.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use bytes::Bytes;
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{ObjectKind, Snapshot, SnapshotId};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::{read_config, Repository};
use crate::storage::ObjectKey;
use crate::sync::checked::check_batch;
use crate::sync::sink::{publish_checked, LocalSink, ObjectSink, Publisher};
use crate::sync::source::{Catalog, ObjectSource};

use super::quota::Usage;
use super::tokens::{Role, TokenEntry};
use super::wire::{
    decode_digests, decode_records, encode_record, parse_kind, MAX_ANSWER_BYTES, MAX_GET_DIGESTS,
    MAX_HAVE_DIGESTS, MAX_PUT_BYTES, MAX_PUT_RAW_BYTES,
};

/// A refusal: HTTP status and a message for the client.
pub type Refusal = (u16, String);
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
}

impl Endpoint {
    /// The endpoint of `method path`, or the refusal (404, 400).
    pub fn parse(method: &str, path: &str) -> std::result::Result<Self, Refusal> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let kind = |name: &str| {
            parse_kind(name).ok_or((
                404,
                format!("unknown object kind {name:?}; nothing was done"),
            ))
        };
        match (method, parts.as_slice()) {
            ("GET", ["v1", "info"]) => Ok(Self::Info),
            ("GET", ["v1", "snapshots"]) => Ok(Self::Snapshots),
            ("GET", ["v1", "snapshots", id]) => id
                .parse()
                .map(Self::Snapshot)
                .map_err(|e| (400, format!("snapshot id {id:?}: {e}"))),
            ("POST", ["v1", "have", k]) => kind(k).map(Self::Have),
            ("POST", ["v1", "get", k]) => kind(k).map(Self::Get),
            ("POST", ["v1", "put", k]) => kind(k).map(Self::Put),
            ("POST", ["v1", "publish"]) => Ok(Self::Publish),
            _ => Err((404, format!("no such endpoint: {method} {path}"))),
        }
    }

    /// The largest body it accepts.
    pub fn body_limit(self) -> u64 {
        match self {
            Self::Have(_) => (MAX_HAVE_DIGESTS * 32) as u64,
            Self::Get(_) => (MAX_GET_DIGESTS * 32) as u64,
            Self::Put(_) => MAX_PUT_BYTES,
            Self::Publish => MAX_ANSWER_BYTES,
            Self::Info | Self::Snapshots | Self::Snapshot(_) => 64 << 10,
        }
    }

    /// Whether `role` may call it at all (series are checked with the repository).
    pub fn allowed(self, role: Role) -> bool {
        match self {
            Self::Info | Self::Snapshots | Self::Snapshot(_) => true,
            Self::Have(_) | Self::Put(_) | Self::Publish => role != Role::Read,
            Self::Get(_) => role != Role::Backup,
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

/// Does the repository work of `queue`'s jobs, one at a time, in the order they arrive.
pub fn serving_loop(root: &Path, queue: &Receiver<Job>, mut usage: Option<Usage>) {
    for job in queue {
        let reply = handle(&job, root, usage.as_mut());
        // The request may be gone (its client hung up): nothing to do.
        let _ = job.reply.send(reply);
    }
}

/// Who sent a request body, in messages.
const CLIENT: &str = "the client";

/// The HTTP status for an engine error (the one place that maps error kinds to statuses).
/// The client can retry after 409, fix its request or data after 404 and 422; 507 is a
/// full disk; 500 is the server's own failure (its message says which).
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
    (status_of(&e), e.to_string())
}

fn json(v: &serde_json::Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn handle(job: &Job, root: &Path, usage: Option<&mut Usage>) -> Reply {
    let token = &job.token;
    let body = &job.body[..];
    match job.endpoint {
        Endpoint::Info => {
            let config = read_config(root).map_err(fail)?;
            Ok(json(
                &serde_json::json!({ "id_scheme": config.id_scheme as u8 }),
            ))
        }
        Endpoint::Snapshots => {
            let repo = Repository::open(root).map_err(fail)?;
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
        Endpoint::Snapshot(id) => {
            let repo = Repository::open(root).map_err(fail)?;
            let visible = repo
                .index()
                .snapshots()
                .map_err(fail)?
                .into_iter()
                .any(|(s, header)| s == id && token.covers(&header.series));
            if !visible {
                return Err((404, format!("no published snapshot {id} for this token")));
            }
            repo.backend().get(&ObjectKey::snapshot(id)).map_err(fail)
        }
        Endpoint::Have(kind) => {
            let digests = decode_digests(body, MAX_HAVE_DIGESTS, CLIENT).map_err(fail)?;
            let repo = Repository::open(root).map_err(fail)?;
            let have = repo.index().contains_many(kind, &digests).map_err(fail)?;
            Ok(have.into_iter().map(u8::from).collect())
        }
        Endpoint::Get(kind) => {
            let digests = decode_digests(body, MAX_GET_DIGESTS, CLIENT).map_err(fail)?;
            let repo = Repository::open(root).map_err(fail)?;
            let mut out = Vec::new();
            for o in repo.get_objects(kind, &digests).map_err(fail)? {
                encode_record(&mut out, &o).map_err(fail)?;
            }
            debug_assert!(out.len() as u64 <= MAX_ANSWER_BYTES);
            Ok(out)
        }
        Endpoint::Put(kind) => put(root, token, kind, body, usage),
        Endpoint::Publish => publish(root, token, body, usage),
    }
}

/// Checks every record (nothing is stored if one fails), then, as the writer: charges the
/// new bytes to the token's quota, appends, seals and indexes them.
fn put(
    root: &Path,
    token: &TokenEntry,
    kind: ObjectKind,
    body: &[u8],
    usage: Option<&mut Usage>,
) -> Reply {
    let records = decode_records(body, kind, CLIENT).map_err(fail)?;
    // Decoding is bounded by what the records claim: refuse a request that claims more raw
    // bytes than any client sends in one, before anything is decompressed.
    let raw: u64 = records.iter().map(|(i, _)| u64::from(i.raw_len)).sum();
    if raw > MAX_PUT_RAW_BYTES {
        return Err((
            413,
            format!("the records of this put decode to {raw} bytes, more than the {MAX_PUT_RAW_BYTES} a put may hold; nothing was stored"),
        ));
    }
    let digests: Vec<[u8; 32]> = records.iter().map(|(i, _)| i.digest.0).collect();
    let checked = check_batch("the client", kind, &digests, records).map_err(fail)?;
    let stored = checked.len();
    let repo = Repository::open_writer(root).map_err(fail)?;
    let held = repo.index().contains_many(kind, &digests).map_err(fail)?;
    let mut seen = std::collections::HashSet::new();
    let new_bytes: u64 = checked
        .iter()
        .zip(held)
        .filter(|(o, held)| !held && seen.insert(o.info.digest.0))
        .map(|(o, _)| (RECORD_HEADER_LEN + o.stored.len()) as u64)
        .sum();
    charged(token, new_bytes, usage, || {
        let mut sink = LocalSink::new(&repo, Publisher::Client);
        sink.put(kind, checked).map_err(fail)?;
        sink.seal().map_err(fail)?;
        Ok(json(&serde_json::json!({ "stored": stored })))
    })
}

/// Publishes a snapshot file into a series the token covers, charging the file's bytes.
fn publish(root: &Path, token: &TokenEntry, body: &[u8], usage: Option<&mut Usage>) -> Reply {
    let header = Snapshot::decode_header(body).map_err(|e| {
        (
            422,
            format!("the snapshot file does not decode: {e}; nothing was published"),
        )
    })?;
    if !token.covers(&header.series) {
        return Err((
            403,
            format!(
                "token {:?} may publish only into series matching {:?}, not {:?}; nothing was published",
                token.name, token.series, header.series
            ),
        ));
    }
    let repo = Repository::open_writer(root).map_err(fail)?;
    if repo
        .index()
        .has_snapshot(SnapshotId::of(body))
        .map_err(fail)?
    {
        return Ok(json(
            &serde_json::json!({ "id": SnapshotId::of(body).to_hex() }),
        ));
    }
    charged(token, body.len() as u64, usage, || {
        let id = publish_checked(&repo, body, Publisher::Client).map_err(fail)?;
        Ok(json(&serde_json::json!({ "id": id.to_hex() })))
    })
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
        return Err((507, over.to_string()));
    }
    let result = store();
    if result.is_err() {
        let _ = usage.refund(&token.name, bytes);
    }
    result
}

/// The repository at `root`, checked to exist before serving.
pub fn check_repository(root: &Path) -> Result<PathBuf> {
    read_config(root)?;
    Ok(root.to_path_buf())
}
