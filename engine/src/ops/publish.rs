//! Publishing a snapshot: the last step of every operation that creates one (backup, sync,
//! seed import), and how recovery and the index rebuild catalogue snapshot files that are
//! already stored.
//!
//! Preconditions: every object the snapshot references is in a sealed, durable pack and in
//! the index, and the caller holds the writer lock. The count changes are derived here, from
//! the index as it is now: each root-list entry +1 on its page; for each page at count 0,
//! +1 on each of its non-zero chunks (see [`crate::refcount`]). Nothing per chunk is held in
//! memory beyond one group ([`PUBLISH_GROUP`]): a publication that raises more chunks than
//! that is committed in steps (see [`crate::index::Publishing`]).
//!
//! Crash reasoning: the snapshot file is the source of truth. It is stored (durably) first;
//! the catalog entry and the page counts then go in one synced index batch, the last one.
//! A crash before it leaves a complete snapshot file the index does not list: the next
//! writer's recovery undoes any applied steps ([`undo_publishing`]) and catalogues it
//! ([`catalogue_stored`]), because everything it references was durable before it. So a
//! snapshot is visible either whole or not at all, and once `publish_snapshot` returns it is
//! never lost.

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use rayon::prelude::*;
use tessera_format::{ChunkDigest, ObjectKind, PageDigest, Snapshot, SnapshotHeader, SnapshotId};

use crate::crypto::RepoCrypto;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{Index, IndexBatch, Publishing};
use crate::ops::immutable;
use crate::refcount::stage_counts;
use crate::repo::Repository;
use crate::storage::{Backend, ObjectKey};
use crate::store::reader::{decode_page, read_indexed, read_page};
use crate::store::snapshot_file;

/// Chunk count updates one publishing batch holds at most (about 100 bytes each in memory):
/// 32768 is 2 GiB of new 64 KiB blocks per step.
pub const PUBLISH_GROUP: usize = 32 * 1024;

/// Pages read at once (in parallel) while raising their chunks.
const PAGES_AT_ONCE: usize = 64;

/// Stores the snapshot file durably, then commits catalog entry and counts.
pub fn publish_snapshot(repo: &Repository, snapshot: &Snapshot) -> Result<SnapshotId> {
    let (id, bytes) = snapshot_file::encode(repo.crypto(), snapshot)?;
    publish_file(repo, id, &bytes, snapshot)
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
) -> Result<SnapshotId> {
    debug_assert_eq!(SnapshotId::of(bytes), id);
    let counts = Counts {
        index: repo.index(),
        backend: repo.backend(),
        crypto: repo.crypto(),
        group: repo.storage().publish_group,
    };
    let plan = counts.plan(snapshot)?;
    // Immutable backups (SPEC §28): every pack the snapshot uses is retained before its
    // file is stored, and the file is stored retained (before the catalog entry).
    let policy = immutable::policy_for_publish(repo)?;
    let retention = policy
        .as_ref()
        .map(|p| immutable::retain_for_publish(immutable::Store::of(repo), snapshot, p))
        .transpose()?;
    // The last moment before anything of the snapshot becomes visible.
    repo.check_series_lease()?;
    let store = || match (&policy, retention) {
        (Some(policy), Some(r))
            if r.needed && r.until_us > immutable::store_now(repo.backend())? =>
        {
            immutable::store_file(immutable::Store::of(repo), id, bytes, r.until_us, policy)
        }
        _ => repo
            .backend()
            .put_content_addressed(&ObjectKey::snapshot(id), bytes),
    };
    counts.commit(&plan, id, &snapshot.header, &store)?;
    Ok(id)
}

