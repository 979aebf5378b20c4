//! Per-snapshot space accounting: what a snapshot references, what it alone references
//! (exactly the bytes forgetting it would make reclaimable), and what it shares.

use std::collections::HashSet;

use tessera_format::manifest::block_count;
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{ObjectKind, SnapshotId};

use crate::error::{Error, Result};
use crate::ops::forget::plan_forget;
use crate::repo::Repository;

/// Space figures of one snapshot (stored bytes include record headers).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SnapshotUsage {
    /// Distinct objects (pages and chunks) the snapshot references.
    pub referenced_objects: u64,
    /// Their stored bytes.
    pub referenced_stored_bytes: u64,
    /// Objects no other snapshot references.
    pub exclusive_objects: u64,
    /// Their stored bytes: freed (after compaction) if this snapshot is forgotten.
    pub exclusive_stored_bytes: u64,
    /// Stored bytes shared with other snapshots.
    pub shared_stored_bytes: u64,
}

/// Computes the usage of one snapshot: reads all its pages (cost proportional to its size).
pub fn snapshot_usage(repo: &Repository, id: SnapshotId) -> Result<SnapshotUsage> {
    let snapshot = repo.load_snapshot(id)?;
    let mut pages = HashSet::new();
    let mut chunks = HashSet::new();
    for (disk, root) in snapshot.header.disks.iter().zip(&snapshot.roots) {
        let blocks = block_count(disk.size, disk.block_size);
        for (n, page) in root.iter().enumerate() {
            if pages.insert(page.0) {
                chunks.extend(
                    repo.read_page(*page, blocks, disk.page_entries, n as u64)?
                        .into_iter()
                        .filter(|d| !d.is_zero())
                        .map(|d| d.0),
                );
            }
        }
    }
    let mut usage = SnapshotUsage::default();
    for (kind, set) in [(ObjectKind::Page, pages), (ObjectKind::Chunk, chunks)] {
        let keys: Vec<[u8; 32]> = set.into_iter().collect();
        for group in keys.chunks(4096) {
            for (digest, entry) in group.iter().zip(repo.index().get_many(kind, group)?) {
                let entry = entry.ok_or_else(|| Error::ObjectMissing {
                    kind,
                    digest: hex::encode(digest),
                })?;
                usage.referenced_objects += 1;
                usage.referenced_stored_bytes +=
                    u64::from(entry.stored_len) + RECORD_HEADER_LEN as u64;
            }
        }
    }
    let plan = plan_forget(repo, &[id], true)?;
    usage.exclusive_objects = plan.freed_objects;
    usage.exclusive_stored_bytes = plan.freed_stored_bytes;
    usage.shared_stored_bytes = usage
        .referenced_stored_bytes
        .saturating_sub(plan.freed_stored_bytes);
    Ok(usage)
}

/// Bytes each snapshot alone references, for every snapshot (one forget plan each).
pub fn exclusive_bytes_all(repo: &Repository) -> Result<Vec<(SnapshotId, u64)>> {
    repo.index()
        .snapshots()?
        .into_iter()
        .map(|(id, _)| plan_forget(repo, &[id], true).map(|p| (id, p.freed_stored_bytes)))
        .collect()
}
