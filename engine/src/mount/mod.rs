//! `tessera mount REPO MOUNTPOINT` (SPEC §24.8): every snapshot's disks, and the partitions
//! of their partition tables, as read-only files through FUSE (`fuser`), read lazily, so
//! that any filesystem the kernel knows (XFS, btrfs, ...) can be loop-mounted from them:
//!
//! ```text
//! MOUNTPOINT/SERIES/2026-12-07T081112Z-17196f3b65b2/DISK.raw
//!                                                  /DISK.part1.raw   (an MBR or GPT entry)
//! ```
//!
//! The tree of series and snapshots is the catalogue at mount time. A snapshot's directory
//! is filled when first looked at: its disks' manifests are loaded then, and each disk's
//! partition table read (a few blocks). Reads go through the disk reader with one shared
//! chunk cache; a damaged chunk answers `EIO` for that read and names the disk and range on
//! stderr.
//!
//! The repository stays open as a reader for the whole mount, holding a reader lease (§13):
//! a snapshot forgotten while mounted keeps reading, because compaction keeps what a lease
//! holder may read. Nothing is ever written.

mod tree;

use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyLseek, Request,
};

use crate::error::{Error, Result};
use crate::repo::Repository;

pub use tree::{snapshot_dir_name, SeekFor, Tree};

/// How long the kernel may cache names and attributes (nothing changes while mounted).
const TTL: Duration = Duration::from_secs(599);
/// Directory entries looked up per `readdir` call (a reply holds about a hundred).
const READDIR_BATCH: usize = 512;
/// Bytes of decoded chunks and pages kept for reads.
pub const CACHE_BYTES: u64 = 256 << 20;

/// The filesystem `fuser` serves.
struct SnapshotFs {
    tree: Tree,
    complaints: Mutex<Complaints>,
}

/// Failed reads shown on stderr: at most [`COMPLAINTS_PER_MINUTE`] a minute, then how many
/// were not shown. The kernel retries a failed read and a loop-mounted filesystem reads the
/// same damaged block again and again: one message each would flood a journal.
struct Complaints {
    since: Instant,
    shown: u32,
    hidden: u64,
}

/// Failed-read messages shown a minute at most.
const COMPLAINTS_PER_MINUTE: u32 = 10;
/// The minute they are counted over.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace supports 1.89"
)]
const COMPLAINT_WINDOW: Duration = Duration::from_secs(60);

impl SnapshotFs {
    fn complain(&self, e: &Error) {
        let mut c = self
            .complaints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if c.since.elapsed() >= COMPLAINT_WINDOW {
            if c.hidden > 0 {
                eprintln!(
                    "tessera mount: {} more failed reads in the last minute were not shown",
                    c.hidden
                );
            }
            *c = Complaints {
                since: Instant::now(),
                shown: 0,
                hidden: 0,
            };
        }
        if c.shown < COMPLAINTS_PER_MINUTE {
            c.shown += 1;
            eprintln!("tessera mount: {e}");
            if c.shown == COMPLAINTS_PER_MINUTE {
                eprintln!("tessera mount: further failed reads this minute are counted, not shown");
            }
        } else {
            c.hidden += 1;
        }
    }
}

fn errno(e: &Error) -> Errno {
    match e {
        Error::SnapshotNotFound { .. } => Errno::ENOENT,
        _ => Errno::EIO,
    }
}

