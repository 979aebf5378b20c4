//! The RocksDB index: where every object lives, how many references it has, when it was
//! last verified, and the snapshot catalog.
//!
//! Column families and their records (all integers little-endian):
//!
//! | CF | key | value |
//! |---|---|---|
//! | `chunks` | chunk digest (32) | [`ObjectEntry`] (53 bytes) |
//! | `pages` | page digest (32) | [`ObjectEntry`] |
//! | `snapshots` | snapshot id (32) | encoded snapshot header |
//! | `packs` | pack id (16) | size:u64 objects:u32 |
//! | `meta` | `repo_id` | repository id (16) |
//! | `protected` | snapshot id (32) | empty |
//! | `doomed_packs` | pack id (16) | empty |
//!
//! Reference counts are hierarchical: a page's count is the number of times snapshot root
//! lists name it; a chunk's count is the number of *live* pages (count > 0) naming it,
//! counted once per occurrence. Snapshot commits change counts only in the same atomic
//! `WriteBatch` (fsynced through the WAL) that adds the catalog entry, so the counts always
//! describe exactly the published snapshots, plus zero-count objects left by interrupted
//! runs (reclaimed by compaction).
//!
//! Everything here can be rebuilt from packs and snapshot files (`ops::rebuild_index`).

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};
use std::path::{Path, PathBuf};
use tessera_format::codec::{put_i64, put_u32, put_u64, Reader};
use tessera_format::{Codec, ObjectKind, PackId, RepoId, SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};

/// Column family names.
pub const CF_CHUNKS: &str = "chunks";
/// Manifest pages.
pub const CF_PAGES: &str = "pages";
/// Snapshot catalog.
pub const CF_SNAPSHOTS: &str = "snapshots";
/// Pack catalog.
pub const CF_PACKS: &str = "packs";
/// Miscellaneous.
pub const CF_META: &str = "meta";
/// Protected snapshots (mirror of the `protected/` marker files).
pub const CF_PROTECTED: &str = "protected";
/// Packs whose objects were moved by compaction; their files are deleted once no reader
/// that might still use them is running.
pub const CF_DOOMED: &str = "doomed_packs";
const ALL_CFS: [&str; 7] = [
    CF_CHUNKS,
    CF_PAGES,
    CF_SNAPSHOTS,
    CF_PACKS,
    CF_META,
    CF_PROTECTED,
    CF_DOOMED,
];
const META_REPO_ID: &[u8] = b"repo_id";

/// Index record of one stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Pack holding the object.
    pub pack: PackId,
    /// Offset of its record header in the pack.
    pub offset: u64,
    /// Stored length.
    pub stored_len: u32,
    /// Raw length.
    pub raw_len: u32,
    /// Stored encoding.
    pub codec: Codec,
    /// CRC-32C of the stored bytes.
    pub stored_crc: u32,
    /// Hierarchical reference count.
    pub refcount: u64,
    /// Last successful verification, Unix microseconds (0 = never).
    pub verified_at_us: i64,
}

/// Encoded size of an [`ObjectEntry`].
pub const OBJECT_ENTRY_LEN: usize = 53;

impl ObjectEntry {
    /// The same object (same count) at its new location `fe` in `pack`, not yet verified there.
    #[must_use]
    pub fn relocated(&self, pack: PackId, fe: &tessera_format::pack::FooterEntry) -> Self {
        Self {
            pack,
            offset: fe.offset,
            stored_len: fe.info.stored_len,
            raw_len: fe.info.raw_len,
            codec: fe.info.codec,
            stored_crc: fe.info.stored_crc,
            verified_at_us: 0,
            ..*self
        }
    }

