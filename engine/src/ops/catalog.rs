//! Read-only views of the catalog for `tessera list`, `show` and `stats`, as report types
//! that serialize to their `--json` documents: the snapshots with their protection and
//! damage marks, one snapshot in detail with its space accounting, and the repository's
//! space figures.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
use tessera_format::{DiskEntry, DiskStats, SnapshotHeader, SnapshotId};

use crate::damage_marks::{load_damage_marks, DamageMark};
use crate::error::Result;
use crate::ops::stats::{stats, RepoStats};
use crate::ops::usage::{exclusive_bytes_all, snapshot_usage, SnapshotUsage};
use crate::repo::Repository;
use crate::serde_ids;
use crate::snapshot_ref::SnapshotRef;
use crate::time::format_us;

/// Key-value pairs (tags, identity) in their stored order, serialized as a JSON object.
fn pairs_as_map<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().cloned().collect::<BTreeMap<_, _>>())
}

/// `tessera list`: the catalogued snapshots, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    /// The snapshots.
    pub snapshots: Vec<ListedSnapshot>,
}

/// One snapshot as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedSnapshot {
    /// Its id.
    #[serde(serialize_with = "serde_ids::hex")]
    pub id: SnapshotId,
    /// Its series.
    pub series: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// When it was taken (Unix µs).
    pub time_us: i64,
    /// Sum of its disk sizes.
    pub logical_bytes: u64,
    /// Whether it is protected from prune and forget.
    pub protected: bool,
    /// Whether the last verification found it damaged.
    pub damaged: bool,
    /// Until when it is immutable (RFC 3339; SPEC §28), `None` without an immutability
    /// policy or a retention.
    pub protected_until: Option<String>,
    /// Its tags.
    #[serde(serialize_with = "pairs_as_map")]
    pub tags: Vec<(String, String)>,
    /// Its disks.
    pub disks: Vec<ListedDisk>,
}

/// A disk as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ListedDisk {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
}

/// The snapshots of `series` (all when `None`), oldest first.
pub fn list(repo: &Repository, series: Option<&str>) -> Result<ListReport> {
    let protected = repo.index().protected()?;
    let marks = load_damage_marks(repo.backend())?;
    let immutable = crate::ops::immutable::read_policy(repo.backend())?.is_some();
    let snapshots = repo
        .index()
        .snapshots()?
        .into_iter()
        .filter(|(_, h)| series.is_none_or(|s| h.series == s))
        .map(|(id, h)| {
            // Best effort: a reader without `s3:GetObjectRetention` still lists.
            let until = if immutable {
                crate::ops::immutable::protected_until(repo, id).unwrap_or(None)
            } else {
                None
            };
            Ok((id, h, until))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .map(|(id, h, until)| ListedSnapshot {
            protected_until: until.map(format_us),
            id,
            time: format_us(h.time_us),
            time_us: h.time_us,
            logical_bytes: h.logical_bytes(),
            protected: protected.contains(&id),
            damaged: marks.contains_key(&id),
            disks: h
                .disks
                .iter()
                .map(|d| ListedDisk {
                    name: d.name.clone(),
                    size: d.size,
                })
                .collect(),
            series: h.series,
            tags: h.tags,
        })
        .collect();
    Ok(ListReport { snapshots })
}

/// `tessera show`: one snapshot in detail.
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// Its id.
    #[serde(serialize_with = "serde_ids::hex")]
    pub id: SnapshotId,
    /// Its series.
    pub series: String,
    /// When it was taken (RFC 3339).
    pub time: String,
    /// When it was taken (Unix µs).
    pub time_us: i64,
    /// How long the backup took.
    pub duration_ms: u64,
    /// Whether it is protected from prune and forget.
    pub protected: bool,
    /// How the repository protects its records: `none` or `aes-256-gcm` (SPEC.md §23).
    pub encryption: String,
    /// Its space accounting, unless it could not be computed (a page missing or unreadable).
    pub usage: Option<SnapshotUsage>,
    /// Why the space accounting could not be computed.
    pub usage_error: Option<String>,
    /// Whether the last verification found it damaged.
    pub damaged: bool,
    /// What the last verification found.
    pub damage: Option<DamageReport>,
    /// Its tags.
    #[serde(serialize_with = "pairs_as_map")]
    pub tags: Vec<(String, String)>,
    /// Its disks.
    pub disks: Vec<DiskDetail>,
}

/// A damage mark as `show` reports it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DamageReport {
    /// Damaged byte ranges of its disks.
    pub ranges: u64,
    /// Bytes in those ranges.
    pub bytes: u64,
    /// Whether its snapshot file is unreadable or differs from its catalog entry.
    pub file_damaged: bool,
    /// When the damage was found (RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    pub found: i64,
    /// When the damage was found (Unix µs).
    pub found_us: i64,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn rfc3339<S: Serializer>(us: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_us(*us))
}

