//! Raw images and block devices.
//!
//! Regular files are probed with `SEEK_DATA`/`SEEK_HOLE` when opened, so holes of sparse
//! images are never read: they come back as zeros, which the backup recognises as zero
//! blocks. Block devices report their size through `lseek(SEEK_END)`.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom as RxSeek;

use crate::error::{Error, Result};
use crate::sources::BlockSource;

/// A raw image file or block device.
pub struct RawSource {
    file: File,
    path: PathBuf,
    size: u64,
    kind: &'static str,
    /// Sorted, disjoint `[start, end)` ranges that hold data; `None` when unknown (read all).
    data: Option<Vec<(u64, u64)>>,
}

fn source_err(path: &Path, source: std::io::Error) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        source,
    }
}

impl RawSource {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self> {
        // Look before opening: opening a FIFO for reading would block until a writer appears.
        let ft = std::fs::metadata(path)
            .map_err(|e| source_err(path, e))?
            .file_type();
        if !ft.is_block_device() && !ft.is_file() {
            return Err(source_err(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file or block device",
                ),
            ));
        }
        let mut file = File::open(path).map_err(|e| source_err(path, e))?;
        let meta = file.metadata().map_err(|e| source_err(path, e))?;
        let (kind, size) = if meta.file_type().is_block_device() {
            (
                "block-device",
                file.seek(SeekFrom::End(0))
                    .map_err(|e| source_err(path, e))?,
            )
        } else {
            ("raw-file", meta.len())
        };
        let data = if kind == "raw-file" {
            data_ranges(&file, size)
        } else {
            None
        };
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            kind,
            data,
        })
    }
}

/// Maps the data ranges of a regular file; `None` when the filesystem cannot tell.
fn data_ranges(file: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, RxSeek::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => return None,
        };
        let end = rustix::fs::seek(file, RxSeek::Hole(start)).ok()?.min(size);
        if end <= start {
            return None;
        }
        ranges.push((start, end));
        pos = end;
    }
    Some(ranges)
}

impl BlockSource for RawSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<u64> {
        let end = offset + buf.len() as u64;
        let read_range = |from: u64, to: u64, buf: &mut [u8]| -> Result<u64> {
            let lo = (from - offset) as usize;
            let hi = (to - offset) as usize;
            let dst = buf
                .get_mut(lo..hi)
                .ok_or_else(|| Error::Internal("read range outside buffer".into()))?;
            self.file.read_exact_at(dst, from).map_err(|e| {
                Error::Source { path: self.path.clone(), source: std::io::Error::new(e.kind(), format!("reading {} bytes at offset {from}: {e} (did the source shrink while it was read?)", to - from)) }
            })?;
            Ok(to - from)
        };
        match &self.data {
            None => read_range(offset, end, buf),
            Some(ranges) => {
                // Read the data ranges; zero only the holes between them.
                let first = ranges.partition_point(|&(_, e)| e <= offset);
                let mut read = 0;
                let mut filled_to = offset;
                for &(s, e) in ranges.iter().skip(first) {
                    if s >= end {
                        break;
                    }
                    let (from, to) = (s.max(offset), e.min(end));
                    buf[(filled_to - offset) as usize..(from - offset) as usize].fill(0);
                    read += read_range(from, to, buf)?;
                    filled_to = to;
                }
                buf[(filled_to - offset) as usize..].fill(0);
                Ok(read)
            }
        }
    }

    fn identity(&self) -> Vec<(String, String)> {
        let path = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        let mut id = vec![
            ("source.kind".into(), self.kind.into()),
            ("source.path".into(), path.display().to_string()),
            ("source.size".into(), self.size.to_string()),
        ];
        // A block device has no stable token (it changes under a running VM).
        if self.kind == "raw-file" {
            if let Ok(token) = crate::sources::file_state_token(&self.path) {
                id.push((crate::sources::STATE_KEY.into(), token));
            }
        }
        id
    }
}