    /// Encodes the entry.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(OBJECT_ENTRY_LEN);
        out.extend_from_slice(self.pack.as_bytes());
        put_u64(&mut out, self.offset);
        put_u32(&mut out, self.stored_len);
        put_u32(&mut out, self.raw_len);
        out.push(self.codec as u8);
        put_u32(&mut out, self.stored_crc);
        put_u64(&mut out, self.refcount);
        put_i64(&mut out, self.verified_at_us);
        out
    }

    /// Decodes an entry.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let corrupt = |e: tessera_format::DecodeError| Error::IndexCorrupt {
            what: e.to_string(),
        };
        let mut r = Reader::new(buf, "index object entry");
        let entry = Self {
            pack: PackId(r.array().map_err(corrupt)?),
            offset: r.u64().map_err(corrupt)?,
            stored_len: r.u32().map_err(corrupt)?,
            raw_len: r.u32().map_err(corrupt)?,
            codec: Codec::try_from(r.u8().map_err(corrupt)?).map_err(corrupt)?,
            stored_crc: r.u32().map_err(corrupt)?,
            refcount: r.u64().map_err(corrupt)?,
            verified_at_us: r.i64().map_err(corrupt)?,
        };
        r.finish().map_err(corrupt)?;
        Ok(entry)
    }
}

/// Column family holding objects of `kind`.
pub fn cf_for(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Chunk => CF_CHUNKS,
        ObjectKind::Page => CF_PAGES,
    }
}

/// Pack catalog record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// File size.
    pub size: u64,
    /// Number of objects.
    pub objects: u32,
}

impl PackEntry {
    fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        put_u64(&mut out, self.size);
        put_u32(&mut out, self.objects);
        out
    }

    fn decode(buf: &[u8]) -> Result<Self> {
        let corrupt = |e: tessera_format::DecodeError| Error::IndexCorrupt {
            what: e.to_string(),
        };
        let mut r = Reader::new(buf, "index pack entry");
        Ok(Self {
            size: r.u64().map_err(corrupt)?,
            objects: r.u32().map_err(corrupt)?,
        })
    }
}

