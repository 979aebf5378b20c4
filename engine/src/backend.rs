//! Object storage behind a small trait, so that packs can later live on an S3-compatible
//! store while the index stays local.
//!
//! Contract of [`Backend`]:
//! - [`Backend::create`] returns a writer for a *staged* object; nothing is visible under
//!   the final name until [`ObjectWriter::commit`] returns `Ok`, and after that the object
//!   is durable (it survives a crash or power loss). Dropping a writer without committing
//!   discards it.
//! - Objects are immutable once committed; `commit` never replaces an existing object
//!   with different content (names are random or content hashes).
//! - Reads of committed objects may run concurrently with anything.
//!
//! [`LocalBackend`] implements this on a POSIX directory: staged objects are written in
//! `tmp/`, then `fsync` → `rename` into place → `fsync` of the target directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::direct_write::SequentialWriter;
use crate::error::{Error, IoContext, Result};

/// The kinds of object a repository stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    /// Pack files (`packs/XY/<id>.pack`).
    Packs,
    /// Snapshot files (`snapshots/<id>.snap`).
    Snapshots,
    /// Protection markers (`snapshots/<id>.protected`, empty files): mutable state that
    /// must survive an index rebuild, kept beside the immutable snapshot files.
    Protections,
}

/// A staged object being written.
pub trait ObjectWriter: Write + Send {
    /// Makes the object durable and visible under its final name.
    fn commit(self: Box<Self>) -> Result<()>;
}

/// Object storage: put, get a range, list, delete.
pub trait Backend: Send + Sync {
    /// Starts writing object `name` (see the module contract).
    fn create(&self, ns: Namespace, name: &str) -> Result<Box<dyn ObjectWriter>>;
    /// Reads `len` bytes at `offset`. Short objects give [`io::ErrorKind::UnexpectedEof`].
    fn read_range(&self, ns: Namespace, name: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Reads a whole object.
    fn read_all(&self, ns: Namespace, name: &str) -> Result<Vec<u8>>;
    /// Size of an object in bytes.
    fn size(&self, ns: Namespace, name: &str) -> Result<u64>;
    /// Names of all committed objects.
    fn list(&self, ns: Namespace) -> Result<Vec<String>>;
    /// Deletes an object; deleting a missing object is not an error.
    fn delete(&self, ns: Namespace, name: &str) -> Result<()>;
}

/// Repository-relative directory layout of a [`LocalBackend`].
pub struct LocalBackend {
    root: PathBuf,
    /// Packs kept open for reading: a restore reads tens of thousands of chunks from a few
    /// dozen packs, and an open/close per chunk was a measurable share of its time. Packs
    /// are immutable, so a cached descriptor never sees stale data; a deleted pack stays
    /// readable through it (compaction defers deletion while readers run anyway).
    open_packs: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<File>>>,
}

/// How many pack descriptors a backend keeps open.
const OPEN_PACKS: usize = 256;

const PACK_EXT: &str = ".pack";
const SNAP_EXT: &str = ".snap";
const PROTECT_EXT: &str = ".protected";

impl LocalBackend {
    /// A backend rooted at a repository directory.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            open_packs: std::sync::Mutex::default(),
        }
    }

    /// Creates the directories of an empty repository.
    pub fn create_layout(root: &Path) -> Result<()> {
        for dir in ["packs", "snapshots", "tmp"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).ctx(|| format!("creating {}", p.display()))?;
        }
        Ok(())
    }

    /// Removes staged objects left by a crashed writer. Call only while holding the writer lock.
    pub fn clean_staging(&self) -> Result<usize> {
        let tmp = self.root.join("tmp");
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).ctx(|| format!("listing {}", tmp.display()))? {
            let entry = entry.ctx(|| format!("listing {}", tmp.display()))?;
            fs::remove_file(entry.path()).ctx(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Path of an object.
    pub fn path_of(&self, ns: Namespace, name: &str) -> PathBuf {
        match ns {
            Namespace::Packs => {
                let shard = name.get(..2).unwrap_or("00");
                self.root
                    .join("packs")
                    .join(shard)
                    .join(format!("{name}{PACK_EXT}"))
            }
            Namespace::Snapshots => self
                .root
                .join("snapshots")
                .join(format!("{name}{SNAP_EXT}")),
            Namespace::Protections => self
                .root
                .join("snapshots")
                .join(format!("{name}{PROTECT_EXT}")),
        }
    }

    fn open(&self, ns: Namespace, name: &str) -> Result<std::sync::Arc<File>> {
        let path = self.path_of(ns, name);
        if ns != Namespace::Packs {
            return Ok(std::sync::Arc::new(
                File::open(&path).ctx(|| format!("opening {}", path.display()))?,
            ));
        }
        if let Some(f) = self
            .open_packs
            .lock()
            .ok()
            .and_then(|m| m.get(name).cloned())
        {
            return Ok(f);
        }
        let file =
            std::sync::Arc::new(File::open(&path).ctx(|| format!("opening {}", path.display()))?);
        if let Ok(mut m) = self.open_packs.lock() {
            if m.len() >= OPEN_PACKS {
                m.clear();
            }
            m.insert(name.to_string(), file.clone());
        }
        Ok(file)
    }
}

/// Fsyncs a directory so that a rename into it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

struct LocalWriter {
    file: Option<SequentialWriter>,
    staged: PathBuf,
    target: PathBuf,
    failed: bool,
    committed: bool,
}

impl LocalWriter {
    fn sink(&mut self) -> io::Result<&mut SequentialWriter> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this object failed"));
        }
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("object already committed"))
    }
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.sink()?.write(buf);
        self.failed |= result.is_err();
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> Result<()> {
        if self.failed {
            return Err(Error::PreviousIo);
        }
        let writer = self.file.take().ok_or(Error::PreviousIo)?;
        let staged = self.staged.clone();
        let file = writer
            .finish()
            .ctx(|| format!("writing {}", staged.display()))?;
        // A failed fsync leaves the page cache state unknown: give up on this object
        // (redb's PreviousIo rule); the staged file is removed by Drop.
        file.sync_all()
            .ctx(|| format!("syncing {}", staged.display()))?;
        drop(file);
        let dir = self.target.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        fs::rename(&staged, &self.target)
            .ctx(|| format!("renaming {} into place", staged.display()))?;
        self.committed = true;
        sync_dir(dir)
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.staged);
        }
    }
}

