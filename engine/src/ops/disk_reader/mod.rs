//! Reading one disk of one snapshot: the one place that knows how a disk's bytes are found in
//! a repository. Restore, incremental restore, export and the NBD server all read through
//! [`DiskReader`].
//!
//! - Block `i` is entry `i % page_entries` of manifest page `i / page_entries`. Every block
//!   is `block_size` bytes but the last, which may be short ([`DiskReader::block_len`]).
//! - A page is loaded with the index location of each of its chunks (one batched index
//!   lookup per page) as [`BlockRef`]s, and kept by digest in a [`ReadCache`]: a small
//!   private one by default, or one shared by every disk an NBD server exports.
//! - The zero digest marks an all-zero block, which is never stored: it reads as zeros
//!   without touching the store.
//! - A chunk is read, checked (record header, CRC, length, SHA-256) and decoded straight into
//!   the caller's buffer ([`DiskReader::read_block_into`]): the restore path makes no copy and
//!   no allocation per block. [`DiskReader::read_range`] hands out shared decoded chunks
//!   instead, kept in the cache when it has a chunk budget (the NBD server's).
//! - Errors about a block name the disk and the block's byte offset: a chunk missing from
//!   the index or the store ([`Error::ObjectMissing`]), damaged ([`Error::ObjectCorrupt`]), or
//!   of the wrong length.
//!
//! Nothing here trusts the snapshot's numbers or the caller's: the geometry is checked when
//! a reader is made, a page must hold the entries its position calls for (also when it comes
//! from a cache shared with other disks), and ranges past the end are refused with
//! [`Error::InvalidArgument`].

mod cache;
mod range;
#[cfg(test)]
mod tests;

use std::ops::{Deref, Range};
use std::sync::Arc;

use rayon::prelude::*;
use tessera_format::manifest::{block_count, entries_in_page, page_count};
use tessera_format::{ChunkDigest, DiskEntry, ObjectKind, PageDigest, Snapshot};

pub use cache::ReadCache;
pub use range::{Extent, Segment};

use crate::error::{Error, Result};
use crate::index::ObjectEntry;
use crate::repo::Repository;
use crate::store::reader::{decode_fetched_into, fetch_records, read_object, read_object_into};

/// Pages a reader made with [`DiskReader::new`] keeps: 1 MiB, about 25 pages of 512 entries.
const PRIVATE_PAGE_CACHE: usize = 1 << 20;

/// One disk of one snapshot: its header entry and its root list.
#[derive(Clone, Copy)]
pub struct DiskView<'a> {
    /// Its header entry.
    pub entry: &'a DiskEntry,
    /// Its root list.
    pub root: &'a [PageDigest],
}

impl<'a> DiskView<'a> {
    /// The disk named `name` of `snapshot`, if it has one.
    pub fn find(snapshot: &'a Snapshot, name: &str) -> Option<Self> {
        let pos = snapshot.header.disks.iter().position(|d| d.name == name)?;
        Some(Self {
            entry: snapshot.header.disks.get(pos)?,
            root: snapshot.roots.get(pos)?,
        })
    }

    /// The disk named `name` of `snapshot`; [`Error::InvalidArgument`] naming the disks it
    /// has otherwise.
    pub fn of(snapshot: &'a Snapshot, name: &str) -> Result<Self> {
        Self::find(snapshot, name).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the snapshot has no disk {name:?}; it has: {}",
                disk_names(snapshot)
            ))
        })
    }

    /// The disk named `name`, or without a name the snapshot's only disk; a several-disk
    /// snapshot without a name is [`Error::InvalidArgument`].
    pub fn named_or_only(snapshot: &'a Snapshot, name: Option<&str>) -> Result<Self> {
        match (name, snapshot.header.disks.as_slice()) {
            (Some(name), _) => Self::of(snapshot, name),
            (None, [only]) => Self::of(snapshot, &only.name),
            (None, _) => Err(Error::InvalidArgument(
                "the snapshot has several disks: name one as SNAPSHOT:DISK".into(),
            )),
        }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        block_count(self.entry.size, self.entry.block_size)
    }
}

