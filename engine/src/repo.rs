//! The repository façade: creating, opening (as reader or as the single writer), and
//! reading snapshots, pages and chunks.
//!
//! A repository lives in two places ([`RepoStorage`]):
//!
//! - its **objects** (config, packs, snapshot files, markers, damage marks, quarantine)
//!   behind a [`Backend`] — the source of truth;
//! - its **local state** in a directory: the RocksDB index (a cache of the objects that can
//!   always be rebuilt from them), the verification ledger, and the writer lock and reader
//!   leases. For a local repository both are the repository directory:
//!
//! ```text
//! REPO/config, packs/, snapshots/, damaged, quarantine/   objects (storage::key)
//! REPO/tmp/                                               staged puts (local backend)
//! REPO/index/, index.seq                                  the index (index.rs)
//! REPO/lock, readers.lock                                 writer lock, reader leases
//! REPO/ledger/, ledger.lock                               verification ledger
//! ```
//!
//! An S3 repository ([`RepoStorage::at`], [`crate::location`], with `s3://BUCKET/PREFIX`) keeps its objects in the
//! bucket and its local state in a cache directory, whose index every open first brings up
//! to date from the bucket ([`crate::cache::refresh_cache`]; SPEC §2a).
//!
//! Concurrency: one writer at a time (the lock); any number of readers next to it. Readers
//! open the index read-only and see the snapshots published when they opened it; packs and
//! snapshot files are immutable, so nothing a reader uses changes under it.
//!
//! Recovery: opening as writer runs [`crate::recovery::recover`], which finishes or undoes
//! what an interrupted writer left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_format::config::{DEFAULT_PAGE_ENTRIES, ENCRYPTED_FORMAT, PLAIN_FORMAT};
use tessera_format::keyslot::KdfParams;
use tessera_format::{
    ChunkDigest, Compression, Encryption, IdScheme, ObjectKind, PackId, PageDigest, RepoConfig,
    RepoId, Snapshot, SnapshotHeader, SnapshotId,
};

use crate::crypto::keyring::{self, NoSecret, SecretSource};
use crate::crypto::{RepoCrypto, RepoKeys, SecretKey, SlotSecret};
use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::location::{Location, LocationOptions};
use crate::lock::WriterLock;
use crate::readers::ReaderLease;
use crate::recovery::Recovery;
use crate::snapshot_ref::SnapshotRef;
use crate::storage::local::LocalBackend;
use crate::storage::s3::S3Backend;
use crate::storage::sim::CrashClock;
use crate::storage::{Backend, ObjectKey, PutMode};
use crate::store::reader;
use crate::store::session::TARGET_PACK_SIZE;

/// Default block size for new repositories (see SPEC.md for the measurement behind it).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;
/// Default compression for new repositories: zstd level 2. Measured on the 2 GiB macro-bench
/// image (64 KiB blocks, 2 cores): first backup 874 MB/s at level 2 against 792 MB/s at
/// level 3, for a repository 0.2 % larger (README.md, "Performance").
pub const DEFAULT_COMPRESSION: Compression = Compression {
    codec: tessera_format::Codec::Zstd,
    level: 2,
};

/// Parameters of `init`.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Default block size.
    pub block_size: u32,
    /// Compression of new objects.
    pub compression: Compression,
    /// Digests per manifest page ([`DEFAULT_PAGE_ENTRIES`]; tests use small pages so that
    /// small images span several).
    pub page_entries: u32,
    /// Immutable backups (SPEC §28): checked against the store before anything is written,
    /// stored before the config.
    pub immutability: Option<crate::ops::immutable::Policy>,
}

impl InitOptions {
    /// Refuses parameters no repository may have (before anything is created).
    pub fn validate(&self) -> Result<()> {
        self.config(RepoId([0; 16]), Encryption::None).map(|_| ())
    }

