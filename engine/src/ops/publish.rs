//! Publishing a snapshot: the last step of every operation that creates one (backup, sync,
//! seed import).
//!
//! Preconditions: every object the snapshot references is in a sealed, durable pack and in
//! the index; `refs` holds exactly the count changes publishing it implies (each root-list
//! entry +1 on its page; for each page that goes from count 0 to live, +1 on each of its
//! non-zero chunks — see [`crate::refcount`]).
//!
//! Crash reasoning: the snapshot file is written and made durable first; the catalog entry
//! and all counts then go in one synced index batch. A crash before the batch leaves an
//! unpublished snapshot file, which the next writer's recovery removes; after it, the
//! snapshot is complete.

use std::io::Write;

use rocksdb::WriteBatch;
use tessera_format::{Snapshot, SnapshotId};

use crate::backend::Namespace;
use crate::error::{Error, IoContext, Result};
use crate::refcount::RefDeltas;
use crate::repo::Repository;

/// Writes the snapshot file durably, then commits catalog entry and counts in one batch.
pub fn publish_snapshot(
    repo: &Repository,
    snapshot: &Snapshot,
    refs: &RefDeltas,
) -> Result<SnapshotId> {
    let mut batch = WriteBatch::default();
    refs.stage(repo.index(), &mut batch)?;
    let (id, bytes) = snapshot
        .encode()
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut file = repo.backend().create(Namespace::Snapshots, &id.to_hex())?;
    file.write_all(&bytes)
        .ctx(|| format!("writing snapshot {id}"))?;
    file.commit()?;
    repo.index()
        .put_snapshot(&mut batch, id, &snapshot.header)?;
    repo.index().write(batch)?;
    Ok(id)
}
