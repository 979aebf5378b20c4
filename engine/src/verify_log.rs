//! Verification records (SPEC §11a): one small object per `verify` run, `verified/<end
//! time>-<tag>`, so that the dashboard (and anyone listing the repository) can tell when the
//! repository was last checked, how, and what was found, on any machine that shares it.
//!
//! Each record is put whole (create-only; the tag tells apart two runs ending in the same
//! microsecond), so verifications on different machines never overwrite each other's
//! record. After writing its own, a run deletes the oldest records beyond [`KEEP`]; two runs
//! doing so at once delete the same objects, which is harmless.
//!
//! Records are findings, never a source of truth: objects that do not parse are skipped, and
//! deleting them loses only the history shown. They name snapshot ids and counts, which the
//! catalogue and the damage marks already reveal to a keyless holder (SPEC §23.1).

use serde::{Deserialize, Serialize};
use tessera_format::SnapshotId;

use crate::error::Result;
use crate::ops::check::{CheckReport, VerifyOptions};
use crate::storage::key::VERIFIED;
use crate::storage::{Backend, ObjectKey, PutMode};

/// Records kept: the newest this many runs.
pub const KEEP: usize = 100;
/// Largest record read back (a record with [`MAX_RANGES`] ranges and [`MAX_SNAPSHOTS`]
/// snapshots is about 200 KB; a larger object is skipped unread).
pub const MAX_RECORD_BYTES: u64 = 1 << 20;
/// Most damaged snapshots one record names.
pub const MAX_SNAPSHOTS: usize = 1000;

/// What one verification run did and found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRecord {
    /// When it ended (Unix µs).
    pub time_us: i64,
    /// The machine it ran on.
    pub host: String,
    /// `full` (every object in scope read back), `sample` or `metadata`.
    pub kind: String,
    /// Snapshots whose objects were in scope (`None`: the whole repository).
    pub scope_snapshots: Option<usize>,
    /// Objects read back.
    pub objects_read: u64,
    /// Their stored bytes.
    pub bytes_read: u64,
    /// Damaged or missing objects found.
    pub damaged_objects: u64,
    /// Packs with a damaged footer or trailer.
    pub damaged_packs: u64,
    /// Snapshots found damaged (hex ids, the first [`MAX_SNAPSHOTS`]), including those with
    /// a damaged file.
    pub damaged_snapshots: Vec<String>,
    /// How many snapshots were found damaged, in all.
    #[serde(default)]
    pub damaged_snapshot_count: u64,
    /// Objects in scope not read because the ledger says they were verified recently
    /// (`verify --skip-verified-within`).
    #[serde(default)]
    pub objects_skipped_recently_verified: u64,
    /// Problems reported, in all.
    pub problems: u64,
    /// The damaged byte ranges (the first [`MAX_RANGES`]), for the damage map.
    #[serde(default)]
    pub damaged_ranges: Vec<RangeRecord>,
    /// Damaged ranges found beyond those kept.
    #[serde(default)]
    pub ranges_left_out: u64,
}

/// A damaged byte range of one disk of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRecord {
    /// The snapshot (hex id).
    pub snapshot: String,
    /// The disk.
    pub disk: String,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// Most damaged ranges one record keeps.
pub const MAX_RANGES: usize = 1000;

