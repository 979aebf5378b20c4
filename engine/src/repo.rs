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
//! Concurrency: one writer at a time (the lock); any number of readers next to it. Readers
//! open the index read-only and see the snapshots published when they opened it; packs and
//! snapshot files are immutable, so nothing a reader uses changes under it.
//!
//! Recovery: opening as writer runs [`crate::recovery::recover`], which finishes or undoes
//! what an interrupted writer left behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_format::config::DEFAULT_PAGE_ENTRIES;
use tessera_format::{
    ChunkDigest, Compression, ObjectKind, PageDigest, RepoConfig, RepoId, Snapshot, SnapshotHeader,
    SnapshotId, FORMAT_VERSION,
};

use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::lock::WriterLock;
use crate::readers::ReaderLease;
use crate::recovery::Recovery;
use crate::snapshot_ref::SnapshotRef;
use crate::storage::local::LocalBackend;
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
}

impl InitOptions {
    /// Refuses parameters no repository may have (before anything is created).
    pub fn validate(&self) -> Result<()> {
        self.config().map(|_| ())
    }

    /// A new repository's config with these parameters, and its encoding.
    fn config(&self) -> Result<(RepoConfig, Vec<u8>)> {
        let config = RepoConfig {
            format_version: FORMAT_VERSION,
            repo_id: RepoId(rand::random()),
            id_scheme: tessera_format::IdScheme::Sha256,
            compression: self.compression,
            default_block_size: self.block_size,
            page_entries: DEFAULT_PAGE_ENTRIES,
            created_at_us: crate::time::now_us(),
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
        }
    }
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
}

impl RepoStorage {
    /// A repository in the local directory `root` (objects and local state alike).
    pub fn local(root: &Path) -> Self {
        Self {
            backend: Arc::new(LocalBackend::new(root)),
            local_dir: root.to_path_buf(),
            crash_clock: None,
            pack_target: TARGET_PACK_SIZE,
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

    fn open_index(&self, config: &RepoConfig, read_only: bool) -> Result<Index> {
        Ok(Index::open(&self.index_path(), config.repo_id, read_only)?
            .with_crash_clock(self.crash_clock.clone()))
    }
}

/// An open repository.
pub struct Repository {
    storage: RepoStorage,
    config: RepoConfig,
    index: Index,
    lock: Option<WriterLock>,
    _lease: Option<ReaderLease>,
    /// What recovery did (writers only).
    pub recovery: Recovery,
}

/// Reads and decodes the config of the local repository at `root`.
pub fn read_config(root: &Path) -> Result<RepoConfig> {
    RepoStorage::local(root).read_config()
}

impl Repository {
    /// Creates a new local repository at `root`, which must not exist or be an empty
    /// directory.
    pub fn init(root: &Path, opts: InitOptions) -> Result<RepoConfig> {
        opts.validate()?;
        if let Ok(mut entries) = std::fs::read_dir(root) {
            if entries.next().is_some() {
                return Err(Error::AlreadyExists {
                    path: root.to_path_buf(),
                });
            }
        }
        for dir in ["packs", "snapshots", "tmp"] {
            let path = root.join(dir);
            crate::storage::durable::create_dir_all(&crate::storage::fs::OsFs, &path)
                .ctx(|| format!("creating {}", path.display()))?;
        }
        Self::init_on(&RepoStorage::local(root), opts)
    }

    /// Creates a new repository in `storage`. The config is written last, create-only: a
    /// location without it is not a repository, so a crash during init leaves nothing that
    /// could be mistaken for one, and of two racing inits exactly one succeeds.
    pub fn init_on(storage: &RepoStorage, opts: InitOptions) -> Result<RepoConfig> {
        let (config, bytes) = opts.config()?;
        if storage.backend.size(&ObjectKey::config())?.is_some() {
            return Err(Error::AlreadyExists {
                path: PathBuf::from(storage.backend.describe()),
            });
        }
        drop(Index::create(&storage.index_path(), config.repo_id)?);
        match storage
            .backend
            .put_bytes(&ObjectKey::config(), PutMode::Create, &bytes)
        {
            Err(Error::ObjectExists { .. }) => Err(Error::AlreadyExists {
                path: PathBuf::from(storage.backend.describe()),
            }),
            other => other.map(|()| config),
        }
    }

    /// Opens the local repository at `root` for reading.
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_on(RepoStorage::local(root))
    }

    /// Opens the local repository at `root` as the single writer.
    pub fn open_writer(root: &Path) -> Result<Self> {
        Self::open_writer_on(RepoStorage::local(root))
    }

    /// Opens for reading: no lock, a reader lease, the index read-only.
    pub fn open_on(storage: RepoStorage) -> Result<Self> {
        let config = storage.read_config()?;
        let lease = ReaderLease::acquire(&storage.local_dir)?;
        let index = storage.open_index(&config, true)?;
        Ok(Self {
            storage,
            config,
            index,
            lock: None,
            _lease: Some(lease),
            recovery: Recovery::default(),
        })
    }

    /// Opens as the single writer: takes the lock, then recovers from any interrupted writer.
    pub fn open_writer_on(storage: RepoStorage) -> Result<Self> {
        let config = storage.read_config()?;
        let lock = WriterLock::acquire(&storage.local_dir)?;
        let index = storage.open_index(&config, false)?;
        let mut recovery = crate::recovery::recover(&storage, &index)?;
        recovery.stale_lock.clone_from(&lock.stale_holder);
        Ok(Self {
            storage,
            config,
            index,
            lock: Some(lock),
            _lease: None,
            recovery,
        })
    }

    /// Takes the writer lock without opening the index (for rebuilding it) and discards
    /// staged puts of crashed writers.
    pub fn lock_for_rebuild(storage: &RepoStorage) -> Result<(RepoConfig, WriterLock)> {
        let config = storage.read_config()?;
        let lock = WriterLock::acquire(&storage.local_dir)?;
        storage.backend.clean_staging()?;
        Ok((config, lock))
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
        let fresh = self.storage.open_index(&self.config, true)?;
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
        f(&self.storage.open_index(&self.config, true)?)
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
        reader::load_snapshot(self.backend(), id)
    }

    /// Reads an object by digest, with every check of [`reader::read_object`].
    pub fn read_object(&self, kind: ObjectKind, digest: &[u8; 32]) -> Result<Vec<u8>> {
        reader::read_indexed(&self.index, self.backend(), kind, digest)
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
            digest,
            blocks,
            page_entries,
            page_no,
        )
    }
}
