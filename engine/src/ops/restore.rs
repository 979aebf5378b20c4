//! Restoring one disk of a snapshot to a sparse raw file or an existing block device
//! ([`restore_disk`]), or a whole snapshot laid out by [`restore_layout`]
//! ([`restore_snapshot`]: several disks go to `OUT/DISK.raw`). Blocks are read through the
//! disk's [`DiskReader`], several manifest pages per parallel pass, decoded straight into
//! page-aligned buffers that a write pipeline hands to `O_DIRECT` writer threads.
//!
//! Every chunk is checked on the way out (record header, CRC, length, SHA-256). A new or
//! overwritten file is written under a temporary name beside the target and renamed into
//! place only after `fsync`, so an interrupted restore never leaves a file that looks
//! complete. Zero blocks become holes in files, and explicit zeros on block devices.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tessera_format::{Snapshot, SnapshotId};

use crate::direct_write::{
    with_aligned_buffer, write_pipeline, BlockWriter, PipelineProducer, Run,
};
use crate::error::{Error, IoContext, Result};
use crate::ops::disk_reader::{disk_names, BlockRef, DiskReader, DiskView};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::storage::durable;

/// What the restore of one disk did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    /// The disk's name.
    pub name: String,
    /// Where it went.
    #[serde(serialize_with = "path_text")]
    pub path: PathBuf,
    /// Disk size.
    pub size: u64,
    /// Bytes written (zero blocks left as holes are not counted).
    pub bytes_written: u64,
    /// Zero blocks.
    pub zero_blocks: u64,
}

/// Creates `.NAME.tessera-partial` beside `output` (replacing a leftover of an interrupted
/// run), for a file that is renamed over `output` only once it is complete and synced.
pub(crate) fn create_staged(output: &Path) -> Result<(File, PathBuf)> {
    let name = output.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("{} is not a file path", output.display()))
    })?;
    let staged = output.with_file_name(format!(".{}.tessera-partial", name.to_string_lossy()));
    let _ = fs::remove_file(&staged);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&staged)
        .ctx(|| format!("creating {}", staged.display()))?;
    Ok((file, staged))
}

/// Removes a staged restore file unless the restore completed (then it was renamed).
struct StagedFile(Option<PathBuf>);

impl Drop for StagedFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

enum Target {
    /// A fresh file being written under `staged`, renamed to the target at the end.
    Fresh { file: File, staged: PathBuf },
    /// An existing block device, written in place.
    Device { file: File },
}

fn open_target(output: &Path, size: u64, force: bool) -> Result<Target> {
    match fs::metadata(output) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let mut file = OpenOptions::new()
                .write(true)
                .open(output)
                .ctx(|| format!("opening {}", output.display()))?;
            let dev_size = file
                .seek(SeekFrom::End(0))
                .ctx(|| format!("sizing {}", output.display()))?;
            if dev_size < size {
                return Err(Error::InvalidArgument(format!(
                    "{} holds {dev_size} bytes, the disk needs {size}",
                    output.display()
                )));
            }
            return Ok(Target::Device { file });
        }
        Ok(meta) if meta.is_file() && !force => {
            return Err(Error::OutputExists {
                path: output.to_path_buf(),
            })
        }
        Ok(meta) if !meta.is_file() => {
            return Err(Error::InvalidArgument(format!(
                "{} is neither a regular file nor a block device",
                output.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspecting {}", output.display()), e)),
    }
    let (file, staged) = create_staged(output)?;
    file.set_len(size)
        .ctx(|| format!("sizing {}", staged.display()))?;
    Ok(Target::Fresh { file, staged })
}

/// Blocks restored together: read and checked in parallel within the group, then written as
/// runs of consecutive blocks (large writes keep `O_DIRECT` at device speed).
pub(crate) const GROUP_BYTES: u64 = 4 << 20;

/// Manifest pages restored in one parallel pass (4 pages of 512 64 KiB blocks: 128 MiB).
const PAGES_PER_PASS: usize = 4;

/// Restores groups of consecutive blocks of one disk: reads them through the disk's reader
/// into a buffer and writes them as runs.
pub(crate) struct GroupContext<'a> {
    pub(crate) reader: &'a DiskReader<&'a Repository>,
    pub(crate) writer: &'a BlockWriter<'a>,
    /// Block devices get explicit zeros; fresh files keep holes.
    pub(crate) write_zeros: bool,
    pub(crate) output: &'a Path,
}

impl GroupContext<'_> {
    /// Reads, checks and writes the blocks `first..` that `group` describes; returns bytes
    /// written.
    pub(crate) fn restore_group(&self, first: u64, group: &[BlockRef]) -> Result<u64> {
        let group_len = self.group_len(first, group);
        with_aligned_buffer(group_len, |buf| {
            let mut written = 0;
            for (start, end, offset) in self.fill_group(first, group, buf)? {
                self.writer
                    .write_at(&buf[start..end], offset)
                    .ctx(|| format!("writing {} at offset {offset}", self.output.display()))?;
                written += (end - start) as u64;
            }
            Ok(written)
        })
        .unwrap_or_else(|| {
            Err(Error::InvalidArgument(format!(
                "cannot map a {group_len}-byte restore buffer"
            )))
        })
    }

    /// Bytes of the disk that `group`, from block `first` on, covers.
    fn group_len(&self, first: u64, group: &[BlockRef]) -> usize {
        let bs = self.reader.block_size();
        (group.len() as u64 * bs).min(self.reader.size().saturating_sub(first * bs)) as usize
    }

    /// Reads and checks the blocks `first..` that `group` describes into `buf` (at least the
    /// group's length). Returns the runs of `buf` to write, with their disk offsets (zero
    /// blocks of files are left out: they stay holes).
    pub(crate) fn fill_group(
        &self,
        first: u64,
        group: &[BlockRef],
        buf: &mut [u8],
    ) -> Result<Vec<Run>> {
        let bs = self.reader.block_size() as usize;
        let group_offset = first * bs as u64;
        let group_len = self.group_len(first, group);
        let mut present = vec![false; group.len()];
        let mut places = Vec::new();
        for (i, r) in group.iter().enumerate() {
            if r.is_zero() && !self.write_zeros {
                continue;
            }
            let start = i * bs;
            let len = bs.min(group_len - start);
            places.push((first + i as u64, *r, start..start + len));
            present[i] = true;
        }
        if self.reader.is_remote() {
            // Nearby chunks fetched together, then decoded in parallel into place.
            self.reader.read_blocks_into(buf, &places)?;
        } else {
            for (block, r, range) in places {
                let dst = buf
                    .get_mut(range)
                    .ok_or_else(|| Error::InvalidArgument("restore buffer too small".into()))?;
                // Decoded and checked in place: no intermediate buffers.
                self.reader.read_block_into(block, &r, dst)?;
            }
        }
        let mut runs = Vec::new();
        let mut i = 0;
        while i < group.len() {
            if !present[i] {
                i += 1;
                continue;
            }
            let run_end = (i..group.len())
                .find(|&j| !present[j])
                .unwrap_or(group.len());
            let start = i * bs;
            let end = (run_end * bs).min(group_len);
            runs.push((start, end, group_offset + start as u64));
            i = run_end;
        }
        Ok(runs)
    }
}

