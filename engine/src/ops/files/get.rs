//! `files get`: a file or a whole tree out of a snapshot, to a directory or as a tar stream.
//!
//! To a directory: regular files keep their holes (only the stored runs are written, the
//! length set at the end), hard links are linked again, symlinks are made as symlinks,
//! FIFOs are made, device nodes only as root; permissions and times are set on everything
//! (directories last, so writing their contents does not change their times), ownership
//! when running as root. Each file is written under a temporary name in its directory
//! (`.tessera-part-INODE-N`, created exclusively, so it never is a name the tree restores or
//! holds) and renamed when complete, so a killed `get` never leaves a short file under the
//! real name; a failed one removes only the temporary file it created, and still sets the
//! modes and times of the directories it made. Nothing existing is overwritten without
//! `force`. Like `cp` and `tar`, nothing is fsynced.
//!
//! As tar (the `tar` crate, GNU format: long names, large files, uid/gid, mtime): holes are
//! written as zeros.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::query::{io_fs, open_path};
use super::{FileRef, Volume};
use crate::error::{Error, IoContext, Result};
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
    let name = found.path.rsplit(|b| *b == b'/').next().unwrap_or_default().to_vec();
    let target = if dest.is_dir() && !name.is_empty() {
        dest.join(OsStr::from_bytes(&name))
    } else {
        dest.to_path_buf()
    };
    let root = running_as_root();
    let mut w = TreeWriter {
        volume: &volume,
        target: target.clone(),
        force,
        root,
        links: HashMap::new(),
        dirs: Vec::new(),
        report: GetReport {
            dest: target.display().to_string(),
            owners_restored: root,
            warning: volume.fs.warning(),
            ..GetReport::default()
        },
        progress,
    };
    let total = if found.stat.kind == FileKind::File { found.stat.size } else { 0 };
    progress.start("restoring files", total);
    let walked = walk(volume.fs.as_ref(), found.ino, found.stat.clone(), &mut |v| w.visit(v))
        .map_err(|e| volume.error(&file.path, e));
    // Directories get their modes back even when the walk failed: a half-restored tree is
    // not left with every directory 0700.
    let finished = w.finish_dirs();
    walked?;
    finished?;
    progress.finish();
    Ok(w.report)
}

struct TreeWriter<'a> {
    volume: &'a Volume,
    target: PathBuf,
    force: bool,
    root: bool,
    /// Inode → where its first name was written (hard links).
    links: HashMap<u64, PathBuf>,
    /// Directories made, with their stats, to finish after their contents.
    dirs: Vec<(PathBuf, Stat)>,
    report: GetReport,
    progress: &'a dyn Progress,
}

