//! The repository façade: creating, opening (as reader or as the single writer), and
//! reading snapshots, pages and chunks.
//!
//! On-disk layout:
//!
//! ```text
//! REPO/config              format parameters (tessera_format::config)
//! REPO/lock                writer lock (see lock.rs)
//! REPO/packs/XY/<id>.pack  sealed packs (XY = first two hex digits of the id)
//! REPO/snapshots/<id>.snap snapshot files (id = SHA-256 of the file)
//! REPO/index/              RocksDB index, rebuildable from packs + snapshots
//! REPO/tmp/                staged files of the current writer
//! ```
//!
//! Concurrency: one writer at a time (the lock); any number of readers next to it. Readers
//! open the index read-only and see the snapshots published when they opened it; packs and
//! snapshot files are immutable, so nothing a reader uses changes under it.
//!
//! Recovery: opening as writer removes staged files, indexes sealed packs the index does not
//! know (a crash between sealing and indexing), and deletes snapshot files the catalog does
//! not list (a crash between writing the file and committing the index batch: that backup
//! was never published, so the old state is restored).

use std::fs;
use std::path::{Path, PathBuf};

use tessera_format::config::DEFAULT_PAGE_ENTRIES;
use tessera_format::manifest::entries_in_page;
use tessera_format::{
    ChunkDigest, Compression, ManifestPage, ObjectKind, PageDigest, RepoConfig, RepoId, Snapshot,
    SnapshotHeader, SnapshotId, FORMAT_VERSION,
};

use crate::backend::{sync_dir, Backend, LocalBackend, Namespace};
use crate::error::{Error, IoContext, Result};
use crate::index::Index;
use crate::lock::WriterLock;
use crate::readers::ReaderLease;
use crate::store::reader::read_object;

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

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            compression: DEFAULT_COMPRESSION,
        }
    }
}

/// What recovery found when a writer opened the repository.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    /// Staged files removed.
    pub staged_removed: usize,
    /// Sealed packs that had not been indexed.
    pub packs_adopted: usize,
    /// Unpublished snapshot files removed.
    pub orphan_snapshots_removed: usize,
    /// Packs emptied by an earlier compaction whose files could now be deleted.
    pub doomed_packs_deleted: usize,
    /// The lock file's content if its previous holder died holding it.
    pub stale_lock: Option<String>,
}

/// An open repository.
pub struct Repository {
    root: PathBuf,
    config: RepoConfig,
    backend: LocalBackend,
    index: Index,
    _lock: Option<WriterLock>,
    _lease: Option<ReaderLease>,
    /// What recovery did (writers only).
    pub recovery: Recovery,
}

fn config_path(root: &Path) -> PathBuf {
    root.join("config")
}

/// Path of the index directory.
pub fn index_path(root: &Path) -> PathBuf {
    root.join("index")
}

/// Reads and decodes the config file.
pub fn read_config(root: &Path) -> Result<RepoConfig> {
    let path = config_path(root);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotARepository {
                path: root.to_path_buf(),
            })
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    RepoConfig::decode(&bytes).map_err(|source| Error::BadConfig { path, source })
}

impl Repository {
    /// Creates a new repository at `root`, which must not exist or be an empty directory.
    pub fn init(root: &Path, opts: InitOptions) -> Result<RepoConfig> {
        if root.exists() {
            let mut entries =
                fs::read_dir(root).ctx(|| format!("inspecting {}", root.display()))?;
            if entries.next().is_some() {
                return Err(Error::AlreadyExists {
                    path: root.to_path_buf(),
                });
            }
        }
        fs::create_dir_all(root).ctx(|| format!("creating {}", root.display()))?;
        LocalBackend::create_layout(root)?;
        let config = RepoConfig {
            format_version: FORMAT_VERSION,
            repo_id: RepoId(rand::random()),
            id_scheme: tessera_format::IdScheme::Sha256,
            compression: opts.compression,
            default_block_size: opts.block_size,
            page_entries: DEFAULT_PAGE_ENTRIES,
            created_at_us: crate::time::now_us(),
        };
        Index::create(&index_path(root), config.repo_id)?;
        // The config is written last: a directory without it is not a repository, so a
        // crash during init leaves nothing that could be mistaken for one.
        let staged = root.join("tmp").join("config.tmp");
        let bytes = config
            .encode()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        fs::write(&staged, bytes).ctx(|| format!("writing {}", staged.display()))?;
        fs::File::open(&staged)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", staged.display()))?;
        fs::rename(&staged, config_path(root))
            .ctx(|| format!("renaming config into {}", root.display()))?;
        sync_dir(root)?;
        Ok(config)
    }

