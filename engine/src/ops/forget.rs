//! Forgetting snapshots: metadata only. A plan computes, from the snapshots' own root lists
//! and the counts of the objects they reach, exactly which objects would drop to zero
//! references and how many bytes that frees; applying it commits the count changes and the
//! catalog deletions in one atomic batch, then deletes the snapshot files. No block data is
//! read or rewritten; space comes back when compaction rewrites the packs.
//!
//! Cost: one page-count update per root-list entry, plus, for each page that drops to zero,
//! one page read and one update per chunk it lists. Pages shared with surviving snapshots are
//! never read: the cost follows what the forgotten snapshots uniquely own.
//!
//! Crash reasoning: before the batch, nothing changed. The batch drops the snapshots from
//! the catalog and leaves a tombstone for each; their files are deleted after it, then the
//! tombstones. A crash in between leaves tombstoned files, which the next writer's recovery
//! deletes (a snapshot file without a tombstone would be catalogued again: the files are the
//! source of truth).

use std::collections::HashSet;

use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{
    ChunkDigest, ManifestPage, ObjectKind, PageDigest, SnapshotHeader, SnapshotId,
};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::refcount::RefDeltas;
use crate::repo::Repository;
use crate::snapshot_ref::SnapshotRef;
use crate::storage::{ObjectKey, PutMode};

/// What forgetting a set of snapshots would do.
#[derive(Debug, Default)]
pub struct ForgetPlan {
    /// The snapshots, as catalogued.
    pub snapshots: Vec<(SnapshotId, SnapshotHeader)>,
    /// The count changes (all negative).
    pub deltas: RefDeltas,
    /// Objects that drop to zero references.
    pub freed_objects: u64,
    /// Their stored bytes (with record headers): space compaction can reclaim.
    pub freed_stored_bytes: u64,
    /// Raw bytes of the chunks among them.
    pub freed_raw_bytes: u64,
}

/// Plans forgetting `ids` (duplicates are ignored). Fails for protected snapshots unless
/// `allow_protected`.
pub fn plan_forget(
    repo: &Repository,
    ids: &[SnapshotId],
    allow_protected: bool,
) -> Result<ForgetPlan> {
    // Immutable snapshots (SPEC §28) go only once their retention has passed, whatever
    // `allow_protected` says.
    crate::ops::immutable::refuse_if_immutable(repo, ids)?;
    let mut plan = ForgetPlan::default();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        let header = repo
            .index()
            .snapshot(*id)?
            .ok_or_else(|| Error::SnapshotNotFound { query: id.to_hex() })?;
        if !allow_protected && repo.index().is_protected(*id)? {
            return Err(Error::Protected { snapshot: *id });
        }
        let snapshot = repo.load_snapshot(*id)?;
        for p in snapshot.roots.iter().flatten() {
            *plan.deltas.pages.entry(*p).or_default() -= 1;
        }
        plan.snapshots.push((*id, header));
    }
    let pages: Vec<(PageDigest, i64)> = plan.deltas.pages.iter().map(|(d, n)| (*d, *n)).collect();
    for group in pages.chunks(4096) {
        let keys: Vec<[u8; 32]> = group.iter().map(|(d, _)| d.0).collect();
        for ((page, delta), entry) in group
            .iter()
            .zip(repo.index().get_many(ObjectKind::Page, &keys)?)
        {
            let entry = entry.ok_or_else(|| Error::ObjectMissing {
                kind: ObjectKind::Page,
                digest: page.to_hex(),
            })?;
            if i128::from(entry.refcount) + i128::from(*delta) == 0 {
                let raw = repo.read_object(ObjectKind::Page, page.as_bytes())?;
                let digests = ManifestPage::decode(&raw)
                    .map_err(|e| Error::IndexCorrupt {
                        what: format!("page {page}: {e}"),
                    })?
                    .digests;
                plan.deltas.add_chunks(&digests, -1);
                plan.freed_objects += 1;
                plan.freed_stored_bytes += u64::from(entry.stored_len) + RECORD_HEADER_LEN as u64;
            }
        }
    }
    let chunks: Vec<(ChunkDigest, i64)> =
        plan.deltas.chunks.iter().map(|(d, n)| (*d, *n)).collect();
    for group in chunks.chunks(4096) {
        let keys: Vec<[u8; 32]> = group.iter().map(|(d, _)| d.0).collect();
        for ((_, delta), entry) in group
            .iter()
            .zip(repo.index().get_many(ObjectKind::Chunk, &keys)?)
        {
            if let Some(entry) = entry {
                if i128::from(entry.refcount) + i128::from(*delta) == 0 {
                    plan.freed_objects += 1;
                    plan.freed_stored_bytes +=
                        u64::from(entry.stored_len) + RECORD_HEADER_LEN as u64;
                    plan.freed_raw_bytes += u64::from(entry.raw_len);
                }
            }
        }
    }
    Ok(plan)
}

