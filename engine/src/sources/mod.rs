//! Where backups read disks from: raw images and block devices, VHD (fixed, dynamic,
//! differencing), qcow2 (with backing chains), NBD servers, and raw images with a
//! changed-block list next to them.
//!
//! A source always describes the *whole* disk (`size`, `read_at`). A *delta* source also
//! carries [`Changes`]: the byte ranges that may differ from a base state, and the token of
//! that base state. The backup engine uses them to read only those ranges and to take every
//! other block from the reference snapshot, after checking that the reference snapshot's
//! disk carries the base's state token (see SPEC.md "Delta backups").

pub mod changed_list;
pub mod confine;
pub mod nbd_client;
pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod xo;

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Positioned reads of an image's bytes: the seam between the image readers (VHD, qcow2)
/// and where the image lives. A file in production; bytes in memory for tests and the fuzz
/// targets (`fuzz/`), which then run exactly the decoding a file gets.
pub trait ReadAt: Send + Sync {
    /// Fills `buf` with the bytes at `at`; an [`std::io::ErrorKind::UnexpectedEof`] error
    /// when the image ends first.
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, at)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        let src = usize::try_from(at)
            .ok()
            .and_then(|lo| self.get(lo..lo.checked_add(buf.len())?))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} bytes at offset {at} lie past the end of the {}-byte image",
                        buf.len(),
                        self.len()
                    ),
                )
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Identity key naming the state of the source a snapshot's disk was read from. A later
/// delta whose [`Changes::base_state`] equals this value applies on top of that snapshot.
pub const STATE_KEY: &str = "state";

/// A disk to back up, read by offset. Implementations must allow concurrent `read_at` calls.
pub trait BlockSource: Send + Sync {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset` (the range lies within the disk). Returns how
    /// many bytes were actually read from the medium (holes are filled without reading).
    ///
    /// When [`BlockSource::reads_full`] is false, only ranges inside
    /// [`Changes::extents`] may be asked for; anything else is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64>;
    /// What the source says about itself, recorded in the snapshot. Includes
    /// [`STATE_KEY`] when the source can name its state (VHD UUID, file fingerprint, bitmap).
    fn identity(&self) -> Vec<(String, String)>;
    /// The delta this source carries, if it is one.
    fn changes(&self) -> Option<&Changes> {
        None
    }
    /// Whether every byte of the disk can be read (false for a differencing VHD whose
    /// parent is not reachable: only its own changed sectors can be read).
    fn reads_full(&self) -> bool {
        true
    }
}

/// What a delta source says changed since a base state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Token of the state the delta applies on: the reference snapshot's disk must carry it
    /// as its [`STATE_KEY`] identity value.
    pub base_state: String,
    /// The base, for messages (e.g. "parent VHD 6f1c…", "backing file /x/base.qcow2").
    pub base_description: String,
    /// Sorted, disjoint, non-empty `[start, end)` byte ranges that may differ from the
    /// base. Everything outside them equals the base (zeros beyond the base's size). They
    /// need not be block-aligned: the engine merges partial blocks with the reference.
    pub extents: Vec<(u64, u64)>,
}

impl Changes {
    /// Bytes covered by the extents.
    pub fn changed_bytes(&self) -> u64 {
        self.extents.iter().map(|(s, e)| e - s).sum()
    }
}

/// Sorts and merges ranges into sorted, disjoint, non-empty ones (adjacent ones joined).
pub fn normalize_extents(mut extents: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    extents.retain(|(s, e)| e > s);
    extents.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    for (s, e) in extents {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// How to interpret a disk argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceFormat {
    /// `nbd://` and `nbd+unix://` URLs are NBD; files are probed for qcow2 and VHD
    /// signatures; anything else is raw.
    #[default]
    Auto,
    /// Raw image or block device, never probed.
    Raw,
    /// VHD (fixed, dynamic or differencing).
    Vhd,
    /// qcow2.
    Qcow2,
}

impl std::str::FromStr for SourceFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "raw" => Ok(Self::Raw),
            "vhd" | "vpc" => Ok(Self::Vhd),
            "qcow2" => Ok(Self::Qcow2),
            _ => Err(Error::Usage(format!(
                "unknown source format {s:?}; use auto, raw, vhd or qcow2"
            ))),
        }
    }
}

