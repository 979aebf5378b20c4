//! Restoring one disk of a snapshot to a sparse raw file or an existing block device.
//!
//! Every chunk is checked on the way out (record header, CRC, length, SHA-256). A new or
//! overwritten file is written under a temporary name beside the target and renamed into
//! place only after `fsync`, so an interrupted restore never leaves a file that looks
//! complete. Zero blocks become holes in files, and explicit zeros on block devices.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tessera_format::manifest::block_count;
use tessera_format::{ObjectKind, Snapshot, SnapshotId};

use crate::backend::sync_dir;
use crate::error::{Error, IoContext, Result};
use crate::progress::Progress;
use crate::repo::Repository;
use crate::store::reader::read_object;

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreOutcome {
    /// Disk size.
    pub size: u64,
    /// Bytes written (zero blocks left as holes are not counted).
    pub bytes_written: u64,
    /// Zero blocks.
    pub zero_blocks: u64,
    /// Where it went.
    pub path: PathBuf,
}

enum Target {
    /// A fresh file being written under `staged`, renamed to the target at the end.
    Fresh { file: File, staged: PathBuf },
    /// An existing block device, written in place.
    Device { file: File },
}

fn open_target(output: &Path, size: u64, force: bool) -> Result<Target> {
    match fs::metadata(output) {
        Ok(meta) if meta.file_type().is_block_device() => {
            let mut file = OpenOptions::new()
                .write(true)
                .open(output)
                .ctx(|| format!("opening {}", output.display()))?;
            let dev_size = file
                .seek(SeekFrom::End(0))
                .ctx(|| format!("sizing {}", output.display()))?;
            if dev_size < size {
                return Err(Error::InvalidArgument(format!(
                    "{} holds {dev_size} bytes, the disk needs {size}",
                    output.display()
                )));
            }
            return Ok(Target::Device { file });
        }
        Ok(meta) if meta.is_file() && !force => {
            return Err(Error::OutputExists {
                path: output.to_path_buf(),
            })
        }
        Ok(meta) if !meta.is_file() => {
            return Err(Error::InvalidArgument(format!(
                "{} is neither a regular file nor a block device",
                output.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspecting {}", output.display()), e)),
    }
    let name = output.file_name().ok_or_else(|| {
        Error::InvalidArgument(format!("{} is not a file path", output.display()))
    })?;
    let staged = output.with_file_name(format!(".{}.tessera-partial", name.to_string_lossy()));
    let _ = fs::remove_file(&staged);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&staged)
        .ctx(|| format!("creating {}", staged.display()))?;
    file.set_len(size)
        .ctx(|| format!("sizing {}", staged.display()))?;
    Ok(Target::Fresh { file, staged })
}

/// Restores disk `disk` of `snapshot` to `output`.
pub fn restore_disk(
    repo: &Repository,
    id: SnapshotId,
    snapshot: &Snapshot,
    disk: &str,
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<RestoreOutcome> {
    let pos = snapshot
        .header
        .disks
        .iter()
        .position(|d| d.name == disk)
        .ok_or_else(|| Error::DiskNotFound {
            snapshot: id,
            disk: disk.to_string(),
            available: snapshot
                .header
                .disks
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let entry = &snapshot.header.disks[pos];
    let root = &snapshot.roots[pos];
    let target = open_target(output, entry.size, force)?;
    let (file, fresh) = match &target {
        Target::Fresh { file, .. } => (file, true),
        Target::Device { file } => (file, false),
    };
    let bs = u64::from(entry.block_size);
    let blocks = block_count(entry.size, entry.block_size);
    let zeros = vec![0u8; entry.block_size as usize];
    let mut outcome = RestoreOutcome {
        size: entry.size,
        bytes_written: 0,
        zero_blocks: 0,
        path: output.to_path_buf(),
    };
    progress.start(&format!("restore {disk}"), entry.size);
    for (page_no, page_digest) in root.iter().enumerate() {
        let page_no = page_no as u64;
        let digests = repo.read_page(*page_digest, blocks, entry.page_entries, page_no)?;
        let first_block = page_no * u64::from(entry.page_entries);
        let nonzero: Vec<(u64, [u8; 32])> = digests
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.is_zero())
            .map(|(i, d)| (first_block + i as u64, d.0))
            .collect();
        outcome.zero_blocks += (digests.len() - nonzero.len()) as u64;
        let keys: Vec<[u8; 32]> = nonzero.iter().map(|(_, d)| *d).collect();
        let locations = repo.index().get_many(ObjectKind::Chunk, &keys)?;
        let written: u64 = nonzero
            .par_iter()
            .zip(locations)
            .map(|((block, digest), location)| {
                let location = location.ok_or_else(|| Error::ObjectMissing {
                    kind: ObjectKind::Chunk,
                    digest: format!("{} (disk {disk}, offset {})", hex::encode(digest), block * bs),
                })?;
                let raw = read_object(repo.backend(), ObjectKind::Chunk, digest, &location)?;
                let offset = block * bs;
                let expected = bs.min(entry.size - offset);
                if raw.len() as u64 != expected {
                    return Err(Error::InvalidArgument(format!(
                        "chunk {} at offset {offset} holds {} bytes where the disk needs {expected}",
                        hex::encode(digest),
                        raw.len()
                    )));
                }
                file.write_all_at(&raw, offset).ctx(|| format!("writing {} at offset {offset}", output.display()))?;
                Ok(expected)
            })
            .sum::<Result<u64>>()?;
        outcome.bytes_written += written;
        if !fresh {
            for (i, d) in digests.iter().enumerate() {
                if d.is_zero() {
                    let offset = (first_block + i as u64) * bs;
                    let len = bs.min(entry.size - offset) as usize;
                    file.write_all_at(&zeros[..len], offset)
                        .ctx(|| format!("writing {} at offset {offset}", output.display()))?;
                    outcome.bytes_written += len as u64;
                }
            }
        }
        progress.advance((digests.len() as u64 * bs).min(entry.size - first_block * bs));
    }
    progress.finish();
    file.sync_all()
        .ctx(|| format!("syncing {}", output.display()))?;
    if let Target::Fresh { staged, .. } = &target {
        fs::rename(staged, output)
            .ctx(|| format!("renaming {} to {}", staged.display(), output.display()))?;
        sync_dir(
            output
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
    }
    Ok(outcome)
}