    /// A new repository's config with these parameters, and its encoding: format 1 when
    /// plain, format 2 when encrypted (SPEC.md §3).
    fn config(&self, repo_id: RepoId, encryption: Encryption) -> Result<(RepoConfig, Vec<u8>)> {
        let encrypted = encryption.is_encrypted();
        let config = RepoConfig {
            format_version: if encrypted {
                ENCRYPTED_FORMAT
            } else {
                PLAIN_FORMAT
            },
            repo_id,
            id_scheme: if encrypted {
                IdScheme::HmacSha256
            } else {
                IdScheme::Sha256
            },
            compression: self.compression,
            default_block_size: self.block_size,
            page_entries: self.page_entries,
            created_at_us: crate::time::now_us(),
            encryption,
        };
        let bytes = config.encode().map_err(|source| Error::Unencodable {
            what: "repository parameters".into(),
            source,
        })?;
        Ok((config, bytes))
    }
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            compression: DEFAULT_COMPRESSION,
            page_entries: DEFAULT_PAGE_ENTRIES,
            immutability: None,
        }
    }
}

/// The keys of a new encrypted repository and the first secret that unlocks them.
#[derive(Debug, Clone)]
pub struct NewKeys {
    /// What opens the first slot (a passphrase or a key file).
    pub secret: SlotSecret,
    /// Argon2id cost of a passphrase slot.
    pub kdf: KdfParams,
    /// Keys of another repository to share (`init --keys-from`), instead of new ones.
    pub shared: Option<RepoKeys>,
}

impl NewKeys {
    /// Refuses a secret that protects nothing (an empty passphrase), before anything is
    /// created.
    pub fn validate(&self) -> Result<()> {
        if matches!(&self.secret, SlotSecret::Passphrase(p) if p.is_empty()) {
            return Err(Error::Usage(
                "an empty passphrase protects nothing; give a passphrase, or --encryption none for a plain repository".into(),
            ));
        }
        Ok(())
    }
}

/// What `init` created.
#[derive(Debug)]
pub struct Created {
    /// The config written.
    pub config: RepoConfig,
    /// The recovery key of an encrypted repository: shown once, stored nowhere.
    pub recovery: Option<SecretKey>,
}

/// Where a repository lives: its objects and its local state (see the module docs).
#[derive(Clone)]
pub struct RepoStorage {
    /// The objects.
    pub backend: Arc<dyn Backend>,
    /// The index, ledger and locks.
    pub local_dir: PathBuf,
    /// Crash tests: every index commit is a step of this clock.
    pub crash_clock: Option<Arc<CrashClock>>,
    /// Size at which packs are sealed ([`TARGET_PACK_SIZE`]; crash tests use small packs).
    pub pack_target: u64,
    /// Chunk count updates one publishing batch holds at most
    /// ([`crate::ops::publish::PUBLISH_GROUP`]; crash tests use small groups).
    pub publish_group: usize,
    /// Whether other machines may use the objects at the same time (an object store): then
    /// the local directory is only a cache, and packs are deleted in two phases with a grace
    /// period ([`crate::doomed`]) instead of once no local reader holds a lease.
    pub shared: bool,
}

impl RepoStorage {
    /// A repository in the local directory `root` (objects and local state alike).
    pub fn local(root: &Path) -> Self {
        Self {
            backend: Arc::new(LocalBackend::new(root)),
            local_dir: root.to_path_buf(),
            crash_clock: None,
            pack_target: TARGET_PACK_SIZE,
            publish_group: crate::ops::publish::PUBLISH_GROUP,
            shared: false,
        }
    }

    /// Path of the index directory.
    pub fn index_path(&self) -> PathBuf {
        self.local_dir.join("index")
    }

    /// Reads and decodes the config.
    pub fn read_config(&self) -> Result<RepoConfig> {
        let location = self.backend.describe();
        let bytes = self
            .backend
            .get_if_exists(&ObjectKey::config())?
            .ok_or_else(|| Error::NotARepository {
                location: location.clone(),
            })?;
        RepoConfig::decode(&bytes).map_err(|source| Error::BadConfig { location, source })
    }

