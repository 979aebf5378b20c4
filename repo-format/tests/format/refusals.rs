//! Encoders refuse every value whose bytes the decoder would refuse, with the decoder's own
//! error: a value that breaks a rule is written by hand (valid bytes with one field patched
//! and the seal recomputed), decoded, and then encoded, and both must fail the same way.

use proptest::prelude::*;
use tessera_format::codec::MAX_STRING_LEN;
use tessera_format::pack::{
    decode_footer, decode_record_header, decode_trailer, encode_footer, encode_record_header,
    FooterEntry, MAX_OBJECT_LEN, TRAILER_LEN,
};
use tessera_format::snapshot::{page_count_for, root_digest, MAX_DISKS};
use tessera_format::{
    ChunkDigest, Codec, DecodeError, DiskEntry, DiskStats, EncodeError, ManifestPage, ObjectInfo,
    ObjectKind, PageDigest, RepoConfig, Snapshot, SnapshotHeader,
};

use crate::strategies::{config, edge_u32, object_info, put_u32_at, reseal_crc, snapshot};

fn would_not_decode(e: DecodeError) -> EncodeError {
    EncodeError::WouldNotDecode(e)
}

proptest! {
    /// Version, block size and page entries: any value, both sides agree.
    #[test]
    fn config_fields_refused_alike(
        c in config(),
        field in prop::sample::select(vec![8usize, 36, 40]),
        value in edge_u32(),
    ) {
        let mut bytes = c.encode().unwrap();
        put_u32_at(&mut bytes, field, value);
        reseal_crc(&mut bytes);
        let mut patched = c.clone();
        match field {
            8 => patched.format_version = value,
            36 => patched.default_block_size = value,
            _ => patched.page_entries = value,
        }
        match (RepoConfig::decode(&bytes), patched.encode()) {
            (Ok(decoded), Ok(encoded)) => {
                prop_assert_eq!(decoded, patched);
                prop_assert_eq!(encoded, bytes);
            }
            (Err(d), Err(e)) => prop_assert_eq!(would_not_decode(d), e),
            (d, e) => prop_assert!(false, "decode {d:?} but encode {e:?}"),
        }
    }

    /// Raw and stored length in record headers: any value, both sides agree.
    #[test]
    fn record_lengths_refused_alike(
        info in object_info(),
        raw in edge_u32(),
        stored in edge_u32(),
    ) {
        let mut bytes = encode_record_header(&info).unwrap().to_vec();
        put_u32_at(&mut bytes, 40, raw);
        put_u32_at(&mut bytes, 44, stored);
        reseal_crc(&mut bytes);
        let patched = ObjectInfo { raw_len: raw, stored_len: stored, ..info };
        match (decode_record_header(&bytes), encode_record_header(&patched)) {
            (Ok(decoded), Ok(encoded)) => {
                prop_assert_eq!(decoded, patched);
                prop_assert_eq!(encoded.to_vec(), bytes);
            }
            (Err(d), Err(e)) => prop_assert_eq!(would_not_decode(d), e),
            (d, e) => prop_assert!(false, "decode {d:?} but encode {e:?}"),
        }
    }

    /// Whatever a snapshot encoder accepts decodes to the very same snapshot, even for
    /// values built without regard for the rules (random sizes, page counts, names).
    #[test]
    fn whatever_encodes_decodes_identically(
        s in snapshot(),
        size in prop::option::of(any::<u64>()),
        page_count in prop::option::of(edge_u32()),
        name in prop::option::of("[ -~]{0,3}"),
    ) {
        let mut s = s;
        if let Some(d) = s.header.disks.first_mut() {
            d.size = size.unwrap_or(d.size);
            d.page_count = page_count.unwrap_or(d.page_count);
            d.name = name.unwrap_or_else(|| d.name.clone());
        }
        if let Ok((_, bytes)) = s.encode() {
            prop_assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
        }
    }
}

fn disk(name: &str, size: u64) -> (DiskEntry, Vec<PageDigest>) {
    let block_size = 1 << 16;
    let page_entries = 512;
    let pages = page_count_for(size, block_size, page_entries);
    let root: Vec<PageDigest> = (0..pages)
        .map(|p| PageDigest::of(&p.to_le_bytes()))
        .collect();
    let entry = DiskEntry {
        name: name.into(),
        size,
        block_size,
        page_entries,
        page_count: u32::try_from(pages).unwrap(),
        root_digest: root_digest(&root),
        identity: vec![("source.kind".into(), "raw".into())],
        stats: DiskStats::default(),
    };
    (entry, root)
}

fn snapshot_of(disks: Vec<(DiskEntry, Vec<PageDigest>)>) -> Snapshot {
    let (disks, roots) = disks.into_iter().unzip();
    Snapshot {
        header: SnapshotHeader {
            series: "vm1".into(),
            time_us: 1,
            duration_ms: 2,
            tags: vec![("owner".into(), "ops".into())],
            disks,
        },
        roots,
    }
}

