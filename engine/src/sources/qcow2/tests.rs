//! A small hand-built image (512-byte clusters: data, zero, compressed, unallocated) read
//! back exactly, and random bytes / random mutations of it that must never panic.

use std::io::Write;

use super::Qcow2Source;
use crate::sources::BlockSource;

const CS: usize = 512;
const SIZE: u64 = 32 * 1024;

fn put64(img: &mut [u8], at: usize, v: u64) {
    img[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn put32(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Guest clusters: 0 data 0x11, 1 zero flag, 2 compressed 0x22.., 3 data 0x33, rest
/// unallocated. Returns the image and the disk it describes.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let compressed_plain: Vec<u8> = (0..CS).map(|i| 0x22 ^ (i % 7) as u8).collect();
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&compressed_plain).unwrap();
    let payload = enc.finish().unwrap();
    assert!(payload.len() <= CS);

    let mut img = vec![0u8; 6 * CS];
    put32(&mut img, 0, crate::formats::qcow2::MAGIC);
    put32(&mut img, 4, 3);
    put32(&mut img, 20, 9);
    put64(&mut img, 24, SIZE);
    put32(&mut img, 36, 1);
    put64(&mut img, 40, CS as u64);
    put32(&mut img, 96, 4);
    put32(&mut img, 100, 104);
    put64(
        &mut img,
        CS,
        (2 * CS as u64) | crate::formats::qcow2::COPIED,
    );
    let l2 = 2 * CS;
    put64(
        &mut img,
        l2,
        (3 * CS as u64) | crate::formats::qcow2::COPIED,
    );
    put64(&mut img, l2 + 8, crate::formats::qcow2::ZERO_FLAG);
    // Compressed: x = 62 - (9 - 8) = 61; one sector → field 0.
    put64(&mut img, l2 + 16, (1 << 62) | (4 * CS) as u64);
    put64(&mut img, l2 + 24, 5 * CS as u64);
    img[3 * CS..4 * CS].fill(0x11);
    img[4 * CS..4 * CS + payload.len()].copy_from_slice(&payload);
    img[5 * CS..6 * CS].fill(0x33);

    let mut disk = vec![0u8; SIZE as usize];
    disk[..CS].fill(0x11);
    disk[2 * CS..3 * CS].copy_from_slice(&compressed_plain);
    disk[3 * CS..4 * CS].fill(0x33);
    (img, disk)
}

fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, crate::error::Result<Qcow2Source>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.qcow2");
    std::fs::write(&path, bytes).unwrap();
    let r = Qcow2Source::open(&path);
    (dir, r)
}

