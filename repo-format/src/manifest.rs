//! Manifest pages: a disk's list of block digests, cut into fixed-size pages.
//!
//! Block `i` of a disk is described by entry `i % page_entries` of page `i / page_entries`.
//! Every page but the last holds exactly `page_entries` digests. Pages are stored in packs
//! like chunks and named by the SHA-256 of their encoding, so an unchanged region of a new
//! backup references the very same page objects as the previous backup.
//!
//! ```text
//! page = "TSRPAGE1" count:u32 digest[32]*count
//! ```

use crate::codec::{check_count, put_len, Reader};
use crate::{ChunkDigest, DecodeError, EncodeError, PageDigest};

/// Names a page in errors.
const WHAT: &str = "manifest page";
/// Bytes before the first digest: magic and count.
const PAGE_HEADER_LEN: usize = 12;

/// Magic at the start of every encoded page.
pub const PAGE_MAGIC: &[u8; 8] = b"TSRPAGE1";
/// Largest number of entries a page may hold.
pub const MAX_PAGE_ENTRIES: u32 = 65536;

/// One decoded manifest page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestPage {
    /// The digests, in block order.
    pub digests: Vec<ChunkDigest>,
}

impl ManifestPage {
    /// Encodes the page; refuses more than [`MAX_PAGE_ENTRIES`] digests.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        check_entries(self.digests.len())?;
        let mut out = Vec::with_capacity(
            self.digests
                .len()
                .saturating_mul(ChunkDigest::LEN)
                .saturating_add(PAGE_HEADER_LEN),
        );
        out.extend_from_slice(PAGE_MAGIC);
        put_len(&mut out, WHAT, "entries", self.digests.len())?;
        for d in &self.digests {
            out.extend_from_slice(d.as_bytes());
        }
        Ok(out)
    }

    /// Encodes the page and returns its digest.
    pub fn encode_with_digest(&self) -> Result<(PageDigest, Vec<u8>), EncodeError> {
        let bytes = self.encode()?;
        Ok((PageDigest::of(&bytes), bytes))
    }

    /// Decodes a page.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf, WHAT);
        r.magic(PAGE_MAGIC)?;
        let count = r.count(ChunkDigest::LEN)?;
        check_entries(count)?;
        let mut digests = Vec::with_capacity(count);
        for _ in 0..count {
            digests.push(ChunkDigest(r.array()?));
        }
        r.finish()?;
        Ok(Self { digests })
    }
}

fn check_entries(count: usize) -> Result<(), DecodeError> {
    check_count(WHAT, "entries", count, MAX_PAGE_ENTRIES as usize)
}

/// Number of blocks of a disk of `size` bytes.
pub fn block_count(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size.max(1)))
}

/// Number of pages that describe `blocks` blocks.
pub fn page_count(blocks: u64, page_entries: u32) -> u64 {
    blocks.div_ceil(u64::from(page_entries.max(1)))
}

/// Number of entries page `page` must hold (0 for a page past the end).
pub fn entries_in_page(blocks: u64, page_entries: u32, page: u64) -> u64 {
    let start = page.saturating_mul(u64::from(page_entries));
    blocks.saturating_sub(start).min(u64::from(page_entries))
}
