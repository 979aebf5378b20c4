//! Mutated structures, re-sealed: after each batch of random edits the CRCs (and, for
//! snapshot files, the header length) are recomputed, so the edits reach the field parsing
//! behind the checksums. Every decoder must then either refuse with a typed error that is
//! not a checksum mismatch (proving the parse got past the seal), or accept bytes that its
//! encoder reproduces exactly.

use proptest::prelude::*;
use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, encode_footer,
    encode_pack_header, encode_record_header, PACK_HEADER_LEN, RECORD_HEADER_LEN, TRAILER_LEN,
};
use tessera_format::{
    ChunkDigest, DecodeError, ManifestPage, RepoConfig, Snapshot, SnapshotHeader,
};

use crate::strategies::{
    apply_all, config, footer_entries, in_place_mutations, mutations, object_info, put_u32_at,
    reseal_crc, snapshot,
};

/// Offset of the header-length field of a snapshot file, and of the header itself.
const SNAPSHOT_HEADER_LEN_AT: usize = 12;
const SNAPSHOT_HEADER_AT: usize = 16;

fn not_a_checksum_error(e: &DecodeError) -> Result<(), TestCaseError> {
    prop_assert!(
        !matches!(e, DecodeError::ChecksumMismatch { .. }),
        "the seal was recomputed, yet decoding stopped at it: {e}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn config_mutated_and_resealed(c in config(), ms in in_place_mutations(4)) {
        let mut bytes = c.encode().unwrap();
        let body = bytes.len() - 4;
        apply_all(&mut bytes, 0, body, &ms);
        reseal_crc(&mut bytes);
        match RepoConfig::decode(&bytes) {
            Ok(decoded) => prop_assert_eq!(decoded.encode().unwrap(), bytes),
            Err(e) => not_a_checksum_error(&e)?,
        }
    }

    #[test]
    fn pack_header_mutated(ms in in_place_mutations(3)) {
        let mut bytes = encode_pack_header().to_vec();
        apply_all(&mut bytes, 0, PACK_HEADER_LEN, &ms);
        if decode_pack_header(&bytes).is_ok() {
            prop_assert_eq!(bytes, encode_pack_header().to_vec());
        }
    }

    #[test]
    fn record_header_mutated_and_resealed(info in object_info(), ms in in_place_mutations(4)) {
        let mut bytes = encode_record_header(&info).unwrap().to_vec();
        apply_all(&mut bytes, 0, RECORD_HEADER_LEN - 4, &ms);
        reseal_crc(&mut bytes);
        match decode_record_header(&bytes) {
            Ok(decoded) => prop_assert_eq!(encode_record_header(&decoded).unwrap().to_vec(), bytes),
            Err(e) => not_a_checksum_error(&e)?,
        }
    }

    /// Edits the footer entries (any edit, lengths may change) and the trailer fields, then
    /// recomputes the footer CRC (over any edit of its own field), the trailer CRC and the
    /// pack length.
    #[test]
    fn footer_mutated_and_resealed(
        infos in prop::collection::vec(object_info(), 0..8),
        footer_edits in mutations(4),
        trailer_edits in prop::option::of(in_place_mutations(2)),
    ) {
        let (entries, footer_offset) = footer_entries(&infos);
        let mut bytes = encode_footer(&entries, footer_offset).unwrap();
        let footer_len = bytes.len() - TRAILER_LEN;
        let footer_end = apply_all(&mut bytes, 0, footer_len, &footer_edits);
        if let Some(edits) = trailer_edits {
            apply_all(&mut bytes, footer_end, footer_end + 20, &edits);
        }
        let footer_crc = crc32c::crc32c(&bytes[..footer_end]);
        put_u32_at(&mut bytes, footer_end + 12, footer_crc);
        reseal_crc(&mut bytes[footer_end..footer_end + 24]);
        let (footer, trailer_bytes) = bytes.split_at(footer_end);
        let pack_len = footer_offset + bytes.len() as u64;
        let trailer = match decode_trailer(trailer_bytes, pack_len) {
            Ok(t) => t,
            Err(e) => return not_a_checksum_error(&e),
        };
        match decode_footer(footer, &trailer) {
            Ok(decoded) => {
                prop_assert_eq!(encode_footer(&decoded, trailer.footer_offset).unwrap(), bytes);
            }
            Err(e) => not_a_checksum_error(&e)?,
        }
    }

    #[test]
    fn manifest_page_mutated(
        ds in prop::collection::vec(any::<[u8; 32]>(), 0..40),
        ms in mutations(4),
    ) {
        let page = ManifestPage { digests: ds.into_iter().map(ChunkDigest).collect() };
        let mut bytes = page.encode().unwrap();
        let len = bytes.len();
        apply_all(&mut bytes, 0, len, &ms);
        if let Ok(decoded) = ManifestPage::decode(&bytes) {
            prop_assert_eq!(decoded.encode().unwrap(), bytes);
        }
    }

    /// Edits the header (lengths may change), then fixes the header-length field and the CRC.
    #[test]
    fn snapshot_header_mutated_and_resealed(s in snapshot(), ms in mutations(4)) {
        let (_, mut bytes) = s.encode().unwrap();
        let header_len = s.header.encode().unwrap().len();
        let end = apply_all(&mut bytes, SNAPSHOT_HEADER_AT, SNAPSHOT_HEADER_AT + header_len, &ms);
        let new_len = u32::try_from(end - SNAPSHOT_HEADER_AT).unwrap();
        put_u32_at(&mut bytes, SNAPSHOT_HEADER_LEN_AT, new_len);
        reseal_crc(&mut bytes);
        match Snapshot::decode(&bytes) {
            Ok(decoded) => prop_assert_eq!(decoded.encode().unwrap().1, bytes.clone()),
            Err(e) => not_a_checksum_error(&e)?,
        }
        match SnapshotHeader::decode(&bytes[SNAPSHOT_HEADER_AT..end]) {
            Ok(decoded) => prop_assert_eq!(decoded.encode().unwrap(), &bytes[SNAPSHOT_HEADER_AT..end]),
            Err(e) => not_a_checksum_error(&e)?,
        }
    }

    /// Edits anywhere before the CRC (preamble, header length, header, root lists), then
    /// fixes only the CRC.
    #[test]
    fn snapshot_file_mutated_and_resealed(s in snapshot(), ms in mutations(3)) {
        let (_, mut bytes) = s.encode().unwrap();
        let body = bytes.len() - 4;
        apply_all(&mut bytes, 0, body, &ms);
        reseal_crc(&mut bytes);
        match Snapshot::decode(&bytes) {
            Ok(decoded) => prop_assert_eq!(decoded.encode().unwrap().1, bytes),
            Err(e) => not_a_checksum_error(&e)?,
        }
    }
}
