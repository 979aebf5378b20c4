//! How `verify` judges the stored snapshot files the catalog does not list (SPEC.md §11b).
//!
//! Such a file is either what a crash between storing a snapshot and cataloguing it left
//! (the next writer's recovery adopts its packs and catalogues it: listed only), or a sound
//! file naming objects the repository lacks (recovery keeps it uncatalogued: a problem,
//! compaction refuses). The difference is decided object by object: the file is excused only
//! when every object it names that the index lacks lies in a stored pack the index does not
//! know yet (what recovery will adopt). Any other unknown pack excuses nothing.
//!
//! Concurrency: a reader's index is a view from when it opened; a writer may have adopted
//! packs and catalogued snapshots since. The judgement is made against a freshly opened view
//! (a writer's own index is current), and the stored packs are listed after it was opened,
//! so a pack adopted in between is seen as indexed by the view, not as unknown.

use std::collections::HashSet;

use tessera_format::{ObjectKind, PackId, Snapshot};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};
use crate::index::Index;
use crate::ops::check::CheckReport;
use crate::repo::Repository;
use crate::serde_ids::kind_name;
use crate::storage::{key, Backend, ObjectKey};
use crate::store::pack_scan::read_pack_contents;
use crate::store::reader::read_page;

/// Lists the stored snapshot files the catalog does not list in `report`, and reports as a
/// problem each one that names objects neither the index nor a pack recovery will adopt
/// holds, or that cannot be read.
pub fn judge_uncatalogued(repo: &Repository, report: &mut CheckReport) -> Result<()> {
    let ids = repo.uncatalogued_snapshots()?;
    if ids.is_empty() {
        return Ok(());
    }
    repo.with_current_index(|index| {
        let adoptable = adoptable_objects(index, repo.backend())?;
        for id in ids {
            let judged = repo
                .load_snapshot(id)
                .and_then(|s| missing_objects(index, repo.backend(), repo.crypto(), &s));
            let problem = match judged {
                Ok(missing) => {
                    missing
                        .iter()
                        .find(|o| !adoptable.contains(o))
                        .map(|(kind, digest)| {
                            format!(
                                "{} {} is not in the repository",
                                kind_name(*kind),
                                hex::encode(digest)
                            )
                        })
                }
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = problem {
                report.problems.push(format!(
                    "snapshot {id}: stored but not catalogued: {why} (bring the pack back, \
                     `tessera repair REPO --from OTHER` from a repository that has it, or \
                     `tessera repair REPO --quarantine`)"
                ));
            }
            report.uncatalogued_snapshot_files.push(id);
        }
        Ok(())
    })
}

/// The objects in stored packs that `index` neither knows nor has doomed: what the next
/// writer's recovery adopts. A pack that cannot be read contributes nothing.
fn adoptable_objects(
    index: &Index,
    backend: &dyn Backend,
) -> Result<HashSet<(ObjectKind, [u8; 32])>> {
    let mut known: HashSet<PackId> = index.packs()?.into_iter().map(|(p, _)| p).collect();
    known.extend(index.doomed_packs()?);
    let mut objects = HashSet::new();
    for pack in backend
        .list(key::PACKS)?
        .iter()
        .filter_map(ObjectKey::as_pack)
        .filter(|p| !known.contains(p))
    {
        if let Ok(contents) = read_pack_contents(backend, pack) {
            objects.extend(
                contents
                    .entries
                    .iter()
                    .map(|e| (e.info.kind, e.info.digest.0)),
            );
        }
    }
    Ok(objects)
}

/// The objects `snapshot` names that `index` lacks: its missing pages, and the missing chunks
/// of the pages it has (the chunks of a missing page are not known, and need not be: the
/// page's pack is the one that would hold them). Zero blocks are never stored.
fn missing_objects(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    snapshot: &Snapshot,
) -> Result<Vec<(ObjectKind, [u8; 32])>> {
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    for (disk, roots) in snapshot.header.disks.iter().zip(&snapshot.roots) {
        let blocks = disk.size.div_ceil(u64::from(disk.block_size));
        for (page_no, page) in roots.iter().enumerate() {
            if !seen.insert(*page) {
                continue;
            }
            if index
                .get_object(ObjectKind::Page, page.as_bytes())?
                .is_none()
            {
                missing.push((ObjectKind::Page, page.0));
                continue;
            }
            let chunks: Vec<[u8; 32]> = read_page(
                index,
                backend,
                crypto,
                *page,
                blocks,
                disk.page_entries,
                page_no as u64,
            )
            .map_err(|e| Error::SnapshotIncomplete {
                reason: format!("disk {:?} page {page_no} ({page}): {e}", disk.name),
            })?
            .iter()
            .filter(|c| !c.is_zero())
            .map(|c| c.0)
            .collect();
            let present = index.contains_many(ObjectKind::Chunk, &chunks)?;
            missing.extend(
                chunks
                    .iter()
                    .zip(present)
                    .filter(|(_, p)| !p)
                    .map(|(c, _)| (ObjectKind::Chunk, *c)),
            );
        }
    }
    missing.sort_unstable();
    missing.dedup();
    Ok(missing)
}
