//! `files get --tar`: a file or tree as a GNU tar stream (the `tar` crate: long names and
//! link targets, large files, uid/gid, device numbers, times before 1970 in base-256).
//! Holes are written as zeros. A tar file is staged beside its name and renamed when
//! complete.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use super::get::{GetReport, Skipped};
use super::query::{io_fs, open_path};
use super::FileRef;
use crate::error::{Error, IoContext, Result};
use crate::explore::walk::{walk, Visit};
use crate::explore::{ExtentData, FileExtent, FileKind, FsError, Image};
use crate::repo::Repository;

/// Sets a GNU header's mtime, a time before 1970 in GNU tar's base-256 form (a leading
/// `0xff`, then the 96-bit two's complement), which GNU tar and libarchive read back.
fn set_mtime(header: &mut tar::Header, secs: i64) {
    if let Ok(secs) = u64::try_from(secs) {
        header.set_mtime(secs);
    } else {
        let field = &mut header.as_old_mut().mtime;
        field[..4].fill(0xff);
        field[4..].copy_from_slice(&secs.to_be_bytes());
    }
}

/// Writes what `file` names as a tar file at `dest`: staged beside it and renamed when
/// complete, so a failed or killed run leaves no partial tar under the name. An existing
/// `dest` is an error unless `force`.
pub fn get_tar_file(
    repo: &Arc<Repository>,
    file: &FileRef,
    dest: &Path,
    force: bool,
) -> Result<GetReport> {
    if !force && fs::symlink_metadata(dest).is_ok() {
        return Err(Error::OutputExists {
            path: dest.to_path_buf(),
        });
    }
    let (staged_file, staged) = crate::ops::restore::create_staged(dest)?;
    let written = (|| {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, staged_file);
        let report = get_tar(repo, file, &mut out, &dest.display().to_string())?;
        out.into_inner()
            .map_err(std::io::IntoInnerError::into_error)
            .ctx(|| format!("writing {}", staged.display()))?;
        let flags = if force {
            rustix::fs::RenameFlags::empty()
        } else {
            rustix::fs::RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(rustix::fs::CWD, &staged, rustix::fs::CWD, dest, flags).map_err(
            |e| {
                if e == rustix::io::Errno::EXIST {
                    Error::OutputExists {
                        path: dest.to_path_buf(),
                    }
                } else {
                    Error::io(format!("renaming {}", staged.display()), e.into())
                }
            },
        )?;
        Ok(report)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&staged);
    }
    written
}

/// Writes what `file` names as a tar stream to `out` (GNU format).
pub fn get_tar(
    repo: &Arc<Repository>,
    file: &FileRef,
    out: &mut dyn Write,
    dest: &str,
) -> Result<GetReport> {
    let (volume, found) = open_path(repo, file, false)?;
    let base = found
        .path
        .rsplit(|b| *b == b'/')
        .next()
        .unwrap_or_default()
        .to_vec();
    let mut report = GetReport {
        dest: dest.to_string(),
        warning: volume.fs.warning(),
        ..GetReport::default()
    };
    let mut builder = tar::Builder::new(out);
    let mut links: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut visit = |v: &Visit| -> std::result::Result<bool, FsError> {
        let name = entry_name(&base, &v.rel);
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
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .map_err(tar_err)?;
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
                append_file(&mut builder, &volume, &v.stat, &mut header, path)?;
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
                header
                    .set_device_major((v.stat.rdev >> 32) as u32)
                    .map_err(tar_err)?;
                header
                    .set_device_minor(v.stat.rdev as u32)
                    .map_err(tar_err)?;
                builder
                    .append_data(&mut header, path, std::io::empty())
                    .map_err(tar_err)?;
                report.special += 1;
            }
            FileKind::Socket => report.skipped.push(Skipped {
                path: String::from_utf8_lossy(&v.rel).into_owned(),
                reason: "a socket: tar has no entry for one".into(),
            }),
        }
        Ok(true)
    };
    let mut current = Vec::new();
    walk(
        volume.fs.as_ref(),
        found.ino,
        found.stat.clone(),
        &mut |v| {
            current.clone_from(&v.rel);
            visit(v)
        },
    )
    .map_err(|e| volume.error(&super::below(&found.path, &current), e))?;
    let out = builder
        .into_inner()
        .ctx(|| "finishing the tar stream".into())?;
    out.flush().ctx(|| "finishing the tar stream".into())?;
    Ok(report)
}

/// Appends a regular file's entry and content (holes as zeros).
fn append_file(
    builder: &mut tar::Builder<&mut dyn Write>,
    volume: &super::Volume,
    stat: &crate::explore::Stat,
    header: &mut tar::Header,
    path: &Path,
) -> std::result::Result<(), FsError> {
    let extents = volume.fs.extents(stat.ino)?;
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(stat.size);
    let reader = ExtentReader {
        volume: volume.bytes.as_ref(),
        extents: &extents,
        pos: 0,
        size: stat.size,
        error: None,
    };
    // Large reads: the tar builder copies in 8 KiB pieces.
    let mut reader =
        std::io::BufReader::with_capacity(crate::explore::content::STREAM_PIECE as usize, reader);
    let appended = builder.append_data(header, path, &mut reader);
    if let Some(e) = reader.get_mut().error.take() {
        return Err(e);
    }
    appended.map_err(|e| io_fs("writing the tar stream", e))
}

/// A tar entry's name: relative to the tree's parent (`etc/passwd` for /etc), or for the
/// root relative to the root itself (`./` first), as `tar -C DIR .` would write them.
fn entry_name(base: &[u8], rel: &[u8]) -> Vec<u8> {
    match (base.is_empty(), rel.is_empty()) {
        (true, true) => b"./".to_vec(),
        (true, false) => rel.to_vec(),
        (false, true) => base.to_vec(),
        (false, false) => [base, b"/", rel].concat(),
    }
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
        // The extents are in file order with no gap (`Filesystem::extents`): step past
        // those already read instead of searching them all on every read.
        while self
            .extents
            .first()
            .is_some_and(|e| e.offset + e.len <= self.pos)
        {
            self.extents = &self.extents[1..];
        }
        let Some(e) = self.extents.first().filter(|e| e.offset <= self.pos) else {
            // A short entry would corrupt the rest of the stream.
            self.error = Some(FsError::corrupt(format!(
                "the file's extents end at byte {} of its {} bytes",
                self.pos, self.size
            )));
            return Err(std::io::Error::other("a file's extents end early"));
        };
        let within = self.pos - e.offset;
        let n = (e.len - within)
            .min(buf.len() as u64)
            .min(crate::explore::content::STREAM_PIECE) as usize;
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