/// Checks that every page `snapshot` names is in the index, readable, and holds the number
/// of entries its position requires. The chunks of its pages are checked when it is
/// published (a chunk the index lacks fails it with [`Error::ObjectMissing`]).
pub fn check_pages(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    snapshot: &Snapshot,
) -> Result<()> {
    let mut seen: HashSet<PageDigest> = HashSet::new();
    for (disk, roots) in snapshot.header.disks.iter().zip(&snapshot.roots) {
        let blocks = disk.size.div_ceil(u64::from(disk.block_size));
        for (page_no, page) in roots.iter().enumerate() {
            if !seen.insert(*page) {
                continue;
            }
            read_page(
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
        }
    }
    Ok(())
}

/// Catalogues a snapshot whose file is already stored under `id` (recovery, index rebuild):
/// its counts and catalog entry, in steps of `group` chunk updates.
pub fn catalogue_stored(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    group: usize,
    id: SnapshotId,
    snapshot: &Snapshot,
) -> Result<()> {
    check_pages(index, backend, crypto, snapshot)?;
    let counts = Counts {
        index,
        backend,
        crypto,
        group,
    };
    let incomplete = |e| match e {
        Error::ObjectMissing { .. } => Error::SnapshotIncomplete {
            reason: e.to_string(),
        },
        other => other,
    };
    let plan = counts.plan(snapshot).map_err(incomplete)?;
    if immutable::effective_policy(index, backend)?.is_some() {
        let store = immutable::Store {
            index,
            backend,
            crypto,
        };
        immutable::record_stored(store, id);
    }
    counts
        .commit(&plan, id, &snapshot.header, &|| Ok(()))
        .map_err(incomplete)
}

/// Undoes the applied steps of a publication that did not finish (the caller holds the
/// writer lock: its publisher died, or failed and is undoing its own): lowers the chunks it
/// raised again, last step first, and drops its record. Returns the snapshot it was
/// publishing and the pages whose chunks could not be lowered because the page is damaged or
/// missing (their counts stay one too high, which keeps objects rather than losing them;
/// `verify` reports them and `repair --recount` recounts). A page that cannot be read for
/// any other reason (the store failing) fails the undo, and the record stays for the next
/// writer to retry. Its stored snapshot file is catalogued afterwards like any other.
pub fn undo_publishing(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
) -> Result<Option<(SnapshotId, Vec<String>)>> {
    let Some(record) = index.publishing()? else {
        return Ok(None);
    };
    let counts = Counts {
        index,
        backend,
        crypto,
        group: PUBLISH_GROUP,
    };
    let mut skipped = Vec::new();
    let mut applied = record.applied as usize;
    while applied > 0 {
        let start = applied.saturating_sub(PAGES_AT_ONCE);
        let mut batch = index.batch();
        skipped.extend(counts.raise(&mut batch, &record.pages[start..applied], -1, true)?);
        batch.set_publishing_applied(start as u32);
        index.commit(batch)?;
        applied = start;
    }
    let mut batch = index.batch();
    batch.end_publishing();
    index.commit(batch)?;
    Ok(Some((record.snapshot, skipped)))
}

/// The chunk references a publication in progress (seen through a reader's view) has
/// already added, which the catalogued snapshots do not account for (see
/// [`crate::index::Publishing`]).
pub fn applied_by_publishing(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
) -> Result<HashMap<ChunkDigest, u64>> {
    let mut out = HashMap::new();
    let Some(record) = index.publishing()? else {
        return Ok(out);
    };
    for page in &record.pages[..record.applied as usize] {
        let digests = match page_digests(index, backend, crypto, *page) {
            Ok(d) => d,
            // Its chunks then show counts one above what is expected: reported.
            Err(e) if e.kind() == ErrorKind::Damage => continue,
            Err(e) => return Err(e),
        };
        for d in digests.iter().filter(|d| !d.is_zero()) {
            *out.entry(*d).or_default() += 1;
        }
    }
    Ok(out)
}

/// What publishing one snapshot changes, planned from the index as it is now.
struct Plan {
    /// Each page's new references (one per root-list entry naming it).
    pages: Vec<([u8; 32], i64)>,
    /// The pages at count 0 now, whose chunks gain a reference each.
    activated: Vec<PageDigest>,
    /// `activated` cut into steps of at most about a group of chunk updates.
    steps: Vec<Range<usize>>,
}

/// The index and store a publication reads and writes, and its group size.
struct Counts<'a> {
    index: &'a Index,
    backend: &'a dyn Backend,
    crypto: &'a RepoCrypto,
    group: usize,
}

