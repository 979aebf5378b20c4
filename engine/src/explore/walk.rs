//! Walking a directory tree depth-first, parents before children, names sorted, without
//! following symlinks. A directory met twice (a loop, or a directory with two names, which
//! no Linux filesystem allows) is refused rather than walked again, and depth is bounded.
//! Names are checked here, once for every reader: a name that is empty, `.` or `..`, holds
//! a `/` or a NUL, or appears twice in one directory is refused, so a relative path a walk
//! gives is always a plain path below where it started (`files get` joins it to its
//! destination, and a tar carries it).

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

/// Visits `start` (an inode whose stat is `start_stat`) and, when it is a directory, everything
/// below it. `visit` returns whether to descend into a directory it is given.
pub fn walk(
    fs: &dyn Filesystem,
    start: u64,
    start_stat: Stat,
    visit: &mut dyn FnMut(&Visit) -> Result<bool, FsError>,
) -> Result<(), FsError> {
    let mut seen_dirs = HashSet::new();
    let here = Visit {
        rel: Vec::new(),
        stat: start_stat,
    };
    descend(fs, start, &here, 0, &mut seen_dirs, visit)
}

fn descend(
    fs: &dyn Filesystem,
    ino: u64,
    here: &Visit,
    depth: usize,
    seen_dirs: &mut HashSet<u64>,
    visit: &mut dyn FnMut(&Visit) -> Result<bool, FsError>,
) -> Result<(), FsError> {
    let is_dir = here.stat.kind == FileKind::Dir;
    if !visit(here)? || !is_dir {
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
    for (i, entry) in entries.iter().enumerate() {
        let name = entry.name.as_slice();
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(FsError::corrupt(format!(
                "directory /{} holds an entry named {:?}, which no path can name",
                shown(),
                String::from_utf8_lossy(name)
            )));
        }
        if i > 0 && entries[i - 1].name == entry.name {
            return Err(FsError::corrupt(format!(
                "directory /{} holds two entries named {:?}",
                shown(),
                String::from_utf8_lossy(name)
            )));
        }
        let mut rel = here.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&entry.name);
        let stat = fs.stat(entry.ino)?;
        descend(
            fs,
            entry.ino,
            &Visit { rel, stat },
            depth + 1,
            seen_dirs,
            visit,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explore::{DirEntry, FileExtent};

    /// A root directory (inode 1) listing `names`, each a regular file (inode 2).
    struct OneDir(Vec<&'static [u8]>);

    fn stat(ino: u64, kind: FileKind) -> Stat {
        Stat::bare(ino, kind, 0o644)
    }

    impl Filesystem for OneDir {
        fn kind(&self) -> &'static str {
            "test"
        }
        fn root(&self) -> u64 {
            1
        }
        fn stat(&self, ino: u64) -> Result<Stat, FsError> {
            Ok(stat(
                ino,
                if ino == 1 {
                    FileKind::Dir
                } else {
                    FileKind::File
                },
            ))
        }
        fn read_dir(&self, _: u64) -> Result<Vec<DirEntry>, FsError> {
            Ok(self
                .0
                .iter()
                .map(|n| DirEntry {
                    name: n.to_vec(),
                    ino: 2,
                })
                .collect())
        }
        fn read_link(&self, _: u64) -> Result<Vec<u8>, FsError> {
            Ok(Vec::new())
        }
        fn extents(&self, _: u64) -> Result<Vec<FileExtent>, FsError> {
            Ok(Vec::new())
        }
    }

    fn walked(names: Vec<&'static [u8]>) -> Result<Vec<Vec<u8>>, FsError> {
        let fs = OneDir(names);
        let mut seen = Vec::new();
        walk(&fs, 1, fs.stat(1)?, &mut |v| {
            seen.push(v.rel.clone());
            Ok(true)
        })?;
        Ok(seen)
    }

    #[test]
    fn names_no_path_can_hold_are_refused_before_anyone_joins_them() {
        assert_eq!(
            walked(vec![b"b", b"a"]).unwrap(),
            vec![b"".to_vec(), b"a".to_vec(), b"b".to_vec()]
        );
        for bad in [&b"../../etc/passwd"[..], b"..", b".", b"", b"a/b", b"nul\0"] {
            let err = walked(vec![b"ok", bad]).unwrap_err();
            assert!(matches!(err, FsError::Corrupt(_)), "{bad:?}: {err}");
        }
        let err = walked(vec![b"twice", b"other", b"twice"]).unwrap_err();
        assert!(err.to_string().contains("two entries named"), "{err}");
    }
}
