//! Reading a pack's table of contents: from its footer, or, when the footer is damaged, by
//! walking its self-describing records from the start.

use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, FooterEntry,
    PACK_HEADER_LEN, RECORD_HEADER_LEN, TRAILER_LEN,
};
use tessera_format::PackId;

use crate::backend::{Backend, Namespace};
use crate::error::{Error, Result};

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
    let name = pack.to_hex();
    let size = backend.size(Namespace::Packs, &name)?;
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
    let name = pack.to_hex();
    if size < (PACK_HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(format!("{size} bytes is too short for a sealed pack"));
    }
    let header = backend
        .read_range(Namespace::Packs, &name, 0, PACK_HEADER_LEN)
        .map_err(|e| e.to_string())?;
    decode_pack_header(&header).map_err(|e| e.to_string())?;
    let trailer_buf = backend
        .read_range(
            Namespace::Packs,
            &name,
            size - TRAILER_LEN as u64,
            TRAILER_LEN,
        )
        .map_err(|e| e.to_string())?;
    let trailer = decode_trailer(&trailer_buf, size).map_err(|e| e.to_string())?;
    let footer_len = (size - TRAILER_LEN as u64 - trailer.footer_offset) as usize;
    let footer = backend
        .read_range(Namespace::Packs, &name, trailer.footer_offset, footer_len)
        .map_err(|e| e.to_string())?;
    decode_footer(&footer, &trailer).map_err(|e| e.to_string())
}

/// Walks records from the start of the pack, stopping at the first one that does not decode
/// (the footer, damage, or the end). Each record's stored bytes are CRC-checked, so a
/// record is only returned when it is intact.
pub fn scan_records(backend: &dyn Backend, pack: PackId, size: u64) -> Result<Vec<FooterEntry>> {
    let name = pack.to_hex();
    let all = backend.read_all(Namespace::Packs, &name)?;
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
