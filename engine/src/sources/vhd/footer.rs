//! The hard disk footer (spec "Hard Disk Footer Format"; field table in
//! [`crate::formats::vhd`]): found in the last 512 bytes of the file, or in the last 511
//! bytes for images from tools that wrote a 511-byte footer (the missing last byte is
//! reserved and taken as zero). Dynamic and differencing disks must also carry an intact
//! copy at offset 0 that agrees on type, size, data offset and unique id.

use std::path::Path;

use super::{bad, be_u32, be_u64, read_exact};
use crate::error::Result;
use crate::formats::vhd::{
    checksum_without_field, footer as f, format_uuid, FOOTER_COOKIE, FOOTER_LEN, TYPE_DIFFERENCING,
    TYPE_DYNAMIC, TYPE_FIXED,
};
use crate::sources::ReadAt;

/// The three disk types tessera reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskType {
    /// Data in the first `current size` bytes of the file.
    Fixed,
    /// Blocks through a BAT; unallocated blocks read as zeros.
    Dynamic,
    /// Blocks through a BAT; whatever is not marked in a block's bitmap reads from the parent.
    Differencing,
}

impl DiskType {
    /// The name recorded as `vhd.type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fixed => "fixed",
            Self::Dynamic => "dynamic",
            Self::Differencing => "differencing",
        }
    }
}

/// What tessera uses from the footer.
#[derive(Debug, Clone)]
pub struct Footer {
    /// Where the footer starts: everything of the image lies before it.
    pub at: u64,
    /// The disk type.
    pub disk_type: DiskType,
    /// The disk size in bytes.
    pub current_size: u64,
    /// Offset of the dynamic disk header (dynamic and differencing disks).
    pub data_offset: u64,
    /// The disk's unique id.
    pub uuid: [u8; 16],
}

/// Reads and checks the footer of the VHD `file` of length `len`.
pub fn read(file: &dyn ReadAt, path: &Path, len: u64) -> Result<Footer> {
    if len < FOOTER_LEN {
        return Err(bad(
            path,
            format!("the file is {len} bytes long, shorter than a VHD footer (512 bytes)"),
        ));
    }
    let mut raw = [0u8; FOOTER_LEN as usize];
    let mut at = len - FOOTER_LEN;
    read_exact(file, path, &mut raw, at, "the footer")?;
    if raw[..8] != *FOOTER_COOKIE {
        // A 511-byte footer (old tools): its cookie starts one byte later.
        let mut short = [0u8; FOOTER_LEN as usize];
        read_exact(file, path, &mut short[..511], len - 511, "the footer")?;
        if short[..8] == *FOOTER_COOKIE {
            raw = short;
            at = len - 511;
        } else {
            return Err(no_footer(file, path, len, &raw));
        }
    }
    let footer = parse(&raw, at).map_err(|reason| bad(path, reason))?;
    if footer.disk_type != DiskType::Fixed {
        check_copy(file, path, &footer)?;
    }
    Ok(footer)
}

fn no_footer(file: &dyn ReadAt, path: &Path, len: u64, tail: &[u8]) -> crate::error::Error {
    let mut head = [0u8; 8];
    let copy_ok =
        read_exact(file, path, &mut head, 0, "the footer copy").is_ok() && head == *FOOTER_COOKIE;
    let found = String::from_utf8_lossy(tail.get(..8).unwrap_or_default()).into_owned();
    if copy_ok {
        bad(
            path,
            format!(
                "no footer at the end (offset {} holds {found:?}, not \"conectix\") although the \
                 footer copy at offset 0 is present: the file is truncated or still being written",
                len - FOOTER_LEN
            ),
        )
    } else {
        bad(
            path,
            format!(
                "no VHD footer: offset {} holds {found:?}, not the cookie \"conectix\"",
                len - FOOTER_LEN
            ),
        )
    }
}

/// Checks a footer's cookie, checksum, version and type; the error says what is wrong.
fn parse(raw: &[u8; FOOTER_LEN as usize], at: u64) -> std::result::Result<Footer, String> {
    if raw[..8] != *FOOTER_COOKIE {
        return Err(format!(
            "footer at offset {at}: cookie is {:?}, not \"conectix\"",
            String::from_utf8_lossy(&raw[..8])
        ));
    }
    let stored = be_u32(raw, f::CHECKSUM);
    let computed = checksum_without_field(raw, f::CHECKSUM);
    if stored != computed {
        return Err(format!(
            "footer at offset {at}: checksum field (offset {}) is {stored:#010x}, the bytes sum to {computed:#010x}",
            at + f::CHECKSUM as u64
        ));
    }
    let version = be_u32(raw, f::VERSION);
    if version >> 16 != 1 {
        return Err(format!(
            "footer at offset {at}: file format version {version:#010x} is not 1.x"
        ));
    }
    let disk_type = match be_u32(raw, f::DISK_TYPE) {
        TYPE_FIXED => DiskType::Fixed,
        TYPE_DYNAMIC => DiskType::Dynamic,
        TYPE_DIFFERENCING => DiskType::Differencing,
        other => {
            return Err(format!(
                "footer at offset {at}: disk type {other} (offset {}) is not 2 (fixed), 3 (dynamic) or 4 (differencing)",
                at + f::DISK_TYPE as u64
            ))
        }
    };
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&raw[f::UNIQUE_ID..f::UNIQUE_ID + 16]);
    Ok(Footer {
        at,
        disk_type,
        current_size: be_u64(raw, f::CURRENT_SIZE),
        data_offset: be_u64(raw, f::DATA_OFFSET),
        uuid,
    })
}

/// The copy at offset 0 of a dynamic or differencing disk must be intact and agree.
fn check_copy(file: &dyn ReadAt, path: &Path, footer: &Footer) -> Result<()> {
    if footer.at < FOOTER_LEN {
        return Err(bad(
            path,
            format!(
                "a {} disk needs a footer copy at offset 0, but the file is only {} bytes long",
                footer.disk_type.name(),
                footer.at + FOOTER_LEN
            ),
        ));
    }
    let mut raw = [0u8; FOOTER_LEN as usize];
    read_exact(file, path, &mut raw, 0, "the footer copy")?;
    let copy = parse(&raw, 0).map_err(|e| {
        bad(
            path,
            format!(
                "the footer copy at offset 0 is damaged ({e}); the footer at the end is intact"
            ),
        )
    })?;
    let same = copy.disk_type == footer.disk_type
        && copy.current_size == footer.current_size
        && copy.data_offset == footer.data_offset
        && copy.uuid == footer.uuid;
    if !same {
        return Err(bad(
            path,
            format!(
                "the footer copy at offset 0 ({} disk, {} bytes, header at {}, id {}) disagrees with the footer at offset {} ({} disk, {} bytes, header at {}, id {})",
                copy.disk_type.name(),
                copy.current_size,
                copy.data_offset,
                format_uuid(&copy.uuid),
                footer.at,
                footer.disk_type.name(),
                footer.current_size,
                footer.data_offset,
                format_uuid(&footer.uuid)
            ),
        ));
    }
    Ok(())
}
