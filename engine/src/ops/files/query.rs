//! `files ls`, `files stat` and `files cat`: one snapshot, one path.

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;
use tessera_format::SnapshotId;

use super::{open_volume, EntryInfo, FileRef, Volume, CACHE_BYTES};
use crate::error::{Error, Result};
use crate::explore::content::{stream, Piece};
use crate::explore::path::{resolve, Resolved};
use crate::explore::{FileKind, FsError};
use crate::ops::disk_reader::ReadCache;
use crate::repo::Repository;

/// Opens the volume a [`FileRef`] names and resolves its path (following a final symlink
/// when `follow`).
pub fn open_path(
    repo: &Arc<Repository>,
    file: &FileRef,
    follow: bool,
) -> Result<(Volume, Resolved)> {
    let (id, _) = repo.resolve(&file.snapshot)?;
    let volume = open_volume(
        repo,
        id,
        &file.volume,
        &Arc::new(ReadCache::new(CACHE_BYTES)),
    )?;
    let resolved = resolve(volume.fs.as_ref(), file.path.as_bytes(), follow)
        .map_err(|e| volume.error(&file.path, e))?;
    Ok((volume, resolved))
}

/// `files ls`: a directory's entries (or one file's), sorted by name.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// The snapshot.
    #[serde(serialize_with = "crate::serde_ids::hex")]
    pub snapshot: SnapshotId,
    /// The volume, as `SNAPSHOT:DISK[:PART]`.
    pub volume: String,
    /// The filesystem's kind.
    pub filesystem: &'static str,
    /// The path listed, resolved.
    pub path: String,
    /// Its entries.
    pub entries: Vec<EntryInfo>,
    /// Blocks of the disk the command read, and the disk's blocks.
    pub blocks_read: u64,
    /// The disk's blocks.
    pub disk_blocks: u64,
    /// A warning about the filesystem (a journal not replayed), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// Lists the directory `file` names (following symlinks to it), or describes the one file.
pub fn ls(repo: &Arc<Repository>, file: &FileRef) -> Result<Listing> {
    let (volume, dir) = open_path(repo, file, true)?;
    let fs = volume.fs.as_ref();
    let listed = || -> std::result::Result<Vec<EntryInfo>, FsError> {
        if dir.stat.kind != FileKind::Dir {
            let name = dir.path.rsplit(|b| *b == b'/').next().unwrap_or_default();
            return Ok(vec![EntryInfo::new(name, dir.stat.clone(), fs)?]);
        }
        let mut entries = fs.read_dir(dir.ino)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        entries
            .iter()
            .map(|e| EntryInfo::new(&e.name, fs.stat(e.ino)?, fs))
            .collect()
    };
    let entries = listed().map_err(|e| volume.error(&file.path, e))?;
    let (blocks_read, disk_blocks) = volume.image.blocks_read();
    Ok(Listing {
        snapshot: volume.snapshot,
        volume: volume.place(),
        filesystem: fs.kind(),
        path: String::from_utf8_lossy(&dir.path).into_owned(),
        entries,
        blocks_read,
        disk_blocks,
        warning: fs.warning(),
    })
}

/// `files stat`: one name, not following a final symlink.
pub fn stat(repo: &Arc<Repository>, file: &FileRef) -> Result<EntryInfo> {
    let (volume, found) = open_path(repo, file, false)?;
    let name = found.path.rsplit(|b| *b == b'/').next().unwrap_or_default();
    let name = if name.is_empty() {
        b"/".as_slice()
    } else {
        name
    };
    EntryInfo::new(name, found.stat, volume.fs.as_ref()).map_err(|e| volume.error(&file.path, e))
}

/// `files cat`: writes a regular file's bytes (following symlinks to it) to `out`; returns
/// how many.
pub fn cat(repo: &Arc<Repository>, file: &FileRef, out: &mut dyn Write) -> Result<u64> {
    let (volume, found) = open_path(repo, file, true)?;
    if found.stat.kind != FileKind::File {
        return Err(Error::Usage(format!(
            "{} {}: is a {}, not a regular file",
            volume.place(),
            file.path,
            found.stat.kind.name()
        )));
    }
    let extents = volume
        .fs
        .extents(found.ino)
        .map_err(|e| volume.error(&file.path, e))?;
    let mut written = 0u64;
    let zeros = vec![0u8; 1 << 16];
    stream(volume.bytes.as_ref(), &extents, &mut |piece| {
        written = match &piece {
            Piece::Data(offset, bytes) => offset + bytes.len() as u64,
            Piece::Hole(offset, len) => offset + len,
        };
        match piece {
            Piece::Data(_, bytes) => out.write_all(bytes).map_err(|e| io_fs("writing", e))?,
            Piece::Hole(_, mut len) => {
                while len > 0 {
                    let n = len.min(zeros.len() as u64) as usize;
                    out.write_all(&zeros[..n])
                        .map_err(|e| io_fs("writing", e))?;
                    len -= n as u64;
                }
            }
        }
        Ok(())
    })
    .map_err(|e| volume.error(&file.path, e))?;
    out.flush().map_err(|e| Error::io("writing the file", e))?;
    Ok(written)
}

/// An output error inside a filesystem stream.
pub(crate) fn io_fs(what: &str, e: std::io::Error) -> FsError {
    FsError::Image(Box::new(Error::io(what, e)))
}
