//! [`Backend`] on a POSIX directory, through the [`Fs`] seam. The only code in tessera
//! that knows where a repository's objects lie on disk.
//!
//! Puts are staged (`tmp/<key with / as %>.<pid>.<random>.tmp` in the repository layout,
//! `.<file name>.<pid>.<random>.tmp` beside the target in the flat layout) and installed by
//! [`durable::commit`]: fsync → rename (create-only or replacing) → directory fsync, with
//! new directories (`packs/XY/`) fsynced into their parents. Deletes are unlink → directory
//! fsync. So the contract of [`super`] holds on any POSIX filesystem whose `fsync` and
//! `rename` behave as POSIX says (SPEC §9, storage assumptions).
//!
//! Two layouts:
//! - [`Layout::Tree`], a repository: a key is a relative path (`packs/ab/<id>.pack`);
//! - [`Layout::Flat`], a seed bundle: packs as `<id>.pack`, snapshot files as `<id>.snap`
//!   and (from an encrypted repository) key slots as `<id>.key` side by side, plus the
//!   bundle manifest; no other objects.
//!
//! Reads never follow a symbolic link in the last path component (a planted link in a
//! bundle or repository is not followed). Pack readers are cached: a restore reads tens of
//! thousands of records from a few dozen packs; a deleted pack stays readable through a
//! cached descriptor, which is harmless because packs are immutable.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::durable;
use super::fs::{Fs, FsReader, FsWriter, OsFs};
use super::immutable_file;
use super::key::{KeyKind, ObjectKey, KEYS, PACKS, SNAPSHOTS};
use super::{Backend, ObjectWriter, PutMode, RetentionMode};
use crate::error::{Error, Result};

/// How keys map to files (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A repository directory.
    Tree,
    /// A seed bundle directory.
    Flat,
}

/// See the module docs.
pub struct LocalBackend {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    layout: Layout,
    readers: Mutex<HashMap<ObjectKey, Arc<dyn FsReader>>>,
}

/// How many pack readers a backend keeps open.
const OPEN_READERS: usize = 256;

const STAGING_DIR: &str = "tmp";

impl LocalBackend {
    /// A repository directory on the real filesystem.
    pub fn new(root: &Path) -> Self {
        Self::on(Arc::new(OsFs), root, Layout::Tree)
    }

    /// A seed bundle directory on the real filesystem.
    pub fn flat(dir: &Path) -> Self {
        Self::on(Arc::new(OsFs), dir, Layout::Flat)
    }

    /// A backend on any [`Fs`] (the simulated one in crash tests).
    pub fn on(fs: Arc<dyn Fs>, root: &Path, layout: Layout) -> Self {
        Self {
            fs,
            root: root.to_path_buf(),
            layout,
            readers: Mutex::default(),
        }
    }

    /// The directory the objects live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `key`'s file. Keys are built by [`ObjectKey`]'s constructors or listed
    /// from this directory, so they hold no `..` or absolute components.
    fn path_of(&self, key: &ObjectKey) -> Result<PathBuf> {
        match self.layout {
            Layout::Tree => Ok(self.root.join(key.as_str())),
            Layout::Flat => {
                let name = match key.kind() {
                    Some(KeyKind::Pack(id)) => format!("{id}.pack"),
                    Some(KeyKind::Snapshot(id)) => format!("{id}.snap"),
                    _ if key.as_key_slot().is_some() => key
                        .as_str()
                        .strip_prefix(KEYS)
                        .unwrap_or_default()
                        .to_string(),
                    _ if *key == ObjectKey::bundle_manifest() => key.as_str().to_string(),
                    _ => {
                        return Err(Error::Internal(format!(
                            "a seed bundle holds no object {key}"
                        )))
                    }
                };
                Ok(self.root.join(name))
            }
        }
    }

    fn staged_path(&self, key: &ObjectKey) -> PathBuf {
        let unique = format!("{}.{:08x}", std::process::id(), rand::random::<u32>());
        match self.layout {
            Layout::Tree => self
                .root
                .join(STAGING_DIR)
                .join(format!("{}.{unique}.tmp", key.as_str().replace('/', "%"))),
            Layout::Flat => {
                let name = key.as_str().rsplit('/').next().unwrap_or_default();
                self.root.join(format!(".{name}.{unique}.tmp"))
            }
        }
    }

