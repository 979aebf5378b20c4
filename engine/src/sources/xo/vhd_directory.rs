//! Xen Orchestra's VhdDirectory (`vhd-lib/Vhd/VhdDirectory.js`): a VHD kept as a folder.
//!
//! ```text
//! <path>/chunk-filters.json   ["brotli"] or ["gzip"]: compression of every chunk below
//! <path>/header               the 1024-byte dynamic disk header
//! <path>/footer               the 512-byte footer
//! <path>/bat                  a bit array: bit i (MSB first) set = block i is present
//! <path>/blocks/<i / 1000>/<i % 1000>   block i: its sector bitmap, then its data
//! ```
//!
//! Each chunk is stored compressed with the filters (applied in reverse to read) and, on an
//! encrypted remote, encrypted as a whole file. A block must decompress to exactly its
//! bitmap (rounded to 512 bytes) plus the block size, as XO itself checks.
//!
//! Rather than a second VHD reader, [`VhdDirectoryFile`] presents the folder as the bytes of
//! an ordinary dynamic or differencing VHD file — footer copy, header, BAT, one slot per
//! block, footer — computed on demand, and the engine's VHD reader
//! ([`crate::sources::vhd::Layer`]) decodes it with every check a file gets. The virtual
//! header points at the virtual BAT, names only the blocks the disk needs, and carries no
//! parent locators (XO names a parent by the header's parent name; its locator data lives
//! in other chunks). The stored header and footer checksums are checked *before* those
//! fields are rewritten, so damage to them is not hidden.
//!
//! Reads of a block's bitmap alone (all the VHD reader does when it opens the image)
//! decompress only the bitmap's bytes of an unencrypted block; whole blocks are kept in a
//! small cache, so reading a block costs one decompression.

use std::collections::VecDeque;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::remote::{RemotePath, XoRemote};
use crate::error::{Error, Result};
use crate::formats::vhd::{
    checksum_without_field, dynamic as h, footer as f, BAT_UNALLOCATED, DYNAMIC_HEADER_LEN,
    FOOTER_LEN, SECTOR, TYPE_DIFFERENCING, TYPE_DYNAMIC,
};
use crate::sources::vhd::{be_u32, be_u64};
use crate::sources::ReadAt;

/// Largest `chunk-filters.json`, header, footer read.
const SMALL_CHUNK: u64 = 64 << 10;
/// Most blocks of one disk: 2 TiB at 2 MiB blocks (a VHD holds at most 2040 GiB).
const MAX_BLOCKS: u64 = 1 << 20;
/// The block size of every VhdDirectory XO writes (`DEFAULT_BLOCK_SIZE`).
const XO_BLOCK: u64 = 2 << 20;
/// Decompressed blocks kept.
const CACHED_BLOCKS: usize = 4;

/// A compression XO applied to every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Gzip,
    Brotli,
}

