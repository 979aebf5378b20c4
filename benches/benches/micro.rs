//! Criterion micro-benchmarks of the building blocks of a backup and a restore: hashing,
//! compression, the zero check, index lookups, manifest pages and manifest diffs. Each benchmark is kept
//! short (about 2 s of measurement) so the whole run takes well under two minutes:
//!
//! ```text
//! cargo bench -p tessera-benches --bench micro
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sha2::{Digest, Sha256};
use tessera_benches::datagen::{block_of, mixed_block, Kind, Rng};
use tessera_engine::index::{Index, ObjectEntry};
use tessera_engine::store::encode::{decode_stored, encode_object};
use tessera_format::config::DEFAULT_PAGE_ENTRIES;
use tessera_format::{
    is_all_zero, ChunkDigest, Codec, Compression, ManifestPage, ObjectKind, PackId, RepoId,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn sha256(c: &mut Criterion) {
    let mut g = c.benchmark_group("sha256");
    for (name, len) in [("64KiB", 64 * KIB), ("1MiB", MIB)] {
        let data = block_of(Kind::Random, 0, 1, len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("sha2/{name}"), |b| {
            b.iter(|| Sha256::digest(black_box(&data)));
        });
        g.bench_function(format!("ChunkDigest::of/{name}"), |b| {
            b.iter(|| ChunkDigest::of(black_box(&data)));
        });
    }
    g.finish();
}

fn zstd_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("zstd_64KiB");
    let blocks = [
        ("mixed", mixed_block(7, 64 * KIB)),
        ("os-like", block_of(Kind::Os, 0, 7, 64 * KIB)),
    ];
    for (what, data) in &blocks {
        let digest = ChunkDigest::of(data);
        g.throughput(Throughput::Bytes(data.len() as u64));
        for level in [1, 2, 3] {
            let compression = Compression {
                codec: Codec::Zstd,
                level,
            };
            let plain = tessera_engine::crypto::RepoCrypto::plain();
            let (info, stored) =
                encode_object(&plain, ObjectKind::Chunk, digest, data, compression)
                    .expect("encode");
            let stored: Vec<u8> = stored.to_vec();
            eprintln!(
                "zstd-{level} {what} 64 KiB block: {} -> {} bytes ({:.2}x)",
                data.len(),
                stored.len(),
                data.len() as f64 / stored.len() as f64
            );
            g.bench_function(format!("encode_object/{what}/zstd-{level}"), |b| {
                b.iter(|| {
                    encode_object(
                        &plain,
                        ObjectKind::Chunk,
                        digest,
                        black_box(data),
                        compression,
                    )
                });
            });
            g.bench_function(format!("decode_stored/{what}/zstd-{level}"), |b| {
                b.iter_batched(
                    || stored.clone(),
                    |s| decode_stored(info.codec, s, info.raw_len),
                    BatchSize::SmallInput,
                );
            });
        }
    }
    g.finish();
}

fn zero_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("is_all_zero");
    let zeros = vec![0u8; MIB];
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("1MiB_zero", |b| b.iter(|| is_all_zero(black_box(&zeros))));
    g.finish();
}

fn random_digests(seed: u64, n: usize) -> Vec<[u8; 32]> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut d = [0u8; 32];
            rng.fill(&mut d);
            d
        })
        .collect()
}

fn index_lookups(c: &mut Criterion) {
    const ENTRIES: usize = 100_000;
    // One backup batch: 32 MiB of 64 KiB blocks.
    const BATCH: usize = 512;
    let dir = tempfile::tempdir().expect("temp dir");
    let index = Index::create(&dir.path().join("index"), RepoId([9; 16])).expect("index");
    let present = random_digests(1, ENTRIES);
    for (n, part) in present.chunks(10_000).enumerate() {
        let mut batch = index.batch();
        for (i, d) in part.iter().enumerate() {
            let entry = ObjectEntry {
                pack: PackId([n as u8; 16]),
                offset: (i * 40_000) as u64,
                stored_len: 30_000,
                raw_len: 65_536,
                codec: Codec::Zstd,
                stored_crc: i as u32,
                refcount: 1,
                dead_since_us: 0,
            };
            batch.put_object(ObjectKind::Chunk, d, &entry);
        }
        index.commit(batch).expect("write");
    }
    let mut rng = Rng::new(5);
    let hits: Vec<[u8; 32]> = (0..BATCH)
        .map(|_| present[rng.below(ENTRIES as u64) as usize])
        .collect();
    let misses = random_digests(2, BATCH);

    let mut g = c.benchmark_group("index_100k");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("contains_many/512_hits", |b| {
        b.iter(|| index.contains_many(ObjectKind::Chunk, black_box(&hits)));
    });
    g.bench_function("contains_many/512_misses", |b| {
        b.iter(|| index.contains_many(ObjectKind::Chunk, black_box(&misses)));
    });
    g.bench_function("get_many/512_hits", |b| {
        b.iter(|| index.get_many(ObjectKind::Chunk, black_box(&hits)));
    });
    g.finish();
}

fn manifest_pages(c: &mut Criterion) {
    let n = DEFAULT_PAGE_ENTRIES as usize;
    let page = ManifestPage {
        digests: random_digests(3, n).into_iter().map(ChunkDigest).collect(),
    };
    let encoded = page.encode().expect("a default-sized page encodes");
    let mut g = c.benchmark_group(format!("manifest_page_{n}"));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("encode", |b| b.iter(|| black_box(&page).encode()));
    g.bench_function("encode_with_digest", |b| {
        b.iter(|| black_box(&page).encode_with_digest());
    });
    g.bench_function("decode", |b| {
        b.iter(|| ManifestPage::decode(black_box(&encoded)));
    });
    g.finish();
}

