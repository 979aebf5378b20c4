//! VHD writer: a dynamic VHD (full export) or a differencing VHD (delta over the base's VHD
//! export). All fields big-endian.
//!
//! | offset | content |
//! |---|---|
//! | 0 | copy of the footer (512 bytes) |
//! | 512 | dynamic disk header (1024 bytes, `cxsparse`, block size 2 MiB) |
//! | 1536 | differencing only: parent locator data, W2ru (relative path) then W2ku (absolute path), UTF-16LE, each padded to 512 bytes |
//! | next | BAT: one big-endian u32 sector offset per 2 MiB block, `0xFFFFFFFF` = unallocated, padded to 512 bytes |
//! | next | allocated blocks in disk order: 512-byte sector bitmap (bit 7 of byte 0 = first sector) then 2 MiB of data |
//! | end | the footer |
//!
//! Footer: `conectix`, features 2, version 1.0, data offset 512, timestamp = the snapshot's
//! time in seconds since 2000-01-01 UTC, creator application `win ` version 10.0 on `Wi2k`,
//! original and current size = the disk size rounded up to 512 bytes, CHS geometry from the
//! VHD specification's algorithm, type 3 (dynamic) or 4 (differencing), checksum (one's
//! complement of the byte sum with the checksum field zero), unique id from [`disk_uuid`].
//!
//! **Size.** The current size is the disk size rounded up to a sector (the padding reads as
//! zeros); CHS rounding is *not* applied to it (the geometry is informational and always
//! describes a little less). How qemu's `vpc` driver sizes an image depends on the creator
//! application: checked with qemu-img 10.0.2, creators `vpc ` and `qemu` get the CHS size
//! (a 5,255,680-byte disk read as 5,222,400 bytes), others the current size; older qemu
//! releases used the current size only for a list of creators (`win `, `qem2`, `d2v `,
//! `CTXS`, `tap\0`). We write `win ` (Hyper-V's convention: the current size is
//! authoritative), which gets the exact size from qemu old and new, Hyper-V and Windows.
//!
//! **Full export.** Every 2 MiB block holding a non-zero tessera block is allocated, with
//! all bitmap bits set; the others are unallocated and read as zeros.
//!
//! **Delta.** The dynamic header names the parent: parent unique id = [`disk_uuid`] of the
//! base snapshot's disk (the id its own VHD export carries, so `export B --format vhd` then
//! `export A --base B --format vhd` chain), parent timestamp = the base's footer timestamp,
//! parent unicode name (UTF-16BE) and the two locators. Only 2 MiB blocks holding a changed
//! tessera block are allocated; their bitmap marks exactly the sectors of changed tessera
//! blocks (including blocks that became all zero, written as zeros); every other sector,
//! and every unallocated block, reads from the parent. Sectors not marked hold zeros in
//! the file. Locator "platform data space" is stored in bytes (as Windows writes it).
//!
//! A differencing VHD has its parent's size (readers do not expect to read past a parent's
//! end, and Hyper-V does not resize differencing disks): a delta between snapshots of
//! different sizes (after rounding to 512 bytes) is refused; qcow2 overlays allow it.
//!
//! qemu's `vpc` driver does not follow parents (it reads a differencing VHD as if dynamic);
//! libvhdi and Windows do.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_format::{ChunkDigest, SnapshotId};

use super::{round_up, zero_outside, BlockList, ExportDisk, ExportOutcome, Format, Staged};
use crate::error::{Error, Result};
use crate::formats::vhd::{checksum, DYNAMIC_COOKIE, FOOTER_COOKIE, SECTOR};
use crate::ops::disk_reader::DiskReader;
use crate::progress::Progress;
use crate::repo::Repository;

const VHD_BLOCK: u64 = 2 << 20;
/// Bytes of the disk read together (in parallel): at least one unit (see [`write_blocks`]).
const BATCH_BYTES: u64 = 8 << 20;
/// The VHD format's limit: 2040 GiB.
const MAX_SIZE: u64 = 2040 << 30;
/// Seconds from 1970-01-01 to 2000-01-01 UTC.
const EPOCH_2000: i64 = 946_684_800;

