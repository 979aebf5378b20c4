//! One disk of a snapshot as a read-only byte range.
//!
//! Reads assemble the range from the disk's blocks: manifest pages are loaded on demand and
//! cached (with the pack locations of their chunks), chunks are read, checked and decoded by
//! [`read_object`] and cached by digest in an LRU shared by every export and client. Zero
//! digests are holes and read as zeros without touching the store. Nothing here trusts the
//! caller's numbers: ranges past the end are refused with [`Error::InvalidArgument`].

use std::sync::Arc;

use rayon::prelude::*;
use tessera_format::manifest::block_count;
use tessera_format::{ChunkDigest, ObjectKind, PageDigest, Snapshot};

use crate::error::{Error, Result};
use crate::index::ObjectEntry;
use crate::nbd::cache::Lru;
use crate::ops::diff::DiskView;
use crate::repo::Repository;
use crate::store::reader::read_object;

/// A manifest page: each block's digest and, unless zero, where its chunk is stored.
type Page = Vec<(ChunkDigest, Option<ObjectEntry>)>;

/// Caches shared by all exports of a server.
pub struct Caches {
    chunks: Lru<ChunkDigest, Vec<u8>>,
    pages: Lru<PageDigest, Page>,
}

impl Caches {
    /// Caches holding about `bytes` bytes in all (an eighth, at least 1 MiB, for pages).
    pub fn new(bytes: u64) -> Self {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        let pages = (bytes / 8).max(1 << 20);
        Self {
            chunks: Lru::new(bytes.saturating_sub(pages)),
            pages: Lru::new(pages),
        }
    }
}

/// A piece of a read: data, or a run of zeros (`data` is `None`).
#[derive(Debug)]
pub struct Segment {
    /// Disk offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The bytes, or `None` for zeros.
    pub data: Option<Vec<u8>>,
}

/// A run of blocks of one kind, for block status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes.
    pub len: u64,
    /// All zero (not stored).
    pub zero: bool,
}

/// One disk of a snapshot, readable by offset.
pub struct Export {
    name: String,
    size: u64,
    block_size: u64,
    page_entries: u64,
    blocks: u64,
    root: Vec<PageDigest>,
    repo: Arc<Repository>,
    caches: Arc<Caches>,
}

impl Export {
    /// Disk `disk` of `snapshot`.
    pub fn new(
        repo: Arc<Repository>,
        caches: Arc<Caches>,
        snapshot: &Snapshot,
        disk: &str,
    ) -> Result<Self> {
        let view = DiskView::of(snapshot, disk)?;
        let entry = view.entry;
        if entry.block_size == 0 || entry.page_entries == 0 {
            return Err(Error::InvalidArgument(format!(
                "disk {disk} has a zero block size or page size"
            )));
        }
        let blocks = block_count(entry.size, entry.block_size);
        let pages = blocks.div_ceil(u64::from(entry.page_entries));
        if view.root.len() as u64 != pages {
            return Err(Error::InvalidArgument(format!(
                "disk {disk} lists {} manifest pages where {pages} belong",
                view.root.len()
            )));
        }
        Ok(Self {
            name: entry.name.clone(),
            size: entry.size,
            block_size: u64::from(entry.block_size),
            page_entries: u64::from(entry.page_entries),
            blocks,
            root: view.root.to_vec(),
            repo,
            caches,
        })
    }

