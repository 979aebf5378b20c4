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
//! stored (possibly compressed) bytes without decompressing or re-hashing them. Reserved
//! fields are written as zero and decoders refuse any other value.

use crate::codec::{
    checksummed, push_crc_trailer, put_u16, put_u32, put_u64, split_crc_trailer, to_u32, Reader,
};
use crate::{ChunkDigest, DecodeError, EncodeError};

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
/// Trailer bytes before the end magic: the fields and the CRC-32C that covers them.
const TRAILER_CHECKED_LEN: usize = TRAILER_LEN - PACK_END_MAGIC.len();
/// Largest raw length of one object, and largest stored length of a plain one (a 8 MiB
/// block; pages are far smaller). Bounds every allocation and every decompression (no
/// decompression bombs).
pub const MAX_OBJECT_LEN: u32 = 8 * 1024 * 1024;
/// Bytes the AEAD envelope of an encrypted repository adds to a record's encoded bytes
/// (writer id 16, counter 8, tag 16; SPEC.md §23.3).
pub const SEALED_OVERHEAD: u32 = 40;
/// Largest stored length of any record: an incompressible 8 MiB block, sealed.
pub const MAX_STORED_LEN: u32 = MAX_OBJECT_LEN + SEALED_OVERHEAD;
/// Version written in pack headers. The pack layout is the same in format 1 and 2 (an
/// encrypted repository's records carry their envelope inside the stored bytes), so packs
/// stay version 1 and a plain repository remains readable by releases before format 2.
pub const PACK_VERSION: u32 = 1;

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
    /// Checks the rules every record header and footer entry obeys: a raw length of at
    /// most [`MAX_OBJECT_LEN`], a stored length of at most [`MAX_STORED_LEN`], and for
    /// `codec = none` a stored length equal to the raw length, or to the raw length plus
    /// [`SEALED_OVERHEAD`] (a sealed record; the engine checks which one its repository
    /// uses).
    fn check(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.raw_len > MAX_OBJECT_LEN || self.stored_len > MAX_STORED_LEN {
            return Err(DecodeError::invalid(
                what,
                format!(
                    "object length raw {} / stored {} exceeds {MAX_OBJECT_LEN} / {MAX_STORED_LEN}",
                    self.raw_len, self.stored_len
                ),
            ));
        }
        if self.codec == Codec::None
            && self.raw_len != self.stored_len
            && self.raw_len.checked_add(SEALED_OVERHEAD) != Some(self.stored_len)
        {
            return Err(DecodeError::invalid(
                what,
                "uncompressed object with raw length != stored length",
            ));
        }
        Ok(())
    }
}

/// Encodes the pack header.
pub fn encode_pack_header() -> [u8; PACK_HEADER_LEN] {
    let mut out = Vec::with_capacity(PACK_HEADER_LEN);
    out.extend_from_slice(PACK_MAGIC);
    put_u32(&mut out, PACK_VERSION);
    put_u32(&mut out, 0);
    let mut arr = [0u8; PACK_HEADER_LEN];
    arr.copy_from_slice(&out);
    arr
}

/// Checks the pack header in the first [`PACK_HEADER_LEN`] bytes of `buf` (the rest of
/// `buf`, if any, is ignored): magic, supported version, zero reserved field.
pub fn decode_pack_header(buf: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(buf, "pack header");
    r.magic(PACK_MAGIC)?;
    // Packs have one layout in every repository format (sealed records are told apart by
    // their codec), so only PACK_VERSION is a pack header's version.
    let version = r.u32()?;
    if version != PACK_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            what: "pack header",
            version,
            supported: PACK_VERSION,
        });
    }
    r.reserved::<4>()
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
    r.reserved::<2>()?;
    let info = ObjectInfo {
        kind,
        codec,
        digest: ChunkDigest(r.array()?),
        raw_len: r.u32()?,
        stored_len: r.u32()?,
        stored_crc: r.u32()?,
    };
    info.check(what)?;
    Ok(info)
}

/// Names a record header in errors.
const RECORD_WHAT: &str = "pack record header";

/// Encodes a record header: magic, info, then a CRC-32C over the preceding 52 bytes.
/// Refuses an `info` that [`decode_record_header`] would refuse.
pub fn encode_record_header(info: &ObjectInfo) -> Result<[u8; RECORD_HEADER_LEN], EncodeError> {
    info.check(RECORD_WHAT)?;
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN);
    out.extend_from_slice(RECORD_MAGIC);
    put_info(&mut out, info);
    push_crc_trailer(&mut out);
    let mut arr = [0u8; RECORD_HEADER_LEN];
    arr.copy_from_slice(&out);
    Ok(arr)
}

/// Decodes and checks the record header in the first [`RECORD_HEADER_LEN`] bytes of `buf`
/// (the rest of `buf`, if any, is ignored).
pub fn decode_record_header(buf: &[u8]) -> Result<ObjectInfo, DecodeError> {
    let buf = buf.get(..RECORD_HEADER_LEN).ok_or(DecodeError::Truncated {
        what: RECORD_WHAT,
        needed: RECORD_HEADER_LEN,
        available: buf.len(),
    })?;
    let ((), mut r) = checksummed(buf, RECORD_WHAT, |r| r.magic(RECORD_MAGIC))?;
    let info = read_info(&mut r, RECORD_WHAT)?;
    r.finish()?;
    Ok(info)
}

/// Names the footer in errors.
const FOOTER_WHAT: &str = "pack footer";
/// Names the trailer in errors.
const TRAILER_WHAT: &str = "pack trailer";

/// One entry of the footer index: the object's info and the offset of its record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FooterEntry {
    /// The object.
    pub info: ObjectInfo,
    /// Offset of the record header within the pack.
    pub offset: u64,
}

