//! Where a repository is: a location string as the operator writes it, and how to reach it.
//!
//! | location | objects | local state (index, ledger, locks) |
//! |---|---|---|
//! | `PATH` or `file://PATH` | the directory | the same directory |
//! | `s3://BUCKET/PREFIX` | the bucket, under `PREFIX/` | a cache directory ([`LocationOptions::cache_dir`]) |
//!
//! [`RepoStorage::at`] is the one function that turns a location string and its options into
//! a [`RepoStorage`]; [`RepoLocation`] carries a parsed location and its options through the
//! front ends (every command that takes a repository takes one), and opens, creates and
//! compares repositories. Parsing checks the syntax only; connecting (S3: endpoint,
//! credentials, bucket, with one listing request) happens when the storage is made, before
//! anything is written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::SecretSource;
use crate::error::{Error, Result};
use crate::repo::{Created, InitOptions, NewKeys, RepoStorage, Repository};
use crate::storage::s3::{S3Backend, S3Location, S3Options};
use crate::storage::Backend;
use crate::store::session::TARGET_PACK_SIZE;

/// How to reach a repository named by a location string ([`RepoStorage::at`]).
#[derive(Debug, Clone, Default)]
pub struct LocationOptions {
    /// Endpoint, region, addressing, profile and retry bounds of `s3://` locations.
    pub s3: S3Options,
    /// The local state directory (index cache, ledger, locks) of an `s3://` repository.
    /// Default: `$XDG_CACHE_HOME/tessera/BUCKET/HASH` (else `~/.cache/…`), `HASH` = the first
    /// 16 hex digits of SHA-256 of `LOCATION\nENDPOINT`.
    pub cache_dir: Option<PathBuf>,
}

/// A location string, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    Local(PathBuf),
    S3(S3Location),
}

impl Location {
    pub(crate) fn parse(location: &str) -> Result<Self> {
        if location.starts_with("s3://") {
            return S3Location::parse(location).map(Self::S3);
        }
        let path = location.strip_prefix("file://").unwrap_or(location);
        if path.is_empty() || path.contains("://") {
            return Err(Error::InvalidArgument(format!(
                "{location:?} is not a repository location: give a path, file://PATH or s3://BUCKET/PREFIX"
            )));
        }
        Ok(Self::Local(PathBuf::from(path)))
    }
}

impl RepoStorage {
    /// The repository at `location`: `s3://BUCKET/PREFIX` (objects in the bucket, local
    /// state in the cache directory of `options`), or `file://PATH` or a plain path (a local
    /// repository, as [`Self::local`]). For S3 this connects and checks the bucket (a wrong
    /// endpoint, refused credentials or a missing bucket fail here, before anything is
    /// written), then creates and marks the cache directory. Opening the repository brings
    /// the cache up to date ([`crate::cache::refresh_cache`]).
    pub fn at(location: &str, options: &LocationOptions) -> Result<Self> {
        Self::of(&Location::parse(location)?, options)
    }

    fn of(location: &Location, options: &LocationOptions) -> Result<Self> {
        match location {
            Location::Local(path) => Ok(Self::local(path)),
            Location::S3(s3) => Self::on_s3(S3Backend::connect(s3.clone(), &options.s3)?, options),
        }
    }

    /// The storage of a connected S3 backend, its local state in the cache directory of
    /// `options` (created and marked as this repository's cache).
    pub(crate) fn on_s3(backend: S3Backend, options: &LocationOptions) -> Result<Self> {
        let identity = format!("{}\n{}", backend.describe(), backend.endpoint());
        let local_dir = match &options.cache_dir {
            Some(dir) => dir.clone(),
            None => default_cache_dir(&backend.location().bucket, &identity)?,
        };
        crate::cache::mark_cache(&local_dir, &identity)?;
        Ok(Self {
            backend: Arc::new(backend),
            local_dir,
            crash_clock: None,
            pack_target: TARGET_PACK_SIZE,
            publish_group: crate::ops::publish::PUBLISH_GROUP,
            shared: true,
        })
    }
}

/// `$XDG_CACHE_HOME/tessera/BUCKET/HASH` or `~/.cache/tessera/BUCKET/HASH` (see
/// [`LocationOptions::cache_dir`]).
fn default_cache_dir(bucket: &str, identity: &str) -> Result<PathBuf> {
    use sha2::Digest;
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or_else(|| {
            Error::InvalidArgument(
                "no cache directory for the S3 repository's index: set XDG_CACHE_HOME or HOME, or pass --cache-dir".into(),
            )
        })?;
    let hash = hex::encode(sha2::Sha256::digest(identity.as_bytes()));
    Ok(base.join("tessera").join(bucket).join(&hash[..16]))
}

/// A repository location and the options to reach it (see the module docs).
#[derive(Debug, Clone)]
pub struct RepoLocation {
    location: Location,
    /// How to reach it.
    pub options: LocationOptions,
}

impl RepoLocation {
    /// Parses `location` (syntax only: nothing is contacted or created).
    pub fn parse(location: &str, options: LocationOptions) -> Result<Self> {
        Ok(Self {
            location: Location::parse(location)?,
            options,
        })
    }

    /// The local repository in `path`.
    pub fn local(path: &Path) -> Self {
        Self {
            location: Location::Local(path.to_path_buf()),
            options: LocationOptions::default(),
        }
    }

