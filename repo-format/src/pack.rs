//! Pack files: compressed chunks and manifest pages appended one after another, followed by
//! a footer index.
//!
//! ```text
//! pack    = header record* footer trailer
//! header  = "TSRPACK1" version:u32 reserved:u32                       (16 bytes)
//! record  = record_header stored_bytes                                (56 + stored_len)
//! footer  = footer_entry * count                                      (56 bytes each)
//! trailer = footer_offset:u64 count:u32 footer_crc:u32 reserved:u32
//!           trailer_crc:u32 "TSRPEND1"                                (32 bytes)
//! ```
//!
//! Records are self-describing (they repeat everything the footer says), so a pack whose
//! footer is damaged can still be indexed by scanning records from the start. Both layers
//! carry CRC-32C checksums: the record header checks itself, and `stored_crc` checks the
//! stored (possibly compressed) bytes without decompressing or re-hashing them.

use crate::codec::{expect_magic, put_u16, put_u32, put_u64, Reader};
use crate::{ChunkDigest, DecodeError, FORMAT_VERSION};

/// Magic at the start of every pack.
pub const PACK_MAGIC: &[u8; 8] = b"TSRPACK1";
/// Magic at the very end of every sealed pack.
pub const PACK_END_MAGIC: &[u8; 8] = b"TSRPEND1";
/// Magic at the start of every record.
pub const RECORD_MAGIC: &[u8; 4] = b"TREC";
/// Size of the pack header.
pub const PACK_HEADER_LEN: usize = 16;
/// Size of a record header.
pub const RECORD_HEADER_LEN: usize = 56;
/// Size of one footer entry.
pub const FOOTER_ENTRY_LEN: usize = 56;
/// Size of the trailer.
pub const TRAILER_LEN: usize = 32;
/// Largest raw or stored length of one object (a 8 MiB block; pages are far smaller).
/// Bounds every allocation and every decompression (no decompression bombs).
pub const MAX_OBJECT_LEN: u32 = 8 * 1024 * 1024;

/// What an object in a pack is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A data block of a disk.
    Chunk = 1,
    /// An encoded manifest page.
    Page = 2,
}

impl TryFrom<u8> for ObjectKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Chunk),
            2 => Ok(Self::Page),
            other => Err(DecodeError::invalid(
                "object kind",
                format!("unknown kind {other}"),
            )),
        }
    }
}

/// How the stored bytes of an object are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Stored as is (used whenever compression does not shrink the object).
    None = 0,
    /// A single zstd frame.
    Zstd = 1,
}

impl TryFrom<u8> for Codec {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            0 => Ok(Self::None),
            1 => Ok(Self::Zstd),
            other => Err(DecodeError::invalid(
                "codec",
                format!("unknown codec {other}"),
            )),
        }
    }
}

/// Everything known about one stored object: shared by record headers and footer entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Chunk or page.
    pub kind: ObjectKind,
    /// Encoding of the stored bytes.
    pub codec: Codec,
    /// SHA-256 of the raw bytes (a page digest for pages, stored in the same 32 bytes).
    pub digest: ChunkDigest,
    /// Length of the raw bytes.
    pub raw_len: u32,
    /// Length of the stored bytes.
    pub stored_len: u32,
    /// CRC-32C of the stored bytes.
    pub stored_crc: u32,
}

impl ObjectInfo {
    fn validate(self, what: &'static str) -> Result<Self, DecodeError> {
        if self.raw_len > MAX_OBJECT_LEN || self.stored_len > MAX_OBJECT_LEN {
            return Err(DecodeError::invalid(
                what,
                format!(
                    "object length raw {} / stored {} exceeds {MAX_OBJECT_LEN}",
                    self.raw_len, self.stored_len
                ),
            ));
        }
        if self.codec == Codec::None && self.raw_len != self.stored_len {
            return Err(DecodeError::invalid(
                what,
                "uncompressed object with raw length != stored length",
            ));
        }
        Ok(self)
    }
}

/// Encodes the pack header.
pub fn encode_pack_header() -> [u8; PACK_HEADER_LEN] {
    let mut out = Vec::with_capacity(PACK_HEADER_LEN);
    out.extend_from_slice(PACK_MAGIC);
    put_u32(&mut out, FORMAT_VERSION);
    put_u32(&mut out, 0);
    let mut arr = [0u8; PACK_HEADER_LEN];
    arr.copy_from_slice(&out);
    arr
}

/// Checks a pack header.
pub fn decode_pack_header(buf: &[u8]) -> Result<(), DecodeError> {
    const WHAT: &str = "pack header";
    let mut r = Reader::new(buf, WHAT);
    expect_magic(&mut r, PACK_MAGIC, WHAT)?;
    let version = r.u32()?;
    if version == 0 || version > FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: WHAT,
            version,
            supported: FORMAT_VERSION,
        });
    }
    r.u32()?;
    Ok(())
}

fn put_info(out: &mut Vec<u8>, info: &ObjectInfo) {
    out.push(info.kind as u8);
    out.push(info.codec as u8);
    put_u16(out, 0);
    out.extend_from_slice(info.digest.as_bytes());
    put_u32(out, info.raw_len);
    put_u32(out, info.stored_len);
    put_u32(out, info.stored_crc);
}

fn read_info(r: &mut Reader<'_>, what: &'static str) -> Result<ObjectInfo, DecodeError> {
    let kind = ObjectKind::try_from(r.u8()?)?;
    let codec = Codec::try_from(r.u8()?)?;
    r.u16()?;
    let digest = ChunkDigest(r.array()?);
    let raw_len = r.u32()?;
    let stored_len = r.u32()?;
    let stored_crc = r.u32()?;
    ObjectInfo {
        kind,
        codec,
        digest,
        raw_len,
        stored_len,
        stored_crc,
    }
    .validate(what)
}

