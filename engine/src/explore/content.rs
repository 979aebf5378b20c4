//! A file's bytes from its extents: whole (small metadata files: directories, symlinks) or
//! streamed in pieces with holes kept as holes (`files cat`, `files get`).

use super::image::Image;
use super::{ExtentData, FileExtent, FsError};

/// Bytes read from the volume per request while streaming: large enough that a disk
/// reader decodes many chunks of one request in parallel, small enough to bound memory.
pub const STREAM_PIECE: u64 = 8 << 20;

/// One piece of a streamed file.
pub enum Piece<'a> {
    /// Bytes at a file offset.
    Data(u64, &'a [u8]),
    /// `len` zero bytes at a file offset, not stored (a hole or unwritten extent).
    Hole(u64, u64),
}

/// The first `size` bytes the extents describe, in one buffer. `size` must be bounded by
/// the caller (directories and symlink targets are).
pub fn read_extents(
    volume: &dyn Image,
    extents: &[FileExtent],
    size: u64,
) -> Result<Vec<u8>, FsError> {
    let mut out = vec![0u8; usize::try_from(size).map_err(|_| FsError::corrupt("a huge size"))?];
    stream(volume, extents, &mut |piece| {
        if let Piece::Data(offset, bytes) = piece {
            let start = offset as usize;
            if let Some(dst) = out.get_mut(start..start + bytes.len()) {
                dst.copy_from_slice(bytes);
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Calls `sink` with the file's pieces in order. A failed read names the file's byte range
/// it was for ([`FsError::Unreadable`]).
pub fn stream(
    volume: &dyn Image,
    extents: &[FileExtent],
    sink: &mut dyn FnMut(Piece<'_>) -> Result<(), FsError>,
) -> Result<(), FsError> {
    let mut buf = Vec::new();
    for e in extents {
        match &e.data {
            ExtentData::Zero => sink(Piece::Hole(e.offset, e.len))?,
            ExtentData::Inline(bytes) => {
                let len = usize::try_from(e.len)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                sink(Piece::Data(e.offset, &bytes[..len]))?;
            }
            ExtentData::Volume(at) => {
                let mut done = 0u64;
                while done < e.len {
                    let n = (e.len - done).min(STREAM_PIECE);
                    buf.resize(n as usize, 0);
                    let from = e.offset + done;
                    volume
                        .read_exact_at(at + done, &mut buf, "a file's data")
                        .map_err(|source| FsError::Unreadable {
                            start: from,
                            end: from + n,
                            source: Box::new(source),
                        })?;
                    sink(Piece::Data(from, &buf))?;
                    done += n;
                }
            }
        }
    }
    Ok(())
}
