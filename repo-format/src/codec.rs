//! Little-endian encoding primitives shared by every on-disk structure.
//!
//! [`Reader`] is a bounds-checked cursor: every read either returns the value or a
//! [`DecodeError::Truncated`] naming the structure, so decoders built on it cannot panic
//! on short or hostile input. It also holds the checks every structure shares, written
//! once: the magic ([`Reader::magic`]), the format version ([`Reader::version`]), reserved
//! fields ([`Reader::reserved`]) and, through [`checksummed`], the trailing CRC-32C, which
//! is verified only after the magic and version so that a file from a newer tessera is
//! reported as such and not as corruption. [`put_u32`] and friends append to a `Vec<u8>`;
//! the length-prefix writers are fallible, so a count that does not fit its field is
//! refused rather than truncated.

use crate::{DecodeError, EncodeError, FORMAT_VERSION};

/// Upper bound for any length-prefixed string (names, tags). Protects against absurd allocations.
pub const MAX_STRING_LEN: usize = 64 * 1024;

/// A bounds-checked little-endian cursor over a byte slice.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the structure in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Bytes consumed so far: the offset of the next read within the structure.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let Some((head, tail)) = self.buf.split_at_checked(n) else {
            return Err(DecodeError::Truncated {
                what: self.what,
                needed: n,
                available: self.buf.len(),
            });
        };
        self.buf = tail;
        // Cannot overflow: `pos + buf.len()` is the length of the original slice.
        self.pos = self.pos.saturating_add(n);
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
        let [b] = self.array::<1>()?;
        Ok(b)
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
        check_string_len(self.what, len)?;
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

    /// Checks that the next bytes are `magic`, the constant every structure starts (or,
    /// for the pack trailer, ends) with.
    pub fn magic(&mut self, magic: &[u8]) -> Result<(), DecodeError> {
        let found = self.take(magic.len())?;
        if found == magic {
            Ok(())
        } else {
            Err(DecodeError::BadMagic {
                what: self.what,
                found: found.to_vec(),
            })
        }
    }

    /// Reads a format version and refuses 0 and any version newer than [`FORMAT_VERSION`].
    pub fn version(&mut self) -> Result<u32, DecodeError> {
        let version = self.u32()?;
        check_version(self.what, version)?;
        Ok(version)
    }

    /// Reads an `N`-byte reserved field, which must be zero.
    pub fn reserved<const N: usize>(&mut self) -> Result<(), DecodeError> {
        let offset = self.pos;
        if self.array::<N>()? == [0u8; N] {
            Ok(())
        } else {
            Err(DecodeError::ReservedNotZero {
                what: self.what,
                offset,
            })
        }
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

/// Refuses format version 0 and any version newer than [`FORMAT_VERSION`].
pub fn check_version(what: &'static str, version: u32) -> Result<(), DecodeError> {
    if version == 0 || version > FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what,
            version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// Refuses a string longer than [`MAX_STRING_LEN`] bytes.
pub fn check_string_len(what: &'static str, len: usize) -> Result<(), DecodeError> {
    check_count(what, "string bytes", len, MAX_STRING_LEN)
}

/// Refuses `count` above `max` with [`DecodeError::TooMany`].
pub fn check_count(
    what: &'static str,
    field: &'static str,
    count: usize,
    max: usize,
) -> Result<(), DecodeError> {
    if count > max {
        return Err(DecodeError::TooMany {
            what,
            field,
            count: count as u64,
            max: max as u64,
        });
    }
    Ok(())
}

/// Decodes a structure that ends in a CRC-32C of everything before it: runs `preamble`
/// (magic, version) on the raw bytes, so those errors win over a checksum mismatch, then
/// checks the CRC and returns the preamble's result and a reader over the checked body,
/// positioned just past the preamble.
pub fn checksummed<'a, T>(
    buf: &'a [u8],
    what: &'static str,
    preamble: impl FnOnce(&mut Reader<'a>) -> Result<T, DecodeError>,
) -> Result<(T, Reader<'a>), DecodeError> {
    let mut raw = Reader::new(buf, what);
    let value = preamble(&mut raw)?;
    let mut body = Reader::new(split_crc_trailer(buf, what)?, what);
    body.take(raw.position())?;
    Ok((value, body))
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

/// Converts a count or length to the `u32` its field holds, refusing one that does not fit.
pub fn to_u32(what: &'static str, field: &'static str, n: usize) -> Result<u32, EncodeError> {
    u32::try_from(n).map_err(|_| {
        EncodeError::from(DecodeError::TooMany {
            what,
            field,
            count: n as u64,
            max: u64::from(u32::MAX),
        })
    })
}

/// Appends a `u32` count or length, refusing one that does not fit.
pub fn put_len(
    out: &mut Vec<u8>,
    what: &'static str,
    field: &'static str,
    n: usize,
) -> Result<(), EncodeError> {
    put_u32(out, to_u32(what, field, n)?);
    Ok(())
}

/// Appends a `u32`-length-prefixed string, refusing one longer than [`MAX_STRING_LEN`]
/// (which [`Reader::string`] would refuse).
pub fn put_string(out: &mut Vec<u8>, what: &'static str, s: &str) -> Result<(), EncodeError> {
    check_string_len(what, s.len())?;
    put_len(out, what, "string bytes", s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
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
    let expected = Reader::new(trailer, what).u32()?;
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