/// A VhdDirectory presented as the bytes of a VHD file.
pub struct VhdDirectoryFile {
    remote: Arc<XoRemote>,
    dir: RemotePath,
    filters: Vec<Filter>,
    footer: [u8; FOOTER_LEN as usize],
    header: [u8; DYNAMIC_HEADER_LEN as usize],
    present: Vec<u8>,
    blocks: u64,
    bitmap_len: u64,
    full_block: u64,
    data_start: u64,
    len: u64,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl VhdDirectoryFile {
    /// Reads the folder's filters, header, footer and BAT and lays out the virtual file.
    pub fn open(remote: Arc<XoRemote>, dir: &RemotePath) -> Result<Self> {
        let bad = |why: String| bad(&remote, dir, why);
        let filters = read_filters(&remote, dir)?;
        let mut footer = [0u8; FOOTER_LEN as usize];
        let mut header = [0u8; DYNAMIC_HEADER_LEN as usize];
        for (name, buf, field) in [
            ("footer", &mut footer[..], f::CHECKSUM),
            ("header", &mut header[..], h::CHECKSUM),
        ] {
            let bytes = read_chunk(&remote, dir, &filters, name, SMALL_CHUNK, buf.len() as u64)?;
            if bytes.len() != buf.len() {
                return Err(bad(format!(
                    "its {name} is {} bytes, not {}",
                    bytes.len(),
                    buf.len()
                )));
            }
            buf.copy_from_slice(&bytes);
            let stored = be_u32(buf, field);
            let computed = checksum_without_field(buf, field);
            if stored != computed {
                return Err(bad(format!(
                    "the {name}'s checksum is {stored:#010x}, its bytes sum to {computed:#010x}"
                )));
            }
        }
        let disk_type = be_u32(&footer, f::DISK_TYPE);
        if disk_type != TYPE_DYNAMIC && disk_type != TYPE_DIFFERENCING {
            return Err(bad(format!(
                "the footer's disk type is {disk_type}; a VhdDirectory is dynamic (3) or differencing (4)"
            )));
        }
        let size = be_u64(&footer, f::CURRENT_SIZE);
        let block_size = u64::from(be_u32(&header, h::BLOCK_SIZE));
        // XO writes 2 MiB blocks only; anything else would let a tiny folder claim millions
        // of blocks (and the memory to map them).
        if block_size != XO_BLOCK {
            return Err(bad(format!(
                "the header's block size is {block_size}; XO's VhdDirectories use {XO_BLOCK}"
            )));
        }
        let declared = u64::from(be_u32(&header, h::MAX_TABLE_ENTRIES));
        let needed = size.div_ceil(block_size);
        if needed > MAX_BLOCKS {
            return Err(bad(format!(
                "the disk needs {needed} blocks of {block_size} bytes; tessera reads at most {MAX_BLOCKS}"
            )));
        }
        // Fewer entries than the disk needs are left for the VHD reader to refuse.
        let blocks = declared.min(needed);
        let present = read_chunk(
            &remote,
            dir,
            &filters,
            "bat",
            MAX_BLOCKS + SMALL_CHUNK,
            MAX_BLOCKS,
        )?;
        let bitmap_len = (block_size / SECTOR / 8).next_multiple_of(SECTOR);
        let full_block = bitmap_len + block_size;
        let bat_at = FOOTER_LEN + DYNAMIC_HEADER_LEN;
        let data_start = bat_at + (blocks * 4).next_multiple_of(SECTOR);
        let footer_at = data_start + blocks * full_block;
        if (footer_at / SECTOR) > u64::from(u32::MAX) {
            return Err(bad(format!(
                "{blocks} blocks of {block_size} bytes are more than a VHD's 32-bit sector numbers address"
            )));
        }
        footer[f::DATA_OFFSET..f::DATA_OFFSET + 8].copy_from_slice(&FOOTER_LEN.to_be_bytes());
        set_checksum(&mut footer, f::CHECKSUM);
        header[h::TABLE_OFFSET..h::TABLE_OFFSET + 8].copy_from_slice(&bat_at.to_be_bytes());
        header[h::MAX_TABLE_ENTRIES..h::MAX_TABLE_ENTRIES + 4]
            .copy_from_slice(&(blocks as u32).to_be_bytes());
        header[h::LOCATORS..h::LOCATORS + h::LOCATOR_COUNT * h::LOCATOR_LEN].fill(0);
        set_checksum(&mut header, h::CHECKSUM);
        Ok(Self {
            remote,
            dir: dir.clone(),
            filters,
            footer,
            header,
            present,
            blocks,
            bitmap_len,
            full_block,
            data_start,
            len: footer_at + FOOTER_LEN,
            cache: Mutex::new(VecDeque::new()),
        })
    }

    /// The length of the virtual VHD file.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the virtual file is empty (never: it holds at least footer and header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The local path of the folder, for messages.
    pub fn local_path(&self) -> PathBuf {
        self.remote.local(&self.dir)
    }

    fn has_block(&self, i: u64) -> bool {
        i < self.blocks
            && self
                .present
                .get((i / 8) as usize)
                .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
    }

    fn block_path(&self, i: u64) -> Result<RemotePath> {
        self.dir
            .join(&format!("blocks/{}/{}", i / 1000, i % 1000), "block")
    }

    /// The first `n` bytes of block `i` (its bitmap), decompressing no more than needed.
    fn block_prefix(&self, i: u64, n: u64) -> Result<Vec<u8>> {
        if let Some(b) = self.cached(i) {
            return Ok(b.get(..n as usize).unwrap_or_default().to_vec());
        }
        if self.remote.encrypted() {
            return Ok(self
                .block(i)?
                .get(..n as usize)
                .unwrap_or_default()
                .to_vec());
        }
        let path = self.block_path(i)?;
        let file = BufReader::with_capacity(16 << 10, self.remote.open_raw(&path)?);
        let mut out = Vec::new();
        unfilter(Box::new(file), &self.filters)
            .take(n)
            .read_to_end(&mut out)
            .map_err(|e| self.block_damage(i, &e.to_string()))?;
        if (out.len() as u64) < n {
            return Err(self.block_damage(i, &format!("it holds only {} bytes", out.len())));
        }
        Ok(out)
    }

    /// Block `i` whole (bitmap then data), from the cache or read and decompressed.
    fn block(&self, i: u64) -> Result<Arc<Vec<u8>>> {
        if let Some(b) = self.cached(i) {
            return Ok(b);
        }
        let path = self.block_path(i)?;
        // A compressed block is rarely larger than its content; allow for incompressible data.
        let limit = self.full_block * 2 + SMALL_CHUNK;
        let stored = self.remote.read(&path, limit, "a block")?;
        let mut out = Vec::with_capacity(self.full_block as usize);
        unfilter(Box::new(std::io::Cursor::new(stored)), &self.filters)
            .take(self.full_block + 1)
            .read_to_end(&mut out)
            .map_err(|e| self.block_damage(i, &e.to_string()))?;
        if out.len() as u64 != self.full_block {
            return Err(self.block_damage(
                i,
                &format!(
                    "it holds {} bytes{}, a block is {} (bitmap and data)",
                    out.len(),
                    if out.len() as u64 > self.full_block {
                        " or more"
                    } else {
                        ""
                    },
                    self.full_block
                ),
            ));
        }
        let out = Arc::new(out);
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHED_BLOCKS {
            cache.pop_front();
        }
        cache.push_back((i, Arc::clone(&out)));
        Ok(out)
    }

    fn cached(&self, i: u64) -> Option<Arc<Vec<u8>>> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .iter()
            .find(|(b, _)| *b == i)
            .map(|(_, d)| Arc::clone(d))
    }

