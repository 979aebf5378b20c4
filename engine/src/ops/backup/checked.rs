//! The chunks a key backup has checked (see [`CheckedChunks`]).

use tessera_format::{ChunkDigest, ObjectKind};

use crate::error::Result;
use crate::index::ScratchSet;

/// The chunks a key backup has read back and checked, so that a chunk repeated across the
/// disks is checked once. On disk ([`ScratchSet`]), so that memory does not grow with the
/// disk (one digest per distinct chunk, 16 million for 1 TiB at 64 KiB blocks); empty and
/// without a directory when the backup is not a key backup (only a key backup checks, so
/// only it inserts: [`CheckedChunks::insert`] on such a set records nothing).
pub struct CheckedChunks(Option<ScratchSet>);

impl CheckedChunks {
    /// A set for a key backup (`key`) under `local_dir`, else an empty one.
    pub fn new(key: bool, local_dir: &std::path::Path) -> Result<Self> {
        Ok(Self(
            key.then(|| ScratchSet::create(local_dir)).transpose()?,
        ))
    }

    /// Whether `digest` was checked.
    pub fn contains(&self, digest: &ChunkDigest) -> Result<bool> {
        match &self.0 {
            Some(set) => set.contains(ObjectKind::Chunk, &digest.0),
            None => Ok(false),
        }
    }

    /// Records `digest`; returns whether it is new.
    pub fn insert(&self, digest: ChunkDigest) -> Result<bool> {
        if self.contains(&digest)? {
            return Ok(false);
        }
        self.extend(&[digest])?;
        Ok(true)
    }

    /// Records `digests`.
    pub fn extend(&self, digests: &[ChunkDigest]) -> Result<()> {
        let Some(set) = &self.0 else {
            return Ok(());
        };
        let objects: Vec<(ObjectKind, [u8; 32])> =
            digests.iter().map(|d| (ObjectKind::Chunk, d.0)).collect();
        set.insert_many(&objects)
    }
}

#[cfg(test)]
mod tests {
    use super::CheckedChunks;
    use tessera_format::ChunkDigest;

    #[test]
    fn a_key_backup_checks_each_chunk_once_and_others_check_none() {
        let dir = tempfile::tempdir().unwrap();
        let set = CheckedChunks::new(true, dir.path()).unwrap();
        let (a, b, c) = (
            ChunkDigest([1; 32]),
            ChunkDigest([2; 32]),
            ChunkDigest([3; 32]),
        );
        assert!(!set.contains(&a).unwrap());
        assert!(set.insert(a).unwrap());
        assert!(!set.insert(a).unwrap(), "inserted twice");
        set.extend(&[b]).unwrap();
        assert!(set.contains(&a).unwrap() && set.contains(&b).unwrap());
        assert!(!set.contains(&c).unwrap());

        let none = CheckedChunks::new(false, dir.path()).unwrap();
        none.extend(&[a]).unwrap();
        assert!(!none.contains(&a).unwrap());
    }
}
