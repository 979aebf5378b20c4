//! The verification ledger: when each object was last read back intact by `tessera verify`.
//!
//! Verify is a reader: it never writes the index (which belongs to the single writer) and
//! never takes the writer lock. The ledger therefore lives in a store of its own, owned by
//! verify:
//!
//! ```text
//! REPO/ledger.lock   exclusive flock held by the verify that has the ledger open
//! REPO/ledger/       RocksDB, default column family:
//!                      kind:u8 (1 chunk, 2 page) ++ digest:[u8;32]  (33 bytes)
//!                        → verified_at_us:i64 LE ++ pack:[u8;16] ++ offset:u64 LE  (32 bytes)
//!                      "repo_id" → the repository id (16 bytes)
//! ```
//!
//! An entry counts only while the index still places the object at the same pack and offset
//! (compaction moves objects; the moved copy has not been verified). The ledger is a cache:
//! deleting it only makes the next verify read more; entries of objects no longer in the
//! index (forgotten and compacted away) are pruned by every verify that reads data
//! ([`Ledger::prune`]: one merge of the ledger's sorted keys with the index's sorted keys, no
//! memory beyond one write batch); a ledger of another repository (different id) is
//! discarded. Only objects that were read back intact are ever recorded.
//!
//! The same lock also guards updates of the damage marks ([`crate::damage_marks`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use rocksdb::{Options, WriteBatch, DB};
use tessera_format::{ObjectKind, RepoId};

use crate::error::{Error, IoContext, Result};
use crate::index::{Index, ObjectEntry};

const META_REPO_ID: &[u8] = b"repo_id";

/// An open ledger (held exclusively by this process).
pub struct Ledger {
    db: DB,
    lock: LedgerLock,
}

/// The exclusive lock on `REPO/ledger.lock`: held by the verify that has the ledger open, and
/// briefly by a repair updating the damage marks.
pub struct LedgerLock {
    _file: File,
}

impl LedgerLock {
    fn open_file(root: &Path) -> Result<(File, PathBuf)> {
        let lock_path = root.join("ledger.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .ctx(|| format!("opening {}", lock_path.display()))?;
        Ok((file, lock_path))
    }

    /// Takes the lock, failing with a clear message when another verify holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        let (file, lock_path) = Self::open_file(root)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(Error::VerifyRunning { lock: lock_path }),
            Err(TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", lock_path.display()), e))
            }
        }
    }

    /// Takes the lock if nobody holds it (`None` while a verify runs).
    pub fn try_acquire(root: &Path) -> Result<Option<Self>> {
        let (file, lock_path) = Self::open_file(root)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", lock_path.display()), e))
            }
        }
    }
}

/// Path of the ledger database.
pub fn ledger_path(root: &Path) -> PathBuf {
    root.join("ledger")
}

fn key(kind: ObjectKind, digest: &[u8; 32]) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = match kind {
        ObjectKind::Chunk => 1,
        ObjectKind::Page => 2,
    };
    k[1..].copy_from_slice(digest);
    k
}

fn value(at_us: i64, entry: &ObjectEntry) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..8].copy_from_slice(&at_us.to_le_bytes());
    v[8..24].copy_from_slice(entry.pack.as_bytes());
    v[24..].copy_from_slice(&entry.offset.to_le_bytes());
    v
}

impl Ledger {
    /// Opens (creating if needed) the ledger of the repository at `root`. Fails with a clear
    /// message when another verify holds it.
    pub fn open(root: &Path, repo_id: RepoId) -> Result<Self> {
        let lock = LedgerLock::acquire(root)?;
        let path = ledger_path(root);
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let mut db = DB::open(&opts, &path)?;
        let stored = db.get(META_REPO_ID)?;
        if stored.as_deref() != Some(repo_id.as_bytes().as_slice()) {
            // New, or a ledger of another repository: start afresh (still holding the lock).
            drop(db);
            DB::destroy(&Options::default(), &path)?;
            db = DB::open(&opts, &path)?;
            db.put(META_REPO_ID, repo_id.as_bytes())?;
        }
        Ok(Self { db, lock })
    }

    /// When `entry`'s object was last verified at its current location, if ever.
    pub fn verified_at(
        &self,
        kind: ObjectKind,
        digest: &[u8; 32],
        entry: &ObjectEntry,
    ) -> Result<Option<i64>> {
        let Some(v) = self.db.get_pinned(key(kind, digest))? else {
            return Ok(None);
        };
        if v.len() != 32
            || v[8..24] != entry.pack.as_bytes()[..]
            || v[24..] != entry.offset.to_le_bytes()
        {
            return Ok(None);
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&v[..8]);
        Ok(Some(i64::from_le_bytes(at)))
    }

    /// Records objects read back intact at `at_us`.
    pub fn record<'a>(
        &self,
        at_us: i64,
        objects: impl IntoIterator<Item = (ObjectKind, &'a [u8; 32], &'a ObjectEntry)>,
    ) -> Result<u64> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (kind, digest, entry) in objects {
            batch.put(key(kind, digest), value(at_us, entry));
            n += 1;
        }
        self.db.write(batch)?;
        Ok(n)
    }

    /// The lock this ledger holds (it also guards the damage marks).
    pub fn lock(&self) -> &LedgerLock {
        &self.lock
    }

    /// Deletes the entries of objects the index no longer has (forgotten and compacted away):
    /// for each kind, the ledger's keys and the index's keys are both sorted by digest, so
    /// one merge finds them. Returns how many entries were removed.
    pub fn prune(&self, index: &Index) -> Result<u64> {
        let mut removed = 0u64;
        for kind in [ObjectKind::Chunk, ObjectKind::Page] {
            let prefix = key(kind, &[0; 32])[0];
            let mut it = self.db.raw_iterator();
            it.seek([prefix]);
            let mut batch = WriteBatch::default();
            let flush = |batch: &mut WriteBatch| -> Result<()> {
                if batch.len() >= GROUP {
                    self.db.write(std::mem::take(batch))?;
                }
                Ok(())
            };
            // Is the iterator on a ledger key of this kind? Its digest, if so.
            let current = |it: &rocksdb::DBRawIterator<'_>| -> Option<[u8; 32]> {
                let k = it.key()?;
                if k.len() != 33 || k.first() != Some(&prefix) {
                    return None;
                }
                k.get(1..)?.try_into().ok()
            };
            index.for_each_object(kind, |digest, _| {
                while let Some(d) = current(&it) {
                    match d.cmp(&digest) {
                        std::cmp::Ordering::Less => {
                            batch.delete(key(kind, &d));
                            removed += 1;
                            flush(&mut batch)?;
                            it.next();
                        }
                        std::cmp::Ordering::Equal => {
                            it.next();
                            break;
                        }
                        std::cmp::Ordering::Greater => break,
                    }
                }
                Ok(())
            })?;
            while let Some(d) = current(&it) {
                batch.delete(key(kind, &d));
                removed += 1;
                flush(&mut batch)?;
                it.next();
            }
            it.status()?;
            self.db.write(batch)?;
        }
        Ok(removed)
    }

    /// Number of object entries (for tests and reports).
    pub fn entry_count(&self) -> Result<u64> {
        let mut n = 0;
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (k, _) = item?;
            if k.len() == 33 {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Ledger deletions are written in groups of this many.
const GROUP: usize = 4096;
