//! Reading a pack's table of contents: from its footer, or, when the footer is damaged, by
//! walking its self-describing records from the start (SPEC §4, §10); and checking a footer
//! against the pack's layout and the index ([`check_footer`], SPEC §11a).

use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, FooterEntry,
    FOOTER_ENTRY_LEN, PACK_HEADER_LEN, RECORD_HEADER_LEN, TRAILER_LEN,
};
use tessera_format::PackId;

use crate::error::{Error, Result};
use crate::storage::{Backend, ObjectKey};

/// A pack's contents as found on disk.
#[derive(Debug)]
pub struct PackContents {
    /// File size.
    pub size: u64,
    /// The objects.
    pub entries: Vec<FooterEntry>,
    /// Why the footer could not be used, when the records had to be scanned instead.
    pub footer_problem: Option<String>,
}

/// Reads the footer of `pack`, falling back to a record scan when it is damaged.
pub fn read_pack_contents(backend: &dyn Backend, pack: PackId) -> Result<PackContents> {
    let key = ObjectKey::pack(pack);
    let size = backend.size(&key)?.ok_or_else(|| Error::PackCorrupt {
        pack,
        reason: "the pack file is missing".into(),
    })?;
    match read_footer(backend, pack, size) {
        Ok(entries) => Ok(PackContents {
            size,
            entries,
            footer_problem: None,
        }),
        Err(problem) => {
            let entries = scan_records(backend, pack, size)?;
            Ok(PackContents {
                size,
                entries,
                footer_problem: Some(problem),
            })
        }
    }
}

fn read_footer(backend: &dyn Backend, pack: PackId, size: u64) -> Result<Vec<FooterEntry>, String> {
    let key = ObjectKey::pack(pack);
    if size < (PACK_HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(format!("{size} bytes is too short for a sealed pack"));
    }
    let header = backend
        .get_range(&key, 0, PACK_HEADER_LEN)
        .map_err(|e| e.to_string())?;
    decode_pack_header(&header).map_err(|e| e.to_string())?;
    let trailer_buf = backend
        .get_range(&key, size - TRAILER_LEN as u64, TRAILER_LEN)
        .map_err(|e| e.to_string())?;
    let trailer = decode_trailer(&trailer_buf, size).map_err(|e| e.to_string())?;
    let footer_len = (size - TRAILER_LEN as u64 - trailer.footer_offset) as usize;
    let footer = backend
        .get_range(&key, trailer.footer_offset, footer_len)
        .map_err(|e| e.to_string())?;
    decode_footer(&footer, &trailer).map_err(|e| e.to_string())
}

/// Walks records from the start of the pack, stopping at the first one that does not decode
/// (the footer, damage, or the end). Each record's stored bytes are CRC-checked, so a
/// record is only returned when it is intact.
pub fn scan_records(backend: &dyn Backend, pack: PackId, size: u64) -> Result<Vec<FooterEntry>> {
    let all = backend.get(&ObjectKey::pack(pack))?;
    if decode_pack_header(&all).is_err() {
        return Err(Error::PackCorrupt {
            pack,
            reason: "pack header is damaged; no record can be trusted".into(),
        });
    }
    let mut entries = Vec::new();
    let mut offset = PACK_HEADER_LEN as u64;
    while offset + RECORD_HEADER_LEN as u64 <= size {
        let Some(rest) = all.get(offset as usize..) else {
            break;
        };
        let Ok(info) = decode_record_header(rest) else {
            break;
        };
        let start = RECORD_HEADER_LEN;
        let Some(stored) = rest.get(start..start + info.stored_len as usize) else {
            break;
        };
        if crc32c::crc32c(stored) == info.stored_crc {
            entries.push(FooterEntry { info, offset });
        }
        offset += (RECORD_HEADER_LEN + info.stored_len as usize) as u64;
    }
    Ok(entries)
}

/// An object the index places in a pack: its kind, digest and index entry.
pub type Indexed = (
    tessera_format::ObjectKind,
    [u8; 32],
    crate::index::ObjectEntry,
);

/// Checks a pack's trailer and footer against its layout, its catalog entry and the index
/// (SPEC §4, §11a). Returns what is wrong, or `None` when the footer agrees with everything:
///
/// - the trailer and footer decode and their CRCs check out;
/// - the footer entries, in offset order, tile the record area exactly: the first record
///   starts at 16, each starts where the previous one ends, the last ends at the footer;
///   so a footer cannot point into the middle of a record or skip one;
/// - the catalog's object count equals the footer's entry count;
/// - every object the index places in the pack has a footer entry at the same offset with
///   the same kind, digest, lengths, codec and stored CRC (a pack file replaced by another
///   one fails here even though its own footer is intact).
///
/// The record headers themselves are compared with the index (hence with the footer) when
/// verify reads each object back. Reads only the trailer and the footer (56 bytes per
/// object); the footer is bounded by the file size.
pub fn check_footer(
    backend: &dyn Backend,
    pack: PackId,
    catalog_objects: Option<u32>,
    indexed: &[&Indexed],
) -> Result<Option<String>> {
    let Some(size) = backend.size(&ObjectKey::pack(pack))? else {
        return Ok(Some("the pack file is missing".into()));
    };
    let entries = match read_footer(backend, pack, size) {
        Ok(e) => e,
        Err(problem) => return Ok(Some(format!("footer or trailer is damaged: {problem}"))),
    };
    let footer_offset = size - TRAILER_LEN as u64 - (entries.len() * FOOTER_ENTRY_LEN) as u64;
    let mut by_offset: Vec<&FooterEntry> = entries.iter().collect();
    by_offset.sort_by_key(|e| e.offset);
    let mut next = PACK_HEADER_LEN as u64;
    for (i, e) in by_offset.iter().enumerate() {
        if e.offset != next {
            return Ok(Some(format!(
                "footer entry {i} (by offset) starts at {} but the previous record ends at {next}",
                e.offset
            )));
        }
        next = e
            .offset
            .saturating_add(RECORD_HEADER_LEN as u64 + u64::from(e.info.stored_len));
    }
    if next != footer_offset {
        return Ok(Some(format!(
            "footer entries end at {next} but the footer starts at {footer_offset}"
        )));
    }
    if let Some(n) = catalog_objects {
        if n as usize != entries.len() {
            return Ok(Some(format!(
                "the pack catalog says {n} objects, the footer lists {}",
                entries.len()
            )));
        }
    }
    for (kind, digest, entry) in indexed {
        let found = by_offset
            .binary_search_by_key(&entry.offset, |e| e.offset)
            .ok()
            .and_then(|i| by_offset.get(i));
        let agrees = found.is_some_and(|fe| {
            fe.info.kind == *kind
                && fe.info.digest.as_bytes() == digest
                && fe.info.stored_len == entry.stored_len
                && fe.info.raw_len == entry.raw_len
                && fe.info.codec == entry.codec
                && fe.info.stored_crc == entry.stored_crc
        });
        if !agrees {
            return Ok(Some(match found {
                Some(fe) => format!(
                    "the index places {kind:?} {} at offset {}, but the footer lists {:?} {} (stored length {}) there",
                    hex::encode(digest),
                    entry.offset,
                    fe.info.kind,
                    fe.info.digest,
                    fe.info.stored_len
                ),
                None => format!(
                    "the index places {kind:?} {} at offset {}, where the footer lists no record",
                    hex::encode(digest),
                    entry.offset
                ),
            }));
        }
    }
    Ok(None)
}
