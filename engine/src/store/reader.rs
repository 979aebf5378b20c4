//! Reading objects back, checking every layer: record header, stored-bytes CRC, decoded
//! length, and finally the SHA-256 of the raw bytes against the digest that named them.

use tessera_format::pack::{decode_record_header, RECORD_HEADER_LEN};
use tessera_format::{ChunkDigest, ObjectInfo, ObjectKind, PageDigest};

use crate::backend::{Backend, Namespace};
use crate::error::{Error, Result};
use crate::index::ObjectEntry;
use crate::store::encode::decode_stored;

/// Reads and fully checks the object `digest` of `kind` at the location `entry` gives.
pub fn read_object(
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<Vec<u8>> {
    read_checked(backend, kind, digest, entry, false).map(|(_, raw, _)| raw)
}

/// Like [`read_object`], but returns the record's info and stored bytes (after the same
/// checks), for copying the object verbatim into another pack.
pub fn read_stored(
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
) -> Result<(ObjectInfo, Vec<u8>)> {
    let (info, _, stored) = read_checked(backend, kind, digest, entry, true)?;
    Ok((info, stored.unwrap_or_default()))
}

/// Reads and checks an object; returns its info, raw bytes, and (if `keep_stored`) a copy
/// of its stored bytes.
fn read_checked(
    backend: &dyn Backend,
    kind: ObjectKind,
    digest: &[u8; 32],
    entry: &ObjectEntry,
    keep_stored: bool,
) -> Result<(ObjectInfo, Vec<u8>, Option<Vec<u8>>)> {
    let corrupt = |reason: String| Error::ObjectCorrupt {
        kind,
        digest: hex::encode(digest),
        pack: entry.pack,
        offset: entry.offset,
        reason,
    };
    let len = RECORD_HEADER_LEN + entry.stored_len as usize;
    let mut buf =
        match backend.read_range(Namespace::Packs, &entry.pack.to_hex(), entry.offset, len) {
            Ok(b) => b,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(corrupt(
                    "pack is shorter than the record (truncated)".into(),
                ))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ObjectMissing {
                    kind,
                    digest: format!("{} (pack {} is missing)", hex::encode(digest), entry.pack),
                })
            }
            Err(e) => return Err(e),
        };
    let info = decode_record_header(&buf).map_err(|e| corrupt(e.to_string()))?;
    if info.kind != kind || info.digest.as_bytes() != digest || info.stored_len != entry.stored_len
    {
        return Err(corrupt(format!(
            "record header names {:?} {} instead",
            info.kind, info.digest
        )));
    }
    let stored = buf.split_off(RECORD_HEADER_LEN);
    let crc = crc32c::crc32c(&stored);
    if crc != info.stored_crc {
        return Err(corrupt(format!(
            "stored bytes checksum {crc:08x} != {:08x}",
            info.stored_crc
        )));
    }
    let stored_copy = keep_stored.then(|| stored.clone());
    let raw = decode_stored(info.codec, stored, info.raw_len).map_err(corrupt)?;
    let actual = match kind {
        ObjectKind::Chunk => ChunkDigest::of(&raw).0,
        ObjectKind::Page => PageDigest::of(&raw).0,
    };
    if &actual != digest {
        return Err(corrupt(format!(
            "content hashes to {}",
            hex::encode(actual)
        )));
    }
    Ok((info, raw, stored_copy))
}
