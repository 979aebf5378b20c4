//! VHD images (fixed, dynamic, differencing), per Microsoft's "Virtual Hard Disk Image
//! Format Specification" 1.0 (field tables in [`crate::formats::vhd`]; SPEC.md §19).
//!
//! - `footer`: the footer at the end (and its copy at offset 0): type, size, unique id.
//! - `dynamic`: dynamic header, BAT and sector bitmaps, with every offset bounds-checked.
//! - `locator`: a differencing disk's parent id and parent locators.
//! - `layer`: one opened file and how disk bytes map into it.
//! - `chain`: a differencing disk's ancestors, found through its locators.
//!
//! **Size.** The disk size is the footer's current size, as the specification says. qemu
//! (checked with qemu-img 10.0.2) reads images whose creator application is `vpc ` or
//! `qemu` with the CHS geometry's size instead; for the images qemu itself creates the two
//! are equal (`qemu-img create -f vpc` rounds the size up to the geometry and stores that
//! as the current size; with `force_size=on` it stores the exact size and writes creator
//! `qem2`, read at the current size), so restores equal `qemu-img convert -f vpc -O raw`
//! byte for byte.
//!
//! **State.** [`STATE_KEY`] is `vhd:` + the footer's unique id (lowercase hex with dashes,
//! in stored byte order). A differencing disk is a delta: its [`Changes`] are the sectors
//! its bitmaps mark in allocated blocks, on base state `vhd:` + the parent unique id. Like
//! the VHD format itself, this trusts that a parent is not modified after children were
//! made from it (its unique id does not change when it is written).
//!
//! **Chains.** A differencing disk reads its parent through the parent locators (the
//! parent's unique id must match), up to 32 files deep; cycles are refused. When no locator
//! leads to the parent, the source still opens: [`BlockSource::reads_full`] is false and
//! reading anything the child does not hold fails, naming the parent.
//!
//! Every malformed input is [`Error::BadImage`] naming the field and offset; sizes read
//! from the file are bounded by the file's length before anything is allocated.

mod chain;
mod dynamic;
mod footer;
mod layer;
mod locator;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

pub use self::layer::Layer;
use self::layer::Run;
pub use self::locator::parent_name;
use crate::error::{Error, Result};
use crate::formats::vhd::format_uuid;
use crate::sources::confine::Confinement;
use crate::sources::{normalize_extents, BlockSource, Changes, ReadAt, STATE_KEY};

/// A VHD image opened for reading, with its parents.
pub struct VhdSource {
    /// The image first, then its parent, grandparent, … (shared, so that importing a
    /// chain point by point opens each file once: [`VhdSource::from_layers`]).
    layers: Vec<Arc<Layer>>,
    /// Why the last layer's parent is missing, when it is a differencing disk.
    missing_parent: Option<String>,
    changes: Option<Changes>,
}