impl Counts<'_> {
    /// Plans the publication of `snapshot`: every page must be indexed, and every chunk of
    /// the pages it brings to life too ([`Error::ObjectMissing`] otherwise). Nothing is
    /// written.
    fn plan(&self, snapshot: &Snapshot) -> Result<Plan> {
        let mut refs: HashMap<PageDigest, i64> = HashMap::new();
        for p in snapshot.roots.iter().flatten() {
            *refs.entry(*p).or_default() += 1;
        }
        let mut pages: Vec<([u8; 32], i64)> = refs.into_iter().map(|(d, n)| (d.0, n)).collect();
        pages.sort_unstable();
        let mut activated = Vec::new();
        for group in pages.chunks(4096) {
            let keys: Vec<[u8; 32]> = group.iter().map(|(d, _)| *d).collect();
            for (digest, entry) in keys
                .iter()
                .zip(self.index.get_many_once(ObjectKind::Page, &keys)?)
            {
                let entry = entry.ok_or_else(|| Error::ObjectMissing {
                    kind: ObjectKind::Page,
                    digest: hex::encode(digest),
                })?;
                if entry.refcount == 0 {
                    activated.push(PageDigest(*digest));
                }
            }
        }
        let mut steps = Vec::new();
        let (mut start, mut in_step) = (0, 0usize);
        for (at, group) in activated.chunks(PAGES_AT_ONCE).enumerate() {
            for (i, digests) in self.read_pages(group)?.into_iter().enumerate() {
                let keys: Vec<[u8; 32]> = digests
                    .iter()
                    .filter(|d| !d.is_zero())
                    .map(|d| d.0)
                    .collect();
                let present = self.index.contains_many_once(ObjectKind::Chunk, &keys)?;
                if let Some((d, _)) = keys.iter().zip(&present).find(|(_, p)| !**p) {
                    return Err(Error::ObjectMissing {
                        kind: ObjectKind::Chunk,
                        digest: hex::encode(d),
                    });
                }
                in_step += keys.len();
                if in_step >= self.group {
                    let end = at * PAGES_AT_ONCE + i + 1;
                    steps.push(start..end);
                    (start, in_step) = (end, 0);
                }
            }
        }
        if start < activated.len() {
            steps.push(start..activated.len());
        }
        // Refused before the snapshot file is stored (see [`Self::commit`]).
        if steps.len() > 1 {
            if let Some(other) = self.index.publishing()? {
                return Err(Error::Refused {
                    reason: format!(
                        "snapshot {} is still recorded as being published (its publish failed and could not undo its steps); nothing was published: run the command again, and the repository's recovery undoes it first",
                        other.snapshot
                    ),
                });
            }
        }
        Ok(Plan {
            pages,
            activated,
            steps,
        })
    }

    /// Stores the file and commits a planned publication of snapshot `id`: in one batch,
    /// or in steps under a [`Publishing`] record when its chunk updates exceed one group.
    ///
    /// A failure after the record was committed undoes the applied steps before returning
    /// (if that fails too, the record stays, [`Self::plan`] refuses the next publication in
    /// steps, and the next writer's recovery undoes it): a record must never outlive its
    /// publisher's attempt in the same process, where a recount or a second publication
    /// would not know of it.
    ///
    /// `store` stores the snapshot file durably (a no-op when it is already stored). It runs
    /// as late as it can: for one batch, after every count change is read and staged, so
    /// that a crash leaves a stored, uncatalogued file (which the next writer catalogues)
    /// only for the moment of the commit.
    fn commit(
        &self,
        plan: &Plan,
        id: SnapshotId,
        header: &SnapshotHeader,
        store: &dyn Fn() -> Result<()>,
    ) -> Result<()> {
        if plan.steps.len() <= 1 {
            let mut last = self.index.batch();
            self.raise(&mut last, &plan.activated, 1, false)?;
            stage_counts(self.index, &mut last, ObjectKind::Page, &plan.pages)?;
            store()?;
            return self.finish(last, id, header);
        }
        store()?;
        let mut batch = self.index.batch();
        batch.begin_publishing(&Publishing {
            snapshot: id,
            pages: plan.activated.clone(),
            applied: 0,
        });
        self.index.commit(batch)?;
        let stepped = plan.steps.iter().try_for_each(|step| {
            let mut batch = self.index.batch();
            self.raise(&mut batch, &plan.activated[step.clone()], 1, false)?;
            batch.set_publishing_applied(step.end as u32);
            self.index.commit(batch)
        });
        let finished = stepped.and_then(|()| {
            let mut last = self.index.batch();
            last.end_publishing();
            stage_counts(self.index, &mut last, ObjectKind::Page, &plan.pages)?;
            self.finish(last, id, header)
        });
        if finished.is_err() {
            let _ = undo_publishing(self.index, self.backend, self.crypto);
        }
        finished
    }

    /// Adds the catalog entry to `last` and commits it.
    fn finish(
        &self,
        mut last: IndexBatch<'_>,
        id: SnapshotId,
        header: &SnapshotHeader,
    ) -> Result<()> {
        last.put_snapshot(id, header)?;
        self.index.commit(last)
    }

    /// Adds `delta` references to every non-zero chunk of `pages` in `batch`. With
    /// `skip_damaged`, a page that is damaged or missing is left out and named in the result
    /// instead of failing.
    fn raise(
        &self,
        batch: &mut IndexBatch<'_>,
        pages: &[PageDigest],
        delta: i64,
        skip_damaged: bool,
    ) -> Result<Vec<String>> {
        let mut changes: HashMap<[u8; 32], i64> = HashMap::new();
        let mut skipped = Vec::new();
        for group in pages.chunks(PAGES_AT_ONCE) {
            let read: Vec<Result<Vec<ChunkDigest>>> = group
                .par_iter()
                .map(|p| page_digests(self.index, self.backend, self.crypto, *p))
                .collect();
            for (page, digests) in group.iter().zip(read) {
                let digests = match digests {
                    Ok(d) => d,
                    Err(e) if skip_damaged && e.kind() == ErrorKind::Damage => {
                        skipped.push(format!("page {page}: {e}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                for d in digests.iter().filter(|d| !d.is_zero()) {
                    *changes.entry(d.0).or_default() += delta;
                }
            }
        }
        let mut changes: Vec<([u8; 32], i64)> = changes.into_iter().collect();
        changes.sort_unstable();
        stage_counts(self.index, batch, ObjectKind::Chunk, &changes)?;
        Ok(skipped)
    }

    /// The chunk digests of `pages`, read in parallel, in order.
    fn read_pages(&self, pages: &[PageDigest]) -> Result<Vec<Vec<ChunkDigest>>> {
        read_pages(self.index, self.backend, self.crypto, pages)
    }
}

/// The chunk digests of `pages`, read in parallel, in order.
pub(crate) fn read_pages(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    pages: &[PageDigest],
) -> Result<Vec<Vec<ChunkDigest>>> {
    pages
        .par_iter()
        .map(|p| page_digests(index, backend, crypto, *p))
        .collect()
}

/// The chunk digests page `digest` lists (read and checked through the index).
fn page_digests(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    digest: PageDigest,
) -> Result<Vec<ChunkDigest>> {
    let raw = read_indexed(index, backend, crypto, ObjectKind::Page, digest.as_bytes())?;
    Ok(decode_page(digest, &raw)?.digests)
}