    /// Opens for reading: no lock, index read-only.
    pub fn open(root: &Path) -> Result<Self> {
        let config = read_config(root)?;
        let lease = ReaderLease::acquire(root)?;
        let index = Index::open(&index_path(root), config.repo_id, true)?;
        Ok(Self {
            root: root.to_path_buf(),
            config,
            backend: LocalBackend::new(root),
            index,
            _lock: None,
            _lease: Some(lease),
            recovery: Recovery::default(),
        })
    }

    /// Opens as the single writer: takes the lock, then recovers from any interrupted writer.
    pub fn open_writer(root: &Path) -> Result<Self> {
        let config = read_config(root)?;
        let lock = WriterLock::acquire(root)?;
        let index = Index::open(&index_path(root), config.repo_id, false)?;
        let backend = LocalBackend::new(root);
        let mut recovery = crate::recovery::recover(root, &index, &backend)?;
        recovery.stale_lock.clone_from(&lock.stale_holder);
        Ok(Self {
            root: root.to_path_buf(),
            config,
            backend,
            index,
            _lock: Some(lock),
            _lease: None,
            recovery,
        })
    }

    /// Opens as the writer without opening the index (for rebuilding it).
    pub fn lock_for_rebuild(root: &Path) -> Result<(RepoConfig, WriterLock)> {
        let config = read_config(root)?;
        let lock = WriterLock::acquire(root)?;
        LocalBackend::new(root).clean_staging()?;
        Ok((config, lock))
    }

    /// Repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// The object storage.
    pub fn backend(&self) -> &dyn Backend {
        &self.backend
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Resolves `latest`, `latest@SERIES`, a full id, or a unique id prefix (4+ hex digits).
    pub fn resolve_snapshot(&self, query: &str) -> Result<(SnapshotId, SnapshotHeader)> {
        let all = self.index.snapshots()?;
        let not_found = || Error::SnapshotNotFound {
            query: query.to_string(),
        };
        if query == "latest" {
            return all.into_iter().last().ok_or_else(not_found);
        }
        if let Some(series) = query.strip_prefix("latest@") {
            return all
                .into_iter()
                .rfind(|(_, h)| h.series == series)
                .ok_or_else(not_found);
        }
        let q = query.to_ascii_lowercase();
        if q.len() < 4 || !q.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!(
                "{query:?} is not a snapshot reference: use `latest`, `latest@SERIES`, or 4+ hex digits of an id"
            )));
        }
        let mut matches: Vec<_> = all
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&q))
            .collect();
        match matches.len() {
            0 => Err(not_found()),
            1 => Ok(matches.remove(0)),
            count => Err(Error::AmbiguousSnapshot {
                query: query.to_string(),
                count,
            }),
        }
    }

    /// Reads a snapshot file and checks it against its id.
    pub fn load_snapshot(&self, id: SnapshotId) -> Result<Snapshot> {
        let bytes = self.backend.read_all(Namespace::Snapshots, &id.to_hex())?;
        if SnapshotId::of(&bytes) != id {
            return Err(Error::SnapshotCorrupt {
                id: id.to_hex(),
                reason: "file content does not hash to its name".into(),
            });
        }
        Snapshot::decode(&bytes).map_err(|e| Error::SnapshotCorrupt {
            id: id.to_hex(),
            reason: e.to_string(),
        })
    }

    /// Reads an object by digest, with every check of [`read_object`].
    pub fn read_object(&self, kind: ObjectKind, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let entry = self
            .index
            .get_object(kind, digest)?
            .ok_or_else(|| Error::ObjectMissing {
                kind,
                digest: hex::encode(digest),
            })?;
        read_object(&self.backend, kind, digest, &entry)
    }

    /// Reads manifest page `page_no` of a disk with `blocks` blocks and checks its length.
    pub fn read_page(
        &self,
        digest: PageDigest,
        blocks: u64,
        page_entries: u32,
        page_no: u64,
    ) -> Result<Vec<ChunkDigest>> {
        let raw = self.read_object(ObjectKind::Page, digest.as_bytes())?;
        let page = ManifestPage::decode(&raw).map_err(|e| Error::ObjectCorrupt {
            kind: ObjectKind::Page,
            digest: digest.to_hex(),
            pack: tessera_format::PackId([0; 16]),
            offset: 0,
            reason: e.to_string(),
        })?;
        let expected = entries_in_page(blocks, page_entries, page_no);
        if page.digests.len() as u64 != expected {
            return Err(Error::InvalidArgument(format!(
                "manifest page {digest} has {} entries where {expected} belong",
                page.digests.len()
            )));
        }
        Ok(page.digests)
    }
}
