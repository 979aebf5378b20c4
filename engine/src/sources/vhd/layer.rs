//! One VHD file of a chain and how its bytes map to the disk: a fixed disk's data is the
//! first `current size` bytes of the file; a dynamic or differencing disk's byte `x` is in
//! block `x / block size`, at sector `(x mod block size) / 512` of it, present in the file
//! when the block is allocated and the sector's bitmap bit is set.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::dynamic::{self, Sparse};
use super::footer::{self, DiskType, Footer};
use super::{read_exact, source_err};
use crate::error::Result;
use crate::formats::vhd::SECTOR;
use crate::sources::ReadAt;

/// Where a run of disk bytes comes from in one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// This file, at the given offset.
    File(u64),
    /// Zeros (a dynamic disk's unallocated block or unmarked sector).
    Zero,
    /// The parent (a differencing disk's unallocated block or unmarked sector).
    Parent,
}

/// An opened VHD file.
pub struct Layer {
    /// Where it is (for messages and identity).
    pub path: PathBuf,
    /// Its bytes.
    pub file: Box<dyn ReadAt>,
    /// The footer.
    pub footer: Footer,
    /// Block map of a dynamic or differencing disk.
    pub sparse: Option<Sparse>,
}

impl Layer {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).map_err(|e| source_err(path, e))?;
        if !meta.is_file() {
            return Err(source_err(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a VHD must be a regular file",
                ),
            ));
        }
        let file = File::open(path).map_err(|e| source_err(path, e))?;
        let len = file.metadata().map_err(|e| source_err(path, e))?.len();
        Self::decode(path, Box::new(file), len)
    }

    /// Validates the `len` bytes of `file`, named `path` in messages: footer, and for a
    /// dynamic or differencing disk its header, BAT, bitmaps and parent locators.
    pub fn decode(path: &Path, file: Box<dyn ReadAt>, len: u64) -> Result<Self> {
        let footer = footer::read(file.as_ref(), path, len)?;
        let sparse = match footer.disk_type {
            DiskType::Fixed => {
                if footer.current_size > footer.at {
                    return Err(super::bad(path, format!(
                        "fixed disk of {} bytes (current size in the footer at {}), but only {} bytes precede the footer: the file is truncated",
                        footer.current_size, footer.at, footer.at
                    )));
                }
                None
            }
            DiskType::Dynamic | DiskType::Differencing => {
                Some(dynamic::read(file.as_ref(), path, &footer)?)
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            file,
            footer,
            sparse,
        })
    }

    /// The footer's unique id.
    pub fn uuid(&self) -> [u8; 16] {
        self.footer.uuid
    }

    /// The parent's unique id, for a differencing disk.
    pub fn parent_uuid(&self) -> Option<&[u8; 16]> {
        self.sparse.as_ref()?.parent.as_ref().map(|p| &p.uuid)
    }

    /// The parent unicode name of a differencing disk's header (how Xen Orchestra names the
    /// parent file, relative to the child's folder).
    pub fn parent_name(&self) -> Option<&str> {
        self.sparse
            .as_ref()?
            .parent
            .as_ref()
            .map(|p| p.name.as_str())
    }

    /// The memory its block map holds: an entry per block and every partial bitmap kept.
    pub fn map_bytes(&self) -> u64 {
        self.sparse.as_ref().map_or(0, |s| {
            let entries = s.blocks.len() * std::mem::size_of::<Option<super::dynamic::Block>>();
            let bitmaps: usize = s
                .blocks
                .iter()
                .flatten()
                .map(|b| match &b.bits {
                    super::dynamic::Bits::All => 0,
                    super::dynamic::Bits::Map(m) => m.len(),
                })
                .sum();
            (entries + bitmaps) as u64
        })
    }

    /// Disk size.
    pub fn size(&self) -> u64 {
        self.footer.current_size
    }

    /// The source of the bytes from `offset` on (below the size): the run's kind and its
    /// length (at most `max`).
    pub fn run_at(&self, offset: u64, max: u64) -> (Run, u64) {
        let Some(sparse) = &self.sparse else {
            return (Run::File(offset), max);
        };
        let absent = if self.footer.disk_type == DiskType::Differencing {
            Run::Parent
        } else {
            Run::Zero
        };
        let bs = sparse.block_size;
        let index = offset / bs;
        let in_block = offset % bs;
        let to_block_end = (bs - in_block).min(max);
        let Some(Some(block)) = sparse.blocks.get(index as usize) else {
            return (absent, to_block_end);
        };
        let first = in_block / SECTOR;
        let present = block.bits.has(first);
        // Extend over following sectors with the same bit, up to the block's end.
        let mut s = first + 1;
        let last = (in_block + to_block_end).div_ceil(SECTOR);
        while s < last && block.bits.has(s) == present {
            s += 1;
        }
        let len = (s * SECTOR - in_block).min(to_block_end);
        if present {
            (Run::File(block.data_at + in_block), len)
        } else {
            (absent, len)
        }
    }

    /// Reads `buf.len()` bytes at file offset `at`.
    pub fn read_file(&self, buf: &mut [u8], at: u64) -> Result<()> {
        read_exact(self.file.as_ref(), &self.path, buf, at, "disk data")
    }

    /// The sectors this differencing disk holds itself, as disk byte ranges (unsorted runs).
    pub fn own_extents(&self) -> Vec<(u64, u64)> {
        let size = self.size();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < size {
            let (run, len) = self.run_at(pos, size - pos);
            if let Run::File(_) = run {
                out.push((pos, pos + len));
            }
            pos += len.max(1);
        }
        out
    }
}
