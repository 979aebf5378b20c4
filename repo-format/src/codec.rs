//! Little-endian encoding primitives shared by every on-disk structure.
//!
//! [`Reader`] is a bounds-checked cursor: every read either returns the value or a
//! [`DecodeError::Truncated`] naming the structure, so decoders built on it cannot panic
//! on short or hostile input. [`put_u32`] and friends append to a `Vec<u8>`.

use crate::DecodeError;

/// Upper bound for any length-prefixed string (names, tags). Protects against absurd allocations.
pub const MAX_STRING_LEN: usize = 64 * 1024;

/// A bounds-checked little-endian cursor over a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Reads a little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// Reads a `u32`-length-prefixed UTF-8 string of at most [`MAX_STRING_LEN`] bytes.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        if len > MAX_STRING_LEN {
            return Err(DecodeError::invalid(
                self.what,
                format!("string of {len} bytes exceeds the {MAX_STRING_LEN}-byte limit"),
            ));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| DecodeError::invalid(self.what, "string is not valid UTF-8"))
    }

    /// Reads a `u32` element count and checks that `count * min_element_size` bytes can
    /// still follow, so a hostile count cannot trigger a huge allocation.
    pub fn count(&mut self, min_element_size: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let needed = count.saturating_mul(min_element_size.max(1));
        if needed > self.buf.len() {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed,
                available: self.buf.len(),
            });
        }
        Ok(count)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::invalid(
                self.what,
                format!("{} unexpected trailing bytes", self.buf.len()),
            ))
        }
    }
}

/// Appends a little-endian `u16`.
pub fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `i64`.
pub fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a `u32`-length-prefixed string. Strings longer than [`MAX_STRING_LEN`] are a
/// caller bug (inputs are validated before encoding), so they are cut at that limit on a
/// character boundary rather than writing something the decoder would refuse.
pub fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_STRING_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = s.get(..end).unwrap_or_default();
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

/// Checks a trailing CRC-32C: `buf` is `body || crc32c(body) as u32 LE`. Returns the body.
pub fn split_crc_trailer<'a>(buf: &'a [u8], what: &'static str) -> Result<&'a [u8], DecodeError> {
    let Some(body_len) = buf.len().checked_sub(4) else {
        return Err(DecodeError::Truncated {
            what,
            needed: 4,
            available: buf.len(),
        });
    };
    let (body, trailer) = buf.split_at(body_len);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(trailer);
    let expected = u32::from_le_bytes(crc);
    let got = crc32c::crc32c(body);
    if expected == got {
        Ok(body)
    } else {
        Err(DecodeError::ChecksumMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Appends `crc32c(out)` to `out`, the counterpart of [`split_crc_trailer`].
pub fn push_crc_trailer(out: &mut Vec<u8>) {
    let crc = crc32c::crc32c(out);
    put_u32(out, crc);
}

/// Checks an 8-byte magic at the start of `r`.
pub fn expect_magic(
    r: &mut Reader<'_>,
    magic: &[u8; 8],
    what: &'static str,
) -> Result<(), DecodeError> {
    let found = r.array::<8>()?;
    if &found == magic {
        Ok(())
    } else {
        Err(DecodeError::BadMagic {
            what,
            found: found.to_vec(),
        })
    }
}
