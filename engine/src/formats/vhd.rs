//! Microsoft VHD ("Virtual Hard Disk Image Format Specification", version 1.0, 2006): the
//! constants and the checksum both the VHD reader and the VHD writer use. All multi-byte
//! fields are big-endian.
//!
//! Hard disk footer (512 bytes, at the end of every VHD; dynamic and differencing disks also
//! keep a copy at offset 0), spec section "Hard Disk Footer Format":
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | cookie `conectix` |
//! | 8 | 4 | features |
//! | 12 | 4 | file format version (0x0001_0000) |
//! | 16 | 8 | data offset: the dynamic header (0xFFFF_FFFF_FFFF_FFFF for fixed disks) |
//! | 24 | 4 | time stamp (seconds since 2000-01-01 UTC) |
//! | 28 | 4 | creator application |
//! | 32 | 4 | creator version |
//! | 36 | 4 | creator host OS |
//! | 40 | 8 | original size |
//! | 48 | 8 | current size (the disk size in bytes) |
//! | 56 | 4 | disk geometry (cylinders u16, heads u8, sectors per track u8) |
//! | 60 | 4 | disk type (2 fixed, 3 dynamic, 4 differencing) |
//! | 64 | 4 | checksum |
//! | 68 | 16 | unique id |
//! | 84 | 1 | saved state |
//!
//! Dynamic disk header (1024 bytes, at the footer's data offset), spec section "Dynamic Disk
//! Header Format":
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | cookie `cxsparse` |
//! | 8 | 8 | data offset (unused, 0xFFFF_FFFF_FFFF_FFFF) |
//! | 16 | 8 | table offset: the block allocation table (BAT) |
//! | 24 | 4 | header version (0x0001_0000) |
//! | 28 | 4 | max table entries |
//! | 32 | 4 | block size |
//! | 36 | 4 | checksum |
//! | 40 | 16 | parent unique id |
//! | 56 | 4 | parent time stamp |
//! | 64 | 512 | parent unicode name (UTF-16BE) |
//! | 576 | 8 × 24 | parent locator entries: platform code (4), platform data space (4), platform data length (4), reserved (4), platform data offset (8) |

/// Bytes per sector; every VHD offset in sectors uses it.
pub const SECTOR: u64 = 512;
/// Size of the hard disk footer.
pub const FOOTER_LEN: u64 = 512;
/// Size of the dynamic disk header.
pub const DYNAMIC_HEADER_LEN: u64 = 1024;
/// Cookie of the hard disk footer.
pub const FOOTER_COOKIE: &[u8; 8] = b"conectix";
/// Cookie of the dynamic disk header.
pub const DYNAMIC_COOKIE: &[u8; 8] = b"cxsparse";
/// Footer field offsets.
pub mod footer {
    /// Data offset (u64).
    pub const DATA_OFFSET: usize = 16;
    /// File format version (u32).
    pub const VERSION: usize = 12;
    /// Current size (u64).
    pub const CURRENT_SIZE: usize = 48;
    /// Disk type (u32).
    pub const DISK_TYPE: usize = 60;
    /// Checksum (u32).
    pub const CHECKSUM: usize = 64;
    /// Unique id (16 bytes).
    pub const UNIQUE_ID: usize = 68;
}
/// Dynamic disk header field offsets.
pub mod dynamic {
    /// Table offset (u64).
    pub const TABLE_OFFSET: usize = 16;
    /// Header version (u32).
    pub const VERSION: usize = 24;
    /// Max table entries (u32).
    pub const MAX_TABLE_ENTRIES: usize = 28;
    /// Block size (u32).
    pub const BLOCK_SIZE: usize = 32;
    /// Checksum (u32).
    pub const CHECKSUM: usize = 36;
    /// Parent unique id (16 bytes).
    pub const PARENT_ID: usize = 40;
    /// Parent unicode name (512 bytes, UTF-16BE).
    pub const PARENT_NAME: usize = 64;
    /// First of the 8 parent locator entries (24 bytes each).
    pub const LOCATORS: usize = 576;
    /// Number of parent locator entries.
    pub const LOCATOR_COUNT: usize = 8;
    /// Size of one parent locator entry.
    pub const LOCATOR_LEN: usize = 24;
}
/// Disk type of a fixed disk.
pub const TYPE_FIXED: u32 = 2;
/// Disk type of a dynamic disk.
pub const TYPE_DYNAMIC: u32 = 3;
/// Disk type of a differencing disk.
pub const TYPE_DIFFERENCING: u32 = 4;
/// A BAT entry of an unallocated block.
pub const BAT_UNALLOCATED: u32 = 0xFFFF_FFFF;

/// The VHD checksum: one's complement of the sum of all bytes, computed with the checksum
/// field itself zero (callers pass the structure with that field cleared).
pub fn checksum(bytes: &[u8]) -> u32 {
    !bytes
        .iter()
        .fold(0u32, |s, &b| s.wrapping_add(u32::from(b)))
}

/// The checksum of a structure whose checksum field (4 bytes at `field`) is ignored.
pub fn checksum_without_field(bytes: &[u8], field: usize) -> u32 {
    let stored: u32 = bytes
        .get(field..field + 4)
        .map_or(0, |f| f.iter().map(|&b| u32::from(b)).sum());
    !(!checksum(bytes)).wrapping_sub(stored)
}

/// A unique id as lowercase hex with dashes (8-4-4-4-12), in the byte order stored.
pub fn format_uuid(id: &[u8; 16]) -> String {
    let h = hex::encode(id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_ignores_its_own_field() {
        let mut b = [7u8; 512];
        b[64..68].fill(0);
        let sum = checksum(&b);
        b[64..68].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum_without_field(&b, 64), sum);
    }

    #[test]
    fn uuid_is_dashed_lowercase() {
        let id: [u8; 16] = core::array::from_fn(|i| (i * 17) as u8);
        assert_eq!(format_uuid(&id), "00112233-4455-6677-8899-aabbccddeeff");
    }
}