/// The names of the disks of `snapshot`, comma-separated (for messages).
pub fn disk_names(snapshot: &Snapshot) -> String {
    snapshot
        .header
        .disks
        .iter()
        .map(|d| d.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where one block's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRef {
    /// The block's digest ([`ChunkDigest::ZERO`] for an all-zero block).
    pub digest: ChunkDigest,
    /// Where its chunk is stored; `None` for a zero block, or a chunk the index lacks.
    pub location: Option<ObjectEntry>,
}

impl BlockRef {
    /// Whether the block is all zero (and has no chunk).
    pub fn is_zero(&self) -> bool {
        self.digest.is_zero()
    }
}

/// One disk of a snapshot, readable by block or by byte range (see the module docs).
///
/// `R` is how the repository is held: `&Repository` for an operation, `Arc<Repository>` for
/// a reader that outlives its caller (an NBD export). A reader is `Sync` when `R` is, and is
/// meant to be shared by worker threads.
pub struct DiskReader<R: Deref<Target = Repository>> {
    repo: R,
    name: String,
    size: u64,
    block_size: u64,
    page_entries: u64,
    blocks: u64,
    root: Vec<PageDigest>,
    cache: Arc<ReadCache>,
}

impl<R: Deref<Target = Repository>> DiskReader<R> {
    /// A reader of `disk` with a small private page cache and no chunk cache.
    pub fn new(repo: R, disk: DiskView<'_>) -> Result<Self> {
        Self::with_cache(
            repo,
            disk,
            Arc::new(ReadCache::pages_only(PRIVATE_PAGE_CACHE)),
        )
    }

    /// A reader of `disk` keeping pages and chunks in `cache` (which other readers may share).
    pub fn with_cache(repo: R, disk: DiskView<'_>, cache: Arc<ReadCache>) -> Result<Self> {
        let e = disk.entry;
        if e.block_size == 0 || e.page_entries == 0 {
            return Err(Error::InvalidArgument(format!(
                "disk {} has a zero block size or page size",
                e.name
            )));
        }
        let blocks = block_count(e.size, e.block_size);
        let pages = page_count(blocks, e.page_entries);
        if disk.root.len() as u64 != pages {
            return Err(Error::InvalidArgument(format!(
                "disk {} lists {} manifest pages where {pages} belong",
                e.name,
                disk.root.len()
            )));
        }
        Ok(Self {
            repo,
            name: e.name.clone(),
            size: e.size,
            block_size: u64::from(e.block_size),
            page_entries: u64::from(e.page_entries),
            blocks,
            root: disk.root.to_vec(),
            cache,
        })
    }

    /// The disk's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The disk's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The manifest's block size.
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Number of blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Number of blocks per manifest page.
    pub fn page_entries(&self) -> u64 {
        self.page_entries
    }

    /// Length of block `block`: the block size, less for the last block (0 past the end).
    pub fn block_len(&self, block: u64) -> u64 {
        self.block_size.min(
            self.size
                .saturating_sub(block.saturating_mul(self.block_size)),
        )
    }

    /// Number of manifest pages.
    pub fn pages(&self) -> u64 {
        self.root.len() as u64
    }

    /// The digest of manifest page `page_no`.
    fn page_digest(&self, page_no: u64) -> Result<PageDigest> {
        usize::try_from(page_no)
            .ok()
            .and_then(|i| self.root.get(i))
            .copied()
            .ok_or_else(|| {
                Error::InvalidArgument(format!("disk {} has no manifest page {page_no}", self.name))
            })
    }

    /// The located entries of manifest page `page_no`, from the cache or loaded.
    fn page(&self, page_no: u64) -> Result<Arc<Vec<BlockRef>>> {
        let digest = self.page_digest(page_no)?;
        let want = entries_in_page(self.blocks, self.page_entries as u32, page_no);
        if let Some(page) = self.cache.pages.get(&digest) {
            // The cache may be shared with disks whose manifests place this page elsewhere.
            if page.len() as u64 != want {
                return Err(Error::InvalidArgument(format!(
                    "manifest page {digest} has {} entries where {want} belong (disk {}, page {page_no})",
                    page.len(),
                    self.name
                )));
            }
            return Ok(page);
        }
        let digests =
            self.repo
                .read_page(digest, self.blocks, self.page_entries as u32, page_no)?;
        let located = self.locate_digests(digests.iter().copied())?;
        let cost = located.len() * std::mem::size_of::<BlockRef>() + 64;
        Ok(self.cache.pages.insert(digest, located, cost))
    }

    /// [`BlockRef`]s of `digests`, with one batched index lookup for the non-zero ones.
    fn locate_digests(
        &self,
        digests: impl Iterator<Item = ChunkDigest> + Clone,
    ) -> Result<Vec<BlockRef>> {
        let keys: Vec<[u8; 32]> = digests
            .clone()
            .filter(|d| !d.is_zero())
            .map(|d| d.0)
            .collect();
        let mut locations = self
            .repo
            .index()
            .get_many(ObjectKind::Chunk, &keys)?
            .into_iter();
        Ok(digests
            .map(|digest| BlockRef {
                digest,
                location: if digest.is_zero() {
                    None
                } else {
                    locations.next().flatten()
                },
            })
            .collect())
    }

    /// Where the blocks in `blocks` come from, in order (pages loaded as needed).
    pub fn block_refs(&self, blocks: Range<u64>) -> Result<Vec<BlockRef>> {
        if blocks.start > blocks.end || blocks.end > self.blocks {
            return Err(Error::InvalidArgument(format!(
                "blocks {}..{} lie outside disk {} ({} blocks)",
                blocks.start, blocks.end, self.name, self.blocks
            )));
        }
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut block = blocks.start;
        while block < blocks.end {
            let page_no = block / self.page_entries;
            let page = self.page(page_no)?;
            let first = page_no * self.page_entries;
            let start = (block - first) as usize;
            let stop = ((blocks.end - first) as usize).min(page.len());
            let entries = page.get(start..stop).filter(|e| !e.is_empty());
            let entries = entries.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "manifest page {page_no} of disk {} is short",
                    self.name
                ))
            })?;
            out.extend_from_slice(entries);
            block += entries.len() as u64;
        }
        Ok(out)
    }

    /// Where the chunks of `(block, digest)` pairs (from a diff or a block list) are stored,
    /// in order, with one batched index lookup.
    pub fn locate(&self, blocks: &[(u64, ChunkDigest)]) -> Result<Vec<BlockRef>> {
        self.locate_digests(blocks.iter().map(|(_, d)| *d))
    }

    /// The block digests of manifest page `page_no`, without locations (for listings and
    /// checks that read no chunk).
    pub fn digests(&self, page_no: u64) -> Result<Vec<ChunkDigest>> {
        let digest = self.page_digest(page_no)?;
        self.repo
            .read_page(digest, self.blocks, self.page_entries as u32, page_no)
    }

    /// Every non-zero block, ascending, with its digest.
    pub fn nonzero_blocks(&self) -> Result<Vec<(u64, ChunkDigest)>> {
        let mut out = Vec::new();
        for page_no in 0..self.pages() {
            let first = page_no * self.page_entries;
            out.extend(
                (first..)
                    .zip(self.digests(page_no)?)
                    .filter(|(_, d)| !d.is_zero()),
            );
        }
        Ok(out)
    }

    /// Decodes block `block`, described by `r`, into `dst`, which must be exactly the
    /// block's length; a zero block fills it with zeros. The chunk is checked on the way.
    pub fn read_block_into(&self, block: u64, r: &BlockRef, dst: &mut [u8]) -> Result<()> {
        self.check_dst(block, dst)?;
        if r.is_zero() {
            dst.fill(0);
            return Ok(());
        }
        let location = self.location(block, r)?;
        read_object_into(
            self.repo.backend(),
            self.repo.crypto(),
            ObjectKind::Chunk,
            &r.digest.0,
            &location,
            dst,
        )
        .map_err(|e| self.at_block(block, e))
    }

    /// Whether the repository's store is remote (reads are requests: worth batching).
    pub fn is_remote(&self) -> bool {
        self.repo.backend().is_remote()
    }

    /// Decodes several blocks in parallel into `buf`, each at its place: `(block, ref, range
    /// of buf)`, the ranges ascending, disjoint and each exactly its block's length (see
    /// [`Self::read_block_into`]). The first error wins.
    pub fn read_blocks_into(
        &self,
        buf: &mut [u8],
        places: &[(u64, BlockRef, Range<usize>)],
    ) -> Result<()>
    where
        R: Sync,
    {
        let dsts = carve(buf, places.iter().map(|(_, _, range)| range.clone()))?;
        if !self.repo.backend().is_remote() {
            return places
                .par_iter()
                .zip(dsts)
                .try_for_each(|((block, r, _), dst)| self.read_block_into(*block, r, dst));
        }
        // A remote store: nearby chunks are fetched together, then decoded in parallel.
        let mut located = Vec::new();
        for (block, r, _) in places.iter().filter(|(_, r, _)| !r.is_zero()) {
            located.push(self.location(*block, r)?);
        }
        let mut fetched = fetch_records(self.repo.backend(), &located).into_iter();
        let jobs: Vec<_> = places
            .iter()
            .zip(dsts)
            .map(|((block, r, _), dst)| {
                let record = (!r.is_zero())
                    .then(|| fetched.next())
                    .flatten()
                    .zip(r.location);
                (*block, r, dst, record)
            })
            .collect();
        jobs.into_par_iter()
            .try_for_each(|(block, r, dst, record)| match record {
                None => self.read_block_into(block, r, dst),
                Some((bytes, location)) => {
                    self.check_dst(block, dst)?;
                    decode_fetched_into(
                        bytes,
                        self.repo.crypto(),
                        ObjectKind::Chunk,
                        &r.digest.0,
                        &location,
                        dst,
                    )
                    .map_err(|e| self.at_block(block, e))
                }
            })
    }

    /// The decoded bytes of non-zero block `block` (exactly its length), from the chunk
    /// cache or read, checked and cached.
    fn chunk(&self, block: u64, r: &BlockRef) -> Result<Arc<Vec<u8>>> {
        let data = if let Some(data) = self.cache.chunks.get(&r.digest) {
            data
        } else {
            let location = self.location(block, r)?;
            let raw = read_object(
                self.repo.backend(),
                self.repo.crypto(),
                ObjectKind::Chunk,
                &r.digest.0,
                &location,
            )
            .map_err(|e| self.at_block(block, e))?;
            let cost = raw.len() + 64;
            self.cache.chunks.insert(r.digest, raw, cost)
        };
        // A cached chunk may come from another disk: its length is checked here too.
        self.check_len(block, r, data.len() as u64)?;
        Ok(data)
    }

    /// The location of block `block`'s chunk, checked against the block's length.
    fn location(&self, block: u64, r: &BlockRef) -> Result<ObjectEntry> {
        let location = r.location.ok_or_else(|| Error::ObjectMissing {
            kind: ObjectKind::Chunk,
            digest: self.naming(block, &r.digest),
        })?;
        self.check_len(block, r, u64::from(location.raw_len))?;
        Ok(location)
    }

    /// Refuses a buffer for block `block` that is not exactly its length (or a block past the
    /// disk's end).
    fn check_dst(&self, block: u64, dst: &[u8]) -> Result<()> {
        let len = self.block_len(block);
        if dst.len() as u64 != len || block >= self.blocks {
            return Err(Error::InvalidArgument(format!(
                "a {}-byte buffer for block {block} of disk {}, which holds {len} bytes",
                dst.len(),
                self.name
            )));
        }
        Ok(())
    }

    /// Refuses a chunk of `raw_len` bytes for block `block`, unless that is its length.
    fn check_len(&self, block: u64, r: &BlockRef, raw_len: u64) -> Result<()> {
        let len = self.block_len(block);
        if raw_len == len {
            return Ok(());
        }
        Err(Error::InvalidArgument(format!(
            "chunk {} at offset {} of disk {} holds {raw_len} bytes where the disk needs {len}",
            r.digest,
            block * self.block_size,
            self.name
        )))
    }

    /// `digest (disk NAME, offset N)`: a chunk named with where the disk needs it.
    fn naming(&self, block: u64, digest: &dyn std::fmt::Display) -> String {
        format!(
            "{digest} (disk {}, offset {})",
            self.name,
            block * self.block_size
        )
    }

    /// Adds the disk and the block's offset to an error about its chunk.
    fn at_block(&self, block: u64, e: Error) -> Error {
        let at = |digest: String| self.naming(block, &digest);
        match e {
            Error::ObjectCorrupt {
                kind,
                digest,
                pack,
                offset,
                reason,
            } => Error::ObjectCorrupt {
                kind,
                digest: at(digest),
                pack,
                offset,
                reason,
            },
            Error::ObjectMissing { kind, digest } => Error::ObjectMissing {
                kind,
                digest: at(digest),
            },
            e => e,
        }
    }
}

/// Splits `buf` into the pieces `ranges` (ascending, disjoint, within `buf`) name.
fn carve(
    mut buf: &mut [u8],
    ranges: impl IntoIterator<Item = Range<usize>>,
) -> Result<Vec<&mut [u8]>> {
    let mut at = 0;
    let mut pieces = Vec::new();
    for r in ranges {
        let skip = r.start.checked_sub(at);
        let fits = skip.is_some_and(|skip| skip + r.len() <= buf.len());
        let (Some(skip), true) = (skip, fits) else {
            return Err(Error::InvalidArgument(format!(
                "buffer piece {r:?} overlaps the previous one or lies past the buffer's end"
            )));
        };
        let (piece, rest) = std::mem::take(&mut buf)[skip..].split_at_mut(r.len());
        pieces.push(piece);
        buf = rest;
        at = r.end;
    }
    Ok(pieces)
}
