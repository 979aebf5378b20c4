//! Incremental restore: turn a target that holds snapshot B's disk into snapshot A's disk by
//! writing only the blocks whose digests differ between the two manifests (a metadata-only
//! diff). Rolling a VM back a day costs the changed blocks, not the disk size.
//!
//! The caller asserts what the target holds (`--assume B`). With `check_target` that claim is
//! proven first: every block of the target is hashed and compared with B's manifest, and
//! nothing is written if one differs. Without it, a target whose size does not match B is
//! still refused. Writes go in place (the target is an existing file or block device), so an
//! interrupted incremental restore leaves a mix of A and B: rerun it with `--assume B`
//! (blocks already at A are rewritten identically) or restore in full.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tessera_format::{ChunkDigest, SnapshotId};

use crate::direct_write::BlockWriter;
use crate::error::{Error, IoContext, Result};
use crate::ops::diff::{diff_disks, ManifestDiff};
use crate::ops::disk_reader::{DiskReader, DiskView};
use crate::ops::restore::{hex_snapshot, path_text, GroupContext, GROUP_BYTES};
use crate::progress::Progress;
use crate::repo::Repository;

/// What an incremental restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OntoOutcome {
    /// Size of the restored disk.
    pub size: u64,
    /// Blocks that differed and were written.
    pub changed_blocks: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes of the target read and hashed by the check.
    pub bytes_checked: u64,
}

/// Turns `target`, which holds `from`, into `to` (see module docs).
pub fn restore_onto(
    repo: &Repository,
    to: DiskView<'_>,
    from: DiskView<'_>,
    target: &Path,
    check_target: bool,
    progress: &dyn Progress,
) -> Result<OntoOutcome> {
    let diff = diff_disks(repo, from, to)?;
    let reader = DiskReader::new(repo, to)?;
    let (file, device) = open_target(target, &diff)?;
    let mut outcome = OntoOutcome {
        size: diff.size_to,
        changed_blocks: diff.changed.len() as u64,
        ..OntoOutcome::default()
    };
    if check_target {
        outcome.bytes_checked = check_holds(repo, &file, target, from, progress)?;
    }
    if !device {
        file.set_len(diff.size_to)
            .ctx(|| format!("resizing {}", target.display()))?;
    }
    let refs = reader.locate(&diff.changed)?;
    let bs = reader.block_size();
    let group_blocks = (GROUP_BYTES / bs).max(1) as usize;
    let runs = consecutive_runs(&diff.changed, group_blocks);
    let writer = BlockWriter::new(&file, target, false);
    let ctx = GroupContext {
        reader: &reader,
        writer: &writer,
        write_zeros: true,
        output: target,
    };
    progress.start(
        &format!("restore {} (changed blocks)", to.entry.name),
        diff.changed_bytes(),
    );
    outcome.bytes_written = runs
        .par_iter()
        .map(|run| {
            let n = ctx.restore_group(diff.changed[run.start].0, &refs[run.clone()])?;
            progress.advance(n);
            Ok(n)
        })
        .sum::<Result<u64>>()?;
    progress.finish();
    file.sync_all()
        .ctx(|| format!("syncing {}", target.display()))?;
    Ok(outcome)
}

/// Opens the target and checks its size against the diff; returns it and whether it is a
/// block device.
fn open_target(target: &Path, diff: &ManifestDiff) -> Result<(fs::File, bool)> {
    let meta = fs::metadata(target).map_err(|e| {
        Error::io(
            format!(
                "inspecting {} (an incremental restore needs the existing disk)",
                target.display()
            ),
            e,
        )
    })?;
    let device = meta.file_type().is_block_device();
    if !device && !meta.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is neither a regular file nor a block device",
            target.display()
        )));
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .ctx(|| format!("opening {}", target.display()))?;
    let current = if device {
        file.seek(SeekFrom::End(0))
            .ctx(|| format!("sizing {}", target.display()))?
    } else {
        meta.len()
    };
    if device && current < diff.size_to.max(diff.size_from) {
        return Err(Error::InvalidArgument(format!(
            "{} holds {current} bytes, the disk needs {}",
            target.display(),
            diff.size_to
        )));
    }
    if !device && current != diff.size_from {
        return Err(Error::TargetMismatch {
            path: target.to_path_buf(),
            offset: current.min(diff.size_from),
        });
    }
    Ok((file, device))
}

