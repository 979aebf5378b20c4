//! Opening a VHD with its ancestors: each differencing disk's parent is the first locator
//! candidate (see [`super::locator`]) whose footer unique id equals the recorded parent id.
//! Files found with another id are refused (the parent was replaced); when no candidate
//! exists, the chain ends there and says why. At most 32 files; a file met twice is a loop.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::layer::Layer;
use super::locator::ParentLink;
use super::{bad, footer, source_err};
use crate::error::Result;
use crate::formats::vhd::format_uuid;
use crate::sources::confine::{Confinement, Named};

/// Most files in a chain (the image and its ancestors).
const MAX_CHAIN: usize = 32;

/// The image and the ancestors that were found.
pub struct Chain {
    /// The image first, then its parent, grandparent, …
    pub layers: Vec<Layer>,
    /// Why the last layer's parent is missing, when it is a differencing disk.
    pub missing_parent: Option<String>,
}

/// Opens `path` and follows its parents, opening only parents that pass `confinement`.
pub fn open(path: &Path, confinement: &Confinement) -> Result<Chain> {
    let mut layers = vec![Layer::open(path)?];
    let mut seen = HashSet::new();
    seen.insert(canonical(path));
    let mut missing_parent = None;
    while let Some(last) = layers.last() {
        let Some(link) = last.sparse.as_ref().and_then(|s| s.parent.as_ref()) else {
            break;
        };
        if layers.len() >= MAX_CHAIN {
            return Err(bad(path, format!(
                "the chain of differencing disks is deeper than {MAX_CHAIN} files ({} is the {MAX_CHAIN}th)",
                last.path.display()
            )));
        }
        match find_parent(&last.path, link, confinement)? {
            Found::Parent(p) => {
                if !seen.insert(canonical(&p)) {
                    return Err(bad(
                        path,
                        format!(
                            "the chain of parents loops: {} is its own ancestor",
                            p.display()
                        ),
                    ));
                }
                layers.push(Layer::open(&p)?);
            }
            Found::Missing(why) => {
                missing_parent = Some(why);
                break;
            }
        }
    }
    Ok(Chain {
        layers,
        missing_parent,
    })
}

enum Found {
    Parent(PathBuf),
    Missing(String),
}

/// Tries the parent locators of `child`; refuses when files are found but none is the
/// parent (wrong unique id).
fn find_parent(child: &Path, link: &ParentLink, confinement: &Confinement) -> Result<Found> {
    let want = format_uuid(&link.uuid);
    let mut tried = Vec::new();
    let mut wrong = Vec::new();
    let mut refused = None;
    for (code, candidate) in link.candidates(child) {
        let canonical = match confinement.check(child, "parent", &candidate) {
            Ok(Named::Allowed(c)) => c,
            Ok(Named::Missing) => {
                tried.push(format!("{code} → {} (not found)", candidate.display()));
                continue;
            }
            Err(e) => {
                refused.get_or_insert(e);
                continue;
            }
        };
        let Ok(file) = File::open(&canonical) else {
            tried.push(format!("{code} → {} (not found)", candidate.display()));
            continue;
        };
        let len = file
            .metadata()
            .map_err(|e| source_err(&candidate, e))?
            .len();
        let found = footer::read(&file, &candidate, len)?;
        if found.uuid == link.uuid {
            return Ok(Found::Parent(canonical));
        }
        wrong.push(format!(
            "{code} → {} has unique id {}",
            candidate.display(),
            format_uuid(&found.uuid)
        ));
    }
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    if !wrong.is_empty() {
        return Err(bad(child, format!(
            "the parent must have unique id {want}, but {}: the parent was replaced or the locators are stale",
            wrong.join("; ")
        )));
    }
    let tried = if tried.is_empty() {
        "it has no usable parent locator".to_string()
    } else {
        tried.join(", ")
    };
    Ok(Found::Missing(format!(
        "{} of {} was not found ({tried}); only sectors held by the differencing disks above it can be read",
        link.describe(),
        child.display()
    )))
}

/// The canonical form of `path` (itself when it cannot be resolved).
pub fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
