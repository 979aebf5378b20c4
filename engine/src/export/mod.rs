//! Export of a snapshot's disk, or of the delta between two snapshots of a disk, as a sparse
//! raw file, a qcow2 image or a VHD.
//!
//! - [`raw`]: the whole disk as a sparse raw file (a restore); no delta form.
//! - [`qcow2`]: qcow2 version 3. Full: every non-zero block. Delta (`base`): a qcow2 overlay
//!   holding only the blocks that differ from the base, with the base's export recorded as
//!   its backing file.
//! - [`vhd`]: a dynamic VHD (full) or a differencing VHD (delta) whose parent is the base's
//!   VHD export, linked by deterministic UUIDs (see [`vhd::disk_uuid`]).
//!
//! Every writer stages its output under `.NAME.tessera-partial` beside OUT, fsyncs it and
//! renames it into place, so an interrupted export never leaves a file that looks complete;
//! an existing OUT is refused unless `force`.
//!
//! Which blocks a delta holds comes from [`crate::ops::diff::diff_disks`] (base → disk), so a
//! base with another block size is refused with its error.

pub mod qcow2;
pub mod raw;
pub mod vhd;

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tessera_format::manifest::block_count;
use tessera_format::{ChunkDigest, ObjectKind, SnapshotId};

use crate::error::{Error, IoContext, Result};
use crate::ops::diff::{diff_disks, DiskView};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::storage::durable;
use crate::store::reader::read_object;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Sparse raw file.
    Raw,
    /// qcow2 version 3.
    Qcow2,
    /// Microsoft VHD (dynamic, or differencing for a delta).
    Vhd,
}

impl std::str::FromStr for Format {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            "vhd" | "vpc" => Ok(Self::Vhd),
            other => Err(Error::InvalidArgument(format!(
                "unknown export format {other:?}: use raw, qcow2 or vhd"
            ))),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::Vhd => "vhd",
        })
    }
}

/// One disk of one snapshot, with what identifies it.
#[derive(Clone, Copy)]
pub struct ExportDisk<'a> {
    /// The snapshot.
    pub snapshot: SnapshotId,
    /// Its time (microseconds since the Unix epoch); VHD timestamps come from it.
    pub time_us: i64,
    /// The disk's name.
    pub name: &'a str,
    /// The disk.
    pub view: DiskView<'a>,
}

/// What an export did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportOutcome {
    /// The format written.
    pub format: Format,
    /// Where it went.
    pub path: PathBuf,
    /// The disk's size.
    pub disk_size: u64,
    /// The virtual size recorded in the image (the disk size rounded up to 512 bytes for
    /// qcow2 and VHD).
    pub virtual_size: u64,
    /// Size of the file written.
    pub file_size: u64,
    /// Guest data bytes written (zero blocks left unallocated are not counted).
    pub bytes_written: u64,
    /// Tessera blocks written as data.
    pub blocks_written: u64,
    /// Blocks of a delta that became all zero, written as explicit zeros.
    pub zero_blocks_written: u64,
    /// The backing file (qcow2) or parent (VHD) recorded, for a delta.
    pub backing_file: Option<String>,
}

/// Exports `disk` to `output`, in full or (with `base`) as a delta over the base's export.
///
/// `backing_file` names the base's export as recorded in a delta; by default
/// [`default_backing_name`].
#[expect(clippy::too_many_arguments, reason = "one argument per export option")]
pub fn export_disk(
    repo: &Repository,
    disk: ExportDisk<'_>,
    base: Option<ExportDisk<'_>>,
    format: Format,
    output: &Path,
    backing_file: Option<&str>,
    force: bool,
    progress: &dyn Progress,
) -> Result<ExportOutcome> {
    if format == Format::Raw {
        if base.is_some() {
            return Err(Error::InvalidArgument(
                "a raw export cannot hold a delta: use --format qcow2 or vhd with --base, or \
                 export in full without --base"
                    .into(),
            ));
        }
        return raw::write(repo, disk, output, force, progress);
    }
    let blocks = match base {
        None => BlockList::full(repo, disk.view)?,
        Some(b) => BlockList::delta(repo, b.view, disk.view)?,
    };
    let backing = base.map(|_| {
        backing_file.map_or_else(|| default_backing_name(output, format), ToString::to_string)
    });
    if format == Format::Qcow2 {
        qcow2::write(repo, &blocks, output, backing.as_deref(), force, progress)
    } else {
        vhd::write(
            repo,
            &blocks,
            disk,
            base.zip(backing.as_deref()),
            output,
            force,
            progress,
        )
    }
}

/// The backing file name a delta records when none is given: `STEM.base.EXT` beside the
/// output (`vm.qcow2` → `vm.base.qcow2`, `vm.vhd` → `vm.base.vhd`), relative, so the pair can
/// be moved together.
pub fn default_backing_name(output: &Path, format: Format) -> String {
    let stem = output
        .file_stem()
        .map_or_else(|| "export".into(), |s| s.to_string_lossy().into_owned());
    format!("{stem}.base.{format}")
}

/// The blocks an export writes, ascending.
pub struct BlockList {
    /// Disk size.
    pub size: u64,
    /// Block size.
    pub block_size: u64,
    /// `(block, digest)`; a zero digest (deltas only) is a block that became all zero.
    pub blocks: Vec<(u64, ChunkDigest)>,
    /// Whether this is a delta over a base.
    pub delta: bool,
}

