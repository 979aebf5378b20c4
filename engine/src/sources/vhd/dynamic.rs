//! Dynamic and differencing disks: the dynamic disk header, the block allocation table and
//! the sector bitmaps (spec "Dynamic Disk Header Format", "Block Allocation Table and Data
//! Blocks"; field table in [`crate::formats::vhd`]).
//!
//! - The header sits at the footer's data offset; its cookie, checksum (same rule as the
//!   footer's) and major version 1 are checked.
//! - Block size: a power of two from 4 KiB (so a block's bitmap is whole bytes) to 256 MiB.
//! - The BAT holds `max table entries` big-endian u32 sector numbers (`0xFFFFFFFF` =
//!   unallocated); `entries × block size` must cover the current size, and the whole table
//!   must lie inside the file before the footer. Only the entries covering the disk are read
//!   (at most 2^24 of them, 32 TiB at 2 MiB blocks).
//! - An allocated block is its sector bitmap (one bit per sector, bit 7 of byte 0 = first
//!   sector; rounded up to 512 bytes) followed by the block's data. Each must start after
//!   the footer copy, end before the footer (the last block only as far as the disk
//!   reaches), and overlap neither another block nor the header, the BAT or parent locator
//!   data. So every bitmap kept in memory is distinct bytes of the file.
//!
//! Bitmaps are read once when the image is opened: all-ones bitmaps (what qemu writes) are
//! not kept, a block with an all-zero bitmap holds nothing and is treated as unallocated;
//! other bitmaps are kept. A sector whose bit is 0 reads as zeros (dynamic) or from the parent
//! (differencing), without touching the file.

use std::collections::HashMap;
use std::path::Path;

use super::footer::{DiskType, Footer};
use super::locator::{self, ParentLink};
use super::{bad, be_u32, be_u64, read_exact};
use crate::error::Result;
use crate::formats::vhd::{
    checksum_without_field, dynamic as h, BAT_UNALLOCATED, DYNAMIC_COOKIE, DYNAMIC_HEADER_LEN,
    FOOTER_LEN, SECTOR,
};
use crate::sources::ReadAt;

/// Smallest block size read: one bitmap byte per block.
const MIN_BLOCK: u64 = 4096;
/// Largest block size read.
const MAX_BLOCK: u64 = 256 << 20;
/// Most BAT entries read for one disk.
const MAX_ENTRIES: u64 = 1 << 24;

/// Which sectors of an allocated block hold data.
#[derive(Debug)]
pub enum Bits {
    /// Every sector.
    All,
    /// The block's bitmap (bit set = sector present in this file).
    Map(Box<[u8]>),
}

impl Bits {
    /// Whether sector `s` of the block is present in this file.
    pub fn has(&self, s: u64) -> bool {
        match self {
            Self::All => true,
            Self::Map(m) => m
                .get((s / 8) as usize)
                .is_some_and(|b| b & (0x80 >> (s % 8)) != 0),
        }
    }
}

/// An allocated block.
#[derive(Debug)]
pub struct Block {
    /// File offset of the block's first data byte (after its bitmap).
    pub data_at: u64,
    /// Its sectors present in this file.
    pub bits: Bits,
}

/// The block map of a dynamic or differencing disk.
#[derive(Debug)]
pub struct Sparse {
    /// Block size in bytes.
    pub block_size: u64,
    /// One entry per block covering the disk: `None` = unallocated.
    pub blocks: Vec<Option<Block>>,
    /// The parent, for a differencing disk.
    pub parent: Option<ParentLink>,
}

/// Where the BAT is and what it must cover.
struct Table {
    block_size: u64,
    /// Max table entries.
    entries: u64,
    /// Offset of the BAT.
    at: u64,
    /// Entries covering the disk (the ones read).
    needed: u64,
}

/// Whether `len` bytes at `at` lie between the footer copy and the footer.
fn fits(footer: &Footer, at: u64, len: u64) -> bool {
    at >= FOOTER_LEN && at.checked_add(len).is_some_and(|e| e <= footer.at)
}

