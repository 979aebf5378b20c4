//! Where an ext file's blocks are: an extent tree (ext4), the classic direct and indirect
//! block map (ext2/3), or inline data; turned into [`FileExtent`]s covering the file.

use super::super::image::Le;
use super::super::limits::MAX_EXTENTS;
use super::super::{ExtentData, FileExtent, FsError};
use super::inode::{Inode, FLAG_EXTENTS, FLAG_INLINE_DATA};
use super::Ext4;

const EXTENT_MAGIC: u16 = 0xf30a;
/// Extents longer than this are unwritten (preallocated): they read as zeros.
const MAX_INIT_LEN: u16 = 32768;
/// Deepest extent tree Linux builds (`EXT4_MAX_EXTENT_DEPTH`).
const MAX_DEPTH: u16 = 5;

/// A run of file blocks: `len` blocks from file block `logical` at volume block `physical`
/// (`None`: unwritten, reads as zeros).
#[derive(Debug, Clone, Copy)]
struct Run {
    logical: u64,
    physical: Option<u64>,
    len: u64,
}

/// The extents of the file `inode` describes, covering `0..size`.
pub(super) fn file_extents(fs: &Ext4, inode: &Inode) -> Result<Vec<FileExtent>, FsError> {
    let size = inode.stat.size;
    if inode.flags & FLAG_INLINE_DATA != 0 {
        let data = inode.inline_data();
        if (data.len() as u64) < size {
            return Err(FsError::corrupt(format!(
                "ext inode {} keeps {} of its {size} bytes inline",
                inode.ino,
                data.len()
            )));
        }
        return Ok(if size == 0 {
            Vec::new()
        } else {
            vec![FileExtent {
                offset: 0,
                len: size,
                data: ExtentData::Inline(data),
            }]
        });
    }
    let bs = fs.sb.block_size;
    let file_blocks = size.div_ceil(bs);
    let mut runs = Vec::new();
    if inode.flags & FLAG_EXTENTS != 0 {
        let mut nodes = 0usize;
        extent_node(fs, inode.ino, &inode.block, None, &mut runs, &mut nodes)?;
    } else {
        block_map(fs, inode, file_blocks, &mut runs)?;
    }
    runs.sort_by_key(|r| r.logical);
    to_extents(fs, inode.ino, size, &runs)
}

/// Collects the leaves under one extent tree node (`raw`: the node's bytes; `want_depth`:
/// the depth its parent's index promises).
fn extent_node(
    fs: &Ext4,
    ino: u64,
    raw: &[u8],
    want_depth: Option<u16>,
    runs: &mut Vec<Run>,
    nodes: &mut usize,
) -> Result<(), FsError> {
    // A leaf holds up to 340 extents (4 KiB blocks): this many nodes is far past any real
    // tree, and bounds the reads a crafted tree naming one node many times can cause.
    const MAX_NODES: usize = MAX_EXTENTS / 64;
    *nodes += 1;
    if *nodes > MAX_NODES {
        return Err(FsError::corrupt(format!(
            "ext inode {ino}'s extent tree has more than {MAX_NODES} nodes"
        )));
    }
    let le = Le::new(raw, "an ext extent node");
    if le.u16(0)? != EXTENT_MAGIC {
        return Err(FsError::corrupt(format!(
            "ext inode {ino}: an extent tree node has no magic"
        )));
    }
    let entries = usize::from(le.u16(2)?);
    let depth = le.u16(6)?;
    if depth > MAX_DEPTH || want_depth.is_some_and(|d| d != depth) {
        return Err(FsError::corrupt(format!(
            "ext inode {ino}: an extent tree node has depth {depth} where {} belongs",
            want_depth.map_or_else(|| format!("at most {MAX_DEPTH}"), |d| d.to_string())
        )));
    }
    if 12 + 12 * entries > raw.len() {
        return Err(FsError::corrupt(format!(
            "ext inode {ino}: an extent node claims {entries} entries, more than its {} bytes hold",
            raw.len()
        )));
    }
    for i in 0..entries {
        let at = 12 + 12 * i;
        let logical = u64::from(le.u32(at)?);
        if depth == 0 {
            let raw_len = le.u16(at + 4)?;
            let start = (u64::from(le.u16(at + 6)?) << 32) | u64::from(le.u32(at + 8)?);
            let (len, written) = if raw_len > MAX_INIT_LEN {
                (raw_len - MAX_INIT_LEN, false)
            } else {
                (raw_len, true)
            };
            if runs.len() >= MAX_EXTENTS {
                return Err(FsError::corrupt(format!(
                    "ext inode {ino} has more than {MAX_EXTENTS} extents"
                )));
            }
            runs.push(Run {
                logical,
                physical: written.then_some(start),
                len: u64::from(len),
            });
        } else {
            let leaf = (u64::from(le.u16(at + 8)?) << 32) | u64::from(le.u32(at + 4)?);
            let child = fs.read_block(leaf, "an ext extent tree node")?;
            extent_node(fs, ino, &child, Some(depth - 1), runs, nodes)?;
        }
    }
    Ok(())
}

