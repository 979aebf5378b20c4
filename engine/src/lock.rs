//! The single-writer lock.
//!
//! Writers (backup, repair) hold an exclusive `flock` on `REPO/lock` for their whole run and
//! record their PID, host and start time in the file for the error message a second writer
//! sees. The kernel drops the `flock` when the holder dies, however it dies, so a lock
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

    /// Takes the lock file `path` (a job's lock, SPEC.md §26.4) or fails with
    /// [`Error::Locked`] naming the holder.
    pub fn acquire_at(path: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .ctx(|| format!("opening lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut content = String::new();
                let _ = file.read_to_string(&mut content);
                let field = |key: &str| {
                    content
                        .lines()
                        .find_map(|l| l.strip_prefix(key).map(str::to_string))
                        .unwrap_or_else(|| "?".into())
                };
                return Err(Error::Locked {
                    pid: field("pid="),
                    host: field("host="),
                    since: field("since="),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        let mut previous = String::new();
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
        Ok(Self { file, stale_holder })
    }
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        // Clear the record so the next writer does not report us as a stale holder.
        let _ = self.file.set_len(0);
    }
}
