//! Repository-to-repository sync, seed bundles and the HTTP server (SPEC.md §22).
//!
//! Everything that moves snapshots between repositories goes through one path,
//! [`transfer::transfer`]: an untrusted [`source::ObjectSource`] (another repository, a seed
//! bundle, a remote server) feeds a [`sink::ObjectSink`] (a local repository opened as
//! writer, or a remote server). The receiving side decodes and hashes every object itself
//! ([`checked`]) and publishes a snapshot only after all of its objects are sealed and
//! indexed, with [`crate::ops::publish::publish_snapshot`], so a killed or refused transfer
//! never leaves a partial snapshot visible.

#[cfg(feature = "repository")]
pub mod bundle;
pub mod bundle_manifest;
#[cfg(feature = "repository")]
pub mod bwlimit;
pub mod checked;
#[cfg(feature = "repository")]
pub mod endpoints;
pub mod http;
#[cfg(feature = "repository")]
pub mod shared_keys;
#[cfg(feature = "repository")]
pub mod sink;
#[cfg(feature = "repository")]
pub mod source;
#[cfg(feature = "repository")]
pub mod transfer;

#[cfg(feature = "repository")]
use serde::Serialize;
#[cfg(feature = "repository")]
use tessera_format::SnapshotId;

#[cfg(feature = "repository")]
use crate::error::{Error, Result};
#[cfg(feature = "repository")]
use crate::progress::Progress;
#[cfg(feature = "repository")]
use crate::repo::Repository;
#[cfg(feature = "repository")]
use crate::snapshot_ref::SnapshotRef;

#[cfg(feature = "repository")]
use source::SnapshotSummary;

/// Which snapshots of the source to copy.
#[cfg(feature = "repository")]
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this series.
    pub series: Option<String>,
    /// Only these snapshots (resolved in the source's catalog, after the series filter).
    pub snapshots: Vec<SnapshotRef>,
    /// Only the newest N (after the other filters).
    pub latest: Option<usize>,
}

#[cfg(feature = "repository")]
impl Selection {
    /// The selected snapshots of `catalog` (oldest first), in catalog order.
    pub fn select(&self, catalog: &[SnapshotSummary]) -> Result<Vec<SnapshotSummary>> {
        let mut out: Vec<SnapshotSummary> = catalog
            .iter()
            .filter(|s| self.series.as_ref().is_none_or(|n| &s.series == n))
            .cloned()
            .collect();
        if !self.snapshots.is_empty() {
            let mut wanted = std::collections::HashSet::new();
            for reference in &self.snapshots {
                wanted.insert(reference.resolve(&out)?.id);
            }
            out.retain(|s| wanted.contains(&s.id));
        }
        if let Some(n) = self.latest {
            let skip = out.len().saturating_sub(n);
            out.drain(..skip);
        }
        Ok(out)
    }
}

/// How to transfer.
#[cfg(feature = "repository")]
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Report what would be copied; fetch only snapshot files and missing pages.
    pub dry_run: bool,
    /// Limit on received bytes per second.
    pub bwlimit: Option<u64>,
    /// Threads checking objects (default: all cores).
    pub jobs: Option<usize>,
    /// Read every page of a copied snapshot, not only those the destination lacks, and ask
    /// for every chunk they name. A destination's page normally implies its chunks (pages
    /// are stored after them); completing an uncatalogued snapshot file (`repair --from`)
    /// cannot assume it: the page's pack may have been adopted while the chunks' was lost.
    pub every_page: bool,
}

/// What a transfer did.
#[cfg(feature = "repository")]
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Snapshots copied, oldest first.
    #[serde(serialize_with = "crate::serde_ids::hex_list")]
    pub snapshots_copied: Vec<SnapshotId>,
    /// Selected snapshots the destination already had.
    #[serde(serialize_with = "crate::serde_ids::hex_list")]
    pub snapshots_skipped: Vec<SnapshotId>,
    /// Pages fetched.
    pub pages_transferred: u64,
    /// Chunks fetched (in a dry run: that would be fetched).
    pub chunks_transferred: u64,
    /// Objects the destination already held (not fetched).
    pub objects_skipped: u64,
    /// Raw bytes of the fetched objects.
    pub raw_bytes_transferred: u64,
    /// Stored (compressed) bytes of the fetched objects.
    pub stored_bytes_transferred: u64,
    /// Every payload byte received: stored objects plus snapshot files.
    pub bytes_received: u64,
}

/// Syncs the selected snapshots of `src` into `dst` (opened as writer).
#[cfg(feature = "repository")]
pub fn sync(
    src: &dyn source::ObjectSource,
    dst: &Repository,
    selection: &Selection,
    opts: &SyncOptions,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let mut sink = sink::LocalSink::new(dst, sink::Publisher::Operator);
    transfer::transfer(src, &mut sink, selection, opts, progress)
}

/// A rayon pool of `jobs` threads, or `None` for the global pool.
#[cfg(feature = "repository")]
pub fn pool(jobs: Option<usize>) -> Result<Option<rayon::ThreadPool>> {
    jobs.map(|n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| Error::Threads {
                count: n,
                reason: e.to_string(),
            })
    })
    .transpose()
}
