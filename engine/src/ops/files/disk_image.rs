//! One disk of a snapshot as an [`Image`]: byte reads answered by the disk reader, through a
//! chunk cache keyed by chunk digest that several disks (the snapshots `files find` scans)
//! may share, so metadata blocks unchanged between snapshots are decoded once.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use tessera_format::ChunkDigest;

use crate::disk_range::Extent;
use crate::error::Result;
use crate::explore::image::check_range;
use crate::explore::{FsError, Image};
use crate::ops::disk_reader::{DiskReader, DiskView, ReadCache};
use crate::repo::Repository;

/// A block number and its decoded bytes (`None`: all zero).
type HeldBlock = (u64, Option<Arc<Vec<u8>>>);

/// A snapshot's disk, readable at any byte offset.
pub struct DiskImage {
    reader: DiskReader<Arc<Repository>>,
    /// Manifest blocks any read touched (for `files ls`'s "blocks read"); `None` when not
    /// counted (a long-lived reader such as `tessera mount`, whose reads would grow it
    /// without bound).
    touched: Option<Mutex<HashSet<u64>>>,
    /// The block of the last one-block read and its bytes (`None`: all zero).
    last_block: Mutex<Option<HeldBlock>>,
}

impl DiskImage {
    /// The disk `disk` of a snapshot, reading through `cache`.
    pub fn new(repo: Arc<Repository>, disk: DiskView<'_>, cache: Arc<ReadCache>) -> Result<Self> {
        Ok(Self {
            reader: DiskReader::with_cache(repo, disk, cache)?,
            touched: Some(Mutex::new(HashSet::new())),
            last_block: Mutex::new(None),
        })
    }

    /// [`DiskImage::new`] without counting the blocks reads touch.
    pub fn uncounted(
        repo: Arc<Repository>,
        disk: DiskView<'_>,
        cache: Arc<ReadCache>,
    ) -> Result<Self> {
        Ok(Self {
            reader: DiskReader::with_cache(repo, disk, cache)?,
            touched: None,
            last_block: Mutex::new(None),
        })
    }

    /// How many distinct manifest blocks reads have touched, and how many the disk has.
    pub fn blocks_read(&self) -> (u64, u64) {
        let touched = self.touched.as_ref().map_or(0, |t| {
            t.lock().unwrap_or_else(PoisonError::into_inner).len() as u64
        });
        (touched, self.reader.blocks())
    }

    /// Runs of zero and stored blocks covering `offset..offset+len`, at most `max` of them
    /// (the last may end before the range does): where a sparse reader's holes are.
    pub fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        self.reader.extents(offset, len, max)
    }

    /// The digests of the blocks holding disk bytes `range`, and where the range starts in
    /// its first block: what those bytes are, as content, without reading them.
    pub fn digests_of(&self, range: Range<u64>) -> Result<(u64, Vec<ChunkDigest>)> {
        if range.is_empty() {
            return Ok((0, Vec::new()));
        }
        let bs = self.reader.block_size();
        let blocks = range.start / bs..(range.end - 1) / bs + 1;
        let refs = self.reader.block_refs(blocks)?;
        Ok((range.start % bs, refs.iter().map(|r| r.digest).collect()))
    }
}

impl Image for DiskImage {
    fn len(&self) -> u64 {
        self.reader.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), FsError> {
        if buf.is_empty() {
            return Ok(());
        }
        check_range(self.len(), offset, buf.len() as u64, "a read")?;
        let bs = self.reader.block_size();
        if let Some(touched) = &self.touched {
            let mut touched = touched.lock().unwrap_or_else(PoisonError::into_inner);
            let last = (offset + buf.len() as u64 - 1) / bs;
            touched.extend(offset / bs..=last);
        }
        // Whole blocks inside a large read (a file's content) are decoded in parallel
        // straight into `buf`, past the chunk cache: streaming a big file would only evict
        // the metadata blocks the cache is for, and copy every byte twice.
        let end = offset + buf.len() as u64;
        let whole = offset.div_ceil(bs)..end / bs;
        if whole.end < whole.start + DIRECT_MIN_BLOCKS {
            return self.read_cached(offset, buf);
        }
        let (head, rest) = buf.split_at_mut((whole.start * bs - offset) as usize);
        let (middle, tail) = rest.split_at_mut(((whole.end - whole.start) * bs) as usize);
        self.read_cached(offset, head)?;
        let refs = self.reader.block_refs(whole.clone())?;
        let places: Vec<_> = whole
            .clone()
            .zip(refs)
            .enumerate()
            .map(|(i, (block, r))| {
                let at = i * bs as usize;
                (block, r, at..at + bs as usize)
            })
            .collect();
        self.reader.read_blocks_into(middle, &places)?;
        self.read_cached(whole.end * bs, tail)
    }
}

/// Whole blocks a read must span before it bypasses the chunk cache.
const DIRECT_MIN_BLOCKS: u64 = 2;

impl DiskImage {
    /// Reads `buf.len()` bytes at `offset` through the chunk cache. A read inside the block
    /// the previous one-block read was in (the next inode of a table, the next directory
    /// block) is copied from that block, held here, without asking the cache again.
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> std::result::Result<(), FsError> {
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.reader.block_size();
        let block = offset / bs;
        if (offset + buf.len() as u64 - 1) / bs != block {
            return Ok(self.reader.read_into(offset, buf)?);
        }
        // The lock is never held while a block is fetched: other readers (mount's threads)
        // go on meanwhile.
        let held = || {
            self.last_block
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        let known = match &*held() {
            Some((b, data)) if *b == block => Some(data.clone()),
            _ => None,
        };
        let data = if let Some(data) = known {
            data
        } else {
            let data = self.reader.block_data(block)?;
            *held() = Some((block, data.clone()));
            data
        };
        match data {
            Some(bytes) => {
                buf.copy_from_slice(self.reader.within(&bytes, block, offset, buf.len())?);
            }
            None => buf.fill(0),
        }
        Ok(())
    }
}
