//! Walking a directory tree depth-first, parents before children, names sorted, without
//! following symlinks. A directory met twice (a loop, or a directory with two names, which
//! no Linux filesystem allows) is refused rather than walked again, and depth is bounded.

use std::collections::HashSet;

use super::limits::MAX_DEPTH;
use super::{FileKind, Filesystem, FsError, Stat};

/// One name met by a walk.
#[derive(Debug, Clone)]
pub struct Visit {
    /// Its path relative to where the walk started (empty for the start itself).
    pub rel: Vec<u8>,
    /// What it is.
    pub stat: Stat,
}

/// Visits `start` (an inode whose stat is `stat`) and, when it is a directory, everything
/// below it. `visit` returns whether to descend into a directory it is given.
pub fn walk(
    fs: &dyn Filesystem,
    start: u64,
    stat: Stat,
    visit: &mut dyn FnMut(&Visit) -> Result<bool, FsError>,
) -> Result<(), FsError> {
    let mut seen_dirs = HashSet::new();
    descend(fs, start, Visit { rel: Vec::new(), stat }, 0, &mut seen_dirs, visit)
}

fn descend(
    fs: &dyn Filesystem,
    ino: u64,
    here: Visit,
    depth: usize,
    seen_dirs: &mut HashSet<u64>,
    visit: &mut dyn FnMut(&Visit) -> Result<bool, FsError>,
) -> Result<(), FsError> {
    let is_dir = here.stat.kind == FileKind::Dir;
    if !visit(&here)? || !is_dir {
        return Ok(());
    }
    let shown = || String::from_utf8_lossy(&here.rel).into_owned();
    if !seen_dirs.insert(ino) {
        return Err(FsError::corrupt(format!(
            "directory /{} (inode {ino}) appears twice in the tree: a directory loop",
            shown()
        )));
    }
    if depth >= MAX_DEPTH {
        return Err(FsError::corrupt(format!(
            "/{}: directories nest deeper than {MAX_DEPTH} levels",
            shown()
        )));
    }
    let mut entries = fs.read_dir(ino)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for entry in entries {
        let mut rel = here.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&entry.name);
        let stat = fs.stat(entry.ino)?;
        descend(fs, entry.ino, Visit { rel, stat }, depth + 1, seen_dirs, visit)?;
    }
    Ok(())
}
