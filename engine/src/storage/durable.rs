//! The one durable-write protocol. Every file tessera makes durable — pack, snapshot file,
//! marker, config, damage marks, seed bundle files, restore and export outputs — goes
//! through [`commit`]:
//!
//! 1. the data is written to a *staged* file (a name no reader looks at);
//! 2. the staged file is fsynced (its data is durable);
//! 3. missing directories on the way to the target are created, each followed by an fsync
//!    of its parent ([`create_dir_all`]), so the target's directory itself is durable;
//! 4. the staged file is renamed onto the target — create-only (`RENAME_NOREPLACE`) or
//!    replacing — which is atomic: a reader sees no file or the old one, then the whole new one;
//! 5. the target's directory is fsynced, making the new name durable.
//!
//! A crash before 5 may lose the new name, never expose a partial file: the staged name is
//! in a directory readers ignore, and recovery deletes leftovers there. After a failed fsync
//! the state of the page cache is unknown; the writer gives up on the file (redb's
//! "PreviousIo" rule) and never retries the fsync.

use std::io;
use std::path::Path;

use super::fs::{Fs, FsWriter};
use super::PutMode;

/// Syncs `file` (staged at `staged`) and installs it as `target` (steps 2–5).
pub fn commit(
    fs: &dyn Fs,
    file: Box<dyn FsWriter>,
    staged: &Path,
    target: &Path,
    mode: PutMode,
) -> io::Result<()> {
    file.sync()?;
    // A bare file name ("out.raw") has the empty parent: the working directory, which exists.
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_dir_all(fs, dir)?;
    }
    fs.rename(staged, target, mode == PutMode::Replace)?;
    sync_parent(fs, target)
}

/// [`commit`] for a file written by other means on the real filesystem (restore's and
/// export's outputs, written at offsets by several writers): syncs it and installs it as
/// `target`, replacing whatever is there.
pub fn install_written(file: &std::fs::File, staged: &Path, target: &Path) -> io::Result<()> {
    let written = super::fs::WrittenFile(file.try_clone()?);
    commit(
        &super::fs::OsFs,
        Box::new(written),
        staged,
        target,
        PutMode::Replace,
    )
}

/// Writes `bytes` to `staged`, then [`commit`]s it as `target`.
pub fn write_file(
    fs: &dyn Fs,
    staged: &Path,
    target: &Path,
    bytes: &[u8],
    mode: PutMode,
) -> io::Result<()> {
    let mut file = fs.create_new(staged)?;
    let result = file
        .write_all(bytes)
        .and_then(|()| commit(fs, file, staged, target, mode));
    if result.is_err() {
        let _ = fs.remove_file(staged);
    }
    result
}

/// Creates `dir` and any missing parents, fsyncing each new directory's parent, so that a
/// crash cannot lose a directory whose files were made durable.
pub fn create_dir_all(fs: &dyn Fs, dir: &Path) -> io::Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => sync_parent(fs, dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = dir
                .parent()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no parent directory"))?;
            create_dir_all(fs, parent)?;
            match fs.create_dir(dir) {
                Ok(()) => sync_parent(fs, dir),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Removes a file durably (unlink, then fsync of its directory). Returns whether it existed.
pub fn remove(fs: &dyn Fs, path: &Path) -> io::Result<bool> {
    match fs.remove_file(path) {
        Ok(()) => sync_parent(fs, path).map(|()| true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` (replacing) and makes both names durable: for moving directories
/// aside (the index rebuild) and files between directories (quarantine).
pub fn rename(fs: &dyn Fs, from: &Path, to: &Path) -> io::Result<()> {
    fs.rename(from, to, true)?;
    sync_parent(fs, to)?;
    if from.parent() != to.parent() {
        sync_parent(fs, from)?;
    }
    Ok(())
}

/// Makes the name of `path` durable (fsync of the directory holding it).
pub(crate) fn sync_parent(fs: &dyn Fs, path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fs.sync_dir(p),
        _ => fs.sync_dir(Path::new(".")),
    }
}
