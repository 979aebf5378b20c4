//! The engine's error type. Every variant states a domain fact and, where there is one, what
//! the operator should do next.

use std::io;
use std::path::PathBuf;

use tessera_format::{DecodeError, ObjectKind, PackId, SnapshotId};
use thiserror::Error;

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in an engine operation.
#[derive(Debug, Error)]
pub enum Error {
    /// The location holds no tessera repository.
    #[error(
        "{location} is not a tessera repository (no config file); create one with `tessera init`"
    )]
    NotARepository {
        /// The path or URL given.
        location: String,
    },
    /// `init` was pointed at a non-empty directory.
    #[error("{path} already exists and is not empty; choose a new directory for the repository")]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// The config file does not decode.
    #[error("repository config of {location} is unreadable: {source}")]
    BadConfig {
        /// The repository.
        location: String,
        /// Why.
        source: DecodeError,
    },
    /// Another process holds the writer lock.
    #[error("repository is locked by PID {pid} on {host} since {since}; wait for it to finish (a lock left by a dead process is released automatically)")]
    Locked {
        /// Holder's PID as recorded in the lock file.
        pid: String,
        /// Holder's host name.
        host: String,
        /// When the holder took the lock.
        since: String,
    },
    /// The RocksDB index is missing.
    #[error("the index at {path} is missing; rebuild it from packs and snapshots with `tessera repair REPO --rebuild-index`")]
    IndexMissing {
        /// The index directory.
        path: PathBuf,
    },
    /// The index's database reported an error (its message).
    #[error("index error: {0}; if the index is damaged, rebuild it with `tessera repair REPO --rebuild-index`")]
    Index(String),
    /// An index value does not decode.
    #[error("index entry is corrupt ({what}); rebuild the index with `tessera repair REPO --rebuild-index`")]
    IndexCorrupt {
        /// Which entry.
        what: String,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// The filesystem is full.
    #[error("no space left while {context}; nothing from this run was committed, earlier snapshots are intact; free space and rerun")]
    NoSpace {
        /// What was being written.
        context: String,
    },
    /// A source image could not be opened or read.
    #[error("cannot read source {path}: {source}")]
    Source {
        /// The source path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A source image is malformed, truncated, or uses a feature tessera does not read.
    #[error("{path}: not a usable {format} image: {reason}; nothing was stored")]
    BadImage {
        /// The image (path or URL).
        path: String,
        /// `VHD`, `qcow2`, `NBD`, `changed-block list`.
        format: &'static str,
        /// What is wrong, with offsets where they help.
        reason: String,
    },
    /// A delta source does not apply on the reference snapshot's disk.
    #[error("disk {disk:?}: the delta from {source_desc} applies on {base}, but reference snapshot {reference} was taken from {reference_state}; back up against the snapshot taken from that base (--reference), or pass --fallback-full to read the whole disk")]
    WrongBase {
        /// The disk name.
        disk: String,
        /// The source (path or URL).
        source_desc: String,
        /// The base the delta applies on.
        base: String,
        /// The reference snapshot.
        reference: String,
        /// The state recorded in the reference snapshot's disk.
        reference_state: String,
    },
    /// No snapshot matches the given reference.
    #[error("no snapshot matches {query:?}; see `tessera list REPO`")]
    SnapshotNotFound {
        /// What the user asked for.
        query: String,
    },
    /// A snapshot id prefix matches more than one snapshot.
    #[error("{query:?} matches {count} snapshots; give more characters of the id")]
    AmbiguousSnapshot {
        /// What the user asked for.
        query: String,
        /// How many match.
        count: usize,
    },
    /// The snapshot has no such disk.
    #[error("snapshot {snapshot} has no disk {disk:?}; it has: {available}")]
    DiskNotFound {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The disk asked for.
        disk: String,
        /// The disks it has.
        available: String,
    },
    /// An object the index or a manifest refers to is absent.
    #[error("{kind:?} {digest} is missing from the store; run `tessera repair REPO --rebuild-index` or restore it from another copy")]
    ObjectMissing {
        /// Chunk or page.
        kind: ObjectKind,
        /// Its digest (hex).
        digest: String,
    },
    /// A stored object failed a check when read.
    #[error("{kind:?} {digest} in pack {pack} at offset {offset} is damaged: {reason}")]
    ObjectCorrupt {
        /// Chunk or page.
        kind: ObjectKind,
        /// Its digest (hex).
        digest: String,
        /// The pack holding it.
        pack: PackId,
        /// Offset of its record.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// A pack file is damaged.
    #[error("pack {pack} is damaged: {reason}")]
    PackCorrupt {
        /// The pack.
        pack: PackId,
        /// Why.
        reason: String,
    },
    /// A snapshot file is damaged.
    #[error("snapshot {id} is damaged: {reason}")]
    SnapshotCorrupt {
        /// The snapshot.
        id: String,
        /// Why.
        reason: String,
    },
    /// The caller passed something invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The restore target exists and overwriting was not allowed.
    #[error("{path} already exists; pass --force to overwrite it")]
    OutputExists {
        /// The target.
        path: PathBuf,
    },
    /// An incremental restore target does not hold the snapshot it is assumed to hold.
    #[error("{path} differs from the assumed snapshot at offset {offset}; nothing was written. Restore in full, or name the snapshot it really holds")]
    TargetMismatch {
        /// The target.
        path: PathBuf,
        /// Offset of the first block that differs (or the size, when sizes differ).
        offset: u64,
    },
    /// A snapshot to publish or catalogue names objects the repository lacks or cannot read.
    #[error("the snapshot refers to objects this repository lacks or cannot read: {reason}")]
    SnapshotIncomplete {
        /// Which object, and why.
        reason: String,
    },
    /// A create-only put found an object under its key.
    #[error("object {key} already exists")]
    ObjectExists {
        /// The object's key.
        key: String,
    },
    /// Remote object storage (S3) refused or failed a request, after the retries that help.
    #[error("{location}: {context}: {problem}")]
    Remote {
        /// The repository (`s3://BUCKET/PREFIX`; never credentials).
        location: String,
        /// What was being done.
        context: String,
        /// What went wrong and what to do about it.
        problem: crate::storage::s3::RemoteProblem,
    },
    /// An invariant of tessera's own code does not hold: a bug, not bad input.
    #[error("internal error: {0}; please report this as a bug")]
    Internal(String),
    /// An earlier write or fsync on this handle failed; its state on disk is unknown.
    #[error("an earlier write failed, so this writer refuses further writes; rerun the operation")]
    PreviousIo,
}

impl Error {
    /// Whether this is a read of something that does not exist (an object, a file).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// Wraps an I/O error with context, recognising a full disk.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.raw_os_error() == Some(libc::EDQUOT)
        {
            Self::NoSpace { context }
        } else {
            Self::Io { context, source }
        }
    }
}

/// Adds context to `io::Result`s.
pub trait IoContext<T> {
    /// Maps the error with [`Error::io`], computing the context lazily.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