impl Backend for LocalBackend {
    fn create(&self, ns: Namespace, name: &str) -> Result<Box<dyn ObjectWriter>> {
        let staged = self
            .root
            .join("tmp")
            .join(format!("{name}.{}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&staged)
            .ctx(|| format!("creating {}", staged.display()))?;
        let writer = SequentialWriter::new(file, &staged)
            .ctx(|| format!("starting the writer of {}", staged.display()))?;
        Ok(Box::new(LocalWriter {
            file: Some(writer),
            staged,
            target: self.path_of(ns, name),
            failed: false,
            committed: false,
        }))
    }

    fn read_range(&self, ns: Namespace, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let file = self.open(ns, name)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).ctx(|| {
            format!(
                "reading {len} bytes at {offset} of {}",
                self.path_of(ns, name).display()
            )
        })?;
        Ok(buf)
    }

    fn read_all(&self, ns: Namespace, name: &str) -> Result<Vec<u8>> {
        let path = self.path_of(ns, name);
        fs::read(&path).ctx(|| format!("reading {}", path.display()))
    }

    fn size(&self, ns: Namespace, name: &str) -> Result<u64> {
        let path = self.path_of(ns, name);
        Ok(fs::metadata(&path)
            .ctx(|| format!("inspecting {}", path.display()))?
            .len())
    }

    fn list(&self, ns: Namespace) -> Result<Vec<String>> {
        let (dirs, ext) = match ns {
            Namespace::Packs => {
                let packs = self.root.join("packs");
                let mut shards = Vec::new();
                for e in fs::read_dir(&packs).ctx(|| format!("listing {}", packs.display()))? {
                    let e = e.ctx(|| format!("listing {}", packs.display()))?;
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        shards.push(e.path());
                    }
                }
                (shards, PACK_EXT)
            }
            Namespace::Snapshots => (vec![self.root.join("snapshots")], SNAP_EXT),
            Namespace::Protections => (vec![self.root.join("snapshots")], PROTECT_EXT),
        };
        let mut names = Vec::new();
        for dir in dirs {
            for e in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
                let e = e.ctx(|| format!("listing {}", dir.display()))?;
                if let Some(name) = e.file_name().to_str().and_then(|n| n.strip_suffix(ext)) {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn delete(&self, ns: Namespace, name: &str) -> Result<()> {
        if let Ok(mut m) = self.open_packs.lock() {
            m.remove(name);
        }
        let path = self.path_of(ns, name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("deleting {}", path.display()), e)),
        }
    }
}
