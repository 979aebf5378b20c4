//! Reading the files inside a disk image, read-only and in-process (SPEC.md §24): partition
//! tables ([`partition`]), LVM2 logical volumes ([`lvm`]), which filesystem a volume holds
//! ([`detect`]), and the filesystem
//! readers ([`ext4`], [`fat`], [`ntfs`]), behind one [`Filesystem`] interface that [`walk`] and
//! [`content`] use for every kind.
//!
//! Everything here reads bytes that came from a backed-up guest, so nothing trusts them:
//! every offset is checked against the volume before it is read, every count is bounded
//! before memory is reserved for it ([`limits`]), directory walks keep the inodes they are
//! inside and refuse a loop, and symlinks are followed at most [`limits::SYMLINK_HOPS`] times.
//! A malformed structure is [`FsError::Corrupt`] naming what and where, never a panic.
//!
//! The module needs no repository: it reads any [`Image`], so the fuzz targets build it
//! without RocksDB. `ops::files` puts a snapshot's disk behind [`Image`].

pub mod content;
pub mod detect;
pub mod ext4;
pub mod fat;
pub mod ntfs;

mod fs_error;
pub mod image;
pub mod limits;
pub mod lvm;
pub mod partition;
pub mod path;
pub mod walk;

pub use fs_error::FsError;
pub use image::{Image, Slice};

/// What kind of file an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A socket.
    Socket,
}

impl FileKind {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "regular file",
            Self::Dir => "directory",
            Self::Symlink => "symlink",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Fifo => "FIFO",
            Self::Socket => "socket",
        }
    }

    /// The letter `ls -l` shows for it.
    pub fn ls_letter(self) -> char {
        match self {
            Self::File => '-',
            Self::Dir => 'd',
            Self::Symlink => 'l',
            Self::CharDevice => 'c',
            Self::BlockDevice => 'b',
            Self::Fifo => 'p',
            Self::Socket => 's',
        }
    }
}

/// A timestamp: seconds since the Unix epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
pub struct Timestamp {
    /// Seconds since 1970-01-01T00:00:00Z (negative before).
    pub secs: i64,
    /// Nanoseconds, below 10^9.
    pub nanos: u32,
}

/// What a filesystem says about one inode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stat {
    /// The inode number (a filesystem-specific file id: the directory entry's position on
    /// FAT). Two names with one inode number are hard links.
    pub ino: u64,
    /// The kind of file.
    pub kind: FileKind,
    /// Size in bytes (a symlink: its target's length).
    pub size: u64,
    /// Permission bits (`0o7777`); FAT reports 0o755 for directories and 0o644 (0o444 when
    /// read-only) for files.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Number of names (hard links).
    pub nlink: u32,
    /// Last modification.
    pub mtime: Timestamp,
    /// Last access.
    pub atime: Timestamp,
    /// Last status change (creation on FAT).
    pub ctime: Timestamp,
    /// Device number of a character or block device (`major << 32 | minor`), else 0.
    pub rdev: u64,
}

impl Stat {
    /// An inode that records nothing but its kind and mode: owned by root, one link, empty,
    /// all times at the epoch (a FAT root directory has no entry to hold them).
    pub fn bare(ino: u64, kind: FileKind, mode: u32) -> Self {
        Self {
            ino,
            kind,
            size: 0,
            mode,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            rdev: 0,
        }
    }
}

/// One name in a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name's bytes, as stored (ext4 names are bytes, not always UTF-8).
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: u64,
}

/// Where a run of a file's bytes is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtentData {
    /// At this byte offset of the volume.
    Volume(u64),
    /// Not stored: reads as zeros (a hole, or an allocated but unwritten extent).
    Zero,
    /// Stored inside the inode (ext4 inline data).
    Inline(Vec<u8>),
}

/// A run of a file's bytes: `len` bytes from file offset `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileExtent {
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where they are.
    pub data: ExtentData,
}

/// A read-only filesystem: inodes, directories and where each file's bytes lie.
///
/// Implementations check what they read and bound what they allocate (module docs). Paths
/// are resolved by [`path::resolve`] over [`Filesystem::read_dir`] and
/// [`Filesystem::read_link`], the same way for every kind.
pub trait Filesystem: Send + Sync {
    /// Its kind, for messages and listings (`ext4`, `fat32`, ...).
    fn kind(&self) -> &'static str;
    /// The root directory's inode.
    fn root(&self) -> u64;
    /// What inode `ino` is.
    fn stat(&self, ino: u64) -> Result<Stat, FsError>;
    /// The entries of directory `ino`, without `.` and `..`.
    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError>;
    /// The target of symlink `ino`.
    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError>;
    /// Where the bytes of file `ino` lie, in file order, covering `0..stat.size` with no gap
    /// (holes are [`ExtentData::Zero`] runs).
    fn extents(&self, ino: u64) -> Result<Vec<FileExtent>, FsError>;
    /// A warning the reader should show once (a journal not replayed, say), if any.
    fn warning(&self) -> Option<String> {
        None
    }
}