/// The unique id of the VHD export of disk `name` of `snapshot`: the first 16 bytes of
/// SHA-256("tessera-vhd" ‖ snapshot id ‖ disk name), with the RFC 9562 version 8 and variant
/// bits set.
pub fn disk_uuid(snapshot: SnapshotId, name: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"tessera-vhd");
    h.update(snapshot.as_bytes());
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x80;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

fn timestamp(time_us: i64) -> u32 {
    u32::try_from((time_us / 1_000_000 - EPOCH_2000).max(0)).unwrap_or(u32::MAX)
}

/// CHS geometry per the VHD specification (appendix "CHS calculation").
fn geometry(size: u64) -> (u16, u8, u8) {
    let total = (size / SECTOR).min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    let cyl = cth / heads;
    (cyl as u16, heads as u8, spt as u8)
}

fn footer(size: u64, disk_type: u32, time: u32, uuid: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(FOOTER_COOKIE);
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&512u64.to_be_bytes());
    f[24..28].copy_from_slice(&time.to_be_bytes());
    f[28..32].copy_from_slice(b"win ");
    f[32..36].copy_from_slice(&0x000a_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&disk_type.to_be_bytes());
    f[68..84].copy_from_slice(&uuid);
    let sum = checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// What a differencing disk records about its parent.
struct Parent {
    uuid: [u8; 16],
    time: u32,
    name: String,
    /// (platform code, offset, data) of each locator.
    locators: Vec<([u8; 4], u64, Vec<u8>)>,
}

