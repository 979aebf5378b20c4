//! The engine's error type. Every variant states a domain fact and, where there is one, what
//! the operator should do next; [`Error::kind`] says which kind of failure it is, and a
//! front end derives everything else from the kind (the CLI its exit code, SPEC.md §11).
//!
//! | kind | meaning | examples |
//! |---|---|---|
//! | [`ErrorKind::Failed`] | the operation failed; the request and the data were fine | I/O, full disk, unreadable source, network |
//! | [`ErrorKind::Usage`] | bad input from the caller | malformed argument, unknown snapshot, disk or series |
//! | [`ErrorKind::Locked`] | another writer holds the repository | retry later |
//! | [`ErrorKind::Damage`] | damaged or malicious data | corrupt object, pack, snapshot, config or index; a peer or bundle sending bad data |
//! | [`ErrorKind::Key`] | the secret given does not unlock the repository | wrong passphrase, key file or recovery key |
//! | [`ErrorKind::Refused`] | the request conflicts with the repository's state or policy | wrong delta base, protected snapshot, incompatible repositories |
//! | [`ErrorKind::Internal`] | a bug in tessera | [`Error::Internal`] |

use std::io;
use std::path::PathBuf;

use serde::Serialize;
use tessera_format::{
    ChunkDigest, DecodeError, EncodeError, IdScheme, ObjectKind, PackId, SnapshotId,
};
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
    /// No key slot of the repository opens with the passphrase, key file or recovery key
    /// given (SPEC.md §23.4). Nothing was written.
    #[error("wrong {what}: it opens none of the repository's {tried} {what} slot(s) tried{}; nothing was changed", untried_note(*.untried))]
    WrongSecret {
        /// "passphrase", "key file" or "recovery key".
        what: &'static str,
        /// How many slots of that kind were tried.
        tried: usize,
        /// How many more of that kind there are, not tried (at most
        /// [`crate::crypto::keyring::MAX_SLOTS_TRIED`] are).
        untried: usize,
    },
    /// The key given for an encrypted Xen Orchestra remote does not decrypt it (SPEC §25).
    #[error("the Xen Orchestra remote key does not decrypt the remote's metadata.json: {reason}; nothing was imported")]
    XoWrongKey {
        /// What failed.
        reason: String,
    },
    /// The repository is encrypted and no secret was given to unlock it.
    #[error("{location} is encrypted: give its passphrase (asked on a terminal, or --passphrase-file, TESSERA_PASSPHRASE, --password-command) or --key-file")]
    KeyRequired {
        /// The repository.
        location: String,
    },
    /// The repository has no key slot of the kind presented.
    #[error("the repository has no {what} slot; unlock it with one of: {available}")]
    NoSuchSlot {
        /// The kind presented.
        what: &'static str,
        /// The kinds it has.
        available: String,
    },
    /// Removing this slot would leave the repository without a way to unlock it.
    #[error("{slot} is the last key slot that is not the recovery key; add another slot first")]
    LastKeySlot {
        /// The slot's id.
        slot: String,
    },
    /// A key slot object is damaged or malicious.
    #[error("key slot {key} is damaged: {reason}")]
    KeySlotDamaged {
        /// Its object key.
        key: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The config says the repository is plain, or names other keys, than what the
    /// repository holds (key slots, sealed snapshot files, the index's record): the config
    /// may have been replaced to downgrade it. Nothing is written or quarantined.
    #[error("{location}: {reason}; refusing to use it (its config may have been replaced: restore the original config)")]
    EncryptionMismatch {
        /// The repository.
        location: String,
        /// What contradicts the config.
        reason: String,
    },
    /// `init` was pointed at a non-empty directory.
    #[error("{path} already exists and is not empty; choose a new directory for the repository")]
    AlreadyExists {
        /// The path given.
        path: PathBuf,
    },
    /// `init` was pointed at an object-store prefix that holds objects.
    #[error("{location} already exists: objects are stored under that prefix (a repository or something else); choose an empty prefix for a new repository (an encrypted init killed before it wrote its config leaves only keys/ there: delete that to retry)")]
    PrefixNotEmpty {
        /// `s3://BUCKET/PREFIX`.
        location: String,
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
    /// Another compaction is running (SPEC.md §8).
    #[error("a compaction is running: PID {pid} on {host} since {since}; one compaction runs at a time (backups, forget and prune may run beside it)")]
    CompactionRunning {
        /// Holder's PID as recorded in the lock file.
        pid: String,
        /// Holder's host name.
        host: String,
        /// When the holder took the lock.
        since: String,
    },
    /// Another backup of the same series is running (SPEC.md §8).
    #[error("series {series:?} is being backed up by PID {pid} on {host} since {since}; one series takes one backup at a time (other series may run meanwhile)")]
    SeriesLocked {
        /// The series.
        series: String,
        /// Holder's PID as recorded in the lock file.
        pid: String,
        /// Holder's host name.
        host: String,
        /// When the holder took the lock.
        since: String,
    },
    /// A run of the same job holds the job's lock (SPEC.md §26.4).
    #[error("job {job:?} is already running (PID {pid} on {host} since {since}); two runs of one job never overlap")]
    JobRunning {
        /// The job.
        job: String,
        /// Holder's PID as recorded in the lock file.
        pid: String,
        /// Holder's host name.
        host: String,
        /// When the holder took the lock.
        since: String,
    },
    /// A job's hook failed, hung past its timeout, or could not be started (SPEC.md §26.3).
    #[error("{0}")]
    Hook(String),
    /// Another verification holds the verification ledger.
    #[error("another `tessera verify` is running on this repository ({} is locked); wait for it to finish", lock.display())]
    VerifyRunning {
        /// The ledger's lock file.
        lock: PathBuf,
    },
    /// A reader could not open a consistent view of the index: a writer kept committing.
    #[error("the index at {} kept changing while it was opened (a writer is busy committing); retry in a moment", path.display())]
    IndexBusy {
        /// The index directory.
        path: PathBuf,
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
    /// Transitional: the caller passed something invalid. Its remaining uses (NBD serving,
    /// export, image formats, the NBD client, restore and diff) are being split into the
    /// kinds of the variants below; new code uses [`Error::Usage`] or a domain variant.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller passed something invalid: an argument, an option value, a name.
    #[error("{0}")]
    Usage(String),
    /// A snapshot reference is none of the accepted forms.
    #[error("{query:?} is not a snapshot reference: use `latest`, `latest@SERIES`, or 4+ hex digits of an id")]
    BadSnapshotRef {
        /// What the caller gave.
        query: String,
    },
    /// A series has no snapshots.
    #[error("series {series:?} has no snapshots; see `tessera list REPO`")]
    SeriesNotFound {
        /// The series asked for.
        series: String,
    },
    /// The request conflicts with the repository's state or policy.
    #[error("{reason}")]
    Refused {
        /// What conflicts, and what to do instead.
        reason: String,
    },
    /// Removing or shortening what is immutable (SPEC §28): a snapshot or pack whose
    /// retention has not passed.
    #[error("{what} is immutable until {until}: it cannot be removed before then")]
    Immutable {
        /// The snapshot or object.
        what: String,
        /// Its retention date (RFC 3339).
        until: String,
    },
    /// Forgetting a protected snapshot.
    #[error("snapshot {snapshot} is protected; run `tessera unprotect REPO {snapshot}` first if it really should go")]
    Protected {
        /// The snapshot.
        snapshot: SnapshotId,
    },
    /// Two repositories (or a seed bundle and a repository) compute chunk ids differently:
    /// no object can move between them.
    #[error("{theirs} uses chunk id scheme {their_scheme:?} but {ours} uses {our_scheme:?}: their digests cannot be compared, so nothing was copied or repaired from it")]
    IncompatibleRepositories {
        /// The repository being written.
        ours: String,
        /// Its id scheme.
        our_scheme: IdScheme,
        /// The other side.
        theirs: String,
        /// Its id scheme.
        their_scheme: IdScheme,
    },
    /// A snapshot to copy has a disk at another block size than the destination already
    /// has for that series and disk: its blocks would never deduplicate.
    #[error("series {series:?} disk {disk:?}: snapshot {snapshot} uses block size {theirs}, but the destination already has that disk at block size {ours}; deduplication would silently fail, so nothing was copied (sync into a repository without this series, or back up with --block-size {ours})")]
    BlockSizeMismatch {
        /// The series.
        series: String,
        /// The disk.
        disk: String,
        /// The snapshot being copied.
        snapshot: SnapshotId,
        /// Its block size.
        theirs: u32,
        /// The destination's block size for the disk.
        ours: u32,
    },
    /// A backup asked for another block size than the series used for the disk.
    #[error("disk {disk:?} of series {series:?} was backed up with {} KiB blocks; a different block size would share no data with it. Omit --block-size, or start a new series", previous / 1024)]
    BlockSizeChange {
        /// The series.
        series: String,
        /// The disk.
        disk: String,
        /// The block size of the series' previous backup of the disk.
        previous: u32,
    },
    /// Another repository, a server or a seed bundle sent data that does not check out
    /// (everything they send is untrusted).
    #[error("{from}: {reason}")]
    UntrustedData {
        /// The sender (path or URL).
        from: String,
        /// What is wrong with the data, and what was (not) kept.
        reason: String,
    },
    /// tessera refuses to write a value no reader would accept.
    #[error("{what}: {source}")]
    Unencodable {
        /// The value (a snapshot, the repository config).
        what: String,
        /// Which rule of the format it breaks.
        source: EncodeError,
    },
    /// A remote server answered a request with an error status.
    #[error("{request}: HTTP {status}: {message}")]
    RemoteStatus {
        /// Method and URL.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
        /// The kind of failure the server named in its answer (e.g. `damage` when its own
        /// repository is damaged), if any.
        kind: Option<ErrorKind>,
    },
    /// A request to a remote server failed on the way (connection, TLS, timeout).
    #[error("{request}: {reason}")]
    Network {
        /// Method and URL.
        request: String,
        /// Why, with a hint where a likely mistake explains it.
        reason: String,
    },
    /// TLS could not be set up from the given files.
    #[error("{reason}")]
    Tls {
        /// Which file, and what is wrong with it.
        reason: String,
    },
    /// A server cannot listen on its address.
    #[error("cannot listen on {address}: {reason}")]
    Listen {
        /// The address given.
        address: String,
        /// The OS error.
        reason: String,
    },
    /// Worker threads could not be started.
    #[error("cannot start {count} threads: {reason}; ask for fewer with --jobs")]
    Threads {
        /// How many were asked for.
        count: usize,
        /// Why not.
        reason: String,
    },
    /// A stored chunk's length differs from what the disk needs at its place.
    #[error("chunk {digest} at offset {offset} holds {found} bytes where the disk needs {expected}; run `tessera verify REPO`, then `tessera repair`")]
    ChunkLength {
        /// The chunk.
        digest: ChunkDigest,
        /// Where the disk needs it.
        offset: u64,
        /// Its length.
        found: u64,
        /// The length needed.
        expected: u64,
    },
    /// A delta backup needs a block of its reference snapshot that cannot be read.
    #[error("a partial change at offset {offset} needs the reference's block there, which cannot be read ({source}); repair the repository, or take a key backup with --full")]
    ReferenceBlockUnreadable {
        /// Offset of the block.
        offset: u64,
        /// Why it cannot be read.
        source: Box<Error>,
    },
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
    /// Compaction refused: stored snapshot files are not catalogued (they name objects the
    /// repository lacks or cannot read now), so the objects they do find are at count 0 and
    /// compaction would reclaim them.
    #[error(
        "{count} stored snapshot file(s) are not catalogued ({first}{more}): they name objects \
         this repository lacks or cannot read now, and compaction would reclaim the objects \
         they still have; bring the missing packs back, or `tessera repair REPO --from OTHER` \
         from a repository that has those snapshots, or move the files to quarantine with `tessera \
         repair REPO --quarantine`"
    )]
    UncataloguedSnapshots {
        /// How many.
        count: usize,
        /// The first one's id.
        first: String,
        /// ", ..." when there are more.
        more: &'static str,
    },
    /// A backup deduplicated against an unreferenced object that a compaction running
    /// beside it reclaimed before the backup published (SPEC.md §13, race 6).
    #[error("{kind:?} {digest} was stored when the backup looked for it, unreferenced, and a compaction that ran meanwhile reclaimed it; nothing was published: run the backup again (it stores the data anew)")]
    ReclaimedMeanwhile {
        /// Chunk or page.
        kind: ObjectKind,
        /// Its digest, hex.
        digest: String,
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
    /// A file inside a snapshot's disk cannot be found or read (`files`, SPEC.md §24).
    #[error("{place}: {source}")]
    Explore {
        /// The volume and path.
        place: String,
        /// What went wrong.
        source: crate::explore::FsError,
    },
    /// An invariant of tessera's own code does not hold: a bug, not bad input.
    #[error("internal error: {0}; please report this as a bug")]
    Internal(String),
    /// An earlier write or fsync on this handle failed; its state on disk is unknown.
    #[error("an earlier write failed, so this writer refuses further writes; rerun the operation")]
    PreviousIo,
}

/// Which kind of failure an [`enum@Error`] is (see the module docs). Serialized as its
/// [`ErrorKind::as_str`] name, which is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The operation failed: I/O, a full disk, an unreadable source, the network.
    Failed,
    /// Bad input from the caller: a malformed argument, an unknown snapshot, disk or series.
    Usage,
    /// Another writer holds the repository: retry later.
    Locked,
    /// Damaged or malicious data: a corrupt object, pack, snapshot, config or index, or an
    /// untrusted peer or bundle that sent bad data.
    Damage,
    /// The passphrase, key file or recovery key does not unlock the repository.
    Key,
    /// The request conflicts with the repository's state or policy.
    Refused,
    /// A bug in tessera.
    Internal,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [Self; 7] = [
        Self::Failed,
        Self::Usage,
        Self::Locked,
        Self::Damage,
        Self::Key,
        Self::Refused,
        Self::Internal,
    ];

    /// The stable name of the kind (`failed`, `usage`, `locked`, `damage`, `key`,
    /// `refused`, `internal`), as `--json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failed => "failed",
            Self::Usage => "usage",
            Self::Locked => "locked",
            Self::Damage => "damage",
            Self::Key => "key",
            Self::Refused => "refused",
            Self::Internal => "internal",
        }
    }
}

