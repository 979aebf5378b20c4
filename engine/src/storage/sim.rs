//! A simulated filesystem for crash tests: an in-memory [`Fs`] that keeps, for every file,
//! its *live* content and its *durable* content (as of its last fsync), and for every
//! directory its live entries and its durable entries (as of its last fsync). A
//! [`CrashClock`] counts every step that can matter for durability — file fsync, create,
//! rename, unlink, mkdir, directory fsync, and (through the index) every index commit — and
//! at a chosen step simulates power loss: that step and everything after it fail. Then
//! [`SimFs::reboot`] throws away what was not durable:
//!
//! - [`Reboot::LoseAll`]: every directory keeps exactly its durable entries, every file its
//!   durable content (a file created and never fsynced is empty; a rename whose directory was
//!   not fsynced is undone; a directory whose parent was not fsynced vanishes with its files);
//! - [`Reboot::KeepSome`]: each non-durable change (each entry, each file's content)
//!   independently survives or not, chosen by a seeded RNG — what a real filesystem may do
//!   when it writes back some of its dirty state before the power goes.
//!
//! Killing a process never loses page-cache data, so only this can test fsync ordering.
//! Directories cannot be renamed here (the engine renames only files inside a backend).

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fs::{DirEntry, Fs, FsReader, FsWriter};

/// Counts durability steps and fails every step from the armed one on (see module docs).
#[derive(Debug)]
pub struct CrashClock {
    step: AtomicU64,
    crash_at: AtomicU64,
    crashed: AtomicBool,
}

impl Default for CrashClock {
    fn default() -> Self {
        Self {
            step: AtomicU64::new(0),
            crash_at: AtomicU64::new(u64::MAX),
            crashed: AtomicBool::new(false),
        }
    }
}

impl CrashClock {
    /// Restarts counting at 0 and crashes at step `at` (1-based; `u64::MAX`: never).
    pub fn arm(&self, at: u64) {
        self.step.store(0, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
        self.crash_at.store(at, Ordering::SeqCst);
    }

    /// Counts one step; fails if the power is (now) gone.
    pub fn tick(&self) -> io::Result<()> {
        self.check()?;
        let n = self.step.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.crash_at.load(Ordering::SeqCst) {
            self.crashed.store(true, Ordering::SeqCst);
        }
        self.check()
    }

    /// Fails if the power is gone (for operations that are not steps, like reads).
    pub fn check(&self) -> io::Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            Err(io::Error::other("simulated power loss"))
        } else {
            Ok(())
        }
    }

    /// Steps counted since [`CrashClock::arm`].
    pub fn steps(&self) -> u64 {
        self.step.load(Ordering::SeqCst)
    }

    /// Whether the simulated crash happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }
}

/// What survives a simulated power loss (see module docs).
#[derive(Debug, Clone, Copy)]
pub enum Reboot {
    /// Only what was made durable.
    LoseAll,
    /// What was made durable, plus a random part of the rest.
    KeepSome(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    live: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Default)]
struct FileData {
    live: Vec<u8>,
    durable: Vec<u8>,
}

/// The whole simulated disk; cloning it copies the disk (tests fork one state many times).
#[derive(Debug, Clone, Default)]
pub struct SimImage {
    dirs: HashMap<PathBuf, Dir>,
    files: HashMap<u64, FileData>,
    next_ino: u64,
}

/// See the module docs.
pub struct SimFs {
    inner: Arc<Inner>,
}

struct Inner {
    image: Mutex<SimImage>,
    clock: Arc<CrashClock>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, SimImage> {
        self.image
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().ok_or_else(|| not_found(path))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| not_found(path))?;
    Ok((normalize(parent), name.to_string()))
}

fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

impl SimImage {
    fn dir(&self, path: &Path) -> io::Result<&Dir> {
        self.dirs
            .get(&normalize(path))
            .ok_or_else(|| not_found(path))
    }