fn dynamic_header(bat_at: u64, entries: u32, parent: Option<&Parent>) -> [u8; 1024] {
    let mut d = [0u8; 1024];
    d[0..8].copy_from_slice(DYNAMIC_COOKIE);
    d[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
    d[16..24].copy_from_slice(&bat_at.to_be_bytes());
    d[24..28].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    d[28..32].copy_from_slice(&entries.to_be_bytes());
    d[32..36].copy_from_slice(&(VHD_BLOCK as u32).to_be_bytes());
    if let Some(p) = parent {
        d[40..56].copy_from_slice(&p.uuid);
        d[56..60].copy_from_slice(&p.time.to_be_bytes());
        let name: Vec<u8> = p
            .name
            .encode_utf16()
            .take(256)
            .flat_map(u16::to_be_bytes)
            .collect();
        d[64..64 + name.len()].copy_from_slice(&name);
        for (i, (code, at, data)) in p.locators.iter().enumerate() {
            let e = 576 + i * 24;
            d[e..e + 4].copy_from_slice(code);
            let space = round_up(data.len() as u64, SECTOR) as u32;
            d[e + 4..e + 8].copy_from_slice(&space.to_be_bytes());
            d[e + 8..e + 12].copy_from_slice(&(data.len() as u32).to_be_bytes());
            d[e + 16..e + 24].copy_from_slice(&at.to_be_bytes());
        }
    }
    let sum = checksum(&d);
    d[36..40].copy_from_slice(&sum.to_be_bytes());
    d
}

fn utf16le(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The parent fields of a differencing disk whose parent is `base`'s export, recorded as
/// `name`; locator data from offset 1536. Returns them and the first free offset after.
fn parent_of(output: &Path, base: ExportDisk<'_>, name: &str) -> Result<(Parent, u64)> {
    let mut at = 1536u64;
    let rel = name.replace('/', "\\");
    let abs: PathBuf = if Path::new(name).is_absolute() {
        PathBuf::from(name)
    } else {
        let dir = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::path::absolute(dir)
            .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?
            .join(name)
    };
    let rel = if Path::new(name).is_absolute() || rel.starts_with('.') {
        rel
    } else {
        format!(".\\{rel}")
    };
    let mut locators = Vec::new();
    for (code, text) in [(*b"W2ru", rel), (*b"W2ku", abs.display().to_string())] {
        let data = utf16le(&text);
        let len = round_up(data.len() as u64, SECTOR);
        locators.push((code, at, data));
        at += len;
    }
    let file_name = Path::new(name)
        .file_name()
        .map_or_else(|| name.to_string(), |f| f.to_string_lossy().into_owned());
    let parent = Parent {
        uuid: disk_uuid(base.snapshot, base.name),
        time: timestamp(base.time_us),
        name: file_name,
        locators,
    };
    Ok((parent, at))
}

/// The VHD blocks the `len` bytes at disk offset `start` touch.
fn vhd_blocks(start: u64, len: u64) -> Range<u64> {
    start / VHD_BLOCK..(start + len).div_ceil(VHD_BLOCK)
}

/// The sector bitmap of VHD block `v`: every sector for a full export; for a delta
/// (`listed`: the tessera blocks of `v`'s unit), exactly the sectors of those blocks
/// (changed, or now all zero).
fn sector_bitmap(
    reader: &DiskReader<&Repository>,
    listed: Option<&[(u64, ChunkDigest)]>,
    v: u64,
) -> [u8; SECTOR as usize] {
    let Some(listed) = listed else {
        return [0xff; SECTOR as usize];
    };
    let mut bitmap = [0u8; SECTOR as usize];
    let bs = reader.block_size();
    let v_start = v * VHD_BLOCK;
    for (b, _) in listed {
        let lo = (b * bs).max(v_start) - v_start;
        let hi = (b * bs + reader.block_len(*b)).min(v_start + VHD_BLOCK);
        for s in lo / SECTOR..hi.saturating_sub(v_start).div_ceil(SECTOR) {
            bitmap[(s / 8) as usize] |= 0x80 >> (s % 8);
        }
    }
    bitmap
}

/// Writes the allocated VHD blocks (bitmap, then data) from `first_block` on, in BAT order;
/// returns how many.
///
/// Blocks are read in units of max(block size, 2 MiB): both are powers of two, so a unit
/// holds whole tessera blocks and whole VHD blocks. A batch of units is decoded (in
/// parallel) straight into one zeroed buffer, then each allocated VHD block of each unit is
/// written as its sector bitmap and its 2 MiB of the buffer.
fn write_blocks(
    reader: &DiskReader<&Repository>,
    blocks: &BlockList,
    out: &Staged,
    first_block: u64,
    outcome: &mut ExportOutcome,
    progress: &dyn Progress,
) -> Result<u64> {
    let bs = reader.block_size();
    let unit = bs.max(VHD_BLOCK);
    let units: Vec<&[(u64, ChunkDigest)]> = blocks
        .blocks
        .chunk_by(|a, b| a.0 * bs / unit == b.0 * bs / unit)
        .collect();
    let mut written = 0;
    let mut buf = Vec::new();
    for batch in units.chunks((BATCH_BYTES / unit).max(1) as usize) {
        let listed: Vec<(u64, ChunkDigest)> =
            batch.iter().flat_map(|u| u.iter().copied()).collect();
        let refs = reader.locate(&listed)?;
        // Where each unit's first byte is on the disk and in the buffer.
        let places: Vec<(u64, usize)> = batch
            .iter()
            .enumerate()
            .map(|(i, u)| {
                (
                    u.first().map_or(0, |(b, _)| b * bs / unit * unit),
                    i * unit as usize,
                )
            })
            .collect();
        let mut pieces = Vec::new();
        let mut refs_iter = refs.iter();
        for (u, (disk_at, buf_at)) in batch.iter().zip(&places) {
            for ((block, _), r) in u.iter().zip(refs_iter.by_ref()) {
                let len = reader.block_len(*block);
                if !r.is_zero() {
                    let at = buf_at + (block * bs - disk_at) as usize;
                    pieces.push((*block, *r, at..at + len as usize));
                    outcome.bytes_written += len;
                }
            }
        }
        zero_outside(&mut buf, batch.len() * unit as usize, &pieces);
        reader.read_blocks_into(&mut buf, &pieces)?;
        for (u, (disk_at, buf_at)) in batch.iter().zip(&places) {
            let mut allocated: Vec<u64> = u
                .iter()
                .flat_map(|(b, _)| vhd_blocks(b * bs, reader.block_len(*b)))
                .collect();
            allocated.dedup();
            for v in allocated {
                let v_start = v * VHD_BLOCK;
                let data_at = buf_at + (v_start - disk_at) as usize;
                let at = first_block + written * (SECTOR + VHD_BLOCK);
                out.write_at(&sector_bitmap(reader, blocks.delta.then_some(*u), v), at)?;
                out.write_at(&buf[data_at..data_at + VHD_BLOCK as usize], at + SECTOR)?;
                written += 1;
                progress.advance(VHD_BLOCK);
            }
        }
    }
    Ok(written)
}

/// Writes `blocks` as a dynamic VHD or, with `base` (its disk and the parent's file name as
/// recorded), a differencing VHD.
pub fn write(
    reader: &DiskReader<&Repository>,
    blocks: &BlockList,
    disk: ExportDisk<'_>,
    base: Option<(ExportDisk<'_>, &str)>,
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<ExportOutcome> {
    let vsize = round_up(reader.size(), SECTOR);
    if vsize > MAX_SIZE {
        return Err(Error::InvalidArgument(format!(
            "the disk holds {} bytes; VHD is limited to 2040 GiB: use --format qcow2",
            reader.size()
        )));
    }
    if let Some((b, _)) = base {
        let base_size = round_up(b.view.entry.size, SECTOR);
        if base_size != vsize {
            return Err(Error::InvalidArgument(format!(
                "a differencing VHD must have its parent's size, and the disk changed size \
                 ({} bytes in the base, {} now): export it in full, or as a qcow2 overlay",
                b.view.entry.size,
                reader.size()
            )));
        }
    }
    let entries = vsize.div_ceil(VHD_BLOCK);
    let time = timestamp(disk.time_us);
    let uuid = disk_uuid(disk.snapshot, disk.name);

    // The VHD blocks holding a listed tessera block, ascending: the BAT order.
    let bs = reader.block_size();
    let vblocks: BTreeSet<u64> = blocks
        .blocks
        .iter()
        .flat_map(|(b, _)| vhd_blocks(b * bs, reader.block_len(*b)))
        .collect();

    let (parent, at) = match base {
        None => (None, 1536),
        Some((b, name)) => {
            let (p, at) = parent_of(output, b, name)?;
            (Some(p), at)
        }
    };
    let bat_at = at;
    let first_block = bat_at + round_up(entries * 4, SECTOR);
    let mut bat = vec![u32::MAX; entries as usize];
    for (k, v) in vblocks.iter().enumerate() {
        let offset = first_block + k as u64 * (SECTOR + VHD_BLOCK);
        bat[*v as usize] = u32::try_from(offset / SECTOR)
            .map_err(|_| Error::InvalidArgument("the VHD would exceed its offset range".into()))?;
    }
    let end = first_block + vblocks.len() as u64 * (SECTOR + VHD_BLOCK);
    let disk_type = if parent.is_some() { 4 } else { 3 };
    let foot = footer(vsize, disk_type, time, uuid);

    let out = Staged::create(output, force)?;
    out.write_at(&foot, 0)?;
    out.write_at(
        &dynamic_header(bat_at, entries as u32, parent.as_ref()),
        512,
    )?;
    if let Some(p) = &parent {
        for (_, offset, data) in &p.locators {
            out.write_at(data, *offset)?;
        }
    }
    let bat_bytes: Vec<u8> = bat.iter().flat_map(|x| x.to_be_bytes()).collect();
    out.write_at(&bat_bytes, bat_at)?;

    let mut outcome = ExportOutcome {
        format: Format::Vhd,
        path: output.to_path_buf(),
        disk_size: reader.size(),
        virtual_size: vsize,
        file_size: 0,
        bytes_written: 0,
        blocks_written: 0,
        zero_blocks_written: 0,
        backing_file: base.map(|(_, n)| n.to_string()),
    };
    for (_, digest) in &blocks.blocks {
        if digest.is_zero() {
            outcome.zero_blocks_written += 1;
        } else {
            outcome.blocks_written += 1;
        }
    }
    progress.start("export vhd", vblocks.len() as u64 * VHD_BLOCK);
    let written = write_blocks(reader, blocks, &out, first_block, &mut outcome, progress)?;
    if written != vblocks.len() as u64 {
        return Err(Error::InvalidArgument(format!(
            "wrote {written} VHD blocks where the BAT maps {}",
            vblocks.len()
        )));
    }
    progress.finish();
    out.write_at(&foot, end)?;
    outcome.file_size = out.commit(end + 512)?;
    Ok(outcome)
}
