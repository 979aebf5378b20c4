//! `files get`: a file or a whole tree out of a snapshot, to a directory.
//!
//! What is kept: contents (holes stay holes: only the stored runs are written, then the
//! length is set), permissions, times, hard links (linked again), symlinks (as symlinks),
//! FIFOs; device nodes and ownership only when running as root.
//!
//! **Safety against the directory it writes into.** Every name is made relative to an open
//! handle on its parent directory, never through a path: the directories of the tree are
//! held open (a stack, as the walk is depth-first) from the destination's parent down, each
//! opened with `O_NOFOLLOW`, so someone who can rename entries where the tree is written
//! (the destination's parent, or a directory merged with `force`) cannot redirect a write,
//! a `chown` or a `chmod` through a symlink swapped in mid-run. Directories are made `0700`
//! (only the restoring user can enter them while their contents are written) and get their
//! mode, owner and times through their handle once their subtree is complete.
//!
//! **Crash and failure.** Each file, symlink, hard link and special file is made under a
//! temporary name (`.tessera-part-INODE-N`, created exclusively, so it is never a name the
//! tree restores or already holds), finished, then renamed onto its name: a killed `get`
//! leaves at most one temporary file and never a short file under a real name, and with
//! `force` an existing file is replaced only by a complete one (a failed read leaves it as
//! it was). A failed `get` removes the temporary file it made and nothing else, and still
//! finishes the directories it made. Nothing existing is replaced without `force`. Like
//! `cp` and `tar`, nothing is fsynced.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;
use serde::Serialize;

use super::query::{io_fs, open_path};
use super::{FileRef, Volume};
use crate::direct_write::{write_pipeline, BlockWriter, PipelineProducer};
use crate::error::{Error, Result};
use crate::explore::content::{stream, Piece};
use crate::explore::walk::{walk, Visit};
use crate::explore::{ExtentData, FileExtent, FileKind, FsError, Image, Stat, Timestamp};
use crate::progress::Progress;
use crate::repo::Repository;

/// What `files get` did.
#[derive(Debug, Default, Serialize)]
pub struct GetReport {
    /// Where the tree went (the tar's path, or `-`).
    pub dest: String,
    /// Regular files written (hard links not counted).
    pub files: u64,
    /// Directories made.
    pub dirs: u64,
    /// Symlinks made.
    pub symlinks: u64,
    /// Hard links made to a file already written.
    pub hard_links: u64,
    /// Other special files made (FIFOs; device nodes as root).
    pub special: u64,
    /// Bytes of file content written (holes not counted).
    pub bytes_written: u64,
    /// Logical bytes of the regular files.
    pub logical_bytes: u64,
    /// Names not restored, with the reason.
    pub skipped: Vec<Skipped>,
    /// Whether ownership was restored (only as root).
    pub owners_restored: bool,
    /// A warning about the filesystem, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// A name `get` did not restore.
#[derive(Debug, Serialize)]
pub struct Skipped {
    /// Its path relative to the restored root.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// Restores what `file` names (a symlink as a symlink) to `dest`: `dest` itself when it does
/// not exist, `dest/NAME` when it is a directory. `force` lets files be replaced and
/// directories merged.
pub fn get(
    repo: &Arc<Repository>,
    file: &FileRef,
    dest: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<GetReport> {
    let (volume, found) = open_path(repo, file, false)?;
    let name = found
        .path
        .rsplit(|b| *b == b'/')
        .next()
        .unwrap_or_default()
        .to_vec();
    let target = if dest.is_dir() && !name.is_empty() {
        dest.join(OsStr::from_bytes(&name))
    } else {
        dest.to_path_buf()
    };
    let (parent, leaf) = split_target(&target)?;
    let base = rustix::fs::open(
        &parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("opening {}", parent.display()), e.into()))?;
    raise_open_file_limit();
    let root = running_as_root();
    let mut w = TreeWriter {
        volume: &volume,
        base: Arc::new(base),
        leaf,
        force,
        root,
        open_dirs: Vec::new(),
        links: HashMap::new(),
        report: GetReport {
            dest: target.display().to_string(),
            owners_restored: root,
            warning: volume.fs.warning(),
            ..GetReport::default()
        },
        progress,
    };
    let total = if found.stat.kind == FileKind::File {
        found.stat.size
    } else {
        0
    };
    progress.start("restoring files", total);
    // The name being restored, so a failure names the file it happened in.
    let mut current = Vec::new();
    let walked = walk(
        volume.fs.as_ref(),
        found.ino,
        found.stat.clone(),
        &mut |v| {
            current.clone_from(&v.rel);
            w.visit(v)
        },
    )
    .map_err(|e| volume.error(&super::below(&found.path, &current), e));
    // Directories get their modes and times even when the walk failed: a half-restored
    // tree is not left with every directory 0700.
    let finished = w
        .close_dirs_to(0)
        .map_err(|e| super::explore_error(target.display().to_string(), e));
    walked?;
    finished?;
    progress.finish();
    Ok(w.report)
}

/// The directory `target` goes in, and its name there.
fn split_target(target: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let target = match target.file_name() {
        Some(_) => target.to_path_buf(),
        // `.`, `..` or `/`: the directory it names, by its real path.
        None => fs::canonicalize(target)
            .map_err(|e| Error::io(format!("resolving {}", target.display()), e))?,
    };
    let leaf = target.file_name().ok_or_else(|| {
        Error::Usage(format!(
            "{} cannot be restored onto: name a directory below it",
            target.display()
        ))
    })?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, leaf.as_bytes().to_vec()))
}