impl TreeWriter<'_> {
    fn out_path(&self, v: &Visit) -> PathBuf {
        if v.rel.is_empty() {
            self.target.clone()
        } else {
            self.target.join(OsStr::from_bytes(&v.rel))
        }
    }

    fn visit(&mut self, v: &Visit) -> std::result::Result<bool, FsError> {
        let out = self.out_path(v);
        match v.stat.kind {
            FileKind::Dir => self.dir(&out, &v.stat)?,
            FileKind::File => self.file(&out, &v.stat)?,
            FileKind::Symlink => self.symlink(&out, &v.stat)?,
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                if v.stat.kind != FileKind::Fifo && !self.root {
                    self.skip(v, "a device node: made only when running as root");
                } else {
                    self.special(&out, &v.stat)?;
                }
            }
            FileKind::Socket => self.skip(v, "a socket: made by the program that listens on it"),
        }
        Ok(true)
    }

    fn skip(&mut self, v: &Visit, reason: &str) {
        self.report.skipped.push(Skipped {
            path: String::from_utf8_lossy(&v.rel).into_owned(),
            reason: reason.into(),
        });
    }

    /// Makes room for `out`: refuses an existing name unless `force`, which removes a
    /// non-directory in the way.
    fn clear(&self, out: &Path) -> std::result::Result<(), FsError> {
        let Ok(meta) = fs::symlink_metadata(out) else {
            return Ok(());
        };
        if !self.force {
            return Err(FsError::Image(Box::new(Error::OutputExists {
                path: out.to_path_buf(),
            })));
        }
        if meta.is_dir() {
            return Err(FsError::Image(Box::new(Error::Usage(format!(
                "{} is a directory in the way of a file; remove it first",
                out.display()
            )))));
        }
        fs::remove_file(out).map_err(|e| io_fs(&format!("removing {}", out.display()), e))
    }

    fn dir(&mut self, out: &Path, stat: &Stat) -> std::result::Result<(), FsError> {
        match fs::symlink_metadata(out) {
            Ok(meta) if meta.is_dir() && (self.force || out == self.target) => {
                if out == self.target && !self.force && fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
                    return Err(FsError::Image(Box::new(Error::OutputExists {
                        path: out.to_path_buf(),
                    })));
                }
            }
            Ok(_) => {
                self.clear(out)?;
                create_dir(out)?;
            }
            Err(_) => create_dir(out)?,
        }
        // Writable while its contents are written; its own mode is set at the end.
        fs::set_permissions(out, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_fs(&format!("setting permissions on {}", out.display()), e))?;
        self.dirs.push((out.to_path_buf(), stat.clone()));
        self.report.dirs += 1;
        Ok(())
    }

    fn file(&mut self, out: &Path, stat: &Stat) -> std::result::Result<(), FsError> {
        self.clear(out)?;
        if stat.nlink > 1 {
            if let Some(first) = self.links.get(&stat.ino) {
                fs::hard_link(first, out)
                    .map_err(|e| io_fs(&format!("linking {} to {}", out.display(), first.display()), e))?;
                self.report.hard_links += 1;
                return Ok(());
            }
        }
        let extents = self.volume.fs.extents(stat.ino)?;
        let (file, temp) = create_temp(out, stat.ino)?;
        let result = write_sparse(self.volume.bytes.as_ref(), &extents, stat.size, &file, &temp, self.progress)
            .and_then(|written| {
                drop(file);
                self.report.bytes_written += written;
                finish(&temp, stat, self.root, true)?;
                fs::rename(&temp, out).map_err(|e| io_fs(&format!("renaming {}", temp.display()), e))
            });
        if result.is_err() {
            // Created exclusively above: ours to remove.
            let _ = fs::remove_file(&temp);
        }
        result?;
        self.report.files += 1;
        self.report.logical_bytes += stat.size;
        if stat.nlink > 1 {
            self.links.insert(stat.ino, out.to_path_buf());
        }
        Ok(())
    }

    fn symlink(&mut self, out: &Path, stat: &Stat) -> std::result::Result<(), FsError> {
        self.clear(out)?;
        let target = self.volume.fs.read_link(stat.ino)?;
        symlink(OsStr::from_bytes(&target), out)
            .map_err(|e| io_fs(&format!("making symlink {}", out.display()), e))?;
        finish(out, stat, self.root, false)?;
        self.report.symlinks += 1;
        Ok(())
    }

    fn special(&mut self, out: &Path, stat: &Stat) -> std::result::Result<(), FsError> {
        use rustix::fs::{mknodat, FileType, Mode, CWD};
        self.clear(out)?;
        let kind = match stat.kind {
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        let dev = rustix::fs::makedev((stat.rdev >> 32) as u32, stat.rdev as u32);
        mknodat(CWD, out, kind, Mode::from_raw_mode(0o600), dev)
            .map_err(|e| io_fs(&format!("making {}", out.display()), e.into()))?;
        finish(out, stat, self.root, true)?;
        self.report.special += 1;
        Ok(())
    }

    /// Sets directories' modes, owners and times, deepest first.
    fn finish_dirs(&mut self) -> Result<()> {
        for (path, stat) in self.dirs.iter().rev() {
            finish(path, stat, self.root, true)
                .map_err(|e| super::explore_error(path.display().to_string(), e))?;
        }
        Ok(())
    }
}

fn create_dir(out: &Path) -> std::result::Result<(), FsError> {
    fs::create_dir(out).map_err(|e| io_fs(&format!("creating {}", out.display()), e))
}