    fn block_damage(&self, i: u64, why: &str) -> Error {
        bad(
            &self.remote,
            &self.dir,
            format!(
                "block {i} (blocks/{}/{}) is damaged: {why}",
                i / 1000,
                i % 1000
            ),
        )
    }

    /// Fills `buf` from virtual offset `at` (inside the file).
    fn fill(&self, buf: &mut [u8], at: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let rest = &mut buf[done..];
            let n = self.fill_region(rest, pos)?;
            done += n.max(1);
        }
        Ok(())
    }

    /// Fills the start of `buf` from the region holding `pos`; returns how many bytes.
    fn fill_region(&self, buf: &mut [u8], pos: u64) -> Result<usize> {
        let bat_at = FOOTER_LEN + DYNAMIC_HEADER_LEN;
        let footer_at = self.len - FOOTER_LEN;
        let copy = |buf: &mut [u8], src: &[u8], from: u64| {
            let src = src.get(from as usize..).unwrap_or_default();
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        };
        if pos < FOOTER_LEN {
            return Ok(copy(buf, &self.footer, pos));
        }
        if pos < bat_at {
            return Ok(copy(buf, &self.header, pos - FOOTER_LEN));
        }
        if pos >= footer_at {
            return Ok(copy(buf, &self.footer, pos - footer_at));
        }
        if pos < self.data_start {
            let n = ((self.data_start - pos) as usize).min(buf.len());
            for (k, byte) in buf[..n].iter_mut().enumerate() {
                let off = pos + k as u64 - bat_at;
                let entry = off / 4;
                let word = if entry >= self.blocks {
                    0
                } else if self.has_block(entry) {
                    ((self.data_start + entry * self.full_block) / SECTOR) as u32
                } else {
                    BAT_UNALLOCATED
                };
                *byte = word.to_be_bytes()[(off % 4) as usize];
            }
            return Ok(n);
        }
        let i = (pos - self.data_start) / self.full_block;
        let within = (pos - self.data_start) % self.full_block;
        let n = ((self.full_block - within) as usize).min(buf.len());
        let dst = &mut buf[..n];
        if !self.has_block(i) {
            dst.fill(0);
        } else if within + n as u64 <= self.bitmap_len && self.cached(i).is_none() {
            let prefix = self.block_prefix(i, within + n as u64)?;
            dst.copy_from_slice(&prefix[within as usize..]);
        } else {
            let block = self.block(i)?;
            dst.copy_from_slice(&block[within as usize..within as usize + n]);
        }
        Ok(n)
    }
}