/// Reads the whole disk in odd-sized pieces; errors are fine, panics are not.
fn read_all(src: &Qcow2Source) -> crate::error::Result<Vec<u8>> {
    let size = src.size().min(1 << 20);
    let mut out = vec![0u8; size as usize];
    for (i, piece) in out.chunks_mut(1500).enumerate() {
        src.read_at(i as u64 * 1500, piece)?;
    }
    Ok(out)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn hand_built_image_reads_back() {
    let (img, disk) = sample();
    let (_dir, src) = open_bytes(&img);
    let src = src.unwrap();
    assert_eq!(src.size(), SIZE);
    assert!(src.changes().is_none());
    let mut buf = vec![0u8; SIZE as usize];
    let read = src.read_at(0, &mut buf).unwrap();
    assert!(buf == disk, "disk content differs");
    assert!(read > 0 && read < SIZE, "read {read} bytes from the file");
    assert_eq!(read_all(&src).unwrap(), disk);
}

/// 16 KiB clusters, extended L2 and zstd: guest cluster 0 has subclusters 0, 1, 3 stored
/// and 2 zero; cluster 1 is compressed; the rest is unallocated (zeros).
fn sample_extended_zstd() -> (Vec<u8>, Vec<u8>) {
    const C: usize = 16 * 1024;
    const SUB: usize = C / 32;
    let plain: Vec<u8> = (0..C).map(|i| (i / 100) as u8).collect();
    let payload = zstd::bulk::compress(&plain, 3).unwrap();
    assert!(payload.len() <= C);
    let mut img = vec![0u8; 5 * C];
    put32(&mut img, 0, crate::formats::qcow2::MAGIC);
    put32(&mut img, 4, 3);
    put32(&mut img, 20, 14);
    put64(&mut img, 24, 4 * C as u64);
    put32(&mut img, 36, 1);
    put64(&mut img, 40, C as u64);
    put64(&mut img, 72, (1 << 3) | (1 << 4));
    put32(&mut img, 96, 4);
    put32(&mut img, 100, 112);
    img[104] = 1;
    put64(&mut img, C, 2 * C as u64);
    let l2 = 2 * C;
    put64(&mut img, l2, 3 * C as u64);
    put64(&mut img, l2 + 8, 0b1011 | (0b100 << 32));
    // Compressed: x = 62 - (14 - 8) = 56; additional sectors in bits 56..=61.
    let sectors = payload.len().div_ceil(512) as u64 - 1;
    put64(
        &mut img,
        l2 + 16,
        (1 << 62) | (sectors << 56) | (4 * C) as u64,
    );
    for (i, b) in img[3 * C..4 * C].iter_mut().enumerate() {
        *b = 0x40 + (i / SUB) as u8;
    }
    img[4 * C..4 * C + payload.len()].copy_from_slice(&payload);

    let mut disk = vec![0u8; 4 * C];
    for sub in [0, 1, 3] {
        disk[sub * SUB..(sub + 1) * SUB].fill(0x40 + sub as u8);
    }
    disk[C..2 * C].copy_from_slice(&plain);
    (img, disk)
}

#[test]
fn hand_built_extended_zstd_image_reads_back() {
    let (img, disk) = sample_extended_zstd();
    let (_dir, src) = open_bytes(&img);
    let src = src.unwrap();
    assert_eq!(read_all(&src).unwrap(), disk);
}

/// Mutates bytes of `img` (mostly in `hot`, the metadata), sometimes truncates it; opening
/// and reading must not panic.
fn mutate_and_read(img: &[u8], hot: &[(usize, usize)], seed: u64, rounds: usize) {
    let mut rng = Rng(seed);
    for _ in 0..rounds {
        let mut m = img.to_vec();
        for _ in 0..=rng.next() % 6 {
            let at = if rng.next().is_multiple_of(4) {
                (rng.next() % m.len() as u64) as usize
            } else {
                let (s, e) = hot[(rng.next() % hot.len() as u64) as usize];
                s + (rng.next() % (e - s) as u64) as usize
            };
            m[at] = rng.next() as u8;
        }
        if rng.next().is_multiple_of(8) {
            m.truncate((rng.next() % m.len() as u64) as usize);
        }
        let (_dir, src) = open_bytes(&m);
        if let Ok(src) = src {
            let _ = read_all(&src);
        }
    }
}

#[test]
fn random_mutations_never_panic() {
    let (img, _) = sample();
    mutate_and_read(&img, &[(0, 3 * CS)], 0x9e37_79b9_7f4a_7c15, 1500);
    let (img, _) = sample_extended_zstd();
    let c = 16 * 1024;
    let hot = [
        (0, 112),
        (c, c + 16),
        (2 * c, 2 * c + 48),
        (4 * c, 4 * c + 64),
    ];
    mutate_and_read(&img, &hot, 0x5851_f42d_4c95_7f2d, 1500);
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for i in 0..300u32 {
        let len = (rng.next() % 4096) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i.is_multiple_of(2) && len >= 8 {
            bytes[..4].copy_from_slice(b"QFI\xfb");
            bytes[4..8].copy_from_slice(&(2 + i % 2).to_be_bytes());
        }
        let (_dir, src) = open_bytes(&bytes);
        if let Ok(src) = src {
            let _ = read_all(&src);
        }
    }
}

#[test]
fn absurd_header_fields_are_refused_without_allocating() {
    let (img, _) = sample();
    for (at, value) in [(36usize, u32::MAX), (20, 40), (32, 2)] {
        let mut m = img.clone();
        put32(&mut m, at, value);
        let (_dir, src) = open_bytes(&m);
        assert!(src.is_err(), "field at {at} = {value} accepted");
    }
    let mut m = img.clone();
    put64(&mut m, 24, u64::MAX);
    let (_dir, src) = open_bytes(&m);
    let err = src
        .err()
        .expect("virtual size u64::MAX accepted")
        .to_string();
    assert!(err.contains("L1 table"), "{err}");
}

#[test]
fn missing_backing_file_reads_only_the_overlay() {
    let (mut img, disk) = sample();
    let name = b"missing.raw";
    img[200..200 + name.len()].copy_from_slice(name);
    put64(&mut img, 8, 200);
    put32(&mut img, 16, name.len() as u32);
    let (_dir, src) = open_bytes(&img);
    let src = src.unwrap();
    assert!(!src.reads_full());
    let changes = src.changes().expect("an overlay is a delta");
    assert_eq!(changes.extents, vec![(0, 4 * CS as u64)]);
    assert!(changes.base_state.contains("missing.raw"), "{changes:?}");
    let mut buf = vec![0u8; 4 * CS];
    src.read_at(0, &mut buf).unwrap();
    assert!(buf == disk[..4 * CS], "overlay clusters differ");
    let err = src
        .read_at(4 * CS as u64, &mut [0u8; 512])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.raw") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn an_l2_table_shared_by_two_l1_entries_is_refused() {
    let (mut img, _) = sample();
    // Two L1 entries (the disk grows to two L2 tables' worth) naming the same table.
    put64(&mut img, 24, 2 * 64 * CS as u64);
    put32(&mut img, 36, 2);
    put64(&mut img, CS + 8, 2 * CS as u64);
    let (_dir, src) = open_bytes(&img);
    let err = src.err().expect("shared L2 table accepted").to_string();
    assert!(err.contains("used by an earlier L1 entry"), "{err}");
}

#[test]
fn unknown_incompatible_bits_are_refused_by_name() {
    let (mut img, _) = sample();
    put64(&mut img, 72, 1 << 9);
    // Feature name table after the header: incompatible bit 9 "future thing".
    put32(&mut img, 104, 0x6803_f857);
    put32(&mut img, 108, 48);
    img[112] = 0;
    img[113] = 9;
    img[114..126].copy_from_slice(b"future thing");
    let (_dir, src) = open_bytes(&img);
    let err = src.err().expect("unknown bit accepted").to_string();
    assert!(err.contains("bit 9 \"future thing\""), "{err}");
}

#[test]
fn concurrent_reads_agree_with_the_disk() {
    let (img, disk) = sample_extended_zstd();
    let (_dir, src) = open_bytes(&img);
    let src = src.unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (src, disk) = (&src, &disk);
            s.spawn(move || {
                let mut rng = Rng(0xdead_beef + t);
                for _ in 0..500 {
                    let off = rng.next() % disk.len() as u64;
                    let len = 1 + rng.next() % (disk.len() as u64 - off).min(40_000);
                    let mut buf = vec![0u8; len as usize];
                    src.read_at(off, &mut buf).unwrap();
                    assert!(
                        buf == disk[off as usize..(off + len) as usize],
                        "{off}+{len}"
                    );
                }
            });
        }
    });
}

