//! ext2, ext3 and ext4, read-only: superblock and group descriptors (with `64bit`,
//! `flex_bg`, `meta_bg`), inodes with nanosecond times and 32-bit ids, extent trees and
//! classic block maps, unwritten extents and holes, linear and hashed directories, fast,
//! slow and inline symlinks, inline data.
//!
//! Written here rather than on `ext4-view` (SPEC.md §24.2): that crate reads files and
//! directories well but exposes neither inode numbers, link counts nor times (hard links,
//! `stat`, `get` keeping mtimes), nor where a file's blocks lie (sparse restores, naming a
//! damaged byte range, and `find`'s per-chunk cache all need the extent map).
//!
//! The journal is not replayed: a filesystem backed up while mounted (a crash-consistent
//! snapshot) reads as its last checkpoint, and [`Filesystem::warning`] says so.

mod dir;
mod extents;
mod inode;
mod superblock;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::content::read_extents;
use super::image::Image;
use super::limits::{MAX_DIR_BYTES, MAX_LINK_TARGET};
use super::{DirEntry, FileExtent, FileKind, Filesystem, FsError, Stat};
use inode::{Inode, FLAG_EXTENTS, FLAG_INLINE_DATA};
use superblock::Superblock;

/// The root directory's inode number.
const ROOT_INO: u64 = 2;

/// An ext2/3/4 filesystem on a volume.
pub struct Ext4 {
    volume: Arc<dyn Image>,
    sb: Superblock,
    /// Inode table block of each group met so far: every inode read needs its group's, and
    /// reading the descriptor again each time was a third of a tree walk. At most one entry
    /// per group holding an inode that was read.
    inode_tables: Mutex<HashMap<u64, u64>>,
}

impl Ext4 {
    /// Reads and checks the superblock of the filesystem on `volume`.
    pub fn open(volume: Arc<dyn Image>) -> Result<Self, FsError> {
        let sb = Superblock::read(volume.as_ref())?;
        let fs = Self {
            volume,
            sb,
            inode_tables: Mutex::new(HashMap::new()),
        };
        let root = fs.inode(ROOT_INO)?;
        if root.stat.kind != FileKind::Dir {
            return Err(FsError::corrupt("the ext root inode is not a directory"));
        }
        Ok(fs)
    }

    /// Block `block` of the filesystem.
    fn read_block(&self, block: u64, what: &str) -> Result<Vec<u8>, FsError> {
        if block >= self.sb.blocks_count {
            return Err(FsError::corrupt(format!(
                "{what} at block {block} lies outside the filesystem ({} blocks)",
                self.sb.blocks_count
            )));
        }
        self.volume.read_vec(
            block * self.sb.block_size,
            self.sb.block_size as usize,
            what,
        )
    }

    fn inode_table(&self, group: u64) -> Result<u64, FsError> {
        let tables = || {
            self.inode_tables
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        let known = tables().get(&group).copied();
        if let Some(table) = known {
            return Ok(table);
        }
        let table = self.sb.inode_table(self.volume.as_ref(), group)?;
        tables().insert(group, table);
        Ok(table)
    }

    fn inode(&self, ino: u64) -> Result<Inode, FsError> {
        if ino == 0 || ino > self.sb.inodes_count {
            return Err(FsError::corrupt(format!(
                "ext inode number {ino} is outside 1..={}",
                self.sb.inodes_count
            )));
        }
        let group = (ino - 1) / self.sb.inodes_per_group;
        let index = (ino - 1) % self.sb.inodes_per_group;
        let table = self.inode_table(group)?;
        let at = table * self.sb.block_size + index * self.sb.inode_size;
        let raw = self
            .volume
            .read_vec(at, self.sb.inode_size as usize, "an ext inode")?;
        let inode = Inode::parse(ino, &raw)?;
        // Logical block numbers are 32 bits: no ext file is longer than 2^32 blocks. A
        // larger size would only stream zeros (tar, cat, find's hash) for ever.
        let max = self.sb.block_size << 32;
        if inode.stat.size > max {
            return Err(FsError::corrupt(format!(
                "ext inode {ino} claims {} bytes, more than any ext file can hold ({max})",
                inode.stat.size
            )));
        }
        Ok(inode)
    }
}

impl Filesystem for Ext4 {
    fn kind(&self) -> &'static str {
        "ext"
    }

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        Ok(self.inode(ino)?.stat)
    }

    fn read_dir(&self, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let inode = self.inode(ino)?;
        if inode.stat.kind != FileKind::Dir {
            return Err(FsError::NotADirectory {
                path: format!("inode {ino}"),
            });
        }
        let filetype = self.sb.dirent_filetype();
        let mut out = Vec::new();
        if inode.flags & FLAG_INLINE_DATA != 0 {
            // The parent's inode number, then entries.
            let mut data = inode.block[4..].to_vec();
            data.extend_from_slice(&inode.inline_tail);
            let len = data.len() / 4 * 4;
            dir::parse_block(ino, &data[..len], filetype, &mut out)?;
            return Ok(out);
        }
        if inode.stat.size > MAX_DIR_BYTES {
            return Err(FsError::corrupt(format!(
                "ext directory inode {ino} claims {} bytes, more than {MAX_DIR_BYTES}",
                inode.stat.size
            )));
        }
        let data = read_extents(
            self.volume.as_ref(),
            &extents::file_extents(self, &inode)?,
            inode.stat.size,
        )?;
        for block in data.chunks(self.sb.block_size as usize) {
            dir::parse_block(ino, block, filetype, &mut out)?;
        }
        Ok(out)
    }

    fn read_link(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(ino)?;
        let size = inode.stat.size;
        if size > MAX_LINK_TARGET {
            return Err(FsError::corrupt(format!(
                "ext symlink inode {ino} claims a {size}-byte target"
            )));
        }
        if size < 60 && inode.flags & (FLAG_EXTENTS | FLAG_INLINE_DATA) == 0 {
            // A fast symlink: the target is in i_block.
            return Ok(inode.block[..size as usize].to_vec());
        }
        read_extents(
            self.volume.as_ref(),
            &extents::file_extents(self, &inode)?,
            size,
        )
    }

    fn extents(&self, ino: u64) -> Result<Vec<FileExtent>, FsError> {
        let inode = self.inode(ino)?;
        if inode.stat.kind != FileKind::File {
            return Ok(Vec::new());
        }
        extents::file_extents(self, &inode)
    }

    fn warning(&self) -> Option<String> {
        self.sb.needs_recovery().then(|| {
            "the ext filesystem was not cleanly unmounted and its journal is not replayed: \
             changes made shortly before the backup may be missing"
                .to_string()
        })
    }
}
