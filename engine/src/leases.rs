//! Backup leases: which doomed packs a running backup may still read (SPEC.md §13).
//!
//! Readers hold the shared `REPO/readers.lock` ([`crate::readers`]), and doomed packs are
//! deleted only when no reader holds it. Backups run for hours and, with many writers
//! (SPEC.md §8), back to back around the clock: were they readers of that kind, doomed packs
//! would never be deleted. So a backup holds a lease of its own instead: a file
//! `REPO/leases/<pid>.<random>.lease` it keeps an exclusive `flock` on, which records the
//! index view it reads through (`<database identity hex> <doom epoch>`, written once the view
//! is open; `opening` before). Every compaction batch that dooms packs raises the index's
//! doom epoch by one and records it with each pack it dooms
//! ([`crate::index::Index::doom_epoch`]). A view reads the epoch of the last doom batch it
//! includes (batches are seen whole), so a view whose epoch is at least a pack's never places
//! an object in that pack; a pack is deleted only when every live lease's view does (and no
//! reader holds `readers.lock`). A lease still `opening`, or of another database (the index
//! was rebuilt), keeps every pack. A lease file whose `flock` can be taken belongs to a dead
//! process and is removed (so is a `.lease.new` over a minute old, left by one that died
//! creating its lease).
//! Epochs rather than RocksDB sequence numbers: a secondary view's latest sequence number
//! can come from a flush record of the MANIFEST without the view holding every batch below
//! it.
//!
//! Order: the lease file exists before the view opens, so a lease the deleter did not see
//! opened its view after the deleter looked, i.e. after the doom was committed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

const DIR: &str = "leases";

/// A running backup's lease; released (the file removed) when dropped.
pub struct BackupLease {
    file: File,
    path: PathBuf,
}

impl BackupLease {
    /// Takes a new lease in `repo` (the local directory), as `opening`.
    pub fn acquire(repo: &Path) -> Result<Self> {
        let dir = repo.join(DIR);
        crate::storage::durable::create_dir_all(&crate::storage::fs::OsFs, &dir)
            .ctx(|| format!("creating {}", dir.display()))?;
        let name = format!(
            "{}.{:016x}.lease",
            std::process::id(),
            rand::random::<u64>()
        );
        let path = dir.join(&name);
        // Locked and written under another name first: a deleter must never find the
        // lease file without its lock (it would take it for a dead process's).
        let staged = dir.join(format!("{name}.new"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&staged)
            .ctx(|| format!("creating {}", staged.display()))?;
        file.lock()
            .map_err(|e| Error::io(format!("locking {}", staged.display()), e))?;
        file.write_all(b"opening\n")
            .ctx(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, &path).ctx(|| format!("creating {}", path.display()))?;
        Ok(Self { file, path })
    }

    /// Records the view the backup reads through: database `identity`, doom `epoch`.
    pub fn set_view(&mut self, identity: &[u8], epoch: u64) -> Result<()> {
        let text = format!("{} {epoch}\n", hex::encode(identity));
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| self.file.write_all(text.as_bytes()))
            .ctx(|| format!("writing {}", self.path.display()))
    }
}

impl Drop for BackupLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The oldest view any live lease in `repo` reads through, for the database `identity`:
/// `None` when no lease is live, `Some(0)` when one is `opening` or of another database.
/// Lease files of dead processes are removed on the way.
pub fn oldest_view(repo: &Path, identity: &[u8]) -> Result<Option<u64>> {
    let mut oldest: Option<u64> = None;
    for_each_live(repo, |file, _| {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        let seq = text
            .trim()
            .split_once(' ')
            .filter(|(id, _)| hex::decode(id).ok().as_deref() == Some(identity))
            .and_then(|(_, seq)| seq.parse::<u64>().ok())
            .unwrap_or(0);
        oldest = Some(oldest.map_or(seq, |o| o.min(seq)));
    })?;
    Ok(oldest)
}

/// When the oldest live lease in `repo` was created (Unix µs; the file's birth time, or
/// where the filesystem keeps none its last write, when the backup recorded its view, which
/// is still before it stored anything): every pack a running backup sealed, and every pack
/// of an interrupted run its open adopted, was indexed after this. `None` when no lease is
/// live.
pub fn oldest_start_us(repo: &Path) -> Result<Option<i64>> {
    let mut oldest: Option<i64> = None;
    for_each_live(repo, |file, path| {
        let written = file
            .metadata()
            .and_then(|m| m.created().or_else(|_| m.modified()))
            .ctx(|| format!("reading the time of {}", path.display()));
        // A lease whose time cannot be read counts as started at the epoch: it keeps all.
        let us = written.ok().map_or(0, crate::time::system_time_us);
        oldest = Some(oldest.map_or(us, |o| o.min(us)));
    })?;
    Ok(oldest)
}

/// Calls `f` with each live lease file of `repo` (its holder's `flock` held), removing on
/// the way the lease files of dead processes.
fn for_each_live(repo: &Path, mut f: impl FnMut(&mut File, &Path)) -> Result<()> {
    let dir = repo.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let Some(ext) = path.extension() else {
            continue;
        };
        if ext == "new" {
            // Left by a process that died creating its lease (a minute old, unlocked; a
            // younger one may be between its creation and its lock).
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60));
            if old && File::open(&path).is_ok_and(|f| f.try_lock().is_ok()) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
        if ext != "lease" {
            continue;
        }
        let mut file = match File::open(&path) {
            Ok(f) => f,
            // Released meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
        };
        if file.try_lock().is_ok() {
            // No live holder: a backup that died (or one releasing it right now).
            let _ = std::fs::remove_file(&path);
            continue;
        }
        f(&mut file, &path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_leases_give_the_oldest_view_and_dead_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let id = [7u8; 16];
        assert_eq!(oldest_view(dir.path(), &id).unwrap(), None);
        let mut a = BackupLease::acquire(dir.path()).unwrap();
        assert_eq!(oldest_view(dir.path(), &id).unwrap(), Some(0), "opening");
        a.set_view(&id, 40).unwrap();
        let mut b = BackupLease::acquire(dir.path()).unwrap();
        b.set_view(&id, 12).unwrap();
        assert_eq!(oldest_view(dir.path(), &id).unwrap(), Some(12));
        b.set_view(&[8u8; 16], 99).unwrap();
        assert_eq!(
            oldest_view(dir.path(), &id).unwrap(),
            Some(0),
            "another database"
        );
        drop(b);
        assert_eq!(oldest_view(dir.path(), &id).unwrap(), Some(40));
        // A lease file nobody holds (its process died) is removed.
        let stale = dir.path().join(DIR).join("1.dead.lease");
        std::fs::write(&stale, "00 1\n").unwrap();
        assert_eq!(oldest_view(dir.path(), &id).unwrap(), Some(40));
        assert!(!stale.exists());
        drop(a);
        assert_eq!(oldest_view(dir.path(), &id).unwrap(), None);
    }
}
