//! The reader against a real repository: one disk of 514 blocks of 64 KiB (two manifest
//! pages of 512 entries, the second holding blocks 512 and 513), whose last block is 100
//! bytes long. Blocks 0 (random), 1 (text, stored compressed), 510, 511, 512 and 513
//! (random) hold data; every other block is zero.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;
use tessera_format::pack::RECORD_HEADER_LEN;
use tessera_format::Snapshot;

use super::{BlockRef, DiskReader, DiskView, Extent};
use crate::error::Error;
use crate::ops::backup::{backup, BackupRequest};
use crate::progress::NoProgress;
use crate::repo::{InitOptions, Repository};

const BS: u64 = 64 * 1024;
const BLOCKS: u64 = 514;
const SIZE: u64 = (BLOCKS - 1) * BS + 100;
const DATA_BLOCKS: [u64; 6] = [0, 1, 510, 511, 512, 513];

struct Fixture {
    _dir: TempDir,
    root: PathBuf,
    repo: Repository,
    snapshot: Snapshot,
    image: Vec<u8>,
}

impl Fixture {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let mut image = vec![0u8; SIZE as usize];
        let mut rng = StdRng::seed_from_u64(14);
        for b in DATA_BLOCKS {
            let start = (b * BS) as usize;
            let end = ((b + 1) * BS).min(SIZE) as usize;
            if b == 1 {
                for (i, byte) in image[start..end].iter_mut().enumerate() {
                    *byte = b"tessera disk reader test line\n"[i % 30];
                }
            } else {
                rng.fill(&mut image[start..end]);
            }
        }
        let path = dir.path().join("d0.img");
        std::fs::write(&path, &image).unwrap();
        let root = dir.path().join("repo");
        Repository::init(&root, InitOptions::default()).unwrap();
        let repo = Repository::open_writer(&root).unwrap();
        let id = backup(
            &repo,
            &BackupRequest::one_disk("vm", "d0", &path),
            &NoProgress,
        )
        .unwrap()
        .id;
        let snapshot = repo.load_snapshot(id).unwrap();
        Self {
            _dir: dir,
            root,
            repo,
            snapshot,
            image,
        }
    }

    fn reader(&self) -> DiskReader<&Repository> {
        DiskReader::new(&self.repo, DiskView::of(&self.snapshot, "d0").unwrap()).unwrap()
    }

    fn bytes(&self, offset: u64, len: u64) -> &[u8] {
        &self.image[offset as usize..(offset + len) as usize]
    }

    /// The pack file named `pack` (hex), wherever the backend keeps it under `packs/`.
    fn pack_file(&self, pack: &str) -> PathBuf {
        fn walk(dir: &Path, pack: &str) -> Option<PathBuf> {
            for entry in std::fs::read_dir(dir).ok()? {
                let path = entry.ok()?.path();
                if path.is_dir() {
                    if let Some(found) = walk(&path, pack) {
                        return Some(found);
                    }
                } else if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(pack))
                {
                    return Some(path);
                }
            }
            None
        }
        walk(&self.root.join("packs"), pack).expect("the chunk's pack file")
    }
}