    fn dir_mut(&mut self, path: &Path) -> io::Result<&mut Dir> {
        self.dirs
            .get_mut(&normalize(path))
            .ok_or_else(|| not_found(path))
    }

    fn lookup(&self, path: &Path) -> io::Result<Entry> {
        let (parent, name) = split(path)?;
        self.dir(&parent)?
            .live
            .get(&name)
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn file(&self, path: &Path) -> io::Result<&FileData> {
        match self.lookup(path)? {
            Entry::File(ino) => self.files.get(&ino).ok_or_else(|| not_found(path)),
            Entry::Dir => Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            ))),
        }
    }

    /// Throws away what was not durable (see [`Reboot`]), then drops what is unreachable.
    fn reboot(&mut self, mode: Reboot, root: &Path) {
        let mut rng = match mode {
            Reboot::LoseAll => None,
            Reboot::KeepSome(seed) => Some(StdRng::seed_from_u64(seed)),
        };
        let keep = |rng: &mut Option<StdRng>| rng.as_mut().is_some_and(|r| r.gen_bool(0.5));
        let mut paths: Vec<PathBuf> = self.dirs.keys().cloned().collect();
        paths.sort();
        for path in paths {
            let Some(dir) = self.dirs.get_mut(&path) else {
                continue;
            };
            let mut next = dir.durable.clone();
            let names: std::collections::BTreeSet<String> =
                dir.live.keys().chain(dir.durable.keys()).cloned().collect();
            for name in names {
                let (live, durable) = (dir.live.get(&name), dir.durable.get(&name));
                if live != durable && keep(&mut rng) {
                    match live {
                        Some(e) => next.insert(name, *e),
                        None => next.remove(&name),
                    };
                }
            }
            dir.live = next.clone();
            dir.durable = next;
        }
        let mut inos: Vec<u64> = self.files.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            if let Some(f) = self.files.get_mut(&ino) {
                if f.live != f.durable && keep(&mut rng) {
                    f.durable = f.live.clone();
                }
                f.live = f.durable.clone();
            }
        }
        // Keep only what the durable tree still reaches from the root.
        let mut reachable_dirs = vec![normalize(root)];
        let mut reachable_files = std::collections::HashSet::new();
        let mut i = 0;
        while let Some(path) = reachable_dirs.get(i).cloned() {
            i += 1;
            if let Some(dir) = self.dirs.get(&path) {
                for (name, e) in &dir.live {
                    match e {
                        Entry::Dir => reachable_dirs.push(path.join(name)),
                        Entry::File(ino) => {
                            reachable_files.insert(*ino);
                        }
                    }
                }
            }
        }
        let reachable: std::collections::HashSet<PathBuf> = reachable_dirs.into_iter().collect();
        self.dirs.retain(|p, _| reachable.contains(p));
        self.files.retain(|ino, _| reachable_files.contains(ino));
    }
}

impl SimFs {
    /// An empty disk whose only directory is `root` (durable), with its own clock.
    pub fn new(root: &Path) -> Self {
        let mut image = SimImage::default();
        let mut path = PathBuf::new();
        for c in normalize(root).components() {
            path.push(c);
            image.dirs.insert(path.clone(), Dir::default());
            if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
                if let Some(d) = image.dirs.get_mut(parent) {
                    let name = name.to_string_lossy().to_string();
                    d.live.insert(name.clone(), Entry::Dir);
                    d.durable.insert(name, Entry::Dir);
                }
            }
        }
        Self::from_image(image)
    }

    /// A disk holding `image`, with a new clock.
    pub fn from_image(image: SimImage) -> Self {
        Self {
            inner: Arc::new(Inner {
                image: Mutex::new(image),
                clock: Arc::default(),
            }),
        }
    }

    /// The clock every step of this disk ticks.
    pub fn clock(&self) -> Arc<CrashClock> {
        self.inner.clock.clone()
    }

    /// A copy of the disk as it is now (live and durable state alike).
    pub fn image(&self) -> SimImage {
        self.lock().clone()
    }

    /// Simulates the power coming back: the clock is disarmed and what was not durable is
    /// lost as `mode` says (see module docs). `root` is the directory the repository lives in.
    pub fn reboot(&self, mode: Reboot, root: &Path) {
        self.lock().reboot(mode, root);
        self.inner.clock.arm(u64::MAX);
    }

    fn lock(&self) -> MutexGuard<'_, SimImage> {
        self.inner.lock()
    }

    fn tick(&self) -> io::Result<()> {
        self.inner.clock.tick()
    }

    fn check(&self) -> io::Result<()> {
        self.inner.clock.check()
    }
}

