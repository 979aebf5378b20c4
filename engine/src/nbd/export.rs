//! What the NBD server serves: an [`NbdExport`], a named, read-only run of bytes that can
//! be read by range and asked which of its runs are zero.
//!
//! The protocol code (`handshake.rs`, `transmission.rs`) sees exports only through this
//! trait. A snapshot's disk ([`DiskReader`](crate::ops::disk_reader::DiskReader) over the
//! repository, the `repository` feature) is the export `serve-nbd` serves; [`MemoryExport`]
//! holds its bytes in memory, for the fuzzer (`fuzz/`, which builds without the repository)
//! and unit tests.
//!
//! Contract of an implementation: `read_range` and `extents` are asked only for ranges the
//! server checked to lie inside `size()`; `read_range` returns segments in order that cover
//! exactly the range; `extents` returns at most `max` runs in order, covering the range
//! from its start (the last may stop short when `max` is reached); neither is asked to
//! read more than [`MAX_REQUEST`](crate::formats::nbd::MAX_REQUEST) bytes of data at once.

use crate::disk_range::{Extent, Segment};
use crate::error::{Error, Result};

/// A read-only export (see the module's contract).
pub trait NbdExport: Send + Sync + 'static {
    /// The export's name (what clients ask for).
    fn name(&self) -> &str;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// Its natural block size (the preferred block size told to clients, clamped).
    fn block_size(&self) -> u64;
    /// The bytes of `offset..offset+len` as data and zero segments in order.
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<Segment>>;
    /// Runs of zero and data blocks covering `offset..offset+len`, at most `max`.
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>>;
}

#[cfg(feature = "repository")]
impl NbdExport for crate::ops::disk_reader::DiskReader<std::sync::Arc<crate::repo::Repository>> {
    fn name(&self) -> &str {
        Self::name(self)
    }
    fn size(&self) -> u64 {
        Self::size(self)
    }
    fn block_size(&self) -> u64 {
        Self::block_size(self)
    }
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<Segment>> {
        Self::read_range(self, offset, len)
    }
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        Self::extents(self, offset, len, max)
    }
}

/// An export whose bytes are in memory; blocks of all zeros are reported and read as
/// holes, as the repository reports blocks it stores as zero.
pub struct MemoryExport {
    name: String,
    bytes: Vec<u8>,
    block_size: u64,
}

impl MemoryExport {
    /// An export named `name` holding `bytes`, in blocks of `block_size` (at least 1).
    pub fn new(name: impl Into<String>, bytes: Vec<u8>, block_size: u64) -> Result<Self> {
        if block_size == 0 {
            return Err(Error::InvalidArgument("a block size of 0".into()));
        }
        Ok(Self {
            name: name.into(),
            bytes,
            block_size,
        })
    }

    fn check(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(offset as usize..end as usize),
            _ => Err(Error::InvalidArgument(format!(
                "range {offset}+{len} lies past the end of {} ({} bytes)",
                self.name,
                self.size()
            ))),
        }
    }

    /// The pieces of `range`, each inside one block, with whether its block is all zero.
    fn pieces(
        &self,
        range: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (usize, usize, bool)> + '_ {
        let bs = self.block_size as usize;
        let mut at = range.start;
        std::iter::from_fn(move || {
            if at >= range.end {
                return None;
            }
            let block_start = at / bs * bs;
            let block_end = block_start.saturating_add(bs).min(self.bytes.len());
            let zero = self.bytes[block_start..block_end].iter().all(|&b| b == 0);
            let piece = (at, block_end.min(range.end), zero);
            at = piece.1;
            Some(piece)
        })
    }
}

impl NbdExport for MemoryExport {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn block_size(&self) -> u64 {
        self.block_size
    }
    fn read_range(&self, offset: u64, len: u64) -> Result<Vec<Segment>> {
        let range = self.check(offset, len)?;
        let mut out: Vec<Segment> = Vec::new();
        for (start, stop, zero) in self.pieces(range) {
            let n = (stop - start) as u64;
            match out.last_mut() {
                Some(s) if s.data.is_none() == zero => {
                    s.len += n;
                    if let Some(d) = &mut s.data {
                        d.extend_from_slice(&self.bytes[start..stop]);
                    }
                }
                _ => out.push(Segment {
                    offset: start as u64,
                    len: n,
                    data: (!zero).then(|| self.bytes[start..stop].to_vec()),
                }),
            }
        }
        Ok(out)
    }
    fn extents(&self, offset: u64, len: u64, max: usize) -> Result<Vec<Extent>> {
        let range = self.check(offset, len)?;
        let mut out: Vec<Extent> = Vec::new();
        for (start, stop, zero) in self.pieces(range) {
            let n = (stop - start) as u64;
            if let Some(e) = out.last_mut().filter(|e| e.zero == zero) {
                e.len += n;
            } else if out.len() == max {
                break;
            } else {
                out.push(Extent { len: n, zero });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_export_reads_holes_and_data_and_reports_extents() {
        let mut bytes = vec![0u8; 4096];
        bytes[1024..1030].copy_from_slice(b"tesser");
        bytes[3100] = 7;
        let e = MemoryExport::new("d", bytes.clone(), 1024).unwrap();
        let segs = e.read_range(500, 3000).unwrap();
        let mut back = Vec::new();
        let mut at = 500;
        for s in &segs {
            assert_eq!(s.offset, at);
            match &s.data {
                Some(d) => back.extend_from_slice(d),
                None => back.extend(std::iter::repeat_n(0, s.len as usize)),
            }
            at += s.len;
        }
        assert_eq!(back, bytes[500..3500]);
        assert_eq!(
            segs.iter().map(|s| s.data.is_some()).collect::<Vec<_>>(),
            [false, true, false, true]
        );
        let ext = e.extents(0, 4096, 64).unwrap();
        let want = [(1024, true), (1024, false), (1024, true), (1024, false)];
        assert_eq!(ext, want.map(|(len, zero)| Extent { len, zero }));
        assert_eq!(e.extents(0, 4096, 2).unwrap().len(), 2);
        assert!(e.read_range(4000, 97).is_err());
        assert!(e.extents(u64::MAX, 2, 1).is_err());
        assert!(MemoryExport::new("d", Vec::new(), 0).is_err());
    }
}
