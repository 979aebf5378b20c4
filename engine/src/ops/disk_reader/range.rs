//! Byte ranges of a disk: which parts are zero ([`DiskReader::extents`]) and their bytes
//! with zero runs left as holes ([`DiskReader::read_range`]), for readers that address a
//! disk by offset (the NBD server).

use std::ops::Deref;
use std::sync::Arc;

use rayon::prelude::*;

use super::{BlockRef, DiskReader};
pub use crate::disk_range::{Extent, Segment};
use crate::error::{Error, Result};
use crate::repo::Repository;

impl<R: Deref<Target = Repository>> DiskReader<R> {
    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(Error::InvalidArgument(format!(
                "range {offset}+{len} lies past the end of {} ({} bytes)",
                self.name, self.size
            ))),
        }
    }

    /// The blocks `offset..offset+len` touches (`len > 0`, range checked).
    fn blocks_of(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        offset / self.block_size..(offset + len - 1) / self.block_size + 1
    }

    /// The part of block `block` inside `offset..end`, as disk offsets.
    fn clip(&self, block: u64, offset: u64, end: u64) -> (u64, u64) {
        let block_start = block * self.block_size;
        (
            block_start.max(offset),
            (block_start + self.block_len(block)).min(end),
        )
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
        let blocks = self.blocks_of(offset, len);
        let mut block = blocks.start;
        while block < blocks.end {
            // One page at a time bounds the memory a huge status request takes.
            let page_end = ((block / self.page_entries + 1) * self.page_entries).min(blocks.end);
            let refs = self.block_refs(block..page_end)?;
            for (b, r) in (block..).zip(&refs) {
                let (start, stop) = self.clip(b, offset, end);
                let zero = r.is_zero();
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

    /// Fills `buf` with the bytes from `offset`, through the chunk cache: what a reader that
    /// wants bytes rather than segments calls (the files and mount readers). A read inside one
    /// block, the common case for filesystem metadata, is answered on the calling thread with
    /// one copy; longer ones fill their blocks in parallel.
    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()>
    where
        R: Sync,
    {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let blocks = self.blocks_of(offset, len);
        let refs = self.block_refs(blocks.clone())?;
        let mut pieces = Vec::with_capacity(refs.len());
        let mut rest = buf;
        for (b, r) in (blocks.start..).zip(&refs) {
            let (start, stop) = self.clip(b, offset, end);
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut((stop - start) as usize);
            pieces.push((b, r, start, piece));
            rest = tail;
        }
        let fill = |(b, r, start, piece): (u64, &BlockRef, u64, &mut [u8])| -> Result<()> {
            if r.is_zero() {
                piece.fill(0);
                return Ok(());
            }
            let bytes = self.chunk(b, r)?;
            piece.copy_from_slice(self.within(&bytes, b, start, piece.len())?);
            Ok(())
        };
        if pieces.len() == 1 {
            pieces.into_iter().try_for_each(fill)
        } else {
            pieces.into_par_iter().try_for_each(fill)
        }
    }

    /// `len` bytes from disk offset `start` out of block `block`'s decoded `bytes`.
    pub(crate) fn within<'b>(
        &self,
        bytes: &'b [u8],
        block: u64,
        start: u64,
        len: usize,
    ) -> Result<&'b [u8]> {
        let from = start
            .checked_sub(block * self.block_size)
            .and_then(|from| usize::try_from(from).ok());
        from.and_then(|from| bytes.get(from..from.checked_add(len)?))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "bytes {start}+{len} of disk {} do not lie in its block {block}",
                    self.name
                ))
            })
    }

    /// The decoded bytes of block `block` (exactly [`DiskReader::block_len`] of them, checked),
    /// shared through the chunk cache; `None` for an all-zero block.
    pub fn block_data(&self, block: u64) -> Result<Option<Arc<Vec<u8>>>> {
        let r = self.block_refs(block..block + 1)?[0];
        if r.is_zero() {
            return Ok(None);
        }
        self.chunk(block, &r).map(Some)
    }

    /// The bytes of `offset..offset+len` as data and zero segments in order. Chunks are read
    /// in parallel, through the chunk cache.
    pub fn read_range(&self, offset: u64, len: u64) -> Result<Vec<Segment>>
    where
        R: Sync,
    {
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset + len;
        let blocks = self.blocks_of(offset, len);
        let refs = self.block_refs(blocks.clone())?;
        let chunks: Vec<Option<Arc<Vec<u8>>>> = refs
            .par_iter()
            .enumerate()
            .map(|(i, r)| {
                if r.is_zero() {
                    Ok(None)
                } else {
                    self.chunk(blocks.start + i as u64, r).map(Some)
                }
            })
            .collect::<Result<_>>()?;
        let mut out: Vec<Segment> = Vec::new();
        for (b, chunk) in (blocks.start..).zip(&chunks) {
            let block_start = b * self.block_size;
            let (start, stop) = self.clip(b, offset, end);
            let piece_len = stop - start;
            match (chunk, out.last_mut()) {
                (None, Some(seg)) if seg.data.is_none() => seg.len += piece_len,
                (None, _) => out.push(Segment {
                    offset: start,
                    len: piece_len,
                    data: None,
                }),
                (Some(bytes), last) => {
                    let piece = bytes
                        .get((start - block_start) as usize..(stop - block_start) as usize)
                        .ok_or_else(|| {
                            Error::InvalidArgument(format!(
                                "a cached chunk of disk {} is shorter than block {b}",
                                self.name
                            ))
                        })?;
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
