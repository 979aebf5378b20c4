//! Publishing a snapshot: the last step of every operation that creates one (backup, sync,
//! seed import), and how recovery and the index rebuild catalogue snapshot files that are
//! already stored.
//!
//! Preconditions: every object the snapshot references is in a sealed, durable pack and in
//! the index; `refs` holds exactly the count changes publishing it implies (each root-list
//! entry +1 on its page; for each page that goes from count 0 to live, +1 on each of its
//! non-zero chunks — see [`crate::refcount`]).
//!
//! Crash reasoning: the snapshot file is the source of truth. It is stored (durably) first;
//! the catalog entry and all counts then go in one synced index batch. A crash between the
//! two leaves a complete snapshot file the index does not list: the next writer's recovery
//! catalogues it ([`catalogue_stored`]), because everything it references was durable before
//! it. So a snapshot is visible either whole or not at all, and once `publish_snapshot`
//! returns it is never lost.

use std::collections::HashSet;

use tessera_format::{ObjectKind, PageDigest, Snapshot, SnapshotId};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::refcount::RefDeltas;
use crate::repo::Repository;
use crate::storage::{Backend, ObjectKey};
use crate::store::reader::read_page;
use crate::store::snapshot_file;

/// Stores the snapshot file durably, then commits catalog entry and counts in one batch.
pub fn publish_snapshot(
    repo: &Repository,
    snapshot: &Snapshot,
    refs: &RefDeltas,
) -> Result<SnapshotId> {
    let (id, bytes) = snapshot_file::encode(repo.crypto(), snapshot)?;
    publish_file(repo, id, &bytes, snapshot, refs)
}

/// [`publish_snapshot`] of a snapshot file already encoded (by this repository, or
/// received from one sharing its keys and checked with
/// [`snapshot_file::decode_canonical`]): `bytes` are stored verbatim under `id`, their
/// SHA-256, so a copy keeps its snapshot's id.
pub fn publish_file(
    repo: &Repository,
    id: SnapshotId,
    bytes: &[u8],
    snapshot: &Snapshot,
    refs: &RefDeltas,
) -> Result<SnapshotId> {
    debug_assert_eq!(SnapshotId::of(bytes), id);
    let mut batch = repo.index().batch();
    refs.stage(repo.index(), &mut batch)?;
    repo.backend()
        .put_content_addressed(&ObjectKey::snapshot(id), bytes)?;
    batch.put_snapshot(id, &snapshot.header)?;
    repo.index().commit(batch)?;
    Ok(id)
}

/// The count changes publishing `snapshot` implies, after checking that every page it names
/// is in the index, readable, and holds the number of entries its position requires. The
/// chunks of pages that become live are checked when the changes are staged (a chunk the
/// index lacks fails [`RefDeltas::stage`]).
pub fn plan_refs(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    snapshot: &Snapshot,
) -> Result<RefDeltas> {
    let mut refs = RefDeltas::default();
    let mut seen: HashSet<PageDigest> = HashSet::new();
    for (disk, roots) in snapshot.header.disks.iter().zip(&snapshot.roots) {
        let blocks = disk.size.div_ceil(u64::from(disk.block_size));
        for (page_no, page) in roots.iter().enumerate() {
            *refs.pages.entry(*page).or_default() += 1;
            if !seen.insert(*page) {
                continue;
            }
            let digests = read_page(
                index,
                backend,
                crypto,
                *page,
                blocks,
                disk.page_entries,
                page_no as u64,
            )
            .map_err(|e| match e {
                Error::ObjectMissing { .. } | Error::ObjectCorrupt { .. } => {
                    Error::SnapshotIncomplete {
                        reason: format!("disk {:?} page {page_no} ({page}): {e}", disk.name),
                    }
                }
                other => other,
            })?;
            let entry = index.get_object(ObjectKind::Page, page.as_bytes())?;
            if entry.is_none_or(|e| e.refcount == 0) {
                refs.add_chunks(&digests, 1);
            }
        }
    }
    Ok(refs)
}

/// Catalogues a snapshot whose file is already stored under `id` (recovery, index rebuild):
/// its counts and catalog entry in one synced batch.
pub fn catalogue_stored(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    id: SnapshotId,
    snapshot: &Snapshot,
) -> Result<()> {
    let refs = plan_refs(index, backend, crypto, snapshot)?;
    let mut batch = index.batch();
    refs.stage(index, &mut batch).map_err(|e| match e {
        Error::ObjectMissing { .. } => Error::SnapshotIncomplete {
            reason: e.to_string(),
        },
        other => other,
    })?;
    batch.put_snapshot(id, &snapshot.header)?;
    index.commit(batch)
}
