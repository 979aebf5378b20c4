//! Where objects and snapshots come from: another repository, a seed bundle, or a remote
//! server. Every implementation is **untrusted**: whatever it returns is decoded and hashed
//! by the receiver ([`super::checked`]) before anything is appended.

use tessera_format::{IdScheme, ObjectKind, SnapshotHeader, SnapshotId};

use crate::error::{Error, Result};
use crate::index::ObjectEntry;
use crate::repo::Repository;
use crate::store::reader::read_stored;

/// A snapshot as a catalog lists it: enough to select snapshots and to compare block sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Snapshot id (SHA-256 of its file).
    pub id: SnapshotId,
    /// Series name.
    pub series: String,
    /// Start time, Unix microseconds.
    pub time_us: i64,
    /// `(disk name, block size)` per disk.
    pub disks: Vec<(String, u32)>,
}

impl SnapshotSummary {
    /// The summary of a catalog entry.
    pub fn of(id: SnapshotId, header: &SnapshotHeader) -> Self {
        Self {
            id,
            series: header.series.clone(),
            time_us: header.time_us,
            disks: header
                .disks
                .iter()
                .map(|d| (d.name.clone(), d.block_size))
                .collect(),
        }
    }
}

pub use super::checked::StoredObject;

/// What both ends of a transfer tell about themselves.
pub trait Catalog {
    /// Human-readable name for messages (a path or URL).
    fn describe(&self) -> String;
    /// The chunk id scheme of its digests.
    fn id_scheme(&self) -> Result<IdScheme>;
    /// The public fingerprint of its keys (SPEC.md §23.4), when it is an encrypted
    /// repository that says; `None` for a plain one, or a side that cannot tell (a server).
    fn key_fingerprint(&self) -> Result<Option<[u8; 16]>> {
        Ok(None)
    }
    /// Published snapshots, oldest first.
    fn snapshots(&self) -> Result<Vec<SnapshotSummary>>;
}

/// A source of snapshots and objects (see the module docs: all of it is untrusted).
pub trait ObjectSource: Catalog {
    /// The bytes of a snapshot file.
    fn snapshot_bytes(&self, id: SnapshotId) -> Result<Vec<u8>>;
    /// Objects of `kind`, in the order asked. May return fewer than asked (a prefix: the
    /// caller asks again for the rest) but at least one; an object the source lacks is an
    /// error.
    fn get_objects(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<StoredObject>>;
}

/// Largest batch of stored bytes a source returns per call.
pub const MAX_BATCH_BYTES: u64 = 64 << 20;

impl Catalog for Repository {
    fn describe(&self) -> String {
        Repository::describe(self)
    }

    fn id_scheme(&self) -> Result<IdScheme> {
        Ok(self.config().id_scheme)
    }

    fn key_fingerprint(&self) -> Result<Option<[u8; 16]>> {
        Ok(self.config().encryption.fingerprint())
    }

    fn snapshots(&self) -> Result<Vec<SnapshotSummary>> {
        Ok(self
            .index()
            .snapshots()?
            .iter()
            .map(|(id, h)| SnapshotSummary::of(*id, h))
            .collect())
    }
}

/// Objects of a local repository, read with every check of [`read_stored`].
impl ObjectSource for Repository {
    fn snapshot_bytes(&self, id: SnapshotId) -> Result<Vec<u8>> {
        self.backend().get(&crate::storage::ObjectKey::snapshot(id))
    }

    fn get_objects(&self, kind: ObjectKind, digests: &[[u8; 32]]) -> Result<Vec<StoredObject>> {
        let entries = self.index().get_many(kind, digests)?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for (digest, entry) in digests.iter().zip(entries) {
            let entry: ObjectEntry = entry.ok_or_else(|| Error::ObjectMissing {
                kind,
                digest: format!("{} (in {})", hex::encode(digest), self.describe()),
            })?;
            if !out.is_empty() && bytes + u64::from(entry.stored_len) > MAX_BATCH_BYTES {
                break;
            }
            bytes += u64::from(entry.stored_len);
            out.push(read_stored(
                self.backend(),
                self.crypto(),
                kind,
                digest,
                &entry,
            )?);
        }
        Ok(out)
    }
}