impl ReadAt for VhdDirectoryFile {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        if at
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} bytes at {at} lie past the end of the {}-byte image",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.fill(buf, at)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
    }
}

/// `chunk-filters.json`: absent, `[]` or `["none"]` means none. XO applies only the first
/// entry (`getCompressor(chunkFilters[0])`), and so does tessera.
fn read_filters(remote: &XoRemote, dir: &RemotePath) -> Result<Vec<Filter>> {
    let path = dir.join("chunk-filters.json", "filters")?;
    if remote.kind(&path)?.is_none() {
        return Ok(Vec::new());
    }
    let bytes = remote.read(&path, SMALL_CHUNK, "chunk-filters.json")?;
    let names: Vec<String> = serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            remote,
            dir,
            format!("chunk-filters.json is not a JSON array of names: {e}"),
        )
    })?;
    match names.first().map(String::as_str) {
        None | Some("none") => Ok(Vec::new()),
        Some("gzip") => Ok(vec![Filter::Gzip]),
        Some("brotli") => Ok(vec![Filter::Brotli]),
        Some(other) => Err(bad(
            remote,
            dir,
            format!("chunk-filters.json names {other:?}; tessera reads gzip, brotli and none"),
        )),
    }
}

/// The content of the chunk `name`: decrypted, then decompressed to at most `max` bytes
/// (one more is read, so a larger chunk shows as too long).
fn read_chunk(
    remote: &XoRemote,
    dir: &RemotePath,
    filters: &[Filter],
    name: &str,
    stored_limit: u64,
    max: u64,
) -> Result<Vec<u8>> {
    let stored = remote.read(&dir.join(name, "chunk")?, stored_limit, name)?;
    let mut out = Vec::new();
    unfilter(Box::new(std::io::Cursor::new(stored)), filters)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(remote, dir, format!("its {name} does not decompress: {e}")))?;
    Ok(out)
}

/// `reader` with the filters undone, last applied first.
fn unfilter<'a>(reader: Box<dyn Read + 'a>, filters: &[Filter]) -> Box<dyn Read + 'a> {
    filters.iter().rev().fold(reader, |r, f| match f {
        Filter::Gzip => Box::new(flate2::read::GzDecoder::new(r)),
        Filter::Brotli => Box::new(brotli_decompressor::Decompressor::new(r, 16 << 10)),
    })
}

fn set_checksum(bytes: &mut [u8], field: usize) {
    let sum = checksum_without_field(bytes, field);
    bytes[field..field + 4].copy_from_slice(&sum.to_be_bytes());
}

fn bad(remote: &XoRemote, dir: &RemotePath, reason: String) -> Error {
    Error::BadImage {
        path: remote.local(dir).display().to_string(),
        format: "VhdDirectory",
        reason,
    }
}
