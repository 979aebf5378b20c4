//! The ext2/3/4 superblock and block group descriptors: the geometry every other read uses.

use super::super::image::{Image, Le};
use super::super::FsError;

/// Incompatible features tessera's reader handles; a filesystem with any other is refused
/// (reading it could return wrong bytes).
const INCOMPAT_FILETYPE: u32 = 0x2;
pub(super) const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_INLINE_DATA: u32 = 0x8000;
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_META_BG
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR
    | INCOMPAT_INLINE_DATA;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
/// Block bitmaps count clusters of `1 << log_cluster_ratio` blocks; everything the reader
/// uses (extents, descriptors, inode tables) still counts blocks.
const RO_COMPAT_BIGALLOC: u32 = 0x200;

/// What the reader needs from the superblock, checked.
#[derive(Debug, Clone)]
pub(super) struct Superblock {
    pub block_size: u64,
    pub blocks_count: u64,
    pub first_data_block: u64,
    pub blocks_per_group: u64,
    pub inodes_per_group: u64,
    pub inodes_count: u64,
    pub inode_size: u64,
    pub desc_size: u64,
    pub incompat: u32,
    ro_compat: u32,
    first_meta_bg: u64,
    /// Blocks per allocation cluster, as a power of two (0 without bigalloc).
    log_cluster_ratio: u32,
    pub groups: u64,
}

