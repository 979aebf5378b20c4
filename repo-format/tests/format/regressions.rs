//! Named regression tests: each is a defect that once existed (or an input a fuzzer found),
//! kept so that it cannot come back.

use tessera_format::manifest::entries_in_page;
use tessera_format::pack::{
    decode_footer, decode_pack_header, decode_record_header, decode_trailer, encode_footer,
    encode_pack_header, encode_record_header, FooterEntry, Trailer, FOOTER_ENTRY_LEN, TRAILER_LEN,
};
use tessera_format::{
    ChunkDigest, Codec, DecodeError, DiskEntry, DiskStats, ObjectInfo, ObjectKind, RepoConfig,
    SnapshotHeader,
};

use crate::strategies::{put_u32_at, reseal_crc};

fn chunk(stored_len: u32) -> ObjectInfo {
    ObjectInfo {
        kind: ObjectKind::Chunk,
        codec: Codec::None,
        digest: ChunkDigest([9; 32]),
        raw_len: stored_len,
        stored_len,
        stored_crc: 0,
    }
}

/// `decode_footer` added an entry's offset, the record header length and the stored
/// length unchecked: an offset near `u64::MAX` wrapped (in release builds) to a small end
/// that passed the bounds check, or panicked (in debug builds).
#[test]
fn footer_entry_offset_near_u64_max_is_refused_not_wrapped() {
    let footer_offset = 1000;
    let mut footer = encode_footer(
        &[FooterEntry {
            info: chunk(100),
            offset: 16,
        }],
        footer_offset,
    )
    .unwrap();
    footer.truncate(FOOTER_ENTRY_LEN);
    // Offset u64::MAX - 100: + 56 + 100 wraps to 55, below the footer offset.
    footer[48..56].copy_from_slice(&(u64::MAX - 100).to_le_bytes());
    let trailer = Trailer {
        footer_offset,
        count: 1,
        footer_crc: crc32c::crc32c(&footer),
    };
    let err = decode_footer(&footer, &trailer).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Invalid { what: "pack footer", reason } if reason.contains("outside the record area")),
        "{err}"
    );
}

/// Every field SPEC.md marks "reserved, 0" used to be skipped unread; now a non-zero value
/// is refused, naming its offset.
#[test]
fn reserved_fields_must_be_zero() {
    let config = RepoConfig {
        format_version: 1,
        repo_id: tessera_format::RepoId([1; 16]),
        id_scheme: tessera_format::IdScheme::Sha256,
        compression: tessera_format::Compression {
            codec: Codec::Zstd,
            level: 3,
        },
        default_block_size: 1 << 20,
        page_entries: 512,
        created_at_us: 0,
        encryption: tessera_format::Encryption::None,
    };
    let mut bytes = config.encode().unwrap();
    bytes[31] = 1;
    reseal_crc(&mut bytes);
    assert_eq!(
        RepoConfig::decode(&bytes),
        Err(DecodeError::ReservedNotZero {
            what: "config",
            offset: 31
        })
    );

    let mut header = encode_pack_header();
    header[15] = 0x80;
    assert_eq!(
        decode_pack_header(&header),
        Err(DecodeError::ReservedNotZero {
            what: "pack header",
            offset: 12
        })
    );

    let mut record = encode_record_header(&chunk(10)).unwrap();
    record[6] = 1;
    reseal_crc(&mut record);
    assert_eq!(
        decode_record_header(&record),
        Err(DecodeError::ReservedNotZero {
            what: "pack record header",
            offset: 6
        })
    );

    // Second footer entry, reserved field at 56 + 2.
    let entries = [
        FooterEntry {
            info: chunk(0),
            offset: 16,
        },
        FooterEntry {
            info: chunk(0),
            offset: 72,
        },
    ];
    let mut bytes = encode_footer(&entries, 128).unwrap();
    let footer_len = 2 * FOOTER_ENTRY_LEN;
    bytes[footer_len - FOOTER_ENTRY_LEN + 3] = 1;
    let footer_crc = crc32c::crc32c(&bytes[..footer_len]);
    put_u32_at(&mut bytes, footer_len + 12, footer_crc);
    reseal_crc(&mut bytes[footer_len..footer_len + 24]);
    let pack_len = 128 + bytes.len() as u64;
    let trailer = decode_trailer(&bytes[footer_len..], pack_len).unwrap();
    assert_eq!(
        decode_footer(&bytes[..footer_len], &trailer),
        Err(DecodeError::ReservedNotZero {
            what: "pack footer",
            offset: 58
        })
    );

    let mut bytes = encode_footer(&[], 16).unwrap();
    bytes[17] = 1;
    reseal_crc(&mut bytes[..24]);
    assert_eq!(
        decode_trailer(&bytes, 16 + TRAILER_LEN as u64),
        Err(DecodeError::ReservedNotZero {
            what: "pack trailer",
            offset: 16
        })
    );
}

/// `entries_in_page` multiplied the page number by the page size unchecked (a panic in
/// debug builds for a page number read from a damaged index or given by a caller).
#[test]
fn entries_in_a_page_far_past_the_end_is_zero() {
    assert_eq!(entries_in_page(10, 512, u64::MAX), 0);
    assert_eq!(entries_in_page(u64::MAX, 65_536, u64::MAX / 65_536), 65_535);
}

/// `logical_bytes` summed disk sizes unchecked; two disks of decodable sizes near
/// `u64::MAX` overflowed.
#[test]
fn logical_bytes_saturates() {
    let disk = |name: &str| DiskEntry {
        name: name.into(),
        size: u64::MAX,
        block_size: 1 << 23,
        page_entries: 65_536,
        page_count: 1 << 25,
        root_digest: [0; 32],
        identity: Vec::new(),
        stats: DiskStats::default(),
    };
    let header = SnapshotHeader {
        series: "s".into(),
        time_us: 0,
        duration_ms: 0,
        tags: Vec::new(),
        disks: vec![disk("a"), disk("b")],
    };
    let decoded = SnapshotHeader::decode(&header.encode().unwrap()).unwrap();
    assert_eq!(decoded.logical_bytes(), u64::MAX);
}

/// `FooterEntry::data_offset` added unchecked.
#[test]
fn data_offset_saturates() {
    let e = FooterEntry {
        info: chunk(0),
        offset: u64::MAX - 1,
    };
    assert_eq!(e.data_offset(), u64::MAX);
}
