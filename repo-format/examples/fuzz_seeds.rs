//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`): real encodings,
//! made by this crate's encoders, of the structures each target decodes, shaped like what
//! the engine writes (identity keys, page sizes, packs of chunks and pages).
//!
//! ```text
//! cargo run -p tessera-format --example fuzz_seeds [-- CORPUS_DIR]
//! ```
//!
//! Deterministic: running it again rewrites the same files.

use std::fs;
use std::path::{Path, PathBuf};

use tessera_format::pack::{
    encode_footer, encode_pack_header, encode_record_header, FooterEntry, PACK_HEADER_LEN,
    RECORD_HEADER_LEN,
};
use tessera_format::snapshot::{page_count_for, root_digest};
use tessera_format::{
    ChunkDigest, Codec, Compression, DiskEntry, DiskStats, IdScheme, ManifestPage, ObjectInfo,
    ObjectKind, PackId, PageDigest, RepoConfig, RepoId, Snapshot, SnapshotHeader, SnapshotId,
};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bytes that look like disk data: a simple deterministic generator.
fn data(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn configs() -> Result<Vec<Vec<u8>>> {
    let config = |codec, level, block_size, page_entries| RepoConfig {
        format_version: 1,
        repo_id: RepoId([0x5e; 16]),
        id_scheme: IdScheme::Sha256,
        compression: Compression { codec, level },
        default_block_size: block_size,
        page_entries,
        created_at_us: 1_780_000_000_000_000,
        encryption: tessera_format::Encryption::None,
    };
    Ok(vec![
        config(Codec::Zstd, 3, 1 << 20, 512).encode()?,
        config(Codec::None, 0, 1 << 16, 16).encode()?,
        config(Codec::Zstd, 19, 1 << 23, 65_536).encode()?,
        RepoConfig {
            format_version: 2,
            id_scheme: IdScheme::HmacSha256,
            encryption: tessera_format::Encryption::Aes256Gcm {
                fingerprint: [0x42; 16],
            },
            ..config(Codec::Zstd, 2, 1 << 16, 512)
        }
        .encode()?,
    ])
}

fn page(n: u32) -> ManifestPage {
    ManifestPage {
        digests: (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    ChunkDigest::ZERO
                } else {
                    ChunkDigest::of(&i.to_le_bytes())
                }
            })
            .collect(),
    }
}

/// An object as the engine stores it uncompressed (the decoders do not decompress, so a
/// `zstd` record differs only in its codec byte and lengths; one is included).
fn object(kind: ObjectKind, raw: &[u8]) -> (ObjectInfo, Vec<u8>) {
    let info = ObjectInfo {
        kind,
        codec: Codec::None,
        digest: ChunkDigest::of(raw),
        raw_len: raw.len() as u32,
        stored_len: raw.len() as u32,
        stored_crc: crc32c::crc32c(raw),
    };
    (info, raw.to_vec())
}

fn objects() -> Result<Vec<(ObjectInfo, Vec<u8>)>> {
    let mut out = vec![
        object(ObjectKind::Chunk, &data(1, 300)),
        object(ObjectKind::Chunk, &data(2, 1000)),
        object(ObjectKind::Page, &page(4).encode()?),
    ];
    let stored = data(3, 100);
    out.push((
        ObjectInfo {
            codec: Codec::Zstd,
            raw_len: 4096,
            stored_len: 100,
            stored_crc: crc32c::crc32c(&stored),
            ..object(ObjectKind::Chunk, &data(3, 4096)).0
        },
        stored,
    ));
    Ok(out)
}

/// A sealed pack of `objects`: header, records, footer, trailer.
fn pack(objects: &[(ObjectInfo, Vec<u8>)]) -> Result<Vec<u8>> {
    let mut out = encode_pack_header().to_vec();
    let mut entries = Vec::new();
    for (info, stored) in objects {
        entries.push(FooterEntry {
            info: *info,
            offset: out.len() as u64,
        });
        out.extend_from_slice(&encode_record_header(info)?);
        out.extend_from_slice(stored);
    }
    let footer = encode_footer(&entries, out.len() as u64)?;
    out.extend_from_slice(&footer);
    Ok(out)
}

fn snapshot(disks: &[(&str, u64, u32)]) -> Snapshot {
    let mut entries = Vec::new();
    let mut roots = Vec::new();
    for (i, &(name, size, block_size)) in disks.iter().enumerate() {
        let page_entries = 512;
        let pages = page_count_for(size, block_size, page_entries);
        let root: Vec<PageDigest> = (0..pages)
            .map(|p| PageDigest::of(&[i as u8, p as u8]))
            .collect();
        let identity = vec![
            ("source.kind".to_owned(), "raw".to_owned()),
            (
                "source.path".to_owned(),
                format!("/var/lib/images/{name}.img"),
            ),
            ("source.size".to_owned(), size.to_string()),
            ("backup.mode".to_owned(), "full".to_owned()),
        ];
        entries.push(DiskEntry {
            name: name.to_owned(),
            size,
            block_size,
            page_entries,
            page_count: pages as u32,
            root_digest: root_digest(&root),
            identity,
            stats: DiskStats {
                bytes_read: size,
                zero_blocks: 3,
                new_chunks: 40,
                new_raw_bytes: 40 * u64::from(block_size),
                new_stored_bytes: 17 * u64::from(block_size),
            },
        });
        roots.push(root);
    }
    Snapshot {
        header: SnapshotHeader {
            series: "vm1".into(),
            time_us: 1_780_000_000_000_000,
            duration_ms: 5_300,
            tags: vec![
                ("owner".into(), "ops".into()),
                ("env".into(), String::new()),
            ],
            disks: entries,
        },
        roots,
    }
}

