//! Delta backups: read only the changed extents, take every other block from the
//! reference snapshot.
//!
//! A block is *touched* when a changed extent overlaps it, or when its length differs from
//! the reference's (the disk grew or shrank and this block holds the old or new end). A
//! touched block that the extents cover entirely is read from the source; one they cover
//! in part starts from the reference's block content (read from the store with every
//! check, zero-padded or truncated to the new length) with the changed bytes read over it,
//! so the stored block is always the full block content. Untouched blocks keep the
//! reference's digest (zero beyond the reference's end).
//!
//! Pages without touched blocks that have the same block range as the reference's are not
//! even read: the reference's page digest is reused. Cost is proportional to the changed
//! blocks and the pages they fall in, not to the disk size.

use std::collections::BTreeMap;

use rayon::prelude::*;
use tessera_format::manifest::{block_count, page_count};
use tessera_format::{ChunkDigest, ObjectKind};

use crate::error::{Error, Result};
use crate::ops::backup::disk::{BlockItem, DiskBackup, BATCH_BYTES};
use crate::ops::backup::reference::ReferenceManifest;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::sources::BlockSource;

/// Blocks a delta must rebuild, sorted and unique.
pub fn touched_blocks(
    extents: &[(u64, u64)],
    block_size: u64,
    size: u64,
    ref_size: u64,
) -> Vec<u64> {
    let blocks = size.div_ceil(block_size);
    let mut touched: Vec<u64> = Vec::new();
    for &(s, e) in extents {
        let e = e.min(size);
        if s >= e {
            continue;
        }
        let first = (s / block_size).max(touched.last().map_or(0, |l| l + 1));
        touched.extend(first..=(e - 1) / block_size);
    }
    let len_in = |size: u64, b: u64| size.saturating_sub(b * block_size).min(block_size);
    for b in [ref_size / block_size, size / block_size] {
        if b < blocks && len_in(ref_size, b) > 0 && len_in(ref_size, b) != len_in(size, b) {
            touched.push(b);
        }
    }
    touched.sort_unstable();
    touched.dedup();
    touched
}

impl DiskBackup<'_, '_> {
    /// Backs up disk `name`, a delta source on `reference`, reading only `extents`.
    pub fn run_delta(
        &mut self,
        name: &str,
        source: &dyn BlockSource,
        extents: &[(u64, u64)],
        reference: &mut ReferenceManifest<'_>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let size = source.size();
        let bs = u64::from(self.block_size);
        let blocks = block_count(size, self.block_size);
        let page_entries = u64::from(self.repo.config().page_entries);
        let touched = touched_blocks(extents, bs, size, reference.size());
        // Progress counts the rebuilt blocks' bytes (what is hashed and stored).
        let rebuilt: u64 = touched.iter().map(|&b| (size - b * bs).min(bs)).sum();
        progress.start(&format!("delta {name}"), rebuilt);
        let window = ((BATCH_BYTES / bs).max(1) as usize) * 2 * rayon::current_num_threads();
        let mut pending: BTreeMap<u64, ChunkDigest> = BTreeMap::new();
        let mut next_page = 0;
        for (w, group) in touched.chunks(window).enumerate() {
            let bases = group
                .iter()
                .map(|&b| reference.digest_at(b))
                .collect::<Result<Vec<_>>>()?;
            let base_lens: Vec<u64> = group.iter().map(|&b| reference.block_len(b)).collect();
            let repo = self.repo;
            let built: Vec<Result<(Vec<u8>, u64)>> = group
                .par_iter()
                .zip(&bases)
                .zip(&base_lens)
                .map(|((&b, base), &base_len)| {
                    build_block(repo, bs, source, extents, b, *base, base_len)
                })
                .collect();
            let mut contents = Vec::with_capacity(built.len());
            for r in built {
                let (data, read) = r?;
                self.stats.bytes_read += read;
                contents.push(data);
            }
            let ids = repo.crypto();
            let digests: Vec<ChunkDigest> = contents.par_iter().map(|d| ids.chunk_id(d)).collect();
            let items: Vec<BlockItem<'_>> = group
                .iter()
                .zip(&digests)
                .zip(&contents)
                .zip(&bases)
                .map(|(((&block, &digest), data), &base)| BlockItem {
                    block,
                    digest,
                    data,
                    reference: base,
                })
                .collect();
            self.store(&items)?;
            progress.advance(contents.iter().map(|c| c.len() as u64).sum());
            pending.extend(group.iter().copied().zip(digests));
            // Pages before the next group's first block are complete.
            let limit = touched.get((w + 1) * window).map_or_else(
                || page_count(blocks, page_entries as u32),
                |&b| b / page_entries,
            );
            while next_page < limit {
                self.emit_page(next_page, blocks, &mut pending, reference)?;
                next_page += 1;
            }
        }
        while next_page < page_count(blocks, page_entries as u32) {
            self.emit_page(next_page, blocks, &mut pending, reference)?;
            next_page += 1;
        }
        Ok(())
    }

