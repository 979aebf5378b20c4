//! Every on-disk type round-trips through its encoding, and every decoder returns an error
//! (never panics) on arbitrary, truncated or bit-flipped bytes.

use proptest::prelude::*;
use tessera_format::config::{RepoConfig, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE};
use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, encode_footer,
    encode_pack_header, encode_record_header, FooterEntry, PACK_HEADER_LEN, TRAILER_LEN,
};
use tessera_format::snapshot::{page_count_for, root_digest};
use tessera_format::{
    ChunkDigest, Codec, Compression, DecodeError, DiskEntry, DiskStats, IdScheme, ManifestPage,
    ObjectInfo, ObjectKind, PageDigest, RepoId, Snapshot, SnapshotHeader,
};

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

fn config() -> impl Strategy<Value = RepoConfig> {
    (
        any::<[u8; 16]>(),
        16u32..=23,
        prop::bool::ANY,
        1i32..=19,
        16u32..=4096,
        any::<i64>(),
    )
        .prop_map(|(id, shift, zstd, level, pe, t)| RepoConfig {
            format_version: 1,
            repo_id: RepoId(id),
            id_scheme: IdScheme::Sha256,
            compression: if zstd {
                Compression {
                    codec: Codec::Zstd,
                    level,
                }
            } else {
                Compression {
                    codec: Codec::None,
                    level: 0,
                }
            },
            default_block_size: 1 << shift,
            page_entries: pe,
            created_at_us: t,
        })
}

fn object_info() -> impl Strategy<Value = ObjectInfo> {
    (
        prop::bool::ANY,
        any::<[u8; 32]>(),
        0u32..=MAX_BLOCK_SIZE,
        any::<u32>(),
    )
        .prop_map(|(page, d, raw, crc)| ObjectInfo {
            kind: if page {
                ObjectKind::Page
            } else {
                ObjectKind::Chunk
            },
            codec: Codec::None,
            digest: ChunkDigest(d),
            raw_len: raw,
            stored_len: raw,
            stored_crc: crc,
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    let disk = (
        name(),
        0u64..(1 << 24),
        16u32..=18,
        16u32..=64,
        prop::collection::vec((name(), ".{0,10}"), 0..3),
    );
    (
        name(),
        any::<i64>(),
        any::<u64>(),
        prop::collection::vec((name(), ".{0,12}"), 0..4),
        prop::collection::vec(disk, 0..4),
    )
        .prop_map(|(series, time_us, duration_ms, tags, disks)| {
            let mut entries: Vec<DiskEntry> = Vec::new();
            let mut roots = Vec::new();
            for (i, (n, size, shift, pe, identity)) in disks.into_iter().enumerate() {
                let bs = 1u32 << shift;
                let pages = page_count_for(size, bs, pe);
                let root: Vec<PageDigest> = (0..pages)
                    .map(|p| PageDigest::of(&p.to_le_bytes()))
                    .collect();
                entries.push(DiskEntry {
                    name: format!("{n}{i}"),
                    size,
                    block_size: bs,
                    page_entries: pe,
                    page_count: pages as u32,
                    root_digest: root_digest(&root),
                    identity,
                    stats: DiskStats {
                        bytes_read: size,
                        zero_blocks: 1,
                        new_chunks: 2,
                        new_raw_bytes: 3,
                        new_stored_bytes: 4,
                    },
                });
                roots.push(root);
            }
            Snapshot {
                header: SnapshotHeader {
                    series,
                    time_us,
                    duration_ms,
                    tags,
                    disks: entries,
                },
                roots,
            }
        })
}

proptest! {
    #[test]
    fn config_roundtrips(c in config()) {
        prop_assert_eq!(RepoConfig::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn config_rejects_any_single_bit_flip(c in config(), bit in 0usize..(56 * 8)) {
        let mut bytes = c.encode();
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(RepoConfig::decode(&bytes).is_err());
    }

    #[test]
    fn record_header_roundtrips(info in object_info()) {
        prop_assert_eq!(decode_record_header(&encode_record_header(&info)).unwrap(), info);
    }

    #[test]
    fn record_header_rejects_bit_flips(info in object_info(), bit in 0usize..(56 * 8)) {
        let mut bytes = encode_record_header(&info);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_record_header(&bytes).is_err());
    }

    #[test]
    fn footer_roundtrips(infos in prop::collection::vec(object_info(), 0..20)) {
        let mut offset = PACK_HEADER_LEN as u64;
        let entries: Vec<FooterEntry> = infos.iter().map(|i| {
            let e = FooterEntry { info: *i, offset };
            offset += 56 + u64::from(i.stored_len);
            e
        }).collect();
        let footer = encode_footer(&entries, offset);
        let pack_len = offset + footer.len() as u64;
        let (body, trailer_bytes) = footer.split_at(footer.len() - TRAILER_LEN);
        let trailer = decode_trailer(trailer_bytes, pack_len).unwrap();
        prop_assert_eq!(decode_footer(body, &trailer).unwrap(), entries);
    }

    #[test]
    fn manifest_page_roundtrips(ds in prop::collection::vec(any::<[u8; 32]>(), 0..100)) {
        let page = ManifestPage { digests: ds.into_iter().map(ChunkDigest).collect() };
        let (digest, bytes) = page.encode_with_digest();
        prop_assert_eq!(PageDigest::of(&bytes), digest);
        prop_assert_eq!(ManifestPage::decode(&bytes).unwrap(), page);
    }

    #[test]
    fn snapshot_roundtrips(s in snapshot()) {
        let (id, bytes) = s.encode();
        prop_assert_eq!(tessera_format::SnapshotId::of(&bytes), id);
        prop_assert_eq!(Snapshot::decode(&bytes).unwrap(), s.clone());
        prop_assert_eq!(SnapshotHeader::decode(&s.header.encode()).unwrap(), s.header);
    }

    #[test]
    fn snapshot_rejects_truncation_and_flips(s in snapshot(), cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let (_, bytes) = s.encode();
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
    };
    let mut bytes = c.encode();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        RepoConfig::decode(&bytes),
        Err(DecodeError::UnsupportedVersion { version: 2, .. })
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
