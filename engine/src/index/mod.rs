//! The RocksDB index: where every object lives, how many references it has, and the
//! snapshot catalog. RocksDB's types stay inside this module: the engine reads through
//! [`Index`]'s methods and changes the index only through [`IndexBatch`] verbs committed by
//! [`Index::commit`].
//!
//! Column families and their records (all integers little-endian):
//!
//! | CF | key | value |
//! |---|---|---|
//! | `chunks` | chunk digest (32) | [`ObjectEntry`] (53 bytes) |
//! | `pages` | page digest (32) | [`ObjectEntry`] |
//! | `snapshots` | snapshot id (32) | encoded snapshot header |
//! | `packs` | pack id (16) | size:u64 objects:u32 indexed_at_us:i64 |
//! | `meta` | `repo_id` | repository id (16) |
//! | `meta` | `retained/` tag id | a retention date, i64 µs ([`Retained`]: `p` pack, `g` page, `s` snapshot) |
//! | `meta` | `encryption` | the repository's encryption when the index was made: `none`, or `aes-256-gcm` and the key fingerprint (16) |
//! | `protected` | snapshot id (32) | empty |
//! | `doomed_packs` | pack id (16) | empty |
//! | `tombstones` | snapshot id (32) | empty: forgotten, its file not yet deleted |
//!
//! Reference counts are hierarchical: a page's count is the number of times snapshot root
//! lists name it; a chunk's count is the number of *live* pages (count > 0) naming it,
//! counted once per occurrence. Snapshot commits change counts only in the same atomic
//! batch (fsynced through the WAL) that adds the catalog entry, so the counts always
//! describe exactly the published snapshots, plus zero-count objects left by interrupted
//! runs (reclaimed by compaction).
//!
//! Every commit is synced: when [`Index::commit`] returns, the batch survives power loss.
//! Everything here can be rebuilt from packs and snapshot files (`ops::rebuild_index`).

mod batch;
mod entry;
mod publishing;
mod retained;
mod scratch;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    WriteOptions, DB,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_format::{ObjectKind, PackId, RepoId, SnapshotHeader, SnapshotId};

use crate::crypto::RepoCrypto;

pub use batch::IndexBatch;
pub use entry::{ObjectEntry, PackEntry, OBJECT_ENTRY_LEN};
pub use publishing::Publishing;
pub use retained::Retained;
pub use scratch::ScratchSet;

use crate::error::{Error, IoContext, Result};
use crate::storage::sim::CrashClock;

const CF_CHUNKS: &str = "chunks";
const CF_PAGES: &str = "pages";
const CF_SNAPSHOTS: &str = "snapshots";
const CF_PACKS: &str = "packs";
const CF_META: &str = "meta";
/// Protected snapshots (mirror of the marker objects).
const CF_PROTECTED: &str = "protected";
/// Packs whose objects were moved by compaction; their files are deleted once no reader
/// that might still use them is running.
const CF_DOOMED: &str = "doomed_packs";
/// Snapshots forgotten whose files may still exist (see [`IndexBatch::forget_snapshot`]).
const CF_TOMBSTONES: &str = "tombstones";
const ALL_CFS: [&str; 8] = [
    CF_CHUNKS,
    CF_PAGES,
    CF_SNAPSHOTS,
    CF_PACKS,
    CF_META,
    CF_PROTECTED,
    CF_DOOMED,
    CF_TOMBSTONES,
];
const META_REPO_ID: &[u8] = b"repo_id";
const META_ENCRYPTION: &[u8] = b"encryption";
const META_DOOM_EPOCH: &[u8] = b"doom_epoch";

impl From<rocksdb::Error> for Error {
    /// RocksDB reports I/O errors as text; a full disk must not be mistaken for damage.
    fn from(e: rocksdb::Error) -> Self {
        let text = e.to_string();
        if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
            Self::NoSpace {
                context: format!("writing the index ({text})"),
            }
        } else if e.kind() == rocksdb::ErrorKind::Corruption {
            // Damage, not a failed operation: `repair --rebuild-index` is the way out.
            Self::IndexCorrupt { what: text }
        } else {
            Self::Index(text)
        }
    }
}

/// Column family holding objects of `kind`.
fn cf_for(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Chunk => CF_CHUNKS,
        ObjectKind::Page => CF_PAGES,
    }
}

