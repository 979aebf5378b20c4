//! The opening scan: reads the L1 table and every L2 table it points to once, checking
//! every entry (qcow2.txt "Cluster mapping"), and collects the guest ranges the image
//! defines itself (data, zero and compressed clusters; subclusters with extended L2).
//!
//! Each L2 table may be named by one L1 entry only, so the scan reads at most the file's
//! size and the extents it collects are bounded by it too.

use super::header::Header;
use super::table::{self, ClusterMap};
use super::{bad_image, Qcow2Source};
use crate::error::Result;
use crate::formats::qcow2::OFFSET_MASK;
use crate::sources::normalize_extents;
use crate::sources::ReadAt;

/// Reads the L1 entries that map the virtual size and checks where they point.
pub fn read_l1(file: &dyn ReadAt, h: &Header, file_len: u64) -> Result<Vec<u64>, String> {
    let mut bytes = vec![0u8; (h.l1_entries * 8) as usize];
    file.read_exact_at(&mut bytes, h.l1_table_offset)
        .map_err(|e| {
            format!(
                "reading the L1 table at offset {:#x}: {e}",
                h.l1_table_offset
            )
        })?;
    let cs = h.cluster_size();
    let mut l1 = Vec::with_capacity(h.l1_entries as usize);
    let mut seen = std::collections::HashSet::new();
    for (i, raw) in bytes.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes(raw.try_into().unwrap_or([0; 8]));
        let offset = entry & OFFSET_MASK;
        let at = h.l1_table_offset + i as u64 * 8;
        if !offset.is_multiple_of(cs) {
            return Err(format!("L1 entry {i} at file offset {at:#x}: L2 table offset {offset:#x} is not aligned to the {cs}-byte cluster"));
        }
        if offset != 0 && offset.checked_add(cs).is_none_or(|e| e > file_len) {
            return Err(format!("L1 entry {i} at file offset {at:#x}: L2 table offset {offset:#x} lies past the end of the file ({file_len} bytes)"));
        }
        // One L2 table per L1 entry: this bounds the opening scan (and the extents it
        // collects) by the file size, whatever l1_size claims.
        if offset != 0 && !seen.insert(offset) {
            return Err(format!("L1 entry {i} at file offset {at:#x}: L2 table offset {offset:#x} is used by an earlier L1 entry too"));
        }
        l1.push(offset);
    }
    Ok(l1)
}

/// Checks every L2 entry that maps the virtual size; returns the normalized guest
/// ranges this image defines itsrc.
pub fn defined_extents(src: &Qcow2Source) -> Result<Vec<(u64, u64)>> {
    let size = src.header.size;
    let per = src.geo.l2_entries();
    let cb = src.geo.cluster_bits;
    let ub = src.geo.unit_bits();
    let mut extents: Vec<(u64, u64)> = Vec::new();
    let mut push = |s: u64, e: u64| match extents.last_mut() {
        Some(last) if last.1 == s => last.1 = e,
        _ => extents.push((s, e)),
    };
    for (i, &l2_offset) in src.l1.iter().enumerate() {
        if l2_offset == 0 {
            continue;
        }
        let t = table::read_l2(src.file.as_ref(), &src.geo, l2_offset)
            .map_err(|r| bad_image(&src.path, r))?;
        for j in 0..per {
            let cluster = i as u64 * per + j;
            let start = cluster << cb;
            if start >= size {
                break;
            }
            match src.decode_entry(&t, l2_offset, cluster)? {
                ClusterMap::Whole(table::Mapping::Backing) => {}
                ClusterMap::Whole(_) => push(start, (start + (1 << cb)).min(size)),
                ClusterMap::Sub { alloc, zero, .. } => {
                    for sub in 0..table::SUBCLUSTERS {
                        if (alloc | zero) >> sub & 1 == 1 {
                            let s = start + (sub << ub);
                            if s < size {
                                push(s, (s + (1 << ub)).min(size));
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(normalize_extents(extents))
}
