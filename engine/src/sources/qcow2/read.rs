//! Reading guest ranges: walks the range cluster by cluster (subcluster by subcluster with
//! extended L2), joins adjacent pieces stored contiguously in the file, or adjacent pieces
//! that come from the backing file, into one read each, fills zeros, inflates compressed
//! clusters. Returns the bytes read from files (this image and its backing chain).

use super::backing::Backing;
use super::table::{ClusterMap, Mapping};
use super::{bad_image, compressed, Qcow2Source};
use crate::error::{Error, Result};

/// A pending read of consecutive guest bytes.
#[derive(Clone, Copy)]
enum Run {
    /// `len` bytes stored at `host`.
    Data { guest: u64, host: u64, len: u64 },
    /// `len` bytes of the backing file.
    Backing { guest: u64, len: u64 },
}

/// `buf[guest - base ..][..len]`.
fn slice(buf: &mut [u8], base: u64, guest: u64, len: u64) -> Result<&mut [u8]> {
    let lo = (guest - base) as usize;
    buf.get_mut(lo..lo + len as usize).ok_or_else(|| {
        Error::Internal(format!("qcow2 read piece {guest}+{len} outside the buffer"))
    })
}

pub fn read_at(src: &Qcow2Source, offset: u64, buf: &mut [u8]) -> Result<u64> {
    let end = offset
        .checked_add(buf.len() as u64)
        .filter(|&e| e <= src.header.size)
        .ok_or_else(|| {
            Error::Internal(format!(
                "read of {} bytes at {offset} is outside the {}-byte qcow2 disk",
                buf.len(),
                src.header.size
            ))
        })?;
    let cb = src.geo.cluster_bits;
    let ub = src.geo.unit_bits();
    let mut run: Option<Run> = None;
    let mut read = 0u64;
    let mut pos = offset;
    while pos < end {
        let cluster = pos >> cb;
        let cluster_start = cluster << cb;
        let cluster_end = (cluster_start + (1 << cb)).min(end);
        let map = src.cluster_map(cluster)?;
        while pos < cluster_end {
            let sub = (pos - cluster_start) >> ub;
            // A whole-cluster mapping is one piece (a compressed cluster is inflated once).
            let piece_end = match map {
                ClusterMap::Whole(_) => cluster_end,
                ClusterMap::Sub { .. } => (cluster_start + ((sub + 1) << ub)).min(cluster_end),
            };
            let len = piece_end - pos;
            match map.at(sub) {
                Mapping::Data(host_cluster) => {
                    let host = host_cluster + (pos - cluster_start);
                    run = match run {
                        Some(Run::Data {
                            guest,
                            host: h,
                            len: l,
                        }) if h + l == host => Some(Run::Data {
                            guest,
                            host: h,
                            len: l + len,
                        }),
                        other => {
                            read += flush(src, other, offset, buf)?;
                            Some(Run::Data {
                                guest: pos,
                                host,
                                len,
                            })
                        }
                    };
                }
                Mapping::Backing => {
                    run = match run {
                        Some(Run::Backing { guest, len: l }) => Some(Run::Backing {
                            guest,
                            len: l + len,
                        }),
                        other => {
                            read += flush(src, other, offset, buf)?;
                            Some(Run::Backing { guest: pos, len })
                        }
                    };
                }
                Mapping::Zero => {
                    read += flush(src, run.take(), offset, buf)?;
                    slice(buf, offset, pos, len)?.fill(0);
                }
                Mapping::Compressed { host, len: payload } => {
                    read += flush(src, run.take(), offset, buf)?;
                    let data = inflate(src, cluster_start, host, payload)?;
                    let from = (pos - cluster_start) as usize;
                    let bytes = data.get(from..from + len as usize).ok_or_else(|| {
                        Error::Internal(format!("qcow2 read piece {pos}+{len} outside its cluster"))
                    })?;
                    slice(buf, offset, pos, len)?.copy_from_slice(bytes);
                    read += payload.min(src.geo.file_len - host);
                }
            }
            pos = piece_end;
        }
    }
    read += flush(src, run, offset, buf)?;
    Ok(read)
}

/// Performs a pending read; returns the bytes read from files.
fn flush(src: &Qcow2Source, run: Option<Run>, base: u64, buf: &mut [u8]) -> Result<u64> {
    match run {
        None => Ok(0),
        Some(Run::Data { guest, host, len }) => {
            if host + len > src.geo.file_len {
                return Err(bad_image(&src.path, format!("guest offset {guest}: {len} data bytes at file offset {host:#x} run past the end of the file ({} bytes)", src.geo.file_len)));
            }
            src.file
                .read_exact_at(slice(buf, base, guest, len)?, host)
                .map_err(|e| src.source_err(e))?;
            Ok(len)
        }
        Some(Run::Backing { guest, len }) => {
            read_backing(src, guest, slice(buf, base, guest, len)?)
        }
    }
}

/// Fills `dst` with the backing file's bytes at `guest` (zeros beyond its end or without one).
fn read_backing(src: &Qcow2Source, guest: u64, dst: &mut [u8]) -> Result<u64> {
    match &src.backing {
        Backing::None => {
            dst.fill(0);
            Ok(0)
        }
        Backing::Missing { path, .. } => Err(Error::Source {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the backing file of {} is missing, so guest offset {guest} (not stored in the overlay) cannot be read; only a delta backup against the snapshot of the backing file can read this image", src.path.display()),
            ),
        }),
        Backing::Present { source, .. } => {
            let avail = source.size().saturating_sub(guest).min(dst.len() as u64) as usize;
            let (inside, beyond) = dst.split_at_mut(avail);
            beyond.fill(0);
            if inside.is_empty() {
                return Ok(0);
            }
            source.read_at(guest, inside)
        }
    }
}

/// Reads and inflates the compressed cluster starting at guest offset `guest`.
fn inflate(src: &Qcow2Source, guest: u64, host: u64, payload: u64) -> Result<Vec<u8>> {
    // The payload's last sector may be cut short by the end of the file.
    let len = payload.min(src.geo.file_len - host);
    let mut bytes = vec![0u8; len as usize];
    src.file
        .read_exact_at(&mut bytes, host)
        .map_err(|e| src.source_err(e))?;
    compressed::inflate_cluster(src.header.compression, &bytes, src.geo.cluster_size() as usize)
        .map_err(|r| bad_image(&src.path, format!("guest offset {guest}: compressed cluster at file offset {host:#x} ({payload} bytes): {r}")))
}
