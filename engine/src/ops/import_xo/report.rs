//! What `tessera import xo` did (or, with `--dry-run`, would do).

use serde::Serialize;

pub use crate::sources::xo::Skipped;

/// The import's outcome.
#[derive(Debug, Clone, Default, Serialize)]
pub struct XoImportReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Backups imported (or to import), oldest first per VM.
    pub imported: Vec<ImportedBackup>,
    /// Backups an earlier run imported (found by their `xo.backup` tag).
    pub already_imported: u64,
    /// What was not imported, and why.
    pub skipped: Vec<Skipped>,
    /// How many of `skipped` are damaged or hostile (the command then exits 4).
    pub damaged: u64,
    /// Bytes read from the remote's VHDs.
    pub bytes_read: u64,
    /// Bytes of new chunks the repository stored (before compression).
    pub new_raw_bytes: u64,
    /// What those chunks occupy in packs.
    pub new_stored_bytes: u64,
    /// Bytes read that the repository already held (read − new − all-zero blocks).
    pub deduplicated_bytes: u64,
}

/// One backup imported as one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct ImportedBackup {
    /// `<VM UUID>/<file name>`.
    pub backup: String,
    /// The VM's UUID.
    pub vm: String,
    /// The series it went into.
    pub series: String,
    /// The backup's time (RFC 3339, UTC).
    pub time: String,
    /// The snapshot made (absent in a dry run).
    #[serde(serialize_with = "crate::serde_ids::hex_opt")]
    pub snapshot: Option<tessera_format::SnapshotId>,
    /// Its disks.
    pub disks: Vec<ImportedDisk>,
}

/// One disk of an imported backup.
#[derive(Debug, Clone, Serialize)]
pub struct ImportedDisk {
    /// The snapshot's disk name (`xvda`, …).
    pub name: String,
    /// Its VHD in the remote.
    pub vhd: String,
    /// VHD files in its chain (1 for a key backup that has no parent).
    pub chain_length: usize,
    /// Disk size in bytes.
    pub size: u64,
    /// `full` or `delta` (as `tessera backup` reports it); `planned` in a dry run.
    pub mode: String,
    /// Bytes read from the remote.
    pub bytes_read: u64,
}