impl Superblock {
    pub(super) fn read(volume: &dyn Image) -> Result<Self, FsError> {
        let raw = volume.read_vec(1024, 1024, "the ext superblock")?;
        let le = Le::new(&raw, "the ext superblock");
        if le.u16(0x38)? != 0xef53 {
            return Err(FsError::corrupt("no ext superblock magic at byte 1080"));
        }
        let log_block = le.u32(0x18)?;
        if log_block > 6 {
            return Err(FsError::corrupt(format!(
                "ext block size 1024 << {log_block} is not one Linux reads"
            )));
        }
        let block_size = 1024u64 << log_block;
        let rev = le.u32(0x4c)?;
        let (inode_size, incompat, ro_compat) = if rev == 0 {
            (128, 0, 0)
        } else {
            (u64::from(le.u16(0x58)?), le.u32(0x60)?, le.u32(0x64)?)
        };
        let unknown = incompat & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FsError::Unsupported(format!(
                "the ext filesystem uses incompatible features {unknown:#x} tessera does not read (e.g. compression, encryption, casefolding or a journal device)"
            )));
        }
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Err(FsError::Unsupported(
                "the volume is an external ext journal".into(),
            ));
        }
        let bit64 = incompat & INCOMPAT_64BIT != 0;
        let desc_size = if bit64 { u64::from(le.u16(0xfe)?) } else { 32 };
        let mut blocks_count = u64::from(le.u32(0x4)?);
        if bit64 {
            blocks_count |= u64::from(le.u32(0x150)?) << 32;
        }
        let log_cluster_ratio = if ro_compat & RO_COMPAT_BIGALLOC != 0 {
            le.u32(0x1c)?.checked_sub(log_block).filter(|r| *r <= 16).ok_or_else(|| {
                FsError::corrupt("ext superblock: a bigalloc cluster smaller than a block or above 64 K blocks")
            })?
        } else {
            0
        };
        let sb = Self {
            block_size,
            blocks_count,
            first_data_block: u64::from(le.u32(0x14)?),
            blocks_per_group: u64::from(le.u32(0x20)?),
            inodes_per_group: u64::from(le.u32(0x28)?),
            inodes_count: u64::from(le.u32(0x0)?),
            inode_size,
            desc_size,
            incompat,
            ro_compat,
            first_meta_bg: u64::from(le.u32(0x104)?),
            log_cluster_ratio,
            groups: 0,
        };
        sb.checked(volume.len())
    }

    fn checked(mut self, volume_len: u64) -> Result<Self, FsError> {
        let bad = |what: String| Err(FsError::corrupt(format!("ext superblock: {what}")));
        if !(128..=self.block_size).contains(&self.inode_size) || !self.inode_size.is_power_of_two()
        {
            return bad(format!("inode size {}", self.inode_size));
        }
        if !(32..=1024).contains(&self.desc_size) || !self.desc_size.is_power_of_two() {
            return bad(format!("group descriptor size {}", self.desc_size));
        }
        // A group's block bitmap is one block: one bit per cluster.
        if self.blocks_per_group == 0
            || self.blocks_per_group > (8 * self.block_size) << self.log_cluster_ratio
        {
            return bad(format!("{} blocks per group", self.blocks_per_group));
        }
        if self.inodes_per_group == 0 || self.inodes_per_group > 8 * self.block_size {
            return bad(format!("{} inodes per group", self.inodes_per_group));
        }
        if self.first_data_block >= self.blocks_count {
            return bad(format!(
                "first data block {} of {}",
                self.first_data_block, self.blocks_count
            ));
        }
        let bytes = self.blocks_count.checked_mul(self.block_size);
        if bytes.is_none_or(|b| b > volume_len) {
            return bad(format!(
                "{} blocks of {} bytes do not fit in the volume's {volume_len} bytes",
                self.blocks_count, self.block_size
            ));
        }
        self.groups = (self.blocks_count - self.first_data_block).div_ceil(self.blocks_per_group);
        if self.groups.saturating_mul(self.inodes_per_group) < self.inodes_count {
            return bad(format!(
                "{} inodes do not fit in {} groups of {}",
                self.inodes_count, self.groups, self.inodes_per_group
            ));
        }
        Ok(self)
    }

    /// Whether the journal needs replaying (the filesystem was not cleanly unmounted).
    pub(super) fn needs_recovery(&self) -> bool {
        self.incompat & INCOMPAT_RECOVER != 0
    }

    /// Whether directory entries carry the file type (else `name_len` is 16 bits).
    pub(super) fn dirent_filetype(&self) -> bool {
        self.incompat & INCOMPAT_FILETYPE != 0
    }

    /// The block of group descriptor `group`'s descriptor table block.
    fn descriptor_block(&self, group: u64) -> u64 {
        let per_block = self.block_size / self.desc_size;
        let table_block = group / per_block;
        if self.incompat & INCOMPAT_META_BG == 0 || table_block < self.first_meta_bg {
            return self.first_data_block + 1 + table_block;
        }
        // meta_bg: each meta group's descriptors sit in its first group, after a superblock
        // backup when that group has one.
        let first_group = table_block * per_block;
        let start = self.first_data_block + first_group * self.blocks_per_group;
        start + u64::from(self.has_super_backup(first_group))
    }

    fn has_super_backup(&self, group: u64) -> bool {
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || group <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|base| {
            let mut n = group;
            while n.is_multiple_of(*base) {
                n /= base;
            }
            n == 1
        })
    }

    /// The first block of group `group`'s inode table.
    pub(super) fn inode_table(&self, volume: &dyn Image, group: u64) -> Result<u64, FsError> {
        let per_block = self.block_size / self.desc_size;
        let at =
            self.descriptor_block(group) * self.block_size + (group % per_block) * self.desc_size;
        let raw = volume.read_vec(at, self.desc_size as usize, "an ext group descriptor")?;
        let le = Le::new(&raw, "an ext group descriptor");
        let mut table = u64::from(le.u32(0x8)?);
        if self.desc_size >= 64 {
            table |= u64::from(le.u32(0x28)?) << 32;
        }
        let table_blocks = (self.inodes_per_group * self.inode_size).div_ceil(self.block_size);
        if table == 0 || table.saturating_add(table_blocks) > self.blocks_count {
            return Err(FsError::corrupt(format!(
                "ext group {group}'s inode table at block {table} lies outside the filesystem ({} blocks)",
                self.blocks_count
            )));
        }
        Ok(table)
    }
}