    /// Opens the local index, checked against the config's encryption and reading and
    /// writing catalog entries with `crypto`.
    pub(crate) fn open_index(
        &self,
        config: &RepoConfig,
        read_only: bool,
        crypto: &Arc<RepoCrypto>,
    ) -> Result<Index> {
        let index = Index::open(&self.index_path(), config.repo_id, read_only)?;
        let expected = encryption_record(config);
        match index.recorded_encryption()? {
            Some(recorded) if recorded != expected => {
                return Err(Error::EncryptionMismatch {
                    location: self.backend.describe(),
                    reason: format!(
                        "the config says encryption {} (key fingerprint {}), but the index was made for {}",
                        config.encryption.name(),
                        config.encryption.fingerprint().map_or_else(|| "none".into(), hex::encode),
                        describe_record(&recorded),
                    ),
                });
            }
            // An index made before the record existed: the first writer records it.
            None if !read_only => index.record_encryption(&expected)?,
            _ => {}
        }
        Ok(index
            .with_crash_clock(self.crash_clock.clone())
            .with_crypto(Arc::clone(crypto)))
    }
}

/// What the index records about the repository's encryption ([`Index::record_encryption`]):
/// its name, then the key fingerprint when encrypted.
pub(crate) fn encryption_record(config: &RepoConfig) -> Vec<u8> {
    let mut out = config.encryption.name().as_bytes().to_vec();
    if let Some(fingerprint) = config.encryption.fingerprint() {
        out.push(b':');
        out.extend_from_slice(&fingerprint);
    }
    out
}

/// A recorded [`encryption_record`] for an error message.
fn describe_record(record: &[u8]) -> String {
    match record.iter().position(|b| *b == b':') {
        Some(at) => format!(
            "encryption {} (key fingerprint {})",
            String::from_utf8_lossy(&record[..at]),
            hex::encode(&record[at + 1..])
        ),
        None => format!("encryption {}", String::from_utf8_lossy(record)),
    }
}

/// An open repository.
pub struct Repository {
    storage: RepoStorage,
    config: RepoConfig,
    crypto: Arc<RepoCrypto>,
    index: Index,
    lock: Option<WriterLock>,
    /// A backup's in a store several machines share: the series' lease there, checked
    /// before publishing ([`crate::series_lease`]). Declared (so dropped) before the local
    /// series lock: the lease is let go while the lock still keeps this machine's next
    /// backup of the series out.
    series_lease: Option<crate::series_lease::SeriesLease>,
    /// The writer a backup publishes through: its lease, checked again right before the
    /// snapshot file is stored ([`Self::check_series_lease`]).
    lease_check: Option<crate::series_lease::LeaseCheck>,
    /// A backup's: the lock of its series, held for its whole run.
    _series_lock: Option<WriterLock>,
    /// A backup's lease (instead of a reader's): which doomed packs its view may still use.
    _backup_lease: Option<crate::leases::BackupLease>,
    _lease: Option<ReaderLease>,
    /// The store's clock read before this writer first listed the bucket's snapshots
    /// (shared stores only; see [`Self::catalogued_as_of_us`]).
    catalogued_as_of_us: Option<i64>,
    /// What recovery did (writers only).
    pub recovery: Recovery,
}

/// Takes the writer lock with `take` after bringing an object store's cache up to date
/// ([`crate::cache::refresh_cache`], which takes the lock itself and skips the work while
/// another writer holds it). When `take` had to wait, the holder may have been another
/// client's writer of this cache, or the store may have changed meanwhile: the lock is let
/// go, the cache brought up to date again, and the lock taken again.
fn lock_with_fresh_cache(
    storage: &RepoStorage,
    crypto: &Arc<RepoCrypto>,
    take: impl Fn() -> Result<WriterLock>,
) -> Result<(WriterLock, Option<crate::cache::CacheRefresh>)> {
    let cache = crate::cache::refresh_cache(storage, crypto)?;
    let lock = take()?;
    if !(lock.waited && cache.is_some()) {
        return Ok((lock, cache));
    }
    drop(lock);
    let cache = crate::cache::refresh_cache(storage, crypto)?;
    Ok((take()?, cache))
}

/// Reads and decodes the config of the local repository at `root`.
pub fn read_config(root: &Path) -> Result<RepoConfig> {
    RepoStorage::local(root).read_config()
}

