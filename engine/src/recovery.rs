//! What a writer does when it opens a repository, to finish or undo whatever an interrupted
//! writer left behind. Each step is idempotent, so a crash during recovery is recovered by
//! the next writer in the same way.
//!
//! 1. Staged files in `tmp/` are deleted (a crash while writing a pack or snapshot file).
//! 2. Doomed packs (emptied by compaction) are deleted if no reader holds a lease.
//! 3. Sealed packs the catalog does not know are adopted (a crash between sealing a pack and
//!    indexing it), so a rerun of the interrupted backup reuses them. Doomed packs are not
//!    adopted: their objects live elsewhere now.
//! 4. Snapshot files and protection markers the catalog does not list are deleted: a crash
//!    after writing the file but before the publishing batch (that backup was never
//!    published), or after the batch that forgot a snapshot but before its file was deleted.

use std::collections::HashSet;
use std::path::Path;

use rocksdb::WriteBatch;
use tessera_format::{PackId, SnapshotId};

use crate::backend::{Backend, LocalBackend, Namespace};
use crate::error::Result;
use crate::index::Index;
use crate::readers::NoReaders;
use crate::repo::Recovery;
use crate::store::session::adopt_unindexed_packs;

/// Runs the recovery steps (see module docs). The caller holds the writer lock.
pub fn recover(root: &Path, index: &Index, backend: &LocalBackend) -> Result<Recovery> {
    let mut recovery = Recovery {
        staged_removed: backend.clean_staging()?,
        ..Recovery::default()
    };
    recovery.doomed_packs_deleted = delete_doomed_packs(root, index, backend)?;
    let doomed: HashSet<PackId> = index.doomed_packs()?.into_iter().collect();
    recovery.packs_adopted = adopt_unindexed_packs(index, backend, &doomed)?;
    for ns in [Namespace::Snapshots, Namespace::Protections] {
        for name in backend.list(ns)? {
            let published = match name.parse::<SnapshotId>() {
                Ok(id) => index.has_snapshot(id)?,
                Err(_) => false,
            };
            if !published {
                backend.delete(ns, &name)?;
                if ns == Namespace::Snapshots {
                    recovery.orphan_snapshots_removed += 1;
                }
            }
        }
    }
    Ok(recovery)
}

/// Deletes the files of doomed packs if no reader is running; returns how many.
pub fn delete_doomed_packs(root: &Path, index: &Index, backend: &dyn Backend) -> Result<usize> {
    let doomed = index.doomed_packs()?;
    if doomed.is_empty() {
        return Ok(0);
    }
    let Some(_no_readers) = NoReaders::try_acquire(root)? else {
        return Ok(0);
    };
    let mut batch = WriteBatch::default();
    for pack in &doomed {
        backend.delete(Namespace::Packs, &pack.to_hex())?;
        index.forget_doomed(&mut batch, *pack);
    }
    index.write(batch)?;
    Ok(doomed.len())
}
