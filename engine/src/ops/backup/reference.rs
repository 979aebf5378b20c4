//! The reference snapshot's manifest of one disk, read page by page as the backup advances.

use tessera_format::manifest::block_count;
use tessera_format::{ChunkDigest, DiskEntry, PageDigest, SnapshotId};

use crate::error::Result;
use crate::repo::Repository;
use crate::sources::STATE_KEY;

/// One disk of the reference snapshot.
pub struct ReferenceManifest<'r> {
    repo: &'r Repository,
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Its disk entry.
    pub entry: DiskEntry,
    /// Its root list.
    pub roots: Vec<PageDigest>,
    /// Blocks of the disk.
    pub blocks: u64,
    loaded: Option<(u64, Vec<ChunkDigest>)>,
}

impl<'r> ReferenceManifest<'r> {
    /// The reference disk `entry` of `snapshot` with root list `roots`.
    pub fn new(
        repo: &'r Repository,
        snapshot: SnapshotId,
        entry: DiskEntry,
        roots: Vec<PageDigest>,
    ) -> Self {
        let blocks = block_count(entry.size, entry.block_size);
        Self {
            repo,
            snapshot,
            entry,
            roots,
            blocks,
            loaded: None,
        }
    }

    /// The state token the reference disk's source had, if it recorded one.
    pub fn state(&self) -> Option<&str> {
        self.entry
            .identity
            .iter()
            .find(|(k, _)| k == STATE_KEY)
            .map(|(_, v)| v.as_str())
    }

    /// Size in bytes of the reference disk.
    pub fn size(&self) -> u64 {
        self.entry.size
    }

    /// Length of block `block` in the reference disk (0 beyond its end).
    pub fn block_len(&self, block: u64) -> u64 {
        let bs = u64::from(self.entry.block_size);
        self.size().saturating_sub(block * bs).min(bs)
    }

    /// The digest the reference has at `block` (`None` beyond its end).
    pub fn digest_at(&mut self, block: u64) -> Result<Option<ChunkDigest>> {
        if block >= self.blocks {
            return Ok(None);
        }
        let page_entries = self.entry.page_entries;
        let page_no = block / u64::from(page_entries);
        if self.loaded.as_ref().is_none_or(|(n, _)| *n != page_no) {
            let Some(digest) = self.roots.get(page_no as usize).copied() else {
                return Ok(None);
            };
            let digests = self
                .repo
                .read_page(digest, self.blocks, page_entries, page_no)?;
            self.loaded = Some((page_no, digests));
        }
        Ok(self.loaded.as_ref().and_then(|(_, digests)| {
            digests
                .get((block % u64::from(page_entries)) as usize)
                .copied()
        }))
    }
}