impl From<DamageMark> for DamageReport {
    fn from(m: DamageMark) -> Self {
        Self {
            ranges: m.ranges,
            bytes: m.bytes,
            file_damaged: m.file_damaged,
            found: m.marked_at_us,
            found_us: m.marked_at_us,
        }
    }
}

/// One disk of a snapshot in detail.
#[derive(Debug, Clone, Serialize)]
pub struct DiskDetail {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Its block size.
    pub block_size: u32,
    /// Manifest pages.
    pub pages: u32,
    /// SHA-256 of its root list.
    #[serde(serialize_with = "serde_ids::hex_digest")]
    pub root: [u8; 32],
    /// What its source said about itself, and how it was backed up.
    #[serde(serialize_with = "pairs_as_map")]
    pub identity: Vec<(String, String)>,
    /// What the backup read and stored.
    pub stats: BackupStats,
}

/// What a backup read and stored for one disk.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BackupStats {
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Blocks that were all zero.
    pub zero_blocks: u64,
    /// Chunks the backup added.
    pub new_chunks: u64,
    /// Their raw bytes.
    pub new_raw_bytes: u64,
    /// Their stored bytes.
    pub new_stored_bytes: u64,
}

impl From<&DiskStats> for BackupStats {
    fn from(s: &DiskStats) -> Self {
        Self {
            bytes_read: s.bytes_read,
            zero_blocks: s.zero_blocks,
            new_chunks: s.new_chunks,
            new_raw_bytes: s.new_raw_bytes,
            new_stored_bytes: s.new_stored_bytes,
        }
    }
}

impl From<&DiskEntry> for DiskDetail {
    fn from(d: &DiskEntry) -> Self {
        Self {
            name: d.name.clone(),
            size: d.size,
            block_size: d.block_size,
            pages: d.page_count,
            root: d.root_digest,
            identity: d.identity.clone(),
            stats: BackupStats::from(&d.stats),
        }
    }
}

/// The snapshot `reference` names, in detail. A snapshot whose space accounting cannot be
/// computed (a page missing or unreadable) is still described, with `usage_error`.
pub fn show(repo: &Repository, reference: &SnapshotRef) -> Result<ShowReport> {
    let (id, header) = repo.resolve(reference)?;
    let protected = repo.index().protected()?.contains(&id);
    let damage = load_damage_marks(repo.backend())?.get(&id).copied();
    let usage = snapshot_usage(repo, id).map_err(|e| e.to_string());
    let SnapshotHeader {
        series,
        time_us,
        duration_ms,
        tags,
        disks,
    } = header;
    Ok(ShowReport {
        id,
        series,
        time: format_us(time_us),
        time_us,
        duration_ms,
        protected,
        encryption: repo.config().encryption.name().to_string(),
        usage: usage.as_ref().ok().copied(),
        usage_error: usage.err(),
        damaged: damage.is_some(),
        damage: damage.map(DamageReport::from),
        tags,
        disks: disks.iter().map(DiskDetail::from).collect(),
    })
}

/// `tessera stats`: the repository's space figures and what each snapshot alone references.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    /// Repository-wide figures.
    pub stats: RepoStats,
    /// Per snapshot, oldest first.
    pub snapshots: Vec<ExclusiveBytes>,
}

/// The stored bytes only one snapshot references (freed, after compaction, by forgetting it).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ExclusiveBytes {
    /// The snapshot.
    #[serde(serialize_with = "serde_ids::hex")]
    pub id: SnapshotId,
    /// Its exclusive stored bytes.
    pub exclusive_stored_bytes: u64,
}

/// The space figures of `repo`.
pub fn stats_report(repo: &Repository) -> Result<StatsReport> {
    Ok(StatsReport {
        stats: stats(repo)?,
        snapshots: exclusive_bytes_all(repo)?
            .into_iter()
            .map(|(id, exclusive_stored_bytes)| ExclusiveBytes {
                id,
                exclusive_stored_bytes,
            })
            .collect(),
    })
}