    /// The directory of a local repository; `None` for one in object storage.
    pub fn local_path(&self) -> Option<&Path> {
        match &self.location {
            Location::Local(path) => Some(path),
            Location::S3(_) => None,
        }
    }

    /// Whether the repository lives in object storage.
    pub fn is_s3(&self) -> bool {
        matches!(self.location, Location::S3(_))
    }

    /// Connects ([`RepoStorage::at`]).
    pub fn storage(&self) -> Result<RepoStorage> {
        RepoStorage::of(&self.location, &self.options)
    }

    /// Opens the repository for reading ([`Repository::open_on`]); `keys` is asked for a
    /// secret only if it is encrypted.
    pub fn open(&self, keys: &dyn SecretSource) -> Result<Repository> {
        Repository::open_on(self.storage()?, keys)
    }

    /// Opens the repository as its writer, waiting up to [`writer_wait`] for the writer
    /// lock ([`Repository::open_writer_waiting`]).
    pub fn open_writer(&self, keys: &dyn SecretSource) -> Result<Repository> {
        Repository::open_writer_waiting(self.storage()?, keys, writer_wait())
    }

    /// Opens the repository for a backup of `series` ([`Repository::open_backup_on`]).
    pub fn open_backup(&self, keys: &dyn SecretSource, series: &str) -> Result<Repository> {
        Repository::open_backup_on(self.storage()?, keys, series)
    }

    /// Creates a new repository here ([`Repository::init_at`]), encrypted when `keys` is
    /// given.
    pub fn init(
        &self,
        opts: InitOptions,
        keys: Option<&NewKeys>,
    ) -> Result<(RepoStorage, Created)> {
        Repository::init_at(&self.to_string(), &self.options, opts, keys)
    }

    /// Whether a repository exists here (its config object does). Connects for S3.
    pub fn exists(&self) -> Result<bool> {
        match &self.location {
            Location::Local(path) => Ok(path.join("config").is_file()),
            Location::S3(_) => {
                let storage = self.storage()?;
                Ok(storage
                    .backend
                    .size(&crate::storage::ObjectKey::config())?
                    .is_some())
            }
        }
    }

    /// Whether `self` and `other` name the same repository: the same directory (after
    /// resolving links), or the same bucket and prefix on the same endpoint.
    pub fn same_repository(&self, other: &Self) -> bool {
        match (&self.location, &other.location) {
            (Location::Local(a), Location::Local(b)) => {
                match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => a == b,
                }
            }
            (Location::S3(a), Location::S3(b)) => {
                a == b && self.options.s3.endpoint == other.options.s3.endpoint
            }
            _ => false,
        }
    }
}

impl RepoLocation {
    /// Whether `storage` is the repository this location names (see
    /// [`Self::same_repository`]; for S3, by bucket and prefix).
    pub fn is_location_of(&self, storage: &RepoStorage) -> bool {
        match &self.location {
            Location::Local(path) => {
                match (
                    std::fs::canonicalize(path),
                    std::fs::canonicalize(&storage.local_dir),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => *path == storage.local_dir,
                }
            }
            Location::S3(s3) => storage.backend.describe() == s3.url(),
        }
    }
}

impl fmt::Display for RepoLocation {
    /// The path, or `s3://BUCKET/PREFIX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3(s3) => f.write_str(&s3.url()),
        }
    }
}

/// Options of an S3 repository named by itself (tests, tools).
impl From<S3Options> for LocationOptions {
    fn from(s3: S3Options) -> Self {
        Self {
            s3,
            cache_dir: None,
        }
    }
}

/// How long a command that needs the writer lock (forget, prune, compact, repair, sync into
/// the repository, seed import, a job's steps after its backup) waits while another writer
/// holds it, before failing with exit code 3 (SPEC.md §8): `TESSERA_LOCK_WAIT` seconds,
/// default 30. Backups hold the lock only while they publish (usually well under a
/// second); a longer holder (a compaction) still makes the command fail, naming it.
pub fn writer_wait() -> std::time::Duration {
    let secs = std::env::var("TESSERA_LOCK_WAIT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(30);
    std::time::Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_into_local_or_s3() {
        let opts = LocationOptions::default;
        let l = RepoLocation::parse("/srv/repo", opts()).unwrap();
        assert_eq!(l.local_path(), Some(Path::new("/srv/repo")));
        let l = RepoLocation::parse("file:///srv/repo", opts()).unwrap();
        assert_eq!(l.local_path(), Some(Path::new("/srv/repo")));
        assert_eq!(l.to_string(), "/srv/repo");
        let l = RepoLocation::parse("s3://bucket/a/b/", opts()).unwrap();
        assert!(l.is_s3());
        assert_eq!(l.to_string(), "s3://bucket/a/b");
        for bad in ["", "http://x/y", "file://", "s3://B/x"] {
            let e = RepoLocation::parse(bad, opts()).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Usage, "{bad}: {e}");
        }
    }

    #[test]
    fn the_same_repository_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let a = RepoLocation::local(dir.path());
        let b = RepoLocation::parse(
            &format!("file://{}/.", dir.path().display()),
            LocationOptions::default(),
        )
        .unwrap();
        assert!(a.same_repository(&b));
        let s = |l: &str| RepoLocation::parse(l, LocationOptions::default()).unwrap();
        assert!(s("s3://bkt/x").same_repository(&s("s3://bkt/x/")));
        assert!(!s("s3://bkt/x").same_repository(&s("s3://bkt/y")));
        assert!(!s("s3://bkt/x").same_repository(&a));
    }
}
