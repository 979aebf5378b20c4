//! Immutable files of a local repository (SPEC §28): the filesystem's immutable flag
//! (`chattr +i`, `FS_IMMUTABLE_FL`) with the retention date beside it in an extended
//! attribute, [`RETAIN_XATTR`] (RFC 3339), since the flag itself has no date.
//!
//! While the flag is set the kernel refuses to write, rename, link or delete the file, for
//! every user, root included; only a process with `CAP_LINUX_IMMUTABLE` can clear it. So a
//! backup client or a `tessera serve` token without that capability can never remove or
//! shorten a retention; tessera itself clears the flag only in [`delete`], and only once the
//! date has passed.
//!
//! Order of a retention change: clear the flag (if set), write the date, set the flag. A
//! crash between leaves the file writable with a date at least as late as before, and the
//! next [`retain`] of it (every publish naming it, `tessera immutable`) sets the flag again.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::IFlags;

use crate::error::{Error, Result};
use crate::time::format_us;

/// The extended attribute holding a file's retention date.
pub const RETAIN_XATTR: &str = "user.tessera.retain_until";

/// Longest value of [`RETAIN_XATTR`] read.
const MAX_XATTR: usize = 64;

/// Checks that files in `dir` can be made immutable, on a probe file made and removed here.
pub fn check(dir: &Path) -> Result<()> {
    let probe = dir.join(".immutable-probe");
    let refuse = |why: String| {
        Error::Refused {
        reason: format!(
            "{} cannot hold immutable files: {why}. Immutability needs a filesystem with the immutable attribute and extended attributes (ext4, XFS, btrfs) and a process with CAP_LINUX_IMMUTABLE (root)",
            dir.display()
        ),
    }
    };
    File::create(&probe).map_err(|e| Error::io(format!("creating {}", probe.display()), e))?;
    let tried = (|| {
        let file = File::open(&probe)
            .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))?;
        rustix::fs::fsetxattr(
            &file,
            RETAIN_XATTR,
            b"probe",
            rustix::fs::XattrFlags::empty(),
        )?;
        let flags = rustix::fs::ioctl_getflags(&file)?;
        rustix::fs::ioctl_setflags(&file, flags | IFlags::IMMUTABLE)?;
        rustix::fs::ioctl_setflags(&file, flags)?;
        Ok::<_, rustix::io::Errno>(())
    })();
    let _ = std::fs::remove_file(&probe);
    tried.map_err(|e| refuse(io::Error::from(e).to_string()))
}

/// The retention date of `path`, `None` if it has none (or does not exist).
pub fn retention(path: &Path) -> Result<Option<i64>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    read_date(&file, path)
}

fn read_date(file: &File, path: &Path) -> Result<Option<i64>> {
    let mut buf = [0u8; MAX_XATTR];
    match rustix::fs::fgetxattr(file, RETAIN_XATTR, &mut buf) {
        Ok(n) => {
            let text = std::str::from_utf8(&buf[..n]).unwrap_or_default();
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|d| Some(d.timestamp_micros()))
                .map_err(|_| Error::Immutable {
                    what: format!(
                        "{} (its {RETAIN_XATTR} is {text:?}, not a date: fix or remove it with setfattr after checking)",
                        path.display()
                    ),
                    until: "an unknown date".into(),
                })
        }
        Err(rustix::io::Errno::NODATA) => Ok(None),
        Err(e) => Err(Error::io(
            format!("reading {RETAIN_XATTR} of {}", path.display()),
            e.into(),
        )),
    }
}

/// Makes `path` immutable until `at_least_us` at least: a date that far already stays;
/// otherwise `until_us` (whole seconds, rounded up, and no earlier than `at_least_us`).
/// Returns the date it is retained until.
pub fn retain(path: &Path, at_least_us: i64, until_us: i64) -> Result<i64> {
    let until_us = crate::time::ceil_to_second(until_us.max(at_least_us));
    let io = |doing: &str, e: rustix::io::Errno| {
        if e == rustix::io::Errno::PERM {
            return Error::Refused {
                reason: format!(
                    "{doing} {}: not permitted. A repository with immutable backups is written by a process with CAP_LINUX_IMMUTABLE (root); see SPEC §28.1",
                    path.display()
                ),
            };
        }
        Error::io(format!("{doing} {}", path.display()), e.into())
    };
    let file = File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let flags = rustix::fs::ioctl_getflags(&file).map_err(|e| io("reading the flags of", e))?;
    let have = read_date(&file, path)?;
    if let Some(have) = have.filter(|&h| h >= at_least_us) {
        if !flags.contains(IFlags::IMMUTABLE) {
            rustix::fs::ioctl_setflags(&file, flags | IFlags::IMMUTABLE)
                .map_err(|e| io("making immutable", e))?;
        }
        return Ok(have);
    }
    if flags.contains(IFlags::IMMUTABLE) {
        rustix::fs::ioctl_setflags(&file, flags - IFlags::IMMUTABLE)
            .map_err(|e| io("lifting the immutable flag (to extend it) of", e))?;
    }
    rustix::fs::fsetxattr(
        &file,
        RETAIN_XATTR,
        format_us(until_us).as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(|e| io("writing the retention date of", e))?;
    rustix::fs::ioctl_setflags(&file, flags | IFlags::IMMUTABLE)
        .map_err(|e| io("making immutable", e))?;
    Ok(until_us)
}

/// Before deleting `path`: lifts its immutable flag if its retention has passed by `now_us`,
/// refuses ([`Error::Immutable`]) if not. A file without the flag is left as it is.
pub fn release(path: &Path, now_us: i64) -> Result<()> {
    let Ok(file) = File::open(path) else {
        return Ok(());
    };
    let Ok(flags) = rustix::fs::ioctl_getflags(&file) else {
        return Ok(());
    };
    if !flags.contains(IFlags::IMMUTABLE) {
        return Ok(());
    }
    match read_date(&file, path)? {
        Some(until) if until > now_us => Err(Error::Immutable {
            what: path.display().to_string(),
            until: format_us(until),
        }),
        // Flagged by hand without a date: tessera's own flag has one, so a dateless flag
        // is the operator's and stays.
        None => Err(Error::Immutable {
            what: format!("{} (chattr +i set by hand)", path.display()),
            until: "`chattr -i` lifts it".into(),
        }),
        Some(_) => rustix::fs::ioctl_setflags(&file, flags - IFlags::IMMUTABLE).map_err(|e| {
            Error::io(
                format!("lifting the expired immutable flag of {}", path.display()),
                e.into(),
            )
        }),
    }
}