    fn reader(&self, key: &ObjectKey, path: &Path) -> io::Result<Arc<dyn FsReader>> {
        let cached = key.as_pack().is_some();
        if cached {
            if let Some(r) = self.readers.lock().ok().and_then(|m| m.get(key).cloned()) {
                return Ok(r);
            }
        }
        let reader = self.fs.open_read(path)?;
        if cached {
            if let Ok(mut m) = self.readers.lock() {
                if m.len() >= OPEN_READERS {
                    m.clear();
                }
                m.insert(key.clone(), reader.clone());
            }
        }
        Ok(reader)
    }

    /// Files of the directory `dir` (relative to the root) and below, as keys with `prefix`.
    fn walk(&self, dir: &Path, prefix: &str, out: &mut Vec<ObjectKey>) -> Result<()> {
        let entries = match self.fs.read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let key = format!("{prefix}{}", entry.name);
            if entry.is_dir {
                self.walk(&dir.join(&entry.name), &format!("{key}/"), out)?;
            } else {
                out.push(ObjectKey::from_listed(key));
            }
        }
        Ok(())
    }

    fn list_flat(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        let entries = self
            .fs
            .read_dir(&self.root)
            .map_err(|e| Error::io(format!("listing {}", self.root.display()), e))?;
        let mut out = Vec::new();
        for entry in entries.iter().filter(|e| !e.is_dir) {
            let key = if prefix == PACKS {
                entry
                    .name
                    .strip_suffix(".pack")
                    .map(|stem| match stem.parse() {
                        Ok(id) => ObjectKey::pack(id),
                        Err(_) => ObjectKey::from_listed(format!("{PACKS}{}", entry.name)),
                    })
            } else if prefix == SNAPSHOTS {
                entry
                    .name
                    .strip_suffix(".snap")
                    .map(|stem| match stem.parse() {
                        Ok(id) => ObjectKey::snapshot(id),
                        Err(_) => ObjectKey::from_listed(format!("{SNAPSHOTS}{}", entry.name)),
                    })
            } else if prefix == KEYS {
                entry
                    .name
                    .strip_suffix(".key")
                    .map(|_| ObjectKey::from_listed(format!("{KEYS}{}", entry.name)))
            } else {
                None
            };
            out.extend(key);
        }
        Ok(out)
    }
}

/// A put in progress: a staged file, installed by [`durable::commit`] on `finish`.
struct LocalWriter {
    fs: Arc<dyn Fs>,
    file: Option<Box<dyn FsWriter>>,
    staged: PathBuf,
    target: PathBuf,
    mode: PutMode,
    key: ObjectKey,
    failed: bool,
    /// Keeps writer opens from discarding the staged file meanwhile; dropped last.
    _in_flight: super::staging::InFlight,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other("an earlier write to this object failed"));
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("object already finished"))?;
        let result = file.write(buf);
        self.failed |= result.is_err();
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for LocalWriter {
    fn finish(mut self: Box<Self>) -> Result<()> {
        let file = match self.file.take() {
            Some(f) if !self.failed => f,
            _ => return Err(Error::PreviousIo),
        };
        match durable::commit(&*self.fs, file, &self.staged, &self.target, self.mode) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && self.mode == PutMode::Create => {
                let _ = self.fs.remove_file(&self.staged);
                Err(Error::ObjectExists {
                    key: self.key.to_string(),
                })
            }
            Err(e) => {
                let _ = self.fs.remove_file(&self.staged);
                Err(Error::io(format!("storing {}", self.target.display()), e))
            }
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = self.fs.remove_file(&self.staged);
        }
    }
}