    // (build_block is a free function below: it runs on rayon workers.)

    /// Emits manifest page `page_no`: the reference's page when nothing in it changed and
    /// it spans the same blocks, otherwise a page assembled from new and reference digests.
    fn emit_page(
        &mut self,
        page_no: u64,
        blocks: u64,
        pending: &mut BTreeMap<u64, ChunkDigest>,
        reference: &mut ReferenceManifest<'_>,
    ) -> Result<()> {
        let page_entries = u64::from(self.repo.config().page_entries);
        let start = page_no * page_entries;
        let end = (start + page_entries).min(blocks);
        let touched = pending.range(start..end).next().is_some();
        let same_span = u64::from(reference.entry.page_entries) == page_entries
            && start < reference.blocks
            && (start + page_entries).min(reference.blocks) == end;
        if !touched && same_span {
            if let Some(&digest) = reference.roots.get(page_no as usize) {
                return self.push_existing_page(digest);
            }
        }
        for b in start..end {
            let digest = match pending.remove(&b) {
                Some(d) => d,
                None => reference.digest_at(b)?.unwrap_or(ChunkDigest::ZERO),
            };
            self.page.push(digest);
        }
        self.finish_page()
    }
}

/// One block's new content: read where the extents cover it, the reference elsewhere.
/// Returns the content and the bytes read from the source.
fn build_block(
    repo: &Repository,
    bs: u64,
    source: &dyn BlockSource,
    extents: &[(u64, u64)],
    block: u64,
    base: Option<ChunkDigest>,
    base_len: u64,
) -> Result<(Vec<u8>, u64)> {
    let start = block * bs;
    let len = (source.size() - start).min(bs);
    let end = start + len;
    let first = extents.partition_point(|&(_, e)| e <= start);
    let pieces: Vec<(u64, u64)> = extents[first..]
        .iter()
        .take_while(|&&(s, _)| s < end)
        .map(|&(s, e)| (s.max(start), e.min(end)))
        .collect();
    let covered: u64 = pieces.iter().map(|(s, e)| e - s).sum();
    let mut buf = match base {
        Some(d) if covered < len && !d.is_zero() => {
            let data = repo.read_object(ObjectKind::Chunk, &d.0).map_err(|e| {
                Error::ReferenceBlockUnreadable {
                    offset: start,
                    source: Box::new(e),
                }
            })?;
            if data.len() as u64 != base_len {
                return Err(Error::ChunkLength {
                    digest: d,
                    offset: start,
                    found: data.len() as u64,
                    expected: base_len,
                });
            }
            data
        }
        _ => Vec::new(),
    };
    buf.resize(len as usize, 0);
    let mut read = 0;
    for (s, e) in pieces {
        let dst = buf
            .get_mut((s - start) as usize..(e - start) as usize)
            .ok_or_else(|| Error::Internal("changed extent outside its block".into()))?;
        read += source.read_at(s, dst)?;
    }
    Ok((buf, read))
}

#[cfg(test)]
mod tests {
    use super::touched_blocks;

    #[test]
    fn touched_blocks_cover_extents_and_length_changes() {
        // Extents inside and across blocks of 100 bytes.
        assert_eq!(
            touched_blocks(&[(0, 1), (150, 260)], 100, 1000, 1000),
            vec![0, 1, 2]
        );
        // Grow from 950 to 1200: old last block 9 changes length; 10 and 11 are new (zero).
        assert_eq!(touched_blocks(&[], 100, 1200, 950), vec![9]);
        // Shrink from 1000 to 850: the new last block 8 is truncated.
        assert_eq!(touched_blocks(&[], 100, 850, 1000), vec![8]);
        // Exact multiples: nothing changes length.
        assert_eq!(touched_blocks(&[], 100, 1200, 1000), Vec::<u64>::new());
        // Extents past the end are clipped.
        assert_eq!(touched_blocks(&[(990, 5000)], 100, 1000, 1000), vec![9]);
    }
}