/// An open index.
pub struct Index {
    db: DB,
    /// Readers: the secondary instance's directory (dropped after `db`).
    secondary: Option<SecondaryDir>,
    /// Writers: where to publish the sequence hint after each commit, and the DB identity.
    hint: Option<(PathBuf, Vec<u8>)>,
    /// Crash tests: every commit is a step of this clock.
    clock: Option<Arc<CrashClock>>,
    /// Seals catalog entries of an encrypted repository (disk names, tags, identities are
    /// private; the index lies in the repository directory of a local repository).
    catalog: Arc<RepoCrypto>,
}

/// Path of the sequence hint of the index at `path` (`REPO/index` → `REPO/index.seq`).
///
/// Readers open RocksDB read-only next to a live writer, whose flushes and compactions
/// delete WAL and SST files. An open that races with such a deletion either fails or, worse,
/// silently misses the last batches (it read an old MANIFEST whose WAL is gone). So after
/// every commit the writer publishes `"<db identity hex> <latest sequence number>"` here
/// (write to a temporary file, rename), and a reader that read the hint *before* opening
/// retries until its view reaches at least that sequence number. A missing hint, or one of
/// another database (e.g. after a rebuild), is ignored.
pub fn hint_path(path: &Path) -> PathBuf {
    path.with_extension("seq")
}

fn read_hint(path: &Path) -> Option<(Vec<u8>, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (id, seq) = text.trim().split_once(' ')?;
    Some((hex::decode(id).ok()?, seq.parse().ok()?))
}

/// The private directory of a secondary (reader) RocksDB instance, removed when dropped.
/// Readers open the index as *secondary* instances: the mode RocksDB provides for reading
/// next to a live primary, which tails the primary's MANIFEST and WAL instead of racing
/// with its file deletions.
pub struct SecondaryDir(PathBuf);

impl SecondaryDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "tessera-reader-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self(dir))
    }
}

impl Drop for SecondaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether a lookup's blocks may stay in the block cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reads {
    /// Lookups that may come back to the same blocks.
    Cached,
    /// A pass that reads each object once.
    Once,
}

/// The memory all memtables of an index may hold together before RocksDB flushes them.
const MEMTABLE_BUDGET: usize = 8 << 20;

/// How long a reader keeps retrying an open that races with the writer.
const READ_OPEN_ATTEMPTS: u32 = 20;

fn options(block_cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(false);
    opts.create_missing_column_families(false);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_keep_log_file_num(3);
    // All memtables together (every column family): a backup's publish indexes and then
    // counts every new object, and with RocksDB's default (64 MiB per column family) the
    // memory of a first backup grew with the disk until those filled (SPEC.md §7,
    // "Publishing in steps").
    opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
    // One commit writes several column families; their flushes must be recorded in the
    // MANIFEST as one atomic edit, or a reader opening next to a flush can see one column
    // family flushed and another not (a catalog entry missing although later batches are
    // visible).
    opts.set_atomic_flush(true);
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(block_cache);
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    opts
}

/// The identity of the database at `path` open as `db`. A secondary instance (a reader's
/// view) reports an empty one, so it is read from the primary's `IDENTITY` file then, which
/// is what the primary reports (tested below): readers validate their view against the
/// writer's hint with it, and backup leases record it (`leases.rs`).
fn identity_of(db: &DB, path: &Path) -> Result<Vec<u8>> {
    let reported = db.get_db_identity()?;
    if !reported.is_empty() {
        return Ok(reported);
    }
    let file = path.join("IDENTITY");
    let mut bytes = std::fs::read(&file).ctx(|| format!("reading {}", file.display()))?;
    while bytes.last().is_some_and(u8::is_ascii_whitespace) {
        bytes.pop();
    }
    Ok(bytes)
}

