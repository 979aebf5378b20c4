//! Backing files (qcow2.txt "Header": backing_file_offset; "Header extensions": backing
//! format name).
//!
//! The recorded name is a path relative to the directory of the image that names it (an
//! absolute path is used as is). Its format comes from the backing format extension
//! (`qcow2`, `raw`, `vpc`), or, without one, from probing the file
//! ([`crate::sources::detect_format`]). A qcow2 backing file is opened recursively; the
//! chain of canonical paths is carried along so that a cycle (a → b → a) and chains deeper
//! than [`MAX_DEPTH`] are refused instead of recursing forever. A backing file that does
//! not exist leaves the overlay usable as a delta only: reads of ranges the overlay does not
//! define fail and name the missing file. A backing file that exists must pass the chain's
//! [`Confinement`] (a regular file inside the top image's directory or an allowed one); it
//! is opened through its canonical path.

use std::path::{Path, PathBuf};

use super::{bad_image, Qcow2Source};
use crate::error::{Error, Result};
use crate::sources::confine::{Confinement, Named};
use crate::sources::{detect_format, raw::RawSource, vhd::VhdSource, BlockSource, SourceFormat};

/// Most images in one chain (the image itself included).
pub const MAX_DEPTH: usize = 16;

/// The backing file of an image.
pub enum Backing {
    /// No backing file: undefined clusters read as zeros.
    None,
    /// The opened backing image.
    Present {
        /// Where it is.
        path: PathBuf,
        /// The format it was opened as (`qcow2`, `raw`, `vpc`).
        format: &'static str,
        /// The image.
        source: Box<dyn BlockSource>,
    },
    /// Named but not there.
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// The recorded format, if any.
        format: Option<String>,
    },
}

impl Backing {
    /// Where the backing file is (or was looked for).
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::None => None,
            Self::Present { path, .. } | Self::Missing { path, .. } => Some(path),
        }
    }

    /// Its format, as recorded or probed.
    pub fn format(&self) -> Option<String> {
        match self {
            Self::None => None,
            Self::Present { format, .. } => Some((*format).to_string()),
            Self::Missing { format, .. } => format.clone(),
        }
    }

    /// Whether every byte of it can be read (false when it, or a file it backs onto, is
    /// missing).
    pub fn reads_full(&self) -> bool {
        match self {
            Self::None => true,
            Self::Present { source, .. } => source.reads_full(),
            Self::Missing { .. } => false,
        }
    }
}

/// Where `name`, recorded in `image`, points.
pub fn resolve(image: &Path, name: &str) -> PathBuf {
    let named = Path::new(name);
    if named.is_absolute() {
        named.to_path_buf()
    } else {
        image.parent().unwrap_or(Path::new(".")).join(named)
    }
}

/// Opens the backing file `name` of `image`. `chain` holds the canonical paths of the
/// images above it, `image` included.
pub fn open(
    image: &Path,
    name: &str,
    recorded_format: Option<&str>,
    chain: &mut Vec<PathBuf>,
    confinement: &Confinement,
) -> Result<Backing> {
    if name.starts_with("json:") {
        return Err(bad_image(image, format!("the backing file name {name:?} is a qemu JSON specification, not a file; rebase the image onto a file path")));
    }
    let path = resolve(image, name);
    let canonical = match confinement.check(image, "backing file", &path)? {
        Named::Allowed(canonical) => canonical,
        Named::Missing => {
            return Ok(Backing::Missing {
                path,
                format: recorded_format.map(ToString::to_string),
            })
        }
    };
    let format = match recorded_format {
        Some("qcow2") => SourceFormat::Qcow2,
        Some("raw") => SourceFormat::Raw,
        Some("vpc" | "vhd") => SourceFormat::Vhd,
        Some(other) => {
            return Err(bad_image(image, format!("the backing file {} has format {other:?} (backing format extension), which tessera does not read; convert it to raw or qcow2", path.display())))
        }
        None => detect_format(&canonical)?,
    };
    let (format, source): (&'static str, Box<dyn BlockSource>) = match format {
        SourceFormat::Qcow2 => (
            "qcow2",
            Box::new(Qcow2Source::open_in_chain(&canonical, chain, confinement)?),
        ),
        SourceFormat::Vhd => (
            "vpc",
            Box::new(VhdSource::open_confined(&canonical, confinement)?),
        ),
        SourceFormat::Raw | SourceFormat::Auto => ("raw", Box::new(RawSource::open(&canonical)?)),
    };
    Ok(Backing::Present {
        path,
        format,
        source,
    })
}

/// Adds `path` to the chain, refusing cycles and chains that are too deep.
pub fn enter_chain(path: &Path, chain: &mut Vec<PathBuf>) -> Result<()> {
    let canonical = std::fs::canonicalize(path).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        source: e,
    })?;
    if chain.contains(&canonical) {
        let names: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
        return Err(bad_image(
            path,
            format!(
                "the backing chain has a cycle: {} → {}",
                names.join(" → "),
                canonical.display()
            ),
        ));
    }
    if chain.len() >= MAX_DEPTH {
        return Err(bad_image(
            path,
            format!("the backing chain is deeper than {MAX_DEPTH} images"),
        ));
    }
    chain.push(canonical);
    Ok(())
}
