//! Bounds on what a crafted image can make a reader do. Each is far above what a real
//! filesystem needs and low enough that the memory it allows is modest.

/// Symlinks followed while resolving one path (Linux's `MAXSYMLINKS` is 40).
pub const SYMLINK_HOPS: usize = 40;

/// Longest symlink target read (Linux's `PATH_MAX`).
pub const MAX_LINK_TARGET: u64 = 4096;

/// Largest directory read, in bytes of directory data (ext4's largest real directories are
/// a few hundred MiB with `large_dir`; 1 GiB bounds the memory a listing takes).
pub const MAX_DIR_BYTES: u64 = 1 << 30;

/// Most entries one directory may list.
pub const MAX_DIR_ENTRIES: usize = 10_000_000;

/// Most extents (runs) one file may have.
pub const MAX_EXTENTS: usize = 1 << 22;

/// Bytes of NTFS metadata one lookup may read (a file record and the records its attribute
/// list names, a directory's index besides its allocation, which is granted on top): a few
/// hundred times what a fragmented file needs, and it ends a crafted index or attribute list
/// that makes the `ntfs` crate read in a loop.
pub const MAX_NTFS_METADATA_READ: u64 = 64 << 20;
/// Bytes of one NTFS directory's index allocation read (and, through a loop in its tree, at
/// most held) by one listing, on top of [`MAX_NTFS_METADATA_READ`]: about two million
/// entries of average names. A larger directory is refused as damage, naming the limit.
pub const MAX_NTFS_INDEX_READ: u64 = 256 << 20;

/// Largest NTFS reparse point read (Windows' `MAXIMUM_REPARSE_DATA_BUFFER_SIZE`).
pub const MAX_REPARSE_BYTES: u64 = 16 * 1024;

/// Deepest directory nesting a walk descends (each level holds one listing in memory).
pub const MAX_DEPTH: usize = 4096;

/// Most logical partitions followed in an MBR extended partition's chain.
pub const MAX_LOGICAL_PARTITIONS: usize = 256;

/// Most GPT partition entries read (the usual table has 128).
pub const MAX_GPT_ENTRIES: u32 = 4096;