impl BlockList {
    /// Every non-zero block of `disk`.
    pub fn full(repo: &Repository, disk: DiskView<'_>) -> Result<Self> {
        let e = disk.entry;
        let n = block_count(e.size, e.block_size);
        let mut blocks = Vec::new();
        for (page_no, page) in disk.root.iter().enumerate() {
            let digests = repo.read_page(*page, n, e.page_entries, page_no as u64)?;
            let first = page_no as u64 * u64::from(e.page_entries);
            blocks.extend(
                digests
                    .iter()
                    .enumerate()
                    .filter(|(_, d)| !d.is_zero())
                    .map(|(i, d)| (first + i as u64, *d)),
            );
        }
        Ok(Self {
            size: e.size,
            block_size: u64::from(e.block_size),
            blocks,
            delta: false,
        })
    }

    /// The blocks of `disk` that differ from `base`.
    pub fn delta(repo: &Repository, base: DiskView<'_>, disk: DiskView<'_>) -> Result<Self> {
        let diff = diff_disks(repo, base, disk)?;
        Ok(Self {
            size: disk.entry.size,
            block_size: u64::from(disk.entry.block_size),
            blocks: diff.changed,
            delta: true,
        })
    }

    /// Length of block `block` (the last one may be short).
    pub fn len_of(&self, block: u64) -> u64 {
        self.block_size
            .min(self.size.saturating_sub(block * self.block_size))
    }

    /// Reads the given blocks (in parallel), checking each; a zero digest reads as an empty
    /// vector.
    pub fn read(&self, repo: &Repository, batch: &[(u64, ChunkDigest)]) -> Result<Vec<Vec<u8>>> {
        let keys: Vec<[u8; 32]> = batch
            .iter()
            .filter(|(_, d)| !d.is_zero())
            .map(|(_, d)| d.0)
            .collect();
        let mut locations = repo.index().get_many(ObjectKind::Chunk, &keys)?.into_iter();
        let slots: Vec<_> = batch
            .iter()
            .map(|(b, d)| {
                (
                    *b,
                    *d,
                    if d.is_zero() {
                        None
                    } else {
                        locations.next().flatten()
                    },
                )
            })
            .collect();
        slots
            .par_iter()
            .map(|(block, digest, location)| {
                if digest.is_zero() {
                    return Ok(Vec::new());
                }
                let offset = block * self.block_size;
                let location = location.ok_or_else(|| Error::ObjectMissing {
                    kind: ObjectKind::Chunk,
                    digest: format!("{digest} (offset {offset})"),
                })?;
                let raw = read_object(repo.backend(), ObjectKind::Chunk, &digest.0, &location)?;
                if raw.len() as u64 != self.len_of(*block) {
                    return Err(Error::InvalidArgument(format!(
                        "chunk {digest} at offset {offset} holds {} bytes where the disk needs {}",
                        raw.len(),
                        self.len_of(*block)
                    )));
                }
                Ok(raw)
            })
            .collect()
    }
}

/// Blocks read together (in parallel) by the writers.
pub(crate) const BATCH: usize = 32;

/// An output file staged under a temporary name beside its target; removed on drop unless
/// committed.
pub(crate) struct Staged {
    pub(crate) file: File,
    temp: Option<PathBuf>,
    output: PathBuf,
}

impl Staged {
    /// Refuses an existing `output` unless `force`, and creates the staging file.
    pub(crate) fn create(output: &Path, force: bool) -> Result<Self> {
        match fs::metadata(output) {
            Ok(meta) if !meta.is_file() => {
                return Err(Error::InvalidArgument(format!(
                    "{} exists and is not a regular file",
                    output.display()
                )))
            }
            Ok(_) if !force => {
                return Err(Error::OutputExists {
                    path: output.to_path_buf(),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("inspecting {}", output.display()), e)),
        }
        let (file, staged) = crate::ops::restore::create_staged(output)?;
        Ok(Self {
            file,
            temp: Some(staged),
            output: output.to_path_buf(),
        })
    }

    /// The staging file's path (for messages).
    pub(crate) fn path(&self) -> &Path {
        self.temp.as_deref().unwrap_or(&self.output)
    }

    /// Writes `buf` at `offset`.
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(buf, offset)
            .ctx(|| format!("writing {} at offset {offset}", self.path().display()))
    }

    /// Sets the final length, fsyncs, renames into place; returns the file size.
    pub(crate) fn commit(mut self, len: u64) -> Result<u64> {
        let staged = self.temp.clone().unwrap_or_else(|| self.output.clone());
        self.file
            .set_len(len)
            .ctx(|| format!("sizing {}", staged.display()))?;
        durable::install_written(&self.file, &staged, &self.output).ctx(|| {
            format!(
                "installing {} as {}",
                staged.display(),
                self.output.display()
            )
        })?;
        self.temp = None;
        Ok(len)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(p) = self.temp.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// `x` rounded up to a multiple of `m` (`m > 0`).
pub(crate) fn round_up(x: u64, m: u64) -> u64 {
    x.div_ceil(m) * m
}
