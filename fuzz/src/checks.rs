//! Invariants shared by the engine targets: range lists and reads of block sources.

use tessera_engine::sources::BlockSource;
use tessera_engine::Error;

/// Asserts that `ranges` are sorted, non-empty, neither overlapping nor adjacent (they
/// went through `normalize_extents` or an equivalent merge) and end within `size`.
#[track_caller]
pub fn assert_ranges(ranges: &[(u64, u64)], size: u64) {
    for &(s, e) in ranges {
        assert!(s < e && e <= size, "range [{s}, {e}) of a {size}-byte disk");
    }
    for w in ranges.windows(2) {
        assert!(
            w[0].1 < w[1].0,
            "ranges {:?} and {:?} are not sorted and apart",
            w[0],
            w[1]
        );
    }
}

/// Whether `[s, e)` lies inside the union of `ranges` (sorted, disjoint).
pub fn covered(ranges: &[(u64, u64)], s: u64, e: u64) -> bool {
    let first = ranges.partition_point(|&(_, end)| end <= s);
    ranges
        .get(first)
        .is_some_and(|&(rs, re)| rs <= s && e <= re)
}

/// Most bytes read from one end of a disk.
pub const WINDOW: u64 = 256 << 10;

/// The ranges the targets read: the first and the last [`WINDOW`] bytes of the disk.
pub fn windows(size: u64) -> Vec<(u64, u64)> {
    let head = (0, size.min(WINDOW));
    let tail = (size.saturating_sub(WINDOW).max(head.1), size);
    [head, tail].into_iter().filter(|(s, e)| s < e).collect()
}

/// Piece lengths of the second read: uneven, crossing sectors, clusters and blocks.
const PIECES: [u64; 5] = [3, 509, 4096, 12_345, 65_536];

/// What reading `[s, e)` gave.
pub struct Read {
    /// The bytes, or the error of the whole read.
    pub result: Result<Vec<u8>, Error>,
    /// The "bytes read from the medium" the whole read reported.
    pub from_medium: u64,
}

/// Reads `[s, e)` of `src` in one call and again in uneven pieces, and asserts that both
/// agree: the same bytes when the whole read succeeds, some piece failing when it fails.
/// With `additive_count`, the bytes-from-medium counts of the pieces must add up to the
/// whole read's, which may not exceed the range.
pub fn read_both_ways(src: &dyn BlockSource, s: u64, e: u64, additive_count: bool) -> Read {
    let mut whole = vec![0u8; (e - s) as usize];
    let result = src.read_at(s, &mut whole);
    let mut pieces = vec![0u8; whole.len()];
    let mut pos = s;
    let mut counted = 0u64;
    let mut piece_err = None;
    for len in PIECES.iter().cycle() {
        if pos >= e {
            break;
        }
        let end = (pos + len).min(e);
        let dst = &mut pieces[(pos - s) as usize..(end - s) as usize];
        match src.read_at(pos, dst) {
            Ok(n) => counted += n,
            Err(err) => piece_err = Some(err),
        }
        pos = end;
    }
    match result {
        Ok(n) => {
            assert!(
                piece_err.is_none(),
                "[{s}, {e}) reads whole but a piece fails: {piece_err:?}"
            );
            assert!(whole == pieces, "[{s}, {e}) reads differently in pieces");
            if additive_count {
                assert_eq!(n, counted, "[{s}, {e}): bytes from the medium");
                assert!(n <= e - s, "[{s}, {e}): {n} bytes from the medium");
            }
            Read {
                result: Ok(whole),
                from_medium: n,
            }
        }
        Err(err) => {
            assert!(
                piece_err.is_some(),
                "[{s}, {e}) fails whole ({err}) but reads in pieces"
            );
            Read {
                result: Err(err),
                from_medium: 0,
            }
        }
    }
}

/// Asserts that `e` is an error a malformed input may cause (a malformed image, refused
/// data, or a server's I/O-level failure), not an engine bug (`Internal`) or a request
/// the engine should never have formed (`InvalidArgument`).
#[track_caller]
pub fn assert_input_error(e: &Error) {
    assert!(
        matches!(
            e,
            Error::BadImage { .. } | Error::Source { .. } | Error::UntrustedData { .. }
        ),
        "unexpected kind of error: {e:?}"
    );
}