impl ErrorKind {
    /// The kind named `name` (as [`Self::as_str`] spells it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The note of [`Error::WrongSecret`] about slots left untried.
fn untried_note(untried: usize) -> String {
    if untried == 0 {
        String::new()
    } else {
        format!(" ({untried} more were not tried: at most 16 are; remove the slots you do not know with `tessera key remove`)")
    }
}

impl Error {
    /// Which kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The server names the kind of its failure in its answer (`routes::Refusal`);
            // otherwise its status tells the kinds that matter to the caller (`status_of`).
            Self::RemoteStatus {
                kind: Some(kind), ..
            } => *kind,
            Self::RemoteStatus { status, .. } => match status {
                409 => ErrorKind::Locked,
                422 => ErrorKind::Refused,
                _ => ErrorKind::Failed,
            },
            Self::Io { .. }
            | Self::NoSpace { .. }
            | Self::Source { .. }
            | Self::BadImage { .. }
            | Self::Index(_)
            | Self::Network { .. }
            | Self::Tls { .. }
            | Self::Listen { .. }
            | Self::Threads { .. }
            | Self::Hook(_)
            | Self::ReclaimedMeanwhile { .. }
            | Self::PreviousIo => ErrorKind::Failed,
            Self::Locked { .. }
            | Self::JobRunning { .. }
            | Self::SeriesLocked { .. }
            | Self::CompactionRunning { .. }
            | Self::VerifyRunning { .. }
            | Self::IndexBusy { .. } => ErrorKind::Locked,
            Self::WrongBase { .. }
            | Self::Refused { .. }
            | Self::Immutable { .. }
            | Self::Protected { .. }
            | Self::IncompatibleRepositories { .. }
            | Self::BlockSizeMismatch { .. }
            | Self::BlockSizeChange { .. }
            | Self::Unencodable { .. }
            | Self::TargetMismatch { .. }
            | Self::ObjectExists { .. }
            | Self::LastKeySlot { .. }
            | Self::BadConfig {
                source: DecodeError::UnsupportedVersion { .. },
                ..
            } => ErrorKind::Refused,
            Self::NotARepository { .. }
            | Self::AlreadyExists { .. }
            | Self::PrefixNotEmpty { .. }
            | Self::OutputExists { .. }
            | Self::SnapshotNotFound { .. }
            | Self::AmbiguousSnapshot { .. }
            | Self::DiskNotFound { .. }
            | Self::SeriesNotFound { .. }
            | Self::BadSnapshotRef { .. }
            | Self::Usage(_)
            | Self::InvalidArgument(_) => ErrorKind::Usage,
            Self::BadConfig { .. }
            | Self::IndexMissing { .. }
            | Self::IndexCorrupt { .. }
            | Self::ObjectMissing { .. }
            | Self::ObjectCorrupt { .. }
            | Self::PackCorrupt { .. }
            | Self::SnapshotCorrupt { .. }
            | Self::SnapshotIncomplete { .. }
            | Self::UncataloguedSnapshots { .. }
            | Self::ChunkLength { .. }
            | Self::KeySlotDamaged { .. }
            | Self::EncryptionMismatch { .. }
            | Self::UntrustedData { .. } => ErrorKind::Damage,
            Self::ReferenceBlockUnreadable { source, .. } => source.kind(),
            Self::Remote { problem, .. } => problem.kind(),
            Self::Internal(_) => ErrorKind::Internal,
            Self::Explore { source, .. } => explore_kind(source),
            Self::WrongSecret { .. }
            | Self::KeyRequired { .. }
            | Self::NoSuchSlot { .. }
            | Self::XoWrongKey { .. } => ErrorKind::Key,
        }
    }

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

