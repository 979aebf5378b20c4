//! Checking an object received from an untrusted source before it may be appended:
//! the record info must name the expected kind and digest, lengths must be within the
//! format's bounds (SPEC.md §4: raw and stored ≤ 8 MiB, `codec = none` ⇒ equal lengths),
//! the stored bytes must match their length and CRC, decode to exactly `raw_len` bytes
//! (never more is allocated), and the raw bytes must hash to the digest. Only then is the
//! object "checked". The receiver recomputes all of this itself: nothing the sender claims
//! is believed. Between encrypted repositories that share keys (SPEC.md §23.7) the stored
//! bytes are an envelope: it must open (or its signature check) under the receiver's keys,
//! bound to the kind, codec, raw length and id asked for, and the plaintext must hash to
//! the id under the keyed id scheme; the envelope is then appended verbatim.

use rayon::prelude::*;
use tessera_format::manifest::MAX_PAGE_ENTRIES;
use tessera_format::pack::MAX_OBJECT_LEN;
use tessera_format::{Codec, ObjectInfo, ObjectKind};

use crate::crypto::RepoCrypto;
use crate::error::{Error, Result};
use crate::serde_ids::kind_name;
use crate::store::encode::decode_stored;

/// One object as a source hands it over: its record info and stored bytes (unverified).
pub type StoredObject = (ObjectInfo, Vec<u8>);

/// The longest encoded manifest page: magic, count, [`MAX_PAGE_ENTRIES`] digests. A page
/// whose record claims more is refused before it is decoded (its raw bytes are kept, so a
/// batch of them must not reach the 8 MiB an object may otherwise have).
pub const MAX_PAGE_BYTES: u32 = 8 + 4 + 32 * MAX_PAGE_ENTRIES;

/// An object whose stored bytes were decoded and hashed to its digest.
#[derive(Debug)]
pub struct CheckedObject {
    /// Record info (CRC recomputed by the receiver).
    pub info: ObjectInfo,
    /// Stored bytes, to be appended verbatim.
    pub stored: Vec<u8>,
    /// Raw bytes, kept for pages only (their digests are needed next).
    pub raw_page: Option<Vec<u8>>,
}

/// Checks one object that `from` sent for `(kind, digest)`, under the receiver's `crypto`.
pub fn check_object(
    from: &str,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digest: &[u8; 32],
    object: StoredObject,
) -> Result<CheckedObject> {
    let (info, stored) = object;
    let bad = |reason: String| Error::UntrustedData {
        from: from.to_string(),
        reason: format!(
            "bad {} {}: {reason}; nothing from it was published",
            kind_name(kind),
            hex::encode(digest)
        ),
    };
    if info.kind != kind || info.digest.as_bytes() != digest {
        return Err(bad(format!(
            "its record names {:?} {} instead",
            info.kind, info.digest
        )));
    }
    // Protection adds its envelope to the stored bytes: a sealed incompressible 8 MiB block
    // is stored in 8 MiB + 40 bytes.
    let max_stored = MAX_OBJECT_LEN + crypto.overhead() as u32;
    if info.raw_len > MAX_OBJECT_LEN || info.stored_len > max_stored {
        return Err(bad(format!(
            "raw length {} / stored length {} exceeds {MAX_OBJECT_LEN} / {max_stored}",
            info.raw_len, info.stored_len
        )));
    }
    if kind == ObjectKind::Page && info.raw_len > MAX_PAGE_BYTES {
        return Err(bad(format!(
            "a page of {} raw bytes, more than the {MAX_PAGE_BYTES} any page has",
            info.raw_len
        )));
    }
    if stored.len() != info.stored_len as usize {
        return Err(bad(format!(
            "{} stored bytes where its record says {}",
            stored.len(),
            info.stored_len
        )));
    }
    let overhead = crypto.overhead() as u64;
    if info.codec == Codec::None && u64::from(info.raw_len) + overhead != u64::from(info.stored_len)
    {
        return Err(bad(format!(
            "uncompressed with raw length {} and stored length {} (protection adds {overhead})",
            info.raw_len, info.stored_len
        )));
    }
    let crc = crc32c::crc32c(&stored);
    if crc != info.stored_crc {
        return Err(bad(format!(
            "stored bytes CRC {crc:08x} != {:08x}",
            info.stored_crc
        )));
    }
    let encoded = crypto
        .unprotect(kind, info.codec, info.raw_len, digest, &stored)
        .map_err(|e| bad(e.to_string()))?;
    let raw = decode_stored(info.codec, encoded.into_owned(), info.raw_len).map_err(bad)?;
    if !crypto.id_matches(kind, &raw, digest) {
        return Err(bad(format!(
            "content hashes to {}",
            hex::encode(crypto.ids().id(&raw))
        )));
    }
    Ok(CheckedObject {
        info,
        stored,
        raw_page: (kind == ObjectKind::Page).then_some(raw),
    })
}

/// Checks a batch in parallel; the first failure (in batch order) fails the batch.
pub fn check_batch(
    from: &str,
    crypto: &RepoCrypto,
    kind: ObjectKind,
    digests: &[[u8; 32]],
    objects: Vec<StoredObject>,
) -> Result<Vec<CheckedObject>> {
    if objects.len() > digests.len() || objects.is_empty() && !digests.is_empty() {
        return Err(Error::UntrustedData {
            from: from.to_string(),
            reason: format!(
                "answered a request for {} objects with {}",
                digests.len(),
                objects.len()
            ),
        });
    }
    objects
        .into_par_iter()
        .zip(digests.par_iter())
        .map(|(o, d)| check_object(from, crypto, kind, d, o))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_object;
    use crate::crypto::{RepoCrypto, RepoKeys};
    use crate::store::encode::stored_info;
    use tessera_format::pack::MAX_OBJECT_LEN;
    use tessera_format::{Codec, ObjectKind};

    /// The largest record an encrypted repository stores, an incompressible 8 MiB block
    /// sealed (8 MiB + 40 bytes), passes the receiver's checks; a plain repository, whose
    /// records carry no envelope, refuses that stored length.
    #[test]
    fn a_sealed_record_of_the_largest_block_is_accepted() {
        let crypto = RepoCrypto::encrypted(&RepoKeys::generate()).unwrap();
        let raw: Vec<u8> = (0..MAX_OBJECT_LEN)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        let id = crypto.chunk_id(&raw);
        let mut stored = Vec::new();
        crypto
            .protect(
                ObjectKind::Chunk,
                Codec::None,
                MAX_OBJECT_LEN,
                &id.0,
                &raw,
                &mut stored,
            )
            .unwrap();
        assert_eq!(stored.len(), MAX_OBJECT_LEN as usize + crypto.overhead());
        let info = stored_info(ObjectKind::Chunk, id, raw.len(), Codec::None, &stored);
        let checked = check_object(
            "test",
            &crypto,
            ObjectKind::Chunk,
            &id.0,
            (info, stored.clone()),
        );
        assert!(checked.is_ok(), "{checked:?}");
        let plain = RepoCrypto::plain();
        let refused = check_object("test", &plain, ObjectKind::Chunk, &id.0, (info, stored));
        assert!(refused.unwrap_err().to_string().contains("exceeds"));
    }
}