/// Opens a reader's view: a secondary instance caught up with the primary, validated
/// against the sequence hint and retried while it races with the writer (see [`hint_path`]).
fn open_read_only_validated(
    opts: &Options,
    path: &Path,
    cache: &Cache,
) -> Result<(DB, SecondaryDir)> {
    let mut last = None;
    for attempt in 0..READ_OPEN_ATTEMPTS {
        let hint = read_hint(&hint_path(path));
        let secondary = SecondaryDir::new()?;
        let opened = DB::open_cf_descriptors_as_secondary(
            opts,
            path,
            &secondary.0,
            descriptors(cache, path, true),
        )
        .and_then(|db| db.try_catch_up_with_primary().map(|()| db));
        match opened {
            Ok(db) => {
                let current = match &hint {
                    Some((identity, seq)) => {
                        identity_of(&db, path).ok().as_ref() != Some(identity)
                            || db.latest_sequence_number() >= *seq
                    }
                    None => true,
                };
                if current {
                    return Ok((db, secondary));
                }
                // A writer committing without pause, not damage: retrying later works.
                last = Some(Error::IndexBusy {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => last = Some(Error::from(e)),
        }
        std::thread::sleep(std::time::Duration::from_millis(
            10 * u64::from(attempt.min(10) + 1),
        ));
    }
    Err(last.unwrap_or_else(|| Error::IndexMissing {
        path: path.to_path_buf(),
    }))
}

/// Descriptors of the column families to open: all of them for writers (missing ones are
/// created: an index made before `tombstones` existed gains it), and for readers those the
/// database has (a reader cannot create one and never needs the newer ones).
fn descriptors(block_cache: &Cache, path: &Path, reader: bool) -> Vec<ColumnFamilyDescriptor> {
    let present = if reader {
        DB::list_cf(&Options::default(), path).ok()
    } else {
        None
    };
    ALL_CFS
        .iter()
        .filter(|n| present.as_ref().is_none_or(|p| p.iter().any(|x| x == *n)))
        .map(|n| ColumnFamilyDescriptor::new(*n, options(block_cache)))
        .collect()
}

impl Index {
    /// Creates a new, empty index at `path` for repository `repo_id`.
    pub fn create(path: &Path, repo_id: RepoId) -> Result<Self> {
        let cache = Cache::new_lru_cache(64 << 20);
        let mut opts = options(&cache);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf_descriptors(&opts, path, descriptors(&cache, path, false))?;
        let index = Self {
            hint: Some((hint_path(path), db.get_db_identity()?)),
            db,
            secondary: None,
            clock: None,
            catalog: Arc::new(RepoCrypto::plain()),
        };
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        index
            .db
            .put_cf_opt(index.cf(CF_META), META_REPO_ID, repo_id.as_bytes(), &wo)?;
        index.publish_hint();
        Ok(index)
    }

    /// Whether this is the writer's index (opened read-write), not a reader's view.
    pub fn is_writer(&self) -> bool {
        self.secondary.is_none()
    }

    /// Opens an existing index; `read_only` opens without taking RocksDB's lock, so readers
    /// can run next to a writer (they see the state as of opening).
    pub fn open(path: &Path, repo_id: RepoId, read_only: bool) -> Result<Self> {
        if !path.join("CURRENT").exists() {
            return Err(Error::IndexMissing {
                path: path.to_path_buf(),
            });
        }
        let cache = Cache::new_lru_cache(64 << 20);
        let opts = options(&cache);
        let index = if read_only {
            let (db, secondary) = open_read_only_validated(&opts, path, &cache)?;
            Self {
                db,
                secondary: Some(secondary),
                hint: None,
                clock: None,
                catalog: Arc::new(RepoCrypto::plain()),
            }
        } else {
            let mut opts = opts;
            opts.create_missing_column_families(true);
            let db = DB::open_cf_descriptors(&opts, path, descriptors(&cache, path, false))?;
            let index = Self {
                hint: Some((hint_path(path), db.get_db_identity()?)),
                db,
                secondary: None,
                clock: None,
                catalog: Arc::new(RepoCrypto::plain()),
            };
            index.publish_hint();
            index
        };
        let stored = index.db.get_cf(index.cf(CF_META), META_REPO_ID)?;
        if stored.as_deref() != Some(repo_id.as_bytes().as_slice()) {
            return Err(Error::IndexCorrupt {
                what: format!(
                    "the index at {} belongs to another repository",
                    path.display()
                ),
            });
        }
        Ok(index)
    }

    /// The repository's encryption as recorded in the index ([`Index::record_encryption`]);
    /// `None` for an index made before it was recorded.
    pub fn recorded_encryption(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_META), META_ENCRYPTION)?)
    }

    /// Records the repository's encryption (`record`, an opaque description including the
    /// key fingerprint), synced. The config is not authenticated; this record, beside the
    /// objects but written only by tessera, lets a writer notice a config replaced by one
    /// that names another encryption (SPEC.md §23.5).
    pub fn record_encryption(&self, record: &[u8]) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        Ok(self
            .db
            .put_cf_opt(self.cf(CF_META), META_ENCRYPTION, record, &wo)?)
    }

    /// Makes every commit a step of `clock` (crash tests).
    #[must_use]
    pub fn with_crash_clock(mut self, clock: Option<Arc<CrashClock>>) -> Self {
        self.clock = clock;
        self
    }

    /// Seals and opens catalog entries under `crypto` (SPEC.md §7: an encrypted
    /// repository's catalog holds sealed headers; a plain one's, headers as they are).
    #[must_use]
    pub fn with_crypto(mut self, crypto: Arc<RepoCrypto>) -> Self {
        self.catalog = crypto;
        self
    }

    fn decode_header(&self, id: SnapshotId, value: &[u8]) -> Result<SnapshotHeader> {
        let corrupt = |e: String| Error::IndexCorrupt {
            what: format!("catalog entry {id}: {e}"),
        };
        let plain = self
            .catalog
            .open_catalog(id.as_bytes(), value)
            .map_err(|e| corrupt(e.to_string()))?;
        SnapshotHeader::decode(&plain).map_err(|e| corrupt(e.to_string()))
    }

    /// Handle of a column family.
    ///
    /// # Panics
    ///
    /// Never: every column family is created with the database and opened with it.
    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every CF in ALL_CFS is created with the database and opened with it, so the lookup cannot fail.
        #[expect(
            clippy::expect_used,
            reason = "column families are fixed at creation and always opened"
        )]
        self.db.cf_handle(name).expect("column family exists")
    }

    /// Looks up an object.
    pub fn get_object(&self, kind: ObjectKind, digest: &[u8; 32]) -> Result<Option<ObjectEntry>> {
        self.db
            .get_pinned_cf(&self.cf(cf_for(kind)), digest)?
            .map(|v| ObjectEntry::decode(&v))
            .transpose()
    }

    /// Whether each of `digests` is present, in one batched lookup.
    pub fn contains_many(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        self.lookup_many(kind, digests, Reads::Cached, |v| Ok(v.is_some()))
    }

    /// [`Self::contains_many`] for a pass over many objects read once (a publish, an
    /// adoption): the blocks it reads do not fill the block cache, which would otherwise
    /// grow to its size with every first backup of a large disk (SPEC.md §7).
    pub fn contains_many_once(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        self.lookup_many(kind, digests, Reads::Once, |v| Ok(v.is_some()))
    }

    /// [`Self::get_many`] for a pass over many objects read once (see
    /// [`Self::contains_many_once`]).
    pub fn get_many_once(
        &self,
        kind: ObjectKind,
        digests: &[[u8; 32]],
    ) -> Result<Vec<Option<ObjectEntry>>> {
        self.lookup_many(kind, digests, Reads::Once, |v| {
            v.map(ObjectEntry::decode).transpose()
        })
    }

    fn lookup_many<T>(
        &self,
        kind: ObjectKind,
        digests: &[[u8; 32]],
        reads: Reads,
        decode: impl Fn(Option<&[u8]>) -> Result<T>,
    ) -> Result<Vec<T>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let cf = self.cf(cf_for(kind));
        let mut ro = rocksdb::ReadOptions::default();
        ro.fill_cache(reads == Reads::Cached);
        let res = self
            .db
            .batched_multi_get_cf_opt(&cf, digests.iter(), false, &ro);
        res.into_iter().map(|r| decode(r?.as_deref())).collect()
    }

    /// Whether each of `digests` is present, renewing the death of those present at count
    /// 0 to now in one synced batch before returning (the writer's verb: the caller holds
    /// the writer lock). A writer that is told an object is held is about to publish a
    /// snapshot naming it, so a compaction within the grace period must keep it (SPEC §13
    /// "Dead objects"). Returns the answers and how many objects were renewed.
    pub fn hold_many(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<(Vec<bool>, usize)> {
        let now = crate::time::now_us();
        let mut renew = self.batch();
        let mut renewed = 0;
        let mut held = Vec::with_capacity(digests.len());
        for (digest, entry) in digests.iter().zip(self.get_many(kind, digests)?) {
            if let Some(mut entry) = entry.filter(|e| e.refcount == 0) {
                entry.dead_since_us = now;
                renew.put_object(kind, digest, &entry);
                renewed += 1;
            }
            held.push(entry.is_some());
        }
        if renewed > 0 {
            self.commit(renew)?;
        }
        Ok((held, renewed))
    }

    /// Whether each of `digests` is present *and referenced* (count > 0), in one batched
    /// lookup: what `tessera serve` tells a pushing client it holds when it cannot take the
    /// writer lock to [`Index::hold_many`] them. A dead object (count 0) may be reclaimed
    /// by a compaction before the client publishes, so the client is told to send it; its
    /// put renews the object's grace instead of storing it again (SPEC §13 "Dead objects").
    pub fn referenced_many(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<bool>> {
        Ok(self
            .get_many(kind, digests)?
            .into_iter()
            .map(|e| e.is_some_and(|e| e.refcount > 0))
            .collect())
    }

    /// Looks up many objects at once.
    pub fn get_many(
        &self,
        kind: ObjectKind,
        digests: &[[u8; 32]],
    ) -> Result<Vec<Option<ObjectEntry>>> {
        self.lookup_many(kind, digests, Reads::Cached, |v| {
            v.map(ObjectEntry::decode).transpose()
        })
    }

    /// Packs waiting for deletion.
    pub fn doomed_packs(&self) -> Result<Vec<PackId>> {
        self.ids(CF_DOOMED, PackId::from_slice)
    }

    /// Protected snapshots.
    pub fn protected(&self) -> Result<std::collections::HashSet<SnapshotId>> {
        Ok(self
            .ids(CF_PROTECTED, SnapshotId::from_slice)?
            .into_iter()
            .collect())
    }

    /// The keys of a column family whose keys are ids (a reader's view may lack a column
    /// family added after the index was created: it is empty then).
    fn ids<T>(
        &self,
        cf: &str,
        parse: fn(&[u8]) -> std::result::Result<T, tessera_format::DecodeError>,
    ) -> Result<Vec<T>> {
        let Some(handle) = self.db.cf_handle(cf) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(handle, IteratorMode::Start) {
            let (k, _) = item?;
            out.push(parse(&k).map_err(|e| Error::IndexCorrupt {
                what: format!("{cf} key: {e}"),
            })?);
        }
        Ok(out)
    }

    /// A new, empty batch of changes.
    pub fn batch(&self) -> IndexBatch<'_> {
        IndexBatch::new(self)
    }

    /// Applies a batch atomically and durably (WAL fsync): when this returns `Ok`, all of
    /// the batch survives power loss; after an error, none or all of it may have.
    pub fn commit(&self, batch: IndexBatch<'_>) -> Result<()> {
        if let Some(clock) = &self.clock {
            clock
                .tick()
                .map_err(|e| Error::io("committing the index", e))?;
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch.batch, &wo)?;
        self.publish_hint();
        Ok(())
    }

    /// Snapshots forgotten whose files may still exist.
    pub fn tombstones(&self) -> Result<Vec<SnapshotId>> {
        self.ids(CF_TOMBSTONES, SnapshotId::from_slice)
    }

    /// Publishes the sequence hint (see [`hint_path`]). Best effort: a missing or old hint
    /// only makes readers less strict, never wrong.
    fn publish_hint(&self) {
        if let Some((path, identity)) = &self.hint {
            let tmp = path.with_extension("seq.tmp");
            let text = format!(
                "{} {}\n",
                hex::encode(identity),
                self.db.latest_sequence_number()
            );
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }

    /// All catalogued snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(SnapshotId, SnapshotHeader)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(&self.cf(CF_SNAPSHOTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            let id = SnapshotId::from_slice(&k).map_err(|e| Error::IndexCorrupt {
                what: e.to_string(),
            })?;
            let header = self.decode_header(id, &v)?;
            out.push((id, header));
        }
        out.sort_by(|a, b| a.1.time_us.cmp(&b.1.time_us).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// The catalog entry of one snapshot.
    pub fn snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotHeader>> {
        self.db
            .get_pinned_cf(self.cf(CF_SNAPSHOTS), id.as_bytes())?
            .map(|v| self.decode_header(id, &v))
            .transpose()
    }

    /// Whether a snapshot is protected.
    pub fn is_protected(&self, id: SnapshotId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_PROTECTED), id.as_bytes())?
            .is_some())
    }

    /// Whether a snapshot is in the catalog.
    pub fn has_snapshot(&self, id: SnapshotId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(&self.cf(CF_SNAPSHOTS), id.as_bytes())?
            .is_some())
    }

    /// How many batches have doomed packs (the `doom_epoch` of `meta`, 0 when none has),
    /// as this view (or the writer's index) sees it: a view that reads epoch `e` includes
    /// every doom recorded with an epoch up to `e` — the epoch is written in the batch that
    /// dooms, which a view includes whole or not at all ([`crate::leases`]).
    pub fn doom_epoch(&self) -> Result<u64> {
        let Some(value) = self.db.get_cf(self.cf(CF_META), META_DOOM_EPOCH)? else {
            return Ok(0);
        };
        let bytes = <[u8; 8]>::try_from(&*value).map_err(|_| Error::IndexCorrupt {
            what: format!("meta doom_epoch is {} bytes, not 8", value.len()),
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// The publication in progress, if any (see [`Publishing`]).
    pub fn publishing(&self) -> Result<Option<Publishing>> {
        let meta = self.cf(CF_META);
        let Some(record) = self.db.get_cf(meta, publishing::META_PUBLISHING)? else {
            return Ok(None);
        };
        let applied = self.db.get_cf(meta, publishing::META_PUBLISHING_APPLIED)?;
        Publishing::decode(&record, applied.as_deref()).map(Some)
    }

    /// The database's identity (a rebuilt index has another), the same through a reader's
    /// view as through the writer.
    pub fn identity(&self) -> Result<Vec<u8>> {
        identity_of(&self.db, Path::new(self.db.path()))
    }

    /// Doomed packs with the doom epoch of the batch that doomed each (0: doomed by a
    /// tessera that did not record it, when no backup could run beside the compaction).
    pub fn doomed_packs_since(&self) -> Result<Vec<(PackId, u64)>> {
        let Some(handle) = self.db.cf_handle(CF_DOOMED) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(handle, IteratorMode::Start) {
            let (k, v) = item?;
            let id = PackId::from_slice(&k).map_err(|e| Error::IndexCorrupt {
                what: format!("{CF_DOOMED} key: {e}"),
            })?;
            let seq = <[u8; 8]>::try_from(&*v).map_or(0, u64::from_le_bytes);
            out.push((id, seq));
        }
        Ok(out)
    }

    /// Whether the pack is catalogued.
    pub fn has_pack(&self, id: PackId) -> Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(&self.cf(CF_PACKS), id.as_bytes())?
            .is_some())
    }

    /// All catalogued packs.
    pub fn packs(&self) -> Result<Vec<(PackId, PackEntry)>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(&self.cf(CF_PACKS), IteratorMode::Start) {
            let (k, v) = item?;
            let id = PackId::from_slice(&k).map_err(|e| Error::IndexCorrupt {
                what: e.to_string(),
            })?;
            out.push((id, PackEntry::decode(&v)?));
        }
        Ok(out)
    }

    /// Calls `f` for every object of `kind`, in digest order.
    pub fn for_each_object(
        &self,
        kind: ObjectKind,
        mut f: impl FnMut([u8; 32], ObjectEntry) -> Result<()>,
    ) -> Result<()> {
        for item in self.db.iterator_cf(
            &self.cf(cf_for(kind)),
            IteratorMode::From(&[], Direction::Forward),
        ) {
            let (k, v) = item?;
            let digest: [u8; 32] = k.as_ref().try_into().map_err(|_| Error::IndexCorrupt {
                what: "object key is not 32 bytes".into(),
            })?;
            f(digest, ObjectEntry::decode(&v)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod identity_tests {
    use super::Index;
    use tessera_format::RepoId;

    /// A reader's view reports the writer's identity (a secondary instance's own is empty:
    /// then backup leases named no database and kept every doomed pack, and readers never
    /// waited for the writer's hint).
    #[test]
    fn a_view_has_the_identity_of_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index");
        let repo_id = RepoId([3; 16]);
        drop(Index::create(&path, repo_id).unwrap());
        let writer = Index::open(&path, repo_id, false).unwrap();
        let id = writer.identity().unwrap();
        assert!(!id.is_empty());
        let view = Index::open(&path, repo_id, true).unwrap();
        assert_eq!(view.identity().unwrap(), id);
        drop((view, writer));
        let rebuilt = dir.path().join("other");
        drop(Index::create(&rebuilt, repo_id).unwrap());
        let other = Index::open(&rebuilt, repo_id, true).unwrap();
        assert_ne!(other.identity().unwrap(), id, "another database");
    }
}