impl VerifyRecord {
    /// The record of a run with `opts` that reported `report`, ending now. An encrypted
    /// repository's record names no host and no disk (its ranges are left out, counted):
    /// a keyless holder must not learn disk names (SPEC §23.1).
    pub fn of(report: &CheckReport, opts: &VerifyOptions, encrypted: bool) -> Self {
        let kind = match (opts.read_data, &opts.sample) {
            (false, _) => "metadata",
            (true, Some(_)) => "sample",
            (true, None) => "full",
        };
        let mut damaged: Vec<String> = report
            .damaged
            .iter()
            .flat_map(|o| o.ranges.iter().map(|r| r.snapshot.to_hex()))
            .chain(report.damaged_snapshot_files.iter().map(SnapshotId::to_hex))
            .collect();
        damaged.sort();
        damaged.dedup();
        let damaged_snapshot_count = damaged.len() as u64;
        damaged.truncate(MAX_SNAPSHOTS);
        let mut ranges: Vec<RangeRecord> = report
            .damaged
            .iter()
            .flat_map(|o| &o.ranges)
            .map(|r| RangeRecord {
                snapshot: r.snapshot.to_hex(),
                disk: r.disk.clone(),
                offset: r.offset,
                length: r.length,
            })
            .collect();
        ranges.sort_by(|a, b| {
            (&a.snapshot, &a.disk, a.offset).cmp(&(&b.snapshot, &b.disk, b.offset))
        });
        ranges.dedup();
        let keep = if encrypted { 0 } else { MAX_RANGES };
        let ranges_left_out = ranges.len().saturating_sub(keep) as u64;
        ranges.truncate(keep);
        Self {
            time_us: crate::time::now_us(),
            host: if encrypted {
                String::new()
            } else {
                crate::net::hostname()
            },
            kind: kind.to_string(),
            scope_snapshots: opts.scope.as_ref().map(Vec::len),
            objects_read: report.objects_read,
            bytes_read: report.bytes_read,
            damaged_objects: report.damaged.len() as u64,
            damaged_packs: report.damaged_packs.len() as u64,
            damaged_snapshots: damaged,
            damaged_snapshot_count,
            objects_skipped_recently_verified: report.objects_skipped_recently_verified,
            problems: report.problems.len() as u64,
            damaged_ranges: ranges,
            ranges_left_out,
        }
    }

    /// Whether the run found nothing wrong.
    pub fn clean(&self) -> bool {
        self.problems == 0
    }
}

/// Writes `record`, then deletes the oldest records beyond [`KEEP`].
pub fn write_verify_record(backend: &dyn Backend, record: &VerifyRecord) -> Result<()> {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    let key = ObjectKey::verify_record(record.time_us, rand::random());
    backend.put_bytes(&key, PutMode::Create, &bytes)?;
    let mut keys = backend.list(VERIFIED)?;
    keys.sort();
    let excess = keys.len().saturating_sub(KEEP);
    for old in &keys[..excess] {
        backend.delete(old)?;
    }
    Ok(())
}

/// The newest `limit` records, newest first (records that cannot be read or parsed are
/// skipped).
pub fn verify_records(backend: &dyn Backend, limit: usize) -> Result<Vec<VerifyRecord>> {
    let mut keys = backend.list(VERIFIED)?;
    keys.sort();
    Ok(keys
        .iter()
        .rev()
        .filter_map(|k| {
            if backend.size(k).ok()?? > MAX_RECORD_BYTES {
                return None;
            }
            serde_json::from_slice(&backend.get_if_exists(k).ok()??).ok()
        })
        .take(limit)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalBackend;

    fn record(time_us: i64, problems: u64) -> VerifyRecord {
        VerifyRecord {
            time_us,
            host: "h".into(),
            kind: "full".into(),
            scope_snapshots: None,
            objects_read: 3,
            bytes_read: 4,
            damaged_objects: problems,
            damaged_packs: 0,
            damaged_snapshots: Vec::new(),
            damaged_snapshot_count: 0,
            objects_skipped_recently_verified: 0,
            problems,
            damaged_ranges: Vec::new(),
            ranges_left_out: 0,
        }
    }

    #[test]
    fn newest_first_keeps_the_last_hundred_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(dir.path());
        let keep = i64::try_from(KEEP).unwrap();
        for t in 1..=(keep + 5) {
            write_verify_record(&backend, &record(t, u64::from(t == 7))).unwrap();
        }
        backend
            .put_bytes(
                &ObjectKey::verify_record(i64::MAX / 2, 0),
                PutMode::Create,
                b"not json",
            )
            .unwrap();
        let all = verify_records(&backend, 1000).unwrap();
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].time_us, keep + 5);
        assert_eq!(all.last().unwrap().time_us, 6);
        assert!(!all.iter().find(|r| r.time_us == 7).unwrap().clean());
        assert_eq!(verify_records(&backend, 2).unwrap().len(), 2);
    }
}