/// One disk to open.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    /// File, block device, or `nbd://HOST[:PORT]/EXPORT[?bitmap=NAME&track=NAME]` /
    /// `nbd+unix:///EXPORT?socket=PATH[&...]` (`nbds` for TLS).
    pub location: String,
    /// How to interpret it.
    pub format: SourceFormat,
    /// A changed-block list (see [`changed_list`]) describing a raw image's delta.
    pub changes: Option<std::path::PathBuf>,
    /// Directories besides the image's own that its backing files or parents may be
    /// opened from ([`confine`]).
    pub allow_backing_dirs: Vec<std::path::PathBuf>,
    /// CA certificates trusted besides the system's roots by `nbds://` sources.
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Whether `location` names an NBD export rather than a file.
pub fn is_nbd_url(location: &str) -> bool {
    ["nbd://", "nbd+unix://", "nbds://", "nbds+unix://"]
        .iter()
        .any(|scheme| location.starts_with(scheme))
}

/// Opens a source as `spec` says.
pub fn open_source(spec: &SourceSpec) -> Result<Box<dyn BlockSource>> {
    let source: Box<dyn BlockSource> = if is_nbd_url(&spec.location) {
        if spec.format != SourceFormat::Auto {
            return Err(Error::Usage(format!(
                "{}: an NBD source is always read as the raw disk the server exports; drop --format",
                spec.location
            )));
        }
        Box::new(nbd_client::NbdSource::connect(
            &spec.location,
            spec.tls_ca.as_deref(),
        )?)
    } else {
        let path = Path::new(&spec.location);
        let format = match spec.format {
            SourceFormat::Auto => detect_format(path)?,
            f => f,
        };
        let confinement = || confine::Confinement::for_image(path, &spec.allow_backing_dirs);
        match format {
            SourceFormat::Vhd => Box::new(vhd::VhdSource::open_confined(path, &confinement()?)?),
            SourceFormat::Qcow2 => {
                Box::new(qcow2::Qcow2Source::open_confined(path, &confinement()?)?)
            }
            SourceFormat::Raw | SourceFormat::Auto => Box::new(raw::RawSource::open(path)?),
        }
    };
    match &spec.changes {
        None => Ok(source),
        Some(list) => {
            if source.changes().is_some() {
                return Err(Error::Usage(format!(
                    "{} carries its own change information; a changed-block list applies only to raw images and block devices",
                    spec.location
                )));
            }
            Ok(Box::new(changed_list::WithChangedList::new(source, list)?))
        }
    }
}

/// Probes a file for the qcow2 magic (first 4 bytes) and the VHD footer cookie
/// (`conectix` in the last 512 bytes, or the first 512 for a footer copy); raw otherwise.
/// Block devices and FIFOs are not probed (raw; `RawSource` refuses what it cannot read).
pub fn detect_format(path: &Path) -> Result<SourceFormat> {
    let source_err = |e: std::io::Error| Error::Source {
        path: path.to_path_buf(),
        source: e,
    };
    let meta = std::fs::metadata(path).map_err(source_err)?;
    if !meta.is_file() {
        return Ok(SourceFormat::Raw);
    }
    let mut file = std::fs::File::open(path).map_err(source_err)?;
    let mut head = [0u8; 8];
    let n = file.read(&mut head).map_err(source_err)?;
    if n >= 4 && head[..4] == *b"QFI\xfb" {
        return Ok(SourceFormat::Qcow2);
    }
    if n == 8 && head == *b"conectix" {
        return Ok(SourceFormat::Vhd);
    }
    if meta.len() >= 512 {
        let mut tail = [0u8; 8];
        ReadAt::read_exact_at(&file, &mut tail, meta.len() - 512).map_err(source_err)?;
        if tail == *b"conectix" {
            return Ok(SourceFormat::Vhd);
        }
    }
    Ok(SourceFormat::Raw)
}

/// A state token for a file, used as [`STATE_KEY`] by sources without a format-level id
/// (raw images, qcow2): SHA-256 over the canonical path, size, inode and modification time
/// (ns), as `file:` + 32 hex digits. It changes whenever the file is written, so a qcow2
/// overlay whose backing file changed since the reference was taken is refused.
pub fn file_state_token(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let canonical = std::fs::canonicalize(path).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        source: e,
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut h = Sha256::new();
    h.update(canonical.as_os_str().as_encoded_bytes());
    h.update([0]);
    h.update(meta.len().to_le_bytes());
    h.update(meta.ino().to_le_bytes());
    h.update(meta.mtime().to_le_bytes());
    h.update(meta.mtime_nsec().to_le_bytes());
    Ok(format!("file:{}", &hex::encode(h.finalize())[..32]))
}

#[cfg(test)]
mod tests {
    use super::normalize_extents;

    #[test]
    fn extents_are_merged_and_sorted() {
        assert_eq!(
            normalize_extents(vec![(10, 20), (0, 5), (5, 6), (15, 30), (40, 40)]),
            vec![(0, 6), (10, 30)]
        );
    }
}
