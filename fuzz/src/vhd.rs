//! The `vhd` target's checks (see `fuzz_targets/vhd.rs`).

use std::path::Path;

use tessera_engine::formats::vhd::{
    checksum_without_field, dynamic, footer, DYNAMIC_HEADER_LEN, FOOTER_LEN,
};
use tessera_engine::sources::vhd::VhdSource;
use tessera_engine::sources::BlockSource;

use crate::checks::{assert_input_error, assert_ranges, covered, read_both_ways, windows};

/// `data` with the checksums of the footer, its copy at offset 0 and the dynamic header
/// (at the footer's data offset, when it lies inside `data`) recomputed; `None` when
/// `data` is too short for a footer.
pub fn resealed(data: &[u8]) -> Option<Vec<u8>> {
    let len = data.len() as u64;
    let tail = len.checked_sub(FOOTER_LEN)? as usize;
    let mut out = data.to_vec();
    for at in [0, tail] {
        seal(&mut out[at..at + FOOTER_LEN as usize], footer::CHECKSUM);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&out[tail + footer::DATA_OFFSET..tail + footer::DATA_OFFSET + 8]);
    let hdr = u64::from_be_bytes(offset);
    if hdr
        .checked_add(DYNAMIC_HEADER_LEN)
        .is_some_and(|e| e <= len)
    {
        let hdr = hdr as usize;
        seal(
            &mut out[hdr..hdr + DYNAMIC_HEADER_LEN as usize],
            dynamic::CHECKSUM,
        );
    }
    Some(out)
}

fn seal(structure: &mut [u8], field: usize) {
    let sum = checksum_without_field(structure, field);
    structure[field..field + 4].copy_from_slice(&sum.to_be_bytes());
}

/// Opens `data` as a VHD; when it opens, checks what it says against what it reads.
///
/// - A differencing disk's changes are sorted, disjoint ranges inside the disk, on base
///   state `vhd:` + the parent id; nothing else has changes.
/// - The first and last 256 KiB read the same whole and in uneven pieces, with the same
///   count of bytes from the file, never more than asked.
/// - A fixed or dynamic disk reads in full: opening checked every offset, so no read of
///   the disk may fail. A differencing disk (opened without its parent) reads exactly the
///   ranges its changes cover, and fails elsewhere.
pub fn check(data: &[u8]) {
    let src = match VhdSource::from_bytes(Path::new("fuzz.vhd"), data.to_vec()) {
        Ok(src) => src,
        Err(e) => return assert_input_error(&e),
    };
    let size = src.size();
    let extents = src.changes().map(|c| {
        assert!(c.base_state.starts_with("vhd:"), "{}", c.base_state);
        assert_ranges(&c.extents, size);
        c.extents.clone()
    });
    assert_eq!(src.reads_full(), extents.is_none());
    for (s, e) in windows(size) {
        let read = read_both_ways(&src, s, e, true);
        match (&extents, &read.result) {
            (None, Err(err)) => panic!("a full VHD fails to read [{s}, {e}): {err}"),
            (None, Ok(_)) => {}
            (Some(x), result) => assert_eq!(
                result.is_ok(),
                covered(x, s, e),
                "differencing disk, [{s}, {e}) against its changes {x:?}: {:?}",
                result.as_ref().err()
            ),
        }
        if let Err(err) = &read.result {
            assert_input_error(err);
        }
        // Each changed range alone reads (its bytes are in the file).
        for &(xs, xe) in extents.iter().flatten() {
            let (rs, re) = (xs.max(s), xe.min(e));
            if rs < re {
                let mut buf = vec![0u8; (re - rs) as usize];
                let n = src.read_at(rs, &mut buf).expect("a changed range reads");
                assert_eq!(n, re - rs, "a changed range comes from the file");
            }
        }
    }
}