/// Fills the groups of `refs` (blocks `first..`) in parallel (rayon workers read, check and
/// decompress into page-aligned buffers) and hands them to the pipeline's writer threads.
fn fill_groups(
    ctx: &GroupContext<'_>,
    producer: &PipelineProducer,
    first: u64,
    refs: &[BlockRef],
    group_blocks: usize,
) -> Result<()> {
    let buffer_len = (GROUP_BYTES.max(ctx.reader.block_size())) as usize;
    refs.par_chunks(group_blocks)
        .enumerate()
        .try_for_each(|(g, group)| {
            let mut buf = producer
                .buffer()
                .ctx(|| format!("mapping a {buffer_len}-byte restore buffer"))?;
            let runs = ctx.fill_group(first + (g * group_blocks) as u64, group, &mut buf)?;
            if producer.submit(buf, runs) {
                Ok(())
            } else {
                // The writer failed; its error is what the caller reports.
                Err(Error::PreviousIo)
            }
        })
}

/// Fills the whole disk, several pages per parallel pass (each pass ends when its slowest
/// group does, so passes of one page, 8 groups, left a core idle at every page's end).
/// Returns the number of zero blocks.
fn fill_disk(
    ctx: &GroupContext<'_>,
    producer: &PipelineProducer,
    progress: &dyn Progress,
) -> Result<u64> {
    let reader = ctx.reader;
    let bs = reader.block_size();
    let group_blocks = (GROUP_BYTES / bs).max(1) as usize;
    let pass_blocks = PAGES_PER_PASS as u64 * reader.page_entries();
    let mut zero_blocks = 0;
    let mut first = 0;
    while first < reader.blocks() {
        let end = (first + pass_blocks).min(reader.blocks());
        let refs = reader.block_refs(first..end)?;
        zero_blocks += refs.iter().filter(|r| r.is_zero()).count() as u64;
        fill_groups(ctx, producer, first, &refs, group_blocks)?;
        progress.advance((end * bs).min(reader.size()) - first * bs);
        first = end;
    }
    Ok(zero_blocks)
}

