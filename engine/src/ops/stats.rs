//! Repository-wide space accounting.

use std::collections::HashSet;

use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::ObjectKind;

use crate::error::Result;
use crate::repo::Repository;

/// Space figures of a repository.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RepoStats {
    /// Format version of the repository (1 plain, 2 encrypted).
    pub format_version: u32,
    /// How records are protected: `none` or `aes-256-gcm` (SPEC.md §23).
    pub encryption: String,
    /// Public fingerprint of an encrypted repository's keys (hex; SPEC.md §23.4).
    pub key_fingerprint: Option<String>,
    /// Published snapshots.
    pub snapshots: u64,
    /// Distinct series.
    pub series: u64,
    /// Sum of the disk sizes of every snapshot: what a restore of all of them would write.
    pub logical_bytes: u64,
    /// Referenced chunks.
    pub live_chunks: u64,
    /// Raw bytes of referenced chunks (unique data after dedup and zero elimination).
    pub live_raw_bytes: u64,
    /// Bytes referenced chunks occupy in packs, with record headers.
    pub live_stored_bytes: u64,
    /// Referenced manifest pages and their stored bytes.
    pub live_pages: u64,
    /// Stored bytes of referenced pages.
    pub page_stored_bytes: u64,
    /// Objects no snapshot references (left by interrupted runs or forgotten snapshots).
    pub unreferenced_objects: u64,
    /// Their stored bytes, reclaimable by compaction.
    pub unreferenced_stored_bytes: u64,
    /// Pack files.
    pub packs: u64,
    /// Total size of pack files.
    pub pack_bytes: u64,
    /// logical / live raw (how much dedup and zero elimination save).
    pub dedup_ratio: f64,
    /// live raw / live stored (how much compression saves).
    pub compression_ratio: f64,
}

/// Computes [`RepoStats`] by one pass over the index.
pub fn stats(repo: &Repository) -> Result<RepoStats> {
    let mut s = RepoStats::default();
    let config = repo.config();
    s.format_version = config.format_version;
    s.encryption = config.encryption.name().to_string();
    s.key_fingerprint = config.encryption.fingerprint().map(hex::encode);
    let snapshots = repo.index().snapshots()?;
    s.snapshots = snapshots.len() as u64;
    s.series = snapshots
        .iter()
        .map(|(_, h)| h.series.as_str())
        .collect::<HashSet<_>>()
        .len() as u64;
    s.logical_bytes = snapshots.iter().map(|(_, h)| h.logical_bytes()).sum();
    for kind in [ObjectKind::Chunk, ObjectKind::Page] {
        repo.index().for_each_object(kind, |_, e| {
            let stored = u64::from(e.stored_len) + RECORD_HEADER_LEN as u64;
            match (e.refcount > 0, kind) {
                (true, ObjectKind::Chunk) => {
                    s.live_chunks += 1;
                    s.live_raw_bytes += u64::from(e.raw_len);
                    s.live_stored_bytes += stored;
                }
                (true, ObjectKind::Page) => {
                    s.live_pages += 1;
                    s.page_stored_bytes += stored;
                }
                (false, _) => {
                    s.unreferenced_objects += 1;
                    s.unreferenced_stored_bytes += stored;
                }
            }
            Ok(())
        })?;
    }
    for (_, p) in repo.index().packs()? {
        s.packs += 1;
        s.pack_bytes += p.size;
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    s.dedup_ratio = ratio(s.logical_bytes, s.live_raw_bytes);
    s.compression_ratio = ratio(s.live_raw_bytes, s.live_stored_bytes);
    Ok(s)
}