/// Creates `.tessera-part-INODE-N` beside `out` exclusively (short: the real name may be 255
/// bytes already), taking the next `N` while the name is taken, so an existing file (one the
/// tree itself restored under such a name, say) is never opened or removed.
fn create_temp(out: &Path, ino: u64) -> std::result::Result<(fs::File, PathBuf), FsError> {
    for n in 0..1000 {
        let temp = out.with_file_name(format!(".tessera-part-{ino}-{n}"));
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp) {
            Ok(file) => return Ok((file, temp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_fs(&format!("creating {}", temp.display()), e)),
        }
    }
    Err(io_fs(
        &format!("creating a temporary file beside {}", out.display()),
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

/// Writes a file's stored runs at their offsets and sets its length, so holes stay holes.
/// Returns the bytes written.
fn write_sparse(
    volume: &dyn Image,
    extents: &[FileExtent],
    size: u64,
    file: &fs::File,
    path: &Path,
    progress: &dyn Progress,
) -> std::result::Result<u64, FsError> {
    let mut written = 0u64;
    stream(volume, extents, &mut |piece| {
        if let Piece::Data(offset, bytes) = piece {
            file.write_all_at(bytes, offset)
                .map_err(|e| io_fs(&format!("writing {}", path.display()), e))?;
            written += bytes.len() as u64;
            progress.advance(bytes.len() as u64);
        }
        Ok(())
    })?;
    file.set_len(size)
        .map_err(|e| io_fs(&format!("setting the length of {}", path.display()), e))?;
    Ok(written)
}

/// Owner (as root), permissions (not on symlinks) and times, in that order: changing the
/// owner clears set-id bits, and both change the status time, not the times set last.
fn finish(path: &Path, stat: &Stat, root: bool, follow: bool) -> std::result::Result<(), FsError> {
    use rustix::fs::{chownat, utimensat, AtFlags, Gid, Timespec, Timestamps, Uid, CWD};
    let flags = if follow { AtFlags::empty() } else { AtFlags::SYMLINK_NOFOLLOW };
    let ctx = |what: &str| format!("{what} {}", path.display());
    if root {
        chownat(
            CWD,
            path,
            Some(Uid::from_raw(stat.uid)),
            Some(Gid::from_raw(stat.gid)),
            flags,
        )
        .map_err(|e| io_fs(&ctx("setting the owner of"), e.into()))?;
    }
    if follow {
        fs::set_permissions(path, fs::Permissions::from_mode(stat.mode & 0o7777))
            .map_err(|e| io_fs(&ctx("setting permissions on"), e))?;
    }
    let ts = |t: Timestamp| Timespec {
        tv_sec: t.secs,
        tv_nsec: i64::from(t.nanos),
    };
    utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: ts(stat.atime),
            last_modification: ts(stat.mtime),
        },
        flags,
    )
    .map_err(|e| io_fs(&ctx("setting the times of"), e.into()))
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Sets a GNU header's mtime, a time before 1970 in GNU tar's base-256 form (a leading
/// `0xff`, then the 96-bit two's complement), which GNU tar and libarchive read back.
fn set_mtime(header: &mut tar::Header, secs: i64) {
    match u64::try_from(secs) {
        Ok(secs) => header.set_mtime(secs),
        Err(_) => {
            let field = &mut header.as_old_mut().mtime;
            field[..4].fill(0xff);
            field[4..].copy_from_slice(&secs.to_be_bytes());
        }
    }
}

/// Writes what `file` names as a tar file at `dest`: staged beside it and renamed when
/// complete, so a failed or killed run leaves no partial tar under the name. An existing
/// `dest` is an error unless `force`.
pub fn get_tar_file(repo: &Arc<Repository>, file: &FileRef, dest: &Path, force: bool) -> Result<GetReport> {
    if !force && fs::symlink_metadata(dest).is_ok() {
        return Err(Error::OutputExists { path: dest.to_path_buf() });
    }
    let (staged_file, staged) = crate::ops::restore::create_staged(dest)?;
    let written = (|| {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, staged_file);
        let report = get_tar(repo, file, &mut out, &dest.display().to_string())?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .ctx(|| format!("writing {}", staged.display()))?;
        let flags = if force {
            rustix::fs::RenameFlags::empty()
        } else {
            rustix::fs::RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(rustix::fs::CWD, &staged, rustix::fs::CWD, dest, flags).map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                Error::OutputExists { path: dest.to_path_buf() }
            } else {
                Error::io(format!("renaming {}", staged.display()), e.into())
            }
        })?;
        Ok(report)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&staged);
    }
    written
}

