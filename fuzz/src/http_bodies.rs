//! The `http_bodies` target's checks (see `fuzz_targets/http_bodies.rs`): the request
//! bodies of `tessera serve` as its handlers decode them before anything touches the
//! repository (`sync/http/routes.rs`): digest lists of `have` and `get`, and the record
//! streams of `put`, decoded and then checked object by object (decompressed within the
//! record's raw length, hashed). Paths are routed by a plain match whose only decoder, the
//! snapshot id, the `text` target covers; a `publish` body is a snapshot file
//! (`snapshot_file`).

use tessera_engine::crypto::RepoCrypto;
use tessera_engine::sync::checked::check_batch;
use tessera_engine::sync::http::wire::{
    decode_digests, decode_records, encode_digests, encode_record, MAX_GET_DIGESTS,
    MAX_HAVE_DIGESTS, MAX_PUT_RAW_BYTES,
};
use tessera_engine::Error;
use tessera_format::pack::{decode_record_header, encode_record_header, RECORD_HEADER_LEN};
use tessera_format::ObjectKind;

use crate::checks::assert_input_error;

/// Who sent the bodies, in messages.
const FROM: &str = "the client";

/// A digest list: decodes exactly when it is whole digests within `max`, and re-encodes to
/// the same bytes.
pub fn digests(body: &[u8], max: usize) {
    match decode_digests(body, max, FROM) {
        Ok(d) => {
            assert!(body.len().is_multiple_of(32) && d.len() <= max);
            assert_eq!(encode_digests(&d), body);
        }
        Err(e) => {
            assert!(!body.len().is_multiple_of(32) || body.len() / 32 > max);
            assert!(matches!(e, Error::UntrustedData { .. }), "{e:?}");
        }
    }
}

/// A `put` body of `kind`, as the handler takes it: records decoded, their claimed raw
/// bytes bounded, every object checked. What decodes re-encodes to the body; what passes
/// the checks is the records as sent; every refusal is `UntrustedData`.
pub fn put(body: &[u8], kind: ObjectKind) {
    let records = match decode_records(body, kind, FROM) {
        Ok(r) => r,
        Err(e) => return assert_input_error(&e),
    };
    let mut again = Vec::new();
    for r in &records {
        encode_record(&mut again, r).expect("a decoded record encodes");
    }
    assert_eq!(again, body);
    let raw: u64 = records.iter().map(|(i, _)| u64::from(i.raw_len)).sum();
    if raw > MAX_PUT_RAW_BYTES {
        return;
    }
    let digests: Vec<[u8; 32]> = records.iter().map(|(i, _)| i.digest.0).collect();
    match check_batch(FROM, &RepoCrypto::plain(), kind, &digests, records.clone()) {
        Ok(checked) => {
            assert_eq!(checked.len(), records.len());
            for (c, (info, stored)) in checked.iter().zip(&records) {
                assert_eq!(&c.info, info);
                assert_eq!(&c.stored, stored);
                let raw_page = c.raw_page.as_ref().map(Vec::len);
                assert_eq!(raw_page.is_some(), kind == ObjectKind::Page);
                assert!(raw_page.is_none_or(|n| n == info.raw_len as usize));
            }
        }
        Err(e) => assert!(matches!(e, Error::UntrustedData { .. }), "{e:?}"),
    }
    // Under keys (between repositories that share them): refused the same way, never a
    // panic; nothing the fuzzer makes can carry a valid tag.
    static SEALED: std::sync::LazyLock<RepoCrypto> = std::sync::LazyLock::new(|| {
        RepoCrypto::encrypted(&tessera_engine::crypto::RepoKeys::from_bytes(&[7; 64]))
            .expect("a record cipher")
    });
    if let Err(e) = check_batch(FROM, &SEALED, kind, &digests, records) {
        assert!(matches!(e, Error::UntrustedData { .. }), "{e:?}");
    }
}

/// `body` with each record's header CRC and stored-bytes CRC recomputed, as far as the
/// headers decode once their own CRC is fixed, so mutations reach the decompression.
pub fn resealed_records(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    let mut at = 0usize;
    while let Some(header) = out.get(at..at + RECORD_HEADER_LEN) {
        let Some(sealed) = crate::resealed(header) else {
            break;
        };
        let Ok(mut info) = decode_record_header(&sealed) else {
            break;
        };
        let start = at + RECORD_HEADER_LEN;
        let Some(stored) = out.get(start..start + info.stored_len as usize) else {
            break;
        };
        info.stored_crc = crc32c::crc32c(stored);
        let Ok(header) = encode_record_header(&info) else {
            break;
        };
        out[at..start].copy_from_slice(&header);
        at = start + info.stored_len as usize;
    }
    out
}

/// Runs the body in `data[1..]` through the decoder `data[0]` selects.
pub fn check(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 6 {
        0 => digests(body, MAX_HAVE_DIGESTS),
        1 => digests(body, MAX_GET_DIGESTS),
        2 => put(body, ObjectKind::Chunk),
        3 => put(body, ObjectKind::Page),
        4 => put(&resealed_records(body), ObjectKind::Chunk),
        _ => put(&resealed_records(body), ObjectKind::Page),
    }
}