/// The kind of a filesystem reading failure: a path that is not there is the caller's
/// mistake; a damaged chunk keeps its kind; a malformed or unsupported filesystem is a
/// failure of the command, not damage to the repository (the guest's bytes were stored
/// faithfully).
fn explore_kind(e: &crate::explore::FsError) -> ErrorKind {
    use crate::explore::FsError;
    match e {
        FsError::NotFound { .. } | FsError::NotADirectory { .. } => ErrorKind::Usage,
        FsError::Unsupported(_) => ErrorKind::Refused,
        FsError::Corrupt(_) => ErrorKind::Failed,
        FsError::Image(inner) => inner.kind(),
        FsError::Unreadable { source, .. } => explore_kind(source),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_failure_not_the_variant_name() {
        let config = |source| Error::BadConfig {
            location: "r".into(),
            source,
        };
        let newer = DecodeError::UnsupportedVersion {
            what: "config",
            version: 99,
            supported: 1,
        };
        let flipped = DecodeError::ChecksumMismatch {
            what: "config",
            expected: 1,
            got: 2,
        };
        let remote = |status| Error::RemoteStatus {
            request: "GET x".into(),
            status,
            message: String::new(),
            kind: None,
        };
        let remote_damage = Error::RemoteStatus {
            request: "POST x".into(),
            status: 500,
            message: "pack corrupt".into(),
            kind: Some(ErrorKind::Damage),
        };
        let unreadable = |source: Error| Error::ReferenceBlockUnreadable {
            offset: 0,
            source: Box::new(source),
        };
        let io = || Error::io("reading", io::Error::other("disk on fire"));
        let missing = || Error::ObjectMissing {
            kind: ObjectKind::Chunk,
            digest: "00".into(),
        };
        for (err, kind) in [
            (config(newer), ErrorKind::Refused),
            (config(flipped), ErrorKind::Damage),
            (remote(409), ErrorKind::Locked),
            (remote(422), ErrorKind::Refused),
            (remote(401), ErrorKind::Failed),
            (remote_damage, ErrorKind::Damage),
            (unreadable(io()), ErrorKind::Failed),
            (unreadable(missing()), ErrorKind::Damage),
            (
                Error::io("writing", io::Error::from_raw_os_error(libc::ENOSPC)),
                ErrorKind::Failed,
            ),
            (
                Error::Protected {
                    snapshot: SnapshotId([1; 32]),
                },
                ErrorKind::Refused,
            ),
            (
                Error::UntrustedData {
                    from: "peer".into(),
                    reason: "bad".into(),
                },
                ErrorKind::Damage,
            ),
            (Error::Internal("bug".into()), ErrorKind::Internal),
            (
                Error::EncryptionMismatch {
                    location: "r".into(),
                    reason: "plain config, sealed snapshots".into(),
                },
                ErrorKind::Damage,
            ),
            (
                Error::WrongSecret {
                    what: "passphrase",
                    tried: 1,
                    untried: 0,
                },
                ErrorKind::Key,
            ),
        ] {
            assert_eq!(err.kind(), kind, "{err}");
        }
        let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["failed", "usage", "locked", "damage", "key", "refused", "internal"]
        );
        assert_eq!(serde_json::to_value(ErrorKind::Refused).unwrap(), "refused");
    }
}
