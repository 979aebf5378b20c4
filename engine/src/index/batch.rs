//! [`IndexBatch`]: a set of index changes applied atomically by [`Index::commit`]. Its verbs
//! are the only way the engine changes the index, so RocksDB's types stay in this module.

use rocksdb::WriteBatch;
use tessera_format::{ObjectKind, PackId, SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};

use super::{
    cf_for, Index, ObjectEntry, PackEntry, CF_DOOMED, CF_PACKS, CF_PROTECTED, CF_SNAPSHOTS,
    CF_TOMBSTONES,
};

/// Index changes, applied all at once or not at all by [`Index::commit`].
pub struct IndexBatch<'i> {
    index: &'i Index,
    pub(super) batch: WriteBatch,
    changes: usize,
}

impl<'i> IndexBatch<'i> {
    pub(super) fn new(index: &'i Index) -> Self {
        Self {
            index,
            batch: WriteBatch::default(),
            changes: 0,
        }
    }

    /// Whether the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    pub(super) fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.index.cf(cf), key, value);
        self.changes += 1;
    }

    fn delete(&mut self, cf: &str, key: &[u8]) {
        self.batch.delete_cf(self.index.cf(cf), key);
        self.changes += 1;
    }

    /// Records (or replaces) an object's entry.
    pub fn put_object(&mut self, kind: ObjectKind, digest: &[u8; 32], entry: &ObjectEntry) {
        self.put(cf_for(kind), digest, &entry.encode());
    }

    /// Deletes an object's entry.
    pub fn delete_object(&mut self, kind: ObjectKind, digest: &[u8; 32]) {
        self.delete(cf_for(kind), digest);
    }

    /// Records a sealed pack in the catalog.
    pub fn put_pack(&mut self, pack: PackId, entry: PackEntry) {
        self.put(CF_PACKS, pack.as_bytes(), &entry.encode());
    }

    /// Drops a pack from the catalog (its file is gone or quarantined).
    pub fn delete_pack(&mut self, pack: PackId) {
        self.delete(CF_PACKS, pack.as_bytes());
    }

    /// Moves a pack from the catalog to the doomed list (emptied by compaction; its file is
    /// deleted once no reader or running backup can use it), recording `epoch`, which the
    /// batch sets with [`Self::set_doom_epoch`] (see [`crate::leases`]).
    pub fn doom_pack(&mut self, pack: PackId, epoch: u64) {
        self.delete(CF_PACKS, pack.as_bytes());
        self.put(CF_DOOMED, pack.as_bytes(), &epoch.to_le_bytes());
    }

    /// Sets the index's doom epoch ([`super::Index::doom_epoch`]) in this batch: one more
    /// than before, in every batch that dooms packs.
    pub fn set_doom_epoch(&mut self, epoch: u64) {
        self.put(super::CF_META, super::META_DOOM_EPOCH, &epoch.to_le_bytes());
    }

    /// Removes a pack from the doomed list (its file is gone).
    pub fn forget_doomed(&mut self, pack: PackId) {
        self.delete(CF_DOOMED, pack.as_bytes());
    }

    /// Records a publication in progress (see [`super::Publishing`]), none of its pages
    /// applied.
    pub fn begin_publishing(&mut self, record: &super::Publishing) {
        self.put(
            super::CF_META,
            super::publishing::META_PUBLISHING,
            &record.encode(),
        );
        self.delete(super::CF_META, super::publishing::META_PUBLISHING_APPLIED);
    }

    /// Sets how many pages of the publication in progress have had their chunks raised.
    pub fn set_publishing_applied(&mut self, applied: u32) {
        self.put(
            super::CF_META,
            super::publishing::META_PUBLISHING_APPLIED,
            &applied.to_le_bytes(),
        );
    }

    /// Drops the record of the publication in progress.
    pub fn end_publishing(&mut self) {
        self.delete(super::CF_META, super::publishing::META_PUBLISHING);
        self.delete(super::CF_META, super::publishing::META_PUBLISHING_APPLIED);
    }

    /// Adds a snapshot to the catalog; refuses a header that would not decode.
    pub fn put_snapshot(&mut self, id: SnapshotId, header: &SnapshotHeader) -> Result<()> {
        let bytes = header.encode().map_err(|e| {
            Error::Internal(format!(
                "catalog entry of snapshot {id} cannot be encoded: {e}"
            ))
        })?;
        let stored = self
            .index
            .catalog
            .seal_catalog(id.as_bytes(), &bytes)
            .map_err(|e| Error::Internal(format!("sealing the catalog entry of {id}: {e}")))?;
        self.put(CF_SNAPSHOTS, id.as_bytes(), &stored);
        Ok(())
    }

    /// Drops a snapshot (and its protection) from the catalog and leaves a tombstone: its
    /// file, deleted after this batch, is not to be re-indexed if a crash keeps it.
    pub fn forget_snapshot(&mut self, id: SnapshotId) {
        self.delete(CF_SNAPSHOTS, id.as_bytes());
        self.delete(CF_PROTECTED, id.as_bytes());
        self.put(CF_TOMBSTONES, id.as_bytes(), &[]);
    }

    /// Removes a tombstone (the forgotten snapshot's file is gone).
    pub fn clear_tombstone(&mut self, id: SnapshotId) {
        self.delete(CF_TOMBSTONES, id.as_bytes());
    }

    /// Marks or unmarks a snapshot as protected.
    pub fn set_protected(&mut self, id: SnapshotId, protected: bool) {
        if protected {
            self.put(CF_PROTECTED, id.as_bytes(), &[]);
        } else {
            self.delete(CF_PROTECTED, id.as_bytes());
        }
    }
}