/// Collects the runs of a classic block map: 12 direct pointers, then single, double and
/// triple indirect blocks. A zero pointer is a hole (and a whole hole subtree).
fn block_map(
    fs: &Ext4,
    inode: &Inode,
    file_blocks: u64,
    runs: &mut Vec<Run>,
) -> Result<(), FsError> {
    let le = Le::new(&inode.block, "an ext block map");
    let per_block = fs.sb.block_size / 4;
    let mut logical = 0u64;
    // A real map names each block of the filesystem at most once: more is a crafted loop.
    let mut budget = fs.sb.blocks_count;
    for i in 0..15usize {
        let ptr = u64::from(le.u32(4 * i)?);
        let level = i.saturating_sub(11) as u32;
        let span = per_block.saturating_pow(level);
        if logical >= file_blocks {
            break;
        }
        if ptr != 0 {
            map_level(
                fs,
                inode.ino,
                ptr,
                level,
                logical,
                file_blocks,
                runs,
                &mut budget,
            )?;
        }
        logical = logical.saturating_add(span);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn map_level(
    fs: &Ext4,
    ino: u64,
    ptr: u64,
    level: u32,
    logical: u64,
    file_blocks: u64,
    runs: &mut Vec<Run>,
    budget: &mut u64,
) -> Result<(), FsError> {
    *budget = budget.checked_sub(1).ok_or_else(|| {
        FsError::corrupt(format!(
            "ext inode {ino}'s block map names more blocks than the filesystem has"
        ))
    })?;
    if level == 0 {
        push_block(ino, runs, logical, ptr)?;
        return Ok(());
    }
    let per_block = fs.sb.block_size / 4;
    let span = per_block.saturating_pow(level - 1);
    let raw = fs.read_block(ptr, "an ext indirect block")?;
    let le = Le::new(&raw, "an ext indirect block");
    for i in 0..per_block {
        let at = logical.saturating_add(i.saturating_mul(span));
        if at >= file_blocks {
            break;
        }
        let child = u64::from(le.u32(4 * i as usize)?);
        if child != 0 {
            map_level(fs, ino, child, level - 1, at, file_blocks, runs, budget)?;
        }
    }
    Ok(())
}

/// Appends one mapped block, extending the last run when it continues it.
fn push_block(ino: u64, runs: &mut Vec<Run>, logical: u64, physical: u64) -> Result<(), FsError> {
    if let Some(last) = runs.last_mut() {
        if let Some(p) = last.physical {
            if last.logical + last.len == logical && p + last.len == physical {
                last.len += 1;
                return Ok(());
            }
        }
    }
    if runs.len() >= MAX_EXTENTS {
        return Err(FsError::corrupt(format!(
            "ext inode {ino} has more than {MAX_EXTENTS} runs of blocks"
        )));
    }
    runs.push(Run {
        logical,
        physical: Some(physical),
        len: 1,
    });
    Ok(())
}

/// Byte extents covering `0..size` from sorted block runs: gaps become zero runs, runs are
/// clipped to the size, and overlapping runs or blocks outside the filesystem are refused.
fn to_extents(fs: &Ext4, ino: u64, size: u64, runs: &[Run]) -> Result<Vec<FileExtent>, FsError> {
    let bs = fs.sb.block_size;
    let mut out: Vec<FileExtent> = Vec::new();
    let mut pos = 0u64;
    for run in runs {
        let start = run.logical.saturating_mul(bs);
        if start >= size {
            break;
        }
        if start < pos {
            return Err(FsError::corrupt(format!(
                "ext inode {ino}: two extents both map file block {}",
                run.logical
            )));
        }
        if start > pos {
            push_zero(&mut out, pos, start - pos);
        }
        let len = run.len.saturating_mul(bs).min(size - start);
        match run.physical {
            Some(p) => {
                if p.checked_add(run.len)
                    .is_none_or(|end| end > fs.sb.blocks_count)
                    || p == 0
                {
                    return Err(FsError::corrupt(format!(
                        "ext inode {ino}: an extent at block {p} (+{}) lies outside the filesystem ({} blocks)",
                        run.len, fs.sb.blocks_count
                    )));
                }
                out.push(FileExtent {
                    offset: start,
                    len,
                    data: ExtentData::Volume(p * bs),
                });
            }
            None => push_zero(&mut out, start, len),
        }
        pos = start + len;
    }
    if pos < size {
        push_zero(&mut out, pos, size - pos);
    }
    Ok(out)
}

fn push_zero(out: &mut Vec<FileExtent>, offset: u64, len: u64) {
    if let Some(FileExtent {
        data: ExtentData::Zero,
        len: last_len,
        ..
    }) = out.last_mut()
    {
        *last_len += len;
        return;
    }
    out.push(FileExtent {
        offset,
        len,
        data: ExtentData::Zero,
    });
}