impl VhdSource {
    /// Opens and validates a VHD file and, for a differencing disk, its parents.
    /// Parents are opened only from the image's own directory.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_confined(path, &Confinement::for_image(path, &[])?)
    }

    /// Opens a VHD and its parents, which must pass `confinement`.
    pub fn open_confined(path: &Path, confinement: &Confinement) -> Result<Self> {
        let chain::Chain {
            layers,
            missing_parent,
        } = chain::open(path, confinement)?;
        Ok(Self::assemble(
            layers.into_iter().map(Arc::new).collect(),
            missing_parent,
        ))
    }

    /// The source over a chain whose files were found by the caller (a Xen Orchestra
    /// remote names parents its own way): `layers` top first, each differencing layer's
    /// parent unique id equal to the next layer's footer unique id, and the last one not a
    /// differencing disk. `name` names the chain in messages.
    pub fn from_layers(name: &Path, layers: Vec<Arc<Layer>>) -> Result<Self> {
        if layers.is_empty() {
            return Err(bad(name, "the chain holds no VHD"));
        }
        for (i, layer) in layers.iter().enumerate() {
            let parent = layer.parent_uuid();
            match (parent, layers.get(i + 1)) {
                (Some(want), Some(next)) if *want != next.uuid() => {
                    return Err(bad(
                        &layer.path,
                        format!(
                            "its parent must have unique id {}, but {} has unique id {}",
                            format_uuid(want),
                            next.path.display(),
                            format_uuid(&next.uuid())
                        ),
                    ));
                }
                (None, Some(next)) => {
                    return Err(bad(&layer.path, format!(
                        "it is not a differencing disk, so it has no parent, but {} was given as its parent",
                        next.path.display()
                    )));
                }
                (Some(want), None) => {
                    return Err(bad(
                        &layer.path,
                        format!(
                            "it is a differencing disk and its parent ({}) was not given",
                            format_uuid(want)
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(Self::assemble(layers, None))
    }

    /// Decodes a VHD held in memory, named `name` in messages, with exactly the checks a
    /// file gets. Parents are not looked for: a differencing disk opens as one whose parent
    /// is missing (its own sectors read, anything else fails naming the parent). For tests
    /// and the fuzz targets (`fuzz/`).
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len() as u64;
        let layer = Layer::decode(name, Box::new(bytes), len)?;
        let missing_parent = layer
            .sparse
            .as_ref()
            .and_then(|s| s.parent.as_ref())
            .map(|_| "the image was opened from memory, where parents are not looked for".into());
        Ok(Self::assemble(vec![Arc::new(layer)], missing_parent))
    }

    /// The source over opened `layers` (top first); computes the top's changes.
    fn assemble(layers: Vec<Arc<Layer>>, missing_parent: Option<String>) -> Self {
        let changes = layers.first().and_then(|top| {
            let link = top.sparse.as_ref()?.parent.as_ref()?;
            let mut base_description = link.describe();
            // Say why the disk cannot be read in full, so that a refusal to use the delta
            // without a matching reference explains itself.
            if let Some(why) = &missing_parent {
                base_description =
                    format!("{base_description} (the disk cannot be read in full: {why})");
            }
            Some(Changes {
                base_state: state_token(&link.uuid),
                base_description,
                extents: normalize_extents(top.own_extents()),
            })
        });
        Self {
            layers,
            missing_parent,
            changes,
        }
    }

    /// Reads `buf` at `offset` from layer `i` down; returns bytes read from files.
    fn read_layer(&self, i: usize, offset: u64, buf: &mut [u8]) -> Result<u64> {
        let Some(layer) = self.layers.get(i) else {
            let why = self
                .missing_parent
                .as_deref()
                .unwrap_or("the parent is missing");
            return Err(Error::BadImage {
                path: self
                    .layers
                    .first()
                    .map_or_else(String::new, |l| l.path.display().to_string()),
                format: "VHD",
                reason: format!(
                    "reading {} bytes at disk offset {offset} needs the parent: {why}",
                    buf.len()
                ),
            });
        };
        let size = layer.size();
        let inside = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (within, beyond) = buf.split_at_mut(inside);
        beyond.fill(0);
        let mut read = 0;
        let mut done = 0usize;
        while done < within.len() {
            let pos = offset + done as u64;
            let (run, len) = layer.run_at(pos, (within.len() - done) as u64);
            let dst = &mut within[done..done + len as usize];
            match run {
                Run::File(at) => {
                    layer.read_file(dst, at)?;
                    read += len;
                }
                Run::Zero => dst.fill(0),
                Run::Parent => read += self.read_layer(i + 1, pos, dst)?,
            }
            done += len as usize;
        }
        Ok(read)
    }
}

fn state_token(uuid: &[u8; 16]) -> String {
    format!("vhd:{}", format_uuid(uuid))
}

impl BlockSource for VhdSource {
    fn size(&self) -> u64 {
        self.layers.first().map_or(0, |l| l.size())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64> {
        self.read_layer(0, offset, buf)
    }

    fn identity(&self) -> Vec<(String, String)> {
        let Some(top) = self.layers.first().map(Arc::as_ref) else {
            return Vec::new();
        };
        let mut id = vec![
            ("source.kind".to_string(), "vhd".to_string()),
            (
                "source.path".into(),
                chain::canonical(&top.path).display().to_string(),
            ),
            ("vhd.type".into(), top.footer.disk_type.name().into()),
            ("vhd.uuid".into(), format_uuid(&top.footer.uuid)),
        ];
        if let Some(s) = &top.sparse {
            id.push(("vhd.block_size".into(), s.block_size.to_string()));
            if let Some(p) = &s.parent {
                id.push(("vhd.parent_uuid".into(), format_uuid(&p.uuid)));
            }
        }
        if let Some(parent) = self.layers.get(1) {
            id.push((
                "vhd.parent_path".into(),
                chain::canonical(&parent.path).display().to_string(),
            ));
        }
        id.push((STATE_KEY.into(), state_token(&top.footer.uuid)));
        id
    }

    fn changes(&self) -> Option<&Changes> {
        self.changes.as_ref()
    }

    fn reads_full(&self) -> bool {
        self.missing_parent.is_none()
    }
}

/// A malformed-image error for `path`.
fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadImage {
        path: path.display().to_string(),
        format: "VHD",
        reason: reason.into(),
    }
}

fn source_err(path: &Path, source: std::io::Error) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads exactly `buf.len()` bytes at `at`; a short file is a malformed image.
fn read_exact(file: &dyn ReadAt, path: &Path, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
    file.read_exact_at(buf, at).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            bad(
                path,
                format!(
                    "{what} at offset {at} ({} bytes) extends past the end of the file",
                    buf.len()
                ),
            )
        } else {
            source_err(
                path,
                std::io::Error::new(
                    e.kind(),
                    format!("reading {what} ({} bytes at offset {at}): {e}", buf.len()),
                ),
            )
        }
    })
}

/// Big-endian u32 at `at` (0 when out of range; callers pass fixed-size structures).
pub(crate) fn be_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// Big-endian u64 at `at` (0 when out of range).
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}
