//! Every on-disk type round-trips exactly through its encoding, and every decoder returns
//! an error (never panics) on arbitrary, truncated or bit-flipped bytes.

use proptest::prelude::*;
use tessera_format::config::{RepoConfig, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, encode_footer,
    encode_pack_header, encode_record_header, TRAILER_LEN,
};
use tessera_format::{
    ChunkDigest, Codec, Compression, DecodeError, IdScheme, ManifestPage, PageDigest, RepoId,
    Snapshot, SnapshotHeader,
};

use crate::strategies::{config, footer_entries, object_info, snapshot};

proptest! {
    #[test]
    fn config_roundtrips(c in config()) {
        let bytes = c.encode().unwrap();
        prop_assert_eq!(RepoConfig::decode(&bytes).unwrap(), c);
    }

    #[test]
    fn config_rejects_any_single_bit_flip(c in config(), bit in 0usize..(56 * 8)) {
        // (56 bytes: the whole of a format-1 config, all but the fingerprint of a format-2 one)
        let mut bytes = c.encode().unwrap();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(RepoConfig::decode(&bytes).is_err());
    }

    #[test]
    fn record_header_roundtrips(info in object_info()) {
        let bytes = encode_record_header(&info).unwrap();
        prop_assert_eq!(decode_record_header(&bytes).unwrap(), info);
    }

    #[test]
    fn record_header_rejects_bit_flips(info in object_info(), bit in 0usize..(56 * 8)) {
        let mut bytes = encode_record_header(&info).unwrap();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_record_header(&bytes).is_err());
    }

    #[test]
    fn footer_roundtrips(infos in prop::collection::vec(object_info(), 0..20)) {
        let (entries, footer_offset) = footer_entries(&infos);
        let footer = encode_footer(&entries, footer_offset).unwrap();
        let pack_len = footer_offset + footer.len() as u64;
        let (body, trailer_bytes) = footer.split_at(footer.len() - TRAILER_LEN);
        let trailer = decode_trailer(trailer_bytes, pack_len).unwrap();
        prop_assert_eq!(trailer.footer_offset, footer_offset);
        prop_assert_eq!(trailer.pack_len(), Some(pack_len));
        prop_assert_eq!(decode_footer(body, &trailer).unwrap(), entries);
    }

    #[test]
    fn manifest_page_roundtrips(ds in prop::collection::vec(any::<[u8; 32]>(), 0..100)) {
        let page = ManifestPage { digests: ds.into_iter().map(ChunkDigest).collect() };
        let (digest, bytes) = page.encode_with_digest().unwrap();
        prop_assert_eq!(PageDigest::of(&bytes), digest);
        prop_assert_eq!(ManifestPage::decode(&bytes).unwrap(), page);
    }

    #[test]
    fn snapshot_roundtrips(s in snapshot()) {
        let (id, bytes) = s.encode().unwrap();
        prop_assert_eq!(tessera_format::SnapshotId::of(&bytes), id);
        prop_assert_eq!(Snapshot::decode(&bytes).unwrap(), s.clone());
        prop_assert_eq!(SnapshotHeader::decode(&s.header.encode().unwrap()).unwrap(), s.header);
    }

    #[test]
    fn snapshot_rejects_truncation_and_flips(s in snapshot(), cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let (_, bytes) = s.encode().unwrap();
        let cut = cut.index(bytes.len());
        prop_assert!(Snapshot::decode(&bytes[..cut]).is_err());
        let mut flipped = bytes.clone();
        let b = bit.index(bytes.len() * 8);
        flipped[b / 8] ^= 1 << (b % 8);
        prop_assert!(Snapshot::decode(&flipped).is_err());
    }

    #[test]
    fn decoders_never_panic_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..400), len in any::<u64>()) {
        let _ = RepoConfig::decode(&bytes);
        let _ = Snapshot::decode(&bytes);
        let _ = SnapshotHeader::decode(&bytes);
        let _ = ManifestPage::decode(&bytes);
        let _ = decode_pack_header(&bytes);
        let _ = decode_record_header(&bytes);
        if let Ok(t) = decode_trailer(&bytes[..bytes.len().min(TRAILER_LEN)], len) {
            let _ = decode_footer(&bytes, &t);
        }
    }

    #[test]
    fn decoders_never_panic_on_garbage_with_valid_magic(tail in prop::collection::vec(any::<u8>(), 0..400)) {
        for magic in [&b"TSRCONF1"[..], b"TSRSNAP1", b"TSRPAGE1", b"TSRPACK1", b"TREC"] {
            let mut bytes = magic.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = RepoConfig::decode(&bytes);
            let _ = Snapshot::decode(&bytes);
            let _ = ManifestPage::decode(&bytes);
            let _ = decode_pack_header(&bytes);
            let _ = decode_record_header(&bytes);
        }
    }
}

#[test]
fn future_versions_are_refused_by_name() {
    let c = RepoConfig {
        format_version: 1,
        repo_id: RepoId([7; 16]),
        id_scheme: IdScheme::Sha256,
        compression: Compression {
            codec: Codec::Zstd,
            level: 3,
        },
        default_block_size: 1 << 20,
        page_entries: 512,
        created_at_us: 0,
        encryption: tessera_format::Encryption::None,
    };
    let mut bytes = c.encode().unwrap();
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        RepoConfig::decode(&bytes),
        Err(DecodeError::UnsupportedVersion { version: 3, .. })
    ));
    let mut header = encode_pack_header();
    header[8..12].copy_from_slice(&9u32.to_le_bytes());
    assert!(matches!(
        decode_pack_header(&header),
        Err(DecodeError::UnsupportedVersion { version: 9, .. })
    ));
}

#[test]
fn hostile_counts_do_not_allocate() {
    // A page claiming 4 billion entries with no bytes behind them is refused as truncated.
    let mut bytes = b"TSRPAGE1".to_vec();
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        ManifestPage::decode(&bytes),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn block_size_bounds() {
    use tessera_format::config::validate_block_size;
    assert!(validate_block_size(u64::from(MIN_BLOCK_SIZE)).is_ok());
    assert!(validate_block_size(u64::from(MAX_BLOCK_SIZE)).is_ok());
    assert!(validate_block_size(u64::from(MIN_BLOCK_SIZE) / 2).is_err());
    assert!(validate_block_size(u64::from(MAX_BLOCK_SIZE) * 2).is_err());
    assert!(validate_block_size(3 * 65536).is_err());
}

#[test]
fn zero_detection() {
    assert!(tessera_format::is_all_zero(&[0u8; 1000]));
    for i in [0, 63, 64, 999] {
        let mut b = [0u8; 1000];
        b[i] = 1;
        assert!(!tessera_format::is_all_zero(&b), "byte {i}");
    }
}
