//! The `qcow2` target's checks (see `fuzz_targets/qcow2.rs`).

use std::path::Path;

use tessera_engine::sources::qcow2::Qcow2Source;
use tessera_engine::sources::BlockSource;
use tessera_engine::Error;

use crate::checks::{assert_input_error, assert_ranges, covered, read_both_ways, windows};

/// Opens `data` as a qcow2 image; when it opens, checks what it says against what it
/// reads.
///
/// - An image with a backing file (which is never there: the image is in memory) has
///   changes: sorted, disjoint ranges inside the disk, the guest ranges it defines itself.
/// - The first and last 256 KiB read the same whole and in uneven pieces.
/// - A failing read is a malformed image (a data cluster cut off by the end of the file,
///   a damaged compressed cluster) or the missing backing file, never an engine bug.
/// - With a backing file, a read that succeeds lies inside the changes (everything else
///   needs the backing file), and a read inside the changes never needs the backing file.
pub fn check(data: &[u8]) {
    let src = match Qcow2Source::from_bytes(Path::new("fuzz.qcow2"), data.to_vec()) {
        Ok(src) => src,
        Err(e) => return assert_input_error(&e),
    };
    let size = src.size();
    let extents = src.changes().map(|c| {
        assert!(
            c.base_state.starts_with("missing-backing-file:"),
            "{}",
            c.base_state
        );
        assert_ranges(&c.extents, size);
        c.extents.clone()
    });
    assert_eq!(src.reads_full(), extents.is_none());
    for (s, e) in windows(size) {
        let read = read_both_ways(&src, s, e, false);
        if let Err(err) = &read.result {
            assert_input_error(err);
        }
        let Some(x) = &extents else {
            continue;
        };
        match &read.result {
            Ok(_) => assert!(
                covered(x, s, e),
                "[{s}, {e}) reads without the backing file"
            ),
            Err(err @ Error::Source { .. }) => assert!(
                !covered(x, s, e),
                "[{s}, {e}) lies in the changes {x:?} but needed the backing file: {err}"
            ),
            Err(_) => {}
        }
    }
}
