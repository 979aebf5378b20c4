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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tessera_format::{ChunkDigest, SnapshotId};

use super::{round_up, BlockList, ExportDisk, ExportOutcome, Format, Staged, BATCH};
use crate::error::{Error, Result};
use crate::formats::vhd::{checksum, DYNAMIC_COOKIE, FOOTER_COOKIE, SECTOR};
use crate::progress::Progress;
use crate::repo::Repository;

const VHD_BLOCK: u64 = 2 << 20;
/// VHD blocks read together.
const VBATCH: usize = BATCH / 8 + 1;
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

/// Writes the allocated VHD blocks (bitmap and data) from `first_block` on, in BAT order.
fn write_blocks(
    repo: &Repository,
    blocks: &BlockList,
    vblocks: &BTreeMap<u64, Vec<(u64, ChunkDigest)>>,
    out: &Staged,
    first_block: u64,
    outcome: &mut ExportOutcome,
    progress: &dyn Progress,
) -> Result<()> {
    let bs = blocks.block_size;
    // Blocks read in batches of VHD blocks; a tessera block larger than 2 MiB is kept for
    // the following VHD blocks it spans.
    let vlist: Vec<(&u64, &Vec<(u64, ChunkDigest)>)> = vblocks.iter().collect();
    let mut cache: Option<(u64, Vec<u8>)> = None;
    for (k0, group) in vlist.chunks(VBATCH).enumerate() {
        let mut wanted: Vec<(u64, ChunkDigest)> = group
            .iter()
            .flat_map(|(_, bl)| bl.iter().copied())
            .filter(|(b, _)| cache.as_ref().is_none_or(|(c, _)| c != b))
            .collect();
        wanted.dedup_by_key(|(b, _)| *b);
        let data = blocks.read(repo, &wanted)?;
        let mut got: BTreeMap<u64, Vec<u8>> = wanted.iter().map(|(b, _)| *b).zip(data).collect();
        if let Some((b, bytes)) = cache.take() {
            got.insert(b, bytes);
        }
        for (i, (v, bl)) in group.iter().enumerate() {
            let v_start = **v * VHD_BLOCK;
            let mut buf = vec![0u8; (SECTOR + VHD_BLOCK) as usize];
            for (block, _) in *bl {
                let b_start = block * bs;
                let b_len = blocks.len_of(*block);
                let lo = b_start.max(v_start);
                let hi = (b_start + b_len).min(v_start + VHD_BLOCK);
                if let Some(bytes) = got.get(block).filter(|x| !x.is_empty()) {
                    let src = &bytes[(lo - b_start) as usize..(hi - b_start) as usize];
                    let dst = (SECTOR + lo - v_start) as usize;
                    buf[dst..dst + src.len()].copy_from_slice(src);
                    outcome.bytes_written += hi - lo;
                }
                if blocks.delta {
                    for s in (lo - v_start) / SECTOR..(hi - v_start).div_ceil(SECTOR) {
                        buf[(s / 8) as usize] |= 0x80 >> (s % 8);
                    }
                }
            }
            if !blocks.delta {
                buf[..SECTOR as usize].fill(0xff);
            }
            let k = k0 * (VBATCH) + i;
            out.write_at(&buf, first_block + k as u64 * (SECTOR + VHD_BLOCK))?;
            progress.advance(VHD_BLOCK);
        }
        // Keep the last tessera block if it continues into the next VHD block.
        if let Some((v, bl)) = group.last() {
            if let Some((b, _)) = bl.last() {
                if b * bs + blocks.len_of(*b) > (**v + 1) * VHD_BLOCK {
                    if let Some(bytes) = got.remove(b) {
                        cache = Some((*b, bytes));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Writes `blocks` as a dynamic VHD or, with `base` (its disk and the parent's file name as
/// recorded), a differencing VHD.
pub fn write(
    repo: &Repository,
    blocks: &BlockList,
    disk: ExportDisk<'_>,
    base: Option<(ExportDisk<'_>, &str)>,
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<ExportOutcome> {
    let vsize = round_up(blocks.size, SECTOR);
    if vsize > MAX_SIZE {
        return Err(Error::InvalidArgument(format!(
            "the disk holds {} bytes; VHD is limited to 2040 GiB: use --format qcow2",
            blocks.size
        )));
    }
    if let Some((b, _)) = base {
        let base_size = round_up(b.view.entry.size, SECTOR);
        if base_size != vsize {
            return Err(Error::InvalidArgument(format!(
                "a differencing VHD must have its parent's size, and the disk changed size \
                 ({} bytes in the base, {} now): export it in full, or as a qcow2 overlay",
                b.view.entry.size, blocks.size
            )));
        }
    }
    let entries = vsize.div_ceil(VHD_BLOCK);
    let time = timestamp(disk.time_us);
    let uuid = disk_uuid(disk.snapshot, disk.name);

    // Tessera blocks per VHD block.
    let bs = blocks.block_size;
    let mut vblocks: BTreeMap<u64, Vec<(u64, ChunkDigest)>> = BTreeMap::new();
    for &(block, digest) in &blocks.blocks {
        let start = block * bs;
        let end = start + blocks.len_of(block);
        for v in start / VHD_BLOCK..end.div_ceil(VHD_BLOCK) {
            vblocks.entry(v).or_default().push((block, digest));
        }
    }

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
    for (k, v) in vblocks.keys().enumerate() {
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
        disk_size: blocks.size,
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
    write_blocks(
        repo,
        blocks,
        &vblocks,
        &out,
        first_block,
        &mut outcome,
        progress,
    )?;
    progress.finish();
    out.write_at(&foot, end)?;
    outcome.file_size = out.commit(end + 512)?;
    Ok(outcome)
}
