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
//! index are ignored; a ledger of another repository (different id) is discarded.
//! Only objects that were read back intact are ever recorded.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use rocksdb::{Options, WriteBatch, DB};
use tessera_format::{ObjectKind, RepoId};

use crate::error::{Error, IoContext, Result};
use crate::index::ObjectEntry;

const META_REPO_ID: &[u8] = b"repo_id";

/// An open ledger (held exclusively by this process).
pub struct Ledger {
    db: DB,
    _lock: File,
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
        let lock_path = root.join("ledger.lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .ctx(|| format!("opening {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::io(
                format!("locking {}", lock_path.display()),
                std::io::Error::other(
                    "another `tessera verify` is running on this repository; wait for it to finish",
                ),
            )),
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", lock_path.display()), e))
            }
        }
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
        Ok(Self { db, _lock: lock })
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
}
