//! Repository-to-repository sync, seed bundles and the HTTP server (SPEC.md §22).
//!
//! Everything that moves snapshots between repositories goes through one path,
//! [`transfer::transfer`]: an untrusted [`source::ObjectSource`] (another repository, a seed
//! bundle, a remote server) feeds a [`sink::ObjectSink`] (a local repository opened as
//! writer, or a remote server). The receiving side decodes and hashes every object itself
//! ([`checked`]) and publishes a snapshot only after all of its objects are sealed and
//! indexed, with [`crate::ops::publish::publish_snapshot`], so a killed or refused transfer
//! never leaves a partial snapshot visible.

pub mod bundle;
pub mod bundle_manifest;
pub mod bwlimit;
pub mod checked;
pub mod http;
pub mod sink;
pub mod source;
pub mod transfer;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::Repository;

use source::SnapshotSummary;

/// Which snapshots of the source to copy.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this series.
    pub series: Option<String>,
    /// Only these snapshots (full ids or unique prefixes of 4+ hex digits).
    pub snapshots: Vec<String>,
    /// Only the newest N (after the other filters).
    pub latest: Option<usize>,
}

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
            for q in &self.snapshots {
                let q = q.to_ascii_lowercase();
                if q.len() < 4 || !q.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::InvalidArgument(format!(
                        "{q:?} is not a snapshot id: give 4+ hex digits"
                    )));
                }
                let hits: Vec<_> = out
                    .iter()
                    .filter(|s| s.id.to_hex().starts_with(&q))
                    .collect();
                match hits.as_slice() {
                    [one] => {
                        wanted.insert(one.id);
                    }
                    [] => return Err(Error::SnapshotNotFound { query: q }),
                    many => {
                        return Err(Error::AmbiguousSnapshot {
                            query: q,
                            count: many.len(),
                        })
                    }
                }
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
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Report what would be copied; fetch only snapshot files and missing pages.
    pub dry_run: bool,
    /// Limit on received bytes per second.
    pub bwlimit: Option<u64>,
    /// Threads checking objects (default: all cores).
    pub jobs: Option<usize>,
}

/// What a transfer did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Snapshots copied (ids, oldest first).
    pub snapshots_copied: Vec<String>,
    /// Selected snapshots the destination already had.
    pub snapshots_skipped: Vec<String>,
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
pub fn pool(jobs: Option<usize>) -> Result<Option<rayon::ThreadPool>> {
    jobs.map(|n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))
    })
    .transpose()
}
