//! Where backups read disks from.

pub mod raw;

use crate::error::Result;

/// A disk to back up, read by offset. Implementations must allow concurrent `read_at` calls.
pub trait BlockSource: Send + Sync {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset` (the range lies within the disk). Returns how
    /// many bytes were actually read from the medium (holes are filled without reading).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64>;
    /// What the source says about itself, recorded in the snapshot.
    fn identity(&self) -> Vec<(String, String)>;
}
