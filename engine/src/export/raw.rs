//! Raw export: the disk byte for byte in a sparse file, zero blocks left as holes. This is a
//! restore ([`crate::ops::restore::restore_disk`]): same staging, checks and `--force` rule.

use std::path::Path;

use super::{ExportDisk, ExportOutcome, Format};
use crate::error::Result;
use crate::ops::restore::restore_disk;
use crate::progress::Progress;
use crate::repo::Repository;

/// Writes `disk` to `output` as a sparse raw file.
pub fn write(
    repo: &Repository,
    disk: ExportDisk<'_>,
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<ExportOutcome> {
    let snapshot = repo.load_snapshot(disk.snapshot)?;
    let r = restore_disk(
        repo,
        disk.snapshot,
        &snapshot,
        disk.name,
        output,
        force,
        progress,
    )?;
    let bs = u64::from(disk.view.entry.block_size);
    let blocks = r.size.div_ceil(bs);
    Ok(ExportOutcome {
        format: Format::Raw,
        path: r.path,
        disk_size: r.size,
        virtual_size: r.size,
        file_size: r.size,
        bytes_written: r.bytes_written,
        blocks_written: blocks - r.zero_blocks,
        zero_blocks_written: 0,
        backing_file: None,
    })
}
