//! Verification names exactly the damaged chunk and every snapshot range that needs it: no
//! more, no less. And the damage marks `list`/`show` display count merged ranges. A byte of one chunk's stored data is flipped in its pack; the expected
//! ranges are computed independently from the images' own blocks.

use std::os::unix::fs::FileExt;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tessera_engine::ops::backup::{backup, BackupRequest};
use tessera_engine::ops::check::check;
use tessera_engine::ops::damage::{damage_marks, DamagedObject, DamagedRange};
use tessera_engine::{InitOptions, NoProgress, Repository};
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::{ChunkDigest, ObjectKind, SnapshotId};

const BLOCK: usize = 64 * 1024;

#[test]
fn a_flipped_chunk_is_mapped_to_every_snapshot_range_that_uses_it() {
    let work = tempfile::tempdir().unwrap();
    let repo_path = work.path().join("repo");
    Repository::init(&repo_path, InitOptions::default()).unwrap();
    let image_path = work.path().join("image");
    let mut rng = StdRng::seed_from_u64(3);
    let mut image = vec![0u8; 24 * BLOCK + 1000];
    rng.fill(&mut image[..]);
    // Block 5 and block 9 hold the same data: one chunk, two places per snapshot.
    let (five, rest) = image.split_at_mut(9 * BLOCK);
    rest[..BLOCK].copy_from_slice(&five[5 * BLOCK..6 * BLOCK]);
    let victim = ChunkDigest::of(&image[5 * BLOCK..6 * BLOCK]);

    let writer = Repository::open_writer(&repo_path).unwrap();
    let mut images = Vec::new();
    for generation in 0..3 {
        if generation == 2 {
            // The last generation overwrites block 9: only block 5 still uses the chunk.
            rng.fill(&mut image[9 * BLOCK..10 * BLOCK]);
        }
        std::fs::write(&image_path, &image).unwrap();
        let id = backup(
            &writer,
            &BackupRequest::one_disk("vm", "d0", &image_path),
            &NoProgress,
        )
        .unwrap()
        .id;
        images.push((id, image.clone()));
    }
    let entry = writer
        .index()
        .get_object(ObjectKind::Chunk, victim.as_bytes())
        .unwrap()
        .unwrap();
    drop(writer);
    let pack = repo_path
        .join("packs")
        .join(&entry.pack.to_hex()[..2])
        .join(format!("{}.pack", entry.pack.to_hex()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let at = entry.offset + RECORD_HEADER_LEN as u64 + 17;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0x40], at).unwrap();
    drop(f);

    let repo = Repository::open(&repo_path).unwrap();
    let report = check(&repo, true, &NoProgress).unwrap();
    assert!(!report.is_clean());
    assert_eq!(
        report.damaged.len(),
        1,
        "exactly one damaged object expected: {:?}",
        report.damaged
    );
    let damaged = &report.damaged[0];
    assert_eq!(damaged.digest, victim.0);
    assert_eq!(damaged.pack, Some(entry.pack));
    assert_eq!(damaged.pack_offset, Some(entry.offset));
    // Expected: every block of every snapshot whose content hashes to the victim.
    let mut expected = Vec::new();
    for (id, img) in &images {
        for (i, block) in img.chunks(BLOCK).enumerate() {
            if ChunkDigest::of(block) == victim {
                expected.push(DamagedRange {
                    snapshot: *id,
                    disk: "d0".into(),
                    offset: (i * BLOCK) as u64,
                    length: BLOCK as u64,
                });
            }
        }
    }
    let mut got = damaged.ranges.clone();
    got.sort_by_key(|r| (r.snapshot, r.offset));
    expected.sort_by_key(|r| (r.snapshot, r.offset));
    assert_eq!(expected.len(), 5, "test setup: 2 + 2 + 1 places");
    assert_eq!(got, expected);
}

fn object(kind: ObjectKind, ranges: &[(SnapshotId, &str, u64, u64)]) -> DamagedObject {
    DamagedObject {
        kind,
        digest: [0; 32],
        pack: None,
        pack_offset: None,
        reason: "test".into(),
        ranges: ranges
            .iter()
            .map(|&(snapshot, disk, offset, length)| DamagedRange {
                snapshot,
                disk: disk.into(),
                offset,
                length,
            })
            .collect(),
    }
}

#[test]
fn damage_marks_count_merged_ranges_per_snapshot() {
    let s1 = SnapshotId([0x11; 32]);
    let s2 = SnapshotId([0x22; 32]);
    let s3 = SnapshotId([0x33; 32]);
    let damaged = vec![
        // A damaged page of s1/d0 covering 0..1000, and a chunk inside it: one range.
        object(ObjectKind::Page, &[(s1, "d0", 0, 1000)]),
        object(
            ObjectKind::Chunk,
            &[
                (s1, "d0", 100, 50),
                // Touching the page's range: merged with it.
                (s1, "d0", 1000, 24),
                // Another disk at the same offsets: a range of its own.
                (s1, "d1", 0, 10),
                // Two separate places in s2.
                (s2, "d0", 0, 64),
                (s2, "d0", 128, 64),
            ],
        ),
    ];
    let marks = damage_marks(&damaged, std::slice::from_ref(&s3), 42);
    let get = |id: SnapshotId| marks[&id];
    assert_eq!(marks.len(), 3);
    let m1 = get(s1);
    assert_eq!((m1.ranges, m1.bytes, m1.file_damaged), (2, 1034, false));
    let m2 = get(s2);
    assert_eq!((m2.ranges, m2.bytes, m2.file_damaged), (2, 128, false));
    let m3 = get(s3);
    assert_eq!((m3.ranges, m3.bytes, m3.file_damaged), (0, 0, true));
    assert_eq!(m3.marked_at_us, 42);
}