/// A directory of the tree being written, held open while its subtree is.
struct OpenDir {
    /// Its path relative to the restored root (empty for the root).
    rel: Vec<u8>,
    fd: Arc<OwnedFd>,
    stat: Stat,
}

struct TreeWriter<'a> {
    volume: &'a Volume,
    /// The directory the restored root is made in.
    base: Arc<OwnedFd>,
    /// The restored root's name in `base`.
    leaf: Vec<u8>,
    force: bool,
    root: bool,
    /// The directories from the restored root down to the one being written.
    open_dirs: Vec<OpenDir>,
    /// Inode → the path of its first name relative to `base` (hard links).
    links: HashMap<u64, Vec<u8>>,
    report: GetReport,
    progress: &'a dyn Progress,
}

type FsResult<T> = std::result::Result<T, FsError>;

/// An `io_fs` error from a rustix call.
fn errno(what: String) -> impl FnOnce(Errno) -> FsError {
    move |e| io_fs(&what, e.into())
}

impl TreeWriter<'_> {
    fn visit(&mut self, v: &Visit) -> FsResult<bool> {
        let (parent_rel, name) = match v.rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (&v.rel[..i], v.rel[i + 1..].to_vec()),
            None if v.rel.is_empty() => (&v.rel[..0], self.leaf.clone()),
            None => (&v.rel[..0], v.rel.clone()),
        };
        // The walk is depth-first: directories not above this name are complete.
        let parent = if v.rel.is_empty() {
            self.close_dirs_to(0)?;
            self.base.clone()
        } else {
            let keep = self
                .open_dirs
                .iter()
                .position(|d| d.rel == parent_rel)
                .map_or(0, |i| i + 1);
            self.close_dirs_to(keep)?;
            match self.open_dirs.last() {
                Some(d) if d.rel == parent_rel => d.fd.clone(),
                _ => {
                    return Err(FsError::corrupt(
                        "the walk left a directory before its entries",
                    ))
                }
            }
        };
        let at = Place {
            dir: parent.as_fd(),
            name: &name,
            shown: self.shown(&v.rel),
        };
        match v.stat.kind {
            FileKind::Dir => {
                let fd = self.dir(&at)?;
                self.open_dirs.push(OpenDir {
                    rel: v.rel.clone(),
                    fd: Arc::new(fd),
                    stat: v.stat.clone(),
                });
            }
            FileKind::File => self.file(&at, &v.stat, &v.rel)?,
            FileKind::Symlink => self.symlink(&at, &v.stat)?,
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                if v.stat.kind != FileKind::Fifo && !self.root {
                    self.skip(v, "a device node: made only when running as root");
                } else {
                    self.special(&at, &v.stat)?;
                }
            }
            FileKind::Socket => self.skip(v, "a socket: made by the program that listens on it"),
        }
        Ok(true)
    }

    /// The host path of `rel`, for messages.
    fn shown(&self, rel: &[u8]) -> String {
        super::below(self.report.dest.as_bytes(), rel)
    }

    fn skip(&mut self, v: &Visit, reason: &str) {
        self.report.skipped.push(Skipped {
            path: String::from_utf8_lossy(&v.rel).into_owned(),
            reason: reason.into(),
        });
    }

    /// Finishes and closes open directories, deepest first, until `keep` remain. Goes on
    /// past a failure (returning the first), so every directory is finished.
    fn close_dirs_to(&mut self, keep: usize) -> FsResult<()> {
        let mut first = Ok(());
        while self.open_dirs.len() > keep {
            let Some(d) = self.open_dirs.pop() else { break };
            let finished = finish_fd(d.fd.as_fd(), &d.stat, self.root, &self.shown(&d.rel));
            if first.is_ok() {
                first = finished;
            }
        }
        first
    }

    /// Whether `at` may be made: nothing is there, or `force` (then a directory in the way
    /// of a non-directory is still an error).
    fn check_free(&self, at: &Place<'_>) -> FsResult<()> {
        match rustix::fs::statat(at.dir, at.name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(format!("looking at {}", at.shown))(e)),
            Ok(_) if !self.force => Err(FsError::Image(Box::new(Error::OutputExists {
                path: PathBuf::from(&at.shown),
            }))),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Err(FsError::Image(Box::new(Error::Usage(format!(
                    "{} is a directory in the way of a file; remove it first",
                    at.shown
                )))))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Makes (or with `force` merges into) directory `at`, writable only by us while its
    /// contents are written, and opens it.
    fn dir(&mut self, at: &Place<'_>) -> FsResult<OwnedFd> {
        let existing = rustix::fs::statat(at.dir, at.name, AtFlags::SYMLINK_NOFOLLOW);
        match existing {
            Err(Errno::NOENT) => {
                rustix::fs::mkdirat(at.dir, at.name, Mode::RWXU)
                    .map_err(errno(format!("creating {}", at.shown)))?;
                self.report.dirs += 1;
            }
            Err(e) => return Err(errno(format!("looking at {}", at.shown))(e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let is_root = self.open_dirs.is_empty();
                let empty = is_root && Self::open_dir(at)?.and_then_empty()?;
                if !self.force && !empty {
                    return Err(FsError::Image(Box::new(Error::OutputExists {
                        path: PathBuf::from(&at.shown),
                    })));
                }
            }
            Ok(_) => {
                self.check_free(at)?;
                rustix::fs::unlinkat(at.dir, at.name, AtFlags::empty())
                    .map_err(errno(format!("removing {}", at.shown)))?;
                rustix::fs::mkdirat(at.dir, at.name, Mode::RWXU)
                    .map_err(errno(format!("creating {}", at.shown)))?;
                self.report.dirs += 1;
            }
        }
        let fd = Self::open_dir(at)?;
        rustix::fs::fchmod(&fd.0, Mode::RWXU)
            .map_err(errno(format!("setting permissions on {}", at.shown)))?;
        Ok(fd.0)
    }

    fn open_dir(at: &Place<'_>) -> FsResult<DirFd> {
        rustix::fs::openat(
            at.dir,
            at.name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(DirFd)
        .map_err(errno(format!(
            "opening {} (a symlink put in its place?)",
            at.shown
        )))
    }

    fn file(&mut self, at: &Place<'_>, stat: &Stat, rel: &[u8]) -> FsResult<()> {
        self.check_free(at)?;
        if stat.nlink > 1 {
            if let Some(first) = self.links.get(&stat.ino) {
                let (first_dir, first_name) = self.open_beneath(first)?;
                place_temp(at, stat.ino, |temp| {
                    rustix::fs::linkat(
                        first_dir.as_fd(),
                        first_name,
                        at.dir,
                        temp,
                        AtFlags::empty(),
                    )
                })?;
                self.report.hard_links += 1;
                return Ok(());
            }
        }
        let extents = self.volume.fs.extents(stat.ino)?;
        let (file, temp) = create_temp(at, stat.ino)?;
        let file = fs::File::from(file);
        let written = if stat.size >= DIRECT_MIN_BYTES {
            let direct = rustix::fs::openat(
                at.dir,
                temp.as_slice(),
                OFlags::WRONLY | OFlags::DIRECT | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .map(fs::File::from);
            let writer = BlockWriter::with_direct(&file, direct);
            write_pipelined(
                self.volume.bytes.as_ref(),
                &extents,
                stat.size,
                &file,
                &writer,
                &at.shown,
                self.progress,
            )
        } else {
            write_sparse(
                self.volume.bytes.as_ref(),
                &extents,
                stat.size,
                &file,
                &at.shown,
                self.progress,
            )
        };
        let written = written.and_then(|written| {
            finish_fd(file.as_fd(), stat, self.root, &at.shown)?;
            drop(file);
            rustix::fs::renameat(at.dir, &temp, at.dir, at.name).map_err(errno(format!(
                "renaming a temporary file onto {}",
                at.shown
            )))?;
            Ok(written)
        });
        let written = written.inspect_err(|_| {
            // Created exclusively above: ours to remove.
            let _ = rustix::fs::unlinkat(at.dir, &temp, AtFlags::empty());
        })?;
        self.report.bytes_written += written;
        self.report.files += 1;
        self.report.logical_bytes += stat.size;
        if stat.nlink > 1 {
            let mut path = self.leaf.clone();
            if !rel.is_empty() {
                path.push(b'/');
                path.extend_from_slice(rel);
            }
            self.links.insert(stat.ino, path);
        }
        Ok(())
    }

    /// The directory holding `path` (relative to `base`), opened without following any
    /// symlink on the way and without leaving `base`, and the last name.
    fn open_beneath<'p>(&self, path: &'p [u8]) -> FsResult<(OwnedFd, &'p [u8])> {
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => (&b"."[..], path),
        };
        let fd = rustix::fs::openat2(
            self.base.as_fd(),
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
        )
        .map_err(errno(format!(
            "opening the directory of {}",
            String::from_utf8_lossy(path)
        )))?;
        Ok((fd, name))
    }

    fn symlink(&mut self, at: &Place<'_>, stat: &Stat) -> FsResult<()> {
        self.check_free(at)?;
        let target = self.volume.fs.read_link(stat.ino)?;
        let root = self.root;
        place_temp(at, stat.ino, |temp| {
            rustix::fs::symlinkat(target.as_slice(), at.dir, temp)?;
            finish_nofollow(at.dir, temp, stat, root)
        })?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn special(&mut self, at: &Place<'_>, stat: &Stat) -> FsResult<()> {
        self.check_free(at)?;
        let kind = match stat.kind {
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        let dev = rustix::fs::makedev((stat.rdev >> 32) as u32, stat.rdev as u32);
        let root = self.root;
        place_temp(at, stat.ino, |temp| {
            // Made with no permissions, so nothing can open it before it is finished.
            rustix::fs::mknodat(at.dir, temp, kind, Mode::empty(), dev)?;
            // Owner before mode (a chown clears set-id bits); the mode through a handle
            // (opening a FIFO or device with O_PATH neither blocks nor touches the device).
            let fd = rustix::fs::openat(
                at.dir,
                temp,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            if root {
                rustix::fs::chownat(
                    fd.as_fd(),
                    "",
                    Some(uid(stat)),
                    Some(gid(stat)),
                    AtFlags::EMPTY_PATH,
                )?;
            }
            rustix::fs::chmodat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
                Mode::from_raw_mode(stat.mode & 0o7777),
                AtFlags::empty(),
            )?;
            rustix::fs::utimensat(at.dir, temp, &timestamps(stat), AtFlags::SYMLINK_NOFOLLOW)
        })?;
        self.report.special += 1;
        Ok(())
    }
}

/// Where a name is made: a directory handle, the name in it, and its host path for messages.
struct Place<'a> {
    dir: BorrowedFd<'a>,
    name: &'a [u8],
    shown: String,
}

/// An open directory.
struct DirFd(OwnedFd);

impl DirFd {
    /// Whether the directory has no entries besides `.` and `..`.
    fn and_then_empty(self) -> FsResult<bool> {
        let dir =
            rustix::fs::Dir::read_from(&self.0).map_err(errno("listing a directory".into()))?;
        for entry in dir {
            let entry = entry.map_err(errno("listing a directory".into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The temporary name of inode `ino`'s `n`th try.
fn temp_name(ino: u64, n: u32) -> Vec<u8> {
    format!(".tessera-part-{ino}-{n}").into_bytes()
}

/// Tries to make a temporary name (`make`, which fails with `EEXIST` when the name is
/// taken) beside `at`, the next name while taken; renames it onto `at` when made and
/// finished, removes it when not.
fn place_temp(
    at: &Place<'_>,
    ino: u64,
    make: impl Fn(&[u8]) -> rustix::io::Result<()>,
) -> FsResult<()> {
    for n in 0..TEMP_TRIES {
        let temp = temp_name(ino, n);
        match make(&temp) {
            Err(Errno::EXIST) => {}
            Err(e) => {
                // EEXIST aside, a failure after the name was made leaves it: ours to remove.
                let _ = rustix::fs::unlinkat(at.dir, temp.as_slice(), AtFlags::empty());
                return Err(errno(format!("making {}", at.shown))(e));
            }
            Ok(()) => {
                return rustix::fs::renameat(at.dir, temp.as_slice(), at.dir, at.name).map_err(
                    |e| {
                        let _ = rustix::fs::unlinkat(at.dir, temp.as_slice(), AtFlags::empty());
                        errno(format!("renaming a temporary name onto {}", at.shown))(e)
                    },
                );
            }
        }
    }
    Err(errno(format!(
        "making a temporary name beside {}",
        at.shown
    ))(Errno::EXIST))
}

/// Temporary names tried before giving up.
const TEMP_TRIES: u32 = 1000;

/// Creates a temporary file beside `at` exclusively, readable and writable by us only.
fn create_temp(at: &Place<'_>, ino: u64) -> FsResult<(OwnedFd, Vec<u8>)> {
    for n in 0..TEMP_TRIES {
        let temp = temp_name(ino, n);
        match rustix::fs::openat(
            at.dir,
            temp.as_slice(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => return Ok((fd, temp)),
            Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(errno(format!(
                    "creating a temporary file beside {}",
                    at.shown
                ))(e))
            }
        }
    }
    Err(errno(format!(
        "creating a temporary file beside {}",
        at.shown
    ))(Errno::EXIST))
}

/// Writes a file's stored runs at their offsets and sets its length, so holes stay holes.
/// Returns the bytes written.
fn write_sparse(
    volume: &dyn Image,
    extents: &[FileExtent],
    size: u64,
    file: &fs::File,
    shown: &str,
    progress: &dyn Progress,
) -> FsResult<u64> {
    let mut written = 0u64;
    stream(volume, extents, &mut |piece| {
        if let Piece::Data(offset, bytes) = piece {
            file.write_all_at(bytes, offset)
                .map_err(|e| io_fs(&format!("writing {shown}"), e))?;
            written += bytes.len() as u64;
            progress.advance(bytes.len() as u64);
        }
        Ok(())
    })?;
    file.set_len(size)
        .map_err(|e| io_fs(&format!("setting the length of {shown}"), e))?;
    Ok(written)
}

/// Files at least this long are written through the `O_DIRECT` pipeline (`direct_write`):
/// a new file written through the page cache goes at a fraction of device speed here.
const DIRECT_MIN_BYTES: u64 = 16 << 20;

/// Bytes read from the volume and handed to the writer threads at a time.
const DIRECT_PIECE: u64 = 4 << 20;

/// [`write_sparse`] with the reads (parallel decoding of the disk's chunks) overlapping the
/// writes (`O_DIRECT` where the file's offsets allow, on the pipeline's writer threads), as
/// a disk restore does.
fn write_pipelined(
    volume: &dyn Image,
    extents: &[FileExtent],
    size: u64,
    file: &fs::File,
    writer: &BlockWriter<'_>,
    shown: &str,
    progress: &dyn Progress,
) -> FsResult<u64> {
    let (producer, drain) = write_pipeline(DIRECT_PIECE as usize, 4);
    let (filled, drained) = std::thread::scope(|scope| {
        let writer_thread = scope.spawn(|| drain.run(writer));
        let filled = fill_pipeline(volume, extents, &producer, progress);
        drop(producer);
        (filled, writer_thread.join())
    });
    let written = match drained {
        Ok(Ok(written)) => written,
        Ok(Err(e)) => return Err(io_fs(&format!("writing {shown}"), e)),
        Err(_) => return Err(FsError::corrupt("the writer thread panicked")),
    };
    filled?;
    file.set_len(size)
        .map_err(|e| io_fs(&format!("setting the length of {shown}"), e))?;
    Ok(written)
}

/// Reads a file's stored runs into pipeline buffers, in pieces, and submits them.
fn fill_pipeline(
    volume: &dyn Image,
    extents: &[FileExtent],
    producer: &PipelineProducer,
    progress: &dyn Progress,
) -> FsResult<()> {
    let buffer_failed = |e| io_fs("mapping a write buffer", e);
    for e in extents {
        match &e.data {
            ExtentData::Zero => {}
            ExtentData::Inline(bytes) => {
                let len = usize::try_from(e.len)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let mut buf = producer.buffer().map_err(buffer_failed)?;
                let Some(dst) = buf.get_mut(..len) else {
                    return Err(FsError::corrupt("inline data longer than a write buffer"));
                };
                dst.copy_from_slice(&bytes[..len]);
                if !producer.submit(buf, vec![(0, len, e.offset)]) {
                    return Ok(()); // The writer failed: its error is reported.
                }
            }
            ExtentData::Volume(at) => {
                let mut done = 0u64;
                while done < e.len {
                    let n = (e.len - done).min(DIRECT_PIECE);
                    let mut buf = producer.buffer().map_err(buffer_failed)?;
                    let from = e.offset + done;
                    volume
                        .read_exact_at(at + done, &mut buf[..n as usize], "a file's data")
                        .map_err(|source| FsError::Unreadable {
                            start: from,
                            end: from + n,
                            source: Box::new(source),
                        })?;
                    if !producer.submit(buf, vec![(0, n as usize, from)]) {
                        return Ok(());
                    }
                    progress.advance(n);
                    done += n;
                }
            }
        }
    }
    Ok(())
}

fn uid(stat: &Stat) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(stat.uid)
}

fn gid(stat: &Stat) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(stat.gid)
}

fn timestamps(stat: &Stat) -> Timestamps {
    let ts = |t: Timestamp| Timespec {
        tv_sec: t.secs,
        tv_nsec: i64::from(t.nanos),
    };
    Timestamps {
        last_access: ts(stat.atime),
        last_modification: ts(stat.mtime),
    }
}

/// Owner (as root), permissions and times of an open file or directory, in that order:
/// changing the owner clears set-id bits, and both change the status time, not the times
/// set last.
fn finish_fd(fd: BorrowedFd<'_>, stat: &Stat, root: bool, shown: &str) -> FsResult<()> {
    if root {
        rustix::fs::fchown(fd, Some(uid(stat)), Some(gid(stat)))
            .map_err(errno(format!("setting the owner of {shown}")))?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(stat.mode & 0o7777))
        .map_err(errno(format!("setting permissions on {shown}")))?;
    rustix::fs::futimens(fd, &timestamps(stat))
        .map_err(errno(format!("setting the times of {shown}")))
}

/// Owner (as root) and times of a symlink, not following it (a symlink has no mode).
fn finish_nofollow(
    dir: BorrowedFd<'_>,
    name: &[u8],
    stat: &Stat,
    root: bool,
) -> rustix::io::Result<()> {
    if root {
        rustix::fs::chownat(
            dir,
            name,
            Some(uid(stat)),
            Some(gid(stat)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    rustix::fs::utimensat(dir, name, &timestamps(stat), AtFlags::SYMLINK_NOFOLLOW)
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Raises the soft limit on open files to the hard one: the walk holds one handle per level
/// of directory nesting (up to `MAX_DEPTH`).
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
