//! The pieces a range read of a disk is answered with: [`Segment`]s of bytes or zeros, and
//! [`Extent`]s saying which runs are zero. Produced by the repository's disk reader
//! (`ops::disk_reader`) and by any other NBD export ([`crate::nbd::NbdExport`]); kept apart
//! from both so the NBD protocol code builds without the repository (the fuzzer's build).

/// A piece of a read: data, or a run of zeros (`data` is `None`).
#[derive(Debug)]
pub struct Segment {
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The bytes, or `None` for zeros.
    pub data: Option<Vec<u8>>,
}

/// A run of blocks of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// All zero (not stored).
    pub zero: bool,
}