impl Filesystem for SnapshotFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.into(), name) {
            Ok(Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.tree.attr(ino.into()) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.tree.read(ino.into(), offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                self.complain(&e);
                reply.error(errno(&e));
            }
        }
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel answers SEEK_SET, SEEK_CUR and SEEK_END itself; only these reach here.
        let want = match whence {
            libc::SEEK_DATA => SeekFor::Data,
            libc::SEEK_HOLE => SeekFor::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.tree.seek(ino.into(), offset, want) {
            Ok(Some(at)) => reply.offset(i64::try_from(at).unwrap_or(i64::MAX)),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => {
                self.complain(&e);
                reply.error(errno(&e));
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        // Cookies are positions in the listing `.`, `..`, then the entries by name: the
        // entry at position k carries k + 1, the offset the next call starts from.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let entries = match self
            .tree
            .children(ino.into(), skip.saturating_sub(2), READDIR_BATCH)
        {
            Ok(Some(e)) => e,
            Ok(None) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(errno(&e)),
        };
        let dots = [
            (ino.into(), FileType::Directory, ".".to_string()),
            (
                self.tree.parent(ino.into()),
                FileType::Directory,
                "..".to_string(),
            ),
        ];
        let listing = dots.into_iter().skip(skip.min(2)).chain(entries);
        for (i, (child, kind, name)) in listing.enumerate() {
            let cookie = skip.saturating_add(i + 1) as u64;
            if reply.add(INodeNo(child), cookie, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted repository; unmounted when dropped (or by [`Mounted::unmount`]).
pub struct Mounted {
    session: fuser::BackgroundSession,
    signals: signal_hook::iterator::Signals,
    mountpoint: std::path::PathBuf,
}

/// Unmounts `mountpoint` now, never lazily: as root with `umount2`, otherwise through
/// `fusermount3 -u` (which refuses a busy mount). `Err` says why it stays mounted.
fn unmount_now(mountpoint: &Path) -> std::result::Result<(), String> {
    match nix::mount::umount2(mountpoint, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => Err(format!(
            "{} is busy (a loop device or a process still uses a file of it): unmount that first, then send the signal again; still mounted",
            mountpoint.display()
        )),
        Err(nix::errno::Errno::EPERM) => {
            let out = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .output()
                .map_err(|e| format!("running fusermount3 -u: {e}; still mounted"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "fusermount3 -u {}: {}; still mounted",
                    mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        Err(e) => Err(format!("unmounting {}: {e}; still mounted", mountpoint.display())),
    }
}

impl Mounted {
    /// Serves until SIGINT, SIGTERM or SIGHUP (registered before mounting, so none is
    /// missed) unmounts it, or until it is unmounted from outside (`fusermount3 -u`,
    /// `umount`). While the mountpoint is busy (a loop device still mounted from one of its
    /// files) a signal unmounts nothing: `busy` is told why and the mount keeps serving, so
    /// the filesystems read from it are never cut off.
    pub fn serve_until_signal(mut self, busy: &dyn Fn(&str)) -> Result<()> {
        loop {
            if self.session.guard.is_finished() {
                // Unmounted from outside: the session ended by itself.
                return self
                    .session
                    .join()
                    .map_err(|e| Error::io("serving the mount", e));
            }
            if self.signals.pending().next().is_some() {
                match unmount_now(&self.mountpoint) {
                    // Unmounted: the serving threads end by themselves.
                    Ok(()) => {
                        return self
                            .session
                            .join()
                            .map_err(|e| Error::io("serving the mount", e))
                    }
                    Err(why) => busy(&why),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Unmounts and waits for the filesystem thread. Fails (the mount stays) while the
    /// mountpoint is busy, e.g. a loop device still mounted from one of its files.
    pub fn unmount(self) -> Result<()> {
        self.session
            .umount_and_join()
            .map_err(|e| Error::io("unmounting", e))
    }
}

/// Mounts `repo` read-only at `mountpoint` (an empty directory), served by a background
/// thread until the returned [`Mounted`] is unmounted or dropped.
pub fn mount(repo: Arc<Repository>, mountpoint: &Path) -> Result<Mounted> {
    let meta = std::fs::metadata(mountpoint).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENOTCONN) {
            " (a mount left by a killed process: fusermount3 -u it first)"
        } else {
            ""
        };
        Error::io(format!("the mountpoint {}{hint}", mountpoint.display()), e)
    })?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "the mountpoint {} is not a directory",
            mountpoint.display()
        )));
    }
    let tree = Tree::new(repo)?;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| Error::io("installing signal handlers", e))?;
    let mut config = Config::default();
    // Several requests at once: a slow snapshot opening or chunk read stalls only its own.
    config.n_threads = Some(4);
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::FSName("tessera".into()),
        MountOption::Subtype("tessera".into()),
    ];
    let session = fuser::spawn_mount2(
        SnapshotFs {
            tree,
            complaints: Mutex::new(Complaints {
                since: Instant::now(),
                shown: 0,
                hidden: 0,
            }),
        },
        mountpoint,
        &config,
    )
    .map_err(|e| {
        Error::io(
            format!(
                "mounting at {} (FUSE: is /dev/fuse there and fusermount3 installed?)",
                mountpoint.display()
            ),
            e,
        )
    })?;
    Ok(Mounted {
        session,
        signals,
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// The attributes of a directory or a read-only file.
fn attr(ino: u64, kind: FileType, size: u64, mtime: std::time::SystemTime) -> FileAttr {
    let (perm, nlink) = match kind {
        FileType::Directory => (0o555, 2),
        _ => (0o444, 1),
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind,
        perm,
        nlink,
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        rdev: 0,
        blksize: 64 << 10,
        flags: 0,
    }
}