    /// Export name (the disk's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size of the manifest.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "range {offset}+{len} lies past the end of {} ({} bytes)",
                self.name, self.size
            ))),
        }
    }

    fn page(&self, page_no: u64) -> Result<Arc<Page>> {
        let digest = *self
            .root
            .get(page_no as usize)
            .ok_or_else(|| Error::InvalidArgument(format!("no manifest page {page_no}")))?;
        if let Some(page) = self.caches.pages.get(&digest) {
            return Ok(page);
        }
        let digests =
            self.repo
                .read_page(digest, self.blocks, self.page_entries as u32, page_no)?;
        let keys: Vec<[u8; 32]> = digests
            .iter()
            .filter(|d| !d.is_zero())
            .map(|d| d.0)
            .collect();
        let mut locations = self
            .repo
            .index()
            .get_many(ObjectKind::Chunk, &keys)?
            .into_iter();
        let page: Page = digests
            .iter()
            .map(|d| {
                let loc = if d.is_zero() {
                    None
                } else {
                    locations.next().flatten()
                };
                (*d, loc)
            })
            .collect();
        let cost = page.len() * std::mem::size_of::<(ChunkDigest, Option<ObjectEntry>)>() + 64;
        Ok(self.caches.pages.insert(digest, page, cost))
    }

    /// Digest and location of each block in `first..end`.
    fn slots(&self, first: u64, end: u64) -> Result<Vec<(ChunkDigest, Option<ObjectEntry>)>> {
        let mut out = Vec::with_capacity((end - first) as usize);
        let mut block = first;
        while block < end {
            let page_no = block / self.page_entries;
            let page = self.page(page_no)?;
            let start = (block - page_no * self.page_entries) as usize;
            let stop = ((end - page_no * self.page_entries).min(self.page_entries) as usize)
                .min(page.len());
            if start >= stop {
                return Err(Error::InvalidArgument(format!(
                    "manifest page {page_no} of {} is short",
                    self.name
                )));
            }
            out.extend_from_slice(&page[start..stop]);
            block += (stop - start) as u64;
        }
        Ok(out)
    }

    fn block_len(&self, block: u64) -> u64 {
        self.block_size.min(self.size - block * self.block_size)
    }

    fn chunk(
        &self,
        block: u64,
        digest: ChunkDigest,
        loc: Option<ObjectEntry>,
    ) -> Result<Arc<Vec<u8>>> {
        if let Some(data) = self.caches.chunks.get(&digest) {
            return Ok(data);
        }
        let offset = block * self.block_size;
        let loc = loc.ok_or_else(|| Error::ObjectMissing {
            kind: ObjectKind::Chunk,
            digest: format!("{digest} (disk {}, offset {offset})", self.name),
        })?;
        let raw = read_object(self.repo.backend(), ObjectKind::Chunk, &digest.0, &loc)?;
        let want = self.block_len(block);
        if raw.len() as u64 != want {
            return Err(Error::InvalidArgument(format!(
                "chunk {digest} at offset {offset} holds {} bytes where the disk needs {want}",
                raw.len()
            )));
        }
        let cost = raw.len() + 64;
        Ok(self.caches.chunks.insert(digest, raw, cost))
    }

    /// Runs of zero / data blocks covering `offset..offset+len`, clipped to that range, at
    /// most `max` of them (the last one may then end before the range does).
    pub fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        self.check_range(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let end = offset + len;
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size + 1;
        let mut block = first;
        while block < last {
            // One page at a time bounds the memory a huge status request takes.
            let page_end = ((block / self.page_entries + 1) * self.page_entries).min(last);
            let slots = self.slots(block, page_end)?;
            for (i, (digest, _)) in slots.iter().enumerate() {
                let b = block + i as u64;
                let start = (b * self.block_size).max(offset);
                let stop = (b * self.block_size + self.block_len(b)).min(end);
                let zero = digest.is_zero();
                match out.last_mut() {
                    Some(e) if e.zero == zero => e.len += stop - start,
                    _ => {
                        if out.len() == max {
                            return Ok(out);
                        }
                        out.push(Extent {
                            len: stop - start,
                            zero,
                        });
                    }
                }
            }
            block = page_end;
        }
        Ok(out)
    }

    /// The bytes of `offset..offset+len` as data and zero segments in order.
    pub fn read(&self, offset: u64, len: u64) -> Result<Vec<Segment>> {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset + len;
        let first = offset / self.block_size;
        let last = (end - 1) / self.block_size + 1;
        let slots = self.slots(first, last)?;
        let chunks: Vec<Option<Arc<Vec<u8>>>> = slots
            .par_iter()
            .enumerate()
            .map(|(i, (digest, loc))| {
                if digest.is_zero() {
                    Ok(None)
                } else {
                    self.chunk(first + i as u64, *digest, *loc).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        let mut out: Vec<Segment> = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let b = first + i as u64;
            let block_start = b * self.block_size;
            let start = block_start.max(offset);
            let stop = (block_start + self.block_len(b)).min(end);
            let piece_len = stop - start;
            match (chunk, out.last_mut()) {
                (None, Some(seg)) if seg.data.is_none() => seg.len += piece_len,
                (None, _) => out.push(Segment {
                    offset: start,
                    len: piece_len,
                    data: None,
                }),
                (Some(bytes), last) => {
                    let piece =
                        &bytes[(start - block_start) as usize..(stop - block_start) as usize];
                    match last {
                        Some(Segment {
                            data: Some(buf),
                            len,
                            ..
                        }) => {
                            buf.extend_from_slice(piece);
                            *len += piece_len;
                        }
                        _ => out.push(Segment {
                            offset: start,
                            len: piece_len,
                            data: Some(piece.to_vec()),
                        }),
                    }
                }
            }
        }
        Ok(out)
    }
}