#[test]
fn a_snapshot_of_1025_disks_is_refused_by_both_encoders() {
    let many = |n: usize| snapshot_of((0..n).map(|i| disk(&format!("d{i}"), 1 << 20)).collect());
    let limit = many(MAX_DISKS);
    let (_, bytes) = limit.encode().unwrap();
    assert_eq!(Snapshot::decode(&bytes).unwrap(), limit);

    let over = many(MAX_DISKS + 1);
    let expected = would_not_decode(DecodeError::TooMany {
        what: "snapshot header",
        field: "disks",
        count: 1025,
        max: 1024,
    });
    assert_eq!(over.encode().unwrap_err(), expected);
    assert_eq!(over.header.encode().unwrap_err(), expected);
}

/// An edit that breaks one snapshot rule.
type Edit = fn(&mut Snapshot);

#[test]
fn snapshot_rules_are_refused_on_encode() {
    let ok = || snapshot_of(vec![disk("a", 5 << 20), disk("b", 0)]);
    assert!(ok().encode().is_ok());
    let cases: [(&str, Edit); 11] = [
        ("bad series name", |s| s.header.series = ".hidden".into()),
        ("empty disk name", |s| s.header.disks[0].name.clear()),
        ("duplicate disk", |s| s.header.disks[1].name = "a".into()),
        ("block size", |s| s.header.disks[0].block_size = 3 << 16),
        ("page entries 0", |s| s.header.disks[0].page_entries = 0),
        ("page entries", |s| s.header.disks[0].page_entries = 65_537),
        ("page count", |s| s.header.disks[0].page_count += 1),
        ("roots per disk", |s| drop(s.roots.pop())),
        ("root length", |s| s.roots[0].push(PageDigest([1; 32]))),
        ("root digest", |s| s.roots[0][0] = PageDigest([1; 32])),
        ("tag value", |s| {
            s.header.tags[0].1 = "x".repeat(MAX_STRING_LEN + 1);
        }),
    ];
    for (rule, edit) in cases {
        let mut s = ok();
        edit(&mut s);
        assert!(
            matches!(s.encode(), Err(EncodeError::WouldNotDecode(_))),
            "{rule}"
        );
    }
}

#[test]
fn string_limit_is_refused_not_truncated() {
    let mut s = snapshot_of(vec![disk("a", 1)]);
    s.header.disks[0].identity[0].1 = "é".repeat(MAX_STRING_LEN / 2);
    let (_, bytes) = s.encode().unwrap();
    assert_eq!(Snapshot::decode(&bytes).unwrap(), s);
    s.header.disks[0].identity[0].1.push('x');
    assert_eq!(
        s.encode().unwrap_err(),
        would_not_decode(DecodeError::TooMany {
            what: "snapshot header",
            field: "string bytes",
            count: MAX_STRING_LEN as u64 + 1,
            max: MAX_STRING_LEN as u64,
        })
    );
}

#[test]
fn page_limit_is_refused_on_encode() {
    let page = |n: usize| ManifestPage {
        digests: vec![ChunkDigest([7; 32]); n],
    };
    let bytes = page(65_536).encode().unwrap();
    assert_eq!(ManifestPage::decode(&bytes).unwrap(), page(65_536));
    assert!(matches!(
        page(65_537).encode(),
        Err(EncodeError::WouldNotDecode(DecodeError::TooMany {
            count: 65_537,
            ..
        }))
    ));
}

#[test]
fn footer_layout_is_refused_on_encode() {
    let info = ObjectInfo {
        kind: ObjectKind::Chunk,
        codec: Codec::None,
        digest: ChunkDigest([3; 32]),
        raw_len: 100,
        stored_len: 100,
        stored_crc: 0,
    };
    let at = |offset| FooterEntry { info, offset };
    // A record at 16 ends at 16 + 56 + 100 = 172.
    let bytes = encode_footer(&[at(16)], 172).unwrap();
    let (footer, trailer) = bytes.split_at(bytes.len() - TRAILER_LEN);
    let t = decode_trailer(trailer, 172 + bytes.len() as u64).unwrap();
    assert_eq!(decode_footer(footer, &t).unwrap(), vec![at(16)]);
    for (entries, footer_offset) in [
        (vec![at(16)], 171),            // record runs into the footer
        (vec![at(15)], 172),            // record inside the pack header
        (vec![at(u64::MAX - 60)], 172), // end overflows
        (vec![], 15),                   // footer inside the pack header
        (vec![], u64::MAX - 31),        // pack length overflows
    ] {
        assert!(
            matches!(
                encode_footer(&entries, footer_offset),
                Err(EncodeError::WouldNotDecode(DecodeError::Invalid { .. }))
            ),
            "{entries:?} before {footer_offset}"
        );
    }
    let oversized = ObjectInfo {
        raw_len: MAX_OBJECT_LEN + 1,
        stored_len: MAX_OBJECT_LEN + 1,
        ..info
    };
    assert!(encode_footer(
        &[FooterEntry {
            info: oversized,
            offset: 16
        }],
        1 << 30
    )
    .is_err());
}