impl Repository {
    /// Creates a new local repository at `root`, which must not exist or be an empty
    /// directory.
    pub fn init(root: &Path, opts: InitOptions) -> Result<RepoConfig> {
        Self::init_with(root, opts, None).map(|c| c.config)
    }

    /// Creates a new local repository at `root`, encrypted when `keys` is given.
    pub fn init_with(root: &Path, opts: InitOptions, keys: Option<&NewKeys>) -> Result<Created> {
        opts.validate()?;
        if let Some(new) = keys {
            new.validate()?;
        }
        Self::check_init_target(root)?;
        for dir in ["packs", "snapshots", "tmp"] {
            let path = root.join(dir);
            crate::storage::durable::create_dir_all(&crate::storage::fs::OsFs, &path)
                .ctx(|| format!("creating {}", path.display()))?;
        }
        Self::init_on(&RepoStorage::local(root), opts, keys)
    }

    /// Refuses a target directory that exists and is not empty (before anything is asked
    /// for or created).
    pub fn check_init_target(root: &Path) -> Result<()> {
        if let Ok(mut entries) = std::fs::read_dir(root) {
            if entries.next().is_some() {
                return Err(Error::AlreadyExists {
                    path: root.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// Creates a new repository at a location string ([`RepoStorage::at`]), encrypted when
    /// `keys` is given. A local one as [`Self::init_with`]; an S3 one only under a prefix that holds no object at all (a
    /// repository or anything else), after clearing what its cache directory may hold of
    /// an earlier repository there.
    pub fn init_at(
        location: &str,
        options: &LocationOptions,
        opts: InitOptions,
        keys: Option<&NewKeys>,
    ) -> Result<(RepoStorage, Created)> {
        let s3 = match Location::parse(location)? {
            Location::Local(path) => {
                let created = Self::init_with(&path, opts, keys)?;
                return Ok((RepoStorage::local(&path), created));
            }
            Location::S3(s3) => S3Backend::connect(s3, &options.s3)?,
        };
        if !s3.is_empty()? {
            return Err(Error::PrefixNotEmpty {
                location: s3.describe(),
            });
        }
        let storage = RepoStorage::on_s3(s3, options)?;
        let _lock = WriterLock::acquire(&storage.local_dir)?;
        for stale in ["index", "index.rebuild", "index.old", "ledger"] {
            let path = storage.local_dir.join(stale);
            match std::fs::remove_dir_all(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(format!("clearing {}", path.display()), e))
                }
                _ => {}
            }
        }
        let created = Self::init_on(&storage, opts, keys)?;
        Ok((storage, created))
    }

    /// Creates a new repository in `storage`, encrypted when `keys` is given. The key slots
    /// come first, the config last, create-only: a location without it is not a
    /// repository, so a crash during init leaves nothing that could be mistaken for one,
    /// and of two racing inits exactly one succeeds.
    pub fn init_on(
        storage: &RepoStorage,
        opts: InitOptions,
        keys: Option<&NewKeys>,
    ) -> Result<Created> {
        opts.validate()?;
        if storage.backend.size(&ObjectKey::config())?.is_some() {
            return Err(Error::AlreadyExists {
                path: PathBuf::from(storage.backend.describe()),
            });
        }
        if opts.immutability.is_some() {
            storage.backend.check_retention()?;
        }
        let repo_id = RepoId(rand::random());
        let (encryption, recovery) = match keys {
            None => (Encryption::None, None),
            Some(new) => {
                new.validate()?;
                let (keys, recovery) = keyring::create(
                    &*storage.backend,
                    repo_id,
                    new.shared.clone(),
                    &new.secret,
                    new.kdf,
                )?;
                let fingerprint = keys.fingerprint();
                (Encryption::Aes256Gcm { fingerprint }, Some(recovery))
            }
        };
        let finish = || {
            let (config, bytes) = opts.config(repo_id, encryption)?;
            if let Some(policy) = &opts.immutability {
                crate::ops::immutable::store_for_init(&*storage.backend, policy)?;
            }
            Index::create(&storage.index_path(), config.repo_id)?
                .record_encryption(&encryption_record(&config))?;
            match storage
                .backend
                .put_bytes(&ObjectKey::config(), PutMode::Create, &bytes)
            {
                Err(Error::ObjectExists { .. }) => Err(Error::AlreadyExists {
                    path: PathBuf::from(storage.backend.describe()),
                }),
                other => other.map(|()| config),
            }
        };
        match finish() {
            Ok(config) => Ok(Created { config, recovery }),
            Err(e) => {
                // No config, so no repository: the slots this init wrote (named by its new
                // repository id) must not stay behind, where they would make a racing plain
                // init's repository look downgraded and block a retry at this location.
                // Best effort: the error that stopped the init is the one reported.
                if keys.is_some() {
                    if let Ok(slots) = keyring::load_slots(&*storage.backend, repo_id) {
                        for slot in slots.sound {
                            let _ = storage.backend.delete(&ObjectKey::key_slot(&slot.slot_id));
                        }
                    }
                }
                Err(e)
            }
        }
    }

    /// Opens the local plain repository at `root` for reading (an encrypted one needs
    /// [`Repository::open_with`]).
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_on(RepoStorage::local(root), &NoSecret)
    }

    /// Opens the local plain repository at `root` as the single writer.
    pub fn open_writer(root: &Path) -> Result<Self> {
        Self::open_writer_on(RepoStorage::local(root), &NoSecret)
    }

    /// Opens the local plain repository at `root` for a backup of `series`
    /// ([`Self::open_backup_on`]).
    pub fn open_backup(root: &Path, series: &str) -> Result<Self> {
        Self::open_backup_on(RepoStorage::local(root), &NoSecret, series)
    }

    /// Opens the local repository at `root` for reading; `keys` is asked for a secret
    /// only if the repository is encrypted.
    pub fn open_with(root: &Path, keys: &dyn SecretSource) -> Result<Self> {
        Self::open_on(RepoStorage::local(root), keys)
    }

    /// Opens the local repository at `root` as the single writer (see [`Self::open_with`]).
    pub fn open_writer_with(root: &Path, keys: &dyn SecretSource) -> Result<Self> {
        Self::open_writer_on(RepoStorage::local(root), keys)
    }

    /// Opens for reading: no lock, a reader lease, the index read-only. An encrypted
    /// repository is unlocked first (a wrong secret fails before anything is touched).
    pub fn open_on(storage: RepoStorage, keys: &dyn SecretSource) -> Result<Self> {
        let config = storage.read_config()?;
        let crypto = Arc::new(keyring::open_crypto(&*storage.backend, &config, keys)?);
        let cache = crate::cache::refresh_cache(&storage, &crypto)?;
        let lease = ReaderLease::acquire(&storage.local_dir)?;
        let index = storage.open_index(&config, true, &crypto)?;
        let recovery = Recovery {
            cache,
            ..Recovery::default()
        };
        Ok(Self {
            _lease: Some(lease),
            ..Self::holding_nothing(storage, config, crypto, index, recovery)
        })
    }

    /// Opens as the single writer: unlocks an encrypted repository (a wrong secret fails
    /// before the lock is taken or anything is written), takes the lock, then recovers from
    /// any interrupted writer. In a shared store it first reads the store's clock
    /// ([`Self::catalogued_as_of_us`]).
    pub fn open_writer_on(storage: RepoStorage, keys: &dyn SecretSource) -> Result<Self> {
        Self::open_writer_waiting(storage, keys, std::time::Duration::ZERO)
    }

    /// [`Self::open_writer_on`], waiting up to `wait` for the writer lock while another
    /// writer holds it: backups take it for a moment to publish (SPEC.md §8), and a forget
    /// or compaction started at that moment should not fail for it.
    pub fn open_writer_waiting(
        storage: RepoStorage,
        keys: &dyn SecretSource,
        wait: std::time::Duration,
    ) -> Result<Self> {
        let catalogued_as_of_us = storage
            .shared
            .then(|| storage.backend.clock_us())
            .transpose()?;
        let config = storage.read_config()?;
        let crypto = Arc::new(keyring::open_crypto(&*storage.backend, &config, keys)?);
        let (lock, cache) = lock_with_fresh_cache(&storage, &crypto, || {
            WriterLock::acquire_within(&storage.local_dir, wait)
        })?;
        let index = storage.open_index(&config, false, &crypto)?;
        let mut recovery = crate::recovery::recover(&storage, &index, &crypto)?;
        recovery.stale_lock.clone_from(&lock.stale_holder);
        recovery.cache = cache;
        Ok(Self {
            lock: Some(lock),
            catalogued_as_of_us,
            ..Self::holding_nothing(storage, config, crypto, index, recovery)
        })
    }

    /// Opens for a backup of `series` (SPEC.md §8): unlocks an encrypted repository, takes
    /// the series' lock ([`WriterLock::acquire_series`]; a second backup of the series
    /// fails with [`Error::SeriesLocked`]), runs a writer's recovery if no other writer holds
    /// the writer lock right now (so that a rerun of an interrupted backup finds the packs it
    /// sealed), then takes a backup lease ([`crate::leases`]) and opens a view of the index
    /// as a reader does. The backup reads
    /// and stores under the series lock alone, side by side with backups of other series
    /// and with forget, prune and compaction; it takes the writer lock only to publish
    /// ([`Self::publisher`]).
    pub fn open_backup_on(
        storage: RepoStorage,
        keys: &dyn SecretSource,
        series: &str,
    ) -> Result<Self> {
        let config = storage.read_config()?;
        let crypto = Arc::new(keyring::open_crypto(&*storage.backend, &config, keys)?);
        let series_lock = WriterLock::acquire_series(&storage.local_dir, series)?;
        // Other machines' backups of the series: the lease in the store (after the local
        // lock, so that one machine's backups never race each other for it).
        let series_lease = storage
            .shared
            .then(|| {
                crate::series_lease::SeriesLease::acquire(
                    storage.backend.clone(),
                    series,
                    &storage.local_dir,
                )
            })
            .transpose()?;
        // The lease before the recovery: the packs of an interrupted run that the recovery
        // adopts for this rerun are then indexed after the lease was created, and no
        // compaction reclaims them while the rerun runs (SPEC.md §13, race 3).
        let mut lease = crate::leases::BackupLease::acquire(&storage.local_dir)?;
        let recovery = loop {
            let cache = crate::cache::refresh_cache(&storage, &crypto)?;
            let mut recovery = match WriterLock::acquire(&storage.local_dir) {
                Ok(lock) => {
                    let index = storage.open_index(&config, false, &crypto)?;
                    let mut recovery = crate::recovery::recover(&storage, &index, &crypto)?;
                    recovery.stale_lock.clone_from(&lock.stale_holder);
                    recovery
                }
                // That writer's own open recovered, or a publishing backup's will.
                Err(Error::Locked { .. }) => Recovery::default(),
                Err(e) => return Err(e),
            };
            recovery.cache = cache;
            if storage.index_path().join("CURRENT").exists() {
                break recovery;
            }
            // An object store's cache without an index yet, which another process of this
            // machine is building under the lock (another backup's open): wait for it, then
            // bring the cache up to date again.
            drop(WriterLock::acquire_waiting(&storage.local_dir, &|_| {})?);
        };
        let index = storage.open_index(&config, true, &crypto)?;
        lease.set_view(&index.identity()?, index.doom_epoch()?)?;
        Ok(Self {
            _series_lock: Some(series_lock),
            series_lease,
            _backup_lease: Some(lease),
            ..Self::holding_nothing(storage, config, crypto, index, recovery)
        })
    }

    /// The writer a backup opened with [`Self::open_backup_on`] publishes through: takes the
    /// writer lock, waiting while another writer holds it (`waiting` is told who, once),
    /// opens the index as its writer and recovers (which indexes the packs the backup
    /// sealed, found unindexed). The repository's keys are reused, not asked for again.
    pub fn publisher(&self, own_packs: &[PackId], waiting: &dyn Fn(&Error)) -> Result<Self> {
        if let Some(lease) = &self.series_lease {
            lease.check()?;
        }
        let catalogued_as_of_us = self
            .storage
            .shared
            .then(|| self.storage.backend.clock_us())
            .transpose()?;
        let (lock, cache) = lock_with_fresh_cache(&self.storage, &self.crypto, || {
            WriterLock::acquire_waiting(&self.storage.local_dir, waiting)
        })?;
        let index = self.storage.open_index(&self.config, false, &self.crypto)?;
        let mut own_unindexed = 0;
        for id in own_packs {
            own_unindexed += usize::from(!index.has_pack(*id)?);
        }
        let mut recovery = crate::recovery::recover(&self.storage, &index, &self.crypto)?;
        recovery.packs_adopted = recovery.packs_adopted.saturating_sub(own_unindexed);
        recovery.stale_lock.clone_from(&lock.stale_holder);
        recovery.cache = cache;
        Ok(Self {
            lock: Some(lock),
            catalogued_as_of_us,
            lease_check: self
                .series_lease
                .as_ref()
                .map(crate::series_lease::SeriesLease::checker),
            ..Self::holding_nothing(
                self.storage.clone(),
                self.config.clone(),
                Arc::clone(&self.crypto),
                index,
                recovery,
            )
        })
    }

    /// Lets go of the writer lock (closing the index first) and opens a view of the index
    /// as a reader does, but without a reader's lease: how a compaction goes on after its
    /// plan (SPEC.md §8). It reads only packs it alone may doom (under the compaction lock)
    /// and commits each step through [`Self::publisher`]; a lease would keep the packs it
    /// dooms from being deleted at its own end.
    pub fn step_down(self) -> Result<Self> {
        let Self {
            storage,
            config,
            crypto,
            index,
            lock,
            recovery,
            ..
        } = self;
        drop(index);
        drop(lock);
        let index = storage.open_index(&config, true, &crypto)?;
        Ok(Self::holding_nothing(
            storage, config, crypto, index, recovery,
        ))
    }

    /// An open repository holding no lock, lease or store clock: each way of opening adds
    /// what it holds.
    fn holding_nothing(
        storage: RepoStorage,
        config: RepoConfig,
        crypto: Arc<RepoCrypto>,
        index: Index,
        recovery: Recovery,
    ) -> Self {
        Self {
            storage,
            config,
            crypto,
            index,
            lock: None,
            _series_lock: None,
            series_lease: None,
            lease_check: None,
            _backup_lease: None,
            _lease: None,
            catalogued_as_of_us: None,
            recovery,
        }
    }

    /// Refuses if this writer publishes for a backup whose series lease (a store several
    /// machines share) is lost: called right before a snapshot file is stored.
    pub fn check_series_lease(&self) -> Result<()> {
        match &self.lease_check {
            Some(lease) => lease.check(),
            None => Ok(()),
        }
    }

    /// Whether this is the repository's writer (it holds the writer lock and its index is
    /// the one writers change), rather than a reader or a backup not yet publishing.
    pub fn is_writer(&self) -> bool {
        self.lock.is_some()
    }

    /// Takes the writer lock without opening the index (for rebuilding it) and, in a
    /// repository no other machine uses, discards staged puts of crashed writers. In a shared
    /// store a rebuild also runs when a reader opens ([`crate::cache::refresh_cache`]), and
    /// staged puts may be other clients' uploads in progress: only a writer's open cleans
    /// them ([`crate::recovery::recover`]).
    pub fn lock_for_rebuild(storage: &RepoStorage) -> Result<(RepoConfig, WriterLock)> {
        let config = storage.read_config()?;
        let lock = WriterLock::acquire_within(&storage.local_dir, crate::location::writer_wait())?;
        if !storage.shared {
            storage.backend.clean_staging()?;
        }
        Ok((config, lock))
    }

    /// For a writer of a shared store: the store's clock (Unix microseconds) read before the
    /// writer listed the bucket's snapshots when it opened. Every snapshot stored before
    /// this instant was catalogued by that open (the listing came after it), so this — not
    /// the clock at some later moment of a long operation — is the `now` against which
    /// doom records expire ([`crate::doomed::delete_expired`]). `None` for a reader or a
    /// repository no other machine uses.
    pub fn catalogued_as_of_us(&self) -> Option<i64> {
        self.catalogued_as_of_us
    }

    /// Where the repository lives.
    pub fn storage(&self) -> &RepoStorage {
        &self.storage
    }

    /// The directory of the index, ledger and locks.
    pub fn local_dir(&self) -> &Path {
        &self.storage.local_dir
    }

    /// Where the objects live, for messages (a path or a URL).
    pub fn describe(&self) -> String {
        self.storage.backend.describe()
    }

    /// Size at which new packs are sealed.
    pub fn pack_target(&self) -> u64 {
        self.storage.pack_target
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The id scheme and record protection (plain, or encrypted under the unlocked keys).
    pub fn crypto(&self) -> &RepoCrypto {
        &self.crypto
    }

    /// [`Self::crypto`], shared (for work that outlives a borrow of the repository).
    pub fn crypto_arc(&self) -> Arc<RepoCrypto> {
        Arc::clone(&self.crypto)
    }

    /// The object storage.
    pub fn backend(&self) -> &dyn Backend {
        &*self.storage.backend
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Stored snapshot files the catalog does not list ([`crate::recovery::uncatalogued_snapshots`]).
    /// A reader's index is a view from when it opened, so a snapshot a running writer
    /// published since would look uncatalogued: a reader asks a freshly opened view again
    /// about any it finds.
    pub fn uncatalogued_snapshots(&self) -> Result<Vec<SnapshotId>> {
        let ids = crate::recovery::uncatalogued_snapshots(self.backend(), &self.index)?;
        if ids.is_empty() || self.lock.is_some() {
            return Ok(ids);
        }
        let fresh = self.storage.open_index(&self.config, true, &self.crypto)?;
        let mut still = Vec::new();
        for id in ids {
            if !fresh.has_snapshot(id)? {
                still.push(id);
            }
        }
        Ok(still)
    }

    /// Runs `f` on the index as it is now: a writer's own (it is current), or, for a
    /// reader (whose index is a view from when it opened), a freshly opened view.
    pub fn with_current_index<T>(&self, f: impl FnOnce(&Index) -> Result<T>) -> Result<T> {
        if self.lock.is_some() {
            return f(&self.index);
        }
        f(&self.storage.open_index(&self.config, true, &self.crypto)?)
    }

    /// Resolves a snapshot reference written as text (see [`SnapshotRef`]).
    pub fn resolve_snapshot(&self, query: &str) -> Result<(SnapshotId, SnapshotHeader)> {
        self.resolve(&query.parse()?)
    }

    /// The catalogued snapshot `reference` names, with its catalog entry.
    pub fn resolve(&self, reference: &SnapshotRef) -> Result<(SnapshotId, SnapshotHeader)> {
        let catalog = self.index.snapshots()?;
        reference.resolve(&catalog).cloned()
    }

    /// Reads a snapshot file and checks it against its id.
    pub fn load_snapshot(&self, id: SnapshotId) -> Result<Snapshot> {
        reader::load_snapshot(self.backend(), &self.crypto, id)
    }

    /// Reads an object by digest, with every check of [`reader::read_object`].
    pub fn read_object(&self, kind: ObjectKind, digest: &[u8; 32]) -> Result<Vec<u8>> {
        reader::read_indexed(&self.index, self.backend(), &self.crypto, kind, digest)
    }

    /// Reads manifest page `page_no` of a disk with `blocks` blocks and checks its length.
    pub fn read_page(
        &self,
        digest: PageDigest,
        blocks: u64,
        page_entries: u32,
        page_no: u64,
    ) -> Result<Vec<ChunkDigest>> {
        reader::read_page(
            &self.index,
            self.backend(),
            &self.crypto,
            digest,
            blocks,
            page_entries,
            page_no,
        )
    }
}
