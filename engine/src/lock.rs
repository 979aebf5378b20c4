//! The writer lock, and the locks of series, jobs and key slots.
//!
//! Writers (forget, prune, compact, repair, sync, import) hold an exclusive `flock` on
//! `REPO/lock` for their whole run; a backup holds its series' lock for its whole run and
//! the writer lock only while it publishes (SPEC.md §8). Holders record their PID, host and
//! start time in the file for the error message a second writer sees. The kernel drops the `flock` when the holder dies, however it dies, so a lock
//! left by a killed process never blocks anyone: the next writer simply acquires it (the
//! stale content is overwritten). Readers (list, show, restore) take no lock: everything
//! they read is immutable once published.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// A held writer lock; released when dropped (or when the process dies).
pub struct WriterLock {
    file: File,
    /// What the lock file said before we took it, if a previous holder died holding it.
    pub stale_holder: Option<String>,
    /// Whether another holder had it when we asked, so that we waited for it (an object
    /// store's cache may have to be brought up to date again: SPEC.md §2a).
    pub waited: bool,
}

impl WriterLock {
    /// Takes the lock or fails with [`Error::Locked`] naming the holder.
    pub fn acquire(repo: &Path) -> Result<Self> {
        Self::acquire_at(&repo.join("lock"))
    }

    /// Takes the key-slot lock `REPO/keys.lock` (held by `key add|remove|change-passphrase|
    /// export-recovery` around reading, checking and changing the slots, so that two of
    /// them cannot each remove a different one of the last two everyday slots), or fails
    /// with [`Error::Locked`]. Separate from the writer lock: slot changes touch no data,
    /// so a backup may run meanwhile.
    pub fn acquire_keys(repo: &Path) -> Result<Self> {
        Self::acquire_at(&repo.join("keys.lock"))
    }

    /// Takes the writer lock, waiting up to `wait` while another writer holds it (polling:
    /// the holder may be a backup publishing for a moment), then fails with
    /// [`Error::Locked`] naming the holder.
    pub fn acquire_within(repo: &Path, wait: std::time::Duration) -> Result<Self> {
        // A wait too long to add to the clock is a wait without end.
        let deadline = std::time::Instant::now().checked_add(wait);
        let mut waited = false;
        loop {
            match Self::acquire(repo) {
                Err(Error::Locked { .. })
                    if deadline.is_none_or(|d| std::time::Instant::now() < d) =>
                {
                    waited = true;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Ok(mut lock) => {
                    lock.waited = waited;
                    return Ok(lock);
                }
                other => return other,
            }
        }
    }

    /// Takes the writer lock, waiting for it as long as another writer holds it: how a
    /// backup publishes (SPEC.md §8; it holds the lock only while it publishes, so the wait
    /// is another backup's publish, or a forget, prune, compaction or repair to its end).
    /// `waiting` is called once, with [`Error::Locked`] naming the holder, before the wait.
    pub fn acquire_waiting(repo: &Path, waiting: &dyn Fn(&Error)) -> Result<Self> {
        let path = repo.join("lock");
        let mut file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                waiting(&holder(&mut file));
                file.lock()
                    .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
                let mut lock = Self::record(file, &path)?;
                lock.waited = true;
                return Ok(lock);
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        Self::record(file, &path)
    }

    /// Takes the lock of one series (`REPO/locks/series-<hash>.lock`), held by a backup of
    /// that series for its whole run, or fails with [`Error::SeriesLocked`] naming the holder.
    /// The file name is a hash of the series name, not the name (the lock files of an
    /// encrypted repository name no series).
    pub fn acquire_series(repo: &Path, series: &str) -> Result<Self> {
        use sha2::Digest;
        let dir = repo.join("locks");
        crate::storage::durable::create_dir_all(&crate::storage::fs::OsFs, &dir)
            .ctx(|| format!("creating {}", dir.display()))?;
        let hash = sha2::Sha256::digest(format!("tessera series lock\n{series}").as_bytes());
        let path = dir.join(format!("series-{}.lock", hex::encode(&hash[..16])));
        Self::acquire_at(&path).map_err(|e| match e {
            Error::Locked { pid, host, since } => Error::SeriesLocked {
                series: series.to_string(),
                pid,
                host,
                since,
            },
            other => other,
        })
    }

    /// Takes the compaction lock `REPO/locks/compact.lock`, held by a compaction for its
    /// whole run (it holds the writer lock only to plan and for each step's commit: SPEC.md
    /// §8), or fails with [`Error::CompactionRunning`] naming the holder. Two compactions
    /// planning the same packs would copy them twice and each doom what the other
    /// re-pointed.
    pub fn acquire_compaction(repo: &Path) -> Result<Self> {
        let dir = repo.join("locks");
        crate::storage::durable::create_dir_all(&crate::storage::fs::OsFs, &dir)
            .ctx(|| format!("creating {}", dir.display()))?;
        Self::acquire_at(&dir.join("compact.lock")).map_err(|e| match e {
            Error::Locked { pid, host, since } => Error::CompactionRunning { pid, host, since },
            other => other,
        })
    }

    /// Takes the lock file `path` (a job's lock, SPEC.md §26.4) or fails with
    /// [`Error::Locked`] naming the holder.
    pub fn acquire_at(path: &Path) -> Result<Self> {
        let mut file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(holder(&mut file)),
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        Self::record(file, path)
    }

    /// Records this process as the holder of the lock just taken on `file`.
    fn record(mut file: File, path: &Path) -> Result<Self> {
        let mut previous = String::new();
        file.seek(SeekFrom::Start(0))
            .ctx(|| format!("reading lock file {}", path.display()))?;
        let _ = file.read_to_string(&mut previous);
        let stale_holder = (!previous.trim().is_empty()).then_some(previous);
        let host = crate::net::hostname();
        let record = format!(
            "pid={}\nhost={}\nsince={}\n",
            std::process::id(),
            host.trim(),
            crate::time::now_rfc3339()
        );
        file.set_len(0)
            .ctx(|| format!("writing lock file {}", path.display()))?;
        file.seek(SeekFrom::Start(0))
            .ctx(|| format!("writing lock file {}", path.display()))?;
        file.write_all(record.as_bytes())
            .ctx(|| format!("writing lock file {}", path.display()))?;
        Ok(Self {
            file,
            stale_holder,
            waited: false,
        })
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .ctx(|| format!("opening lock file {}", path.display()))
}

/// [`Error::Locked`] naming the holder recorded in a lock file someone else holds.
fn holder(file: &mut File) -> Error {
    let mut content = String::new();
    let _ = file.read_to_string(&mut content);
    let field = |key: &str| {
        content
            .lines()
            .find_map(|l| l.strip_prefix(key).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    Error::Locked {
        pid: field("pid="),
        host: field("host="),
        since: field("since="),
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Clear the record so the next writer does not report us as a stale holder.
        let _ = self.file.set_len(0);
    }
}