/// Encodes a record header: magic, info, then a CRC-32C over the preceding 52 bytes.
pub fn encode_record_header(info: &ObjectInfo) -> [u8; RECORD_HEADER_LEN] {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN);
    out.extend_from_slice(RECORD_MAGIC);
    put_info(&mut out, info);
    crate::codec::push_crc_trailer(&mut out);
    let mut arr = [0u8; RECORD_HEADER_LEN];
    arr.copy_from_slice(&out);
    arr
}

/// Decodes and checks a record header.
pub fn decode_record_header(buf: &[u8]) -> Result<ObjectInfo, DecodeError> {
    const WHAT: &str = "pack record header";
    let buf = buf.get(..RECORD_HEADER_LEN).ok_or(DecodeError::Truncated {
        what: WHAT,
        needed: RECORD_HEADER_LEN,
        available: buf.len(),
    })?;
    let mut r = Reader::new(buf, WHAT);
    let magic = r.array::<4>()?;
    if &magic != RECORD_MAGIC {
        return Err(DecodeError::BadMagic {
            what: WHAT,
            found: magic.to_vec(),
        });
    }
    let body = crate::codec::split_crc_trailer(buf, WHAT)?;
    let mut r = Reader::new(body, WHAT);
    r.take(4)?;
    let info = read_info(&mut r, WHAT)?;
    r.finish()?;
    Ok(info)
}

/// One entry of the footer index: the object's info and the offset of its record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FooterEntry {
    /// The object.
    pub info: ObjectInfo,
    /// Offset of the record header within the pack.
    pub offset: u64,
}

impl FooterEntry {
    /// Offset of the stored bytes (just past the record header).
    pub fn data_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_LEN as u64
    }
}

/// Encodes footer entries followed by the trailer. `footer_offset` is where the first entry starts.
pub fn encode_footer(entries: &[FooterEntry], footer_offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * FOOTER_ENTRY_LEN + TRAILER_LEN);
    for e in entries {
        put_info(&mut out, &e.info);
        put_u64(&mut out, e.offset);
    }
    let footer_crc = crc32c::crc32c(&out);
    let trailer_start = out.len();
    put_u64(&mut out, footer_offset);
    put_u32(&mut out, entries.len() as u32);
    put_u32(&mut out, footer_crc);
    put_u32(&mut out, 0);
    let trailer_crc = crc32c::crc32c(out.get(trailer_start..).unwrap_or_default());
    put_u32(&mut out, trailer_crc);
    out.extend_from_slice(PACK_END_MAGIC);
    out
}

/// The decoded trailer: where the footer is and how many entries it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the first footer entry.
    pub footer_offset: u64,
    /// Number of entries.
    pub count: u32,
    /// CRC-32C of the footer entries.
    pub footer_crc: u32,
}

/// Decodes the last [`TRAILER_LEN`] bytes of a pack of `pack_len` bytes.
pub fn decode_trailer(buf: &[u8], pack_len: u64) -> Result<Trailer, DecodeError> {
    const WHAT: &str = "pack trailer";
    if buf.len() != TRAILER_LEN {
        return Err(DecodeError::Truncated {
            what: WHAT,
            needed: TRAILER_LEN,
            available: buf.len(),
        });
    }
    let (body, magic) = buf.split_at(TRAILER_LEN - 8);
    if magic != PACK_END_MAGIC {
        return Err(DecodeError::BadMagic {
            what: WHAT,
            found: magic.to_vec(),
        });
    }
    let checked = crate::codec::split_crc_trailer(body, WHAT)?;
    let mut r = Reader::new(checked, WHAT);
    let footer_offset = r.u64()?;
    let count = r.u32()?;
    let footer_crc = r.u32()?;
    r.u32()?;
    r.finish()?;
    let expected_end = footer_offset
        .checked_add(u64::from(count) * FOOTER_ENTRY_LEN as u64)
        .and_then(|v| v.checked_add(TRAILER_LEN as u64));
    if footer_offset < PACK_HEADER_LEN as u64 || expected_end != Some(pack_len) {
        return Err(DecodeError::invalid(WHAT, format!("footer at {footer_offset} with {count} entries does not fit a pack of {pack_len} bytes")));
    }
    Ok(Trailer {
        footer_offset,
        count,
        footer_crc,
    })
}

/// Decodes the footer entries (the bytes between `footer_offset` and the trailer).
pub fn decode_footer(buf: &[u8], trailer: &Trailer) -> Result<Vec<FooterEntry>, DecodeError> {
    const WHAT: &str = "pack footer";
    let got = crc32c::crc32c(buf);
    if got != trailer.footer_crc {
        return Err(DecodeError::ChecksumMismatch {
            what: WHAT,
            expected: trailer.footer_crc,
            got,
        });
    }
    let mut r = Reader::new(buf, WHAT);
    let mut entries =
        Vec::with_capacity((trailer.count as usize).min(buf.len() / FOOTER_ENTRY_LEN));
    for _ in 0..trailer.count {
        let info = read_info(&mut r, WHAT)?;
        let offset = r.u64()?;
        let end = offset + RECORD_HEADER_LEN as u64 + u64::from(info.stored_len);
        if offset < PACK_HEADER_LEN as u64 || end > trailer.footer_offset {
            return Err(DecodeError::invalid(
                WHAT,
                format!("entry at {offset} lies outside the record area"),
            ));
        }
        entries.push(FooterEntry { info, offset });
    }
    r.finish()?;
    Ok(entries)
}
