//! What `tessera backup` reports: the published snapshot and, per disk, how it was read
//! (full, delta or key), what was read and stored, drift and healed chunks.

use serde::{Serialize, Serializer};
use tessera_format::SnapshotId;

use super::{BackupOutcome, Mode};
use crate::serde_ids;
use crate::time::format_us;

/// The report of a published backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The new snapshot.
    #[serde(serialize_with = "serde_ids::hex")]
    pub snapshot: SnapshotId,
    /// Its series.
    pub series: String,
    /// When the backup started (RFC 3339).
    pub time: String,
    /// How long it took.
    pub duration_ms: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Its disks, in snapshot order.
    pub disks: Vec<DiskBackupReport>,
    /// Requests this process sent to the object store (S3 repositories only), opening the
    /// repository included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_requests: Option<crate::storage::s3::RequestCounts>,
}

/// How one disk was backed up.
#[derive(Debug, Clone, Serialize)]
pub struct DiskBackupReport {
    /// The disk.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Its block size.
    pub block_size: u32,
    /// Full, delta or key.
    #[serde(serialize_with = "mode_name")]
    pub mode: Mode,
    /// The snapshot the disk's unchanged blocks came from (delta) or was compared with (key).
    #[serde(serialize_with = "serde_ids::hex_opt")]
    pub reference: Option<SnapshotId>,
    /// Bytes the delta said changed.
    pub changed_bytes: Option<u64>,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Blocks that were all zero.
    pub zero_blocks: u64,
    /// Chunks added to the store.
    pub new_chunks: u64,
    /// Their raw bytes.
    pub new_raw_bytes: u64,
    /// Their stored bytes.
    pub new_stored_bytes: u64,
    /// Blocks a key backup found changed although no delta said so.
    pub drift_blocks: Option<u64>,
    /// The first of their offsets.
    pub drift_offsets: Option<Vec<u64>>,
    /// Damaged stored chunks rewritten from this disk.
    pub healed_chunks: u64,
    /// Why the mode is what it is, when that is not obvious.
    pub note: Option<String>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn mode_name<S: Serializer>(mode: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode.as_str())
}

impl BackupOutcome {
    /// The report of this backup.
    pub fn report(&self) -> BackupReport {
        let h = &self.header;
        BackupReport {
            snapshot: self.id,
            series: h.series.clone(),
            time: format_us(h.time_us),
            duration_ms: h.duration_ms,
            packs_written: self.packs_written,
            storage_requests: self.storage_requests,
            disks: h
                .disks
                .iter()
                .zip(&self.disks)
                .map(|(d, r)| DiskBackupReport {
                    name: d.name.clone(),
                    size: d.size,
                    block_size: d.block_size,
                    mode: r.mode,
                    reference: r.reference,
                    changed_bytes: r.changed_bytes,
                    bytes_read: d.stats.bytes_read,
                    zero_blocks: d.stats.zero_blocks,
                    new_chunks: d.stats.new_chunks,
                    new_raw_bytes: d.stats.new_raw_bytes,
                    new_stored_bytes: d.stats.new_stored_bytes,
                    drift_blocks: r.drift.as_ref().map(|x| x.blocks),
                    drift_offsets: r.drift.as_ref().map(|x| x.offsets.clone()),
                    healed_chunks: r.healed_chunks,
                    note: r.note.clone(),
                })
                .collect(),
        }
    }
}