impl Backend for LocalBackend {
    fn put(&self, key: &ObjectKey, mode: PutMode) -> Result<Box<dyn ObjectWriter>> {
        let target = self.path_of(key)?;
        let staged = self.staged_path(key);
        // Key slots are secret-bearing (a passphrase slot is an offline guessing target):
        // `keys/` is 0700 and each slot 0600 from creation (SPEC.md §23.4).
        let private = key.as_key_slot().is_some();
        if private {
            if let Some(dir) = target.parent() {
                match self.fs.create_dir_private(dir) {
                    Ok(()) => durable::sync_parent(&*self.fs, dir),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                    Err(e) => Err(e),
                }
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
            }
        }
        let in_flight = super::staging::InFlight::register(&staged);
        let open = |fs: &dyn Fs| {
            if private {
                fs.create_new_private(&staged)
            } else {
                fs.create_new(&staged)
            }
        };
        let file = match open(&*self.fs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.layout == Layout::Tree => {
                durable::create_dir_all(&*self.fs, &self.root.join(STAGING_DIR))
                    .and_then(|()| open(&*self.fs))
            }
            other => other,
        }
        .map_err(|e| Error::io(format!("creating {}", staged.display()), e))?;
        Ok(Box::new(LocalWriter {
            fs: self.fs.clone(),
            file: Some(file),
            staged,
            target,
            mode,
            key: key.clone(),
            failed: false,
            _in_flight: in_flight,
        }))
    }

    fn get_range(&self, key: &ObjectKey, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.path_of(key)?;
        let mut buf = vec![0u8; len];
        self.reader(key, &path)
            .and_then(|r| r.read_exact_at(&mut buf, offset))
            .map_err(|e| {
                Error::io(
                    format!("reading {len} bytes at {offset} of {}", path.display()),
                    e,
                )
            })?;
        Ok(buf)
    }

    fn get(&self, key: &ObjectKey) -> Result<Vec<u8>> {
        let path = self.path_of(key)?;
        self.fs
            .read(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))
    }

    fn size(&self, key: &ObjectKey) -> Result<Option<u64>> {
        let path = self.path_of(key)?;
        match self.fs.len(&path) {
            Ok(len) => Ok(Some(len)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("inspecting {}", path.display()), e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        let mut out = match self.layout {
            Layout::Tree => {
                let mut out = Vec::new();
                self.walk(&self.root.join(prefix), prefix, &mut out)?;
                out
            }
            Layout::Flat => self.list_flat(prefix)?,
        };
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &ObjectKey) -> Result<()> {
        if let Ok(mut m) = self.readers.lock() {
            m.remove(key);
        }
        let path = self.path_of(key)?;
        let remove = || {
            durable::remove(&*self.fs, &path)
                .map(|_| ())
                .map_err(|e| Error::io(format!("deleting {}", path.display()), e))
        };
        match remove() {
            // An immutable file (SPEC §28): removed only once its retention has passed.
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
                immutable_file::release(&path, crate::time::now_us())?;
                remove()
            }
            other => other,
        }
    }

    fn check_retention(&self) -> Result<()> {
        immutable_file::check(&self.root)
    }

    fn retain(
        &self,
        key: &ObjectKey,
        at_least_us: i64,
        until_us: i64,
        _mode: RetentionMode,
    ) -> Result<i64> {
        immutable_file::retain(&self.path_of(key)?, at_least_us, until_us)
    }

    fn retention(&self, key: &ObjectKey) -> Result<Option<i64>> {
        immutable_file::retention(&self.path_of(key)?)
    }

    fn clean_staging(&self) -> Result<usize> {
        let dir = match self.layout {
            Layout::Tree => self.root.join(STAGING_DIR),
            Layout::Flat => self.root.clone(),
        };
        let entries = match self.fs.read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut removed = 0;
        for entry in entries {
            let staged = match self.layout {
                Layout::Tree => !entry.is_dir,
                Layout::Flat => {
                    !entry.is_dir
                        && entry.name.starts_with('.')
                        && std::path::Path::new(&entry.name)
                            .extension()
                            .is_some_and(|e| e == "tmp")
                }
            };
            if staged && super::staging::abandoned(&dir.join(&entry.name)) {
                let path = dir.join(&entry.name);
                self.fs
                    .remove_file(&path)
                    .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
