//! Hierarchical reference counts: snapshot → pages → chunks.
//!
//! A page's count is how many times published snapshot root lists name it. A chunk's count
//! is how many times *live* pages (count > 0) name it; all-zero digests are never counted.
//! A page going 0 → live adds one reference to each of its chunks; live → 0 removes them.
//! So publishing or dropping a snapshot touches only its own pages, and the chunks of
//! the pages that it alone holds: cost proportional to what it uniquely owns.

use std::collections::HashMap;

use tessera_format::{ChunkDigest, ObjectKind, PageDigest, Snapshot};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};
use crate::index::{Index, IndexBatch};
use crate::storage::Backend;
use crate::store::reader::read_object;

/// Pending count changes, applied in one batch (a forget: what it drops is what the
/// snapshots it forgets alone hold; publishing derives its changes itself, in steps, see
/// [`crate::ops::publish`]).
#[derive(Debug, Default)]
pub struct RefDeltas {
    /// Page count changes.
    pub pages: HashMap<PageDigest, i64>,
    /// Chunk count changes.
    pub chunks: HashMap<ChunkDigest, i64>,
}

impl RefDeltas {
    /// Adds `delta` references to each non-zero chunk in `digests`.
    pub fn add_chunks(&mut self, digests: &[ChunkDigest], delta: i64) {
        for d in digests.iter().filter(|d| !d.is_zero()) {
            *self.chunks.entry(*d).or_default() += delta;
        }
    }

    /// Adds the count changes to `batch`. Every object must be in the index (it was indexed
    /// when its pack was sealed); a count that would go negative means the index is
    /// inconsistent and is refused rather than clamped.
    pub fn stage(&self, index: &Index, batch: &mut IndexBatch<'_>) -> Result<()> {
        let pages: Vec<([u8; 32], i64)> = self.pages.iter().map(|(d, n)| (d.0, *n)).collect();
        let chunks: Vec<([u8; 32], i64)> = self.chunks.iter().map(|(d, n)| (d.0, *n)).collect();
        stage_counts(index, batch, ObjectKind::Page, &pages)?;
        stage_counts(index, batch, ObjectKind::Chunk, &chunks)
    }
}

/// Adds count changes of objects of one kind to `batch`, reading their entries as the index
/// holds them now. Every object must be in the index; a count that would go negative means
/// the index is inconsistent and is refused rather than clamped.
pub(crate) fn stage_counts(
    index: &Index,
    batch: &mut IndexBatch<'_>,
    kind: ObjectKind,
    deltas: &[([u8; 32], i64)],
) -> Result<()> {
    let now = crate::time::now_us();
    for group in deltas.chunks(4096) {
        let keys: Vec<[u8; 32]> = group.iter().map(|(d, _)| *d).collect();
        for ((digest, delta), entry) in group.iter().zip(index.get_many_once(kind, &keys)?) {
            let mut entry = entry.ok_or_else(|| Error::ObjectMissing {
                kind,
                digest: hex::encode(digest),
            })?;
            let new = i128::from(entry.refcount) + i128::from(*delta);
            let count = u64::try_from(new).map_err(|_| Error::IndexCorrupt {
                what: format!("{kind:?} {} reference count would become {new}; run `tessera repair REPO --rebuild-index`", hex::encode(digest)),
            })?;
            entry.set_count(count, now);
            batch.put_object(kind, digest, &entry);
        }
    }
    Ok(())
}

/// Reference counts recomputed from scratch from a set of snapshot root lists.
#[derive(Debug, Default)]
pub struct ExpectedCounts {
    /// Page counts.
    pub pages: HashMap<PageDigest, u64>,
    /// Chunk counts.
    pub chunks: HashMap<ChunkDigest, u64>,
    /// Pages that are damaged or missing, with the reason; their chunks are not counted. A
    /// page that cannot be read for any other reason (the store failing) fails the
    /// recomputation instead.
    pub unreadable_pages: Vec<(PageDigest, String)>,
}

impl ExpectedCounts {
    /// The recomputed count of an object (0 when nothing references it).
    pub fn count(&self, kind: ObjectKind, digest: [u8; 32]) -> u64 {
        let found = match kind {
            ObjectKind::Page => self.pages.get(&PageDigest(digest)),
            ObjectKind::Chunk => self.chunks.get(&ChunkDigest(digest)),
        };
        found.copied().unwrap_or(0)
    }
}

/// Recomputes counts from the root lists of `snapshots`.
pub fn expected_counts_of<'a>(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    snapshots: impl IntoIterator<Item = &'a Snapshot>,
) -> Result<ExpectedCounts> {
    expected_counts(
        index,
        backend,
        crypto,
        snapshots
            .into_iter()
            .flat_map(|s| s.roots.iter().map(Vec::as_slice)),
    )
}

/// Recomputes counts from `roots` (every root list of every published snapshot), reading
/// each distinct page once.
pub fn expected_counts<'a>(
    index: &Index,
    backend: &dyn Backend,
    crypto: &RepoCrypto,
    roots: impl IntoIterator<Item = &'a [PageDigest]>,
) -> Result<ExpectedCounts> {
    let mut out = ExpectedCounts::default();
    for root in roots {
        for p in root {
            *out.pages.entry(*p).or_default() += 1;
        }
    }
    for page in out.pages.keys() {
        let read = match index.get_object(ObjectKind::Page, page.as_bytes())? {
            None => Err("not in the store".to_string()),
            Some(entry) => {
                match read_object(backend, crypto, ObjectKind::Page, page.as_bytes(), &entry) {
                    Ok(raw) => Ok(raw),
                    Err(e) if e.kind() == crate::error::ErrorKind::Damage => Err(e.to_string()),
                    // The store failing, an I/O error: nothing is known about the page, and
                    // counting without its chunks would make live chunks look unreferenced.
                    Err(e) => return Err(e),
                }
            }
        };
        let loaded = read
            .and_then(|raw| tessera_format::ManifestPage::decode(&raw).map_err(|e| e.to_string()));
        match loaded {
            Ok(p) => {
                for d in p.digests.iter().filter(|d| !d.is_zero()) {
                    *out.chunks.entry(*d).or_default() += 1;
                }
            }
            Err(reason) => out.unreadable_pages.push((*page, reason)),
        }
    }
    Ok(out)
}