/// Reads the header, the BAT and the bitmaps of a dynamic or differencing disk.
pub fn read(file: &dyn ReadAt, path: &Path, footer: &Footer) -> Result<Sparse> {
    let hdr_at = footer.data_offset;
    if !fits(footer, hdr_at, DYNAMIC_HEADER_LEN) {
        return Err(bad(path, format!(
            "footer data offset {hdr_at} (footer at {}, field at +16): the 1024-byte dynamic header must lie between the footer copy and the footer",
            footer.at
        )));
    }
    let mut hdr = [0u8; DYNAMIC_HEADER_LEN as usize];
    read_exact(file, path, &mut hdr, hdr_at, "the dynamic disk header")?;
    check_header(&hdr, hdr_at).map_err(|r| bad(path, r))?;
    let table = table(&hdr, hdr_at, footer).map_err(|r| bad(path, r))?;
    let parent = if footer.disk_type == DiskType::Differencing {
        Some(locator::read(file, path, &hdr, hdr_at, footer.at)?)
    } else {
        None
    };

    let mut bat = vec![0u8; (table.needed * 4) as usize];
    read_exact(file, path, &mut bat, table.at, "the BAT")?;
    let bitmap_len = (table.block_size / SECTOR / 8).next_multiple_of(SECTOR);
    let mut placed = place_blocks(&bat, &table, bitmap_len, footer).map_err(|r| bad(path, r))?;
    let mut metadata = vec![
        (
            hdr_at,
            hdr_at + DYNAMIC_HEADER_LEN,
            "the dynamic header".to_string(),
        ),
        (
            table.at,
            table.at + table.entries * 4,
            "the BAT".to_string(),
        ),
    ];
    for l in parent.iter().flat_map(|p| &p.locators) {
        metadata.push((
            l.at,
            l.at + l.len,
            format!("{} parent locator data", l.code),
        ));
    }
    check_overlaps(&mut placed, &metadata, table.at).map_err(|r| bad(path, r))?;

    let mut bitmaps = read_bitmaps(file, path, &placed, bitmap_len, table.block_size)?;
    let mut blocks: Vec<Option<Block>> = (0..table.needed).map(|_| None).collect();
    for &(start, _, i) in &placed {
        let bits = match bitmaps.remove(&i) {
            None => Bits::All,
            Some(Some(map)) => Bits::Map(map),
            Some(None) => continue,
        };
        if let Some(slot) = blocks.get_mut(i as usize) {
            *slot = Some(Block {
                data_at: start + bitmap_len,
                bits,
            });
        }
    }
    Ok(Sparse {
        block_size: table.block_size,
        blocks,
        parent,
    })
}

/// Block size and BAT placement from the header, checked against the file and the size.
fn table(hdr: &[u8], hdr_at: u64, footer: &Footer) -> std::result::Result<Table, String> {
    let block_size = u64::from(be_u32(hdr, h::BLOCK_SIZE));
    if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
        return Err(format!(
            "dynamic header at {hdr_at}: block size {block_size} (offset {}) is not a power of two between 4 KiB and 256 MiB",
            hdr_at + h::BLOCK_SIZE as u64
        ));
    }
    let entries = u64::from(be_u32(hdr, h::MAX_TABLE_ENTRIES));
    let at = be_u64(hdr, h::TABLE_OFFSET);
    let needed = footer.current_size.div_ceil(block_size);
    if entries < needed {
        return Err(format!(
            "dynamic header at {hdr_at}: max table entries {entries} × block size {block_size} do not cover the current size {}",
            footer.current_size
        ));
    }
    if !fits(footer, at, entries * 4) {
        return Err(format!(
            "dynamic header at {hdr_at}: the BAT at offset {at} with {entries} entries ({} bytes) does not fit between the footer copy and the footer at {}",
            entries * 4,
            footer.at
        ));
    }
    if needed > MAX_ENTRIES {
        return Err(format!(
            "the disk needs {needed} BAT entries of {block_size} bytes; tessera reads at most {MAX_ENTRIES}"
        ));
    }
    Ok(Table {
        block_size,
        entries,
        at,
        needed,
    })
}

