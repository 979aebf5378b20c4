//! Reader leases: how compaction knows when an old pack can no longer be in use.
//!
//! Every reader takes a *shared* `flock` on `REPO/readers.lock` before it opens the index
//! and holds it until it is done. Compaction moves live objects into new packs, commits the
//! new locations, and lists the old packs as doomed; it deletes their files only while it
//! can take the lock *exclusively*, i.e. when no reader is running. Any reader that could
//! have seen an old location started before that moment and still holds its shared lock, so
//! the files stay until a later writer finds no reader running. Readers that start while
//! doomed files are being deleted wait for the (short) exclusive hold, and then open an index
//! in which the new locations are already committed.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

fn open(repo: &Path) -> Result<File> {
    let path = repo.join("readers.lock");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))
}

/// A held reader lease.
pub struct ReaderLease {
    _file: Option<File>,
}

impl ReaderLease {
    /// Takes a shared lease (waits while doomed packs are being deleted).
    ///
    /// A reader that may not write `readers.lock` (another user's repository) takes the
    /// lease on a read-only descriptor: `flock` works on one. Only on a read-only
    /// *filesystem* without the lock file does a reader go without a lease: no writer can
    /// compact there. Anything else is refused: a reader without a lease could have packs
    /// deleted under it.
    pub fn acquire(repo: &Path) -> Result<Self> {
        let file = match open(repo) {
            Ok(f) => f,
            Err(Error::Io { source, context }) => {
                let path = repo.join("readers.lock");
                match File::open(&path) {
                    Ok(f) => f,
                    Err(_) if source.raw_os_error() == Some(libc::EROFS) => {
                        return Ok(Self { _file: None })
                    }
                    Err(e) => {
                        return Err(Error::io(
                            format!(
                                "{context} ({source}), and it cannot be opened read-only either; a reader needs its lease so that compaction keeps the packs it reads: ask the repository's owner to create {} readable by you",
                                path.display()
                            ),
                            e,
                        ))
                    }
                }
            }
            Err(e) => return Err(e),
        };
        file.lock_shared()
            .ctx(|| format!("taking a reader lease on {}", repo.display()))?;
        Ok(Self { _file: Some(file) })
    }
}

/// An exclusive hold: proof that no reader is running. Dropped as soon as possible.
pub struct NoReaders {
    _file: File,
}

impl NoReaders {
    /// `Some` if no reader holds a lease right now.
    pub fn try_acquire(repo: &Path) -> Result<Option<Self>> {
        let file = open(repo)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::io(
                format!("checking reader leases on {}", repo.display()),
                e,
            )),
        }
    }
}
