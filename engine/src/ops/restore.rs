//! Restoring one disk of a snapshot to a sparse raw file or an existing block device.
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
use tessera_format::manifest::block_count;
use tessera_format::{ChunkDigest, DiskEntry, ObjectKind, PageDigest, Snapshot, SnapshotId};

use crate::direct_write::{
    with_aligned_buffer, write_pipeline, BlockWriter, PipelineProducer, Run,
};
use crate::error::{Error, IoContext, Result};
use crate::index::ObjectEntry;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::storage::durable;
use crate::store::reader::read_object_into;

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// Disk size.
    pub size: u64,
    /// Bytes written (zero blocks left as holes are not counted).
    pub bytes_written: u64,
    /// Zero blocks.
    pub zero_blocks: u64,
    /// Where it went.
    pub path: PathBuf,
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

/// One block position of a page, with where its chunk is stored.
pub(crate) struct Slot {
    pub(crate) block: u64,
    pub(crate) digest: ChunkDigest,
    pub(crate) location: Option<ObjectEntry>,
}

pub(crate) struct GroupContext<'a> {
    pub(crate) repo: &'a Repository,
    pub(crate) size: u64,
    pub(crate) bs: u64,
    pub(crate) writer: &'a BlockWriter<'a>,
    /// Block devices get explicit zeros; fresh files keep holes.
    pub(crate) write_zeros: bool,
    pub(crate) disk: &'a str,
    pub(crate) output: &'a Path,
}