/// The file ranges `(start, end, BAT index)` of the allocated blocks, each checked to lie
/// inside the file (bitmap, then data as far as the disk reaches).
fn place_blocks(
    bat: &[u8],
    table: &Table,
    bitmap_len: u64,
    footer: &Footer,
) -> std::result::Result<Vec<(u64, u64, u64)>, String> {
    let mut placed = Vec::new();
    for (i, entry) in bat.chunks_exact(4).enumerate() {
        let sector = be_u32(entry, 0);
        if sector == BAT_UNALLOCATED {
            continue;
        }
        let i = i as u64;
        let start = u64::from(sector) * SECTOR;
        let data_len = (footer.current_size - i * table.block_size)
            .min(table.block_size)
            .next_multiple_of(SECTOR);
        if !fits(footer, start, bitmap_len + data_len) {
            return Err(format!(
                "BAT entry {i} (offset {}) points to sector {sector} (offset {start}): the block's bitmap and data ({} bytes) must lie between the footer copy and the footer at {}",
                table.at + i * 4,
                bitmap_len + data_len,
                footer.at
            ));
        }
        placed.push((start, start + bitmap_len + data_len, i));
    }
    Ok(placed)
}

fn check_header(hdr: &[u8], at: u64) -> std::result::Result<(), String> {
    if hdr.get(..8) != Some(DYNAMIC_COOKIE) {
        return Err(format!(
            "dynamic header at offset {at}: cookie is {:?}, not \"cxsparse\"",
            String::from_utf8_lossy(hdr.get(..8).unwrap_or_default())
        ));
    }
    let stored = be_u32(hdr, h::CHECKSUM);
    let computed = checksum_without_field(hdr, h::CHECKSUM);
    if stored != computed {
        return Err(format!(
            "dynamic header at offset {at}: checksum field (offset {}) is {stored:#010x}, the bytes sum to {computed:#010x}",
            at + h::CHECKSUM as u64
        ));
    }
    let version = be_u32(hdr, h::VERSION);
    if version >> 16 != 1 {
        return Err(format!(
            "dynamic header at offset {at}: header version {version:#010x} is not 1.x"
        ));
    }
    Ok(())
}

/// Blocks (`placed`: start, end, BAT index) must not overlap one another or the metadata.
fn check_overlaps(
    placed: &mut [(u64, u64, u64)],
    metadata: &[(u64, u64, String)],
    table_at: u64,
) -> std::result::Result<(), String> {
    placed.sort_unstable();
    for w in placed.windows(2) {
        if let [(a0, a1, ai), (b0, _, bi)] = w {
            if b0 < a1 {
                return Err(format!(
                    "BAT entries {ai} (offset {}) and {bi} (offset {}) overlap: block {ai} occupies [{a0}, {a1}), block {bi} starts at {b0}",
                    table_at + ai * 4,
                    table_at + bi * 4
                ));
            }
        }
    }
    for (m0, m1, what) in metadata {
        let first = placed.partition_point(|&(_, e, _)| e <= *m0);
        if let Some(&(s, e, i)) = placed.get(first).filter(|&&(s, _, _)| s < *m1) {
            return Err(format!(
                "BAT entry {i} (offset {}) places its block at [{s}, {e}), over {what} at [{m0}, {m1})",
                table_at + i * 4
            ));
        }
    }
    Ok(())
}

/// Reads the bitmaps of the allocated blocks; keeps those that are neither all ones nor
/// all zeros (bits for sectors beyond the block size are ignored). An all-zero bitmap is
/// `None`: the block holds no sector, exactly as if it were not allocated, and costs no
/// memory.
fn read_bitmaps(
    file: &dyn ReadAt,
    path: &Path,
    placed: &[(u64, u64, u64)],
    bitmap_len: u64,
    block_size: u64,
) -> Result<HashMap<u64, Option<Box<[u8]>>>> {
    let used = (block_size / SECTOR / 8) as usize;
    let mut buf = vec![0u8; bitmap_len as usize];
    let mut kept = HashMap::new();
    for &(start, _, i) in placed {
        read_exact(file, path, &mut buf, start, "a sector bitmap")?;
        let bits = buf.get(..used).unwrap_or_default();
        if bits.iter().all(|&b| b == 0) {
            kept.insert(i, None);
        } else if bits.iter().any(|&b| b != 0xff) {
            kept.insert(i, Some(bits.to_vec().into_boxed_slice()));
        }
    }
    Ok(kept)
}