/// A file being written: every write goes to its live content at once.
struct SimFileWriter {
    inner: Arc<Inner>,
    ino: u64,
}

impl Write for SimFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.clock.check()?;
        let mut image = self.inner.lock();
        let file = image
            .files
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::other("file vanished"))?;
        file.live.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FsWriter for SimFileWriter {
    fn sync(self: Box<Self>) -> io::Result<()> {
        self.inner.clock.tick()?;
        let mut image = self.inner.lock();
        let file = image
            .files
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::other("file vanished"))?;
        file.durable = file.live.clone();
        Ok(())
    }
}

/// A file open for reading: a copy of its content at open (files are written once).
struct SimReader {
    data: Vec<u8>,
    clock: Arc<CrashClock>,
}

impl FsReader for SimReader {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.clock.check()?;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.data.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Fs for SimFs {
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn FsWriter>> {
        self.tick()?;
        let mut image = self.lock();
        let (parent, name) = split(path)?;
        let ino = image.next_ino;
        let dir = image.dir_mut(&parent)?;
        if dir.live.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        dir.live.insert(name, Entry::File(ino));
        image.next_ino += 1;
        image.files.insert(ino, FileData::default());
        Ok(Box::new(SimFileWriter {
            inner: self.inner.clone(),
            ino,
        }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Arc<dyn FsReader>> {
        self.check()?;
        let data = self.lock().file(path)?.live.clone();
        Ok(Arc::new(SimReader {
            data,
            clock: self.clock(),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check()?;
        Ok(self.lock().file(path)?.live.clone())
    }

    fn len(&self, path: &Path) -> io::Result<u64> {
        self.check()?;
        Ok(self.lock().file(path)?.live.len() as u64)
    }

    fn rename(&self, from: &Path, to: &Path, replace: bool) -> io::Result<()> {
        self.tick()?;
        let mut image = self.lock();
        let entry = image.lookup(from)?;
        if entry == Entry::Dir {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated filesystem does not rename directories",
            ));
        }
        let (to_parent, to_name) = split(to)?;
        if !replace && image.dir(&to_parent)?.live.contains_key(&to_name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", to.display()),
            ));
        }
        image.dir_mut(&to_parent)?;
        let (from_parent, from_name) = split(from)?;
        image.dir_mut(&from_parent)?.live.remove(&from_name);
        image.dir_mut(&to_parent)?.live.insert(to_name, entry);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        let mut image = self.lock();
        if image.lookup(path)? == Entry::Dir {
            return Err(io::Error::other(format!(
                "{} is a directory",
                path.display()
            )));
        }
        let (parent, name) = split(path)?;
        image.dir_mut(&parent)?.live.remove(&name);
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        let mut image = self.lock();
        let (parent, name) = split(path)?;
        let dir = image.dir_mut(&parent)?;
        if dir.live.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        dir.live.insert(name, Entry::Dir);
        image.dirs.insert(normalize(path), Dir::default());
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        let mut image = self.lock();
        let dir = image.dir_mut(path)?;
        dir.durable = dir.live.clone();
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.check()?;
        let image = self.lock();
        Ok(image
            .dir(path)?
            .live
            .iter()
            .map(|(name, e)| DirEntry {
                name: name.clone(),
                is_dir: *e == Entry::Dir,
            })
            .collect())
    }
}