/// Splits changed blocks (ascending) into index ranges of consecutive blocks, at most `max`
/// blocks each.
fn consecutive_runs(changed: &[(u64, ChunkDigest)], max: usize) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=changed.len() {
        let breaks = i == changed.len() || changed[i].0 != changed[i - 1].0 + 1 || i - start == max;
        if breaks {
            if i > start {
                runs.push(start..i);
            }
            start = i;
        }
    }
    runs
}

/// Hashes every block of the target and compares it with `from`'s manifest; returns the
/// bytes read, or [`Error::TargetMismatch`] at the first block that differs.
fn check_holds(
    repo: &Repository,
    file: &fs::File,
    path: &Path,
    from: DiskView<'_>,
    progress: &dyn Progress,
) -> Result<u64> {
    let reader = DiskReader::new(repo, from)?;
    let bs = reader.block_size();
    progress.start("check target", reader.size());
    let mut buf = Vec::new();
    let mut read = 0;
    for page_no in 0..reader.pages() {
        let digests = reader.digests(page_no)?;
        let offset = page_no * reader.page_entries() * bs;
        let len = (digests.len() as u64 * bs).min(reader.size() - offset);
        buf.resize(len as usize, 0);
        file.read_exact_at(&mut buf, offset)
            .ctx(|| format!("reading {} at offset {offset}", path.display()))?;
        let first_bad = buf
            .par_chunks(bs as usize)
            .zip(digests.par_iter())
            .position_first(|(block, want)| repo.crypto().chunk_id(block) != *want);
        if let Some(i) = first_bad {
            return Err(Error::TargetMismatch {
                path: path.to_path_buf(),
                offset: offset + i as u64 * bs,
            });
        }
        read += len;
        progress.advance(len);
    }
    progress.finish();
    Ok(read)
}

/// What `restore --onto` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OntoReport {
    /// The snapshot restored.
    #[serde(serialize_with = "hex_snapshot")]
    pub snapshot: SnapshotId,
    /// The snapshot the target was assumed to hold.
    #[serde(serialize_with = "hex_snapshot")]
    pub assumed: SnapshotId,
    /// The disk.
    pub disk: String,
    /// The target.
    #[serde(serialize_with = "path_text")]
    pub path: PathBuf,
    /// Seconds the restore took (after resolving the snapshots).
    pub seconds: f64,
    /// What it did.
    pub result: OntoOutcome,
}

/// Turns `target`, which holds disk `disk` (or the only disk) of the snapshot `assume` names,
/// into that disk of the snapshot `query` names (see [`restore_onto`]).
pub fn restore_onto_snapshot(
    repo: &Repository,
    query: &str,
    disk: Option<&str>,
    target: &Path,
    assume: &str,
    check_target: bool,
    progress: &dyn Progress,
) -> Result<OntoReport> {
    let (to_id, _) = repo.resolve_snapshot(query)?;
    let (from_id, _) = repo.resolve_snapshot(assume)?;
    let to = repo.load_snapshot(to_id)?;
    let from = repo.load_snapshot(from_id)?;
    let to_disk = DiskView::named_or_only(&to, disk)?;
    let name = to_disk.entry.name.clone();
    let started = std::time::Instant::now();
    let result = restore_onto(
        repo,
        to_disk,
        DiskView::of(&from, &name)?,
        target,
        check_target,
        progress,
    )?;
    Ok(OntoReport {
        snapshot: to_id,
        assumed: from_id,
        disk: name,
        path: target.to_path_buf(),
        seconds: started.elapsed().as_secs_f64(),
        result,
    })
}