fn snapshots() -> Vec<Snapshot> {
    vec![
        snapshot(&[("disk0", 3 << 20, 1 << 16)]),
        snapshot(&[("os", 100 << 20, 1 << 20), ("data", 12_345, 1 << 16)]),
        snapshot(&[("empty", 0, 1 << 23)]),
    ]
}

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) -> Result {
    let dir = dir.join(target);
    fs::create_dir_all(&dir)?;
    for (i, seed) in seeds.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i}")), seed)?;
    }
    println!("{}: {} seeds", dir.display(), seeds.len());
    Ok(())
}

fn key_slots() -> Result<Vec<Vec<u8>>> {
    use tessera_format::keyslot::{KdfParams, KeySlotFile, SlotKind, WRAPPED_LEN};
    let slot = |kind, kdf, n: u8| KeySlotFile {
        repo_id: RepoId([0x5e; 16]),
        slot_id: [n; 16],
        kind,
        kdf,
        salt: [n.wrapping_add(1); 32],
        created_at_us: 1_780_000_000_000_000,
        nonce: [n.wrapping_add(2); 12],
        wrapped: [n.wrapping_add(3); WRAPPED_LEN],
    };
    let argon = KdfParams {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };
    Ok(vec![
        slot(SlotKind::Passphrase, argon, 1).encode()?,
        slot(SlotKind::KeyFile, KdfParams::NONE, 2).encode()?,
        slot(SlotKind::Recovery, KdfParams::NONE, 3).encode()?,
    ])
}

fn main() -> Result {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"),
        PathBuf::from,
    );
    let objects = objects()?;
    let packs = vec![pack(&[])?, pack(&objects[..1])?, pack(&objects)?];
    let snapshots = snapshots();

    write(&dir, "config", &configs()?)?;
    write(&dir, "pack_header", &[encode_pack_header().to_vec()])?;
    let records: Vec<Vec<u8>> = objects
        .iter()
        .map(|(info, stored)| {
            let mut record = encode_record_header(info)?.to_vec();
            record.extend_from_slice(stored);
            Ok(record)
        })
        .collect::<Result<_>>()?;
    write(&dir, "record_header", &records)?;
    // `pack_len || footer || trailer`, cut from the packs.
    let tails: Vec<Vec<u8>> = packs
        .iter()
        .zip([0, 1, objects.len()])
        .map(|(pack, n)| {
            let footer_offset = PACK_HEADER_LEN
                + objects[..n]
                    .iter()
                    .map(|(_, s)| RECORD_HEADER_LEN + s.len())
                    .sum::<usize>();
            let mut seed = (pack.len() as u64).to_le_bytes().to_vec();
            seed.extend_from_slice(&pack[footer_offset..]);
            seed
        })
        .collect();
    write(&dir, "pack_tail", &tails)?;
    write(&dir, "pack", &packs)?;
    write(
        &dir,
        "manifest_page",
        &[page(0).encode()?, page(1).encode()?, page(40).encode()?],
    )?;
    let files: Vec<Vec<u8>> = snapshots
        .iter()
        .map(|s| Ok(s.encode()?.1))
        .collect::<Result<_>>()?;
    write(&dir, "snapshot_file", &files)?;
    // Encrypted snapshot files, with the private part itself standing for its seal (what
    // the `snapshot_sealed` target checks against).
    let sealed: Vec<Vec<u8>> = snapshots
        .iter()
        .map(|s| {
            let parts = tessera_format::snapshot_sealed::split(s)?;
            let private = parts.private().to_vec();
            Ok(parts.assemble(&private)?.1)
        })
        .collect::<Result<_>>()?;
    write(&dir, "snapshot_sealed", &sealed)?;
    write(&dir, "key_slot", &key_slots()?)?;
    let headers: Vec<Vec<u8>> = snapshots
        .iter()
        .map(|s| Ok(s.header.encode()?))
        .collect::<Result<_>>()?;
    write(&dir, "snapshot_header", &headers)?;
    let snapshot_id = SnapshotId::of(&files[0]).to_hex();
    let text: Vec<Vec<u8>> = vec![
        snapshot_id.clone().into_bytes(),
        snapshot_id.to_uppercase().into_bytes(),
        PackId([0xab; 16]).to_hex().into_bytes(),
        b"zstd:3".to_vec(),
        b"none".to_vec(),
        b"vm1-disk_0.img".to_vec(),
        b"1048576".to_vec(),
    ];
    write(&dir, "text", &text)?;
    Ok(())
}