impl ForgetPlan {
    /// What applying the plan frees.
    pub fn freed(&self) -> Freed {
        Freed {
            objects: self.freed_objects,
            stored_bytes: self.freed_stored_bytes,
            raw_bytes: self.freed_raw_bytes,
        }
    }
}

/// What forgetting frees: objects that drop to zero references (reclaimed by compaction).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Freed {
    /// Objects.
    pub objects: u64,
    /// Their stored bytes, with record headers.
    pub stored_bytes: u64,
    /// Raw bytes of the chunks among them.
    pub raw_bytes: u64,
}

/// What `tessera forget` did, or would do with `dry_run`.
#[derive(Debug, Clone, Serialize)]
pub struct ForgetReport {
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// The snapshots, as catalogued (serialized as their ids).
    #[serde(rename = "forgotten", serialize_with = "ids_of")]
    pub snapshots: Vec<(SnapshotId, SnapshotHeader)>,
    /// What forgetting them frees.
    pub freed: Freed,
}

fn ids_of<S: serde::Serializer>(
    snapshots: &[(SnapshotId, SnapshotHeader)],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    let ids: Vec<SnapshotId> = snapshots.iter().map(|(id, _)| *id).collect();
    crate::serde_ids::hex_list(&ids, s)
}

/// Forgets the snapshots `refs` name (plans, then applies unless `dry_run`). `repo` is open
/// as the writer. A protected snapshot is refused ([`Error::Protected`]), before anything
/// changes.
pub fn forget(repo: &Repository, refs: &[SnapshotRef], dry_run: bool) -> Result<ForgetReport> {
    let ids = refs
        .iter()
        .map(|r| repo.resolve(r).map(|(id, _)| id))
        .collect::<Result<Vec<_>>>()?;
    let plan = plan_forget(repo, &ids, false)?;
    if !dry_run {
        apply_forget(repo, &plan)?;
    }
    let freed = plan.freed();
    Ok(ForgetReport {
        dry_run,
        snapshots: plan.snapshots,
        freed,
    })
}

/// What `tessera protect` / `unprotect` did.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProtectReport {
    /// The snapshot.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub snapshot: SnapshotId,
    /// Whether it is protected now.
    pub protected: bool,
}

/// Protects (or unprotects) the snapshot `reference` names; see [`set_protected`].
pub fn protect(
    repo: &Repository,
    reference: &SnapshotRef,
    protected: bool,
) -> Result<ProtectReport> {
    let (snapshot, _) = repo.resolve(reference)?;
    set_protected(repo, snapshot, protected)?;
    Ok(ProtectReport {
        snapshot,
        protected,
    })
}

/// Applies a plan made by [`plan_forget`] on the same writer (nothing may change between).
pub fn apply_forget(repo: &Repository, plan: &ForgetPlan) -> Result<()> {
    let index = repo.index();
    let mut batch = index.batch();
    plan.deltas.stage(index, &mut batch)?;
    for (id, _) in &plan.snapshots {
        batch.forget_snapshot(*id);
    }
    index.commit(batch)?;
    let mut done = index.batch();
    for (id, _) in &plan.snapshots {
        repo.backend().delete(&ObjectKey::protection(*id))?;
        repo.backend().delete(&ObjectKey::snapshot(*id))?;
        done.clear_tombstone(*id);
    }
    index.commit(done)
}

/// Protects or unprotects a snapshot. The marker object is the durable truth (it survives an
/// index rebuild); it is stored before the index learns of protection and deleted after the
/// index forgets it, so a crash can only leave a snapshot more protected than asked.
pub fn set_protected(repo: &Repository, id: SnapshotId, protected: bool) -> Result<()> {
    if !repo.index().has_snapshot(id)? {
        return Err(Error::SnapshotNotFound { query: id.to_hex() });
    }
    let marker = ObjectKey::protection(id);
    let mut batch = repo.index().batch();
    batch.set_protected(id, protected);
    if protected {
        match repo
            .backend()
            .put_bytes(&marker, PutMode::Create, b"protected\n")
        {
            Ok(()) | Err(Error::ObjectExists { .. }) => {}
            Err(e) => return Err(e),
        }
        repo.index().commit(batch)
    } else {
        repo.index().commit(batch)?;
        repo.backend().delete(&marker)
    }
}