impl GroupContext<'_> {
    /// Reads, checks and writes one group of consecutive blocks; returns bytes written.
    pub(crate) fn restore_group(&self, group: &[Slot]) -> Result<u64> {
        let group_len = self.group_len(group);
        with_aligned_buffer(group_len, |buf| {
            let mut written = 0;
            for (start, end, offset) in self.fill_group(group, buf)? {
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

    /// Bytes of the disk that `group` covers.
    fn group_len(&self, group: &[Slot]) -> usize {
        group.first().map_or(0, |first| {
            (group.len() as u64 * self.bs).min(self.size - first.block * self.bs) as usize
        })
    }

    /// Reads and checks the chunks of one group of consecutive blocks into `buf` (at least
    /// the group's length). Returns the runs of `buf` to write, with their disk offsets
    /// (zero blocks of files are left out: they stay holes).
    pub(crate) fn fill_group(&self, group: &[Slot], buf: &mut [u8]) -> Result<Vec<Run>> {
        let Some(first) = group.first() else {
            return Ok(Vec::new());
        };
        let group_offset = first.block * self.bs;
        let group_len = self.group_len(group);
        let mut present = vec![false; group.len()];
        for (i, slot) in group.iter().enumerate() {
            let start = i * self.bs as usize;
            let len = (self.bs as usize).min(group_len - start);
            let dst = buf
                .get_mut(start..start + len)
                .ok_or_else(|| Error::InvalidArgument("restore buffer too small".into()))?;
            if slot.digest.is_zero() {
                if self.write_zeros {
                    dst.fill(0);
                    present[i] = true;
                }
                continue;
            }
            let offset = slot.block * self.bs;
            let location = slot.location.ok_or_else(|| Error::ObjectMissing {
                kind: ObjectKind::Chunk,
                digest: format!("{} (disk {}, offset {offset})", slot.digest, self.disk),
            })?;
            if location.raw_len as usize != len {
                return Err(Error::InvalidArgument(format!(
                    "chunk {} at offset {offset} holds {} bytes where the disk needs {len}",
                    slot.digest, location.raw_len
                )));
            }
            // Decoded and checked in place: no intermediate buffers.
            read_object_into(
                self.repo.backend(),
                ObjectKind::Chunk,
                &slot.digest.0,
                &location,
                dst,
            )?;
            present[i] = true;
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
            let start = i * self.bs as usize;
            let end = (run_end * self.bs as usize).min(group_len);
            runs.push((start, end, group_offset + start as u64));
            i = run_end;
        }
        Ok(runs)
    }
}

/// Slots for `(block, digest)` pairs, with each chunk's location from the index (one
/// batched lookup).
pub(crate) fn locate(
    repo: &Repository,
    blocks: impl Iterator<Item = (u64, ChunkDigest)> + Clone,
) -> Result<Vec<Slot>> {
    let keys: Vec<[u8; 32]> = blocks
        .clone()
        .filter(|(_, d)| !d.is_zero())
        .map(|(_, d)| d.0)
        .collect();
    let mut locations = repo.index().get_many(ObjectKind::Chunk, &keys)?.into_iter();
    Ok(blocks
        .map(|(block, digest)| Slot {
            block,
            digest,
            location: if digest.is_zero() {
                None
            } else {
                locations.next().flatten()
            },
        })
        .collect())
}

/// Fills the groups of `slots` in parallel (rayon workers read, check and decompress into
/// page-aligned buffers) and hands them to the pipeline's writer threads.
fn fill_groups(
    ctx: &GroupContext<'_>,
    producer: &PipelineProducer,
    slots: &[Slot],
    group_blocks: usize,
) -> Result<()> {
    let buffer_len = (GROUP_BYTES.max(ctx.bs)) as usize;
    slots.par_chunks(group_blocks).try_for_each(|group| {
        let mut buf = producer
            .buffer()
            .ctx(|| format!("mapping a {buffer_len}-byte restore buffer"))?;
        let runs = ctx.fill_group(group, &mut buf)?;
        if producer.submit(buf, runs) {
            Ok(())
        } else {
            // The writer failed; its error is what the caller reports.
            Err(Error::PreviousIo)
        }
    })
}

/// Fills the whole disk from its root list, several pages per parallel pass (each pass ends
/// when its slowest group does, so passes of one page, 8 groups, left a core idle at every
/// page's end). Returns the number of zero blocks.
fn fill_disk(
    ctx: &GroupContext<'_>,
    producer: &PipelineProducer,
    root: &[PageDigest],
    entry: &DiskEntry,
    progress: &dyn Progress,
) -> Result<u64> {
    let bs = u64::from(entry.block_size);
    let blocks = block_count(entry.size, entry.block_size);
    let group_blocks = (GROUP_BYTES / bs).max(1) as usize;
    let mut zero_blocks = 0;
    for (pass, pages) in root.chunks(PAGES_PER_PASS).enumerate() {
        let first_page = (pass * PAGES_PER_PASS) as u64;
        let first_block = first_page * u64::from(entry.page_entries);
        let mut digests = Vec::new();
        for (i, page_digest) in pages.iter().enumerate() {
            let page_no = first_page + i as u64;
            digests.extend(ctx.repo.read_page(
                *page_digest,
                blocks,
                entry.page_entries,
                page_no,
            )?);
        }
        let slots = locate(
            ctx.repo,
            digests
                .iter()
                .enumerate()
                .map(|(i, d)| (first_block + i as u64, *d)),
        )?;
        zero_blocks += slots.iter().filter(|s| s.digest.is_zero()).count() as u64;
        fill_groups(ctx, producer, &slots, group_blocks)?;
        progress.advance((digests.len() as u64 * bs).min(entry.size - first_block * bs));
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
    let pos = snapshot
        .header
        .disks
        .iter()
        .position(|d| d.name == disk)
        .ok_or_else(|| Error::DiskNotFound {
            snapshot: id,
            disk: disk.to_string(),
            available: snapshot
                .header
                .disks
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let entry = &snapshot.header.disks[pos];
    let root = &snapshot.roots[pos];
    let target = open_target(output, entry.size, force)?;
    let mut staged_guard = StagedFile(match &target {
        Target::Fresh { staged, .. } => Some(staged.clone()),
        Target::Device { .. } => None,
    });
    let (file, writer) = match &target {
        Target::Fresh { file, staged } => (file, BlockWriter::new(file, staged, true)),
        Target::Device { file } => (file, BlockWriter::new(file, output, false)),
    };
    let bs = u64::from(entry.block_size);
    let ctx = GroupContext {
        repo,
        size: entry.size,
        bs,
        writer: &writer,
        write_zeros: matches!(target, Target::Device { .. }),
        disk,
        output,
    };
    let mut outcome = RestoreOutcome {
        size: entry.size,
        bytes_written: 0,
        zero_blocks: 0,
        path: output.to_path_buf(),
    };
    progress.start(&format!("restore {disk}"), entry.size);
    // Writer threads for the whole disk; workers fill buffers several pages at a time.
    let (producer, drain) =
        write_pipeline((GROUP_BYTES.max(bs)) as usize, rayon::current_num_threads());
    let filled: Result<()> = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(|| drain.run(ctx.writer));
        let filled = fill_disk(&ctx, &producer, root, entry, progress)
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
