//! Which filesystem (or other volume content) a volume holds, by its signatures, and opening
//! the ones tessera reads.

use std::sync::Arc;

use super::image::Image;
use super::{ext4, fat, ntfs, Filesystem, FsError};

/// What a volume's first bytes say it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    /// ext2, ext3 or ext4.
    Ext,
    /// FAT12, FAT16 or FAT32.
    Fat,
    /// NTFS.
    Ntfs,
    /// An LVM2 physical volume.
    Lvm2,
    /// XFS.
    Xfs,
    /// btrfs.
    Btrfs,
    /// Linux swap.
    Swap,
    /// All zeros where signatures would be.
    Empty,
    /// Nothing recognised.
    Unknown,
}

impl VolumeKind {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ext => "ext2/3/4",
            Self::Fat => "FAT",
            Self::Ntfs => "NTFS",
            Self::Lvm2 => "an LVM2 physical volume",
            Self::Xfs => "XFS",
            Self::Btrfs => "btrfs",
            Self::Swap => "Linux swap",
            Self::Empty => "zeros (no filesystem)",
            Self::Unknown => "no filesystem tessera recognises",
        }
    }
}

/// Whether a boot sector carries a plausible FAT BPB: bytes per sector a power of two from
/// 512 to 4096, sectors per cluster a power of two, reserved sectors and FAT count non-zero.
pub fn looks_like_fat(sector: &[u8]) -> bool {
    if sector.len() < 512 {
        return false;
    }
    let bps = u16::from_le_bytes([sector[11], sector[12]]);
    let spc = sector[13];
    let reserved = u16::from_le_bytes([sector[14], sector[15]]);
    let fats = sector[16];
    matches!(bps, 512 | 1024 | 2048 | 4096)
        && spc.is_power_of_two()
        && reserved > 0
        && (1..=4).contains(&fats)
        && sector[510..512] == [0x55, 0xaa]
}

/// What `volume` holds, by signature.
pub fn detect(volume: &dyn Image) -> Result<VolumeKind, FsError> {
    let head_len = volume.len().min(0x1_0100) as usize;
    let head = volume.read_vec(0, head_len, "the volume's first sectors")?;
    let at = |offset: usize, sig: &[u8]| head.get(offset..offset + sig.len()) == Some(sig);
    let kind = if at(1024 + 0x38, &[0x53, 0xef]) {
        VolumeKind::Ext
    } else if at(3, b"NTFS    ") {
        VolumeKind::Ntfs
    } else if head.len() >= 512 && matches!(head[0], 0xeb | 0xe9) && looks_like_fat(&head[..512]) {
        VolumeKind::Fat
    } else if (0..4).any(|s| at(s * 512, b"LABELONE") && at(s * 512 + 24, b"LVM2 001")) {
        VolumeKind::Lvm2
    } else if at(0, b"XFSB") {
        VolumeKind::Xfs
    } else if at(0x1_0040, b"_BHRfS_M") {
        VolumeKind::Btrfs
    } else if at(4086, b"SWAPSPACE2") || at(4086, b"SWAP-SPACE") {
        VolumeKind::Swap
    } else if head.iter().all(|b| *b == 0) {
        VolumeKind::Empty
    } else {
        VolumeKind::Unknown
    };
    Ok(kind)
}

/// Opens the filesystem on `volume`; [`FsError::Unsupported`] naming what was found when it
/// is not one tessera reads in-process.
pub fn open(volume: Arc<dyn Image>) -> Result<Box<dyn Filesystem>, FsError> {
    match detect(volume.as_ref())? {
        VolumeKind::Ext => Ok(Box::new(ext4::Ext4::open(volume)?)),
        VolumeKind::Fat => Ok(Box::new(fat::Fat::open(volume)?)),
        VolumeKind::Ntfs => Ok(Box::new(ntfs::Ntfs::open(volume)?)),
        kind => Err(FsError::Unsupported(format!(
            "the volume holds {}; tessera reads files from ext2/3/4, FAT and NTFS in-process{}",
            kind.name(),
            match kind {
                VolumeKind::Xfs | VolumeKind::Btrfs =>
                    "; restore or `tessera serve-nbd` the disk and mount it read-only to read this one",
                _ => "",
            }
        ))),
    }
}
