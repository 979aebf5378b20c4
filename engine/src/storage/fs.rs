//! The filesystem operations the local backend and the durable-write protocol need, behind
//! a trait: [`OsFs`] is the real filesystem; [`super::sim::SimFs`] is an in-memory one that
//! keeps apart what is *durable* from what is merely *live*, to simulate power loss.
//!
//! The trait is deliberately POSIX-shaped (create, write, fsync, rename, directory fsync),
//! because that is the level at which crash safety is decided: data is durable only after
//! an fsync of the file, a name only after an fsync of its directory.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::direct_write::SequentialWriter;

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// File name.
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// A new file being written sequentially.
pub trait FsWriter: Write + Send {
    /// Finishes writing and makes the file's data durable (fsync). The name the file was
    /// created under is *not* made durable: that takes an fsync of its directory.
    fn sync(self: Box<Self>) -> io::Result<()>;
}

/// A file open for positioned reads.
pub trait FsReader: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`; a short file gives
    /// [`io::ErrorKind::UnexpectedEof`].
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// See the module docs. Paths are absolute or relative to the process's directory.
pub trait Fs: Send + Sync {
    /// Creates a new, empty file (fails with `AlreadyExists` if the name is taken).
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWriter>>;
    /// [`Fs::create_new`] for a secret-bearing file (a key slot): readable and writable by
    /// its owner only (0600) from the moment it exists.
    fn create_new_private(&self, path: &Path) -> io::Result<Box<dyn FsWriter>> {
        self.create_new(path)
    }
    /// [`Fs::create_dir`] for a directory of secret-bearing files (`keys/`): 0700.
    fn create_dir_private(&self, path: &Path) -> io::Result<()> {
        self.create_dir(path)
    }
    /// Opens a file for reading. Never follows a symbolic link in the last component.
    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsReader>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Length of a file.
    fn len(&self, path: &Path) -> io::Result<u64>;
    /// Renames a file. With `replace == false` the rename fails with `AlreadyExists` when
    /// `to` exists, atomically (`renameat2(RENAME_NOREPLACE)` on Linux).
    fn rename(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory (fails with `AlreadyExists` if it exists).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of a directory durable (fsync of the directory).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Lists a directory.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
}

/// The real filesystem.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFs;

/// Objects up to this size are written from memory in one `write`; larger ones go through
/// a [`SequentialWriter`] (`O_DIRECT` from a background thread: packs).
const SMALL_OBJECT: usize = 1 << 20;

/// A new file on the real filesystem: small contents are buffered and written at once,
/// large ones streamed through a [`SequentialWriter`].
struct OsWriter {
    file: Option<File>,
    path: std::path::PathBuf,
    small: Vec<u8>,
    large: Option<SequentialWriter>,
}

impl OsWriter {
    fn new(file: File, path: &Path) -> Self {
        Self {
            file: Some(file),
            path: path.to_path_buf(),
            small: Vec::new(),
            large: None,
        }
    }
}

impl Write for OsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(large) = &mut self.large {
            return large.write(buf);
        }
        if self.small.len() + buf.len() <= SMALL_OBJECT {
            self.small.extend_from_slice(buf);
            return Ok(buf.len());
        }
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("file already finished"))?;
        let mut large = SequentialWriter::new(file, &self.path)?;
        large.write_all(&self.small)?;
        self.small = Vec::new();
        let n = large.write(buf)?;
        self.large = Some(large);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FsWriter for OsWriter {
    fn sync(mut self: Box<Self>) -> io::Result<()> {
        let file = if let Some(large) = self.large.take() {
            large.finish()?
        } else {
            let mut file = self
                .file
                .take()
                .ok_or_else(|| io::Error::other("file already finished"))?;
            file.write_all(&self.small)?;
            file
        };
        file.sync_all()
    }
}

/// A file already written by other means (restore's parallel writers), handed to the
/// durable-write protocol ([`super::durable::commit`]) to be synced and installed.
pub struct WrittenFile(pub File);

impl Write for WrittenFile {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("a written file takes no more writes"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FsWriter for WrittenFile {
    fn sync(self: Box<Self>) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl FsReader for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl Fs for OsFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWriter>> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(OsWriter::new(file, path)))
    }

    fn create_new_private(&self, path: &Path) -> io::Result<Box<dyn FsWriter>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(OsWriter::new(file, path)))
    }

    fn create_dir_private(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsReader>> {
        Ok(Arc::new(open_nofollow(path)?))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut file = open_nofollow(path)?;
        let mut out = Vec::new();
        io::Read::read_to_end(&mut file, &mut out)?;
        Ok(out)
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::symlink_metadata(path)?.len())
    }

    fn rename(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        if replace {
            return std::fs::rename(from, to);
        }
        let cwd = rustix::fs::CWD;
        match rustix::fs::renameat_with(cwd, from, cwd, to, rustix::fs::RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            // Filesystems without RENAME_NOREPLACE: a hard link is create-only too.
            Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
                std::fs::hard_link(from, to)?;
                std::fs::remove_file(from)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8: no key can name it
            };
            out.push(DirEntry {
                name,
                is_dir: entry.file_type()?.is_dir(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
