//! Which staged files of the local backend belong to puts still in progress.
//!
//! A staged file is named `….<pid>.<random>.tmp` (see [`super::local`]). Writers no longer
//! exclude each other for a whole run: backups of different series run at once and take the
//! writer lock only to publish (SPEC.md §8), and every writer's open discards the staged
//! files of crashed puts. So a staged file is discarded only when no put can still be
//! writing it:
//! - one of another process, when that process is gone (a live PID, even one the kernel
//!   reused, keeps the file: a leaked file costs space until the PID is free, a discarded
//!   one would fail a live backup);
//! - one of this process, when no put of this process holds it ([`InFlight`]): a crash test
//!   (or a daemon running several jobs) has finished and in-progress puts side by side.
//!
//! PIDs are only meaningful on one host and in one PID namespace: writers of one repository
//! directory from several containers or NFS clients at once are not supported (a live
//! staged file of another namespace would look abandoned).

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

static IN_FLIGHT: Mutex<Option<HashSet<OsString>>> = Mutex::new(None);

/// A staged file this process is writing; registered while the value lives. Registered by
/// file name, which the PID and random part make unique: one repository may be named by
/// several paths (a symbolic link, a relative path) in one process.
pub struct InFlight(OsString);

impl InFlight {
    /// Registers `staged` (before the file is created, so that no clean sees it unclaimed).
    pub fn register(staged: &Path) -> Self {
        let name = staged.file_name().unwrap_or_default().to_os_string();
        IN_FLIGHT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(HashSet::new)
            .insert(name.clone());
        Self(name)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(set) = IN_FLIGHT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            set.remove(&self.0);
        }
    }
}

/// Whether the staged file at `path` (named `….<pid>.<random>.tmp`) may be discarded: its
/// put can no longer finish. A name without a PID is another tool's or an older tessera's,
/// and goes.
pub fn abandoned(path: &Path) -> bool {
    let Some(pid) = staged_pid(path) else {
        return true;
    };
    if pid == std::process::id() {
        return !IN_FLIGHT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|set| path.file_name().is_some_and(|n| set.contains(n)));
    }
    !process_alive(pid)
}

fn staged_pid(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let mut parts = name.strip_suffix(".tmp")?.rsplit('.');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // Signal 0 only checks that the process exists and may be signalled; EPERM: it exists.
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_of_live_puts_and_live_processes_are_kept() {
        let dir = Path::new("/nonexistent/tmp");
        let own = dir.join(format!(
            "packs%ab%x.pack.{}.0badf00d.tmp",
            std::process::id()
        ));
        assert!(abandoned(&own), "no put holds it");
        let held = InFlight::register(&own);
        assert!(!abandoned(&own), "a put of this process holds it");
        drop(held);
        assert!(abandoned(&own));
        // PID 1 always runs; a PID above the kernel's maximum never does.
        assert!(!abandoned(&dir.join("snapshots%x.snap.1.00000000.tmp")));
        assert!(abandoned(
            &dir.join("snapshots%x.snap.4294967295.00000000.tmp")
        ));
        assert!(abandoned(&dir.join("left-by-something-else")));
    }
}
