//! One ext inode: its fields, and the inline data an `inline_data` inode keeps.

use super::super::image::Le;
use super::super::{FileKind, FsError, Stat, Timestamp};

pub(super) const FLAG_EXTENTS: u32 = 0x8_0000;
pub(super) const FLAG_INLINE_DATA: u32 = 0x1000_0000;
const FLAG_ENCRYPTED: u32 = 0x800;

/// An inode's fields the reader uses.
#[derive(Debug, Clone)]
pub(super) struct Inode {
    pub ino: u64,
    pub stat: Stat,
    pub flags: u32,
    /// `i_block`: block pointers, an extent tree's root, a fast symlink's target, or inline
    /// data's first 60 bytes.
    pub block: [u8; 60],
    /// The `system.data` extended attribute: inline data past the first 60 bytes.
    pub inline_tail: Vec<u8>,
}

impl Inode {
    /// Decodes inode `ino` from its on-disk bytes (`raw` is the inode record, 128 bytes or
    /// more).
    pub(super) fn parse(ino: u64, raw: &[u8]) -> Result<Self, FsError> {
        let le = Le::new(raw, "an ext inode");
        let mode = le.u16(0x0)?;
        let kind = match mode & 0xf000 {
            0x4000 => FileKind::Dir,
            0x8000 => FileKind::File,
            0xa000 => FileKind::Symlink,
            0x2000 => FileKind::CharDevice,
            0x6000 => FileKind::BlockDevice,
            0x1000 => FileKind::Fifo,
            0xc000 => FileKind::Socket,
            other => {
                return Err(FsError::corrupt(format!(
                    "ext inode {ino} has file type bits {other:#06x} (mode {mode:#o}): it is free or damaged"
                )))
            }
        };
        let flags = le.u32(0x20)?;
        if flags & FLAG_ENCRYPTED != 0 {
            return Err(FsError::Unsupported(format!(
                "ext inode {ino} is encrypted (fscrypt)"
            )));
        }
        let extra = if raw.len() > 128 {
            u64::from(le.u16(0x80)?)
        } else {
            0
        };
        let time = |base: usize, extra_at: usize| -> Result<Timestamp, FsError> {
            let secs = i64::from(le.u32(base)?.cast_signed());
            if extra_at + 4 <= 128 + extra as usize {
                let x = le.u32(extra_at)?;
                Ok(Timestamp {
                    secs: secs + (i64::from(x & 3) << 32),
                    nanos: (x >> 2).min(999_999_999),
                })
            } else {
                Ok(Timestamp { secs, nanos: 0 })
            }
        };
        let mut block = [0u8; 60];
        block.copy_from_slice(le.bytes(0x28, 60)?);
        let rdev = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => device_number(&block),
            _ => 0,
        };
        let stat = Stat {
            ino,
            kind,
            size: u64::from(le.u32(0x4)?) | (u64::from(le.u32(0x6c)?) << 32),
            mode: u32::from(mode & 0o7777),
            uid: u32::from(le.u16(0x2)?) | (u32::from(le.u16(0x78)?) << 16),
            gid: u32::from(le.u16(0x18)?) | (u32::from(le.u16(0x7a)?) << 16),
            nlink: u32::from(le.u16(0x1a)?),
            atime: time(0x8, 0x8c)?,
            ctime: time(0xc, 0x84)?,
            mtime: time(0x10, 0x88)?,
            rdev,
        };
        let inline_tail = if flags & FLAG_INLINE_DATA != 0 {
            inline_xattr(raw, 128 + extra as usize)?
        } else {
            Vec::new()
        };
        Ok(Self {
            ino,
            stat,
            flags,
            block,
            inline_tail,
        })
    }

    /// The inline data: `i_block` then the `system.data` attribute, cut at the file size.
    pub(super) fn inline_data(&self) -> Vec<u8> {
        let mut data = self.block.to_vec();
        data.extend_from_slice(&self.inline_tail);
        data.truncate(usize::try_from(self.stat.size).unwrap_or(usize::MAX));
        data
    }
}

/// A device inode's number: the old 16-bit encoding in `i_block[0]`, or the new one in
/// `i_block[1]`.
fn device_number(block: &[u8; 60]) -> u64 {
    let old = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    let new = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    let (major, minor) = if old != 0 {
        ((old >> 8) & 0xff, old & 0xff)
    } else {
        ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
    };
    (u64::from(major) << 32) | u64::from(minor)
}

/// The value of the in-inode extended attribute `system.data` (name index 7, name "data"),
/// or nothing. The attributes follow the inode's extra fields: a 4-byte magic, then entries
/// whose values are addressed from just after the magic.
fn inline_xattr(raw: &[u8], start: usize) -> Result<Vec<u8>, FsError> {
    let Some(area) = raw.get(start..) else {
        return Ok(Vec::new());
    };
    if area.len() < 4 || area[..4] != 0xea02_0000u32.to_le_bytes() {
        return Ok(Vec::new());
    }
    let body = &area[4..];
    let le = Le::new(body, "an ext in-inode attribute");
    let mut at = 0usize;
    while at + 16 <= body.len() {
        let name_len = usize::from(le.u8(at)?);
        if name_len == 0 && le.u32(at)? == 0 {
            break;
        }
        let index = le.u8(at + 1)?;
        let value_offs = usize::from(le.u16(at + 2)?);
        let value_size = le.u32(at + 8)? as usize;
        let name = le.bytes(at + 16, name_len)?;
        if index == 7 && name == b"data" {
            return Ok(le.bytes(value_offs, value_size)?.to_vec());
        }
        at += (16 + name_len).div_ceil(4) * 4;
    }
    Ok(Vec::new())
}