impl FooterEntry {
    /// Offset of the stored bytes (just past the record header). Exact for every decoded
    /// entry (its record lies before the footer); saturates for a hand-made one.
    pub fn data_offset(&self) -> u64 {
        self.offset.saturating_add(RECORD_HEADER_LEN as u64)
    }

    /// Checks the info and that the record lies between the pack header and `footer_offset`.
    fn check(&self, footer_offset: u64) -> Result<(), DecodeError> {
        self.info.check(FOOTER_WHAT)?;
        let end = self
            .data_offset()
            .checked_add(u64::from(self.info.stored_len));
        if self.offset < PACK_HEADER_LEN as u64 || end.is_none_or(|end| end > footer_offset) {
            return Err(DecodeError::invalid(
                FOOTER_WHAT,
                format!(
                    "entry at {} with {} stored bytes lies outside the record area {PACK_HEADER_LEN}..{footer_offset}",
                    self.offset, self.info.stored_len
                ),
            ));
        }
        Ok(())
    }
}

/// Encodes footer entries followed by the trailer. `footer_offset` is where the first
/// entry starts (the length of the pack so far). Refuses entries and offsets that
/// [`decode_trailer`] and [`decode_footer`] would refuse.
pub fn encode_footer(entries: &[FooterEntry], footer_offset: u64) -> Result<Vec<u8>, EncodeError> {
    let trailer = Trailer {
        footer_offset,
        count: to_u32(FOOTER_WHAT, "entries", entries.len())?,
        footer_crc: 0,
    };
    let pack_len = trailer.pack_len().ok_or_else(|| trailer.misfit(u64::MAX))?;
    trailer.check(pack_len)?;
    let mut out = Vec::with_capacity(
        entries
            .len()
            .saturating_mul(FOOTER_ENTRY_LEN)
            .saturating_add(TRAILER_LEN),
    );
    for e in entries {
        e.check(footer_offset)?;
        put_info(&mut out, &e.info);
        put_u64(&mut out, e.offset);
    }
    let footer_crc = crc32c::crc32c(&out);
    let mut trailer_bytes = Vec::with_capacity(TRAILER_LEN);
    put_u64(&mut trailer_bytes, footer_offset);
    put_u32(&mut trailer_bytes, trailer.count);
    put_u32(&mut trailer_bytes, footer_crc);
    put_u32(&mut trailer_bytes, 0);
    push_crc_trailer(&mut trailer_bytes);
    trailer_bytes.extend_from_slice(PACK_END_MAGIC);
    out.extend_from_slice(&trailer_bytes);
    Ok(out)
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

impl Trailer {
    /// Length of the pack this trailer ends: `footer_offset + 56·count + 32`, or `None`
    /// when that does not fit a `u64`.
    pub fn pack_len(&self) -> Option<u64> {
        (FOOTER_ENTRY_LEN as u64)
            .checked_mul(u64::from(self.count))
            .and_then(|footer_len| footer_len.checked_add(TRAILER_LEN as u64))
            .and_then(|tail| tail.checked_add(self.footer_offset))
    }

    /// Checks that the footer starts after the pack header and ends where the trailer does.
    fn check(&self, pack_len: u64) -> Result<(), DecodeError> {
        if self.footer_offset < PACK_HEADER_LEN as u64 || self.pack_len() != Some(pack_len) {
            return Err(self.misfit(pack_len));
        }
        Ok(())
    }

    fn misfit(&self, pack_len: u64) -> DecodeError {
        DecodeError::invalid(
            TRAILER_WHAT,
            format!(
                "footer at {} with {} entries does not fit a pack of {pack_len} bytes",
                self.footer_offset, self.count
            ),
        )
    }
}

/// Decodes the last [`TRAILER_LEN`] bytes of a pack of `pack_len` bytes.
pub fn decode_trailer(buf: &[u8], pack_len: u64) -> Result<Trailer, DecodeError> {
    let Some((checked, end_magic)) = buf.split_at_checked(TRAILER_CHECKED_LEN) else {
        return Err(DecodeError::Truncated {
            what: TRAILER_WHAT,
            needed: TRAILER_LEN,
            available: buf.len(),
        });
    };
    let mut magic = Reader::new(end_magic, TRAILER_WHAT);
    magic.magic(PACK_END_MAGIC)?;
    magic.finish()?;
    let mut r = Reader::new(split_crc_trailer(checked, TRAILER_WHAT)?, TRAILER_WHAT);
    let trailer = Trailer {
        footer_offset: r.u64()?,
        count: r.u32()?,
        footer_crc: r.u32()?,
    };
    r.reserved::<4>()?;
    r.finish()?;
    trailer.check(pack_len)?;
    Ok(trailer)
}

/// Decodes the footer entries (the bytes between `footer_offset` and the trailer).
pub fn decode_footer(buf: &[u8], trailer: &Trailer) -> Result<Vec<FooterEntry>, DecodeError> {
    let got = crc32c::crc32c(buf);
    if got != trailer.footer_crc {
        return Err(DecodeError::ChecksumMismatch {
            what: FOOTER_WHAT,
            expected: trailer.footer_crc,
            got,
        });
    }
    let mut r = Reader::new(buf, FOOTER_WHAT);
    let count = trailer.count as usize;
    let mut entries = Vec::with_capacity(count.min(buf.len() / FOOTER_ENTRY_LEN));
    for _ in 0..count {
        let entry = FooterEntry {
            info: read_info(&mut r, FOOTER_WHAT)?,
            offset: r.u64()?,
        };
        entry.check(trailer.footer_offset)?;
        entries.push(entry);
    }
    r.finish()?;
    Ok(entries)
}