#[test]
fn reads_blocks_across_the_page_boundary_and_the_short_last_block() {
    let f = Fixture::new();
    let r = f.reader();
    assert_eq!((r.blocks(), r.pages(), r.page_entries()), (BLOCKS, 2, 512));
    assert_eq!((r.block_len(512), r.block_len(513)), (BS, 100));

    // Blocks 510..514 straddle pages 0 and 1.
    let refs = r.block_refs(510..BLOCKS).unwrap();
    assert_eq!(refs.len(), 4);
    for (block, rf) in (510..).zip(&refs) {
        let mut buf = vec![0xaa; r.block_len(block) as usize];
        r.read_block_into(block, rf, &mut buf).unwrap();
        assert_eq!(
            buf,
            f.bytes(block * BS, r.block_len(block)),
            "block {block}"
        );
    }

    // The whole disk, block by block, is the image.
    let all = r.block_refs(0..BLOCKS).unwrap();
    assert_eq!(&all[510..], &refs[..]);
    let mut disk = vec![0xaa; SIZE as usize];
    let places: Vec<_> = (0..)
        .zip(&all)
        .map(|(b, rf)| {
            (
                b,
                *rf,
                (b * BS) as usize..(b * BS + r.block_len(b)) as usize,
            )
        })
        .collect();
    r.read_blocks_into(&mut disk, &places).unwrap();
    assert!(disk == f.image, "the disk read back differs from the image");
    let overlapping = [places[1].clone(), places[0].clone()];
    assert!(r.read_blocks_into(&mut disk, &overlapping).is_err());

    // What a caller may get wrong is refused, not a panic.
    assert!(r.block_refs(510..BLOCKS + 1).is_err());
    let mut long = vec![0; BS as usize];
    assert!(matches!(
        r.read_block_into(513, &refs[3], &mut long),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn zero_blocks_read_as_zeros_and_show_as_zero_extents() {
    let f = Fixture::new();
    let r = f.reader();
    let refs = r.block_refs(0..4).unwrap();
    assert!(!refs[1].is_zero());
    assert!(refs[2].is_zero() && refs[2].location.is_none());
    let mut buf = vec![0xaa; BS as usize];
    r.read_block_into(2, &refs[2], &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));

    let listed: Vec<u64> = r
        .nonzero_blocks()
        .unwrap()
        .iter()
        .map(|(b, _)| *b)
        .collect();
    assert_eq!(listed, DATA_BLOCKS);

    let zero = |len| Extent { len, zero: true };
    let data = |len| Extent { len, zero: false };
    assert_eq!(
        r.extents(0, SIZE, usize::MAX).unwrap(),
        vec![data(2 * BS), zero(508 * BS), data(3 * BS + 100)]
    );
    assert_eq!(r.extents(3 * BS, 10, 1).unwrap(), vec![zero(10)]);
    assert_eq!(
        r.extents(BS, 3 * BS, 1).unwrap(),
        vec![data(BS)],
        "REQ_ONE: the first extent only"
    );

    // A range from inside a zero run across the page boundary into the short last block.
    let (offset, len) = (509 * BS + 10, SIZE - (509 * BS + 10));
    let segments = r.read_range(offset, len).unwrap();
    assert_eq!(segments.len(), 2, "{segments:?}");
    assert_eq!(
        (
            segments[0].offset,
            segments[0].len,
            segments[0].data.is_none()
        ),
        (offset, BS - 10, true)
    );
    assert_eq!(
        (segments[1].offset, segments[1].len),
        (510 * BS, 3 * BS + 100)
    );
    assert!(segments[1].data.as_deref() == Some(f.bytes(510 * BS, 3 * BS + 100)));
    assert!(r.read_range(SIZE - 1, 2).is_err());

    // Byte reads into a buffer: inside one block, across blocks, zero and stored, and the
    // short last block; the buffer starts dirty so a zero run must be written.
    for (offset, len) in [
        (BS + 7, 100),
        (2 * BS + 5, 10),
        (BS - 3, 2 * BS + 6),
        (offset, len),
        (SIZE - 1, 1),
        (0, SIZE),
    ] {
        let mut buf = vec![0xee; len as usize];
        r.read_into(offset, &mut buf).unwrap();
        assert!(buf == f.bytes(offset, len), "read_into({offset}, {len})");
    }
    let mut buf = [0u8; 2];
    assert!(r.read_into(SIZE - 1, &mut buf).is_err());
    r.read_into(SIZE, &mut []).unwrap();
}

#[test]
fn a_damaged_or_missing_chunk_is_reported_with_its_disk_offset() {
    let f = Fixture::new();
    let r = f.reader();
    let rf = r.block_refs(511..512).unwrap()[0];
    let location = rf.location.expect("block 511 is stored");
    let offset = (511 * BS).to_string();

    // Without a location (the index lacks the chunk).
    let lost = BlockRef {
        location: None,
        ..rf
    };
    let mut buf = vec![0; BS as usize];
    match r.read_block_into(511, &lost, &mut buf) {
        Err(Error::ObjectMissing { digest, .. }) => {
            assert!(
                digest.contains(&format!("disk d0, offset {offset}")),
                "{digest}"
            );
        }
        other => panic!("expected ObjectMissing, got {other:?}"),
    }

    // One flipped byte in the chunk's stored bytes.
    let pack = f.pack_file(&location.pack.to_hex());
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[location.offset as usize + RECORD_HEADER_LEN + 7] ^= 0x10;
    std::fs::write(&pack, bytes).unwrap();
    match r.read_block_into(511, &rf, &mut buf) {
        Err(Error::ObjectCorrupt { digest, pack, .. }) => {
            assert!(
                digest.contains(&format!("disk d0, offset {offset}")),
                "{digest}"
            );
            assert_eq!(pack, location.pack);
        }
        other => panic!("expected ObjectCorrupt, got {other:?}"),
    }
    // The same through a range read (the NBD path), which must not hand out the bytes.
    match r.read_range(510 * BS, 2 * BS) {
        Err(Error::ObjectCorrupt { digest, .. }) => {
            assert!(digest.contains(&format!("offset {offset}")), "{digest}");
        }
        other => panic!("expected ObjectCorrupt, got {other:?}"),
    }
    // Other blocks still read.
    let ok = r.block_refs(510..511).unwrap()[0];
    r.read_block_into(510, &ok, &mut buf).unwrap();
    assert_eq!(buf, f.bytes(510 * BS, BS));
}