/// An open index.
pub struct Index {
    db: DB,
    /// Readers: the secondary instance's directory (dropped after `db`).
    _secondary: Option<SecondaryDir>,
    /// Writers: where to publish the sequence hint after each commit, and the DB identity.
    hint: Option<(PathBuf, Vec<u8>)>,
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

/// How long a reader keeps retrying an open that races with the writer.
const READ_OPEN_ATTEMPTS: u32 = 20;

fn options(block_cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(false);
    opts.create_missing_column_families(false);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_keep_log_file_num(3);
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
        let opened =
            DB::open_cf_descriptors_as_secondary(opts, path, &secondary.0, descriptors(cache))
                .and_then(|db| db.try_catch_up_with_primary().map(|()| db));
        match opened {
            Ok(db) => {
                let current = match &hint {
                    Some((identity, seq)) => {
                        db.get_db_identity().ok().as_ref() != Some(identity)
                            || db.latest_sequence_number() >= *seq
                    }
                    None => true,
                };
                if current {
                    return Ok((db, secondary));
                }
                last = Some(Error::IndexCorrupt {
                    what: format!(
                        "the index at {} kept changing while it was opened; retry",
                        path.display()
                    ),
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

fn descriptors(block_cache: &Cache) -> Vec<ColumnFamilyDescriptor> {
    ALL_CFS
        .iter()
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
        let db = DB::open_cf_descriptors(&opts, path, descriptors(&cache))?;
        let index = Self {
            hint: Some((hint_path(path), db.get_db_identity()?)),
            db,
            _secondary: None,
        };
        let mut batch = WriteBatch::default();
        batch.put_cf(index.cf(CF_META), META_REPO_ID, repo_id.as_bytes());
        index.write(batch)?;
        Ok(index)
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
                _secondary: Some(secondary),
                hint: None,
            }
        } else {
            let db = DB::open_cf_descriptors(&opts, path, descriptors(&cache))?;
            let index = Self {
                hint: Some((hint_path(path), db.get_db_identity()?)),
                db,
                _secondary: None,
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

    /// Handle of a column family.
    ///
    /// # Panics
    ///
    /// Never: every column family is created with the database and opened with it.
    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
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
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let cf = self.cf(cf_for(kind));
        let res = self.db.batched_multi_get_cf(&cf, digests.iter(), false);
        res.into_iter().map(|r| Ok(r?.is_some())).collect()
    }

    /// Looks up many objects at once.
    pub fn get_many(
        &self,
        kind: ObjectKind,
        digests: &[[u8; 32]],
    ) -> Result<Vec<Option<ObjectEntry>>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let cf = self.cf(cf_for(kind));
        let res = self.db.batched_multi_get_cf(&cf, digests.iter(), false);
        res.into_iter()
            .map(|r| r?.map(|v| ObjectEntry::decode(&v)).transpose())
            .collect()
    }

    /// Adds an object put to `batch`.
    pub fn put_object(
        &self,
        batch: &mut WriteBatch,
        kind: ObjectKind,
        digest: &[u8; 32],
        entry: &ObjectEntry,
    ) {
        batch.put_cf(&self.cf(cf_for(kind)), digest, entry.encode());
    }

    /// Adds a pack catalog put to `batch`.
    pub fn put_pack(&self, batch: &mut WriteBatch, pack: PackId, entry: PackEntry) {
        batch.put_cf(&self.cf(CF_PACKS), pack.as_bytes(), entry.encode());
    }

    /// Adds a snapshot catalog put to `batch`; refuses a header that would not decode.
    pub fn put_snapshot(
        &self,
        batch: &mut WriteBatch,
        id: SnapshotId,
        header: &SnapshotHeader,
    ) -> Result<()> {
        let bytes = header
            .encode()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        batch.put_cf(&self.cf(CF_SNAPSHOTS), id.as_bytes(), bytes);
        Ok(())
    }

    /// Adds a snapshot catalog deletion (and of its protection) to `batch`.
    pub fn delete_snapshot(&self, batch: &mut WriteBatch, id: SnapshotId) {
        batch.delete_cf(self.cf(CF_SNAPSHOTS), id.as_bytes());
        batch.delete_cf(self.cf(CF_PROTECTED), id.as_bytes());
    }

    /// Adds an object deletion to `batch`.
    pub fn delete_object(&self, batch: &mut WriteBatch, kind: ObjectKind, digest: &[u8; 32]) {
        batch.delete_cf(self.cf(cf_for(kind)), digest);
    }

    /// Moves a pack from the catalog to the doomed list in `batch`.
    pub fn doom_pack(&self, batch: &mut WriteBatch, pack: PackId) {
        batch.delete_cf(self.cf(CF_PACKS), pack.as_bytes());
        batch.put_cf(self.cf(CF_DOOMED), pack.as_bytes(), []);
    }

    /// Removes a pack from the doomed list (its file is gone).
    pub fn forget_doomed(&self, batch: &mut WriteBatch, pack: PackId) {
        batch.delete_cf(self.cf(CF_DOOMED), pack.as_bytes());
    }

    /// Packs waiting for deletion.
    pub fn doomed_packs(&self) -> Result<Vec<PackId>> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_DOOMED), IteratorMode::Start) {
            let (k, _) = item?;
            out.push(PackId::from_slice(&k).map_err(|e| Error::IndexCorrupt {
                what: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Marks or unmarks a snapshot as protected in `batch`.
    pub fn set_protected(&self, batch: &mut WriteBatch, id: SnapshotId, protected: bool) {
        if protected {
            batch.put_cf(self.cf(CF_PROTECTED), id.as_bytes(), []);
        } else {
            batch.delete_cf(self.cf(CF_PROTECTED), id.as_bytes());
        }
    }

    /// Protected snapshots.
    pub fn protected(&self) -> Result<std::collections::HashSet<SnapshotId>> {
        let mut out = std::collections::HashSet::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_PROTECTED), IteratorMode::Start)
        {
            let (k, _) = item?;
            out.insert(SnapshotId::from_slice(&k).map_err(|e| Error::IndexCorrupt {
                what: e.to_string(),
            })?);
        }
        Ok(out)
    }

    /// Applies a batch atomically and durably (WAL fsync).
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        self.publish_hint();
        Ok(())
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
            let header = SnapshotHeader::decode(&v).map_err(|e| Error::IndexCorrupt {
                what: format!("catalog entry {id}: {e}"),
            })?;
            out.push((id, header));
        }
        out.sort_by(|a, b| a.1.time_us.cmp(&b.1.time_us).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// The catalog entry of one snapshot.
    pub fn snapshot(&self, id: SnapshotId) -> Result<Option<SnapshotHeader>> {
        self.db
            .get_pinned_cf(self.cf(CF_SNAPSHOTS), id.as_bytes())?
            .map(|v| {
                SnapshotHeader::decode(&v).map_err(|e| Error::IndexCorrupt {
                    what: format!("catalog entry {id}: {e}"),
                })
            })
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