#[test]
fn l2_cache_evicts_the_oldest_table_beyond_its_budget() {
    // 2 MiB tables: the 16 MiB budget holds 8.
    let mut cache = super::table::L2Cache::new(2 << 20);
    for i in 0..9u64 {
        cache.insert(i << 21, std::sync::Arc::new(vec![i]));
    }
    assert!(cache.get(0).is_none(), "the oldest table is still cached");
    for i in 1..9u64 {
        assert_eq!(cache.get(i << 21).map(|t| t[0]), Some(i));
    }
}

/// The `qcow2` fuzz target's seeds (made by qemu-img/qemu-io: v2, v3, a backing file with
/// dirty bitmaps, extended L2, deflate and zstd compression): each opens from memory
/// exactly as from its file and reads the same, so the target starts from valid images.
#[test]
fn fuzz_seeds_decode_from_bytes_as_from_their_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/qcow2");
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let from_file = Qcow2Source::open(&path).unwrap();
        let from_bytes = Qcow2Source::from_bytes(&path, std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(from_file.size(), from_bytes.size(), "{}", path.display());
        let extents = |s: &Qcow2Source| s.changes().map(|c| c.extents.clone());
        assert_eq!(
            extents(&from_file),
            extents(&from_bytes),
            "{}",
            path.display()
        );
        let ranges = extents(&from_bytes).unwrap_or_else(|| vec![(0, from_bytes.size())]);
        for (s, e) in ranges {
            let (mut a, mut b) = (vec![0u8; (e - s) as usize], vec![1u8; (e - s) as usize]);
            from_file.read_at(s, &mut a).unwrap();
            from_bytes.read_at(s, &mut b).unwrap();
            assert!(a == b, "{}: [{s}, {e}) differs", path.display());
        }
        seeds += 1;
    }
    assert!(seeds >= 6, "{seeds} seeds");
}