/// A sparse 16 GiB disk with one random 64 KiB block in every 32 MiB (so every manifest
/// page differs from its neighbours), backed up twice: the second time after rewriting one
/// block in every tenth page. `diff_disks` then reads 2 × 52 pages and skips the rest.
fn manifest_diff(c: &mut Criterion) {
    use std::os::unix::fs::FileExt;
    use tessera_engine::ops::backup::{backup, BackupRequest, DeltaOptions, DiskSpec};
    use tessera_engine::ops::diff::{diff_disks, DiskView};
    use tessera_engine::{InitOptions, NoProgress, Repository};

    const SIZE: u64 = 16 << 30;
    const PAGE_SPAN: u64 = 32 << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("disk.raw");
    let file = std::fs::File::create(&image).expect("image");
    file.set_len(SIZE).expect("size");
    let write_blocks = |step: u64, seed: u64| {
        for (n, offset) in (0..SIZE).step_by(step as usize).enumerate() {
            let block = block_of(Kind::Random, 0, seed + n as u64, 64 * KIB);
            file.write_all_at(&block, offset).expect("write");
        }
    };
    let root = dir.path().join("repo");
    Repository::init(
        &root,
        InitOptions {
            compression: Compression {
                codec: Codec::None,
                level: 0,
            },
            ..InitOptions::default()
        },
    )
    .expect("init");
    let repo = Repository::open_writer(&root).expect("open");
    let take = || {
        let req = BackupRequest {
            series: "diff".into(),
            disks: vec![DiskSpec::new("d", &image)],
            tags: Vec::new(),
            block_size: None,
            delta: DeltaOptions::default(),
        };
        backup(&repo, &req, &NoProgress).expect("backup").id
    };
    write_blocks(PAGE_SPAN, 1);
    let from_id = take();
    write_blocks(10 * PAGE_SPAN, 1_000_000);
    let to_id = take();
    let from = repo.load_snapshot(from_id).expect("load");
    let to = repo.load_snapshot(to_id).expect("load");
    let (from_disk, to_disk) = (
        DiskView::of(&from, "d").expect("disk"),
        DiskView::of(&to, "d").expect("disk"),
    );
    let diff = diff_disks(&repo, from_disk, to_disk).expect("diff");
    eprintln!(
        "manifest diff of a 16 GiB disk: {} pages read, {} skipped, {} blocks changed",
        diff.pages_read,
        diff.pages_skipped,
        diff.changed.len()
    );
    let mut g = c.benchmark_group("manifest_diff_16GiB");
    g.throughput(Throughput::Elements(SIZE / (64 * KIB) as u64));
    g.bench_function("10%_of_pages_changed", |b| {
        b.iter(|| diff_disks(&repo, black_box(from_disk), to_disk));
    });
    g.bench_function("identical", |b| {
        b.iter(|| diff_disks(&repo, black_box(to_disk), to_disk));
    });
    g.finish();
}

/// The record codec and keyed ids of encrypted repositories (SPEC.md §23.3), next to the
/// OpenSSL AEADs they were chosen against.
fn record_crypto(c: &mut Criterion) {
    use openssl::symm::{encrypt_aead, Cipher};
    use tessera_engine::crypto::{IdHasher, RecordAd, RecordKind, RepoKeys};
    let keys = RepoKeys::generate();
    let cipher = keys.record_cipher().expect("record cipher");
    let ids = keys.id_hasher();
    let mut g = c.benchmark_group("record_crypto");
    for (name, len) in [("64KiB", 64 * KIB), ("1MiB", MIB)] {
        let data = block_of(Kind::Random, 0, 1, len);
        let ad = RecordAd {
            kind: RecordKind::Chunk,
            codec: 0,
            raw_len: len as u32,
            id: [7; 32],
        };
        g.throughput(Throughput::Bytes(len as u64));
        let mut out = Vec::with_capacity(len + 64);
        g.bench_function(format!("seal aes-256-gcm ring/{name}"), |b| {
            b.iter(|| {
                out.clear();
                cipher
                    .seal_into(&ad, black_box(&data), &mut out)
                    .expect("seal");
            });
        });
        let sealed = cipher.seal(&ad, &data).expect("seal");
        let mut dst = vec![0u8; len];
        g.bench_function(format!("open aes-256-gcm ring/{name}"), |b| {
            b.iter(|| {
                cipher
                    .open_into(&ad, black_box(&sealed), &mut dst)
                    .expect("open");
            });
        });
        let key = [9u8; 32];
        for (label, alg) in [
            ("openssl aes-256-gcm", Cipher::aes_256_gcm()),
            ("openssl chacha20-poly1305", Cipher::chacha20_poly1305()),
        ] {
            g.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| {
                    let mut tag = [0u8; 16];
                    encrypt_aead(
                        alg,
                        &key,
                        Some(&[1u8; 12]),
                        b"ad",
                        black_box(&data),
                        &mut tag,
                    )
                    .expect("openssl")
                });
            });
        }
        g.bench_function(format!("keyed id hmac-sha256/{name}"), |b| {
            b.iter(|| ids.id(black_box(&data)));
        });
        g.bench_function(format!("plain id sha256/{name}"), |b| {
            b.iter(|| IdHasher::Plain.id(black_box(&data)));
        });
    }
    g.finish();
}

criterion_group! {
    name = micro;
    config = short();
    targets = record_crypto, sha256, zstd_codec, zero_check, index_lookups, manifest_pages, manifest_diff
}
criterion_main!(micro);
