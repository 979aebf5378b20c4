//! Mapping the export once at connect with NBD_CMD_BLOCK_STATUS (proto.md "Metadata
//! querying", "`base:allocation` metadata context"; qemu docs/interop/nbd.rst
//! "qemu:dirty-bitmap").
//!
//! The disk is walked in requests of at most [`STATUS_SPAN`] bytes, asking every selected
//! context at once. A server may describe less than asked (or contexts may stop at
//! different places): the walk continues from the smallest end any context reached, and
//! what other contexts said beyond it is asked again. Descriptors running past the request
//! are cut at its end.
//!
//! - `base:allocation`: an extent with `NBD_STATE_ZERO` (bit 1) reads as zeros and is never
//!   fetched; everything else (including `HOLE` without `ZERO`, e.g. a backing file shows
//!   through) is data.
//! - `qemu:dirty-bitmap:NAME`: bit 0 set = dirty, i.e. may differ from the state when the
//!   bitmap was created or last cleared.
//!
//! Bounded: at most [`MAX_RANGES`] ranges are kept and [`MAX_DESCRIPTORS_TOTAL`]
//! descriptors processed, so a server answering with endless 1-byte extents is refused.

use super::transmission::Connection;
use crate::error::{Error, Result};
use crate::formats::nbd::{STATE_DIRTY, STATE_ZERO};

/// Largest span asked for in one BLOCK_STATUS request.
pub const STATUS_SPAN: u64 = 1 << 30;
/// Most ranges kept per context.
const MAX_RANGES: usize = 4 << 20;
/// Most descriptors processed over the whole walk.
const MAX_DESCRIPTORS_TOTAL: u64 = 64 << 20;

/// What block status said about the export.
#[derive(Debug, Default)]
pub struct BlockMap {
    /// Sorted, disjoint ranges that must be read; `None` when `base:allocation` was not
    /// granted (everything is read).
    pub data: Option<Vec<(u64, u64)>>,
    /// Sorted, disjoint dirty ranges; `None` without a bitmap.
    pub dirty: Option<Vec<(u64, u64)>>,
}

/// Appends `[s, e)` to sorted disjoint `ranges`, joining it to the last when adjacent.
fn push(ranges: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    match ranges.last_mut() {
        Some(last) if last.1 == s => last.1 = e,
        _ => ranges.push((s, e)),
    }
}

/// Walks the export on `conn`.
pub fn map_export(conn: &mut Connection, url: &str) -> Result<BlockMap> {
    let neg = conn.neg.clone();
    let mut ids = Vec::new();
    ids.extend(neg.allocation_id);
    ids.extend(neg.bitmap_id);
    if ids.is_empty() {
        return Ok(BlockMap::default());
    }
    let bad = |reason: String| Error::BadImage {
        path: url.to_string(),
        format: "NBD",
        reason,
    };
    // Which ids keep which ranges: `true` keeps extents WITHOUT the ZERO bit (data),
    // `false` keeps extents WITH the DIRTY bit.
    let kinds: Vec<bool> = ids.iter().map(|&i| Some(i) == neg.allocation_id).collect();
    let mut ranges: Vec<Vec<(u64, u64)>> = vec![Vec::new(); ids.len()];
    let mut seen = 0u64;
    let mut pos = 0u64;
    while pos < neg.size {
        let mut len = (neg.size - pos).min(STATUS_SPAN);
        let min = u64::from(neg.min_block);
        if len > min && pos + len < neg.size {
            len -= len % min;
        }
        let end = pos + len;
        let answers = conn.block_status(pos, len as u32, &ids)?;
        // Where every context has spoken up to.
        let mut next = end;
        let mut walked = Vec::with_capacity(answers.len());
        for descs in &answers {
            seen += descs.len() as u64;
            let mut at = pos;
            let mut pieces = Vec::new();
            for &(l, flags) in descs {
                if at >= end {
                    break;
                }
                let e = at.saturating_add(u64::from(l)).min(end);
                pieces.push((at, e, flags));
                at = e;
            }
            next = next.min(at);
            walked.push(pieces);
        }
        if seen > MAX_DESCRIPTORS_TOTAL {
            return Err(bad(format!(
                "block status returned more than {MAX_DESCRIPTORS_TOTAL} extents before offset {pos}; the export is too fragmented to map"
            )));
        }
        for ((pieces, keep_data), out) in walked.into_iter().zip(&kinds).zip(&mut ranges) {
            for (s, e, flags) in pieces {
                let e = e.min(next);
                let keep = if *keep_data {
                    flags & STATE_ZERO == 0
                } else {
                    flags & STATE_DIRTY != 0
                };
                if s < e && keep {
                    push(out, s, e);
                }
            }
            if out.len() > MAX_RANGES {
                return Err(bad(format!(
                    "block status described more than {MAX_RANGES} separate ranges before offset {next}"
                )));
            }
        }
        if next <= pos {
            return Err(bad(format!(
                "block status at offset {pos} made no progress"
            )));
        }
        pos = next;
    }
    let mut map = BlockMap::default();
    for (keep_data, r) in kinds.into_iter().zip(ranges) {
        if keep_data {
            map.data = Some(r);
        } else {
            map.dirty = Some(r);
        }
    }
    Ok(map)
}
