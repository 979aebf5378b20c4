//! Resolving a path inside a filesystem, the way the kernel does: `.` and `..`, symlinks
//! followed (relative to the directory holding them, absolute from the root) at most
//! [`SYMLINK_HOPS`] times; `..` at the root stays at the root.

use std::collections::VecDeque;

use super::limits::SYMLINK_HOPS;
use super::{FileKind, Filesystem, FsError, Stat};

/// A resolved path.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The inode.
    pub ino: u64,
    /// What it is.
    pub stat: Stat,
    /// Its path from the root, symlinks resolved (bytes: names need not be UTF-8).
    pub path: Vec<u8>,
}

/// Resolves `path` (absolute; a relative one is taken from the root). The last component
/// is followed when it is a symlink only if `follow_last`.
pub fn resolve(fs: &dyn Filesystem, path: &[u8], follow_last: bool) -> Result<Resolved, FsError> {
    let shown = String::from_utf8_lossy(path).into_owned();
    let mut pending: VecDeque<Vec<u8>> = components(path).collect();
    // The directories from the root down to the current one: (inode, name).
    let mut stack: Vec<(u64, Vec<u8>)> = Vec::new();
    let root = fs.root();
    let mut current = (root, fs.stat(root)?);
    let mut hops = 0usize;
    while let Some(name) = pending.pop_front() {
        // Every component, `.` and `..` too, is looked up in a directory: `file/..` and
        // `file/` are "not a directory", as on Linux.
        if current.1.kind != FileKind::Dir {
            return Err(FsError::NotADirectory {
                path: String::from_utf8_lossy(&join(&stack)).into_owned(),
            });
        }
        if name == b"." {
            continue;
        }
        if name == b".." {
            if stack.pop().is_some() {
                let parent = stack.last().map_or(root, |(i, _)| *i);
                current = (parent, fs.stat(parent)?);
            }
            continue;
        }
        let entry = fs
            .read_dir(current.0)?
            .into_iter()
            .find(|e| e.name == name)
            .ok_or_else(|| FsError::NotFound {
                path: shown.clone(),
            })?;
        let stat = fs.stat(entry.ino)?;
        let last = pending.is_empty();
        if stat.kind == FileKind::Symlink && (!last || follow_last) {
            hops += 1;
            if hops > SYMLINK_HOPS {
                return Err(FsError::corrupt(format!(
                    "{shown}: more than {SYMLINK_HOPS} symlinks on the way (a loop?)"
                )));
            }
            let target = fs.read_link(entry.ino)?;
            if target.is_empty() {
                // Linux: an empty symlink target resolves to nothing (ENOENT).
                return Err(FsError::NotFound { path: shown });
            }
            if target.first() == Some(&b'/') {
                stack.clear();
                current = (root, fs.stat(root)?);
            }
            for (i, c) in components(&target).enumerate() {
                pending.insert(i, c);
            }
            continue;
        }
        stack.push((entry.ino, name));
        current = (entry.ino, stat);
    }
    Ok(Resolved {
        ino: current.0,
        stat: current.1,
        path: join(&stack),
    })
}

/// The non-empty components of `path`, with a trailing slash kept as a final `.` (so what
/// precedes it must be a directory, a symlink to one followed).
fn components(path: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let trailing = path.len() > 1 && path.ends_with(b"/");
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .chain(trailing.then(|| b".".to_vec()))
}

fn join(stack: &[(u64, Vec<u8>)]) -> Vec<u8> {
    if stack.is_empty() {
        return b"/".to_vec();
    }
    let mut out = Vec::new();
    for (_, name) in stack {
        out.push(b'/');
        out.extend_from_slice(name);
    }
    out
}