/// Restores disk `disk` of `snapshot` to `output`.
pub fn restore_disk(
    repo: &Repository,
    id: SnapshotId,
    snapshot: &Snapshot,
    disk: &str,
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let view = DiskView::find(snapshot, disk).ok_or_else(|| Error::DiskNotFound {
        snapshot: id,
        disk: disk.to_string(),
        available: disk_names(snapshot),
    })?;
    let reader = DiskReader::new(repo, view)?;
    let size = reader.size();
    let target = open_target(output, size, force)?;
    let mut staged_guard = StagedFile(match &target {
        Target::Fresh { staged, .. } => Some(staged.clone()),
        Target::Device { .. } => None,
    });
    let (file, writer) = match &target {
        Target::Fresh { file, staged } => (file, BlockWriter::new(file, staged, true)),
        Target::Device { file } => (file, BlockWriter::new(file, output, false)),
    };
    let bs = reader.block_size();
    let ctx = GroupContext {
        reader: &reader,
        writer: &writer,
        write_zeros: matches!(target, Target::Device { .. }),
        output,
    };
    let mut outcome = RestoreOutcome {
        name: disk.to_string(),
        path: output.to_path_buf(),
        size,
        bytes_written: 0,
        zero_blocks: 0,
    };
    progress.start(&format!("restore {disk}"), size);
    // Writer threads for the whole disk; workers fill buffers several pages at a time.
    let (producer, drain) =
        write_pipeline((GROUP_BYTES.max(bs)) as usize, rayon::current_num_threads());
    let filled: Result<()> = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(|| drain.run(ctx.writer));
        let filled = fill_disk(&ctx, &producer, progress)
            .map(|zero_blocks| outcome.zero_blocks += zero_blocks);
        drop(producer);
        let written = writer_thread
            .join()
            .map_err(|_| Error::InvalidArgument("the restore writer thread panicked".into()))?
            .ctx(|| format!("writing {}", output.display()));
        // A damaged chunk (or any reading error) is the news, unless the workers only
        // stopped because the writer had failed: then the write error is.
        match (filled, written) {
            (Ok(()), Ok(n)) => {
                outcome.bytes_written += n;
                Ok(())
            }
            (Err(Error::PreviousIo) | Ok(()), Err(e)) | (Err(e), _) => Err(e),
        }
    });
    filled?;
    progress.finish();
    if let Target::Fresh { staged, .. } = &target {
        durable::install_written(file, staged, output)
            .ctx(|| format!("installing {} as {}", staged.display(), output.display()))?;
        staged_guard.0 = None;
    } else {
        file.sync_all()
            .ctx(|| format!("syncing {}", output.display()))?;
    }
    Ok(outcome)
}

/// What `restore` of a snapshot did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreReport {
    /// The snapshot.
    #[serde(serialize_with = "hex_snapshot")]
    pub snapshot: SnapshotId,
    /// Seconds the restores took, together.
    pub seconds: f64,
    /// Each disk restored, in the snapshot's order.
    pub disks: Vec<RestoreOutcome>,
}

/// Where the disks of a snapshot go when restored (see [`restore_layout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreLayout {
    /// A directory to create first.
    pub directory: Option<PathBuf>,
    /// Each disk to restore, and where, in the snapshot's order.
    pub targets: Vec<(String, PathBuf)>,
}

/// Where each disk of `snapshot` goes when restored to `out`: disk `disk` (or the only
/// disk) to `out` itself; every disk of a several-disk snapshot to `out/DISK.raw`, `out`
/// being a directory.
pub fn restore_layout(snapshot: &Snapshot, disk: Option<&str>, out: &Path) -> RestoreLayout {
    let single = |name: &str| RestoreLayout {
        directory: None,
        targets: vec![(name.to_string(), out.to_path_buf())],
    };
    match (disk, snapshot.header.disks.as_slice()) {
        (Some(d), _) => single(d),
        (None, [only]) => single(&only.name),
        (None, disks) => RestoreLayout {
            directory: Some(out.to_path_buf()),
            targets: disks
                .iter()
                .map(|d| (d.name.clone(), out.join(format!("{}.raw", d.name))))
                .collect(),
        },
    }
}

/// Restores the snapshot `query` names (see [`Repository::resolve_snapshot`]) to `out`, laid
/// out by [`restore_layout`]; `force` allows overwriting files. Stops at the first disk that
/// fails.
pub fn restore_snapshot(
    repo: &Repository,
    query: &str,
    disk: Option<&str>,
    out: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<RestoreReport> {
    let (id, _) = repo.resolve_snapshot(query)?;
    let snapshot = repo.load_snapshot(id)?;
    let layout = restore_layout(&snapshot, disk, out);
    if let Some(dir) = &layout.directory {
        fs::create_dir_all(dir).ctx(|| format!("creating directory {}", dir.display()))?;
    }
    let started = std::time::Instant::now();
    let disks = layout
        .targets
        .iter()
        .map(|(name, path)| restore_disk(repo, id, &snapshot, name, path, force, progress))
        .collect::<Result<Vec<_>>>()?;
    Ok(RestoreReport {
        snapshot: id,
        seconds: started.elapsed().as_secs_f64().max(0.001),
        disks,
    })
}

/// Serializes a snapshot id as hex (for reports).
pub(crate) fn hex_snapshot<S: serde::Serializer>(
    id: &SnapshotId,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&id.to_hex())
}

/// Serializes a path as its display text (for reports; never fails on non-UTF-8 names).
pub(crate) fn path_text<S: serde::Serializer>(
    path: &Path,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(&path.display())
}
