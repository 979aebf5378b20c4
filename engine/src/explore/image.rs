//! Byte-addressed, read-only volumes: a whole disk, or a [`Slice`] of one (a partition).

use std::sync::Arc;

use super::FsError;

/// A read-only run of bytes that can be read at any offset, from several threads.
pub trait Image: Send + Sync {
    /// Its length in bytes.
    fn len(&self) -> u64;

    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`. The range must lie inside the image: callers check it
    /// with [`check_range`] first, implementations check it again.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;

    /// Fills `buf` from `offset`, refusing a range past the end with a message naming `what`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), FsError> {
        check_range(self.len(), offset, buf.len() as u64, what)?;
        self.read_at(offset, buf)
    }

    /// `len` bytes from `offset` in a new buffer (for metadata: `len` must be bounded by the
    /// caller).
    fn read_vec(&self, offset: u64, len: usize, what: &str) -> Result<Vec<u8>, FsError> {
        let mut buf = vec![0; len];
        self.read_exact_at(offset, &mut buf, what)?;
        Ok(buf)
    }
}

/// Refuses `offset..offset+len` unless it lies inside `0..size`.
pub fn check_range(size: u64, offset: u64, len: u64, what: &str) -> Result<(), FsError> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(FsError::corrupt(format!(
            "{what} at byte {offset} (+{len}) lies past the end of the volume ({size} bytes)"
        ))),
    }
}

impl Image for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        check_range(Image::len(self), offset, buf.len() as u64, "a read")?;
        let start = offset as usize;
        buf.copy_from_slice(&self[start..start + buf.len()]);
        Ok(())
    }
}

/// `len` bytes of another image from `start`: a partition or a logical volume.
#[derive(Clone)]
pub struct Slice {
    inner: Arc<dyn Image>,
    start: u64,
    len: u64,
}

impl Slice {
    /// The part `start..start+len` of `inner`; refused when it does not lie inside.
    pub fn new(inner: Arc<dyn Image>, start: u64, len: u64) -> Result<Self, FsError> {
        check_range(inner.len(), start, len, "a partition")?;
        Ok(Self { inner, start, len })
    }

    /// Where it starts in the image it is part of.
    pub fn start(&self) -> u64 {
        self.start
    }
}

impl Image for Slice {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        check_range(self.len, offset, buf.len() as u64, "a read")?;
        self.inner.read_at(self.start + offset, buf)
    }
}

/// Little-endian fields of a structure already read, with bounds checks that turn a short
/// structure into [`FsError::Corrupt`] instead of a panic.
pub(crate) struct Le<'a> {
    bytes: &'a [u8],
    what: &'a str,
}

impl<'a> Le<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'a str) -> Self {
        Self { bytes, what }
    }

    pub(crate) fn bytes(&self, at: usize, len: usize) -> Result<&'a [u8], FsError> {
        at.checked_add(len)
            .and_then(|end| self.bytes.get(at..end))
            .ok_or_else(|| {
                FsError::corrupt(format!(
                    "{} is too short ({} bytes) for a field at {at}+{len}",
                    self.what,
                    self.bytes.len()
                ))
            })
    }

    pub(crate) fn u8(&self, at: usize) -> Result<u8, FsError> {
        Ok(self.bytes(at, 1)?[0])
    }

    pub(crate) fn u16(&self, at: usize) -> Result<u16, FsError> {
        let b = self.bytes(at, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&self, at: usize) -> Result<u32, FsError> {
        let b = self.bytes(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&self, at: usize) -> Result<u64, FsError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(at, 8)?);
        Ok(u64::from_le_bytes(a))
    }
}