/// Writes what `file` names as a tar stream to `out` (GNU format).
pub fn get_tar(repo: &Arc<Repository>, file: &FileRef, out: &mut dyn Write, dest: &str) -> Result<GetReport> {
    let (volume, found) = open_path(repo, file, false)?;
    let base = found.path.rsplit(|b| *b == b'/').next().unwrap_or_default().to_vec();
    let mut report = GetReport {
        dest: dest.to_string(),
        warning: volume.fs.warning(),
        ..GetReport::default()
    };
    let mut builder = tar::Builder::new(out);
    let mut links: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut visit = |v: &Visit| -> std::result::Result<bool, FsError> {
        // Names relative to the tree's parent (`etc/passwd` for /etc), or for the root
        // relative to the root itself (`./` first), as `tar -C DIR .` would write them.
        let name = match (base.is_empty(), v.rel.is_empty()) {
            (true, true) => b"./".to_vec(),
            (true, false) => v.rel.clone(),
            (false, true) => base.clone(),
            (false, false) => [base.as_slice(), b"/", &v.rel].concat(),
        };
        let path = Path::new(OsStr::from_bytes(&name));
        let mut header = tar::Header::new_gnu();
        header.set_mode(v.stat.mode & 0o7777);
        header.set_uid(u64::from(v.stat.uid));
        header.set_gid(u64::from(v.stat.gid));
        set_mtime(&mut header, v.stat.mtime.secs);
        let tar_err = |e: std::io::Error| io_fs("writing the tar stream", e);
        match v.stat.kind {
            FileKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty()).map_err(tar_err)?;
                report.dirs += 1;
            }
            FileKind::File => {
                if let Some(first) = links.get(&v.stat.ino).filter(|_| v.stat.nlink > 1) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, path, Path::new(OsStr::from_bytes(first)))
                        .map_err(tar_err)?;
                    report.hard_links += 1;
                    return Ok(true);
                }
                let extents = volume.fs.extents(v.stat.ino)?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(v.stat.size);
                let reader = ExtentReader {
                    volume: volume.bytes.as_ref(),
                    extents: &extents,
                    pos: 0,
                    size: v.stat.size,
                    error: None,
                };
                // Large reads: the tar builder copies in 8 KiB pieces.
                let mut reader =
                    std::io::BufReader::with_capacity(crate::explore::content::STREAM_PIECE as usize, reader);
                let appended = builder.append_data(&mut header, path, &mut reader);
                if let Some(e) = reader.get_mut().error.take() {
                    return Err(e);
                }
                appended.map_err(tar_err)?;
                report.files += 1;
                report.logical_bytes += v.stat.size;
                report.bytes_written += v.stat.size;
                if v.stat.nlink > 1 {
                    links.insert(v.stat.ino, name);
                }
            }
            FileKind::Symlink => {
                let target = volume.fs.read_link(v.stat.ino)?;
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder
                    .append_link(&mut header, path, Path::new(OsStr::from_bytes(&target)))
                    .map_err(tar_err)?;
                report.symlinks += 1;
            }
            FileKind::Fifo | FileKind::CharDevice | FileKind::BlockDevice => {
                header.set_entry_type(match v.stat.kind {
                    FileKind::Fifo => tar::EntryType::Fifo,
                    FileKind::CharDevice => tar::EntryType::Char,
                    _ => tar::EntryType::Block,
                });
                header.set_size(0);
                header.set_device_major((v.stat.rdev >> 32) as u32).map_err(tar_err)?;
                header.set_device_minor(v.stat.rdev as u32).map_err(tar_err)?;
                builder.append_data(&mut header, path, std::io::empty()).map_err(tar_err)?;
                report.special += 1;
            }
            FileKind::Socket => report.skipped.push(Skipped {
                path: String::from_utf8_lossy(&v.rel).into_owned(),
                reason: "a socket: tar has no entry for one".into(),
            }),
        }
        Ok(true)
    };
    walk(volume.fs.as_ref(), found.ino, found.stat.clone(), &mut visit)
        .map_err(|e| volume.error(&file.path, e))?;
    builder
        .into_inner()
        .and_then(|w| w.flush())
        .ctx(|| "finishing the tar stream".into())?;
    Ok(report)
}

/// A file's bytes as a [`Read`] (the tar builder pulls), zeros for holes. A read failure
/// is kept in `error`, so the caller reports it with its byte range instead of an I/O error.
struct ExtentReader<'a> {
    volume: &'a dyn Image,
    extents: &'a [FileExtent],
    pos: u64,
    size: u64,
    error: Option<FsError>,
}

impl Read for ExtentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let Some(e) = self
            .extents
            .iter()
            .find(|e| e.offset <= self.pos && self.pos < e.offset + e.len)
        else {
            return Ok(0);
        };
        let within = self.pos - e.offset;
        let n = (e.len - within).min(buf.len() as u64).min(crate::explore::content::STREAM_PIECE) as usize;
        let dst = &mut buf[..n];
        match &e.data {
            ExtentData::Zero => dst.fill(0),
            ExtentData::Inline(bytes) => {
                let start = within as usize;
                match bytes.get(start..start + n) {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.fill(0),
                }
            }
            ExtentData::Volume(at) => {
                if let Err(source) = self.volume.read_exact_at(at + within, dst, "a file's data") {
                    self.error = Some(FsError::Unreadable {
                        start: self.pos,
                        end: self.pos + n as u64,
                        source: Box::new(source),
                    });
                    return Err(std::io::Error::other("a file's data cannot be read"));
                }
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}
