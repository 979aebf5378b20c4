//! A backup's scratch set: the objects it wrote that no index knows yet, on disk.
//!
//! A backup stores beside other writers with a reader's view of the index (SPEC.md §8), so
//! its sealed packs stay unindexed until it publishes. To store a block that repeats within
//! one run only once, it must remember every object it wrote: held in memory, that grew
//! 40 to 80 bytes per object with the disk. The set lives in a small RocksDB instead
//! (`LOCAL/scratch/<pid>.<random>/`, no write-ahead log: nothing in it outlives the run),
//! whose memory is bounded by its write buffers and block cache, whatever the disk's size.
//!
//! The directory holds `owner.lock`, which its backup keeps an exclusive `flock` on. It is
//! created as `<name>.new` and renamed once locked, so a sweeper never finds a named
//! directory without a live lock unless its owner died. Each new scratch set sweeps the
//! directories of dead owners (and `.new` ones over a minute old): a killed backup's set is
//! removed by the next backup, and it is never needed for recovery (the packs it describes
//! are adopted from their footers).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, Options, WriteBatch, WriteOptions, DB};
use tessera_format::ObjectKind;

use crate::error::{Error, IoContext, Result};

const DIR: &str = "scratch";
const LOCK: &str = "owner.lock";

/// See the module docs. Removed from disk when dropped.
pub struct ScratchSet {
    db: Option<DB>,
    dir: PathBuf,
    _owner: File,
}

impl ScratchSet {
    /// Creates a new, empty set under `local_dir` (sweeping those of dead backups first).
    pub fn create(local_dir: &Path) -> Result<Self> {
        let parent = local_dir.join(DIR);
        std::fs::create_dir_all(&parent).ctx(|| format!("creating {}", parent.display()))?;
        sweep(&parent);
        let name = format!("{}.{:016x}", std::process::id(), rand::random::<u64>());
        let staged = parent.join(format!("{name}.new"));
        std::fs::create_dir(&staged).ctx(|| format!("creating {}", staged.display()))?;
        let lock_path = staged.join(LOCK);
        let owner = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .ctx(|| format!("creating {}", lock_path.display()))?;
        owner
            .lock()
            .map_err(|e| Error::io(format!("locking {}", lock_path.display()), e))?;
        let dir = parent.join(name);
        std::fs::rename(&staged, &dir).ctx(|| format!("creating {}", dir.display()))?;
        let db = DB::open(&options(), dir.join("db")).map_err(|e| {
            Error::io(
                format!("creating the scratch set in {}", dir.display()),
                std::io::Error::other(e.into_string()),
            )
        })?;
        Ok(Self {
            db: Some(db),
            dir,
            _owner: owner,
        })
    }

    fn db(&self) -> &DB {
        self.db.as_ref().expect("open until dropped")
    }

    /// Adds objects to the set.
    pub fn insert_many<'a>(
        &self,
        objects: impl IntoIterator<Item = &'a (ObjectKind, [u8; 32])>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (kind, digest) in objects {
            batch.put(key(*kind, digest), []);
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db().write_opt(batch, &wo).map_err(|e| self.error(e))
    }

    /// Whether the set holds the object.
    pub fn contains(&self, kind: ObjectKind, digest: &[u8; 32]) -> Result<bool> {
        Ok(self
            .db()
            .get_pinned(key(kind, digest))
            .map_err(|e| self.error(e))?
            .is_some())
    }

    fn error(&self, e: rocksdb::Error) -> Error {
        Error::io(
            format!("using the scratch set in {}", self.dir.display()),
            std::io::Error::other(e.into_string()),
        )
    }
}

impl Drop for ScratchSet {
    fn drop(&mut self) {
        drop(self.db.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn key(kind: ObjectKind, digest: &[u8; 32]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = kind as u8;
    out[1..].copy_from_slice(digest);
    out
}

/// Small write buffers and cache, bloom filters in the cache: memory stays a few MiB.
fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_write_buffer_size(2 << 20);
    opts.set_max_write_buffer_number(2);
    opts.set_max_background_jobs(1);
    opts.set_max_open_files(64);
    opts.set_keep_log_file_num(1);
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_block_cache(&Cache::new_lru_cache(2 << 20));
    table.set_cache_index_and_filter_blocks(true);
    opts.set_block_based_table_factory(&table);
    opts
}

/// Removes the scratch directories under `parent` whose owner is gone. Best effort: one
/// that cannot be removed now is left for the next sweep.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "new") {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
            if old {
                let _ = std::fs::remove_dir_all(&path);
            }
            continue;
        }
        let dead = File::open(path.join(LOCK)).is_ok_and(|f| f.try_lock().is_ok());
        if dead {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_inserted_and_goes_when_dropped_or_its_owner_dies() {
        let local = tempfile::tempdir().unwrap();
        let set = ScratchSet::create(local.path()).unwrap();
        let a = (ObjectKind::Chunk, [1u8; 32]);
        let b = (ObjectKind::Page, [1u8; 32]);
        set.insert_many(&[a]).unwrap();
        assert!(set.contains(a.0, &a.1).unwrap());
        assert!(!set.contains(b.0, &b.1).unwrap());
        // Many more than one write buffer: still exact.
        let many: Vec<(ObjectKind, [u8; 32])> = (0..200_000u32)
            .map(|i| {
                let mut d = [0u8; 32];
                d[..4].copy_from_slice(&i.to_le_bytes());
                d[31] = 9;
                (ObjectKind::Chunk, d)
            })
            .collect();
        for group in many.chunks(512) {
            set.insert_many(group).unwrap();
        }
        assert!(many
            .iter()
            .step_by(997)
            .all(|(k, d)| set.contains(*k, d).unwrap()));
        let mut absent = many[5].1;
        absent[31] = 8;
        assert!(!set.contains(ObjectKind::Chunk, &absent).unwrap());
        let dir = set.dir.clone();
        // A live owner's set survives another's sweep; a dead owner's does not.
        let other = ScratchSet::create(local.path()).unwrap();
        assert!(dir.exists());
        drop(set);
        assert!(!dir.exists());
        let orphan = local.path().join(DIR).join("1.dead");
        std::fs::create_dir_all(&orphan).unwrap();
        File::create(orphan.join(LOCK)).unwrap();
        drop(ScratchSet::create(local.path()).unwrap());
        assert!(!orphan.exists(), "a dead owner's set was not swept");
        assert!(other.dir.exists());
    }
}
