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
//! base with another block size is refused with its error. Blocks are read through the
//! disk's [`DiskReader`], decoded straight into the writers' buffers.

pub mod qcow2;
pub mod raw;
pub mod vhd;

use std::fs::{self, File};
use std::ops::{Deref, Range};
use std::path::{Path, PathBuf};

use tessera_format::{ChunkDigest, SnapshotId};

use crate::error::{Error, IoContext, Result};
use crate::ops::diff::diff_disks;
use crate::ops::disk_reader::{BlockRef, DiskReader, DiskView};
use crate::ops::restore::{hex_snapshot, path_text};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::storage::durable;

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
    #[serde(serialize_with = "path_text")]
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
    let reader = DiskReader::new(repo, disk.view)?;
    let blocks = match base {
        None => BlockList::full(&reader)?,
        Some(b) => BlockList::delta(repo, b.view, disk.view)?,
    };
    let backing = base.map(|_| {
        backing_file.map_or_else(|| default_backing_name(output, format), ToString::to_string)
    });
    if format == Format::Qcow2 {
        qcow2::write(
            &reader,
            &blocks,
            output,
            backing.as_deref(),
            force,
            progress,
        )
    } else {
        vhd::write(
            &reader,
            &blocks,
            disk,
            base.zip(backing.as_deref()),
            output,
            force,
            progress,
        )
    }
}

/// What `export` asks for.
#[derive(Debug, Clone, Copy)]
pub struct ExportRequest<'a> {
    /// The snapshot (a query, see [`Repository::resolve_snapshot`]).
    pub snapshot: &'a str,
    /// The disk; without one, the snapshot's only disk.
    pub disk: Option<&'a str>,
    /// The base snapshot of a delta (a query).
    pub base: Option<&'a str>,
    /// The output format.
    pub format: Format,
    /// The output file.
    pub output: &'a Path,
    /// The base's export as a delta records it (default [`default_backing_name`]).
    pub backing_file: Option<&'a str>,
    /// Overwrite an existing output.
    pub force: bool,
}

/// What `export` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportReport {
    /// The snapshot exported.
    #[serde(serialize_with = "hex_snapshot")]
    pub snapshot: SnapshotId,
    /// The disk exported.
    pub disk: String,
    /// The base of a delta.
    #[serde(serialize_with = "hex_base")]
    pub base: Option<SnapshotId>,
    /// Seconds the export took (after resolving the snapshots).
    pub seconds: f64,
    /// What was written.
    #[serde(flatten)]
    pub outcome: ExportOutcome,
}

#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with hands over the field by reference"
)]
fn hex_base<S: serde::Serializer>(
    id: &Option<SnapshotId>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match id {
        Some(id) => hex_snapshot(id, s),
        None => s.serialize_none(),
    }
}

/// Exports what `request` names: resolves the snapshot, its disk and the base, then
/// [`export_disk`].
pub fn export_snapshot(
    repo: &Repository,
    request: &ExportRequest<'_>,
    progress: &dyn Progress,
) -> Result<ExportReport> {
    let (id, _) = repo.resolve_snapshot(request.snapshot)?;
    let snapshot = repo.load_snapshot(id)?;
    let view = DiskView::named_or_only(&snapshot, request.disk)?;
    let name = view.entry.name.clone();
    let base = match request.base {
        Some(q) => {
            let (bid, _) = repo.resolve_snapshot(q)?;
            Some((bid, repo.load_snapshot(bid)?))
        }
        None => None,
    };
    let base_disk = match &base {
        Some((bid, s)) => Some(ExportDisk {
            snapshot: *bid,
            time_us: s.header.time_us,
            name: &name,
            view: DiskView::of(s, &name)?,
        }),
        None => None,
    };
    let disk = ExportDisk {
        snapshot: id,
        time_us: snapshot.header.time_us,
        name: &name,
        view,
    };
    let started = std::time::Instant::now();
    let outcome = export_disk(
        repo,
        disk,
        base_disk,
        request.format,
        request.output,
        request.backing_file,
        request.force,
        progress,
    )?;
    Ok(ExportReport {
        snapshot: id,
        disk: name,
        base: base.map(|(bid, _)| bid),
        seconds: started.elapsed().as_secs_f64(),
        outcome,
    })
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
    /// `(block, digest)`; a zero digest (deltas only) is a block that became all zero.
    pub blocks: Vec<(u64, ChunkDigest)>,
    /// Whether this is a delta over a base.
    pub delta: bool,
}

impl BlockList {
    /// Every non-zero block of the disk `reader` reads.
    pub fn full<R: Deref<Target = Repository>>(reader: &DiskReader<R>) -> Result<Self> {
        Ok(Self {
            blocks: reader.nonzero_blocks()?,
            delta: false,
        })
    }

    /// The blocks of `disk` that differ from `base`.
    pub fn delta(repo: &Repository, base: DiskView<'_>, disk: DiskView<'_>) -> Result<Self> {
        let diff = diff_disks(repo, base, disk)?;
        Ok(Self {
            blocks: diff.changed,
            delta: true,
        })
    }
}

/// Makes `buf`, a buffer reused from batch to batch, `len` bytes long with zeros everywhere
/// but in `pieces` (ascending, disjoint), which the batch's blocks are then decoded into.
/// A fresh zeroed buffer per batch would cost a page fault per 4 KiB of every batch.
pub(crate) fn zero_outside(
    buf: &mut Vec<u8>,
    len: usize,
    pieces: &[(u64, BlockRef, Range<usize>)],
) {
    buf.resize(len, 0);
    let mut at = 0;
    for (_, _, range) in pieces {
        if let Some(gap) = buf.get_mut(at..range.start) {
            gap.fill(0);
        }
        at = range.end;
    }
    if let Some(tail) = buf.get_mut(at..) {
        tail.fill(0);
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
